/*
 * explain.c — the points function seen from SQL: loyalty.explain_points
 * shows every step of a row's points, computed by the trigger's own
 * function from the facts the attaching user's mapping yields (read as the
 * caller, see reconcile.c); and the cap period of a month, for verify.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "lib/stringinfo.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "accounts.h"
#include "keymap.h"
#include "ledger.h"
#include "reconcile.h"

/* Internal functions of loyalty 1.0 that 1.1 dropped: their symbols stay for 1.0's script. */
static void
removed_in_1_1(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s was removed in loyalty 1.1", name),
			 errhint("Run ALTER EXTENSION loyalty UPDATE.")));
}

PG_FUNCTION_INFO_V1(loyalty_row_points);
/* loyalty._row_points() of 1.0: explain_points, verify and backfill price rows in C now. */
Datum
loyalty_row_points(PG_FUNCTION_ARGS)
{
	removed_in_1_1("loyalty._row_points()");
	PG_RETURN_NULL();
}

PG_FUNCTION_INFO_V1(loyalty_post_backfill);
/* loyalty._post_backfill() of 1.0: backfill and restatements post from C now. */
Datum
loyalty_post_backfill(PG_FUNCTION_ARGS)
{
	removed_in_1_1("loyalty._post_backfill()");
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(loyalty_cap_for_month);
/* loyalty._cap_for_month() of 1.0: caps nest in 1.1, see _capped_points. */
Datum
loyalty_cap_for_month(PG_FUNCTION_ARGS)
{
	removed_in_1_1("loyalty._cap_for_month()");
	PG_RETURN_NULL();
}

static int
cmp_month_points(const void *a, const void *b)
{
	DateADT		x = ((const DateADT *) a)[0],
				y = ((const DateADT *) b)[0];

	return x < y ? -1 : x > y ? 1 : 0;
}

PG_FUNCTION_INFO_V1(loyalty_capped_points);
/*
 * loyalty._capped_points(program, months date[], points bigint[]): an
 * account's per-month points after the program's caps, summed.  The same
 * computation as the trigger's (ledger_capped_year), for verify().
 */
Datum
loyalty_capped_points(PG_FUNCTION_ARGS)
{
	Program    *prog;
	Datum	   *months,
			   *points;
	int			n,
				np,
				i;
	int64		total = 0;
	struct
	{
		DateADT		month;
		int64		points;
	}		   *mp;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	months = loyalty_array_items(PG_GETARG_DATUM(1), DATEOID, "", "months", -1, NULL, &n);
	points = loyalty_array_items(PG_GETARG_DATUM(2), INT8OID, "", "points", n, "months", &np);
	mp = palloc(sizeof(*mp) * (n + 1));
	for (i = 0; i < n; i++)
	{
		mp[i].month = loyalty_month_start(DatumGetDateADT(months[i]));
		mp[i].points = DatumGetInt64(points[i]);
		if (DATE_NOT_FINITE(mp[i].month))
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("months element %d is not a finite date", i + 1)));
	}
	qsort(mp, n, sizeof(*mp), cmp_month_points);
	SPI_connect();
	prog = mapping_get_program(PG_GETARG_INT32(0));
	for (i = 0; i < n;)
	{
		DateADT		ys = rules_cap_period_start('y', mp[i].month);
		DateADT		ye = rules_cap_period_next('y', ys);
		int64		year[12] = {0};

		for (; i < n && mp[i].month < ye; i++)
		{
			int			y,
						m,
						d;

			j2date(mp[i].month + POSTGRES_EPOCH_JDATE, &y, &m, &d);
			year[m - 1] = ledger_add_points(year[m - 1], mp[i].points, prog, "(verify)");
		}
		total = ledger_add_points(total, ledger_capped_year(prog, ys, year, "(verify)"), prog, "(verify)");
	}
	SPI_finish();
	PG_RETURN_INT64(total);
}

