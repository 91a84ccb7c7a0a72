/*
 * citus.c — what loyalty needs to know about Citus, when it is installed.
 *
 * On a Citus cluster an ERP table distributed by customer keeps its rows in
 * shards (erp.invoice_102008, ...) on the worker nodes, and its triggers
 * fire there, on the shard.  loyalty's own account-scoped tables are then
 * distributed the same way and co-located with it (loyalty.distribute()),
 * so every row a shard's trigger writes hashes to a shard on the same node:
 * the trigger writes those shards by their names, as plain PostgreSQL,
 * inside the ERP's transaction (loyalty_table).  The configuration tables
 * are reference tables, with a copy on every node, read there.
 *
 * Nothing here runs when Citus is not installed: one catalog look-up per
 * transaction answers that.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "keytype.h"
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
 * This node's Citus group (0 on the coordinator, and on a server without
 * Citus).  Read once per backend: a node's group is set when it joins the
 * cluster and never changes.  A group of 0 is read again at the next call
 * (a backend of a worker that joined since).
 */
int32
loyalty_node_group(void)
{
	static int32 group = 0;
	static LocalTransactionId asked = InvalidLocalTransactionId;

	if (group != 0 || asked == MyProc->lxid || !loyalty_citus_installed())
		return group;
	asked = MyProc->lxid;
	if (!OidIsValid(get_relname_relid("pg_dist_local_group", PG_CATALOG_NAMESPACE)))
		return group;
	SPI_connect();
	loyalty_spi_check(SPI_execute("SELECT g.groupid FROM pg_catalog.pg_dist_local_group g", true, 1),
					  SPI_OK_SELECT, "read this node's Citus group");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			group = DatumGetInt32(d);
	}
	SPI_finish();
	return group;
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
											"$1::pg_catalog.regclass, $2" KEY_CAST ")",
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
 * A shard a trigger fired on, and the shards co-located with it: the
 * statements of the accrual path address those (loyalty_table), so that
 * they run as plain PostgreSQL on this node.  Through the distributed
 * names Citus would plan each one as a distributed statement from inside a
 * shard's trigger, which it cannot do for most of them (joins to arrays of
 * keys, transition tables).  Kept for the backend's life, like the plans:
 * a single-row INSERT fires on one shard, the next on another, and each
 * must cost what it costs on one server.
 */
typedef struct ShardEntry
{
	Oid			relid;			/* hash key: the shard's OID on this node */
	int64		shardid;
	Oid			table;			/* the distributed table */
	bool		colocated;		/* with loyalty.account */
	bool		mapped;			/* tables..oids read */
	int			n;
	Oid		   *tables;			/* the distributed tables co-located with it ... */
	bool	   *ours;			/* ... which of them are loyalty's */
	char	  **names;			/* ... their names */
	char	  **shard_names;	/* ... their co-located shards, schema-qualified */
	char	  **columns;		/* ... their distribution columns */
	int64	   *shards;			/* ... the shards' ids */
	Oid		   *oids;			/* ... and the shards' OIDs here */
} ShardEntry;

static HTAB *shard_entries = NULL;
static ShardEntry *firing = NULL;	/* the shard a trigger fires on */

/* A plan kept for a statement site and a shard (loyalty_plan_stale). */
typedef struct PlanKey
{
	ShardPlan  *site;
	int64		shard;
} PlanKey;

typedef struct PlanEntry
{
	PlanKey		key;
	SPIPlanPtr	plan;
} PlanEntry;

static HTAB *shard_plans = NULL;

static void load_shard_map(ShardEntry *e);
static void free_shard_map(ShardEntry *e);

/*
 * What Citus says of relid, when its name is a shard's ("<table>_<id>"):
 * the table it is a shard of (InvalidOid: none) and whether loyalty.account
 * is distributed in the same co-location group.  Runs inside SPI.  The name
 * alone does not decide: the shard id must belong to a table of the same
 * schema whose name plus the id is the relation's name.
 */
static ShardEntry
read_shard(Oid relid, const char *relname, int64 shardid)
{
	Oid			argtypes[2] = {INT8OID, OIDOID};
	Datum		values[2];
	ShardEntry	e;

	memset(&e, 0, sizeof(e));
	e.relid = relid;
	e.shardid = shardid;
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
			e.table = table;
			e.colocated = DatumGetBool(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 2, &isnull));
		}
	}
	return e;
}

