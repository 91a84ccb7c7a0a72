/*
 * reconcile.c — what the rows of an attached ERP table should have accrued,
 * recomputed: loyalty.verify compares it with what was accrued, and
 * loyalty.backfill and enroll()'s restatement post the difference.
 *
 * Who runs what.  The facts query (loyalty._facts_sql: the attaching user's
 * mapping expressions over the ERP's tables) runs as the calling role, never
 * as the extension owner, and with row_security off: a scan that cannot see
 * every row fails instead of reconciling a part.  Each row is priced in C
 * with rules_row_points(), the trigger's own function, and summed per
 * (account, document month) in memory.  loyalty's own tables are read,
 * compared and written as the owner, with the sums already computed.
 *
 * One pass.  The facts query's rows go from the executor straight into the
 * sums (a DestReceiver, a batch of rows per account look-up), what was
 * accrued (loyalty.accrual_month) is added into the same entries, and the
 * entries that differ are the answer: no tuple table, no per-row SQL, no
 * per-account query, no second pass over the sums in SQL.  A quick check
 * (one account, or the months from a date on) filters the facts query, so
 * that it reads and prices only its scope.
 *
 * On Citus.  A table that Citus distributes (with loyalty's account-scoped
 * tables co-located, loyalty.distribute()) is reconciled shard by shard, on
 * the node that holds the shard: the coordinator routes one query per shard
 * (reconcile_shard_calls), and loyalty._reconcile_shard does there what
 * is done here for a table of one node, with the shard as the firing shard,
 * so that loyalty_table() names the co-located shards and the configuration's
 * placement on that node, as for the accrual trigger.  Nothing there reads a
 * distributed table by its name: Citus cannot run that inside a shard query.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/regproc.h"
#include "utils/tuplestore.h"
#include "utils/varlena.h"

#include "accounts.h"
#include "keytype.h"
#include "ledger.h"
#include "reconcile.h"
#include "replay.h"

#define SCAN_BATCH 1000
#define OWNER_BATCH 10000		/* rows of loyalty's own tables per fetch */

/* An attachment to reconcile, as read by the owner. */
typedef struct Target
{
	int32		attachment_id;
	int32		program_id;
	Oid			source;
	char	   *facts_sql;
} Target;

typedef struct AccountEntry AccountEntry;

typedef struct SumKey
{
	AccountEntry *account;
	DateADT		month;
} SumKey;

/*
 * One account and document month: what its source rows earn, and what the
 * attachments of the same table accrued for it.
 */
typedef struct SumEntry
{
	SumKey		key;
	int128		points;			/* points and bonus: no int64 overflow */
	FixedSum	qualifying;
	int64		rows;
	int128		acc_points;
	FixedSum	acc_qualifying;
	int64		acc_rows;
} SumEntry;

/*
 * An account the scan met, in the source rows or in what was accrued, and
 * its sums: an account has a few months (tens, rarely hundreds), found by a
 * look at the month used last, else a short search, never by a second hash
 * probe per row.
 */
struct AccountEntry
{
	const char *key;			/* the hash key */
	AccountInfo *info;			/* NULL: the rows do not earn */
	bool		from_since;		/* has a row dated from the scan's since */
	SumEntry   *sums;			/* in the scan's cxt */
	int			nsums;
	int			maxsums;
	int			last;			/* the sum used last */
};

typedef struct SourceScan
{
	Attachment *att;
	MemoryContext cxt;			/* sums and accounts, for the scan */
	MemoryContext batch_cxt;	/* reset after each fetched batch */
	DateADT		since;			/* months before it are left out */
	const char *account;		/* only this account; NULL: every one */
	const char *what;			/* the public function, for errors */
	bool		by_day;			/* sums per document day, not month */
	HTAB	   *accounts;
	/* the lines of an invoice come together: one probe for all of them */
	AccountEntry *last_account;
	/* after compare_sums(): the sums that differ, by (account, month) */
	SumEntry  **diffs;
	int			ndiffs;
} SourceScan;

/* ---- running queries as the owner ---- */

/*
 * Errors of these queries (a program that does not exist, raised by an
 * owner-only helper) are the calling function's own: no CONTEXT naming the
 * helper or the internal SQL.
 */
int
reconcile_owner_query(const char *sql, int nargs, Oid *argtypes, Datum *values,
					  const char *nulls, bool read_only)
{
	MemoryContext cxt = CurrentMemoryContext;
	OwnerScope	scope;
	int			ret = 0;

	loyalty_enter_owner(&scope);
	PG_TRY();
	{
		ret = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, read_only, 0);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		loyalty_rethrow_as_own(CopyErrorData());
	}
	PG_END_TRY();
	loyalty_leave_owner(&scope);
	if (ret < 0)
		elog(ERROR, "SPI_execute_with_args failed for \"%s\": %s", sql, SPI_result_code_string(ret));
	return ret;
}

/* The attachments a query of the owner lists: (attachment, program, source, facts sql). */
static Target *
read_targets(const char *sql, int nargs, Oid *argtypes, Datum *values, const char *nulls,
			 MemoryContext cxt, int *n)
{
	Target	   *t;
	uint64		i;

	reconcile_owner_query(sql, nargs, argtypes, values, nulls, true);
	t = MemoryContextAllocZero(cxt, sizeof(Target) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		t[i].attachment_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		t[i].program_id = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		t[i].source = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		t[i].facts_sql = MemoryContextStrdup(cxt, SPI_getvalue(tup, desc, 4));
	}
	*n = (int) SPI_processed;
	SPI_freetuptable(SPI_tuptable);
	return t;
}

#define TARGET_COLUMNS \
	"x.attachment_id, x.program_id, x.source::pg_catalog.oid, loyalty._facts_sql(x.attachment_id)"
#define SOURCE_EXISTS \
	"EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source::pg_catalog.oid)"

/* The active attachments of a program whose table still exists. */
static Target *
program_targets(int32 program_id, MemoryContext cxt, int *n)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(program_id)};

	return read_targets("SELECT " TARGET_COLUMNS " FROM loyalty.attachment x"
						" WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL"
						" AND " SOURCE_EXISTS " ORDER BY x.attachment_id",
						1, argtypes, values, NULL, cxt, n);
}
/* ---- one row ---- */

static char *
val_text(Datum *values, bool *nulls, int col)
{
	return nulls[col - 1] ? NULL : TextDatumGetCString(values[col - 1]);
}

static bool
val_date(Datum *values, bool *nulls, int col, DateADT *out)
{
	if (!nulls[col - 1])
		*out = DatumGetDateADT(values[col - 1]);
	return !nulls[col - 1];
}

/*
 * A row of a facts query (its columns deformed) as the points function
 * takes it.  Texts are copied into CurrentMemoryContext; numerics point
 * into the tuple (or CurrentMemoryContext when detoasted) unless copy says
 * to copy them too.
 */
static void
values_facts(Attachment *att, Datum *values, bool *nulls, bool copy, RowFacts *f)
{
	char	   *doc_type;
	int			i;

	memset(f, 0, sizeof(RowFacts));
	f->account = val_text(values, nulls, 2);
	f->has_date = val_date(values, nulls, 3, &f->date);
	f->amount = nulls[3] ? NULL : copy ? DatumGetNumericCopy(values[3]) : DatumGetNumeric(values[3]);
	f->quantity = nulls[4] ? NULL : copy ? DatumGetNumericCopy(values[4]) : DatumGetNumeric(values[4]);
	f->product_line = val_text(values, nulls, 6);
	f->currency_mapped = att->mapped[F_CURRENCY];
	f->amount_mapped = att->mapped[F_AMOUNT];
	f->currency = val_text(values, nulls, 7);
	doc_type = val_text(values, nulls, 8);
	for (i = 0; doc_type && i < att->ncredit; i++)
		if (strcmp(att->credit_types[i], doc_type) == 0)
			f->credit_note = true;
	f->has_due = val_date(values, nulls, 9, &f->due);
	f->has_paid = val_date(values, nulls, 10, &f->paid);
	f->header_missing = !nulls[10] && !DatumGetBool(values[10]);
}

void
reconcile_row_facts(Attachment *att, HeapTuple tup, TupleDesc desc, RowFacts *f)
{
	Datum		values[RECONCILE_FACTS_NCOLUMNS];
	bool		nulls[RECONCILE_FACTS_NCOLUMNS];

	Assert(desc->natts == RECONCILE_FACTS_NCOLUMNS);
	heap_deform_tuple(tup, desc, values, nulls);
	values_facts(att, values, nulls, false, f);
}

/*
 * An account as the points function takes it: under automatic enrolment the
 * trigger would have enrolled a customer it did not know, with the defaults
 * (no segment, no cohort, no tier, every document earns).  NULL when the
 * account does not earn at all.
 */
static AccountInfo *
as_earning(Program *prog, AccountInfo *info, const char *key, MemoryContext cxt)
{
	AccountInfo *a;

	if (info->enrolled)
		return info;
	if (!prog->auto_enroll)
		return NULL;
	a = MemoryContextAllocZero(cxt, sizeof(AccountInfo));
	a->key = (char *) key;
	a->enrolled = true;
	a->enrolled_from = DATEVAL_NOBEGIN;
	return a;
}

