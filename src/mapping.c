/*
 * mapping.c — the backend cache of attachments and programs, and the
 * evaluation of an attachment's column mapping on ERP rows.
 *
 * An attachment's mapping is stored as SQL expressions over the source
 * (alias s) and its header (alias h).  Here they are parsed once into
 * executor expressions, so that mapping a row runs no SQL: a plain column is
 * a Var, an amount such as quantity * unit_price * (1 - discount) an
 * ordinary expression.
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "parser/analyze.h"
#include "parser/parser.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "keymap.h"
#include "mapping.h"

static MemoryContext config_cxt = NULL;
static HTAB *attachments = NULL;	/* attachment_id -> Attachment * */
static HTAB *programs = NULL;	/* program_id -> Program * */

typedef struct IdEntry
{
	int32		id;
	void	   *ptr;
} IdEntry;

/* Drops every cached attachment and program when configuration changed. */
void
mapping_refresh(void)
{
	HASHCTL		ctl;
	Oid			nsp;

	if (loyalty_config_valid && config_cxt != NULL)
		return;
	loyalty_check_version();
	if (config_cxt != NULL)
		MemoryContextDelete(config_cxt);
	config_cxt = AllocSetContextCreate(CacheMemoryContext, "loyalty config cache",
									   ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(IdEntry);
	ctl.hcxt = config_cxt;
	attachments = hash_create("loyalty attachments", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	programs = hash_create("loyalty programs", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	/* set valid first: an invalidation arriving while we build flips it back */
	loyalty_config_valid = true;
	loyalty_accounts_valid = false;
	nsp = get_namespace_oid("loyalty", false);
	loyalty_set_sentinels(get_relname_relid("program", nsp), get_relname_relid("account", nsp));
}

/* Without a refresh: the caches may be mid-build. */
static Program *
cached_program(int32 program_id)
{
	IdEntry    *e;
	bool		found;

	e = hash_search(programs, &program_id, HASH_ENTER, &found);
	if (!found)
	{
		e->ptr = NULL;
		e->ptr = rules_load_program(program_id, config_cxt);
	}
	return (Program *) e->ptr;
}

Program *
mapping_get_program(int32 program_id)
{
	OwnerScope	scope;
	Program    *p;

	mapping_refresh();
	loyalty_enter_owner(&scope);	/* the ERP's role cannot read loyalty tables */
	p = cached_program(program_id);
	loyalty_leave_owner(&scope);
	return p;
}

static char *
rel_qualified_name(Oid relid)
{
	char	   *rel = get_rel_name(relid);
	char	   *nsp;

	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	nsp = get_namespace_name(get_rel_namespace(relid));
	return quote_qualified_identifier(nsp, rel);
}

/*
 * Parses "SELECT e1, e2, ... FROM ONLY rel alias" and turns each target into
 * an ExprState over the relation's rows (varno 1 is the scan tuple).
 */
static void
build_exprs(const char *relname, const char *alias, char **exprs, ExprState **out)
{
	StringInfoData sql;
	List	   *raw;
	Query	   *query;
	ListCell   *lc;
	int			i;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ");
	for (i = 0; i < F_COUNT; i++)
		appendStringInfo(&sql, "%s%s", i > 0 ? ", " : "", exprs[i] ? exprs[i] : "NULL");
	appendStringInfo(&sql, " FROM ONLY %s %s", relname, alias);

	raw = raw_parser(sql.data, RAW_PARSE_DEFAULT);
	query = parse_analyze_fixedparams(linitial_node(RawStmt, raw), sql.data, NULL, 0, NULL);
	if (list_length(query->rtable) != 1 || query->hasAggs || query->hasWindowFuncs ||
		query->hasSubLinks || query->hasTargetSRFs)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a loyalty mapping expression must be a plain expression of the row's columns"),
				 errdetail("Mapping query: %s", sql.data)));
	i = 0;
	foreach(lc, query->targetList)
	{
		TargetEntry *te = lfirst_node(TargetEntry, lc);

		out[i] = exprs[i] ? ExecInitExpr(expression_planner(te->expr), NULL) : NULL;
		i++;
	}
}

/*
 * The lines' header key and the header's match column: both of one type,
 * compared with that type's own equality.
 */
static void
header_key_type(Attachment *att, const char *hname)
{
	AttrNumber	lk = get_attnum(att->source, att->header_key_column);
	AttrNumber	hm = get_attnum(att->header, att->header_match_column);
	Oid			lt,
				ht,
				lc,
				hc;
	int32		typmod;

	if (lk == InvalidAttrNumber || hm == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("loyalty attachment %d maps a header key column that no longer exists", att->id),
				 errdetail("Lines column \"%s\" of %s, header column \"%s\" of %s.",
						   att->header_key_column, att->source_name, att->header_match_column, hname),
				 errhint("Detach the program with loyalty.detach() and attach it again.")));
	get_atttypetypmodcoll(att->source, lk, &lt, &typmod, &lc);
	get_atttypetypmodcoll(att->header, hm, &ht, &typmod, &hc);
	if (getBaseType(lt) != getBaseType(ht) || lc != hc)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("loyalty attachment %d: lines column \"%s\" is %s but header column \"%s\" is %s",
						att->id, att->header_key_column, format_type_be(lt),
						att->header_match_column, format_type_be(ht)),
				 errdetail("Lines are matched with their header by the key type's own equality and collation."),
				 errhint("Give both columns the same type and collation, or detach the program.")));
	att->header_key_type = getBaseType(lt);
	att->header_key = keytype_get(att->header_key_type, lc, config_cxt);
}

