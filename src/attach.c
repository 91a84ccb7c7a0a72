/*
 * attach.c — loyalty.attach() and the guard that keeps attachments valid
 * when their tables are altered.
 *
 * attach() runs in two phases.  As its caller (SECURITY INVOKER: the role
 * that called it, even under a SECURITY DEFINER function), it checks the
 * caller's TRIGGER and SELECT privileges on the tables and parses and
 * validates amount_expression, so that a role can attach nothing it could
 * not have written a trigger for, and no code of the caller's runs with
 * more rights than the caller's.  Then, as the extension owner, the
 * internal loyalty._attach() checks the column mapping against the catalog,
 * records the attachment and creates the triggers, with the validated
 * canonical expression text and no user code.
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "catalog/pg_inherits.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "mapping.h"

#define ATTACH_NARGS 17
#define ARG_SOURCE 0
#define ARG_AMOUNT_EXPRESSION 13
#define ARG_HEADER 14

static char *
relation_name(Oid relid)
{
	char	   *rel = get_rel_name(relid);

	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), rel);
}

/* loyalty's own tables feed nothing: their writes are the accrual's own. */
static void
refuse_own_table(Oid relid, const char *param)
{
	Oid			ext = get_extension_oid("loyalty", false);

	if (get_rel_namespace(relid) != get_namespace_oid("loyalty", false) &&
		getExtensionOfObject(RelationRelationId, relid) != ext)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s is a table of the loyalty extension", relation_name(relid)),
			 errdetail("%s names one of loyalty's own tables, which the accrual writes itself.", param),
			 errhint("Attach the ERP table the invoices or invoice lines are written to.")));
}

/*
 * Statement triggers fire for the table a statement names.  Rows of an
 * inheritance child are written to the child and never reach the parent's
 * triggers, but a DELETE or UPDATE through the parent changes them too, and
 * would reverse what they never earned; a partition or child attached on
 * its own misses what is written through its parent.  Only a plain table
 * without inheritance, or a partitioned table as a whole, accrues exactly.
 */
static void
refuse_inheritance(Oid relid, const char *param)
{
	if (get_rel_relkind(relid) == RELKIND_RELATION && has_subclass(relid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s has inheritance children", relation_name(relid)),
				 errdetail("%s: rows written to a child table fire none of the parent's statement triggers, but a DELETE or UPDATE through the parent changes them too.", param),
				 errhint("Make it a partitioned table (PARTITION BY) and attach that, or attach a table without children.")));
	if (has_superclass(relid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is %s of another table", relation_name(relid),
						get_rel_relispartition(relid) ? "a partition" : "an inheritance child"),
				 errdetail("%s: what is written through its parent fires the parent's statement triggers, not this table's.", param),
				 errhint("Attach the parent table.")));
}

/*
 * attach creates triggers on the table, run by every role that writes to
 * it: the caller must be allowed to create them, and to read what they map.
 */
static void
check_privileges(Oid relid)
{
	Oid			role = GetUserId();
	const char *missing = NULL;

	if (pg_class_aclcheck(relid, role, ACL_TRIGGER) != ACLCHECK_OK)
		missing = "TRIGGER";
	else if (pg_class_aclcheck(relid, role, ACL_SELECT) != ACLCHECK_OK)
		missing = "SELECT";
	if (missing == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to attach %s", relation_name(relid)),
			 errdetail("Attaching creates triggers that read the rows of %s: role %s needs the TRIGGER and SELECT privileges on it, and lacks %s.",
					   relation_name(relid), GetUserNameFromId(role, false), missing),
			 errhint("Ask the table's owner to GRANT TRIGGER, SELECT ON %s TO %s.",
					 relation_name(relid), quote_identifier(GetUserNameFromId(role, false)))));
}

static bool
is_money_type(Oid typid)
{
	typid = getBaseType(typid);
	return typid == NUMERICOID || typid == INT2OID || typid == INT4OID || typid == INT8OID;
}

/*
 * Parses amount_expression as the caller against the source (alias s),
 * refuses what could not be recomputed exactly, and returns its canonical
 * text: printed from the parse tree, every name outside pg_catalog
 * schema-qualified.
 */
static char *
canonical_amount(Oid source, const char *text)
{
	Relation	rel = relation_open(source, AccessShareLock);
	MemoryContext cxt = CurrentMemoryContext;
	Node	   *expr = NULL;
	char	   *canonical;

	PG_TRY();
	{
		expr = mapping_parse_expr(rel, "s", text, "amount_expression");
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		/* our own refusals already say what is wrong */
		if (edata->sqlerrcode == ERRCODE_INVALID_PARAMETER_VALUE ||
			ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid amount_expression for %s: %s", relation_name(source), edata->message),
				 errdetail("The expression was: %s", text),
				 errhint("Write an expression of the table's columns, e.g. 'quantity * unit_price * (1 - discount)'; qualify functions with their schema.")));
	}
	PG_END_TRY();

	mapping_check_deterministic(expr, "amount_expression");
	mapping_check_no_float(expr, "amount_expression", source);
	if (!is_money_type(exprType(expr)))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("amount_expression must be numeric or integer, not %s", format_type_be(exprType(expr))),
				 errdetail("The expression was: %s", text),
				 errhint("Cast it to numeric.")));
	canonical = mapping_deparse(expr, source, "s");

	/* what is stored must read back as the same expression */
	expr = mapping_parse_expr(rel, "s", canonical, "amount_expression");
	if (!is_money_type(exprType(expr)))
		elog(ERROR, "canonical amount_expression \"%s\" does not parse back", canonical);
	relation_close(rel, NoLock);
	return canonical;
}