/* ISO, whatever the session's DateStyle: explain_points is read and compared. */
static char *
iso_date(DateADT d)
{
	int			y,
				m,
				dd;

	j2date(d + POSTGRES_EPOCH_JDATE, &y, &m, &dd);
	return psprintf("%04d-%02d-%02d", y, m, dd);
}

/* An attachment of the explained table, as the owner reads it. */
typedef struct Explained
{
	int32		attachment_id;
	char	   *program;
	int			ncols;
	char	  **cols;
	char	   *facts_sql;
} Explained;

#define EXPLAINED_SQL \
	"SELECT x.attachment_id, p.name, x.key_columns, loyalty._facts_sql(x.attachment_id)" \
	" FROM loyalty.attachment x JOIN loyalty.program p" \
	"   ON p.program_id OPERATOR(pg_catalog.=) x.program_id" \
	" WHERE x.source::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL" \
	" ORDER BY x.attachment_id"

/*
 * On a Citus worker, one attachment ($1) as this node's placements of the
 * configuration hold it, its facts query over the shard ($2).
 */
#define EXPLAINED_SHARD_SQL \
	"SELECT x.attachment_id, p.name, x.key_columns," \
	"       loyalty._facts_sql(x::pg_catalog.text::loyalty.attachment, $2::pg_catalog.regclass)" \
	" FROM %s x JOIN %s p ON p.program_id OPERATOR(pg_catalog.=) x.program_id" \
	" WHERE x.attachment_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL"

static Explained *
explained_attachments(const char *sql, int nargs, Oid *argtypes, Datum *args, MemoryContext cxt, int *n)
{
	Explained  *t;
	uint64		i;
	MemoryContext old;

	reconcile_owner_query(sql, nargs, argtypes, args, NULL, true);
	old = MemoryContextSwitchTo(cxt);
	t = palloc0(sizeof(Explained) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum	   *cols;
		int			c;

		t[i].attachment_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		t[i].program = SPI_getvalue(tup, desc, 2);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 3, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &cols, NULL, &t[i].ncols);
		t[i].cols = palloc(sizeof(char *) * t[i].ncols);
		for (c = 0; c < t[i].ncols; c++)
			t[i].cols[c] = TextDatumGetCString(cols[c]);
		t[i].facts_sql = SPI_getvalue(tup, desc, 4);
	}
	*n = (int) SPI_processed;
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
	return t;
}

static char *
column_list(const Explained *t)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < t->ncols; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", t->cols[i]);
	return buf.data;
}

/*
 * The row's key: each value given as text is read by its column type's own
 * input function (as the caller), and the row is looked for with the
 * type's own equality, s.col = $i.  A value the type does not read is the
 * caller's error, named as such.
 */
static char *
key_condition(Oid source, const char *source_name, const Explained *t, char **keys,
			  Oid *argtypes, Datum *args)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < t->ncols; i++)
	{
		AttrNumber	attnum = get_attnum(source, t->cols[i]);
		Oid			typid,
					collid,
					input,
					ioparam;
		int32		typmod;
		MemoryContext cxt = CurrentMemoryContext;

		if (attnum == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("key column \"%s\" of %s does not exist", t->cols[i], source_name),
					 errdetail("Program \"%s\" was attached with key columns %s.", t->program, column_list(t)),
					 errhint("The table changed since it was attached to program \"%s\"; detach and attach it again.",
							 t->program)));
		get_atttypetypmodcoll(source, attnum, &typid, &typmod, &collid);
		getTypeInputInfo(typid, &input, &ioparam);
		PG_TRY();
		{
			/* no typmod: the value as given, compared by the type's equality */
			args[i] = OidInputFunctionCall(input, keys[i], ioparam, -1);
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION)
				PG_RE_THROW();
			FlushErrorState();
			ereport(ERROR,
					(errcode(edata->sqlerrcode),
					 errmsg("key value %s is not a valid %s for key column \"%s\" of %s",
							quote_literal_cstr(keys[i]), format_type_be(typid), t->cols[i], source_name),
					 errdetail("%s", edata->message),
					 errhint("Give the values of the key columns of %s in order: %s.", source_name, column_list(t))));
		}
		PG_END_TRY();
		argtypes[i] = typid;
		appendStringInfo(&buf, "%ss.%s %s $%d", i > 0 ? " AND " : "", quote_identifier(t->cols[i]),
						 keytype_equality_operator(getBaseType(typid)), i + 1);
	}
	return buf.data;
}