static char *
cast(const char *expr, const char *type)
{
	return expr ? psprintf("(%s)::pg_catalog.%s", expr, type) : NULL;
}

static Attachment *
load_attachment(int32 id)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(id)};
	HeapTuple	tup;
	TupleDesc	desc;
	Attachment *att;
	char	   *src_exprs[F_COUNT] = {0};
	char	   *hdr_exprs[F_COUNT] = {0};
	char	   *e[F_COUNT] = {0};
	bool		isnull;
	Datum		d;
	MemoryContext old;
	int			i;
	int			nest;

	if (plan == NULL)
		plan = loyalty_prepare(
			"SELECT program_id, source, source_name, key_columns,"
			" account_expr, amount_expr, quantity_expr, date_expr, product_line_expr,"
			" currency_expr, doc_type_expr, due_date_expr, paid_date_expr,"
			" credit_note_types, header, header_key_column, header_match_column"
			" FROM loyalty.attachment"
			" WHERE attachment_id OPERATOR(pg_catalog.=) $1 AND detached_at IS NULL", 1, argtypes);
	if (loyalty_execute_latest(plan, args, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read loyalty.attachment");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("loyalty attachment %d does not exist or is detached", id),
				 errhint("A trigger of a detached attachment was left behind; drop it or run loyalty.detach() again.")));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	old = MemoryContextSwitchTo(config_cxt);
	att = palloc0(sizeof(Attachment));
	att->id = id;
	att->source = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	att->source_name = rel_qualified_name(att->source);	/* today's name, not the attach-time one */
	for (i = F_ACCOUNT; i <= F_PAID; i++)
		e[i] = SPI_getvalue(tup, desc, 5 + i);	/* NULL when unmapped */
	d = SPI_getbinval(tup, desc, 14, &isnull);
	if (!isnull)
	{
		Datum	   *items;
		int			n;

		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &items, NULL, &n);
		att->ncredit = n;
		att->credit_types = palloc(sizeof(char *) * (n > 0 ? n : 1));
		for (i = 0; i < n; i++)
			att->credit_types[i] = TextDatumGetCString(items[i]);
	}
	d = SPI_getbinval(tup, desc, 15, &isnull);
	att->has_header = !isnull;
	if (att->has_header)
		att->header = DatumGetObjectId(d);

	/* the row key: one column, or a ROW() of several */
	{
		Datum	   *items;
		int			n;
		StringInfoData key;

		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 4, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &items, NULL, &n);
		initStringInfo(&key);
		appendStringInfoString(&key, n > 1 ? "(ROW(" : "((");
		for (i = 0; i < n; i++)
			appendStringInfo(&key, "%ss.%s", i > 0 ? ", " : "", quote_identifier(TextDatumGetCString(items[i])));
		appendStringInfoString(&key, n > 1 ? "))::pg_catalog.text" : "))::pg_catalog.text");
		src_exprs[F_ROW_KEY] = key.data;
	}

	src_exprs[F_AMOUNT] = cast(e[F_AMOUNT], "numeric");
	src_exprs[F_QUANTITY] = cast(e[F_QUANTITY], "numeric");
	src_exprs[F_PRODUCT_LINE] = cast(e[F_PRODUCT_LINE], "text");
	{
		char	  **side = att->has_header ? hdr_exprs : src_exprs;

		side[F_ACCOUNT] = cast(e[F_ACCOUNT], "text");
		side[F_DATE] = cast(e[F_DATE], "date");
		side[F_CURRENCY] = cast(e[F_CURRENCY], "text");
		side[F_DOC_TYPE] = cast(e[F_DOC_TYPE], "text");
		side[F_DUE] = cast(e[F_DUE], "date");
		side[F_PAID] = cast(e[F_PAID], "date");
	}
	for (i = 0; i < F_COUNT; i++)
		att->mapped[i] = (src_exprs[i] != NULL || hdr_exprs[i] != NULL || (i <= F_PAID && e[i] != NULL));

	if (att->has_header)
	{
		char	   *hk = SPI_getvalue(tup, desc, 16);
		char	   *hm = SPI_getvalue(tup, desc, 17);
		char	   *hname = rel_qualified_name(att->header);

		att->header_key_column = pstrdup(hk);
		att->header_match_column = pstrdup(hm);
		att->header_name = hname;
		src_exprs[F_HEADER_KEY] = psprintf("s.%s", quote_identifier(hk));
		hdr_exprs[F_HEADER_KEY] = psprintf("h.%s", quote_identifier(hm));
		att->mapped[F_HEADER_KEY] = true;
		header_key_type(att, hname);
		att->header_rowtype = get_rel_type_id(att->header);
		loyalty_watch_relation(att->header);
	}

	/* parse with a pinned search_path: the stored text is fully qualified */
	MemoryContextSwitchTo(config_cxt);
	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	build_exprs(rel_qualified_name(att->source), "s", src_exprs, att->src);
	if (att->has_header)
		build_exprs(rel_qualified_name(att->header), "h", hdr_exprs, att->hdr);
	AtEOXact_GUC(true, nest);

	att->program = NULL;
	MemoryContextSwitchTo(old);
	/*
	 * No refresh here: an invalidation that arrived while we parsed (a lock
	 * taken processes pending messages) must not free what we are building;
	 * it only marks the cache stale for the next statement.
	 */
	att->program = cached_program(DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)));
	loyalty_watch_relation(att->source);
	return att;
}