/*
 * One account as it is now (explain_points): read afresh, not from this
 * backend's cache, which another session's tier upgrade does not
 * invalidate; and only this one, not every account of the program.
 */
AccountInfo *
reconcile_account(Program *prog, const char *key)
{
	MemoryContext cxt = CurrentMemoryContext;
	AccountInfo *info = accounts_refresh(prog, key);

	MemoryContextSwitchTo(cxt); /* SPI leaves us in its own */
	return as_earning(prog, info, key, cxt);
}

/* ---- the scan: what the source rows earn ---- */

static uint32
key_hash(const void *key, Size keysize)
{
	const char *s = *(const char *const *) key;

	return hash_bytes((const unsigned char *) s, strlen(s));
}

static int
key_match(const void *a, const void *b, Size keysize)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static HTAB *
scan_table(const char *name, Size keysize, Size entrysize, HashValueFunc hash,
		   HashCompareFunc match, MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hash = hash;
	ctl.match = match;
	ctl.hcxt = cxt;
	return hash_create(name, 1024, &ctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* A scan of one attachment's table; the caller is connected to SPI. */
static void
scan_init(SourceScan *s, MemoryContext parent, int32 attachment_id, DateADT since,
		  const char *account, const char *what)
{
	memset(s, 0, sizeof(SourceScan));
	s->att = mapping_get(attachment_id);
	s->since = since;
	s->account = account;
	s->what = what;
	s->cxt = AllocSetContextCreate(parent, "loyalty reconcile", ALLOCSET_DEFAULT_SIZES);
	s->batch_cxt = AllocSetContextCreate(s->cxt, "loyalty reconcile batch", ALLOCSET_DEFAULT_SIZES);
	s->accounts = scan_table("loyalty reconcile accounts", sizeof(char *), sizeof(AccountEntry),
							 key_hash, key_match, s->cxt);
}

static bool
wanted(SourceScan *s, const char *account)
{
	return account != NULL && (s->account == NULL || strcmp(account, s->account) == 0);
}

/*
 * The scan's entry of an account, made (with info NULL) when it is new:
 * *isnew says so.
 */
static AccountEntry *
account_entry(SourceScan *s, const char *key, bool *isnew)
{
	AccountEntry *e;
	bool		found;

	*isnew = false;
	if (s->last_account != NULL && strcmp(s->last_account->key, key) == 0)
		return s->last_account;
	e = hash_search(s->accounts, &key, HASH_ENTER, &found);
	if (!found)
	{
		e->key = MemoryContextStrdup(s->cxt, key);
		e->info = NULL;
		e->from_since = false;
		e->sums = NULL;
		e->nsums = e->maxsums = e->last = 0;
		*isnew = true;
	}
	s->last_account = e;
	return e;
}

/*
 * The account of each row of a batch (NULL: not wanted); those the scan
 * has not met yet are looked up in one query.  The caller is connected to
 * SPI.
 */
static AccountEntry **
row_accounts(SourceScan *s, RowFacts *rows, int n)
{
	AccountEntry **row_account = palloc0(sizeof(AccountEntry *) * (n + 1));
	char	  **keys = palloc(sizeof(char *) * (n + 1));
	AccountEntry **ents = palloc(sizeof(AccountEntry *) * (n + 1));
	AccountInfo **info;
	int			nk = 0,
				i;

	for (i = 0; i < n; i++)
	{
		bool		isnew;

		if (!wanted(s, rows[i].account))
			continue;
		row_account[i] = account_entry(s, rows[i].account, &isnew);
		if (!isnew)
			continue;
		keys[nk] = (char *) row_account[i]->key;
		ents[nk++] = row_account[i];
	}
	if (nk == 0)
		return row_account;
	info = accounts_resolve(s->att->program, keys, nk, false);
	MemoryContextSwitchTo(s->batch_cxt);	/* SPI leaves us in its own */
	for (i = 0; i < nk; i++)
		ents[i]->info = as_earning(s->att->program, info[i], ents[i]->key, s->cxt);
	return row_account;
}

/* The sums of an account and month, zero when new. */
static SumEntry *
sum_entry(SourceScan *s, AccountEntry *account, DateADT month)
{
	SumEntry   *sum;
	int			i;

	if (account->nsums > 0 && account->sums[account->last].key.month == month)
		return &account->sums[account->last];
	for (i = 0; i < account->nsums; i++)
		if (account->sums[i].key.month == month)
		{
			account->last = i;
			return &account->sums[i];
		}
	if (account->nsums == account->maxsums)
	{
		account->maxsums = account->maxsums > 0 ? account->maxsums * 2 : 4;
		account->sums = account->sums
			? repalloc(account->sums, sizeof(SumEntry) * account->maxsums)
			: MemoryContextAlloc(s->cxt, sizeof(SumEntry) * account->maxsums);
	}
	sum = &account->sums[account->nsums];
	memset(sum, 0, sizeof(SumEntry));
	sum->key.account = account;
	sum->key.month = month;
	account->last = account->nsums++;
	return sum;
}

static void
add_row(SourceScan *s, RowFacts *f, AccountEntry *e)
{
	RowResult	r;
	SumEntry   *sum;
	MemoryContext old;

	if (e == NULL)
		return;
	if (f->has_date && f->date >= s->since)
		e->from_since = true;
	rules_row_points(s->att->program, e->info, f, &r);
	if ((r.status != ROW_EARNS && r.status != ROW_BELOW_MINIMUM && r.status != ROW_CONTROL) ||
		r.month < s->since)
		return;
	sum = sum_entry(s, e, s->by_day ? f->date : r.month);
	sum->points += (int128) r.points + r.bonus;
	sum->rows++;
	old = MemoryContextSwitchTo(s->cxt);	/* the sum outlives the batch */
	fixed_sum_add(&sum->qualifying, r.qualifying, 1);
	MemoryContextSwitchTo(old);
}

/*
 * The facts query's rows go straight from the executor into the sums, a
 * batch at a time: no tuple is formed, copied or fetched through a cursor.
 * The accounts of a batch are looked up as it comes, so that a scan that
 * reads a few accounts (a quick check) looks up only those.
 */
typedef struct FactsReceiver
{
	DestReceiver pub;
	SourceScan *scan;
	RowFacts   *rows;			/* the batch, in the scan's batch_cxt */
	int			n;
} FactsReceiver;

/* Prices a batch of rows, their new accounts looked up in one query, and adds them up. */
static void
scan_batch(FactsReceiver *r)
{
	SourceScan *s = r->scan;
	AccountEntry **accounts;
	int			i;

	if (r->n > 0)
	{
		/* the facts query is still running: the look-up is a call of its own */
		SPI_connect();
		MemoryContextSwitchTo(s->batch_cxt);
		accounts = row_accounts(s, r->rows, r->n);
		SPI_finish();
		MemoryContextSwitchTo(s->batch_cxt);
		for (i = 0; i < r->n; i++)
			add_row(s, &r->rows[i], accounts[i]);
	}
	MemoryContextReset(s->batch_cxt);
	r->rows = MemoryContextAlloc(s->batch_cxt, sizeof(RowFacts) * SCAN_BATCH);
	r->n = 0;
}

static bool
facts_receive(TupleTableSlot *slot, DestReceiver *self)
{
	FactsReceiver *r = (FactsReceiver *) self;
	MemoryContext old = MemoryContextSwitchTo(r->scan->batch_cxt);

	slot_getallattrs(slot);
	/* the slot's values last until the next row: the batch keeps copies */
	values_facts(r->scan->att, slot->tts_values, slot->tts_isnull, true, &r->rows[r->n++]);
	if (r->n == SCAN_BATCH)
		scan_batch(r);
	MemoryContextSwitchTo(old);
	return true;
}

static void
facts_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	if (typeinfo->natts != RECONCILE_FACTS_NCOLUMNS)
		elog(ERROR, "facts query returned %d columns, expected %d", typeinfo->natts, RECONCILE_FACTS_NCOLUMNS);
}

static void
facts_nothing(DestReceiver *self)
{
}

/*
 * The facts query of a scan: only the rows in its scope (document date
 * from since on, one account), so that a quick check reads and prices only
 * those; the row key, which nothing here needs, is not computed.
 */
static char *
scan_sql(SourceScan *s, const char *facts_sql)
{
	StringInfoData sql;
	const char *where = " WHERE ";

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT NULL::pg_catalog.text, " RECONCILE_FACT_VALUES " FROM (%s) f", facts_sql);
	if (s->since != DATEVAL_NOBEGIN)
	{
		appendStringInfo(&sql, "%sf.doc_date OPERATOR(pg_catalog.>=) $1::pg_catalog.date", where);
		where = " AND ";
	}
	if (s->account != NULL)
		appendStringInfo(&sql, "%sf.account_key OPERATOR(pg_catalog.=) $2::pg_catalog.text", where);
	return sql.data;
}

/* The scope of a scan as the facts query's parameters, planned as constants. */
static ParamListInfo
scan_params(SourceScan *s)
{
	ParamListInfo params = makeParamList(2);

	params->numParams = 2;
	params->params[0].value = DateADTGetDatum(s->since);
	params->params[0].isnull = false;
	params->params[0].pflags = PARAM_FLAG_CONST;
	params->params[0].ptype = DATEOID;
	params->params[1].value = s->account ? CStringGetTextDatum(s->account) : (Datum) 0;
	params->params[1].isnull = s->account == NULL;
	params->params[1].pflags = PARAM_FLAG_CONST;
	params->params[1].ptype = TEXTOID;
	return params;
}

/*
 * Runs the facts query as the caller.  A role that may not read every row
 * (no SELECT on the table or its header, or a row-level security policy
 * that applies: with row_security off, PostgreSQL refuses instead of
 * filtering) gets loyalty's error, never a partial reconciliation.
 */
static void
run_facts(SourceScan *s, const char *sql, FactsReceiver *receiver)
{
	MemoryContext cxt = CurrentMemoryContext;
	SPIExecuteOptions options;
	int			ret = 0;

	Oid			argtypes[2] = {DATEOID, TEXTOID};

	memset(&options, 0, sizeof(options));
	options.params = scan_params(s);
	options.read_only = true;
	options.dest = (DestReceiver *) receiver;
	PG_TRY();
	{
		/* never in parallel: the receiver runs queries while the plan runs */
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, 2, argtypes, 0);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare_cursor failed for the facts query: %s", SPI_result_code_string(SPI_result));
		ret = SPI_execute_plan_extended(plan, &options);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_INSUFFICIENT_PRIVILEGE)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s cannot read every row of %s", s->what, s->att->source_name),
				 errdetail("%s", edata->message),
				 errhint("Run it as a role that may read every row of the table%s: one with SELECT on %s that no row-level security policy filters (the table's owner, or a role with BYPASSRLS).",
						 s->att->has_header ? " and of its header table" : "",
						 s->att->has_header ? "both" : "it")));
	}
	PG_END_TRY();
	if (ret < 0)
		elog(ERROR, "SPI_execute_plan_extended failed for the facts query: %s", SPI_result_code_string(ret));
}

