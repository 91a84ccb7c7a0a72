/*
 * product.c — the product line of a line from the product table it names
 * (Northwind's products.category_id, an ERP's item group), and the history
 * that keeps what a document earned when a product moves to another line.
 *
 * The points of a line are a pure function of facts that never change
 * under an accrued document.  A product's line does change, so the trigger
 * on the product table (loyalty.track_product) records the line a product
 * had in loyalty.product_history, with valid_until the first document date
 * it no longer applies to: the day after today in the program's calendar,
 * or after the latest document the program has accrued if that is later.
 * A line dated before valid_until earns by the recorded line, a later one
 * by the product's current row; _facts_sql (explain_points, verify,
 * backfill) joins the same two tables the same way.
 *
 * Who runs what.  The product table is read, and the mapped product line
 * evaluated, as the role that writes the ERP rows (or updates the
 * products); loyalty.product_history is read and written as the owner,
 * with values already computed.
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "keymap.h"
#include "product.h"

/*
 * Each key with its product's key in text form (the line's own when there
 * is no such product: the form product_history stores) and current line.
 */
static SPIPlanPtr
product_plan(Attachment *att)
{
	if (att->product_plan == NULL)
	{
		Oid			argtype = get_array_type(att->product_key_type);
		char	   *sql = psprintf("SELECT u.k, COALESCE((p.%s)::pg_catalog.text, (u.k)::pg_catalog.text),"
								   " (%s)::pg_catalog.text"
								   " FROM pg_catalog.unnest($1) AS u(k) LEFT JOIN %s p ON p.%s %s u.k",
								   quote_identifier(att->product_match_column), att->product_line_text,
								   mapping_table_ref(att->product, att->product_name),
								   quote_identifier(att->product_match_column),
								   keytype_equality_operator(att->product_key_type));
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, 1, &argtype, CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "could not prepare the product look-up of %s: %s", att->source_name,
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		att->product_plan = plan;
	}
	return att->product_plan;
}

typedef struct Found
{
	char	   *key_text;
	ProductFacts *pf;
} Found;

static int
found_cmp(const void *a, const void *b)
{
	return strcmp(((const Found *) a)->key_text, ((const Found *) b)->key_text);
}

/* The earlier lines of the found products, sorted by key text, as the owner. */
static void
read_history(Attachment *att, Found *found, int n, MemoryContext cxt)
{
	static SPIPlanPtr plan = NULL;
	char	  **texts = palloc(sizeof(char *) * n);
	Datum		args[2];
	OwnerScope	scope;
	uint64		r;
	int			i,
				f = 0;

	if (plan == NULL)
	{
		Oid			t[2] = {INT4OID, TEXTARRAYOID};

		plan = loyalty_prepare(
			"SELECT product_key, valid_until, product_line FROM loyalty.product_history"
			" WHERE attachment_id OPERATOR(pg_catalog.=) $1 AND product_key OPERATOR(pg_catalog.=) ANY ($2)"
			" ORDER BY product_key COLLATE \"C\", valid_until", 2, t);
	}
	qsort(found, n, sizeof(Found), found_cmp);
	for (i = 0; i < n; i++)
		texts[i] = found[i].key_text;
	args[0] = Int32GetDatum(att->id);
	args[1] = loyalty_text_array(texts, NULL, n);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(loyalty_execute_latest(plan, args, 0), SPI_OK_SELECT, "read loyalty.product_history");
	loyalty_leave_owner(&scope);

	/* both sorted by key text: merge, every Found of a key getting its rows */
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *key = SPI_getvalue(tup, desc, 1);
		bool		isnull;
		DateADT		until = DatumGetDateADT(SPI_getbinval(tup, desc, 2, &isnull));
		char	   *line = SPI_getvalue(tup, desc, 3);

		while (f < n && strcmp(found[f].key_text, key) < 0)
			f++;
		for (i = f; i < n && strcmp(found[i].key_text, key) == 0; i++)
		{
			ProductFacts *pf = found[i].pf;

			if (pf->nhist == 0)
			{
				pf->until = MemoryContextAlloc(cxt, sizeof(DateADT) * (SPI_processed - r));
				pf->hist_line = MemoryContextAlloc(cxt, sizeof(char *) * (SPI_processed - r));
			}
			pf->until[pf->nhist] = until;
			pf->hist_line[pf->nhist++] = line ? MemoryContextStrdup(cxt, line) : NULL;
		}
	}
}