/* The owner phase: loyalty._attach() with the validated arguments. */
static int32
attach_as_owner(FunctionCallInfo fcinfo, const char *amount)
{
	static const Oid types[ATTACH_NARGS] = {
		REGCLASSOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTARRAYOID, TEXTOID, TEXTOID, TEXTOID, REGCLASSOID, TEXTOID, TEXTOID
	};
	Datum		values[ATTACH_NARGS];
	char		nulls[ATTACH_NARGS];
	StringInfoData sql;
	OwnerScope	scope;
	MemoryContext cxt = CurrentMemoryContext;
	bool		isnull;
	int32		id;
	int			i;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT loyalty._attach(");
	for (i = 0; i < ATTACH_NARGS; i++)
	{
		appendStringInfo(&sql, "%s$%d", i > 0 ? ", " : "", i + 1);
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	appendStringInfoChar(&sql, ')');
	values[ARG_AMOUNT_EXPRESSION] = amount ? CStringGetTextDatum(amount) : (Datum) 0;
	nulls[ARG_AMOUNT_EXPRESSION] = amount ? ' ' : 'n';

	loyalty_enter_owner(&scope);
	PG_TRY();
	{
		if (SPI_execute_with_args(sql.data, ATTACH_NARGS, (Oid *) types, values, nulls, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not run loyalty._attach");
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* the error is attach()'s: no CONTEXT naming the internal function */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->context = NULL;
		ReThrowError(edata);
	}
	PG_END_TRY();
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	loyalty_leave_owner(&scope);
	return id;
}

PG_FUNCTION_INFO_V1(loyalty_attach);
/* loyalty.attach(): the caller's checks, then the owner's bookkeeping. */
Datum
loyalty_attach(PG_FUNCTION_ARGS)
{
	Oid			source;
	char	   *amount = NULL;
	char		relkind;
	int32		id;

	if (PG_NARGS() != ATTACH_NARGS)
		elog(ERROR, "loyalty.attach() takes %d arguments", ATTACH_NARGS);
	if (PG_ARGISNULL(ARG_SOURCE))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source must not be NULL"),
				 errhint("Name the ERP table to attach, e.g. loyalty.attach('erp.invoice', 'Club', ...).")));
	source = PG_GETARG_OID(ARG_SOURCE);
	(void) relation_name(source);	/* it exists */

	SPI_connect();
	refuse_own_table(source, "source");
	if (!PG_ARGISNULL(ARG_HEADER))
		refuse_own_table(PG_GETARG_OID(ARG_HEADER), "header");
	relkind = get_rel_relkind(source);
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a table", relation_name(source)),
				 errhint("Attach the table the ERP writes invoices or invoice lines to.")));
	refuse_inheritance(source, "source");
	if (!PG_ARGISNULL(ARG_HEADER))
		refuse_inheritance(PG_GETARG_OID(ARG_HEADER), "header");
	check_privileges(source);
	if (!PG_ARGISNULL(ARG_HEADER))
		check_privileges(PG_GETARG_OID(ARG_HEADER));
	if (!PG_ARGISNULL(ARG_AMOUNT_EXPRESSION))
		amount = canonical_amount(source, TextDatumGetCString(PG_GETARG_DATUM(ARG_AMOUNT_EXPRESSION)));
	id = attach_as_owner(fcinfo, amount);
	SPI_finish();
	PG_RETURN_INT32(id);
}

/* The relations an ALTER TABLE changed, read as the user who ran it. */
static Datum
altered_relations(void)
{
	int			ret = SPI_execute("SELECT pg_catalog.array_agg(DISTINCT c.objid)"
								  " FROM pg_catalog.pg_event_trigger_ddl_commands() c"
								  " WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass",
								  true, 1);
	bool		isnull;
	Datum		d;

	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read pg_event_trigger_ddl_commands()");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? (Datum) 0 : d;
}

PG_FUNCTION_INFO_V1(loyalty_check_mapped_columns);
/*
 * Event trigger at the end of ALTER TABLE: every active attachment of an
 * altered table (as source or header) must still parse, as the role that
 * altered it.  A rename or drop of a mapped column is refused here, with
 * what to do, instead of failing every later ERP write.  Expressions are
 * parsed, never planned or run.
 */
Datum
loyalty_check_mapped_columns(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Datum		rels;
	int32	   *ids;
	uint64		n;
	uint64		i;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("loyalty._check_mapped_columns() must be called as an event trigger")));
	if (creating_extension)
		PG_RETURN_VOID();
	SPI_connect();
	rels = altered_relations();
	if (rels == (Datum) 0)
	{
		SPI_finish();
		PG_RETURN_VOID();
	}
	{
		OwnerScope	scope;
		Oid			argtypes[1] = {OIDARRAYOID};

		if (plan == NULL)
			plan = loyalty_prepare("SELECT attachment_id FROM loyalty.attachment"
								   " WHERE detached_at IS NULL"
								   "   AND (source::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)"
								   "        OR header::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1))"
								   " ORDER BY attachment_id", 1, argtypes);
		loyalty_enter_owner(&scope);
		if (SPI_execute_plan(plan, &rels, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read loyalty.attachment");
		loyalty_leave_owner(&scope);
	}
	n = SPI_processed;
	ids = palloc(sizeof(int32) * (n + 1));
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	for (i = 0; i < n; i++)
		mapping_recheck(ids[i]);
	SPI_finish();
	PG_RETURN_VOID();
}