/* Scans the source as the caller; the caller is connected to SPI. */
static void
scan_source(SourceScan *s, const char *facts_sql)
{
	char	   *sql = scan_sql(s, facts_sql);
	int			nest = NewGUCNestLevel();
	FactsReceiver receiver;

	memset(&receiver, 0, sizeof(receiver));
	receiver.pub.receiveSlot = facts_receive;
	receiver.pub.rStartup = facts_startup;
	receiver.pub.rShutdown = facts_nothing;
	receiver.pub.rDestroy = facts_nothing;
	receiver.pub.mydest = DestNone;
	receiver.scan = s;
	(void) set_config_option("row_security", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	accounts_forget();
	receiver.rows = MemoryContextAlloc(s->batch_cxt, sizeof(RowFacts) * SCAN_BATCH);
	run_facts(s, sql, &receiver);
	scan_batch(&receiver);		/* the last rows */
	AtEOXact_GUC(true, nest);
	MemoryContextSwitchTo(s->cxt);
}

/* ---- comparing with what was accrued, as the owner ---- */

static Numeric
int128_numeric(int128 v)
{
	const int64 base = INT64CONST(1000000000000000000);

	if (v >= PG_INT64_MIN && v <= PG_INT64_MAX)
		return int64_to_numeric((int64) v);
	return numeric_add_opt_error(numeric_mul_opt_error(int64_to_numeric((int64) (v / base)),
													   int64_to_numeric(base), NULL),
								 int64_to_numeric((int64) (v % base)), NULL);
}

/*
 * What the attachments of the same table accrued, per (account, month) in
 * the scan's scope and element by element: the sums are added up here, in
 * the scan's table, not by a GROUP BY.
 */
#define ACCRUED_SQL \
	"SELECT (m.account_key)" KEY_TEXT ", m.month, m.points, m.qualifying, m.source_rows" \
	" FROM loyalty.accrual_month m" \
	" WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND m.month OPERATOR(pg_catalog.>=) $3" \
	"   AND ($4::pg_catalog.text IS NULL OR m.account_key OPERATOR(pg_catalog.=) $4" KEY_CAST ")" \
	"   AND m.attachment_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT x.attachment_id FROM loyalty.attachment x" \
	"       WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.source::pg_catalog.oid OPERATOR(pg_catalog.=) $2))"

/*
 * The same on a Citus worker, for one shard (reconcile_shard): the view's
 * query over the co-located shards of its tables, and the attachments from
 * this node's placement.  Inside a shard query Citus cannot run a query
 * over the distributed names.
 */
#define ACCRUED_SHARD_SQL \
	"SELECT (u.account_key)" KEY_TEXT ", u.month, pg_catalog.sum(u.points)::pg_catalog.int8, pg_catalog.sum(u.qualifying)," \
	"       pg_catalog.sum(u.source_rows)::pg_catalog.int8" \
	" FROM (SELECT b.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows" \
	"       FROM %s b, ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment), pg_catalog.unnest(b.m_points)," \
	"                             pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))" \
	"            AS x(month, attachment_id, points, qualifying, source_rows)" \
	"       WHERE b.program_id OPERATOR(pg_catalog.=) $1" \
	"         AND ($4::pg_catalog.text IS NULL OR b.account_key OPERATOR(pg_catalog.=) $4" KEY_CAST ")" \
	"       UNION ALL" \
	"       SELECT d.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows" \
	"       FROM %s d, ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_attachment), pg_catalog.unnest(d.m_points)," \
	"                             pg_catalog.unnest(d.m_qualifying), pg_catalog.unnest(d.m_source_rows))" \
	"            AS x(month, attachment_id, points, qualifying, source_rows)" \
	"       WHERE d.program_id OPERATOR(pg_catalog.=) $1" \
	"         AND ($4::pg_catalog.text IS NULL OR d.account_key OPERATOR(pg_catalog.=) $4" KEY_CAST ")) u" \
	" WHERE u.month OPERATOR(pg_catalog.>=) $3" \
	"   AND u.attachment_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT x.attachment_id FROM %s x" \
	"       WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.source::pg_catalog.oid OPERATOR(pg_catalog.=) $2))" \
	" GROUP BY u.account_key, u.attachment_id, u.month" \
	" HAVING pg_catalog.sum(u.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(u.qualifying) OPERATOR(pg_catalog.<>) 0" \
	"     OR pg_catalog.sum(u.source_rows) OPERATOR(pg_catalog.<>) 0"

/* What read_accrued runs: on a shard, over the shards of the view's tables. */
static const char *
accrued_sql(void)
{
	if (loyalty_shard_key() == 0)
		return ACCRUED_SQL;
	return psprintf(ACCRUED_SHARD_SQL, loyalty_table("balance_folded"), loyalty_table("balance_delta"),
					loyalty_table("attachment"));
}

/* Opens an owner's query as a cursor; the caller is connected to SPI. */
static Portal
owner_cursor(const char *sql, int nargs, Oid *argtypes, Datum *values, const char *nulls)
{
	OwnerScope	scope;
	Portal		portal;

	loyalty_enter_owner(&scope);
	portal = SPI_cursor_open_with_args(NULL, sql, nargs, argtypes, values, nulls, true, 0);
	loyalty_leave_owner(&scope);
	return portal;
}

static void
add_accrued(SourceScan *s, HeapTuple tup, TupleDesc desc)
{
	Datum		v[5];
	bool		isnull[5];
	AccountEntry *account;
	SumEntry   *sum;
	bool		isnew;

	heap_deform_tuple(tup, desc, v, isnull);
	account = account_entry(s, TextDatumGetCString(v[0]), &isnew);
	sum = sum_entry(s, account, DatumGetDateADT(v[1]));
	sum->acc_points += DatumGetInt64(v[2]);
	sum->acc_rows += DatumGetInt64(v[4]);
	MemoryContextSwitchTo(s->cxt);
	fixed_sum_add(&sum->acc_qualifying, DatumGetNumeric(v[3]), 1);
	MemoryContextSwitchTo(s->batch_cxt);
}

/* Reads, as the owner, what was accrued in the scan's scope. */
static void
read_accrued(SourceScan *s, const Target *t)
{
	Oid			argtypes[4] = {INT4OID, OIDOID, DATEOID, TEXTOID};
	Datum		values[4];
	char		nulls[5] = "    ";
	Portal		portal;
	OwnerScope	scope;

	values[0] = Int32GetDatum(t->program_id);
	values[1] = ObjectIdGetDatum(t->source);
	values[2] = DateADTGetDatum(s->since);
	values[3] = s->account ? CStringGetTextDatum(s->account) : (Datum) 0;
	nulls[3] = s->account ? ' ' : 'n';
	portal = owner_cursor(accrued_sql(), 4, argtypes, values, nulls);
	for (;;)
	{
		uint64		i;

		loyalty_enter_owner(&scope);
		SPI_cursor_fetch(portal, true, OWNER_BATCH);
		loyalty_leave_owner(&scope);
		if (SPI_processed == 0)
			break;
		MemoryContextSwitchTo(s->batch_cxt);
		for (i = 0; i < SPI_processed; i++)
			add_accrued(s, SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
		SPI_freetuptable(SPI_tuptable);
		MemoryContextReset(s->batch_cxt);
	}
	SPI_cursor_close(portal);
	MemoryContextSwitchTo(s->cxt);
}

static bool
fixed_sums_equal(const FixedSum *a, const FixedSum *b)
{
	/*
	 * Equal integers at equal scales are equal numbers; a sum keeps the
	 * largest scale of its terms (10.25 + 0.25 is 1050 at scale 2, while
	 * 10.5 read from a numeric is 105 at scale 1), so other scales compare
	 * as numerics, whose equality ignores the scale.
	 */
	if (a->rest == NULL && b->rest == NULL && a->scale == b->scale)
		return a->fixed == b->fixed;
	return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(fixed_sum_value(a)),
											NumericGetDatum(fixed_sum_value(b))));
}