static void
put_explained(ReturnSetInfo *rsi, const char *program, Program *prog,
			  const RowFacts *f, const RowResult *r)
{
	Datum		values[19];
	bool		nulls[19];
	Numeric		one = int64_to_numeric(1);

	memset(nulls, true, sizeof(nulls));
#define SET(i_, d_) do { values[i_] = (d_); nulls[i_] = false; } while (0)
	SET(0, CStringGetTextDatum(program));
	if (f->account)
		SET(1, CStringGetTextDatum(f->account));
	if (f->has_date)
		SET(2, DateADTGetDatum(f->date));
	SET(3, CStringGetTextDatum(rules_status_name(r->status)));
	if (r->reason)
		SET(4, CStringGetTextDatum(r->reason));
	if (r->rule)
	{
		SET(5, DateADTGetDatum(r->rule->valid_from));
		SET(7, NumericGetDatum(r->rule->points_per_unit));
	}
	if (r->basis)
		SET(6, NumericGetDatum(r->basis));
	if (f->product_line)
		SET(8, CStringGetTextDatum(f->product_line));
	SET(9, NumericGetDatum(r->pl_factor ? r->pl_factor : one));
	if (r->tier_on_date)
		SET(10, CStringGetTextDatum(r->tier_on_date));
	SET(11, NumericGetDatum(r->tier_factor ? r->tier_factor : one));
	SET(12, NumericGetDatum(r->segment_factor ? r->segment_factor : one));
	if (r->raw_points)
		SET(13, NumericGetDatum(r->raw_points));
	SET(14, CStringGetTextDatum(rules_rounding_name(prog->rounding)));
	SET(15, Int64GetDatum(r->points));
	SET(16, Int64GetDatum(r->bonus));
	if (r->qualifying)
		SET(17, NumericGetDatum(r->qualifying));
	if (r->status != ROW_REJECTED)
	{
		LedgerCap	caps[3];
		int			ncaps = ledger_caps_for_month(prog, r->month, caps);
		StringInfoData text;
		int			c;

		/* innermost first: the month's cap applies before the quarter's and the year's */
		initStringInfo(&text);
		for (c = ncaps - 1; c >= 0; c--)
			appendStringInfo(&text, "%s" INT64_FORMAT " points per account from %s to %s",
							 text.len > 0 ? "; then " : "", caps[c].points,
							 iso_date(caps[c].start), iso_date(caps[c].end - 1));
		if (ncaps > 0)
			SET(18, CStringGetTextDatum(text.data));
	}
#undef SET
	tuplestore_putvalues(rsi->setResult, rsi->setDesc, values, nulls);
}

/*
 * How the rows of an attachment with that key (and, when account is given,
 * that account) earn, into rsi.  The rows are read as the caller, who sees
 * what they may see.  On a Citus coordinator (routed true) the rows of an
 * account are explained on the node of its shard (loyalty._explain_shard),
 * where its account row is: their accounts are returned in *routed_accounts
 * instead, the other rows explained here.
 */
