/*
 * loyalty.c — module entry: the magic block, cache invalidation callbacks,
 * the switch to the extension owner, and small helpers for batched SPI.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "loyalty.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		loyalty_config_valid = false;
bool		loyalty_accounts_valid = false;

static Oid	program_rel = InvalidOid;
static Oid	account_rel = InvalidOid;

/*
 * ERP tables whose definition our cached expressions depend on, each with
 * what the expressions were built against.  Their relcache is invalidated
 * for many reasons that change nothing of it (ANALYZE, autovacuum, an index
 * built, a trigger added): such an invalidation only makes the table
 * suspect, and the next statement compares its definition with the one
 * recorded, a few catalog cache look-ups, before throwing anything away.
 */
#define MAX_WATCHED 64
typedef struct Watched
{
	Oid			relid;
	bool		suspect;
	char	   *signature;		/* in watch_cxt */
} Watched;
static Watched watched[MAX_WATCHED];
static int	nwatched = 0;
static bool any_suspect = false;
static MemoryContext watch_cxt = NULL;

static void
relcache_callback(Datum arg, Oid relid)
{
	int			i;

	if (!OidIsValid(relid) || relid == program_rel)
	{
		/* a reset of everything may have swallowed any message */
		loyalty_config_valid = false;
		if (!OidIsValid(relid))
			loyalty_accounts_valid = false;
		return;
	}
	if (relid == account_rel)
	{
		loyalty_accounts_valid = false;
		return;
	}
	for (i = 0; i < nwatched; i++)
		if (watched[i].relid == relid)
		{
			watched[i].suspect = any_suspect = true;
			return;
		}
}

void
loyalty_set_sentinels(Oid program, Oid account)
{
	program_rel = program;
	account_rel = account;
	nwatched = 0;
	any_suspect = false;
	if (watch_cxt == NULL)
		watch_cxt = AllocSetContextCreate(CacheMemoryContext, "loyalty watched relations",
										  ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(watch_cxt);
}

/* A varlena's bytes, in hex: an ACL compared as it is stored. */
static void
append_bytes(StringInfo sig, Datum value)
{
	struct varlena *v = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(value));
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(v);
	Size		len = VARSIZE_ANY_EXHDR(v);
	Size		i;

	for (i = 0; i < len; i++)
		appendStringInfo(sig, "%02x", p[i]);
}

/*
 * What a cached mapping of relid depends on: its name, schema, kind, row
 * level security, privileges, and every column's name, type, typmod,
 * collation, privileges and whether it was dropped.  "" if it is gone.
 */
static char *
relation_signature(Oid relid)
{
	StringInfoData sig;
	HeapTuple	tup;
	Form_pg_class rel;
	bool		isnull;
	Datum		acl;
	int			attnum;

	initStringInfo(&sig);
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		return sig.data;
	rel = (Form_pg_class) GETSTRUCT(tup);
	appendStringInfo(&sig, "%s|%u|%c|%d|%d|%d|", NameStr(rel->relname), rel->relnamespace,
					 rel->relkind, rel->relrowsecurity, rel->relforcerowsecurity, rel->relnatts);
	acl = SysCacheGetAttr(RELOID, tup, Anum_pg_class_relacl, &isnull);
	if (!isnull)
		append_bytes(&sig, acl);
	for (attnum = 1; attnum <= rel->relnatts; attnum++)
	{
		HeapTuple	atup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
		Form_pg_attribute att;

		if (!HeapTupleIsValid(atup))
			continue;
		att = (Form_pg_attribute) GETSTRUCT(atup);
		appendStringInfo(&sig, "|%s:%u:%d:%u:%d:", NameStr(att->attname), att->atttypid,
						 att->atttypmod, att->attcollation, att->attisdropped);
		acl = SysCacheGetAttr(ATTNUM, atup, Anum_pg_attribute_attacl, &isnull);
		if (!isnull)
			append_bytes(&sig, acl);
		ReleaseSysCache(atup);
	}
	ReleaseSysCache(tup);
	return sig.data;
}

