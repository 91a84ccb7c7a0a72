/*
 * accounts.c — the account cache.  A statement (or a batch of a big one)
 * resolves the accounts it touches, and only those, with one query for the
 * ones not cached yet; unknown accounts of an auto-enrolment program are
 * enrolled with one INSERT, in ascending key order.  Only enrolled accounts
 * are cached, at most ACCOUNT_CACHE_MAX of them between resets.  Changes to
 * their segments, cohort or enrolment date (from any backend) reset the
 * cache; an abort forgets only what this transaction itself wrote.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "storage/procarray.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "accounts.h"
#include "keytype.h"

typedef struct AccountKey
{
	int32		program_id;
	const char *key;
} AccountKey;

typedef struct AccountEntry
{
	AccountKey	k;
	AccountInfo *info;
	bool		has_hist;		/* read with its tier history */
} AccountEntry;

/*
 * Entries taken in since the last reset (removed ones count: their memory
 * stays until the reset).  Past this, the next statement or batch starts
 * afresh: a few tens of MB at most, whatever the number of accounts.
 */
#define ACCOUNT_CACHE_MAX 200000

/*
 * Entries that hold what this transaction wrote and has not committed (our
 * own enrolments and tier upgrades, rows it inserted or updated): an abort
 * of the transaction or of any subtransaction forgets these, and only
 * these.  Past UNCOMMITTED_MAX, an abort resets the whole cache.
 */
#define UNCOMMITTED_MAX 4096

static MemoryContext account_cxt = NULL;
static HTAB *account_cache = NULL;
static long account_added = 0;
static AccountKey *uncommitted = NULL;
static int	nuncommitted = 0;
static bool uncommitted_overflow = false;

static void load_segment_history(AccountInfo *a, HeapTuple tup, TupleDesc desc);

static uint32
account_hash(const void *key, Size keysize)
{
	const AccountKey *k = key;

	return hash_bytes((const unsigned char *) k->key, strlen(k->key)) ^ (uint32) k->program_id;
}

static int
account_match(const void *a, const void *b, Size keysize)
{
	const AccountKey *x = a,
			   *y = b;

	return (x->program_id == y->program_id && strcmp(x->key, y->key) == 0) ? 0 : 1;
}

/* Remembers that the cached entry of (program_id, key) holds uncommitted rows. */
static void
note_uncommitted(int32 program_id, const char *key)
{
	if (nuncommitted >= UNCOMMITTED_MAX)
	{
		uncommitted_overflow = true;
		return;
	}
	uncommitted[nuncommitted].program_id = program_id;
	uncommitted[nuncommitted].key = key;	/* the entry's own copy */
	nuncommitted++;
}

/*
 * What an aborted (sub)transaction wrote is gone: drop the entries that
 * hold it; the next statement reads them again.  Their memory stays until
 * the next reset, so a statement still holding their AccountInfo (a user
 * function's EXCEPTION block inside our statement) is safe.
 */
static void
forget_uncommitted(void)
{
	int			i;

	if (uncommitted_overflow)
		loyalty_accounts_valid = false;
	else if (account_cache != NULL)
		for (i = 0; i < nuncommitted; i++)
			(void) hash_search(account_cache, &uncommitted[i], HASH_REMOVE, NULL);
	nuncommitted = 0;
	uncommitted_overflow = false;
}

static void
accounts_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			nuncommitted = 0;	/* committed: as valid as anything read */
			uncommitted_overflow = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:	/* its fate is decided elsewhere */
			forget_uncommitted();
			break;
		default:
			break;
	}
}

static void
accounts_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		forget_uncommitted();
}

/*
 * Drops the cache if accounts changed since it was filled, or if it grew
 * past its bound.  Called at the start of a statement, or of a batch of a
 * big one, only: AccountInfo pointers handed out stay valid until the next
 * call, even when the statement's own enrolments invalidate.
 */
