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

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "catalog/pg_inherits.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#include "mapping.h"

/*
 * attach()'s parameters, and how many of them the owner phase, _attach(),
 * takes: the same in the same order up to the header's columns, which
 * _attach() names after the attachment's stored columns
 * (header_key_column: the lines' column, header_match_column: the
 * header's).  attach() calls them line_header_column and header_id_column;
 * the old names stay as deprecated aliases at the end.
 */
#define ATTACH_NARGS 22
#define OWNER_NARGS 20
#define SHARED_NARGS 17			/* the same in attach() and _attach() */
#define ARG_SOURCE 0
#define ARG_PROGRAM 1
#define ARG_ACCOUNT_COLUMN 2
#define ARG_DATE_COLUMN 5
#define ARG_KEY_COLUMN 6
#define ARG_PRODUCT_LINE_COLUMN 7
#define ARG_CREDIT_NOTE_TYPES 10
#define ARG_AMOUNT_EXPRESSION 13
#define ARG_HEADER 14
#define ARG_LINE_HEADER_COLUMN 15
#define ARG_HEADER_ID_COLUMN 16
#define ARG_OLD_HEADER_KEY_COLUMN 17
#define ARG_OLD_HEADER_MATCH_COLUMN 18
#define ARG_PRODUCT 19
#define ARG_LINE_PRODUCT_COLUMN 20
#define ARG_PRODUCT_ID_COLUMN 21
/* where _attach() takes the product's arguments */
#define OWN_PRODUCT 17
#define OWN_LINE_PRODUCT_COLUMN 18
#define OWN_PRODUCT_ID_COLUMN 19

#define ATTACH_EXAMPLE "For example loyalty.attach('erp.invoice', 'Distributor Club', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date')."
#define PRODUCT_EXAMPLE "For example product => 'erp.product', line_product_column => 'product_id' (the lines' column), product_line_column => 'category_id' (the product table's column)."
#define HEADER_EXAMPLE "For example header => 'erp.invoice', line_header_column => 'invoice_id' (the lines' column), header_id_column => 'id' (the header's key)."

/* The arguments of the owner phase, checked and completed by the caller phase. */
typedef struct AttachArgs
{
	Datum		values[OWNER_NARGS];
	bool		isnull[OWNER_NARGS];
} AttachArgs;

static char *
relation_name(Oid relid)
{
	char	   *rel = get_rel_name(relid);

	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errdetail("source and header name existing tables."),
				 errhint("Name the table, e.g. 'erp.invoice'.")));
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
			 strcmp(param, "header") == 0 ? errhint("Name the ERP's invoice header table.") :
			 strcmp(param, "product") == 0 ? errhint("Name the ERP's product table.") :
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

/* What Citus says of a table: how it is distributed, and with what. */
typedef struct CitusTable
{
	char		method;			/* pg_dist_partition.partmethod, 0: not a Citus table */
	char		model;			/* repmodel: 't' for a reference table */
	bool		colocated;		/* in loyalty.account's co-location group */
	char	   *column;			/* the distribution column */
} CitusTable;