void
loyalty_watch_relation(Oid relid)
{
	int			i;

	for (i = 0; i < nwatched; i++)
		if (watched[i].relid == relid)
			return;
	if (nwatched < MAX_WATCHED)
	{
		MemoryContext old = MemoryContextSwitchTo(watch_cxt);

		watched[nwatched].relid = relid;
		watched[nwatched].suspect = false;
		watched[nwatched].signature = relation_signature(relid);
		nwatched++;
		MemoryContextSwitchTo(old);
	}
	else
		loyalty_config_valid = false;	/* too many: rebuild every time */
}

/*
 * Did a watched table's definition change since the mappings over it were
 * built?  Called before a statement uses the configuration cache.
 */
bool
loyalty_watched_changed(void)
{
	int			i;

	if (!any_suspect)
		return false;
	any_suspect = false;
	for (i = 0; i < nwatched; i++)
	{
		char	   *now;
		bool		same;

		if (!watched[i].suspect)
			continue;
		watched[i].suspect = false;
		now = relation_signature(watched[i].relid);
		same = strcmp(now, watched[i].signature) == 0;
		pfree(now);
		if (!same)
			return true;
	}
	return false;
}

/*
 * A prepared transaction's fate is decided elsewhere (COMMIT or ROLLBACK
 * PREPARED, maybe in another session), and a rollback of it sends no
 * invalidation: forget what it configured here.  An abort needs nothing:
 * PostgreSQL replays the invalidations of the rolled-back work locally,
 * which reach relcache_callback like any other; what the configuration
 * triggers do not announce (a new account, a tier upgrade) is the account
 * cache's own business (accounts.c).
 */
static void
xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PREPARE)
		loyalty_config_valid = loyalty_accounts_valid = false;
	/* a trigger that failed on a Citus shard did not leave it */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		loyalty_shard_leave();
}

/* Registers the cache invalidation callbacks every backend needs. */
void
_PG_init(void)
{
	CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
	RegisterXactCallback(xact_callback, NULL);
}

PG_FUNCTION_INFO_V1(loyalty_invalidate);
/* Trigger on configuration tables: tell every backend to rebuild its caches. */
Datum
loyalty_invalidate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			target;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("loyalty._invalidate() must be called as a trigger")));
	/* tgargs[0] names the sentinel: "config" or "accounts" */
	target = get_relname_relid(trigdata->tg_trigger->tgnargs > 0 &&
							   strcmp(trigdata->tg_trigger->tgargs[0], "accounts") == 0
							   ? "account" : "program",
							   RelationGetNamespace(trigdata->tg_relation));
	if (OidIsValid(target))
		CacheInvalidateRelcacheByRelid(target);
	return PointerGetDatum(NULL);
}

static Oid
extension_owner(void)
{
	static Oid	owner = InvalidOid;
	static bool owner_valid = false;

	if (!owner_valid || !loyalty_config_valid)
	{
		bool		isnull;
		int			ret;

		ret = SPI_execute("SELECT extowner FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'loyalty'",
						  true, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "extension loyalty is not installed in this database");
		owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		owner_valid = true;
	}
	return owner;
}

/* The extension owner, for the checks that nothing of the users' runs as it. */
Oid
loyalty_extension_owner(void)
{
	return extension_owner();
}

/*
 * The library serves the SQL objects of its own version only.  Between
 * installing a new package and ALTER EXTENSION loyalty UPDATE, the triggers
 * would otherwise run new code against the old tables: refuse, and say
 * what to do.  Checked whenever the configuration cache is rebuilt.
 */
void
loyalty_check_version(void)
{
	char	   *installed;

	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'loyalty'",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension loyalty is not installed in this database")));
	installed = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (strcmp(installed, LOYALTY_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("loyalty's library is version %s, but this database has loyalty %s", LOYALTY_VERSION, installed),
				 errdetail("Accrual, explain_points, verify and backfill need the SQL objects of the library's version."),
				 errhint("Run ALTER EXTENSION loyalty UPDATE in this database.")));
}

