/*
 * mapping.c — the backend cache of attachments and programs, and the
 * evaluation of an attachment's column mapping on ERP rows.
 *
 * An attachment's mapping is stored as SQL expressions over the source
 * (alias s) and its header (alias h).  Here they are parsed once into
 * executor expressions, so that mapping a row runs no SQL: a plain column is
 * a Var, an amount such as quantity * unit_price * (1 - discount) an
 * ordinary expression.
 *
 * Who runs what.  The stored values are read from loyalty.attachment as the
 * extension owner, and nothing else is: parse analysis runs type input
 * functions, the planner folds immutable functions and inlines SQL
 * functions and casts, the header look-up runs the key type's equality and
 * obeys row-level security.  All of that is code or policy the ERP's roles
 * own, so it runs as the role that writes the ERP rows, and a cached
 * attachment is only used by the role it was built for.
 *
 * attach() validates a user's amount expression with the same parser
 * (mapping_parse_expr), then stores the canonical text mapping_deparse
 * prints, every non-catalog name schema-qualified.
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

#include "keymap.h"
#include "mapping.h"

static MemoryContext config_cxt = NULL;
static HTAB *attachments = NULL;	/* (attachment_id, role) -> Attachment * */
static HTAB *programs = NULL;	/* program_id -> Program * */

typedef struct IdEntry
{
	int32		id;
	void	   *ptr;
} IdEntry;

/* role InvalidOid: the stored values, read as the owner, no expressions */
typedef struct AttKey
{
	int32		id;
	Oid			role;
} AttKey;

typedef struct AttEntry
{
	AttKey		key;
	Attachment *att;
} AttEntry;

/* What each mapped field is cast to, and the attach() parameter naming it. */
static const Oid field_type[F_COUNT] = {
	TEXTOID, NUMERICOID, NUMERICOID, DATEOID, TEXTOID, TEXTOID, TEXTOID,
	DATEOID, DATEOID, InvalidOid /* raw, in the key column's own type */ , TEXTOID,
	InvalidOid
};
static const char *const field_param[F_COUNT] = {
	"account_column", "amount", "quantity_column", "date_column",
	"product_line_column", "currency_column", "doc_type_column",
	"due_date_column", "paid_date_column", "line_header_column", "key_column",
	"line_product_column"
};