static int
explain_attachment(ReturnSetInfo *rsi, Explained *t, Oid rel, const char *source_name,
				   char **keys, int nkey, const char *account, bool routed, char ***routed_accounts)
{
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "loyalty explain row", ALLOCSET_DEFAULT_SIZES);
	MemoryContext cxt = CurrentMemoryContext;
	Attachment *att;
	char	   *sql;
	Oid		   *argtypes;
	Datum	   *args;
	SPITupleTable *tt;
	uint64		nrows,
				r;
	int			nrouted = 0;

	if (nkey != t->ncols)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is keyed by %d column(s), but key has %d value(s)", source_name, t->ncols, nkey),
				 errdetail("The key columns of %s, as attached to program \"%s\": %s.",
						   source_name, t->program, column_list(t)),
				 errhint("Give one value per key column, in order.")));
	argtypes = palloc(sizeof(Oid) * (nkey + 2));
	args = palloc(sizeof(Datum) * (nkey + 2));
	sql = psprintf("SELECT " RECONCILE_FACTS_COLUMNS " FROM (%s WHERE %s) f",
				   t->facts_sql, key_condition(rel, source_name, t, keys, argtypes, args));
	if (account != NULL)
	{
		sql = psprintf("%s WHERE f.account_key OPERATOR(pg_catalog.=) $%d", sql, nkey + 1);
		argtypes[nkey] = TEXTOID;
		args[nkey] = CStringGetTextDatum(account);
	}
	att = mapping_get(t->attachment_id);
	accounts_begin();
	/* as the caller: the mapping is the attaching user's SQL */
	loyalty_spi_check(SPI_execute_with_args(sql, nkey + (account != NULL), argtypes, args, NULL, true, 0),
					  SPI_OK_SELECT, "read the row to explain");
	tt = SPI_tuptable;
	nrows = SPI_processed;		/* account look-ups below run SPI too */
	*routed_accounts = palloc(sizeof(char *) * (nrows + 1));
	for (r = 0; r < nrows; r++)
	{
		RowFacts	f;
		RowResult	res;
		int			k;

		MemoryContextSwitchTo(rowcxt);
		reconcile_row_facts(att, tt->vals[r], tt->tupdesc, &f);
		if (routed && f.account != NULL)
		{
			for (k = 0; k < nrouted; k++)
				if (strcmp((*routed_accounts)[k], f.account) == 0)
					break;
			if (k == nrouted)
				(*routed_accounts)[nrouted++] = MemoryContextStrdup(cxt, f.account);
			MemoryContextReset(rowcxt);
			continue;
		}
		f.explain = true;
		rules_row_points(att->program, f.account ? reconcile_account(att->program, f.account) : NULL,
						 &f, &res);
		put_explained(rsi, t->program, att->program, &f, &res);
		MemoryContextReset(rowcxt);
	}
	MemoryContextSwitchTo(cxt);
	SPI_freetuptable(tt);
	MemoryContextDelete(rowcxt);
	return nrouted;
}

static char **array_texts(Datum array, int *n);

/* key as a text[] constant, for a call routed to a shard. */
static char *
keys_literal(char **keys, int nkey)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "ARRAY[");
	for (i = 0; i < nkey; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", quote_literal_cstr(keys[i]));
	appendStringInfoString(&buf, "]::pg_catalog.text[]");
	return buf.data;
}

/*
 * The rows of an account, explained on the node of its shard, or with
 * account NULL the rows of every shard, each on its node: into rsi.
 */
static void
explain_on_shard(ReturnSetInfo *rsi, Oid source, int32 attachment_id, char **keys, int nkey,
				 const char *account)
{
	char	  **sqls;
	int			n,
				i;
	uint64		j;

	n = reconcile_shard_calls(source, account,
							  psprintf("loyalty._explain_shard(%d, %%s, %s, %s, %s)", attachment_id,
									   quote_literal_cstr(GetUserNameFromId(GetUserId(), false)),
									   keys_literal(keys, nkey), account ? quote_literal_cstr(account) : "NULL"),
							  &sqls);
	for (i = 0; i < n; i++)
	{
		reconcile_owner_query(sqls[i], 0, NULL, NULL, NULL, true);
		for (j = 0; j < SPI_processed; j++)
		{
			Datum		values[19];
			bool		nulls[19];
			int			c;

			for (c = 0; c < 19; c++)
				values[c] = SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, c + 1, &nulls[c]);
			tuplestore_putvalues(rsi->setResult, rsi->setDesc, values, nulls);
		}
		SPI_freetuptable(SPI_tuptable);
	}
}

