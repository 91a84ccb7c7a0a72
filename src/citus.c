/*
 * citus.c — what loyalty needs to know about Citus, when it is installed.
 *
 * On a Citus cluster an ERP table distributed by customer keeps its rows in
 * shards (erp.invoice_102008, ...) on the worker nodes, and its triggers
 * fire there, on the shard.  loyalty's own account-scoped tables are then
 * distributed the same way and co-located with it (loyalty.distribute()),
 * so every row a shard's trigger writes hashes to a shard on the same node,
 * and Citus executes the write locally, inside the ERP's transaction.  The
 * configuration tables are reference tables, with a copy on every node.
 *
 * Nothing here runs when Citus is not installed: one catalog look-up per
 * transaction answers that.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "catalog/namespace.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "loyalty.h"

/*
 * Is Citus installed in this database?  Asked once per transaction: the
 * answer is a catalog scan, and it changes only by CREATE or DROP
 * EXTENSION.
 */
bool
loyalty_citus_installed(void)
{
	static LocalTransactionId asked = InvalidLocalTransactionId;
	static bool installed = false;

	if (asked != MyProc->lxid)
	{
		installed = OidIsValid(get_extension_oid("citus", true));
		asked = MyProc->lxid;
	}
	return installed;
}

/*
 * Are loyalty's account-scoped tables Citus distributed tables
 * (loyalty.distribute() has run)?  Asked once per transaction, inside SPI.
 * On the coordinator their names are then shells: a statement that relies
 * on a row's physical address (ctid) or on this node's transaction ids
 * must say which shard it means.
 */
bool
loyalty_citus_distributed(void)
{
	static LocalTransactionId asked = InvalidLocalTransactionId;
	static bool distributed = false;

	if (!loyalty_citus_installed())
		return false;
	if (asked != MyProc->lxid)
	{
		loyalty_spi_check(SPI_execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p"
									  " WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'loyalty.balance_delta'::pg_catalog.regclass"
									  "   AND p.partmethod OPERATOR(pg_catalog.=) 'h')", true, 1),
						  SPI_OK_SELECT, "read pg_dist_partition");
		distributed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &(bool){false}));
		asked = MyProc->lxid;
	}
	return distributed;
}

/*
 * The OID of the shard of loyalty's distributed table name that holds the
 * account key, when that shard is on this node; InvalidOid when it is on
 * another node.  Inside SPI.  The key is hashed by Citus itself
 * (get_shard_id_for_distribution_column), the shard is looked up by its
 * name on this node.
 */
Oid
loyalty_account_shard(const char *name, text *account_key)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	bool		isnull;
	int64		shardid;

	values[0] = CStringGetTextDatum(psprintf("loyalty.%s", quote_identifier(name)));
	values[1] = PointerGetDatum(account_key);
	loyalty_spi_check(SPI_execute_with_args("SELECT pg_catalog.get_shard_id_for_distribution_column("
											"$1::pg_catalog.regclass, $2)",
											2, argtypes, values, NULL, true, 1),
					  SPI_OK_SELECT, "find the account's shard");
	shardid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		return InvalidOid;
	return get_relname_relid(psprintf("%s_" INT64_FORMAT, name, shardid), get_namespace_oid("loyalty", false));
}

/*
 * The shard id in a shard's name: Citus names a shard after its table,
 * "<table>_<shardid>".  0 when the name does not end that way.
 */
static int64
shard_id_in_name(const char *relname)
{
	const char *us = strrchr(relname, '_');
	const char *p;

	if (us == NULL || us[1] == '\0')
		return 0;
	for (p = us + 1; *p; p++)
		if (*p < '0' || *p > '9')
			return 0;
	return strtoi64(us + 1, NULL, 10);
}

/*
 * The shard a trigger is firing on, and the shards of loyalty's tables
 * co-located with it, by table name: the statements of the accrual path
 * address those (loyalty_table), so that they run as plain PostgreSQL on
 * this node.  Through the distributed names Citus would plan each one as a
 * distributed statement from inside a shard's trigger, which it cannot do
 * for most of them (joins to arrays of keys, transition tables).
 */
typedef struct ShardMap
{
	int64		firing;			/* the firing shard; 0: not on a shard */
	int			n;
	char	  **names;			/* loyalty's table names ... */
	int64	   *shards;			/* ... and their co-located shard ids */
	Oid		   *oids;			/* ... and the shards' OIDs on this node */
} ShardMap;

static ShardMap shard_map;
static int64 firing_shard = 0;	/* the shard a trigger fires on; 0: none */

static void load_shard_map(int64 firing);

/*
 * The table a relation is a shard of, or InvalidOid when it is none (no
 * Citus, or a table of its own); *colocated tells whether loyalty.account
 * is distributed in the same co-location group.  Runs inside SPI.  The
 * name alone does not decide: the shard id must belong to a table of the
 * same schema whose name plus the id is the relation's name.
 */