/* Drops every cached attachment and program when configuration changed. */
void
mapping_refresh(void)
{
	HASHCTL		ctl;
	Oid			nsp;

	if (loyalty_config_valid && config_cxt != NULL && !loyalty_watched_changed())
		return;
	loyalty_check_version();
	if (config_cxt != NULL)
	{
		HASH_SEQ_STATUS seq;
		AttEntry   *e;

		/* kept plans live outside config_cxt: free them with their attachments */
		hash_seq_init(&seq, attachments);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			loyalty_plan_forget(&e->att->header_plan);
			if (e->att->product_plan != NULL)
				SPI_freeplan(e->att->product_plan);
		}
		MemoryContextDelete(config_cxt);
	}
	config_cxt = AllocSetContextCreate(CacheMemoryContext, "loyalty config cache",
									   ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(IdEntry);
	ctl.hcxt = config_cxt;
	programs = hash_create("loyalty programs", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(AttKey);
	ctl.entrysize = sizeof(AttEntry);
	attachments = hash_create("loyalty attachments", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	/*
	 * Set valid first: an invalidation arriving while we build flips it
	 * back.  The account cache stays: it holds nothing of the configuration
	 * (an account read without the tier history a program now needs is read
	 * again, accounts.c).
	 */
	loyalty_config_valid = true;
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
 * Parsing one expression
 */

/* The raw parse tree of text, which must be one expression and nothing else. */
static Node *
raw_expression(const char *text, const char *what)
{
	List	   *raw = raw_parser(psprintf("SELECT %s", text), RAW_PARSE_DEFAULT);
	SelectStmt *sel;
	ResTarget  *rt = NULL;

	sel = list_length(raw) == 1 && IsA(linitial_node(RawStmt, raw)->stmt, SelectStmt)
		? (SelectStmt *) linitial_node(RawStmt, raw)->stmt : NULL;
	if (sel != NULL && list_length(sel->targetList) == 1)
		rt = linitial_node(ResTarget, sel->targetList);
	/* a * (or s.*) is a list of columns, which only a target list expands */
	if (rt != NULL && IsA(rt->val, ColumnRef) && IsA(llast(((ColumnRef *) rt->val)->fields), A_Star))
		rt = NULL;
	if (rt == NULL ||
		sel->op != SETOP_NONE || sel->distinctClause != NIL || sel->intoClause != NULL ||
		sel->fromClause != NIL || sel->whereClause != NULL || sel->groupClause != NIL ||
		sel->havingClause != NULL || sel->windowClause != NIL || sel->valuesLists != NIL ||
		sel->sortClause != NIL || sel->limitOffset != NULL || sel->limitCount != NULL ||
		sel->lockingClause != NIL || sel->withClause != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be one expression of the row's columns", what),
				 errdetail("It was: %s", text),
				 errhint("Write a single scalar expression such as quantity * unit_price, without FROM, WHERE, ORDER BY, LIMIT, UNION or a second statement.")));
	return rt->val;
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

/*
 * The lines' product key and the product table's key: both of one type,
 * compared with that type's own equality.
 */
static void
product_key_type(Attachment *att)
{
	AttrNumber	lk = get_attnum(att->source, att->product_key_column);
	AttrNumber	pk = get_attnum(att->product, att->product_match_column);
	Oid			lt,
				pt,
				lc,
				pc;
	int32		typmod;

	if (lk == InvalidAttrNumber || pk == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("loyalty attachment %d maps a product key column that no longer exists", att->id),
				 errdetail("Lines column \"%s\" of %s, product column \"%s\" of %s.",
						   att->product_key_column, att->source_name, att->product_match_column, att->product_name),
				 errhint("Detach the program with loyalty.detach() and attach it again.")));
	get_atttypetypmodcoll(att->source, lk, &lt, &typmod, &lc);
	get_atttypetypmodcoll(att->product, pk, &pt, &typmod, &pc);
	if (getBaseType(lt) != getBaseType(pt) || lc != pc)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("loyalty attachment %d: lines column \"%s\" is %s but product column \"%s\" is %s",
						att->id, att->product_key_column, format_type_be(lt),
						att->product_match_column, format_type_be(pt)),
				 errdetail("Lines are matched with their product by the key type's own equality and collation."),
				 errhint("Give both columns the same type and collation, or detach the program.")));
	att->product_key_type = getBaseType(lt);
	att->product_key = keytype_get(att->product_key_type, lc, config_cxt);
}

/* Refuses references to anything but the row's own user columns. */
static bool
foreign_var_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var))
	{
		Var		   *v = (Var *) node;

		if (v->varlevelsup != 0 || v->varno != 1 || v->varattno <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s may only name the row's own columns", (const char *) context),
					 errdetail("Whole-row references and system columns are not mapped.")));
		return false;
	}
	return expression_tree_walker(node, foreign_var_walker, context);
}

/*
 * Analyses text, an expression of rel's row under alias, as the current
 * user with the current search_path; nothing is planned or run (but the
 * input functions of typed constants).  Sub-selects, aggregates, window and
 * set-returning functions are refused: the trigger maps one row at a time.
 */
Node *
mapping_parse_expr(Relation rel, const char *alias, const char *text, const char *what)
{
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *nsitem;
	Node	   *raw = raw_expression(text, what);
	Node	   *expr;
	const char *refused = NULL;

	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   makeAlias(alias, NIL), false, true);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	expr = transformExpr(pstate, raw, EXPR_KIND_SELECT_TARGET);
	if (pstate->p_hasSubLinks)
		refused = "a sub-select";
	else if (pstate->p_hasAggs)
		refused = "an aggregate";
	else if (pstate->p_hasWindowFuncs)
		refused = "a window function";
	else if (pstate->p_hasTargetSRFs || expression_returns_set(expr))
		refused = "a set-returning function";
	if (refused)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain %s", what, refused),
				 errdetail("A mapping is a scalar expression of one row's columns; it was: %s", text),
				 errhint("Map a column, or an expression of the row's columns.")));
	(void) foreign_var_walker(expr, (void *) what);
	assign_expr_collations(pstate, expr);
	free_parsestate(pstate);
	return expr;
}