/*
 * For each program attached to the table, how the row with that key earns.
 * The row is read as the caller, who sees what they may see; a key that no
 * row has gives no row.
 */
static void
explain_rows(FunctionCallInfo fcinfo, Oid source, char **keys, int nkey)
{
	ReturnSetInfo *rsi = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt;
	char	   *source_name;
	Explained  *t;
	Oid			argtypes[1] = {OIDOID};
	Datum		arg = ObjectIdGetDatum(source);
	bool		distributed;
	int			n,
				i;

	InitMaterializedSRF(fcinfo, 0);
	cxt = CurrentMemoryContext;
	source_name = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(source)));

	SPI_connect();
	t = explained_attachments(EXPLAINED_SQL, 1, argtypes, &arg, cxt, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no loyalty program is attached to %s", source_name),
				 errdetail("source names the ERP table whose row is explained; only attached tables earn points."),
				 errhint("SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists the attached tables.")));
	distributed = loyalty_citus_hash_table(source);
	for (i = 0; i < n; i++)
	{
		char	  **accounts;
		int			na,
					a;

		MemoryContextSwitchTo(cxt);
		if (distributed && mapping_get(t[i].attachment_id)->has_header)
		{
			/* lines and header are joined in each shard group, on its node */
			explain_on_shard(rsi, source, t[i].attachment_id, keys, nkey, NULL);
			continue;
		}
		na = explain_attachment(rsi, &t[i], source, source_name, keys, nkey, NULL, distributed, &accounts);
		for (a = 0; a < na; a++)
			explain_on_shard(rsi, source, t[i].attachment_id, keys, nkey, accounts[a]);
	}
	SPI_finish();
}

PG_FUNCTION_INFO_V1(loyalty_explain_shard);
/*
 * loyalty._explain_shard(attachment, shard, caller, key, account): the
 * rows of account with that key, explained on the node of their shard,
 * inside the query Citus routed there; read as caller.
 */
Datum
loyalty_explain_shard(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsi = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt;
	Oid			shard;
	Oid			argtypes[2] = {INT4OID, OIDOID};
	Datum		args[2];
	char	  **keys;
	char	  **none;
	int			nkey;
	int			n;
	Explained  *t;
	Oid			save_userid;
	int			save_sec;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		elog(ERROR, "loyalty._explain_shard takes no NULL but its account");
	InitMaterializedSRF(fcinfo, 0);
	cxt = CurrentMemoryContext;
	keys = array_texts(PG_GETARG_DATUM(3), &nkey);
	SPI_connect();
	PG_TRY();
	{
		(void) reconcile_enter_shard(PG_GETARG_TEXT_PP(1), &shard);
		args[0] = PG_GETARG_DATUM(0);
		args[1] = ObjectIdGetDatum(shard);
		t = explained_attachments(psprintf(EXPLAINED_SHARD_SQL, loyalty_table("attachment"), loyalty_table("program")),
								  2, argtypes, args, cxt, &n);
		if (n != 1)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("loyalty attachment %d does not exist on this node", PG_GETARG_INT32(0))));
		GetUserIdAndSecContext(&save_userid, &save_sec);
		SetUserIdAndSecContext(get_role_oid(TextDatumGetCString(PG_GETARG_DATUM(2)), false),
							   save_sec | SECURITY_LOCAL_USERID_CHANGE);
		MemoryContextSwitchTo(cxt);
		(void) explain_attachment(rsi, t, shard, get_rel_name(shard), keys, nkey,
								  PG_ARGISNULL(4) ? NULL : TextDatumGetCString(PG_GETARG_DATUM(4)), false, &none);
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_FINALLY();
	{
		loyalty_shard_leave();
	}
	PG_END_TRY();
	SPI_finish();
	return (Datum) 0;
}