/*
 * Become the extension owner, as RI triggers and pg_cron do, so that the
 * ERP's role needs no privilege on loyalty tables; pin search_path so that
 * nothing the session set can capture our queries.  Must be called inside
 * an SPI connection.
 */
void
loyalty_enter_owner(OwnerScope *scope)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	SetUserIdAndSecContext(owner, scope->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	/*
	 * Every loyalty function pins this search_path already; setting it again
	 * (a GUC save and restore, a search path recomputed) is the most
	 * expensive part of switching for the accrual trigger, so it is done
	 * only when it differs.
	 */
	scope->guc_nest_level = 0;
	if (namespace_search_path == NULL || strcmp(namespace_search_path, "pg_catalog, pg_temp") != 0)
	{
		scope->guc_nest_level = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	}
}

void
loyalty_leave_owner(OwnerScope *scope)
{
	if (scope->guc_nest_level > 0)
		AtEOXact_GUC(true, scope->guc_nest_level);
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
}

/*
 * Runs a read-only plan with the latest committed state (plus this
 * transaction's own earlier commands), whatever the isolation level: loyalty's
 * configuration and accounts are read like catalogs, so that a cache
 * rebuilt after an invalidation never holds what the invalidation was
 * about.  Caller is connected to SPI.
 */
int
loyalty_execute_latest(SPIPlanPtr plan, Datum *args, long tcount)
{
	return SPI_execute_snapshot(plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot,
								true, false, tcount);
}

/*
 * An SPI call that did not return what it should: SPI raises the errors of
 * the statement itself, so what is left is an internal state (a plan that
 * was never prepared, a connection lost); name it.
 */
void
loyalty_spi_check(int ret, int expected, const char *what)
{
	if (ret != expected)
		elog(ERROR, "could not %s: %s", what, SPI_result_code_string(ret));
}

/* A parameter that must not be NULL: the error names it, says what it is and how to give it. */
void
loyalty_require(bool isnull, const char *param, const char *detail, const char *hint)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", param),
				 errdetail("%s", detail),
				 errhint("%s", hint)));
}

/*
 * Raises a caught error again as the caller's own: same SQLSTATE, message,
 * detail, hint and object names, but with the context of where we are now.
 * The internal SQL and PL/pgSQL helpers it went through (an owner-only
 * function, a query the user never wrote) drop out of its CONTEXT, so the
 * error reads as coming from the public function the user called.  The
 * caller has switched out of ErrorContext and copied the error.
 */