static Oid
type_namespace(Oid typid)
{
	HeapTuple	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	Oid			nsp;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for type %u", typid);
	nsp = ((Form_pg_type) GETSTRUCT(tup))->typnamespace;
	ReleaseSysCache(tup);
	return nsp;
}

/*
 * Volatile functions, and PostgreSQL's own stable ones: those depend on the
 * session (now(), the TimeZone of a timestamptz cast, current_setting()),
 * so a reversal in another session or on another day could compute another
 * amount.  A stable function of the user's (a dated rate-table look-up) is
 * the user's promise to give the same answer for the same row.
 */
static bool
volatile_checker(Oid funcid, void *context)
{
	char		v = func_volatile(funcid);

	if (v == PROVOLATILE_IMMUTABLE ||
		(v == PROVOLATILE_STABLE && get_func_namespace(funcid) != PG_CATALOG_NAMESPACE))
		return false;
	*(Oid *) context = funcid;
	return true;
}

static bool
temp_checker(Oid funcid, void *context)
{
	if (!isAnyTempNamespace(get_func_namespace(funcid)))
		return false;
	*(Oid *) context = funcid;
	return true;
}

static bool
volatile_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, volatile_checker, context))
		return true;
	if (IsA(node, SQLValueFunction) || IsA(node, NextValueExpr))
	{
		*(Oid *) context = InvalidOid;	/* CURRENT_DATE, CURRENT_USER, nextval */
		return true;
	}
	return expression_tree_walker(node, volatile_walker, context);
}

static bool
temp_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, temp_checker, context))
		return true;
	if (!IsA(node, List) && !IsA(node, CaseWhen) &&
		isAnyTempNamespace(type_namespace(exprType(node))))
	{
		*(Oid *) context = InvalidOid;
		return true;
	}
	return expression_tree_walker(node, temp_walker, context);
}

/*
 * Refuses volatile functions (a reversal recomputes what a row earned, and
 * must get the same number) and temporary objects (they vanish with the
 * session that made them, and every later ERP write would fail).
 */
void
mapping_check_deterministic(Node *expr, const char *what)
{
	Oid			funcid = InvalidOid;

	if (volatile_walker(expr, &funcid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 OidIsValid(funcid) && func_volatile(funcid) == PROVOLATILE_VOLATILE
				 ? errmsg("%s must not call volatile function %s", what, format_procedure(funcid))
				 : OidIsValid(funcid)
				 ? errmsg("%s must not call %s, which depends on the session (its clock, time zone or settings)",
						  what, format_procedure(funcid))
				 : errmsg("%s must not read the session's clock, user or a sequence", what),
				 errdetail("An update or delete of a row takes back exactly what the row earned, by computing its mapping again: it must give the same value every time."),
				 errhint("Use immutable functions, or stable functions of your own that give the same answer for the same row; convert timestamps with AT TIME ZONE and a fixed zone.")));
	if (temp_walker(expr, &funcid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not refer to temporary objects", what),
				 OidIsValid(funcid)
				 ? errdetail("Function %s() lives in a temporary schema, which is dropped with its session.",
							 get_func_name(funcid))
				 : errdetail("A type of the expression lives in a temporary schema, which is dropped with its session."),
				 errhint("Use functions and types of a permanent schema.")));
}

static bool
is_float(Oid typid)
{
	typid = getBaseType(typid);
	return typid == FLOAT4OID || typid == FLOAT8OID;
}