/*
 * The entry of relid when it is a Citus shard, else NULL.  Only shards
 * are remembered: a table whose name merely ends in digits is asked again
 * (while create_distributed_table() runs, a new shard is not in the
 * metadata yet).
 */
static ShardEntry *
shard_entry(Oid relid)
{
	const char *relname;
	int64		shardid;
	ShardEntry *e;
	ShardEntry	read;
	bool		found;

	if (!loyalty_citus_installed())
		return NULL;
	relname = get_rel_name(relid);
	if (relname == NULL || (shardid = shard_id_in_name(relname)) == 0)
		return NULL;
	if (shard_entries == NULL)
	{
		HASHCTL		ctl = {.keysize = sizeof(Oid),.entrysize = sizeof(ShardEntry)};

		shard_entries = hash_create("loyalty Citus shards", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	e = hash_search(shard_entries, &relid, HASH_FIND, NULL);
	if (e != NULL && e->shardid == shardid)
		return e;
	read = read_shard(relid, relname, shardid);
	if (!OidIsValid(read.table))
		return NULL;
	if (!read.colocated)			/* an error follows; nothing to keep */
	{
		static ShardEntry alone;

		alone = read;
		return &alone;
	}
	e = hash_search(shard_entries, &relid, HASH_ENTER, &found);
	*e = read;
	return e;
}

/*
 * Is relid a Citus hash-distributed table?  Runs inside SPI; false without
 * Citus.
 */
bool
loyalty_citus_hash_table(Oid relid)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};

	if (!loyalty_citus_installed())
		return false;
	loyalty_spi_check(SPI_execute_with_args("SELECT FROM pg_catalog.pg_dist_partition p"
											" WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1"
											"   AND p.partmethod OPERATOR(pg_catalog.=) 'h'",
											1, argtypes, values, NULL, true, 1),
					  SPI_OK_SELECT, "read pg_dist_partition");
	return SPI_processed == 1;
}

/*
 * The table whose attachment a trigger on rel serves: rel itself, or the
 * distributed table when rel is one of its shards, which accrues only when
 * loyalty's tables are distributed with it.  Otherwise Citus distributed
 * the table after attach(): its copy of the existing rows into the shards
 * would earn them a second time, and every later write would accrue on a
 * node whose loyalty tables are shells.  Sets the firing shard, which the
 * accrual path's statements address until loyalty_shard_leave().
 */
Oid
loyalty_trigger_table(Relation rel)
{
	ShardEntry *e = shard_entry(RelationGetRelid(rel));

	firing = NULL;
	if (e == NULL)
		return RelationGetRelid(rel);
	if (!e->colocated)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is a shard of %s, which loyalty's tables are not distributed with",
						RelationGetRelationName(rel), get_rel_name(e->table)),
				 errdetail("A trigger of loyalty.attach() fired on a Citus shard: the table was distributed after it was attached, or loyalty.distribute() was not run for it."),
				 errhint("Detach the table, distribute loyalty's tables with it (loyalty.distribute()), then attach it again; see \"Running on Citus\" in loyalty's README.")));
	if (!e->mapped)
		load_shard_map(e);
	firing = e;
	return e->table;
}

/*
 * Reads the shards co-located with e's: loyalty's, and the ERP's other
 * tables distributed with the invoices (an invoice header).
 */