void
accounts_begin(void)
{
	static bool registered = false;
	HASHCTL		ctl;

	if (!registered)
	{
		RegisterXactCallback(accounts_xact_callback, NULL);
		RegisterSubXactCallback(accounts_subxact_callback, NULL);
		registered = true;
	}
	if (loyalty_accounts_valid && account_cxt != NULL && account_added <= ACCOUNT_CACHE_MAX)
		return;
	if (account_cxt != NULL)
		MemoryContextDelete(account_cxt);
	account_cxt = AllocSetContextCreate(CacheMemoryContext, "loyalty account cache",
										ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(AccountKey);
	ctl.entrysize = sizeof(AccountEntry);
	ctl.hash = account_hash;
	ctl.match = account_match;
	ctl.hcxt = account_cxt;
	account_cache = hash_create("loyalty accounts", 1024, &ctl,
								HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	account_added = 0;
	/* what it tracked lived in the context just deleted */
	uncommitted = MemoryContextAlloc(account_cxt, sizeof(AccountKey) * UNCOMMITTED_MAX);
	nuncommitted = 0;
	uncommitted_overflow = false;
	loyalty_accounts_valid = true;
}

static AccountInfo *
new_info(const char *key, bool enrolled)
{
	AccountInfo *a = MemoryContextAllocZero(account_cxt, sizeof(AccountInfo));

	a->key = MemoryContextStrdup(account_cxt, key);
	a->enrolled = enrolled;
	a->enrolled_from = DATEVAL_NOBEGIN;
	return a;
}

static AccountEntry *
cache_enter(int32 program_id, const char *key)
{
	AccountKey	k = {program_id, key};
	AccountEntry *e;
	bool		found;

	e = hash_search(account_cache, &k, HASH_ENTER, &found);
	if (!found)
	{
		e->k.key = MemoryContextStrdup(account_cxt, key);
		e->info = NULL;
		e->has_hist = false;
		account_added++;
	}
	return e;
}

static char *
copy_text(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *v = SPI_getvalue(tup, desc, col);

	return v ? MemoryContextStrdup(account_cxt, v) : NULL;
}

#define ACCOUNT_COLS \
	"SELECT a.account_key, a.enrolled_from, a.cohort OPERATOR(pg_catalog.=) 'control'," \
	" a.cooperation_model, a.industry, a.region, a.tier," \
	" hh.until, hh.coop, hh.industry, hh.region, hh.control,"
/* the tier history's columns; %s: loyalty.tier_history or its shard */
#define TIER_HISTORY_COLS \
	" ARRAY(SELECT th.effective_from FROM %1$s th" \
	"       WHERE th.program_id OPERATOR(pg_catalog.=) a.program_id" \
	"         AND th.account_key OPERATOR(pg_catalog.=) a.account_key" \
	"       ORDER BY th.effective_from, th.change_no)," \
	" ARRAY(SELECT th.new_tier FROM %1$s th" \
	"       WHERE th.program_id OPERATOR(pg_catalog.=) a.program_id" \
	"         AND th.account_key OPERATOR(pg_catalog.=) a.account_key" \
	"       ORDER BY th.effective_from, th.change_no)," \
	" a.row_xmin," \
	" ARRAY(SELECT th.xmin FROM %1$s th" \
	"       WHERE th.program_id OPERATOR(pg_catalog.=) a.program_id" \
	"         AND th.account_key OPERATOR(pg_catalog.=) a.account_key)"
#define NO_TIER_HISTORY_COLS \
	" '{}'::pg_catalog.date[], '{}'::pg_catalog.text[], a.row_xmin, '{}'::pg_catalog.xid[]"

/*
 * Written by this transaction and not committed yet: the account row
 * (column 15) or one of its tier history rows (column 16).
 */
static bool
row_is_uncommitted(HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	Datum	   *xids;
	int			n,
				i;

	if (!TransactionIdIsValid(GetCurrentTransactionIdIfAny()))
		return false;			/* nothing written yet */
	if (TransactionIdIsCurrentTransactionId(DatumGetTransactionId(SPI_getbinval(tup, desc, 15, &isnull))))
		return true;
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 16, &isnull)),
					  XIDOID, sizeof(TransactionId), true, TYPALIGN_INT, &xids, NULL, &n);
	for (i = 0; i < n; i++)
		if (TransactionIdIsCurrentTransactionId(DatumGetTransactionId(xids[i])))
			return true;
	return false;
}

/*
 * Loads accounts keys[0..n) (distinct) into the cache, one query: one
 * primary key probe per key (OFFSET 0 keeps the join a nested loop, whatever
 * the table's size was when the generic plan was made; = ANY would scan the
 * whole table once per batch).  The tier history is read only when a rule
 * multiplies by tier.
 */