static int
diff_order(const void *a, const void *b)
{
	const SumEntry *x = *(SumEntry *const *) a,
			   *y = *(SumEntry *const *) b;
	int			c = strcmp(x->key.account->key, y->key.account->key);

	if (c != 0)
		return c;
	return x->key.month < y->key.month ? -1 : (x->key.month > y->key.month ? 1 : 0);
}

/*
 * Compares what the source rows earn with what was accrued, in one pass
 * over the scan's sums: s->diffs gets the (account, month)s that differ, in
 * (account, month) order (account keys bytewise, as COLLATE "C").
 */
static void
compare_sums(SourceScan *s, const Target *t)
{
	HASH_SEQ_STATUS seq;
	AccountEntry *account;
	int			cap = 64;
	int			i;

	read_accrued(s, t);
	s->diffs = palloc(sizeof(SumEntry *) * cap);
	s->ndiffs = 0;
	hash_seq_init(&seq, s->accounts);
	while ((account = hash_seq_search(&seq)) != NULL)
		for (i = 0; i < account->nsums; i++)
		{
			SumEntry   *e = &account->sums[i];

			if (e->points == e->acc_points && e->rows == e->acc_rows &&
				fixed_sums_equal(&e->qualifying, &e->acc_qualifying))
				continue;
			if (s->ndiffs == cap)
			{
				cap *= 2;
				s->diffs = repalloc(s->diffs, sizeof(SumEntry *) * cap);
			}
			s->diffs[s->ndiffs++] = e;
		}
	qsort(s->diffs, s->ndiffs, sizeof(SumEntry *), diff_order);
}

/* ---- verify ---- */

static void
put_item(ReturnSetInfo *rsi, const SumEntry *e, int32 attachment_id, const char *item,
		 Numeric expected, Numeric actual)
{
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};

	if (DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(expected), NumericGetDatum(actual))))
		return;
	values[0] = CStringGetTextDatum(e->key.account->key);
	values[1] = DateADTGetDatum(e->key.month);
	values[2] = Int32GetDatum(attachment_id);
	values[3] = CStringGetTextDatum(item);
	values[4] = NumericGetDatum(expected);
	values[5] = NumericGetDatum(actual);
	tuplestore_putvalues(rsi->setResult, rsi->setDesc, values, nulls);
}

/* verify's rows for the sums of a scan that differ. */
static void
put_differences(ReturnSetInfo *rsi, SourceScan *s, int32 attachment_id)
{
	int			i;

	for (i = 0; i < s->ndiffs; i++)
	{
		const SumEntry *e = s->diffs[i];

		put_item(rsi, e, attachment_id, "points", int128_numeric(e->points), int128_numeric(e->acc_points));
		put_item(rsi, e, attachment_id, "qualifying", fixed_sum_value(&e->qualifying),
				 fixed_sum_value(&e->acc_qualifying));
		put_item(rsi, e, attachment_id, "source_rows", int64_to_numeric(e->rows), int64_to_numeric(e->acc_rows));
	}
}

/* Rows of an owner's query (program_id, account) with verify's own columns, as they are. */
static void
put_owner_rows(ReturnSetInfo *rsi, const char *sql, int32 program_id, const char *account)
{
	Oid			argtypes[2] = {INT4OID, TEXTOID};
	Datum		args[2];
	char		nulls[3] = "  ";
	uint64		i;

	args[0] = Int32GetDatum(program_id);
	args[1] = account ? CStringGetTextDatum(account) : (Datum) 0;
	nulls[1] = account ? ' ' : 'n';
	reconcile_owner_query(sql, 2, argtypes, args, nulls, true);
	for (i = 0; i < SPI_processed; i++)
	{
		Datum		values[6];
		bool		vnulls[6];
		int			c;

		for (c = 0; c < 6; c++)
			values[c] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, c + 1, &vnulls[c]);
		tuplestore_putvalues(rsi->setResult, rsi->setDesc, values, vnulls);
	}
	SPI_freetuptable(SPI_tuptable);
}

static int32
program_id_of(Datum program, bool isnull)
{
	Oid			argtypes[1] = {TEXTOID};
	bool		nullres;

	reconcile_owner_query("SELECT loyalty._program_id($1)", 1, argtypes, &program,
						  isnull ? "n" : NULL, true);
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &nullres));
}

/*
 * The ledger against the per-month sums, the balances against the ledger,
 * and the members' balances against their entries.  Without JIT: the planner's row estimates for accrual_month's
 * unnest are several times too high, enough to have a query that runs once
 * compiled, inlined and optimized, which costs more than the query (0.65 s
 * of 3 s with 130,000 accounts).
 */
static void
verify_books(ReturnSetInfo *rsi, int32 pid, const char *account)
{
	int			nest = NewGUCNestLevel();

	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	put_owner_rows(rsi, "SELECT * FROM loyalty._verify_ledger($1, $2)", pid, account);
	put_owner_rows(rsi, "SELECT * FROM loyalty._verify_balance($1, $2)", pid, account);
	/* the members' sub-wallets against their ledger entries */
	put_owner_rows(rsi, "SELECT * FROM loyalty._verify_members($1, $2)", pid, account);
	/* the product-line split of the qualifying spend, for scoped rebates */
	put_owner_rows(rsi, "SELECT * FROM loyalty._verify_rebate_lines($1, $2)", pid, account);
	AtEOXact_GUC(true, nest);
}

static bool account_exists(Datum *args, const char *nulls);
typedef struct Posted Posted;
static Target *shard_target(int32 attachment_id, Oid shard, MemoryContext cxt);
static Target *restated_shard(int32 attachment_id, MemoryContext cxt, int *n);
static bool shards_reconcile(ReturnSetInfo *rsi, const Target *t, bool backfill, DateADT since,
							 const char *account, Posted *out);

/* verify(program, account) names an account the program knows. */
static void
verify_check_account(Datum program, const char *account)
{
	Datum		args[2] = {program, CStringGetTextDatum(account)};

	if (!account_exists(args, "  "))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("account \"%s\" is not enrolled in loyalty program \"%s\"",
						account, TextDatumGetCString(program)),
				 errdetail("account is the ERP's customer key in text form, as loyalty.account holds it."),
				 errhint("List the program's accounts with SELECT account_key FROM loyalty.account, or check every account with loyalty.verify(program).")));
}

/*
 * Every check of verify, in the scope given: the attached tables'
 * triggers; the source rows of one account or of the document months from
 * since on against what was accrued; and, unless months are left out
 * (the ledger and balances are totals over every month), the ledger
 * against the per-month sums and the balances against the ledger.
 */
static void
verify_scope(FunctionCallInfo fcinfo, const char *account, DateADT since)
{
	ReturnSetInfo *rsi = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt;
	int32		pid;
	Target	   *targets;
	int			ntargets,
				i;

	InitMaterializedSRF(fcinfo, 0);
	cxt = CurrentMemoryContext;
	SPI_connect();
	pid = program_id_of(PG_GETARG_DATUM(0), false);
	if (account != NULL)
		verify_check_account(PG_GETARG_DATUM(0), account);
	put_owner_rows(rsi, "SELECT * FROM loyalty._verify_attachments($1)", pid, NULL);

	targets = program_targets(pid, cxt, &ntargets);
	for (i = 0; i < ntargets; i++)
	{
		SourceScan	s;

		if (shards_reconcile(rsi, &targets[i], false, since, account, NULL))
			continue;
		scan_init(&s, cxt, targets[i].attachment_id, since, account, "loyalty.verify()");
		scan_source(&s, targets[i].facts_sql);
		MemoryContextSwitchTo(s.cxt);
		compare_sums(&s, &targets[i]);
		MemoryContextSwitchTo(cxt);
		put_differences(rsi, &s, targets[i].attachment_id);
		MemoryContextDelete(s.cxt);
	}

	if (since == DATEVAL_NOBEGIN)
		verify_books(rsi, pid, account);
	SPI_finish();
}

#define VERIFY_EXAMPLE "For example SELECT * FROM loyalty.verify('Distributor Club')."

PG_FUNCTION_INFO_V1(loyalty_verify);
/*
 * loyalty.verify(program): every difference between what the attached
 * tables' rows earn and what was accrued, and between the per-month sums,
 * the ledger and the balances; the attached tables' triggers.
 */