#define EXPLAIN_EXAMPLE "For example SELECT * FROM loyalty.explain_points('erp.invoice_line', 90017, 3)."

static void
explain_check_source(FunctionCallInfo fcinfo)
{
	loyalty_require(PG_ARGISNULL(0), "source", "source is the attached ERP table whose row is explained.",
					EXPLAIN_EXAMPLE);
}

static void
explain_check_key_value(bool isnull, int i)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("key value %d must not be NULL", i),
				 errdetail("key gives the values of the row's key columns, in order; no row has a NULL key."),
				 errhint(EXPLAIN_EXAMPLE)));
}

/* The text of each element of a one-dimensional array, by its type's output function. */
static char **
array_texts(Datum array, int *n)
{
	ArrayType  *arr = DatumGetArrayTypeP(array);
	Oid			elemtype = ARR_ELEMTYPE(arr);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Oid			output;
	bool		varlena;
	Datum	   *items;
	bool	   *nulls;
	char	  **keys;
	int			i;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("key must be a one-dimensional array"),
				 errdetail("It has %d dimensions; key gives the values of the row's key columns, in order.", ARR_NDIM(arr)),
				 errhint(EXPLAIN_EXAMPLE)));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	getTypeOutputInfo(elemtype, &output, &varlena);
	deconstruct_array(arr, elemtype, typlen, typbyval, typalign, &items, &nulls, n);
	keys = palloc(sizeof(char *) * (*n + 1));
	for (i = 0; i < *n; i++)
	{
		explain_check_key_value(nulls[i], i + 1);
		keys[i] = OidOutputFunctionCall(output, items[i]);
	}
	return keys;
}

PG_FUNCTION_INFO_V1(loyalty_explain_points);
/* loyalty.explain_points(source, VARIADIC key text[]): the key in text form. */
Datum
loyalty_explain_points(PG_FUNCTION_ARGS)
{
	char	  **keys;
	int			nkey;

	explain_check_source(fcinfo);
	loyalty_require(PG_ARGISNULL(1), "key", "key gives the values of the row's key columns, in order.",
					EXPLAIN_EXAMPLE);
	keys = array_texts(PG_GETARG_DATUM(1), &nkey);
	explain_rows(fcinfo, PG_GETARG_OID(0), keys, nkey);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(loyalty_explain_points_any);
/*
 * loyalty.explain_points(source, VARIADIC key "any"): the key values in
 * their own types (explain_points('erp.invoice', 90017::bigint)), each
 * turned into text by its type's output function and read back in the key
 * column's type.
 */
Datum
loyalty_explain_points_any(PG_FUNCTION_ARGS)
{
	char	  **keys;
	int			nkey;
	int			i;

	explain_check_source(fcinfo);
	if (get_fn_expr_variadic(fcinfo->flinfo))
	{
		/* explain_points(source, VARIADIC array): the array's elements */
		loyalty_require(PG_ARGISNULL(1), "key", "key gives the values of the row's key columns, in order.",
						EXPLAIN_EXAMPLE);
		keys = array_texts(PG_GETARG_DATUM(1), &nkey);
	}
	else
	{
		nkey = PG_NARGS() - 1;
		keys = palloc(sizeof(char *) * (nkey + 1));
		for (i = 0; i < nkey; i++)
		{
			Oid			type = get_fn_expr_argtype(fcinfo->flinfo, i + 1);
			Oid			output;
			bool		varlena;

			if (!OidIsValid(type))
				elog(ERROR, "could not determine the type of key value %d", i + 1);
			explain_check_key_value(PG_ARGISNULL(i + 1), i + 1);
			getTypeOutputInfo(type, &output, &varlena);
			keys[i] = OidOutputFunctionCall(output, PG_GETARG_DATUM(i + 1));
		}
	}
	explain_rows(fcinfo, PG_GETARG_OID(0), keys, nkey);
	return (Datum) 0;
}