static void
load_accounts(Program *prog, char **keys, int n)
{
	static ShardPlan plans[2];	/* [with history] */
	Oid			argtypes[2] = {INT4OID, TEXTARRAYOID};
	Datum		args[2];
	bool		hist = prog->uses_tier_multipliers;
	uint64		i;
	OwnerScope	scope;
	int			nest;
	SPITupleTable *result;

	if (loyalty_plan_stale(&plans[hist]))
		plans[hist].plan = loyalty_prepare(
			psprintf("%s %s FROM pg_catalog.unnest($2" KEYS_CAST ") AS k(key)"
					 " CROSS JOIN LATERAL (SELECT a0.*, a0.xmin AS row_xmin FROM %s a0"
					 "   WHERE a0.program_id OPERATOR(pg_catalog.=) $1"
					 "     AND a0.account_key OPERATOR(pg_catalog.=) k.key OFFSET 0) a"
					 " LEFT JOIN LATERAL (SELECT pg_catalog.array_agg(h.valid_until ORDER BY h.valid_until) AS until,"
					 "   pg_catalog.array_agg(h.cooperation_model ORDER BY h.valid_until) AS coop,"
					 "   pg_catalog.array_agg(h.industry ORDER BY h.valid_until) AS industry,"
					 "   pg_catalog.array_agg(h.region ORDER BY h.valid_until) AS region,"
					 "   pg_catalog.array_agg(h.cohort IS NOT DISTINCT FROM 'control' ORDER BY h.valid_until) AS control"
					 "   FROM %s h WHERE h.program_id OPERATOR(pg_catalog.=) a.program_id"
					 "   AND h.account_key OPERATOR(pg_catalog.=) a.account_key) hh ON true",
					 ACCOUNT_COLS,
					 hist ? psprintf(TIER_HISTORY_COLS, loyalty_table("tier_history")) : NO_TIER_HISTORY_COLS,
					 loyalty_table("account"), loyalty_table("account_history")),
			2, argtypes);

	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(keys, NULL, n);

	/*
	 * The latest committed state, not the statement's snapshot: a statement
	 * that waited for a concurrent transaction and then changed the row
	 * version it wrote must see the accounts that transaction enrolled, or
	 * it would not reverse what that version earned; and an account enrolled
	 * concurrently (our own enrolment lost the race) must be seen as it was
	 * enrolled, not with our defaults.
	 */
	loyalty_enter_owner(&scope);
	nest = NewGUCNestLevel();

	/*
	 * The generic plan is made (and remade) while this runs: with sequential
	 * scans off it probes the primary key whatever the size of
	 * loyalty.account at that moment.  A plan made while the table was empty
	 * would otherwise scan it whole for every key for as long as it lives,
	 * and one statement may enrol a million accounts.
	 */
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	loyalty_spi_check(loyalty_execute_latest(plans[hist].plan, args, 0), SPI_OK_SELECT,
					  "read loyalty.account");
	AtEOXact_GUC(true, nest);
	loyalty_leave_owner(&scope);
	result = SPI_tuptable;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = result->vals[i];
		TupleDesc	desc = result->tupdesc;
		char	   *key = SPI_getvalue(tup, desc, 1);
		AccountEntry *e = cache_enter(prog->id, key);
		AccountInfo *a = new_info(key, true);
		bool		isnull;
		Datum	   *from,
				   *tier;
		bool	   *tier_nulls;
		int			nf,
					nt,
					j;

		a->enrolled_from = DatumGetDateADT(SPI_getbinval(tup, desc, 2, &isnull));
		a->control = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)) && !isnull;
		a->segment[SEG_COOPERATION_MODEL] = copy_text(tup, desc, 4);
		a->segment[SEG_INDUSTRY] = copy_text(tup, desc, 5);
		a->segment[SEG_REGION] = copy_text(tup, desc, 6);
		a->tier = copy_text(tup, desc, 7);
		load_segment_history(a, tup, desc);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 13, &isnull)),
						  DATEOID, 4, true, TYPALIGN_INT, &from, NULL, &nf);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 14, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &tier, &tier_nulls, &nt);
		a->nhist = nf;
		a->hist_from = MemoryContextAlloc(account_cxt, sizeof(DateADT) * (nf + 1));
		a->hist_tier = MemoryContextAlloc(account_cxt, sizeof(char *) * (nf + 1));
		for (j = 0; j < nf; j++)
		{
			a->hist_from[j] = DatumGetDateADT(from[j]);
			a->hist_tier[j] = tier_nulls[j] ? NULL :
				MemoryContextStrdup(account_cxt, TextDatumGetCString(tier[j]));
		}
		e->info = a;
		e->has_hist = hist;
		if (row_is_uncommitted(tup, desc))
			note_uncommitted(prog->id, e->k.key);
	}
	/* a big statement reads accounts batch after batch: free each result */
	SPI_freetuptable(result);
}