/* A cast to numeric of a float column or constant: exact from there on. */
static bool
is_numeric_cast_of_float(Node *node)
{
	Node	   *arg;

	if (!IsA(node, FuncExpr) || ((FuncExpr *) node)->funcresulttype != NUMERICOID ||
		(((FuncExpr *) node)->funcformat != COERCE_EXPLICIT_CAST &&
		 ((FuncExpr *) node)->funcformat != COERCE_IMPLICIT_CAST) ||
		list_length(((FuncExpr *) node)->args) != 1)
		return false;
	arg = linitial(((FuncExpr *) node)->args);
	while (IsA(arg, RelabelType))
		arg = (Node *) ((RelabelType *) arg)->arg;
	return (IsA(arg, Var) || IsA(arg, Const)) && is_float(exprType(arg));
}

/* The first float node, and the first float column, not under a numeric cast. */
typedef struct FloatFound
{
	Node	   *node;
	Var		   *var;
} FloatFound;

static bool
float_walker(Node *node, void *context)
{
	FloatFound *found = (FloatFound *) context;

	if (node == NULL || is_numeric_cast_of_float(node))
		return false;
	if (!IsA(node, List) && !IsA(node, CaseWhen) && is_float(exprType(node)))
	{
		if (found->node == NULL)
			found->node = node;
		if (IsA(node, Var))
		{
			found->var = (Var *) node;
			return true;
		}
	}
	return expression_tree_walker(node, float_walker, context);
}

/*
 * Money is never float: no node of the expression may compute in real or
 * double precision.  A float column (or constant) is accepted only directly
 * under a cast to numeric, where its stored value becomes exact.
 */
void
mapping_check_no_float(Node *expr, const char *what, Oid relid)
{
	FloatFound	found = {NULL, NULL};

	(void) float_walker(expr, &found);
	if (found.node == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_DATATYPE_MISMATCH),
			 errmsg("%s computes in floating point", what),
			 found.var
			 ? errdetail("Column %s has type %s: money is never float, a float product or sum is off by fractions of a cent.",
						 quote_identifier(get_attname(relid, found.var->varattno, false)),
						 format_type_be(found.var->vartype))
			 : errdetail("Part of it has type %s: money is never float, a float product or sum is off by fractions of a cent.",
						 format_type_be(exprType(found.node))),
			 errhint("Cast each float column to numeric first, e.g. unit_price::numeric * quantity * (1 - discount::numeric).")));
}

/*
 * The canonical text of an analysed expression over alias: printed with
 * search_path = pg_catalog, so that every function, operator and type of
 * another schema comes out schema-qualified and means the same thing
 * whatever search_path reads it later.
 */