static CitusTable
citus_table(Oid relid)
{
	Oid			argtypes[2] = {OIDOID, OIDOID};
	Datum		values[2];
	CitusTable	t = {0, 0, false, NULL};

	if (!loyalty_citus_installed())
		return t;
	values[0] = ObjectIdGetDatum(relid);
	values[1] = ObjectIdGetDatum(get_relname_relid("account", get_namespace_oid("loyalty", false)));
	SPI_connect();
	if (SPI_execute_with_args("SELECT p.partmethod, p.repmodel, EXISTS (SELECT FROM pg_catalog.pg_dist_partition a"
							  "   WHERE a.logicalrelid OPERATOR(pg_catalog.=) $2"
							  "     AND a.colocationid OPERATOR(pg_catalog.=) p.colocationid),"
							  " pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)"
							  " FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1",
							  2, argtypes, values, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		HeapTuple	tuple = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		t.method = DatumGetChar(SPI_getbinval(tuple, desc, 1, &isnull));
		t.model = DatumGetChar(SPI_getbinval(tuple, desc, 2, &isnull));
		t.colocated = DatumGetBool(SPI_getbinval(tuple, desc, 3, &isnull));
		t.column = SPI_getvalue(tuple, desc, 4);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	return t;
}

/*
 * A Citus table as source, header or product.  A table distributed by
 * customer accrues on its shards once loyalty's tables are distributed
 * with it (loyalty.distribute()): then every row a shard's trigger writes
 * belongs to a co-located shard on the same node.  The account is then the
 * distribution column: of the table itself, or of its header, which is
 * distributed the same way, so that a line's header lives in the shard
 * of the same customer, next to the line's.  A product table would be read
 * by a shard's trigger on a node that holds other shards of it: not
 * supported.  A reference table has a copy on every node, and its triggers
 * fire once per copy; a Citus local table keeps its rows in a shard of its
 * own.  account_column NULL: the account is not this table's (lines with a
 * header).
 */
static void
check_citus_table(Oid relid, CitusTable t, const char *param, const char *account_column)
{
	if (t.method == 0)
		return;
	if (t.method == 'n' && t.model == 't')
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is a Citus reference table", relation_name(relid)),
				 errdetail("%s: a reference table has a copy on every node, and a trigger on it fires once per copy: each invoice would earn its points once per node.", param),
				 errhint("Keep the ERP's invoice tables local or distributed by customer; see \"Running on Citus\" in loyalty's README.")));
	if (t.method != 'h')
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is a Citus %s table", relation_name(relid), t.method == 'n' ? "local" : "range or append distributed"),
				 errdetail("%s: its rows live in shards that loyalty's tables cannot be co-located with.", param),
				 errhint("Keep the ERP's invoice tables local, or distribute them by customer (hash); see \"Running on Citus\" in loyalty's README.")));
	if (strcmp(param, "product") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is a Citus distributed table", relation_name(relid)),
				 errdetail("product: a shard's trigger cannot read the rows of a distributed product table that live on other nodes."),
				 errhint("Attach a distributed invoice table without product, with its product line on the lines; see \"Running on Citus\" in loyalty's README.")));
	if (!t.colocated)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is distributed, but loyalty's tables are not distributed with it", relation_name(relid)),
				 errdetail("Its triggers fire on its shards, on the worker nodes; they write the accounts of their own rows, which must live in co-located shards."),
				 errhint("Run SELECT loyalty.distribute('%s') first; see \"Running on Citus\" in loyalty's README.", relation_name(relid))));
	if (account_column != NULL && (t.column == NULL || strcmp(t.column, account_column) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("account_column must be %s, the distribution column of %s", t.column ? quote_identifier(t.column) : "the distribution column", relation_name(relid)),
				 errdetail("A row accrues on the shard that holds it, so its account must hash to the same shard: the account is the column Citus distributes the %s by.",
						   strcmp(param, "header") == 0 ? "header table" : "table"),
				 errhint("Attach with account_column => '%s'.", t.column ? t.column : "")));
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
	Relation	rel;
	MemoryContext cxt = CurrentMemoryContext;
	Node	   *expr = NULL;
	char	   *canonical;

	if (strspn(text, " \t\r\n") == strlen(text))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount_expression must not be empty"),
				 errdetail("amount_expression is one expression of the row's columns that gives the amount."),
				 errhint("For example amount_expression => 'quantity * unit_price * (1 - discount)', or map a column with amount_column.")));
	rel = relation_open(source, AccessShareLock);
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
attach_as_owner(AttachArgs *a)
{
	static const Oid types[OWNER_NARGS] = {
		REGCLASSOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTARRAYOID, TEXTOID, TEXTOID, TEXTOID, REGCLASSOID, TEXTOID, TEXTOID,
		REGCLASSOID, TEXTOID, TEXTOID
	};
	char		nulls[OWNER_NARGS];
	StringInfoData sql;
	OwnerScope	scope;
	MemoryContext cxt = CurrentMemoryContext;
	bool		isnull;
	int32		id;
	int			i;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT loyalty._attach(");
	for (i = 0; i < OWNER_NARGS; i++)
	{
		appendStringInfo(&sql, "%s$%d", i > 0 ? ", " : "", i + 1);
		nulls[i] = a->isnull[i] ? 'n' : ' ';
	}
	appendStringInfoChar(&sql, ')');

	loyalty_enter_owner(&scope);
	PG_TRY();
	{
		loyalty_spi_check(SPI_execute_with_args(sql.data, OWNER_NARGS, (Oid *) types, a->values, nulls,
												false, 1), SPI_OK_SELECT, "run loyalty._attach");
	}
	PG_CATCH();
	{
		/* the error is attach()'s: no CONTEXT naming the internal function */
		MemoryContextSwitchTo(cxt);
		loyalty_rethrow_as_own(CopyErrorData());
	}
	PG_END_TRY();
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	loyalty_leave_owner(&scope);
	return id;
}

/*
 * A header column by its deprecated name or its new one, not both: the old
 * names (header_key_column, header_match_column) said neither which table
 * they belong to.
 */
static void
header_param(FunctionCallInfo fcinfo, AttachArgs *a, int arg, int old_arg,
			 const char *param, const char *old_param)
{
	if (PG_ARGISNULL(old_arg))
		return;
	if (!PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give %s or its deprecated name %s, not both", param, old_param),
				 errdetail("%s is the old name of %s.", old_param, param),
				 errhint("Give %s only.", param)));
	ereport(NOTICE,
			(errmsg("attach() parameter %s is deprecated; it is called %s now", old_param, param),
			 errhint("Name it %s: the old name will be removed in a later version.", param)));
	a->values[arg] = PG_GETARG_DATUM(old_arg);
	a->isnull[arg] = false;
}