void
product_lookup(Attachment *att, HTAB *keys, MemoryContext cxt)
{
	Found	   *found;
	KeyMapEntry *e;
	int			i = 0;
	Datum		arg;
	uint64		r;

	if (hash_get_num_entries(keys) == 0)
		return;
	arg = keymap_key_array(keys, att->product_key);
	/* a fresh snapshot, as the header look-up */
	loyalty_spi_check(SPI_execute_plan(product_plan(att), &arg, NULL, false, 0), SPI_OK_SELECT,
					  "read the product rows");
	found = palloc(sizeof(Found) * (SPI_processed + 1));
	i = 0;
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		k = SPI_getbinval(tup, desc, 1, &isnull);
		char	   *line = SPI_getvalue(tup, desc, 3);
		ProductFacts *pf;

		if ((e = keymap_find(keys, att->product_key, k)) == NULL)
			continue;
		pf = MemoryContextAllocZero(cxt, sizeof(ProductFacts));
		pf->line = line ? MemoryContextStrdup(cxt, line) : NULL;
		e->value = pf;
		found[i].key_text = SPI_getvalue(tup, desc, 2);
		found[i++].pf = pf;
	}
	if (i > 0)
		read_history(att, found, i, cxt);
}

char *
product_line_on(const ProductFacts *pf, bool has_date, DateADT date)
{
	int			i;

	if (pf == NULL)
		return NULL;
	if (has_date)
		for (i = 0; i < pf->nhist; i++)
			if (pf->until[i] > date)
				return pf->hist_line[i];
	return pf->line;
}

/*
 * The trigger on the product table
 */

/*
 * The products whose line a statement changed, as the role that ran it:
 * key (text form) and the line it had (NULL for one inserted).  An inserted product counts only when lines named it
 * already (they earned without its line); a role that cannot read the
 * lines table records every inserted product, which is never wrong.
 */
static char *
changed_products_sql(Attachment *att, TriggerData *td)
{
	const char *id = quote_identifier(att->product_match_column);
	const char *eq = keytype_equality_operator(att->product_key_type);
	char	   *empty = psprintf("%s p WHERE false", mapping_table_ref(att->product, att->product_name));
	const char *inserted_named = "true";

	if (td->tg_newtable != NULL &&
		(pg_class_aclcheck(att->source, GetUserId(), ACL_SELECT) == ACLCHECK_OK ||
		 pg_attribute_aclcheck_all(att->source, GetUserId(), ACL_SELECT, ACLMASK_ALL) == ACLCHECK_OK))
		inserted_named = psprintf("EXISTS (SELECT FROM %s s WHERE s.%s %s n.id)",
								  mapping_table_ref(att->source, att->source_name),
								  quote_identifier(att->product_key_column), eq);
	return psprintf("WITH o AS (SELECT p.%s AS id, (%s)::pg_catalog.text AS line FROM %s),"
					" n AS (SELECT p.%s AS id, (%s)::pg_catalog.text AS line FROM %s)"
					" SELECT (o.id)::pg_catalog.text, o.line FROM o"
					" WHERE o.id IS NOT NULL AND NOT EXISTS (SELECT FROM n WHERE n.id %s o.id AND n.line IS NOT DISTINCT FROM o.line)"
					" UNION ALL"
					" SELECT (n.id)::pg_catalog.text, NULL FROM n"
					" WHERE n.id IS NOT NULL AND NOT EXISTS (SELECT FROM o WHERE o.id %s n.id) AND %s",
					id, att->product_line_text, td->tg_oldtable ? "loyalty_old p" : empty,
					id, att->product_line_text, td->tg_newtable ? "loyalty_new p" : empty,
					eq, eq, inserted_named);
}