char *
mapping_deparse(Node *expr, Oid relid, const char *alias)
{
	int			nest = NewGUCNestLevel();
	char	   *text;

	(void) set_config_option("search_path", "pg_catalog",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	text = deparse_expression(expr, deparse_context_for(alias, relid), true, false);
	AtEOXact_GUC(true, nest);
	return text;
}

/*
 * Reading an attachment (as the owner: values only)
 */

static char *
key_expression(Datum key_columns)
{
	Datum	   *items;
	int			n;
	int			i;
	StringInfoData key;

	deconstruct_array(DatumGetArrayTypeP(key_columns), TEXTOID, -1, false, TYPALIGN_INT, &items, NULL, &n);
	initStringInfo(&key);
	if (n > 1)
		appendStringInfoString(&key, "ROW(");
	for (i = 0; i < n; i++)
		appendStringInfo(&key, "%ss.%s", i > 0 ? ", " : "", quote_identifier(TextDatumGetCString(items[i])));
	if (n > 1)
		appendStringInfoChar(&key, ')');
	return key.data;
}

/* Fills the stored values of an attachment.  Runs as the owner, under SPI. */
static Attachment *
load_config(int32 id)
{
	static ShardPlan plan;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(id)};
	HeapTuple	tup;
	TupleDesc	desc;
	Attachment *att;
	char	   *e[F_COUNT] = {0};
	bool		isnull;
	Datum		d;
	MemoryContext old;
	int			i;

	if (loyalty_plan_stale(&plan))
		plan.plan = loyalty_prepare(
			psprintf("SELECT program_id, source, source_name, key_columns,"
					 " account_expr, amount_expr, quantity_expr, date_expr, product_line_expr,"
					 " currency_expr, doc_type_expr, due_date_expr, paid_date_expr,"
					 " credit_note_types, header, header_key_column, header_match_column,"
					 " product, line_product_column, product_id_column"
					 " FROM %s"
					 " WHERE attachment_id OPERATOR(pg_catalog.=) $1 AND detached_at IS NULL",
					 loyalty_table("attachment")), 1, argtypes);
	loyalty_spi_check(loyalty_execute_latest(plan.plan, args, 1), SPI_OK_SELECT, "read loyalty.attachment");
	if (SPI_processed != 1 && loyalty_citus_installed())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("loyalty attachment %d does not exist on this node", id),
				 errdetail("On a Citus cluster, the trigger fires on a shard of a table that was distributed after it was attached, on a node that holds no loyalty configuration."),
				 errhint("Run loyalty.detach() before distributing the table; then loyalty.distribute() and attach it again (see \"Running on Citus\" in loyalty's README).")));
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

	att->src_text[F_ROW_KEY] = key_expression(SPI_getbinval(tup, desc, 4, &isnull));
	att->src_text[F_AMOUNT] = e[F_AMOUNT];
	att->src_text[F_QUANTITY] = e[F_QUANTITY];
	d = SPI_getbinval(tup, desc, 18, &isnull);
	att->has_product = !isnull;
	if (att->has_product)
	{
		att->product = DatumGetObjectId(d);
		att->product_name = rel_qualified_name(att->product);
		att->product_key_column = SPI_getvalue(tup, desc, 19);
		att->product_match_column = SPI_getvalue(tup, desc, 20);
		att->product_line_text = e[F_PRODUCT_LINE];
		att->src_text[F_PRODUCT_KEY] = psprintf("s.%s", quote_identifier(att->product_key_column));
		loyalty_watch_relation(att->product);
	}
	else
		att->src_text[F_PRODUCT_LINE] = e[F_PRODUCT_LINE];
	{
		char	  **side = att->has_header ? att->hdr_text : att->src_text;

		side[F_ACCOUNT] = e[F_ACCOUNT];
		side[F_DATE] = e[F_DATE];
		side[F_CURRENCY] = e[F_CURRENCY];
		side[F_DOC_TYPE] = e[F_DOC_TYPE];
		side[F_DUE] = e[F_DUE];
		side[F_PAID] = e[F_PAID];
	}
	if (att->has_header)
	{
		att->header_key_column = SPI_getvalue(tup, desc, 16);
		att->header_match_column = SPI_getvalue(tup, desc, 17);
		att->header_name = rel_qualified_name(att->header);
		att->src_text[F_HEADER_KEY] = psprintf("s.%s", quote_identifier(att->header_key_column));
		att->hdr_text[F_HEADER_KEY] = psprintf("h.%s", quote_identifier(att->header_match_column));
		loyalty_watch_relation(att->header);
	}
	for (i = 0; i < F_COUNT; i++)
		att->mapped[i] = att->src_text[i] != NULL || att->hdr_text[i] != NULL;
	att->mapped[F_PRODUCT_LINE] |= att->has_product;
	MemoryContextSwitchTo(old);

	/*
	 * No refresh here: an invalidation that arrived while we read (a lock
	 * taken processes pending messages) must not free what we are building;
	 * it only marks the cache stale for the next statement.
	 */
	att->program = cached_program(DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)));
	loyalty_watch_relation(att->source);
	return att;
}

static Attachment *
config_entry(int32 id)
{
	AttKey		key = {id, InvalidOid};
	AttEntry   *e;
	bool		found;
	OwnerScope	scope;
	Attachment *att;

	e = hash_search(attachments, &key, HASH_FIND, &found);
	if (found)
		return e->att;
	/* read loyalty's tables as their owner: the ERP's role has no rights on them */
	loyalty_enter_owner(&scope);
	att = load_config(id);
	loyalty_leave_owner(&scope);
	e = hash_search(attachments, &key, HASH_ENTER, &found);
	e->att = att;
	return att;
}