/* The user columns of a table, for a hint. */
static char *
column_names(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped)
			appendStringInfo(&buf, "%s%s", buf.len > 0 ? ", " : "",
							 quote_identifier(NameStr(TupleDescAttr(desc, i)->attname)));
	relation_close(rel, AccessShareLock);
	return buf.data;
}

/* A column of a table that must exist, or an error naming the parameter. */
static AttrNumber
existing_column(Oid relid, const char *param, const char *col)
{
	AttrNumber	attnum = get_attnum(relid, col);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation %s does not exist", col, relation_name(relid)),
				 errdetail("%s names a column of %s.", param, relation_name(relid)),
				 errhint("Columns of %s: %s.", relation_name(relid), column_names(relid))));
	return attnum;
}

/*
 * A table's single-column primary key: the default header_id_column (of the
 * header) and product_id_column (of the product table).
 */
static char *
single_primary_key(Oid header, const char *param, const char *idparam, const char *whose,
				   const char *example)
{
	Relation	rel = relation_open(header, AccessShareLock);
	Oid			pk = RelationGetPrimaryKeyIndex(rel);
	char	   *col = NULL;

	if (OidIsValid(pk))
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pk));

		if (HeapTupleIsValid(tup))
		{
			Form_pg_index ind = (Form_pg_index) GETSTRUCT(tup);

			if (ind->indnkeyatts == 1 && ind->indkey.values[0] > 0)
				col = get_attname(header, ind->indkey.values[0], false);
			ReleaseSysCache(tup);
		}
	}
	relation_close(rel, AccessShareLock);
	if (col == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s %s has no single-column primary key", param, relation_name(header)),
				 errdetail("%s names the %s column that the lines reference; by default its primary key.", idparam, whose),
				 errhint("Name it with %s, e.g. %s => '%s'.", idparam, idparam, example)));
	return col;
}

/*
 * Whether a column is part of a unique key of its table: of its primary key
 * or of a plain unique index.  Alone it may not be unique (a partitioned
 * header's key includes the partition key), but a column outside every
 * unique key surely is not a header's identifier.
 */
static bool
column_in_unique_key(Oid relid, AttrNumber attnum)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		found = false;

	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index ind;
		int			i;

		if (!HeapTupleIsValid(tup))
			continue;
		ind = (Form_pg_index) GETSTRUCT(tup);
		if (ind->indisunique &&
			heap_attisnull(tup, Anum_pg_index_indpred, NULL) &&
			heap_attisnull(tup, Anum_pg_index_indexprs, NULL))
			for (i = 0; i < ind->indnkeyatts; i++)
				if (ind->indkey.values[i] == attnum)
					found = true;
		ReleaseSysCache(tup);
	}
	list_free(indexes);
	relation_close(rel, AccessShareLock);
	return found;
}