/* Columns 8..12: the account's earlier segments and cohorts, if any. */
static void
load_segment_history(AccountInfo *a, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	Datum		until = SPI_getbinval(tup, desc, 8, &isnull);
	Datum	   *u,
			   *v;
	bool	   *vn;
	int			n,
				m,
				i,
				s;

	if (isnull)
		return;
	deconstruct_array(DatumGetArrayTypeP(until), DATEOID, 4, true, TYPALIGN_INT, &u, NULL, &n);
	a->nseg_hist = n;
	a->seg_until = MemoryContextAlloc(account_cxt, sizeof(DateADT) * n);
	a->seg_hist = MemoryContextAlloc(account_cxt, sizeof(char **) * n);
	a->control_hist = MemoryContextAlloc(account_cxt, sizeof(bool) * n);
	for (i = 0; i < n; i++)
	{
		a->seg_until[i] = DatumGetDateADT(u[i]);
		a->seg_hist[i] = MemoryContextAllocZero(account_cxt, sizeof(char *) * SEG_COUNT);
	}
	for (s = 0; s < SEG_COUNT; s++)
	{
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 9 + s, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &v, &vn, &m);
		for (i = 0; i < m && i < n; i++)
			a->seg_hist[i][s] = vn[i] ? NULL : MemoryContextStrdup(account_cxt, TextDatumGetCString(v[i]));
	}
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 12, &isnull)),
					  BOOLOID, 1, true, TYPALIGN_CHAR, &v, NULL, &m);
	for (i = 0; i < m && i < n; i++)
		a->control_hist[i] = DatumGetBool(v[i]);
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * Is another transaction, still in progress, auto-enrolling this account
 * right now?  Its row is invisible to us, and inserting ours would wait for
 * that transaction to end (a unique index never lets two rows with one key
 * in).  A dirty read of the primary key sees it without waiting.  An
 * auto-enrolment has the program's defaults, so we may post as if it were
 * done; should that transaction roll back, loyalty.fold() enrols the
 * account for our postings.  An explicit enroll() in progress is not
 * skipped: its attributes decide what the account earns, so we wait for it.
 */
