/*
 * append.c — appending rows to loyalty's own tables with heap and index
 * calls, without planning or starting an executor.  The accrual trigger
 * appends two small rows per statement (a balance delta and a ledger
 * entry); through SPI each costs an executor start-up, a plan check and the
 * table's CHECK constraints, several times the insert itself, which is what
 * single-row ERP transactions paid for.  The rows are built by loyalty's
 * own code, so the constraints hold by construction.
 *
 * Only a plain heap table with no INSERT trigger and no forced row security
 * is written this way; anything else (a table someone added a trigger to, a
 * Citus shell table) is written through SPI by the caller.  Row-level
 * security that is not forced does not apply to the tables' owner, as whom
 * the SQL path would write (the policies of src/sql/80_partner.sql).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "append.h"
#include "loyalty.h"

/* May rows be appended to rel without the executor? */
static bool
direct_ok(Relation rel)
{
	TriggerDesc *t = rel->trigdesc;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relam != HEAP_TABLE_AM_OID)
		return false;
	if (rel->rd_rel->relforcerowsecurity)
		return false;
	if (t && (t->trig_insert_before_row || t->trig_insert_after_row || t->trig_insert_instead_row ||
			  t->trig_insert_before_statement || t->trig_insert_after_statement || t->trig_insert_new_table))
		return false;
	/*
	 * A Citus table is a shell on this node: its rows belong to shards.  A
	 * trigger firing on a shard appends to the co-located shards themselves
	 * (loyalty_table_oid), plain tables of this node.
	 */
	if (loyalty_citus_installed() && loyalty_shard_key() == 0)
		return false;
	return true;
}

/*
 * Column positions for appending: names[i] goes to col[i].  False when the
 * table has a column not named (a later version's): then it is written
 * through SQL, whose defaults know it.
 */
static bool
map_columns(TupleDesc desc, const char *const *names, int n, int *col)
{
	int			i,
				c,
				live = 0;

	for (c = 0; c < desc->natts; c++)
		live += !TupleDescAttr(desc, c)->attisdropped;
	if (live != n)
		return false;
	for (i = 0; i < n; i++)
	{
		for (c = 0; c < desc->natts; c++)
		{
			Form_pg_attribute a = TupleDescAttr(desc, c);

			if (!a->attisdropped && strcmp(NameStr(a->attname), names[i]) == 0)
				break;
		}
		if (c == desc->natts)
			return false;
		col[i] = c;
	}
	return true;
}

Relation
append_open(const char *relname, const char *const *names, int n, int *col, TupleDesc *desc)
{
	Oid			relid = loyalty_table_oid(relname);
	Relation	rel;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"loyalty.%s\" does not exist", relname),
				 errhint("The loyalty extension's objects were changed by hand; run ALTER EXTENSION loyalty UPDATE or re-create the extension.")));
	rel = table_open(relid, RowExclusiveLock);
	if (!direct_ok(rel) || !map_columns(RelationGetDescr(rel), names, n, col))
	{
		table_close(rel, RowExclusiveLock);
		return NULL;
	}
	*desc = RelationGetDescr(rel);
	return rel;
}

/*
 * Inserts the tuples and their index entries (unique indexes checked), then
 * closes rel.  What the executor would add: none of it applies (no
 * trigger, no row security, constraints true by construction); the heap
 * and index AMs do the WAL, the serializable checks and the statistics.
 */
void
append_close(Relation rel, HeapTuple *tuples, int n)
{
	CommandId	cid = GetCurrentCommandId(true);
	List	   *indexes = RelationGetIndexList(rel);
	int			nidx = list_length(indexes);
	Relation   *idx = palloc(sizeof(Relation) * (nidx + 1));
	IndexInfo **info = palloc(sizeof(IndexInfo *) * (nidx + 1));
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	ListCell   *lc;
	int			i,
				j = 0;

	foreach(lc, indexes)
	{
		idx[j] = index_open(lfirst_oid(lc), RowExclusiveLock);
		info[j] = BuildIndexInfo(idx[j]);
		j++;
	}
	for (i = 0; i < n; i++)
	{
		heap_insert(rel, tuples[i], cid, 0, NULL);
		ExecStoreHeapTuple(tuples[i], slot, false);
		for (j = 0; j < nidx; j++)
		{
			Datum		values[INDEX_MAX_KEYS];
			bool		isnull[INDEX_MAX_KEYS];

			/* loyalty's indexes are on plain columns: no expression, no predicate */
			if (info[j]->ii_Expressions != NIL || info[j]->ii_Predicate != NIL)
				elog(ERROR, "index %s of a loyalty table has expressions", RelationGetRelationName(idx[j]));
			FormIndexDatum(info[j], slot, NULL, values, isnull);
			index_insert(idx[j], values, isnull, &tuples[i]->t_self, rel,
						 idx[j]->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
						 false, info[j]);
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	for (j = 0; j < nidx; j++)
		index_close(idx[j], RowExclusiveLock);
	list_free(indexes);
	table_close(rel, RowExclusiveLock);
}