/*
 * The header and its two columns: the lines' column that references the
 * header (line_header_column) and the header's own key (header_id_column,
 * by default its primary key).  Each line must find one header row, by the
 * key type's own equality.
 */
static void
check_header(Oid source, AttachArgs *a)
{
	Oid			header = DatumGetObjectId(a->values[ARG_HEADER]);
	char		relkind = get_rel_relkind(header);
	char	   *line_col;
	char	   *header_col;
	AttrNumber	line_att,
				header_att;
	Oid			lt,
				ht,
				lc,
				hc;
	int32		typmod;

	(void) relation_name(header);	/* it exists */
	refuse_own_table(header, "header");
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("header %s is not a table", relation_name(header)),
				 errdetail("header names the table that holds the lines' customer and document date."),
				 errhint("Name the ERP's invoice header table.")));
	check_privileges(header);
	if (header == source)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("header must be another table than source"),
				 errdetail("Both name %s: a table whose rows hold their own customer and date needs no header.",
						   relation_name(source)),
				 errhint("Leave out header and its columns, and map the columns of %s directly.", relation_name(source))));
	if (a->isnull[ARG_LINE_HEADER_COLUMN])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("line_header_column must not be NULL when header is given"),
				 errdetail("line_header_column names the column of the lines table %s that references the header table.",
						   relation_name(source)),
				 errhint(HEADER_EXAMPLE)));
	line_col = TextDatumGetCString(a->values[ARG_LINE_HEADER_COLUMN]);
	line_att = existing_column(source, "line_header_column", line_col);
	if (a->isnull[ARG_HEADER_ID_COLUMN])
	{
		header_col = single_primary_key(header, "header", "header_id_column", "header's", "invoice_id");
		a->values[ARG_HEADER_ID_COLUMN] = CStringGetTextDatum(header_col);
		a->isnull[ARG_HEADER_ID_COLUMN] = false;
	}
	else
		header_col = TextDatumGetCString(a->values[ARG_HEADER_ID_COLUMN]);
	header_att = existing_column(header, "header_id_column", header_col);
	if (!column_in_unique_key(header, header_att))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("header_id_column \"%s\" of %s is not a key of the header", header_col, relation_name(header)),
				 errdetail("Each line must find one header row; a column of neither the header's primary key nor a unique index may find several."),
				 errhint("Name the header's primary key column, or a column with a unique index.")));
	get_atttypetypmodcoll(source, line_att, &lt, &typmod, &lc);
	get_atttypetypmodcoll(header, header_att, &ht, &typmod, &hc);
	if (getBaseType(lt) != getBaseType(ht) || lc != hc)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("line_header_column \"%s\" is %s but header_id_column \"%s\" is %s",
						line_col, format_type_be(lt), header_col, format_type_be(ht)),
				 errdetail("Lines are matched with their header by the key type's own equality and collation."),
				 errhint("Name two columns of the same type and collation.")));
}

/*
 * The product table (the product master) and its two columns: the lines'
 * column that references it (line_product_column) and its own key
 * (product_id_column, by default its primary key).  Each line finds at most
 * one product, by the key type's own equality; product_line_column then
 * names the product table's column.  Its triggers keep a product's earlier
 * lines, so the caller must be allowed to create them.
 */