Oid
loyalty_shard_table(Oid relid, bool *colocated)
{
	const char *relname;
	int64		shardid;
	Oid			argtypes[2] = {INT8OID, OIDOID};
	Datum		values[2];
	Oid			logical = InvalidOid;

	*colocated = false;
	if (!loyalty_citus_installed())
		return InvalidOid;
	relname = get_rel_name(relid);
	if (relname == NULL || (shardid = shard_id_in_name(relname)) == 0)
		return InvalidOid;
	values[0] = Int64GetDatum(shardid);
	values[1] = ObjectIdGetDatum(get_relname_relid("account", get_namespace_oid("loyalty", false)));
	loyalty_spi_check(SPI_execute_with_args("SELECT s.logicalrelid, EXISTS (SELECT FROM pg_catalog.pg_dist_partition t,"
											"   pg_catalog.pg_dist_partition a"
											"  WHERE t.logicalrelid OPERATOR(pg_catalog.=) s.logicalrelid"
											"    AND a.logicalrelid OPERATOR(pg_catalog.=) $2"
											"    AND a.colocationid OPERATOR(pg_catalog.=) t.colocationid)"
											" FROM pg_catalog.pg_dist_shard s WHERE s.shardid OPERATOR(pg_catalog.=) $1",
											2, argtypes, values, NULL, true, 1),
					  SPI_OK_SELECT, "read pg_dist_shard");
	if (SPI_processed == 1)
	{
		bool		isnull;
		HeapTuple	tuple = SPI_tuptable->vals[0];
		Oid			table = DatumGetObjectId(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &isnull));
		const char *name = get_rel_name(table);

		if (name != NULL && get_rel_namespace(table) == get_rel_namespace(relid) &&
			strcmp(psprintf("%s_" INT64_FORMAT, name, shardid), relname) == 0)
		{
			logical = table;
			*colocated = DatumGetBool(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 2, &isnull));
		}
	}
	return logical;
}

/*
 * The table whose attachment a trigger on rel serves: rel itself, or the
 * distributed table when rel is one of its shards, which accrues only when
 * loyalty's tables are distributed with it.  Otherwise Citus distributed
 * the table after attach(): its copy of the existing rows into the shards
 * would earn them a second time, and every later write would accrue on a
 * node whose loyalty tables are shells.
 */
Oid
loyalty_trigger_table(Relation rel)
{
	bool		colocated;
	Oid			table = loyalty_shard_table(RelationGetRelid(rel), &colocated);

	if (!OidIsValid(table))
	{
		firing_shard = 0;
		return RelationGetRelid(rel);
	}
	if (!colocated)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is a shard of %s, which loyalty's tables are not distributed with",
						RelationGetRelationName(rel), get_rel_name(table)),
				 errdetail("A trigger of loyalty.attach() fired on a Citus shard: the table was distributed after it was attached, or loyalty.distribute() was not run for it."),
				 errhint("Detach the table, distribute loyalty's tables with it (loyalty.distribute()), then attach it again; see \"Running on Citus\" in loyalty's README.")));
	firing_shard = shard_id_in_name(RelationGetRelationName(rel));
	if (shard_map.firing != firing_shard)
		load_shard_map(firing_shard);
	return table;
}


/* Reads the co-located shards of loyalty's distributed tables. */
static void
load_shard_map(int64 firing)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(firing)};
	MemoryContext old;
	uint64		i;

	loyalty_spi_check(SPI_execute_with_args(
											"SELECT c.relname::pg_catalog.text, s2.shardid"
											" FROM pg_catalog.pg_dist_shard s1"
											" JOIN pg_catalog.pg_dist_partition p1 ON p1.logicalrelid OPERATOR(pg_catalog.=) s1.logicalrelid"
											" JOIN pg_catalog.pg_dist_partition p2 ON p2.colocationid OPERATOR(pg_catalog.=) p1.colocationid"
											" JOIN pg_catalog.pg_dist_shard s2 ON s2.logicalrelid OPERATOR(pg_catalog.=) p2.logicalrelid"
											"  AND s2.shardminvalue OPERATOR(pg_catalog.=) s1.shardminvalue"
											" JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s2.logicalrelid"
											" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
											" WHERE s1.shardid OPERATOR(pg_catalog.=) $1 AND n.nspname OPERATOR(pg_catalog.=) 'loyalty'",

											1, argtypes, values, NULL, true, 0),
					  SPI_OK_SELECT, "read the co-located shards");
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (shard_map.names)
	{
		for (i = 0; i < (uint64) shard_map.n; i++)
			pfree(shard_map.names[i]);
		pfree(shard_map.names);
		pfree(shard_map.shards);
		pfree(shard_map.oids);
	}
	shard_map.n = (int) SPI_processed;
	shard_map.names = palloc(sizeof(char *) * (SPI_processed + 1));
	shard_map.shards = palloc(sizeof(int64) * (SPI_processed + 1));
	shard_map.oids = palloc(sizeof(Oid) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		shard_map.names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		shard_map.shards[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		shard_map.oids[i] = get_relname_relid(psprintf("%s_" INT64_FORMAT, shard_map.names[i], shard_map.shards[i]),
											  get_namespace_oid("loyalty", false));
	}
	shard_map.firing = firing;
	MemoryContextSwitchTo(old);
}