Attachment *
mapping_get_config(int32 attachment_id)
{
	mapping_refresh();
	return config_entry(attachment_id);
}

/*
 * Building the expressions (as the current user)
 */

/* Which stored expression is being built, for the error that names it. */
typedef struct BuildStep
{
	Attachment *att;
	Oid			rel;
	const char *param;
	const char *text;
} BuildStep;

/*
 * Parses one stored expression over rel and casts it to type (InvalidOid:
 * left as it is).  Returns the analysed tree: nothing planned yet.
 */
static Node *
analyse_stored(Relation rel, const char *alias, const char *text, Oid type, const char *what)
{
	Node	   *expr = mapping_parse_expr(rel, alias, text, what);
	Oid			from = exprType(expr);

	if (OidIsValid(type) && from != type)
	{
		ParseState *pstate = make_parsestate(NULL);
		Node	   *cast = coerce_to_target_type(pstate, expr, from, type, -1, COERCION_EXPLICIT,
												 COERCE_EXPLICIT_CAST, -1);

		if (cast == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CANNOT_COERCE),
					 errmsg("cannot cast type %s to %s", format_type_be(from), format_type_be(type))));
		assign_expr_collations(pstate, cast);
		free_parsestate(pstate);
		expr = cast;
	}
	return expr;
}

static const char *
step_param(MapField f, bool header_side)
{
	return f == F_HEADER_KEY && header_side ? "header_id_column" : field_param[f];
}

/* Analyses every stored expression of one side; out (if given) gets them. */
static void
analyse_side(Attachment *att, bool header_side, BuildStep *step, Node **out)
{
	Oid			relid = header_side ? att->header : att->source;
	char	  **text = header_side ? att->hdr_text : att->src_text;
	Relation	rel = relation_open(relid, AccessShareLock);
	int			i;

	step->rel = relid;
	for (i = 0; i < F_COUNT; i++)
	{
		Oid			type = field_type[i];

		if (text[i] == NULL)
			continue;
		step->param = step_param(i, header_side);
		step->text = text[i];
		out[i] = analyse_stored(rel, header_side ? "h" : "s", text[i], type, step->param);
	}
	step->param = NULL;
	relation_close(rel, NoLock);
}

/* The product table's side of the mapping: its key and product line columns. */
static void
analyse_product(Attachment *att, BuildStep *step)
{
	Relation	rel = relation_open(att->product, AccessShareLock);

	step->rel = att->product;
	step->param = "product_id_column";
	step->text = psprintf("p.%s", quote_identifier(att->product_match_column));
	(void) mapping_parse_expr(rel, "p", step->text, step->param);
	step->param = "product_line_column";
	step->text = att->product_line_text;
	(void) mapping_parse_expr(rel, "p", step->text, step->param);
	step->param = NULL;
	relation_close(rel, NoLock);
}

/*
 * Errors about the mapping itself: a column or function gone, a type that
 * no longer casts, a stored text that is not one expression.  Others (a
 * cancel, a privilege, a function of the expression raising) pass as they
 * are.
 */
static bool
is_mapping_error(BuildStep *step, int code)
{
	return step->param != NULL && code != ERRCODE_INSUFFICIENT_PRIVILEGE &&
		(ERRCODE_TO_CATEGORY(code) == ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION ||
		 code == ERRCODE_INVALID_PARAMETER_VALUE || code == ERRCODE_FEATURE_NOT_SUPPORTED);
}

/*
 * Raises a mapping error again with what it is about: the program, the
 * table, and how to repair it.  for_ddl: raised by the ALTER TABLE check.
 */