static void
check_product(Oid source, AttachArgs *a)
{
	Oid			product = DatumGetObjectId(a->values[OWN_PRODUCT]);
	char		relkind = get_rel_relkind(product);
	char	   *line_col;
	char	   *product_col;
	AttrNumber	line_att,
				product_att;
	Oid			lt,
				pt,
				lc,
				pc;
	int32		typmod;

	(void) relation_name(product);	/* it exists */
	refuse_own_table(product, "product");
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("product %s is not a table", relation_name(product)),
				 errdetail("product names the table that holds each product's product line."),
				 errhint("Name the ERP's product table.")));
	refuse_inheritance(product, "product");
	check_privileges(product);
	if (product == source || (!a->isnull[ARG_HEADER] && product == DatumGetObjectId(a->values[ARG_HEADER])))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("product must be another table than source and header"),
				 errdetail("product names %s, which the mapping reads already.", relation_name(product)),
				 errhint("Map the product line with product_line_column alone when the lines hold it.")));
	if (a->isnull[OWN_LINE_PRODUCT_COLUMN] || a->isnull[ARG_PRODUCT_LINE_COLUMN])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL when product is given",
						a->isnull[OWN_LINE_PRODUCT_COLUMN] ? "line_product_column" : "product_line_column"),
				 errdetail("line_product_column names the column of the lines table %s that references the product table; product_line_column the product table's column that holds the product line.",
						   relation_name(source)),
				 errhint(PRODUCT_EXAMPLE)));
	line_col = TextDatumGetCString(a->values[OWN_LINE_PRODUCT_COLUMN]);
	line_att = existing_column(source, "line_product_column", line_col);
	(void) existing_column(product, "product_line_column", TextDatumGetCString(a->values[ARG_PRODUCT_LINE_COLUMN]));
	if (a->isnull[OWN_PRODUCT_ID_COLUMN])
	{
		product_col = single_primary_key(product, "product", "product_id_column", "product table's", "product_id");
		a->values[OWN_PRODUCT_ID_COLUMN] = CStringGetTextDatum(product_col);
		a->isnull[OWN_PRODUCT_ID_COLUMN] = false;
	}
	else
		product_col = TextDatumGetCString(a->values[OWN_PRODUCT_ID_COLUMN]);
	product_att = existing_column(product, "product_id_column", product_col);
	if (!column_in_unique_key(product, product_att))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("product_id_column \"%s\" of %s is not a key of the product table", product_col, relation_name(product)),
				 errdetail("Each line must find one product; a column of neither the product table's primary key nor a unique index may find several."),
				 errhint("Name the product table's primary key column, or a column with a unique index.")));
	get_atttypetypmodcoll(source, line_att, &lt, &typmod, &lc);
	get_atttypetypmodcoll(product, product_att, &pt, &typmod, &pc);
	if (getBaseType(lt) != getBaseType(pt) || lc != pc)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("line_product_column \"%s\" is %s but product_id_column \"%s\" is %s",
						line_col, format_type_be(lt), product_col, format_type_be(pt)),
				 errdetail("Lines are matched with their product by the key type's own equality and collation."),
				 errhint("Name two columns of the same type and collation.")));
}

/* key_column: one column name, or several separated by commas, none empty. */
static void
check_key_column(const char *list)
{
	const char *p = list;

	for (;;)
	{
		size_t		len = strcspn(p, ",");
		size_t		blank = strspn(p, " \t\r\n");

		if (blank >= len)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid key_column: %s", quote_literal_cstr(list)),
					 errdetail("key_column names the columns that identify a row, separated by commas; one of them is empty."),
					 errhint("For example key_column => 'invoice_id, line_no', or leave it out for the primary key.")));
		if (p[len] == '\0')
			break;
		p += len + 1;
	}
}

/*
 * The Citus checks of source, header and product (check_citus_table).  A
 * distributed table of lines takes a header distributed with it, by the
 * customer the account comes from.
 */