Datum
loyalty_verify(PG_FUNCTION_ARGS)
{
	loyalty_require(PG_ARGISNULL(0), "program", LOYALTY_PROGRAM_DETAIL, VERIFY_EXAMPLE);
	verify_scope(fcinfo, NULL, DATEVAL_NOBEGIN);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(loyalty_verify_account);
/* loyalty.verify(program, account): verify's checks of one account. */
Datum
loyalty_verify_account(PG_FUNCTION_ARGS)
{
	const char *example = "For example SELECT * FROM loyalty.verify('Distributor Club', account => '1042').";

	loyalty_require(PG_ARGISNULL(0), "program", LOYALTY_PROGRAM_DETAIL, example);
	loyalty_require(PG_ARGISNULL(1), "account",
					"account is the ERP's customer key in text form, as loyalty.account holds it.",
					"For every account use loyalty.verify(program).");
	verify_scope(fcinfo, TextDatumGetCString(PG_GETARG_DATUM(1)), DATEVAL_NOBEGIN);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(loyalty_verify_since);
/*
 * loyalty.verify(program, since): the source rows of the document months
 * from since's on, against what was accrued for those months.
 */
Datum
loyalty_verify_since(PG_FUNCTION_ARGS)
{
	const char *example = "For example SELECT * FROM loyalty.verify('Distributor Club', since => '2025-06-01').";

	loyalty_require(PG_ARGISNULL(0), "program", LOYALTY_PROGRAM_DETAIL, example);
	loyalty_require(PG_ARGISNULL(1), "since",
					"since is the first document date to check (rounded down to its month).",
					"Use since => '-infinity', or loyalty.verify(program), to check every month.");
	if (DATE_IS_NOEND(PG_GETARG_DATEADT(1)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("since must be a date or -infinity, not infinity"),
				 errdetail("since is the first document date to check; from infinity on there is nothing to check."),
				 errhint("%s", example)));
	verify_scope(fcinfo, NULL, loyalty_month_start(PG_GETARG_DATEADT(1)));
	return (Datum) 0;
}

/* ---- backfill and restatement: posting the difference ---- */

struct Posted
{
	MemoryContext cxt;			/* of qualifying */
	int32		accounts;
	int32		months;
	int64		source_rows;
	int64		points;
	Numeric		qualifying;
	ReplayTotals replay;		/* the shards' replays of the tier history */
};

/* expected - accrued, as what a posting can carry */
static int64
posting_int64(SourceScan *s, int128 v)
{
	if (v < PG_INT64_MIN || v > PG_INT64_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("the points %s would post are out of range for type bigint", s->what)));
	return (int64) v;
}

/*
 * Posts the differences of a scan through the trigger's own path (caps,
 * balances, tier upgrades), and adds them up into *out.
 */
static void
post_differences(SourceScan *s, const char *kind, Posted *out)
{
	int			n = s->ndiffs,
				i;
	MonthDelta *d;
	char	  **keys;
	int			nkeys = 0;
	Numeric		zero;

	MemoryContextSwitchTo(s->cxt);
	d = palloc0(sizeof(MonthDelta) * (n + 1));
	keys = palloc(sizeof(char *) * (n + 1));
	zero = int64_to_numeric(0);
	for (i = 0; i < n; i++)
	{
		const SumEntry *e = s->diffs[i];

		d[i].account = (char *) e->key.account->key;
		d[i].month = e->key.month;
		/* signed: what the month lacks (or, after drift, has too much) */
		d[i].points_new = posting_int64(s, e->points - e->acc_points);
		d[i].qual_new = numeric_sub_opt_error(fixed_sum_value(&e->qualifying),
											  fixed_sum_value(&e->acc_qualifying), NULL);
		d[i].qual_old = zero;
		d[i].rows_new = posting_int64(s, (int128) e->rows - e->acc_rows);
		/* the month's documents, dated at the latest on its last day */
		if (d[i].rows_new > 0)
			d[i].max_date = loyalty_add_months(d[i].month, 1) - 1;
		if (nkeys == 0 || strcmp(keys[nkeys - 1], d[i].account) != 0)
			keys[nkeys++] = d[i].account;
		out->source_rows += d[i].rows_new;
		if (pg_add_s64_overflow(out->points, d[i].points_new, &out->points))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("the points %s would post are out of range for type bigint", s->what)));
		MemoryContextSwitchTo(out->cxt);
		out->qualifying = numeric_add_opt_error(out->qualifying, d[i].qual_new, NULL);
		MemoryContextSwitchTo(s->cxt);
	}
	out->accounts += nkeys;
	out->months += n;
	if (n == 0)
		return;
	/* accounts the trigger would have enrolled are enrolled first */
	(void) accounts_resolve(s->att->program, keys, nkeys, true);
	MemoryContextSwitchTo(s->cxt);
	ledger_post(s->att->program, s->att->id, d, n, kind, kind, kind);
	MemoryContextSwitchTo(s->cxt);
}

/*
 * Under automatic enrolment the customers of the rows from since on are
 * members from day one, as their first invoice would have made them.
 */
static void
enroll_customers(SourceScan *s)
{
	HASH_SEQ_STATUS seq;
	AccountEntry *e;
	char	  **keys = palloc(sizeof(char *) * (hash_get_num_entries(s->accounts) + 1));
	int			n = 0;

	if (!s->att->program->auto_enroll)
		return;
	hash_seq_init(&seq, s->accounts);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->from_since)
			keys[n++] = (char *) e->key;
	if (n > 0)
		(void) accounts_resolve(s->att->program, keys, n, true);
	MemoryContextSwitchTo(s->cxt);
}

/*
 * Recomputes one attachment's rows (of one account, or all) from a month
 * on and posts what they lack.  Reads under a snapshot taken now, after
 * whatever lock or write came before, so that what the scan sees and what
 * it compares with are the same moment.
 */
static void
reconcile_post(const Target *t, DateADT since, const char *account, const char *kind,
			   const char *what, bool enroll, bool latest, Posted *out)
{
	SourceScan	s;

	scan_init(&s, out->cxt, t->attachment_id, since, account, what);
	CommandCounterIncrement();
	/* latest: what others committed, even under REPEATABLE READ */
	PushActiveSnapshot(latest ? GetLatestSnapshot() : GetTransactionSnapshot());
	scan_source(&s, t->facts_sql);
	if (enroll)
		enroll_customers(&s);
	MemoryContextSwitchTo(s.cxt);
	compare_sums(&s, t);
	post_differences(&s, kind, out);
	PopActiveSnapshot();
	MemoryContextSwitchTo(out->cxt);
	MemoryContextDelete(s.cxt);
}

/*
 * Restates accounts of one attachment (every account when n is 0), the
 * document months from since's on, under the latest snapshot: what a race between a header change and its lines left
 * (header_race.c).  The caller is connected to SPI and runs as the role
 * whose statements raced; the attachment may be gone (detached), then
 * nothing is done.
 */
void
reconcile_restate(int32 attachment_id, char **accounts, int n, DateADT since, const char *what)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(attachment_id)};
	Target	   *t;
	int			nt,
				i;
	Posted		posted = {0};

	if (loyalty_shard_key() != 0)
		t = restated_shard(attachment_id, cxt, &nt);
	else
		t = read_targets("SELECT " TARGET_COLUMNS " FROM loyalty.attachment x"
						 " WHERE x.attachment_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL"
						 " AND " SOURCE_EXISTS, 1, argtypes, args, NULL, cxt, &nt);
	MemoryContextSwitchTo(cxt);
	posted.cxt = cxt;
	posted.qualifying = int64_to_numeric(0);
	if (nt == 0)
		return;
	since = since == DATEVAL_NOBEGIN ? since : loyalty_month_start(since);
	if (n == 0)
		reconcile_post(t, since, NULL, "restate", what, false, true, &posted);
	for (i = 0; i < n; i++)
		reconcile_post(t, since, accounts[i], "restate", what, false, true, &posted);
	MemoryContextSwitchTo(cxt);
}

/* ---- backfill's tier replay ---- */

static int
day_order(const void *a, const void *b)
{
	DateADT		x = ((const ReplayDay *) a)->day,
				y = ((const ReplayDay *) b)->day;

	return x < y ? -1 : (x > y ? 1 : 0);
}

static int
replay_key_order(const void *a, const void *b)
{
	return strcmp(((const ReplayAccount *) a)->key, ((const ReplayAccount *) b)->key);
}

/*
 * The qualifying spend of the rows from since on, per earning account and
 * document day (the same scan, pricing and enrolment as the posting pass),
 * handed to the replay of the tier history.  Runs before the posting pass,
 * which then prices every row with the replayed history.
 */