/*
 * Records the lines the changed products had, as the owner: valid until
 * the day after today, or after the program's latest accrued document
 * date (a document dated in the future keeps what it earned), or after the
 * product's latest recorded change.  A second change on the same day keeps
 * the first row: the documents before then earned by the first line.
 */
static void
record_history(Attachment *att, char **keys, char **lines, int n)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[4];
	bool	   *nulls = palloc(sizeof(bool) * n);
	OwnerScope	scope;
	int			i;

	if (plan == NULL)
	{
		Oid			t[4] = {INT4OID, INT4OID, TEXTARRAYOID, TEXTARRAYOID};

		plan = loyalty_prepare(
			"INSERT INTO loyalty.product_history AS x (attachment_id, product_key, valid_until, product_line)"
			" SELECT $1, u.k, GREATEST(l.until, (SELECT pg_catalog.max(h.valid_until) FROM loyalty.product_history h"
			"                                   WHERE h.attachment_id OPERATOR(pg_catalog.=) $1"
			"                                     AND h.product_key OPERATOR(pg_catalog.=) u.k)), u.l"
			" FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(k, l),"
			"      (SELECT GREATEST(loyalty._today($2) OPERATOR(pg_catalog.+) 1,"
			"                       pg_catalog.max(b.last_doc_date) OPERATOR(pg_catalog.+) 1) AS until"
			"       FROM loyalty.balance b WHERE b.program_id OPERATOR(pg_catalog.=) $2) l"
			" ORDER BY u.k"
			" ON CONFLICT (attachment_id, product_key, valid_until) DO NOTHING", 4, t);
	}
	for (i = 0; i < n; i++)
		nulls[i] = lines[i] == NULL;
	args[0] = Int32GetDatum(att->id);
	args[1] = Int32GetDatum(att->program->id);
	args[2] = loyalty_text_array(keys, NULL, n);
	args[3] = loyalty_text_array(lines, nulls, n);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan, args, NULL, false, 0), SPI_OK_INSERT,
					  "write loyalty.product_history");
	loyalty_leave_owner(&scope);
}

PG_FUNCTION_INFO_V1(loyalty_track_product);
/* AFTER INSERT, UPDATE or DELETE ... FOR EACH STATEMENT on a product table. */
Datum
loyalty_track_product(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Attachment *att;
	char	  **keys;
	char	  **lines;
	uint64		r;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) ||
		!TRIGGER_FIRED_AFTER(td->tg_event) || td->tg_trigger->tgnargs != 1 ||
		(td->tg_oldtable == NULL && td->tg_newtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("loyalty.track_product() must be fired AFTER ... FOR EACH STATEMENT with transition tables and the attachment id"),
				 errhint("Create loyalty's triggers with loyalty.attach().")));
	SPI_connect();
	att = mapping_get(pg_strtoint32(td->tg_trigger->tgargs[0]));
	if (!att->has_product || loyalty_trigger_table(td->tg_relation) != att->product)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("loyalty trigger \"%s\" on %s belongs to attachment %d of another table",
						td->tg_trigger->tgname, RelationGetRelationName(td->tg_relation), att->id)));
	if (SPI_register_trigger_data(td) != SPI_OK_TD_REGISTER)
		elog(ERROR, "could not register the transition tables of %s", att->product_name);
	loyalty_spi_check(SPI_execute(changed_products_sql(att, td), true, 0), SPI_OK_SELECT,
					  "read the changed products");
	if (SPI_processed > 0)
	{
		keys = palloc(sizeof(char *) * SPI_processed);
		lines = palloc(sizeof(char *) * SPI_processed);
		for (r = 0; r < SPI_processed; r++)
		{
			keys[r] = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
			lines[r] = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2);
		}
		record_history(att, keys, lines, (int) SPI_processed);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