static bool
enrolling_elsewhere(Relation rel, Relation idx, int32 program_id, const char *key)
{
	SnapshotData dirty;
	ScanKeyData sk[2];
	IndexScanDesc scan;
	TupleTableSlot *slot;
	bool		found = false;
	Oid			key_type = TupleDescAttr(RelationGetDescr(idx), 1)->atttypid;

	InitDirtySnapshot(dirty);
	ScanKeyEntryInitialize(&sk[0], 0, 1, BTEqualStrategyNumber, InvalidOid, InvalidOid,
						   F_INT4EQ, Int32GetDatum(program_id));
	ScanKeyEntryInitialize(&sk[1], 0, 2, BTEqualStrategyNumber, InvalidOid, loyalty_key_collation(key_type),
						   loyalty_key_eq(key_type), loyalty_key_datum(key_type, key));
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, idx, &dirty, 2, 0);
	index_rescan(scan, sk, 2, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		int			attnum = get_attnum(RelationGetRelid(rel), "enrolled_by");
		bool		isnull;
		Datum		by;

		if (!TransactionIdIsValid(dirty.xmin) || TransactionIdIsCurrentTransactionId(dirty.xmin))
			continue;			/* committed (we will conflict without waiting), or ours */
		by = slot_getattr(slot, attnum, &isnull);
		found = !isnull && strcmp(TextDatumGetCString(by), "auto") == 0;
		break;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/*
 * Moves to the front of keys[0..n) those being auto-enrolled by another
 * transaction in progress; returns how many.
 */
int
accounts_enrolling_elsewhere(int32 program_id, char **keys, int n)
{
	Relation	rel = table_open(loyalty_table_oid("account"), AccessShareLock);
	Relation	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	int			nskip = 0,
				i;

	for (i = 0; i < n; i++)
		if (enrolling_elsewhere(rel, idx, program_id, keys[i]))
		{
			char	   *t = keys[nskip];

			keys[nskip++] = keys[i];
			keys[i] = t;
		}
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return nskip;
}

/*
 * Enrols keys[0..n) with the program's defaults.  Returns how many of them
 * it inserted, moved to the front of keys; the others were enrolled by a
 * concurrent transaction that committed first (ON CONFLICT DO NOTHING
 * waited for it) and must be read back, not assumed to have our defaults.
 */
static int
enroll_accounts(int32 program_id, char **keys, int n)
{
	static ShardPlan plan;
	Oid			argtypes[2] = {INT4OID, TEXTARRAYOID};
	Datum		args[2];
	OwnerScope	scope;
	int			ninserted = 0;
	uint64		i,
				nrows;
	SPITupleTable *result;
	char	  **inserted,
			  **others;
	int			j,
				nothers = 0;

	if (n == 0)
		return 0;
	if (loyalty_plan_stale(&plan))
		plan.plan = loyalty_prepare(
			psprintf("INSERT INTO %s AS a (program_id, account_key, enrolled_by, enrolled_from)"
					 " SELECT $1, k, 'auto', '-infinity' FROM pg_catalog.unnest($2" KEYS_CAST ") AS k ORDER BY k"
					 " ON CONFLICT DO NOTHING RETURNING a.account_key", loyalty_table("account")), 2, argtypes);
	qsort(keys, n, sizeof(char *), cmp_str);
	args[0] = Int32GetDatum(program_id);
	args[1] = loyalty_text_array(keys, NULL, n);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_INSERT_RETURNING,
					  "enrol accounts");
	loyalty_leave_owner(&scope);
	result = SPI_tuptable;
	nrows = SPI_processed;

	/* the inserted keys first, the others after, each in ascending order */
	inserted = palloc(sizeof(char *) * (nrows + 1));
	for (i = 0; i < nrows; i++)
		inserted[i] = SPI_getvalue(result->vals[i], result->tupdesc, 1);
	SPI_freetuptable(result);
	qsort(inserted, nrows, sizeof(char *), cmp_str);
	others = palloc(sizeof(char *) * n);
	for (j = 0; j < n; j++)
	{
		if (nrows > 0 && bsearch(&keys[j], inserted, nrows, sizeof(char *), cmp_str) != NULL)
			keys[ninserted++] = keys[j];
		else
			others[nothers++] = keys[j];
	}
	memcpy(keys + ninserted, others, sizeof(char *) * nothers);
	pfree(others);
	return ninserted;
}

/* Not cached, or cached without the tier history the program now needs. */
static bool
is_missing(Program *prog, const char *key)
{
	AccountKey	k = {prog->id, key};
	AccountEntry *e = hash_search(account_cache, &k, HASH_FIND, NULL);

	return e == NULL || e->info == NULL || (prog->uses_tier_multipliers && !e->has_hist);
}