static void
backfill_replay(const Target *t, DateADT since, MemoryContext cxt, ReplayTotals *totals)
{
	SourceScan	s;
	HASH_SEQ_STATUS seq;
	AccountEntry *e;
	ReplayAccount *accts;
	int			n = 0,
				i;

	scan_init(&s, cxt, t->attachment_id, since, NULL, "loyalty.backfill()");
	if (s.att->program->ladder == NULL)
	{
		MemoryContextDelete(s.cxt);
		return;
	}
	s.by_day = true;
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	scan_source(&s, t->facts_sql);
	enroll_customers(&s);
	MemoryContextSwitchTo(s.cxt);
	accts = palloc(sizeof(ReplayAccount) * (hash_get_num_entries(s.accounts) + 1));
	hash_seq_init(&seq, s.accounts);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		ReplayAccount *a;

		if (e->info == NULL || e->nsums == 0)
			continue;
		a = &accts[n++];
		a->key = e->key;
		a->ndays = e->nsums;
		a->days = palloc(sizeof(ReplayDay) * e->nsums);
		for (i = 0; i < e->nsums; i++)
		{
			a->days[i].day = e->sums[i].key.month;
			a->days[i].qualifying = fixed_sum_value(&e->sums[i].qualifying);
		}
		qsort(a->days, a->ndays, sizeof(ReplayDay), day_order);
	}
	qsort(accts, n, sizeof(ReplayAccount), replay_key_order);
	replay_tiers(s.att->program, t->attachment_id, t->source, since, accts, n, totals);
	PopActiveSnapshot();
	MemoryContextSwitchTo(cxt);
	MemoryContextDelete(s.cxt);
}

/* backfill(source, program, since): what a value must be, before anything runs. */
static void
backfill_check_args(FunctionCallInfo fcinfo)
{
	loyalty_require(PG_ARGISNULL(0), "source", "source is the attached ERP table whose rows are accrued.",
					"For example loyalty.backfill('erp.invoice', 'Distributor Club', since => '2025-01-01').");
	loyalty_require(PG_ARGISNULL(1), "program", LOYALTY_PROGRAM_DETAIL,
					"For example loyalty.backfill('erp.invoice', 'Distributor Club', since => '2025-01-01').");
	loyalty_require(PG_ARGISNULL(2), "since",
					"since is the first document date to backfill (rounded down to its month).",
					"Use since => '-infinity' to backfill the whole history.");
	if (DATE_IS_NOEND(PG_GETARG_DATEADT(2)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("since must be a date or -infinity, not infinity"),
				 errdetail("since is the first document date to backfill; from infinity on there is nothing to backfill."),
				 errhint("Use since => '-infinity' to backfill the whole history.")));
}

PG_FUNCTION_INFO_V1(loyalty_backfill);
/*
 * loyalty.backfill(source, program, since): posts what the rows dated from
 * since's month on earn and have not accrued.
 */
Datum
loyalty_backfill(PG_FUNCTION_ARGS)
{
	MemoryContext cxt = CurrentMemoryContext;
	TupleDesc	desc;
	Oid			argtypes[2] = {REGCLASSOID, TEXTOID};
	Datum		args[2];
	char		nulls[3] = "  ";
	Target	   *t;
	int			n;
	Posted		posted = {0};
	Datum		values[5];
	bool		rnulls[5] = {false, false, false, false, false};
	HeapTuple	result;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);
	backfill_check_args(fcinfo);
	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';

	SPI_connect();
	t = read_targets("SELECT " TARGET_COLUMNS " FROM loyalty._attachment_of($1, $2) x",
					 2, argtypes, args, nulls, cxt, &n);
	/* one backfill of an attachment at a time; concurrent ERP writes go on */
	args[0] = Int32GetDatum(t->attachment_id);
	argtypes[0] = INT4OID;
	reconcile_owner_query("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.backfill'), $1)",
						  1, argtypes, args, NULL, false);

	MemoryContextSwitchTo(cxt);
	posted.cxt = cxt;
	posted.qualifying = int64_to_numeric(0);
	if (shards_reconcile(NULL, t, true, loyalty_month_start(PG_GETARG_DATEADT(2)), NULL, &posted))
		goto done;
	/* the tier history first: the points of every row then follow it */
	backfill_replay(t, loyalty_month_start(PG_GETARG_DATEADT(2)), cxt, NULL);
	MemoryContextSwitchTo(cxt);
	reconcile_post(t, loyalty_month_start(PG_GETARG_DATEADT(2)), NULL, "backfill",
				   "loyalty.backfill()", true, false, &posted);

done:
	MemoryContextSwitchTo(cxt);
	values[0] = Int32GetDatum(posted.accounts);
	values[1] = Int32GetDatum(posted.months);
	values[2] = Int64GetDatum(posted.source_rows);
	values[3] = Int64GetDatum(posted.points);
	values[4] = NumericGetDatum(posted.qualifying);
	result = heap_form_tuple(desc, values, rnulls);
	SPI_finish();
	return HeapTupleGetDatum(result);
}

/* ---- a distributed table (Citus): one shard at a time, on its node ---- */

/*
 * The shards of a Citus hash-distributed table (all, or the one holding
 * account), each with a value of the distribution column that hashes to it
 * (the account itself when given): a query filtered on that value is
 * routed by Citus to the shard, as a whole.  Columns: the shard's
 * qualified name, the value, the distribution column.  No rows: the table
 * is not distributed.  The values are tried in order, one at a time (the
 * series in the target list, not materialized): a shard of n holds 1/n of
 * the hash range, so about n are tried.
 */
#define SHARDS_SQL \
	"SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'" \
	"       OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s.shardid)," \
	"       coalesce($2, (SELECT g.k FROM (SELECT pg_catalog.generate_series(0, 2147483647)::pg_catalog.text AS k) g" \
	"                     WHERE pg_catalog.worker_hash(g.k" KEY_CAST ")" \
	"                           BETWEEN s.shardminvalue::pg_catalog.int4 AND s.shardmaxvalue::pg_catalog.int4 LIMIT 1))," \
	"       pg_catalog.quote_ident(pg_catalog.column_to_column_name(p.logicalrelid, p.partkey))" \
	" FROM pg_catalog.pg_dist_partition p" \
	" JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid OPERATOR(pg_catalog.=) p.logicalrelid" \
	" JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.logicalrelid" \
	" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace" \
	" WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1 AND p.partmethod OPERATOR(pg_catalog.=) 'h'" \
	"   AND ($2 IS NULL OR pg_catalog.worker_hash($2" KEY_CAST ")" \
	"        BETWEEN s.shardminvalue::pg_catalog.int4 AND s.shardmaxvalue::pg_catalog.int4)" \
	" ORDER BY s.shardid"

/* Adds a backfill row of reconcile_shard (item, value) into *out. */
static void
add_posted(Posted *out, const char *item, Datum value)
{
	MemoryContext old = MemoryContextSwitchTo(out->cxt);
	int64		v = strcmp(item, "qualifying") == 0 ? 0 : DatumGetInt64(DirectFunctionCall1(numeric_int8, value));

	if (strcmp(item, "accounts") == 0)
		out->accounts += (int32) v;
	else if (strcmp(item, "replay_accounts") == 0)
		out->replay.accounts += (int32) v;
	else if (strcmp(item, "replay_changes") == 0)
		out->replay.changes += v;
	else if (strcmp(item, "replay_written") == 0)
		out->replay.written += (int32) v;
	else if (strcmp(item, "replay_through") == 0)
		out->replay.through = (DateADT) v;
	else if (strcmp(item, "months") == 0)
		out->months += (int32) v;
	else if (strcmp(item, "source_rows") == 0)
		out->source_rows += v;
	else if (strcmp(item, "points") == 0)
		out->points += v;
	else
		out->qualifying = numeric_add_opt_error(out->qualifying, DatumGetNumeric(value), NULL);
	MemoryContextSwitchTo(old);
}

/*
 * A call of a function on each shard of a Citus hash-distributed table
 * (every shard, or the one holding account), on the node that holds it:
 * one query per shard, which Citus routes there as a whole, filtered on a
 * value of the distribution column that hashes to the shard.  call is the
 * function call, with %s where the shard's name goes (as a literal); the
 * arguments are constants in it: Citus cannot plan parameters in the
 * arguments of a function it sends to a shard.  The count makes one row,
 * whatever the shard holds: one call.  Returns the number of queries in
 * *sqls; 0 when the table is not distributed.  The caller is connected to
 * SPI.
 */
int
reconcile_shard_calls(Oid source, const char *account, const char *call, char ***sqls)
{
	Oid			argtypes[2] = {OIDOID, TEXTOID};
	Datum		args[2];
	char		nulls[3] = "  ";
	char	   *name;
	uint64		i;

	*sqls = NULL;
	if (!loyalty_citus_installed())
		return 0;
	args[0] = ObjectIdGetDatum(source);
	args[1] = account ? CStringGetTextDatum(account) : (Datum) 0;
	nulls[1] = account ? ' ' : 'n';
	reconcile_owner_query(SHARDS_SQL, 2, argtypes, args, nulls, true);
	name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(source)), get_rel_name(source));
	*sqls = palloc(sizeof(char *) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	shard = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		(*sqls)[i] = psprintf("SELECT r.* FROM (SELECT pg_catalog.count(*) FROM ONLY %s s"
							  " WHERE s.%s OPERATOR(pg_catalog.=) %s) c, LATERAL %s r",
							  name, SPI_getvalue(shard, desc, 3), quote_literal_cstr(SPI_getvalue(shard, desc, 2)),
							  psprintf(call, quote_literal_cstr(SPI_getvalue(shard, desc, 1))));
	}
	return (int) SPI_processed;
}