static void
load_shard_map(ShardEntry *e)
{
	Oid			nsp = get_namespace_oid("loyalty", false);
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(e->shardid)};
	uint64		i;

	loyalty_spi_check(SPI_execute_with_args("SELECT c.oid, c.relname::pg_catalog.text, n.nspname::pg_catalog.text, s2.shardid,"
											"       pg_catalog.column_to_column_name(p2.logicalrelid, p2.partkey)"
											" FROM pg_catalog.pg_dist_shard s1"
											" JOIN pg_catalog.pg_dist_partition p1 ON p1.logicalrelid OPERATOR(pg_catalog.=) s1.logicalrelid"
											" JOIN pg_catalog.pg_dist_partition p2 ON p2.colocationid OPERATOR(pg_catalog.=) p1.colocationid"
											" JOIN pg_catalog.pg_dist_shard s2 ON s2.logicalrelid OPERATOR(pg_catalog.=) p2.logicalrelid"
											"  AND s2.shardminvalue OPERATOR(pg_catalog.=) s1.shardminvalue"
											" JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s2.logicalrelid"
											" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
											" WHERE s1.shardid OPERATOR(pg_catalog.=) $1",
											1, argtypes, values, NULL, true, 0),
					  SPI_OK_SELECT, "read the co-located shards");
	if (e->mapped)
		free_shard_map(e);
	e->n = (int) SPI_processed;
	e->tables = MemoryContextAlloc(TopMemoryContext, sizeof(Oid) * (SPI_processed + 1));
	e->ours = MemoryContextAlloc(TopMemoryContext, sizeof(bool) * (SPI_processed + 1));
	e->names = MemoryContextAlloc(TopMemoryContext, sizeof(char *) * (SPI_processed + 1));
	e->shard_names = MemoryContextAlloc(TopMemoryContext, sizeof(char *) * (SPI_processed + 1));
	e->columns = MemoryContextAlloc(TopMemoryContext, sizeof(char *) * (SPI_processed + 1));
	e->shards = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * (SPI_processed + 1));
	e->oids = MemoryContextAlloc(TopMemoryContext, sizeof(Oid) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *name = SPI_getvalue(row, desc, 2);
		char	   *shard;

		e->tables[i] = DatumGetObjectId(SPI_getbinval(row, desc, 1, &isnull));
		e->ours[i] = get_rel_namespace(e->tables[i]) == nsp;
		e->names[i] = MemoryContextStrdup(TopMemoryContext, name);
		e->shards[i] = DatumGetInt64(SPI_getbinval(row, desc, 4, &isnull));
		e->columns[i] = MemoryContextStrdup(TopMemoryContext, SPI_getvalue(row, desc, 5));
		shard = psprintf("%s_" INT64_FORMAT, name, e->shards[i]);
		e->shard_names[i] = MemoryContextStrdup(TopMemoryContext,
												psprintf("%s.%s", quote_identifier(SPI_getvalue(row, desc, 3)),
														 quote_identifier(shard)));
		e->oids[i] = get_relname_relid(shard, get_rel_namespace(e->tables[i]));
	}
	e->mapped = true;
}

/* Frees e's map (it is read again: a table was distributed with it since). */
static void
free_shard_map(ShardEntry *e)
{
	int			i;

	for (i = 0; i < e->n; i++)
	{
		pfree(e->names[i]);
		pfree(e->shard_names[i]);
		pfree(e->columns[i]);
	}
	pfree(e->columns);
	pfree(e->tables);
	pfree(e->ours);
	pfree(e->names);
	pfree(e->shard_names);
	pfree(e->shards);
	pfree(e->oids);
	e->mapped = false;
}

/* The position of loyalty's table name in the firing shard's map; -1: none. */
static int
shard_of(const char *name)
{
	int			i;

	if (firing == NULL)
		return -1;
	for (i = 0; i < firing->n; i++)
		if (firing->ours[i] && strcmp(firing->names[i], name) == 0)
			return i;
	return -1;
}

/*
 * The position of an ERP table in the firing shard's map; -1 when it is not
 * distributed with it.  A table distributed since the map was read (in
 * this backend's life) is found by reading the map again, once.
 */
static int
colocated_position(Oid table)
{
	int			i;
	bool		reread = false;

	if (firing == NULL)
		return -1;
	for (;;)
	{
		for (i = 0; i < firing->n; i++)
			if (firing->tables[i] == table)
				return i;
		if (reread || !loyalty_citus_hash_table(table))
			return -1;
		load_shard_map(firing);
		reread = true;
	}
}

/*
 * The shard of an ERP table co-located with the firing shard, as a
 * statement names it (schema-qualified), or NULL when no trigger fires on
 * a shard or the table is not distributed with it.  Inside SPI.  Statements
 * of the accrual path that read an ERP table distributed with the invoices
 * (the invoice header, the lines of a header shard) read this shard: a
 * line's header lives in the shard of the same customer, on this node.
 */
const char *
loyalty_colocated_shard(Oid table)
{
	int			i = colocated_position(table);

	if (i < 0)
		return NULL;
	if (!OidIsValid(firing->oids[i]))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("shard " INT64_FORMAT " of %s is not on this node", firing->shards[i], get_rel_name(table)),
				 errdetail("The trigger fired on shard " INT64_FORMAT ", whose co-located shards must be on the same node.", firing->shardid),
				 errhint("Move co-located shards together (Citus's rebalancer does).")));
	return firing->shard_names[i];
}