void
loyalty_rethrow_as_own(ErrorData *edata)
{
	FlushErrorState();
	ereport(ERROR,
			(errcode(edata->sqlerrcode),
			 errmsg_internal("%s", edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0,
			 edata->schema_name ? err_generic_string(PG_DIAG_SCHEMA_NAME, edata->schema_name) : 0,
			 edata->table_name ? err_generic_string(PG_DIAG_TABLE_NAME, edata->table_name) : 0,
			 edata->column_name ? err_generic_string(PG_DIAG_COLUMN_NAME, edata->column_name) : 0,
			 edata->datatype_name ? err_generic_string(PG_DIAG_DATATYPE_NAME, edata->datatype_name) : 0,
			 edata->constraint_name ? err_generic_string(PG_DIAG_CONSTRAINT_NAME, edata->constraint_name) : 0));
}

/* Prepares sql as the owner and keeps the plan for the backend's life. */
static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes, int cursor_options)
{
	OwnerScope	scope;
	SPIPlanPtr	plan;

	/* parsed as the owner: the ERP's role may not even see schema loyalty */
	loyalty_enter_owner(&scope);
	plan = SPI_prepare_cursor(sql, nargs, argtypes, cursor_options);
	loyalty_leave_owner(&scope);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/*
 * Generic plans: the arguments are arrays whose values do not change the
 * best plan, and re-planning per statement would cost more than the
 * accrual itself on single-row inserts.
 */
SPIPlanPtr
loyalty_prepare(const char *sql, int nargs, Oid *argtypes)
{
	return prepare_kept(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

/*
 * A plan for a batch statement (loyalty.fold's rounds of thousands of
 * accounts): planned again at each execution with its arguments' values.
 * A generic plan sees an array argument as 100 rows and the tables as they
 * were when the backend first prepared it (empty, in a new database): a
 * nested loop that is right then takes minutes for 100,000 accounts later.
 * Planning once per round of 10,000 accounts costs nothing in comparison.
 */
SPIPlanPtr
loyalty_prepare_batch(const char *sql, int nargs, Oid *argtypes)
{
	return prepare_kept(sql, nargs, argtypes, CURSOR_OPT_CUSTOM_PLAN);
}

Datum
loyalty_text_array(char **values, bool *nulls, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * (n > 0 ? n : 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	for (i = 0; i < n; i++)
		d[i] = (nulls && nulls[i]) ? (Datum) 0 : CStringGetTextDatum(values[i]);
	return PointerGetDatum(construct_md_array(d, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/* C arrays of fixed-width values as SQL arrays, to pass as one parameter. */
#define SQL_ARRAY_OF(fname, ctype, to_datum, typid, typlen, typbyval, typalign) \
Datum \
fname(ctype *values, int n) \
{ \
	Datum	   *d = palloc(sizeof(Datum) * (n > 0 ? n : 1)); \
	int			i; \
\
	for (i = 0; i < n; i++) \
		d[i] = to_datum(values[i]); \
	return PointerGetDatum(construct_array(d, n, typid, typlen, typbyval, typalign)); \
}

SQL_ARRAY_OF(loyalty_int8_array, int64, Int64GetDatum, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)
SQL_ARRAY_OF(loyalty_int4_array, int32, Int32GetDatum, INT4OID, 4, true, TYPALIGN_INT)
SQL_ARRAY_OF(loyalty_numeric_array, Numeric, NumericGetDatum, NUMERICOID, -1, false, TYPALIGN_INT)
SQL_ARRAY_OF(loyalty_date_array, DateADT, DateADTGetDatum, DATEOID, 4, true, TYPALIGN_INT)

/*
 * The elements of an array argument of an internal function.  Arrays are
 * SQL values anyone who can call the function can craft: one dimension, no
 * NULL, and expect elements (as many as the array named expect_name; any
 * number when expect < 0), or a clear error.
 */
Datum *
loyalty_array_items(Datum array, Oid elemtype, const char *prefix, const char *name,
					int expect, const char *expect_name, int *n)
{
	ArrayType  *arr = DatumGetArrayTypeP(array);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Datum	   *items;

	if (ARR_ELEMTYPE(arr) != elemtype)
		elog(ERROR, "%s%s is an array of type %u, not %u", prefix, name, ARR_ELEMTYPE(arr), elemtype);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s%s must be a one-dimensional array", prefix, name),
				 errdetail("It has %d dimensions.", ARR_NDIM(arr))));
	if (array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s%s must not contain NULL elements", prefix, name)));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(arr, elemtype, typlen, typbyval, typalign, &items, NULL, n);
	if (expect >= 0 && *n != expect)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s%s and %s%s differ in length", prefix, expect_name, prefix, name),
				 errdetail("%s%s has length %d, %s%s has length %d.", prefix, expect_name, expect, prefix, name, *n)));
	return items;
}

DateADT
loyalty_month_start(DateADT d)
{
	int			y,
				m,
				day;

	if (DATE_NOT_FINITE(d))
		return d;
	j2date(d + POSTGRES_EPOCH_JDATE, &y, &m, &day);
	return date2j(y, m, 1) - POSTGRES_EPOCH_JDATE;
}

DateADT
loyalty_add_months(DateADT d, int months)
{
	int			y,
				m,
				day,
				total;

	if (DATE_NOT_FINITE(d))
		return d;
	j2date(d + POSTGRES_EPOCH_JDATE, &y, &m, &day);
	total = y * 12 + (m - 1) + months;
	return date2j(total / 12, total % 12 + 1, 1) - POSTGRES_EPOCH_JDATE;
}