AccountInfo **
accounts_resolve(Program *prog, char **keys, int n, bool enroll)
{
	MemoryContext caller = CurrentMemoryContext;	/* SPI calls switch away from it */
	AccountInfo **out = palloc0(sizeof(AccountInfo *) * (n > 0 ? n : 1));
	char	  **missing = palloc(sizeof(char *) * (n > 0 ? n : 1));
	int			nmissing = 0;
	int			i;

	if (account_cxt == NULL)
		accounts_begin();
	for (i = 0; i < n; i++)
		if (is_missing(prog, keys[i]))
			missing[nmissing++] = keys[i];
	if (nmissing > 0)
	{
		load_accounts(prog, missing, nmissing);
		if (enroll && prog->auto_enroll)
		{
			int			nnew = 0;

			for (i = 0; i < nmissing; i++)
			{
				/* a key that cannot be an account's is never enrolled: its rows are parked */
				if (is_missing(prog, missing[i]) && rules_account_key_problem(missing[i]) == NULL)
					missing[nnew++] = missing[i];
			}
			if (nnew > 0)
			{
				/*
				 * Being auto-enrolled elsewhere: the defaults, without
				 * waiting.  Under SERIALIZABLE the next fold writes every new
				 * account's row: a row written here would put two
				 * transactions invoicing the same new customer in a
				 * read/write cycle, and one of them would fail.
				 */
				int			nskip = IsolationIsSerializable() ? nnew :
					accounts_enrolling_elsewhere(prog->id, missing, nnew);
				int			ninserted = enroll_accounts(prog->id, missing + nskip, nnew - nskip);

				for (i = 0; i < nskip + ninserted; i++)
				{
					AccountEntry *e = cache_enter(prog->id, missing[i]);

					e->info = new_info(missing[i], true);
					e->has_hist = true; /* a new account has no tier history */
					note_uncommitted(prog->id, e->k.key);
				}
				/* enrolled meanwhile by someone else: as they enrolled it */
				if (nskip + ninserted < nnew)
					load_accounts(prog, missing + nskip + ninserted, nnew - nskip - ninserted);
			}
		}
	}
	MemoryContextSwitchTo(caller);
	for (i = 0; i < n; i++)
	{
		AccountKey	k = {prog->id, keys[i]};
		AccountEntry *e = hash_search(account_cache, &k, HASH_FIND, NULL);

		/*
		 * Not enrolled: not cached, asked again next time, since another
		 * session may enrol it without telling our cache.
		 */
		if (e && e->info)
			out[i] = e->info;
		else
		{
			out[i] = palloc0(sizeof(AccountInfo));
			out[i]->key = keys[i];
			out[i]->enrolled_from = DATEVAL_NOBEGIN;
		}
	}
	pfree(missing);
	return out;
}

void
accounts_note_tier(Program *prog, const char *key, const char *tier, DateADT effective_from)
{
	AccountKey	k = {prog->id, key};
	AccountEntry *e;
	AccountInfo *a;

	if (account_cache == NULL)
		return;
	e = hash_search(account_cache, &k, HASH_FIND, NULL);
	if (e == NULL || e->info == NULL)
		return;
	a = e->info;
	a->tier = MemoryContextStrdup(account_cxt, tier);
	if (a->hist_from == NULL)
	{
		a->hist_from = MemoryContextAlloc(account_cxt, sizeof(DateADT));
		a->hist_tier = MemoryContextAlloc(account_cxt, sizeof(char *));
	}
	else
	{
		a->hist_from = repalloc(a->hist_from, sizeof(DateADT) * (a->nhist + 1));
		a->hist_tier = repalloc(a->hist_tier, sizeof(char *) * (a->nhist + 1));
	}
	a->hist_from[a->nhist] = effective_from;
	a->hist_tier[a->nhist] = a->tier;
	a->nhist++;
	note_uncommitted(prog->id, e->k.key);
}

/*
 * Forgets every cached account: verify, backfill and explain_points read
 * accounts as they are now, whatever this backend cached before (another
 * session's tier upgrade does not invalidate caches, see below).
 */
void
accounts_forget(void)
{
	loyalty_accounts_valid = false;
	accounts_begin();
}

/*
 * One account read again, for a document dated after today: another
 * session may have recorded a tier upgrade that takes effect before that
 * date, and tier history inserts do not invalidate caches (an upgrade
 * counts from tomorrow on, so documents up to today never need it).
 */
AccountInfo *
accounts_refresh(Program *prog, const char *key)
{
	AccountKey	k = {prog->id, key};
	AccountEntry *e;
	char	   *keys[1] = {(char *) key};
	AccountInfo *info;

	if (account_cxt == NULL)
		accounts_begin();
	e = hash_search(account_cache, &k, HASH_FIND, NULL);
	if (e != NULL)
		e->info = NULL;
	load_accounts(prog, keys, 1);
	e = hash_search(account_cache, &k, HASH_FIND, NULL);
	if (e != NULL && e->info != NULL)
		return e->info;
	/* not enrolled (any more): like an unknown account, kept until the next statement */
	info = MemoryContextAllocZero(account_cxt, sizeof(AccountInfo));
	info->key = MemoryContextStrdup(account_cxt, key);
	info->enrolled_from = DATEVAL_NOBEGIN;
	return info;
}