/*
 * The distribution column of an ERP table distributed with the firing
 * shard, or NULL.  Inside SPI.
 */
const char *
loyalty_colocated_column(Oid table)
{
	int			i = colocated_position(table);

	return i < 0 ? NULL : firing->columns[i];
}

/* The shard a trigger fires on (an opaque handle), or NULL. */
void *
loyalty_shard_current(void)
{
	return firing;
}

/*
 * Fires on a shard again (one recorded with loyalty_shard_current), for the
 * checks at commit of what statements on it read; loyalty_shard_leave()
 * after.
 */
void
loyalty_shard_resume(void *shard)
{
	firing = shard;
}

/* The firing shard's id, or 0 when no trigger is firing on a shard. */
int64
loyalty_shard_key(void)
{
	return firing != NULL ? firing->shardid : 0;
}

/* Leaves the shard the trigger fired on (at its end, and at the end of the transaction). */
void
loyalty_shard_leave(void)
{
	firing = NULL;
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
 * address it: loyalty.<name>; on a shard, the co-located shard of it on
 * this node; for a reference table, its placement on this node.
 */
const char *
loyalty_table(const char *name)
{
	int			i = shard_of(name);
	const char *placement;

	if (i >= 0)
		return psprintf("loyalty.%s", quote_identifier(psprintf("%s_" INT64_FORMAT, name, firing->shards[i])));
	if ((placement = reference_placement(name)) != NULL)
		return psprintf("loyalty.%s", quote_identifier(placement));
	return psprintf("loyalty.%s", quote_identifier(name));
}

/* The OID of loyalty's distributed table name, or on a shard of its co-located shard here. */
Oid
loyalty_table_oid(const char *name)
{
	int			i = shard_of(name);

	if (i < 0)
		return get_relname_relid(name, get_namespace_oid("loyalty", false));
	if (!OidIsValid(firing->oids[i]))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("shard " INT64_FORMAT " of loyalty.%s is not on this node", firing->shards[i], name),
				 errdetail("The trigger fired on shard " INT64_FORMAT ", whose co-located shards must be on the same node.", firing->shardid),
				 errhint("Move co-located shards together (Citus's rebalancer does).")));
	return firing->oids[i];
}

/*
 * Whether the caller must prepare p's statement for the firing shard (or
 * for no shard): false when p->plan already is that plan, or when one
 * prepared earlier for it is kept.  The plan p holds is kept when p moves
 * to another shard, for the backend's life: the plans of a site are as
 * many as the shards its backend fired on (32 by default), and preparing
 * them again at every single-row INSERT on another shard would cost more
 * than the accrual.  On one server p never moves.
 */
bool
loyalty_plan_stale(ShardPlan *p)
{
	int64		shard = loyalty_shard_key();
	PlanKey		key;
	PlanEntry  *e;
	bool		found;

	if (p->plan != NULL && p->shard == shard)
		return false;
	if (shard_plans == NULL)
	{
		HASHCTL		ctl = {.keysize = sizeof(PlanKey),.entrysize = sizeof(PlanEntry)};

		shard_plans = hash_create("loyalty plans per shard", 256, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	memset(&key, 0, sizeof(key));
	if (p->plan != NULL)
	{
		key.site = p;
		key.shard = p->shard;
		e = hash_search(shard_plans, &key, HASH_ENTER, &found);
		e->plan = p->plan;
	}
	key.site = p;
	key.shard = shard;
	e = hash_search(shard_plans, &key, HASH_FIND, NULL);
	p->plan = e != NULL ? e->plan : NULL;
	p->shard = shard;
	return p->plan == NULL;
}

/* Frees every plan kept for p (its statement changed: a re-created table's row type). */
void
loyalty_plan_forget(ShardPlan *p)
{
	HASH_SEQ_STATUS seq;
	PlanEntry  *e;

	if (shard_plans != NULL)
	{
		hash_seq_init(&seq, shard_plans);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->key.site == p)
			{
				if (e->plan != p->plan)
					SPI_freeplan(e->plan);
				hash_search(shard_plans, &e->key, HASH_REMOVE, NULL);
			}
	}
	if (p->plan != NULL)
		SPI_freeplan(p->plan);
	p->plan = NULL;
}