static void
check_citus_sources(FunctionCallInfo fcinfo)
{
	const char *account = PG_ARGISNULL(ARG_ACCOUNT_COLUMN) ? "" : TextDatumGetCString(PG_GETARG_DATUM(ARG_ACCOUNT_COLUMN));
	Oid			source = PG_GETARG_OID(ARG_SOURCE);
	CitusTable	src;

	if (!loyalty_citus_installed())
		return;
	src = citus_table(source);
	if (!PG_ARGISNULL(ARG_PRODUCT))
		check_citus_table(PG_GETARG_OID(ARG_PRODUCT), citus_table(PG_GETARG_OID(ARG_PRODUCT)), "product", account);
	if (src.method == 'h' && !PG_ARGISNULL(ARG_PRODUCT))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a distributed table cannot be attached with product"),
				 errdetail("%s is distributed: its triggers fire on shards, on nodes that do not hold the whole product table.",
						   relation_name(source)),
				 errhint("Attach a distributed invoice table that holds its product line itself; see \"Running on Citus\" in loyalty's README.")));
	if (!PG_ARGISNULL(ARG_HEADER))
	{
		Oid			header = PG_GETARG_OID(ARG_HEADER);
		CitusTable	hdr = citus_table(header);

		if ((src.method == 'h') != (hdr.method == 'h'))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("%s is distributed, but %s is not", relation_name(src.method == 'h' ? source : header),
							relation_name(src.method == 'h' ? header : source)),
					 errdetail("On Citus a lines table and its header are distributed together, by customer, so that a line's header is in the shard of the same customer, on the same node."),
					 errhint("Distribute both by their customer column, co-located with loyalty.account; see \"Running on Citus\" in loyalty's README.")));
		check_citus_table(header, hdr, "header", account);
		check_citus_table(source, src, "source", NULL);
	}
	else
		check_citus_table(source, src, "source", account);
	if (src.method == 0 &&
		citus_table(get_relname_relid("account", get_namespace_oid("loyalty", false))).method != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is not distributed, but loyalty's tables are", relation_name(source)),
				 errdetail("After loyalty.distribute() the accounts live in shards co-located with the distributed invoice table; a table of one node has no shards to write them to."),
				 errhint("Distribute the table by its customer column with colocate_with => 'loyalty.account', then attach it.")));
}

/*
 * The caller phase's checks of the arguments, before anything else: each
 * error names its parameter.  Completes the owner phase's arguments (the
 * header's columns under their new or old names, the default header key).
 */
static void
check_args(FunctionCallInfo fcinfo, AttachArgs *a)
{
	Oid			source;
	char		relkind;
	int			i;

	for (i = 0; i < OWNER_NARGS; i++)
	{
		int			arg = i < SHARED_NARGS ? i : i - OWN_PRODUCT + ARG_PRODUCT;

		a->isnull[i] = PG_ARGISNULL(arg);
		a->values[i] = a->isnull[i] ? (Datum) 0 : PG_GETARG_DATUM(arg);
	}
	loyalty_require(PG_ARGISNULL(ARG_SOURCE), "source",
					"source is the ERP table the invoices or invoice lines are written to.", ATTACH_EXAMPLE);
	loyalty_require(PG_ARGISNULL(ARG_PROGRAM), "program", LOYALTY_PROGRAM_DETAIL, ATTACH_EXAMPLE);
	source = PG_GETARG_OID(ARG_SOURCE);
	(void) relation_name(source);	/* it exists */
	refuse_own_table(source, "source");
	relkind = get_rel_relkind(source);
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a table", relation_name(source)),
				 errdetail("source names the table whose rows earn points; attach creates triggers on it."),
				 errhint("Attach the table the ERP writes invoices or invoice lines to.")));
	refuse_inheritance(source, "source");
	if (!PG_ARGISNULL(ARG_HEADER))
		refuse_inheritance(PG_GETARG_OID(ARG_HEADER), "header");
	check_citus_sources(fcinfo);
	check_privileges(source);
	loyalty_require(PG_ARGISNULL(ARG_ACCOUNT_COLUMN), "account_column",
					"account_column names the column that holds the ERP's customer key (on the header table when there is one).",
					"For example account_column => 'customer_id'.");
	loyalty_require(PG_ARGISNULL(ARG_DATE_COLUMN), "date_column",
					"date_column names the column that holds the document date (on the header table when there is one).",
					"For example date_column => 'invoice_date'.");
	if (!PG_ARGISNULL(ARG_KEY_COLUMN))
		check_key_column(TextDatumGetCString(PG_GETARG_DATUM(ARG_KEY_COLUMN)));
	if (!PG_ARGISNULL(ARG_CREDIT_NOTE_TYPES))
	{
		ArrayType  *types = PG_GETARG_ARRAYTYPE_P(ARG_CREDIT_NOTE_TYPES);

		if (ArrayGetNItems(ARR_NDIM(types), ARR_DIMS(types)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("credit_note_types must not be empty"),
					 errdetail("credit_note_types lists the values of doc_type_column that mark a credit note."),
					 errhint("For example doc_type_column => 'doc_type', credit_note_types => '{CRN}'.")));
		if (array_contains_nulls(types))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("credit_note_types must not contain NULL"),
					 errdetail("credit_note_types lists the values of doc_type_column that mark a credit note; no NULL document type matches."),
					 errhint("For example doc_type_column => 'doc_type', credit_note_types => '{CRN}'.")));
	}

	header_param(fcinfo, a, ARG_LINE_HEADER_COLUMN, ARG_OLD_HEADER_KEY_COLUMN,
				 "line_header_column", "header_key_column");
	header_param(fcinfo, a, ARG_HEADER_ID_COLUMN, ARG_OLD_HEADER_MATCH_COLUMN,
				 "header_id_column", "header_match_column");
	if (!a->isnull[ARG_HEADER])
		check_header(source, a);
	else if (!a->isnull[ARG_LINE_HEADER_COLUMN] || !a->isnull[ARG_HEADER_ID_COLUMN])
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s needs header", a->isnull[ARG_LINE_HEADER_COLUMN] ? "header_id_column" : "line_header_column"),
				 errdetail("line_header_column and header_id_column map a lines table onto its header table; without header there is none."),
				 errhint("Give header too, or leave them out. " HEADER_EXAMPLE)));
	if (!a->isnull[OWN_PRODUCT])
		check_product(source, a);
	else if (!a->isnull[OWN_LINE_PRODUCT_COLUMN] || !a->isnull[OWN_PRODUCT_ID_COLUMN])
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s needs product", a->isnull[OWN_LINE_PRODUCT_COLUMN] ? "product_id_column" : "line_product_column"),
				 errdetail("line_product_column and product_id_column map a lines table onto the product table that holds the product line; without product there is none."),
				 errhint("Give product too, or leave them out. " PRODUCT_EXAMPLE)));
}