Attachment *
mapping_get(int32 attachment_id)
{
	IdEntry    *e;
	bool		found;

	mapping_refresh();
	e = hash_search(attachments, &attachment_id, HASH_FIND, &found);
	if (found)
		return (Attachment *) e->ptr;
	{
		OwnerScope	scope;
		Attachment *att;

		/* read loyalty's tables as their owner: the ERP's role has no rights on them */
		loyalty_enter_owner(&scope);
		att = load_attachment(attachment_id);
		loyalty_leave_owner(&scope);
		e = hash_search(attachments, &attachment_id, HASH_ENTER, &found);
		e->ptr = att;
		return att;
	}
}

static Datum
eval(ExprState *state, ExprContext *econtext, bool *isnull)
{
	if (state == NULL)
	{
		*isnull = true;
		return (Datum) 0;
	}
	return ExecEvalExprSwitchContext(state, econtext, isnull);
}

static char *
eval_text(ExprState *state, ExprContext *econtext)
{
	bool		isnull;
	Datum		d = eval(state, econtext, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static bool
eval_date(ExprState *state, ExprContext *econtext, DateADT *out)
{
	bool		isnull;
	Datum		d = eval(state, econtext, &isnull);

	if (!isnull)
		*out = DatumGetDateADT(d);
	return !isnull;
}

static Numeric
eval_numeric(ExprState *state, ExprContext *econtext)
{
	bool		isnull;
	Datum		d = eval(state, econtext, &isnull);

	return isnull ? NULL : DatumGetNumeric(d);
}

static bool
is_credit_type(Attachment *att, const char *doc_type)
{
	int			i;

	if (doc_type == NULL)
		return false;
	for (i = 0; i < att->ncredit; i++)
		if (strcmp(att->credit_types[i], doc_type) == 0)
			return true;
	return false;
}

/*
 * Fills facts from a source row.  Values live in the econtext's per-tuple
 * memory (or CurrentMemoryContext for text): reset between rows.
 */
void
mapping_source_facts(Attachment *att, ExprContext *econtext,
					 TupleTableSlot *slot, RowFacts *f, bool with_account)
{
	memset(f, 0, sizeof(RowFacts));
	econtext->ecxt_scantuple = slot;
	f->amount = eval_numeric(att->src[F_AMOUNT], econtext);
	f->quantity = eval_numeric(att->src[F_QUANTITY], econtext);
	f->product_line = eval_text(att->src[F_PRODUCT_LINE], econtext);
	f->currency_mapped = att->mapped[F_CURRENCY];
	if (!att->has_header)
	{
		if (with_account)
			f->account = eval_text(att->src[F_ACCOUNT], econtext);
		f->has_date = eval_date(att->src[F_DATE], econtext, &f->date);
		f->currency = eval_text(att->src[F_CURRENCY], econtext);
		f->credit_note = is_credit_type(att, eval_text(att->src[F_DOC_TYPE], econtext));
		f->has_due = eval_date(att->src[F_DUE], econtext, &f->due);
		f->has_paid = eval_date(att->src[F_PAID], econtext, &f->paid);
	}
}

/* The header key of a source row, in its own type. */
Datum
mapping_header_key(Attachment *att, ExprContext *econtext, TupleTableSlot *slot, bool *isnull)
{
	econtext->ecxt_scantuple = slot;
	return eval(att->src[F_HEADER_KEY], econtext, isnull);
}

char *
mapping_row_key(Attachment *att, ExprContext *econtext, TupleTableSlot *slot)
{
	econtext->ecxt_scantuple = slot;
	return eval_text(att->src[F_ROW_KEY], econtext);
}

/* Evaluates the header expressions on a header row; returns its match key. */
Datum
mapping_header_facts(Attachment *att, ExprContext *econtext, TupleTableSlot *slot,
					 HeaderFacts *hf, bool *isnull)
{
	memset(hf, 0, sizeof(HeaderFacts));
	econtext->ecxt_scantuple = slot;
	hf->account = eval_text(att->hdr[F_ACCOUNT], econtext);
	hf->has_date = eval_date(att->hdr[F_DATE], econtext, &hf->date);
	hf->currency = eval_text(att->hdr[F_CURRENCY], econtext);
	hf->doc_type = eval_text(att->hdr[F_DOC_TYPE], econtext);
	hf->has_due = eval_date(att->hdr[F_DUE], econtext, &hf->due);
	hf->has_paid = eval_date(att->hdr[F_PAID], econtext, &hf->paid);
	return eval(att->hdr[F_HEADER_KEY], econtext, isnull);
}

void
mapping_apply_header(Attachment *att, const HeaderFacts *hf, RowFacts *f)
{
	if (hf == NULL)
	{
		f->header_missing = true;
		return;
	}
	f->account = hf->account;
	f->has_date = hf->has_date;
	f->date = hf->date;
	f->currency = hf->currency;
	f->credit_note = is_credit_type(att, hf->doc_type);
	f->has_due = hf->has_due;
	f->due = hf->due;
	f->has_paid = hf->has_paid;
	f->paid = hf->paid;
}