/*
 * On a Citus worker, at the commit of statements that fired on a shard
 * (header_race.c): the attachment over the shard of its source co-located
 * with that shard, the only rows of the accounts it restates on this node.
 */
static Target *
restated_shard(int32 attachment_id, MemoryContext cxt, int *n)
{
	Attachment *att = mapping_get(attachment_id);
	const char *name = loyalty_colocated_shard(att->source);
	Oid			shard;
	Target	   *t;

	if (name == NULL)
		elog(ERROR, "%s is not distributed with the shard loyalty's check fired on", att->source_name);
	shard = RangeVarGetRelid(makeRangeVarFromNameList(stringToQualifiedNameList(name)), AccessShareLock, false);
	t = shard_target(attachment_id, shard, cxt);
	t->source = att->source;
	*n = 1;
	return t;
}

/*
 * backfill of a program with a tier ladder on a distributed table: the
 * replay of the tier history runs on each shard's node (an account's rows
 * and tier history are all in its shard), before that shard posts; the
 * coordinator checks the program's rules once before any shard, and
 * records the shards' replays once after them.  True when the shards will
 * replay.
 */
static bool
shard_replay_begins(const Target *t, DateADT since)
{
	Attachment *att = mapping_get(t->attachment_id);
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1];

	if (att == NULL || !replay_will_run(att->program, since))
		return false;
	/* tier writes of a program one transaction at a time: fold() tries this lock here */
	args[0] = Int32GetDatum(att->program->id);
	reconcile_owner_query("SELECT loyalty._tier_lock($1)", 1, argtypes, args, NULL, false);
	return true;
}

/*
 * verify's comparison (backfill false: its rows into rsi) or backfill's
 * posting (the sums into *out) of an attachment whose table Citus
 * distributes, shard by shard, each on the node that holds it
 * (loyalty._reconcile_shard): the shard's rows are read, priced and
 * compared there with the co-located shards of loyalty's tables, and
 * backfill posts there, as the accrual trigger does.  The coordinator only
 * routes one query per shard (as the owner; the function runs the facts
 * query as the caller) and collects the answers.  Returns false when the
 * table is not distributed: the caller reconciles it here.
 */
static bool
shards_reconcile(ReturnSetInfo *rsi, const Target *t, bool backfill, DateADT since,
				 const char *account, Posted *out)
{
	char	  **sqls;
	int			n,
				i;
	uint64		j;
	bool		replays;

	/* since as a number of days: whatever the nodes' DateStyle */
	n = reconcile_shard_calls(t->source, account,
							  psprintf("loyalty._reconcile_shard(%d, %%s, %s, %s, %s, %s)",
									   t->attachment_id,
									   quote_literal_cstr(GetUserNameFromId(GetUserId(), false)),
									   backfill ? "true" : "false",
									   since == DATEVAL_NOBEGIN ? "'-infinity'::pg_catalog.date"
									   : psprintf("('2000-01-01'::pg_catalog.date OPERATOR(pg_catalog.+) %d)", (int) since),
									   account ? quote_literal_cstr(account) : "NULL"),
							  &sqls);
	replays = n > 0 && backfill && shard_replay_begins(t, since);
	for (i = 0; i < n; i++)
	{
		reconcile_owner_query(sqls[i], 0, NULL, NULL, NULL, !backfill);
		for (j = 0; j < SPI_processed; j++)
		{
			Datum		values[6];
			bool		vnulls[6];
			int			c;

			for (c = 0; c < 6; c++)
				values[c] = SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, c + 1, &vnulls[c]);
			if (backfill)
				add_posted(out, TextDatumGetCString(values[3]), values[4]);
			else
				tuplestore_putvalues(rsi->setResult, rsi->setDesc, values, vnulls);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	if (replays)
		replay_record(mapping_get(t->attachment_id)->program, t->attachment_id, since, &out->replay);
	return n > 0;
}

/* loyalty.account, whose shards the calls routed per account or per shard group go to. */
Oid
reconcile_account_table(void)
{
	return get_relname_relid("account", get_namespace_oid("loyalty", false));
}

/*
 * The step a routed call names, one of steps (n of them), as the constant
 * string of the list; an error for any other name.
 */
const char *
reconcile_step(text *name, const char *const *steps, int n, const char *what)
{
	char	   *s = text_to_cstring(name);
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(s, steps[i]) == 0)
			return steps[i];
	elog(ERROR, "loyalty has no %s \"%s\"", what, s);
	return NULL;				/* keep compiler quiet */
}

/*
 * The table a Citus shard (given by name) is a shard of, on this node;
 * from now on the firing shard, whose co-located shards loyalty_table
 * names, until loyalty_shard_leave().  The caller is connected to SPI.
 */
Oid
reconcile_enter_shard(text *name, Oid *shard)
{
	Relation	rel;
	Oid			logical;

	*shard = RangeVarGetRelid(makeRangeVarFromNameList(textToQualifiedNameList(name)), AccessShareLock, false);
	rel = relation_open(*shard, NoLock);
	logical = loyalty_trigger_table(rel);
	relation_close(rel, NoLock);
	if (logical == *shard)
		elog(ERROR, "%s is not a Citus shard", text_to_cstring(name));
	return logical;
}

/*
 * The attachment as this node's placement of loyalty.attachment holds it,
 * its facts query over the shard.
 */
static Target *
shard_target(int32 attachment_id, Oid shard, MemoryContext cxt)
{
	Oid			argtypes[2] = {INT4OID, OIDOID};
	Datum		args[2] = {Int32GetDatum(attachment_id), ObjectIdGetDatum(shard)};
	Target	   *t;
	int			n;

	t = read_targets(psprintf("SELECT x.attachment_id, x.program_id, x.source::pg_catalog.oid,"
							  " loyalty._facts_sql(x::pg_catalog.text::loyalty.attachment, $2::pg_catalog.regclass)"
							  " FROM %s x WHERE x.attachment_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL",
							  loyalty_table("attachment")),
					 2, argtypes, args, NULL, cxt, &n);
	if (n != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("loyalty attachment %d does not exist on this node", attachment_id)));
	return t;
}

/* Emits a backfill sum of reconcile_shard as a row (item, value). */
static void
put_posted(ReturnSetInfo *rsi, const char *item, Numeric value)
{
	Datum		values[6] = {0, 0, 0, CStringGetTextDatum(item), NumericGetDatum(value), 0};
	bool		nulls[6] = {true, true, true, false, false, true};

	tuplestore_putvalues(rsi->setResult, rsi->setDesc, values, nulls);
}

/* One shard, on its node: the firing shard is set, loyalty_table names the co-located shards. */
static void
shard_work(ReturnSetInfo *rsi, Target *t, bool backfill, DateADT since, const char *account,
		   MemoryContext cxt)
{
	if (!backfill)
	{
		SourceScan	s;

		scan_init(&s, cxt, t->attachment_id, since, account, "loyalty.verify()");
		scan_source(&s, t->facts_sql);
		MemoryContextSwitchTo(s.cxt);
		compare_sums(&s, t);
		MemoryContextSwitchTo(cxt);
		put_differences(rsi, &s, t->attachment_id);
		MemoryContextDelete(s.cxt);
	}
	else
	{
		Posted		posted = {0};

		posted.cxt = cxt;
		posted.qualifying = int64_to_numeric(0);
		backfill_replay(t, since, cxt, &posted.replay);
		MemoryContextSwitchTo(cxt);
		reconcile_post(t, since, NULL, "backfill", "loyalty.backfill()", true, false, &posted);
		MemoryContextSwitchTo(cxt);
		put_posted(rsi, "replay_accounts", int64_to_numeric(posted.replay.accounts));
		put_posted(rsi, "replay_changes", int64_to_numeric(posted.replay.changes));
		put_posted(rsi, "replay_written", int64_to_numeric(posted.replay.written));
		put_posted(rsi, "replay_through", int64_to_numeric(posted.replay.through));
		put_posted(rsi, "accounts", int64_to_numeric(posted.accounts));
		put_posted(rsi, "months", int64_to_numeric(posted.months));
		put_posted(rsi, "source_rows", int64_to_numeric(posted.source_rows));
		put_posted(rsi, "points", int64_to_numeric(posted.points));
		put_posted(rsi, "qualifying", posted.qualifying);
	}
}

PG_FUNCTION_INFO_V1(loyalty_reconcile_shard);
/*
 * loyalty._reconcile_shard(attachment, shard, caller, backfill, since,
 * account): shards_reconcile's work on the node of a shard, inside the
 * query Citus routed there.  The facts query runs as caller.
 */