/*
 * attach_as_owner on a distributed table.  Citus propagates the triggers to
 * every shard only with citus.enable_unsafe_triggers on: it warns that a
 * trigger may read or write other nodes' data.  Ours writes co-located
 * shards only (check_citus_table), so it is set for attach's own DDL, as a
 * function's SET clause would, and restored after it.
 */
static int32
attach_with_shard_triggers(AttachArgs *a)
{
	int			nest = NewGUCNestLevel();
	int32		id;

	(void) set_config_option("citus.enable_unsafe_triggers", "on", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	id = attach_as_owner(a);
	AtEOXact_GUC(true, nest);
	return id;
}

PG_FUNCTION_INFO_V1(loyalty_attach);
/* loyalty.attach(): the caller's checks, then the owner's bookkeeping. */
Datum
loyalty_attach(PG_FUNCTION_ARGS)
{
	AttachArgs	a;
	Oid			source;
	int32		id;

	if (PG_NARGS() != ATTACH_NARGS)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("loyalty.attach() with %d arguments is of another version of loyalty", PG_NARGS()),
				 errhint("Run ALTER EXTENSION loyalty UPDATE.")));
	check_args(fcinfo, &a);
	source = PG_GETARG_OID(ARG_SOURCE);

	SPI_connect();
	if (!a.isnull[ARG_AMOUNT_EXPRESSION])
	{
		char	   *amount = canonical_amount(source, TextDatumGetCString(a.values[ARG_AMOUNT_EXPRESSION]));

		a.values[ARG_AMOUNT_EXPRESSION] = CStringGetTextDatum(amount);
	}
	/* a distributed source: admitted by check_citus_sources */
	id = loyalty_citus_hash_table(source) ? attach_with_shard_triggers(&a) : attach_as_owner(&a);
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
								   "        OR header::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)"
								   "        OR product::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1))"
								   " ORDER BY attachment_id", 1, argtypes);
		loyalty_enter_owner(&scope);
		loyalty_spi_check(SPI_execute_plan(plan, &rels, NULL, true, 0), SPI_OK_SELECT,
						  "read loyalty.attachment");
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