static void
report_mapping_error(BuildStep *step, ErrorData *edata, bool for_ddl)
{
	char	   *detach = psprintf("SELECT loyalty.detach(%s, %s)",
								  quote_literal_cstr(step->att->source_name),
								  quote_literal_cstr(step->att->program->name));
	char	   *relname = rel_qualified_name(step->rel);

	if (for_ddl)
		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 step->rel == step->att->source
				 ? errmsg("this change to %s breaks its loyalty mapping of program \"%s\"",
						  relname, step->att->program->name)
				 : errmsg("this change to %s breaks the loyalty mapping of program \"%s\" on %s",
						  relname, step->att->program->name, step->att->source_name),
				 errdetail("Its %s mapping %s fails after the change: %s.", step->param, step->text, edata->message),
				 errhint("Detach the program first (%s), change the table, then attach it again.", detach)));
	ereport(ERROR,
			(errcode(edata->sqlerrcode),
			 errmsg("the loyalty mapping of program \"%s\" on %s no longer matches %s",
					step->att->program->name, step->att->source_name,
					step->rel == step->att->source ? "the table" : relname),
			 errdetail("Its %s mapping %s fails: %s.", step->param, step->text, edata->message),
			 errhint("Run %s, then attach the table again with its current columns.", detach)));
}

static void
check_read_privilege(Attachment *att, Oid relid, const char *what, Oid role)
{
	if (pg_class_aclcheck(relid, role, ACL_SELECT) == ACLCHECK_OK ||
		pg_attribute_aclcheck_all(relid, role, ACL_SELECT, ACLMASK_ALL) == ACLCHECK_OK)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for table %s", rel_qualified_name(relid)),
			 errdetail("Loyalty program \"%s\" reads the %s rows of the lines written to %s as the role that writes them, %s.",
					   att->program->name, what, att->source_name, GetUserNameFromId(role, false)),
			 errhint("GRANT SELECT ON %s TO %s;", rel_qualified_name(relid),
					 quote_identifier(GetUserNameFromId(role, false)))));
}

/*
 * Builds the executor expressions (and the header look-up) of an
 * attachment for the current user, in config_cxt.  The stored text is
 * fully qualified: search_path is pinned so that nothing the session set
 * can capture its names.
 */
static void
build_exprs(Attachment *att, bool header_side, BuildStep *step)
{
	Node	   *tree[F_COUNT] = {0};
	ExprState **out = header_side ? att->hdr : att->src;
	int			i;

	analyse_side(att, header_side, step, tree);
	for (i = 0; i < F_COUNT; i++)
	{
		if (tree[i] == NULL)
			continue;
		step->param = step_param(i, header_side);
		step->text = header_side ? att->hdr_text[i] : att->src_text[i];
		out[i] = ExecInitExpr((Expr *) expression_planner((Expr *) tree[i]), NULL);
		if (i == F_HEADER_KEY && !header_side)
			att->header_key_type = exprType(tree[i]);
	}
	step->param = NULL;
}

static Attachment *
build_for_user(Attachment *config, Oid role)
{
	MemoryContext old = MemoryContextSwitchTo(config_cxt);
	Attachment *att = palloc(sizeof(Attachment));
	BuildStep	step = {att, config->source, NULL, NULL};
	int			nest;

	*att = *config;
	att->built_for = role;
	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	PG_TRY();
	{
		build_exprs(att, false, &step);
		if (att->has_header)
			build_exprs(att, true, &step);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		if (!is_mapping_error(&step, edata->sqlerrcode))
			PG_RE_THROW();
		FlushErrorState();
		report_mapping_error(&step, edata, false);
	}
	PG_END_TRY();
	if (att->has_header)
	{
		check_read_privilege(att, att->header, "header", role);
		header_key_type(att, att->header_name);
		att->header_rowtype = get_rel_type_id(att->header);
		memset(&att->header_plan, 0, sizeof(ShardPlan));	/* prepared on first use (accrual.c), as this user */
	}
	if (att->has_product)
	{
		check_read_privilege(att, att->product, "product", role);
		product_key_type(att);
		att->product_plan = NULL;	/* prepared on first use (product.c), as this user */
	}
	AtEOXact_GUC(true, nest);
	MemoryContextSwitchTo(old);
	return att;
}

/*
 * The attachment with its expressions, built for (and only ever used by)
 * the current user.  Building runs the user's code: never as the owner.
 */