/* The position of loyalty's table name in the shard map; -1: not distributed. */
static int
shard_of(const char *name)
{
	int			i;

	for (i = 0; i < shard_map.n; i++)
		if (strcmp(shard_map.names[i], name) == 0)
			return i;
	return -1;
}

/*
 * The key under which the statements of the accrual path are prepared: the
 * firing shard, or 0 when not on a shard.  A plan kept for one key is
 * prepared again for another (loyalty_plan_stale).
 */
int64
loyalty_shard_key(void)
{
	return firing_shard;
}

/* Leaves the shard the trigger fired on (at its end, and at the end of the transaction). */
void
loyalty_shard_leave(void)
{
	firing_shard = 0;
}

/*
 * The placement on this node of loyalty's reference table name (the
 * configuration), or NULL.  Read directly, never through Citus: the
 * configuration is read inside shard queries too (the balance view's
 * functions, pushed down to the workers), where Citus refuses a nested
 * distributed query.  A reference table's placements are written together,
 * so the local one is as current as any.  Looked up when a plan is
 * prepared: once per transaction at most.
 */
static const char *
reference_placement(const char *name)
{
	static LocalTransactionId read_in = InvalidLocalTransactionId;
	static char *placements = NULL;	/* "name=shard;" ... */
	const char *p;
	size_t		len = strlen(name);

	if (!loyalty_citus_installed())
		return NULL;
	if (read_in != MyProc->lxid)
	{
		loyalty_spi_check(SPI_execute("SELECT pg_catalog.string_agg(c.relname OPERATOR(pg_catalog.||) '='"
									  "   OPERATOR(pg_catalog.||) c.relname OPERATOR(pg_catalog.||) '_'"
									  "   OPERATOR(pg_catalog.||) s.shardid OPERATOR(pg_catalog.||) ';', '')"
									  " FROM pg_catalog.pg_dist_partition p"
									  " JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid OPERATOR(pg_catalog.=) p.logicalrelid"
									  " JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.logicalrelid"
									  " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
									  " WHERE p.partmethod OPERATOR(pg_catalog.=) 'n' AND p.repmodel OPERATOR(pg_catalog.=) 't'"
									  "   AND n.nspname OPERATOR(pg_catalog.=) 'loyalty'", true, 1),
						  SPI_OK_SELECT, "read the reference tables");
		if (placements)
			pfree(placements);
		p = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		placements = MemoryContextStrdup(TopMemoryContext, p ? p : "");
		read_in = MyProc->lxid;
	}
	for (p = placements; (p = strstr(p, name)) != NULL; p++)
		if ((p == placements || p[-1] == ';') && p[len] == '=')
		{
			char	   *shard = pnstrdup(p + len + 1, strcspn(p + len + 1, ";"));

			return OidIsValid(get_relname_relid(shard, get_namespace_oid("loyalty", false))) ? shard : NULL;
		}
	return NULL;
}

/*
 * The name of loyalty's table name as the accrual path's statements
 * address it: loyalty.<name>, or on a shard the co-located shard of it on
 * this node.  Reference and local tables keep their names.
 */
const char *
loyalty_table(const char *name)
{
	int			i = firing_shard != 0 ? shard_of(name) : -1;
	const char *placement;

	if (i < 0 && (placement = reference_placement(name)) != NULL)
		return psprintf("loyalty.%s", quote_identifier(placement));
	if (i < 0)
		return psprintf("loyalty.%s", quote_identifier(name));
	return psprintf("loyalty.%s", quote_identifier(psprintf("%s_" INT64_FORMAT, name, shard_map.shards[i])));
}

/* The OID of the relation loyalty_table(name) names on this node. */
Oid
loyalty_table_oid(const char *name)
{
	int			i = firing_shard != 0 ? shard_of(name) : -1;

	if (i < 0)
		return get_relname_relid(name, get_namespace_oid("loyalty", false));
	if (!OidIsValid(shard_map.oids[i]))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("shard " INT64_FORMAT " of loyalty.%s is not on this node", shard_map.shards[i], name),
				 errdetail("The trigger fired on shard " INT64_FORMAT ", whose co-located shards must be on the same node.", firing_shard),
				 errhint("Move co-located shards together (Citus's rebalancer does).")));
	return shard_map.oids[i];
}

/*
 * A kept plan over loyalty's tables is stale when it was prepared for
 * another shard: frees it and returns true, and the caller prepares it
 * again with loyalty_table's names.
 */
bool
loyalty_plan_stale(ShardPlan *p)
{
	if (p->plan != NULL && p->shard == firing_shard)
		return false;
	if (p->plan != NULL)
		SPI_freeplan(p->plan);
	p->plan = NULL;
	p->shard = firing_shard;
	return true;
}