Datum
loyalty_reconcile_shard(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsi = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt;
	Oid			shard;
	Oid			logical;
	Target	   *t;
	Oid			save_userid;
	int			save_sec;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		elog(ERROR, "loyalty._reconcile_shard takes no NULL but its account");
	InitMaterializedSRF(fcinfo, 0);
	cxt = CurrentMemoryContext;
	SPI_connect();
	PG_TRY();
	{
		logical = reconcile_enter_shard(PG_GETARG_TEXT_PP(1), &shard);
		t = shard_target(PG_GETARG_INT32(0), shard, cxt);
		if (t->source != logical)
			elog(ERROR, "loyalty attachment %d is not of the table of shard %s",
				 t->attachment_id, TextDatumGetCString(PG_GETARG_DATUM(1)));
		t->source = logical;
		GetUserIdAndSecContext(&save_userid, &save_sec);
		SetUserIdAndSecContext(get_role_oid(TextDatumGetCString(PG_GETARG_DATUM(2)), false),
							   save_sec | SECURITY_LOCAL_USERID_CHANGE);
		MemoryContextSwitchTo(cxt);
		shard_work(rsi, t, PG_GETARG_BOOL(3), PG_GETARG_DATEADT(4),
				   PG_ARGISNULL(5) ? NULL : TextDatumGetCString(PG_GETARG_DATUM(5)), cxt);
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

/* ---- enroll ---- */

/* Whoever may backfill may restate: both post what documents earn anew. */
static bool
may_restate(void)
{
	bool		isnull;

	loyalty_spi_check(SPI_execute("SELECT pg_catalog.has_function_privilege("
								  "'loyalty.backfill(pg_catalog.regclass, pg_catalog.text, pg_catalog.date)', 'EXECUTE')",
								  true, 1), SPI_OK_SELECT, "check the privileges of a restatement");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* Is (program name, account key) enrolled already?  Read as the owner. */
static bool
account_exists(Datum *args, const char *nulls)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	bool		isnull;

	if (nulls[0] == 'n' || nulls[1] == 'n')
		return false;
	reconcile_owner_query("SELECT EXISTS (SELECT FROM loyalty.account a JOIN loyalty.program p"
						  " ON p.program_id OPERATOR(pg_catalog.=) a.program_id"
						  " WHERE p.name OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST ")",
						  2, argtypes, args, NULL, true);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* Was the account enrolled from a day before today (the program's)? */
static bool
back_dated(int32 program_id, const char *account)
{
	Oid			argtypes[2] = {INT4OID, TEXTOID};
	Datum		args[2] = {Int32GetDatum(program_id), CStringGetTextDatum(account)};
	bool		isnull;

	reconcile_owner_query("SELECT a.enrolled_from OPERATOR(pg_catalog.<) loyalty._today(a.program_id)"
						  " FROM loyalty.account a WHERE a.program_id OPERATOR(pg_catalog.=) $1"
						  " AND a.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST, 2, argtypes, args, NULL, false);
	if (SPI_processed != 1)
		elog(ERROR, "account \"%s\" was not enrolled", account);
	return
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* One of a list of values, or NULL (the account keeps what it has). */
static void
enroll_check_choice(FunctionCallInfo fcinfo, int arg, const char *param, const char *const *allowed)
{
	char	   *value;
	StringInfoData list;
	int			i;

	if (PG_ARGISNULL(arg))
		return;
	value = TextDatumGetCString(PG_GETARG_DATUM(arg));
	initStringInfo(&list);
	for (i = 0; allowed[i] != NULL; i++)
	{
		if (strcmp(value, allowed[i]) == 0)
			return;
		appendStringInfo(&list, "%s%s", i > 0 ? ", " : "", allowed[i]);
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s: %s", param, quote_literal_cstr(value)),
			 errdetail("%s must be one of %s.", param, list.data),
			 errhint("For example %s => '%s'; leave it out (NULL) to keep the account's current value.",
					 param, allowed[0])));
}

/* A segment attribute is free text, but not empty: NULL keeps the current one. */
static void
enroll_check_not_empty(FunctionCallInfo fcinfo, int arg, const char *param)
{
	if (!PG_ARGISNULL(arg) && VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(arg)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", param),
				 errdetail("%s is a segment attribute of the account, matched by segment_multipliers.", param),
				 errhint("Give a value such as %s, or leave it out (NULL) to keep the account's current value.",
						 strcmp(param, "region") == 0 ? "region => 'North'" : "industry => 'construction'")));
}

/*
 * enroll(): every parameter checked here, before anything is written, so
 * that each error names the parameter and comes from enroll() itself.
 */
static void
enroll_check_args(FunctionCallInfo fcinfo)
{
	static const char *const models[] = {"direct", "distributor", "integrator", "reseller", NULL};
	static const char *const cohorts[] = {"pilot", "control", NULL};
	const char *example = "For example loyalty.enroll('Distributor Club', '1042', cohort => 'pilot').";
	text	   *key;

	loyalty_require(PG_ARGISNULL(0), "program", LOYALTY_PROGRAM_DETAIL, example);
	loyalty_require(PG_ARGISNULL(1), "account_key",
					"account_key is the ERP's customer key in text form, as the invoices carry it.", example);
	key = PG_GETARG_TEXT_PP(1);
	if (VARSIZE_ANY_EXHDR(key) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account_key must not be empty"),
				 errdetail("account_key is the ERP's customer key in text form; no invoice row with an empty key ever accrues."),
				 errhint("%s", example)));
	if (VARSIZE_ANY_EXHDR(key) > LOYALTY_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account_key is longer than %d bytes", LOYALTY_MAX_KEY_BYTES),
				 errdetail("It has %d bytes; the accrual parks rows whose account key is longer than %d bytes, so such an account would never earn.",
						   (int) VARSIZE_ANY_EXHDR(key), LOYALTY_MAX_KEY_BYTES),
				 errhint("Enrol the customer under the key its invoices carry.")));
	enroll_check_choice(fcinfo, 2, "cooperation_model", models);
	enroll_check_not_empty(fcinfo, 3, "industry");
	enroll_check_not_empty(fcinfo, 4, "region");
	if (!PG_ARGISNULL(5))
	{
		Numeric		spend = PG_GETARG_NUMERIC(5);

		if (numeric_is_nan(spend) || numeric_is_inf(spend) ||
			DatumGetBool(DirectFunctionCall2(numeric_lt, NumericGetDatum(spend),
											 NumericGetDatum(int64_to_numeric(0)))))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("potential_spend must be zero or a positive finite amount, not %s",
							DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(spend)))),
					 errdetail("potential_spend is the account's estimated annual wallet, the denominator of share of wallet."),
					 errhint("For example potential_spend => 250000; leave it out (NULL) to keep the account's current value.")));
	}
	enroll_check_choice(fcinfo, 6, "cohort", cohorts);
	if (!PG_ARGISNULL(7) && DATE_IS_NOEND(PG_GETARG_DATEADT(7)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("enrolled_from must be a date or -infinity, not infinity"),
				 errdetail("enrolled_from is the first document date that earns; from infinity on the account would never earn."),
				 errhint("Give a date, or enrolled_from => '-infinity' for all of the account's documents.")));
}

PG_FUNCTION_INFO_V1(loyalty_enroll);
/*
 * loyalty.enroll(program, account_key, ...): the writes as the owner
 * (loyalty._enroll); when the enrolment date changed for an account with
 * postings, its documents are recomputed as the caller and restated.
 */
Datum
loyalty_enroll(PG_FUNCTION_ARGS)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			argtypes[8] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, NUMERICOID, TEXTOID, DATEOID};
	Datum		args[8];
	char		nulls[9];
	bool		isnull;
	int32		pid;
	bool		restate;
	bool		first;
	char	   *account;
	int			i;

	enroll_check_args(fcinfo);
	for (i = 0; i < 8; i++)
	{
		args[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	nulls[8] = '\0';

	SPI_connect();
	first = !account_exists(args, nulls);
	reconcile_owner_query("SELECT e.enrolled_program, e.restate FROM loyalty._enroll($1, $2, $3, $4, $5, $6, $7, $8) e",
						  8, argtypes, args, nulls, false);
	pid = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	restate = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (restate)
	{
		Target	   *t;
		int			n;
		Posted		posted = {0};

		MemoryContextSwitchTo(cxt);
		account = TextDatumGetCString(PG_GETARG_DATUM(1));
		if (first && !back_dated(pid, account))
			;					/* its documents from today on: what enrolling means */
		else if (!may_restate())
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 first
					 ? errmsg("enrolling account \"%s\" from a past date restates its documents", account)
					 : errmsg("changing enrolled_from of account \"%s\" restates its documents", account),
					 first
					 ? errdetail("The customer has documents that were not accrued; those dated from enrolled_from on would earn.")
					 : errdetail("The account has postings; which of its documents earn would change."),
					 first
					 ? errhint("Ask a member of loyalty_admin to enrol it, or enrol it from today.")
					 : errhint("Ask a member of loyalty_admin to change it.")));
		t = program_targets(pid, cxt, &n);
		MemoryContextSwitchTo(cxt);
		posted.cxt = cxt;
		posted.qualifying = int64_to_numeric(0);
		for (i = 0; i < n; i++)
			reconcile_post(&t[i], DATEVAL_NOBEGIN, account, "restate",
						   "the restatement of enroll()", false, false, &posted);
	}
	SPI_finish();
	PG_RETURN_VOID();
}