Attachment *
mapping_get(int32 attachment_id)
{
	Oid			role = GetUserId();
	AttKey		key = {attachment_id, role};
	AttEntry   *e;
	bool		found;
	Attachment *att;

	mapping_refresh();
	e = hash_search(attachments, &key, HASH_FIND, &found);
	if (found)
		return e->att;
	if (InSecurityRestrictedOperation() && role == loyalty_extension_owner())
		elog(ERROR, "loyalty mapping expressions must not be built as the extension owner");
	att = build_for_user(config_entry(attachment_id), role);
	e = hash_search(attachments, &key, HASH_ENTER, &found);
	e->att = att;
	return att;
}

/*
 * Parses (without planning) every stored expression of an attachment as
 * the current user, with the error that says what to do when one fails:
 * the check an ALTER TABLE of a mapped table gets before it commits.  A
 * role that may not even look up what the mapping names (a schema without
 * USAGE) cannot tell: its ALTER goes on.
 */
void
mapping_recheck(int32 attachment_id)
{
	Attachment *att;
	BuildStep	step;
	Node	   *tree[F_COUNT];
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	int			nest;

	mapping_refresh();
	att = config_entry(attachment_id);
	step.att = att;
	step.rel = att->source;
	step.param = NULL;
	step.text = NULL;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		nest = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		analyse_side(att, false, &step, tree);
		if (att->has_header)
			analyse_side(att, true, &step, tree);
		if (att->has_product)
			analyse_product(att, &step);
		AtEOXact_GUC(true, nest);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE)
			return;
		if (!is_mapping_error(&step, edata->sqlerrcode))
			ReThrowError(edata);
		report_mapping_error(&step, edata, true);
	}
	PG_END_TRY();
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

/* Expressions are evaluated only where they were built for the current user. */
static inline void
require_built(Attachment *att)
{
	if (att->built_for != GetUserId())
		elog(ERROR, "loyalty attachment %d was built for role %u, not for the current role %u",
			 att->id, att->built_for, GetUserId());
}

/*
 * Fills facts from a source row.  Values live in the econtext's per-tuple
 * memory (or CurrentMemoryContext for text): reset between rows.
 */
void
mapping_source_facts(Attachment *att, ExprContext *econtext,
					 TupleTableSlot *slot, RowFacts *f, bool with_account)
{
	require_built(att);
	memset(f, 0, sizeof(RowFacts));
	econtext->ecxt_scantuple = slot;
	f->amount = eval_numeric(att->src[F_AMOUNT], econtext);
	f->quantity = eval_numeric(att->src[F_QUANTITY], econtext);
	f->product_line = eval_text(att->src[F_PRODUCT_LINE], econtext);
	f->currency_mapped = att->mapped[F_CURRENCY];
	f->amount_mapped = att->mapped[F_AMOUNT];
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
	require_built(att);
	econtext->ecxt_scantuple = slot;
	return eval(att->src[F_HEADER_KEY], econtext, isnull);
}

char *
mapping_row_key(Attachment *att, ExprContext *econtext, TupleTableSlot *slot)
{
	require_built(att);
	econtext->ecxt_scantuple = slot;
	return eval_text(att->src[F_ROW_KEY], econtext);
}

/* Evaluates the header expressions on a header row; returns its match key. */
Datum
mapping_header_facts(Attachment *att, ExprContext *econtext, TupleTableSlot *slot,
					 HeaderFacts *hf, bool *isnull)
{
	require_built(att);
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

/*
 * FROM clause item for an ERP table: ONLY for a plain table (inheritance is
 * refused at attach), the whole tree for a partitioned one.  While a
 * trigger fires on a Citus shard, a table distributed with it is read in
 * its co-located shard on this node (loyalty_colocated_shard).
 */
char *
mapping_table_ref(Oid relid, const char *qualified_name)
{
	const char *shard = loyalty_colocated_shard(relid);

	/* a shard of a partitioned table is partitioned alike */
	return psprintf("%s%s", get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
					shard ? shard : qualified_name);
}
