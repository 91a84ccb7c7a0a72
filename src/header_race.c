/*
 * header_race.c — a change of an invoice header (customer, date, currency,
 * document type, payment dates) racing a line statement of the same
 * invoice in another transaction.
 *
 * The line statement reads the header with its own snapshot and does not
 * see the uncommitted change; the header statement moves the lines it can
 * see and not the other transaction's.  Neither is wrong alone: whichever
 * of the two commits second must correct what the first left.  So each
 * side records, for its transaction, what it used:
 *
 *   line side    the headers its statements read (another transaction's
 *                rows), with the facts read;
 *   header side  the headers it changed, with a digest of the line rows
 *                (table, ctid, xmin) whose points it moved.
 *
 * At PRE_COMMIT (or PRE_PREPARE) it takes advisory locks of a class of its
 * own on (attachment, hash of the header key) in one sorted order (shared
 * for the line side, exclusive for the header side; line sides never wait
 * for each other), then looks again with the latest snapshot: a header row
 * version the line side read that is no longer current (one buffer read)
 * is read again, and if its facts differ from what was read, or if a
 * changed header's lines differ from what the header side moved, its
 * accounts (the old and the new customer) are restated from the ERP rows
 * (reconcile.c), from the earliest document month involved, as the role
 * that ran the statements.  Whoever reached its commit first holds its lock until
 * it has committed, so the second sees its result.  The price: a wait
 * between two transactions on the same header, at commit; a restatement
 * only when a race happened.  Rows the transaction wrote itself (a header
 * inserted or changed in it) need no check: nobody else can change them
 * before it commits.
 *
 * Bounds.  Beyond RACE_MAX_HEADER_LOCKS headers of one attachment a side
 * takes one lock on the attachment instead (shared for lines, exclusive for
 * headers; every transaction takes an intention lock on it, so the two
 * levels exclude each other as they should).  Beyond RACE_MAX_HEADERS
 * headers a side stops recording them one by one: the line side keeps a
 * snapshot taken before it read any of the others and a Bloom filter of
 * their keys, and at commit looks for header rows written since that
 * snapshot by others (one scan of the header table); if one of its headers
 * changed facts, it restates the whole attachment.  The header side
 * restates the whole attachment at commit.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "storage/bufmgr.h"
#include "utils/typcache.h"

#include "header_race.h"
#include "keymap.h"
#include "loyalty.h"
#include "reconcile.h"

/*
 * Advisory lock tags (database, hash, attachment, class): the class is the
 * 16-bit field that pg_advisory_lock() sets to 1 or 2, so no lock a user
 * takes through SQL ever has one of these tags.
 */
#define RACE_LOCK_HEADER 0x4C48 /* "LH" */
#define RACE_LOCK_ATTACHMENT 0x4C41 /* "LA" */
#define RACE_MAX_HEADERS 10000	/* recorded one by one, per attachment, role and side */
#define RACE_MAX_HEADER_LOCKS 64	/* locked one by one, per attachment and side */
#define BLOOM_BITS (1U << 23)	/* 1 MB: about 1 false hit in 3,000 at 200,000 headers */

#define RACE_WHAT "loyalty's restatement after a concurrent change of an invoice header"

typedef struct RaceHeader
{
	uint32		hash;			/* the key type's hash: the lock's key */
	bool		line_side;
	bool		header_side;
	bool		mixed;			/* line side: read with different facts */
	HeaderFacts *facts;			/* line side: the facts first read */
	Oid			rel;			/* line side: the row version read last */
	ItemPointerData tid;
	TransactionId xmin;
	bool		recheck;		/* at commit: that version is no longer current */
	List	   *accounts;		/* every customer its points were moved from or to */
	DateADT		since;			/* the earliest document date among the facts seen */
	uint64		stmt;			/* header side: the statement that reports its lines */
	uint64		dsum;			/* header side: the lines moved, hashes added up */
	int64		dcount;
	uint64		now_sum;		/* at commit: the lines there are now */
	int64		now_count;
} RaceHeader;

typedef struct RaceGroup
{
	int32		attachment_id;
	Oid			role;			/* who ran the statements: reads and restates as it */
	void	   *shard;			/* on Citus, the shard they fired on (loyalty_shard_current) */
	KeyType    *keytype;
	HTAB	   *headers;		/* header key -> RaceHeader */
	int			nline;
	int			nheader;
	bool		line_overflow;
	bool		header_overflow;
	Snapshot	line_snapshot;	/* line overflow: older than every unrecorded read */
	uint8	   *bloom;			/* line overflow: the unrecorded headers */
} RaceGroup;

typedef struct RaceLock
{
	int32		attachment_id;
	bool		whole;			/* the attachment's lock, not a header's */
	uint32		hash;
	bool		line_all;		/* whole: shared over every header */
	bool		header_all;		/* whole: exclusive over every header */
	bool		header_some;	/* whole: some header exclusive / a header's: exclusive */
} RaceLock;

static MemoryContext race_cxt = NULL;
static List *race_groups = NIL;
static bool race_checking = false;
static uint64 race_stmt = 1;

static void race_xact_callback(XactEvent event, void *arg);

/* ---- facts ---- */

static bool
same_text(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

bool
header_facts_equal(const HeaderFacts *a, const HeaderFacts *b)
{
	return same_text(a->account, b->account) && a->has_date == b->has_date &&
		(!a->has_date || a->date == b->date) && same_text(a->currency, b->currency) &&
		same_text(a->doc_type, b->doc_type) && a->has_due == b->has_due &&
		(!a->has_due || a->due == b->due) && a->has_paid == b->has_paid &&
		(!a->has_paid || a->paid == b->paid);
}

/* A copy of hf, its strings included, in CurrentMemoryContext. */
HeaderFacts *
header_facts_copy(const HeaderFacts *hf)
{
	HeaderFacts *c = palloc(sizeof(HeaderFacts));

	*c = *hf;
	c->account = hf->account ? pstrdup(hf->account) : NULL;
	c->currency = hf->currency ? pstrdup(hf->currency) : NULL;
	c->doc_type = hf->doc_type ? pstrdup(hf->doc_type) : NULL;
	return c;
}

/* A customer and a document date the header's lines were accrued with. */
static void
add_facts(RaceHeader *h, const HeaderFacts *hf)
{
	ListCell   *lc;
	const char *account = hf->account;

	/* without a date, the lines are dated by the lines table: every month */
	h->since = Min(h->since, hf->has_date ? hf->date : DATEVAL_NOBEGIN);
	if (account == NULL)
		return;
	foreach(lc, h->accounts)
		if (strcmp(lfirst(lc), account) == 0)
			return;
	h->accounts = lappend(h->accounts, pstrdup(account));
}

/* ---- recording ---- */

static RaceGroup *
race_group(Attachment *att)
{
	static bool registered = false;
	Oid			role = GetUserId();
	void	   *shard = loyalty_shard_current();
	ListCell   *lc;
	RaceGroup  *g;
	MemoryContext old;

	if (!registered)
	{
		RegisterXactCallback(race_xact_callback, NULL);
		registered = true;
	}
	foreach(lc, race_groups)
	{
		g = lfirst(lc);
		if (g->attachment_id == att->id && g->role == role && g->shard == shard)
			return g;
	}
	if (race_cxt == NULL)
		race_cxt = AllocSetContextCreate(TopTransactionContext, "loyalty header race",
										 ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(race_cxt);
	g = palloc0(sizeof(RaceGroup));
	g->attachment_id = att->id;
	g->role = role;
	g->shard = shard;
	/* the attachment's own may go with a cache rebuild before commit */
	g->keytype = keytype_get(att->header_key_type, att->header_key->collation, race_cxt);
	g->headers = keymap_create("loyalty headers of concurrent transactions", race_cxt);
	race_groups = lappend(race_groups, g);
	MemoryContextSwitchTo(old);
	return g;
}

static uint32
key_hash(RaceGroup *g, Datum key)
{
	return DatumGetUInt32(FunctionCall1Coll(&g->keytype->hash, g->keytype->collation, key));
}

static RaceHeader *
enter_header(RaceGroup *g, Datum key, uint32 hash)
{
	bool		found;
	KeyMapEntry *e = keymap_enter(g->headers, g->keytype, key, race_cxt, &found);

	if (!found)
	{
		e->value = palloc0(sizeof(RaceHeader));
		((RaceHeader *) e->value)->hash = hash;
		((RaceHeader *) e->value)->since = DATEVAL_NOEND;
	}
	return e->value;
}

static void
bloom_positions(uint32 hash, uint32 *pos)
{
	uint32		h2 = murmurhash32(hash) | 1;
	int			i;

	for (i = 0; i < 3; i++)
		pos[i] = (hash + i * h2) % BLOOM_BITS;
}

static void
bloom_add(RaceGroup *g, uint32 hash)
{
	uint32		pos[3];
	int			i;

	bloom_positions(hash, pos);
	for (i = 0; i < 3; i++)
		g->bloom[pos[i] / 8] |= 1 << (pos[i] % 8);
}

static bool
bloom_has(RaceGroup *g, uint32 hash)
{
	uint32		pos[3];
	int			i;

	bloom_positions(hash, pos);
	for (i = 0; i < 3; i++)
		if ((g->bloom[pos[i] / 8] & (1 << (pos[i] % 8))) == 0)
			return false;
	return true;
}

/*
 * From here on the group's reads are not recorded one by one: keep a
 * snapshot taken before any of them (the statement's, older than its
 * look-ups) and a Bloom filter of their keys.
 */
static void
line_overflow(RaceGroup *g)
{
	g->line_overflow = true;
	g->line_snapshot = RegisterSnapshotOnOwner(ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot(),
											   TopTransactionResourceOwner);
	g->bloom = MemoryContextAllocZero(race_cxt, BLOOM_BITS / 8);
}

void
header_race_line_read(Attachment *att, Datum key, const HeaderFacts *hf,
					  Oid rel, ItemPointer tid, TransactionId xmin)
{
	RaceGroup  *g;
	RaceHeader *h;
	KeyMapEntry *e;
	uint32		hash;
	MemoryContext old;

	if (race_checking)
		return;
	g = race_group(att);
	old = MemoryContextSwitchTo(race_cxt);
	hash = key_hash(g, key);
	e = keymap_find(g->headers, g->keytype, key);
	h = e ? e->value : NULL;
	if ((h == NULL || !h->line_side) && !g->line_overflow && g->nline >= RACE_MAX_HEADERS)
		line_overflow(g);
	if ((h == NULL || !h->line_side) && g->line_overflow)
		bloom_add(g, hash);
	else
	{
		if (h == NULL)
			h = enter_header(g, key, hash);
		if (!h->line_side)
		{
			h->line_side = true;
			h->facts = header_facts_copy(hf);
			g->nline++;
		}
		else if (!header_facts_equal(h->facts, hf))
			h->mixed = true;
		h->rel = rel;
		h->tid = *tid;
		h->xmin = xmin;
		add_facts(h, hf);
	}
	MemoryContextSwitchTo(old);
}

bool
header_race_header_changed(Attachment *att, Datum key, const HeaderFacts *of, const HeaderFacts *nf)
{
	RaceGroup  *g;
	RaceHeader *h;
	KeyMapEntry *e;
	bool		first = false;
	MemoryContext old;

	if (race_checking)
		return false;
	g = race_group(att);
	old = MemoryContextSwitchTo(race_cxt);
	e = keymap_find(g->headers, g->keytype, key);
	h = e ? e->value : NULL;
	if ((h == NULL || !h->header_side) && g->nheader >= RACE_MAX_HEADERS)
		g->header_overflow = true;	/* the whole attachment is restated */
	else
	{
		if (h == NULL)
			h = enter_header(g, key, key_hash(g, key));
		if (!h->header_side)
		{
			h->header_side = true;
			h->stmt = race_stmt;
			g->nheader++;
			first = true;
		}
		add_facts(h, of);
		add_facts(h, nf);
	}
	MemoryContextSwitchTo(old);
	return first;
}

static uint64
line_hash(Oid tableoid, ItemPointer ctid, TransactionId xmin)
{
	uint32		v[4];

	v[0] = tableoid;
	v[1] = ItemPointerGetBlockNumberNoCheck(ctid);
	v[2] = ItemPointerGetOffsetNumberNoCheck(ctid);
	v[3] = xmin;
	return hash_bytes_extended((const unsigned char *) v, sizeof(v), 0);
}

void
header_race_line_moved(Attachment *att, Datum key, Oid tableoid, ItemPointer ctid, TransactionId xmin)
{
	RaceGroup  *g;
	KeyMapEntry *e;
	RaceHeader *h;

	if (race_checking)
		return;
	g = race_group(att);
	e = keymap_find(g->headers, g->keytype, key);
	h = e ? e->value : NULL;
	if (h == NULL || !h->header_side || h->stmt != race_stmt)
		return;
	h->dsum += line_hash(tableoid, ctid, xmin);
	h->dcount++;
}

void
header_race_statement_done(void)
{
	race_stmt++;
}

/* ---- locks ---- */

static int
lock_order(const void *a, const void *b)
{
	const RaceLock *x = a,
			   *y = b;

	if (x->attachment_id != y->attachment_id)
		return x->attachment_id < y->attachment_id ? -1 : 1;
	if (x->whole != y->whole)
		return x->whole ? -1 : 1;
	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	return 0;
}

/*
 * The attachment's lock is an intention lock unless a side covers every
 * header: IS = RowShare, IX = RowExclusive, S = Share, S+IX =
 * ShareRowExclusive, X = Exclusive, whose conflicts are the textbook's.
 */
static LOCKMODE
lock_mode(const RaceLock *l)
{
	if (!l->whole)
		return l->header_some ? ExclusiveLock : ShareLock;
	if (l->header_all)
		return ExclusiveLock;
	if (l->line_all)
		return l->header_some ? ShareRowExclusiveLock : ShareLock;
	return l->header_some ? RowExclusiveLock : RowShareLock;
}

static int
group_locks(RaceGroup *g, RaceLock *locks)
{
	bool		line_all = g->line_overflow || g->nline > RACE_MAX_HEADER_LOCKS;
	bool		header_all = g->header_overflow || g->nheader > RACE_MAX_HEADER_LOCKS;
	HASH_SEQ_STATUS seq;
	KeyMapEntry *e;
	int			n = 1;

	memset(&locks[0], 0, sizeof(RaceLock));
	locks[0].attachment_id = g->attachment_id;
	locks[0].whole = true;
	locks[0].line_all = line_all;
	locks[0].header_all = header_all;
	locks[0].header_some = g->nheader > 0 || g->header_overflow;
	hash_seq_init(&seq, g->headers);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		RaceHeader *h = e->value;
		bool		header = h->header_side && !header_all;
		bool		line = h->line_side && !line_all;

		if (!header && !line)
			continue;
		memset(&locks[n], 0, sizeof(RaceLock));
		locks[n].attachment_id = g->attachment_id;
		locks[n].hash = h->hash;
		locks[n].header_some = header;
		n++;
	}
	return n;
}

/*
 * Takes every lock in one order (attachment, its own lock first, then the
 * headers' by hash), one lock per tag in the strongest mode asked: two
 * transactions never wait for each other in opposite orders.
 */
static void
take_locks(void)
{
	ListCell   *lc;
	RaceLock   *locks;
	int			n = 0,
				cap = 0,
				i;

	foreach(lc, race_groups)
		cap += 1 + hash_get_num_entries(((RaceGroup *) lfirst(lc))->headers);
	locks = palloc(sizeof(RaceLock) * (cap + 1));
	foreach(lc, race_groups)
		n += group_locks(lfirst(lc), locks + n);
	qsort(locks, n, sizeof(RaceLock), lock_order);
	for (i = 0; i < n; i++)
	{
		RaceLock	l = locks[i];
		LOCKTAG		tag;

		while (i + 1 < n && lock_order(&l, &locks[i + 1]) == 0)
		{
			i++;
			l.line_all |= locks[i].line_all;
			l.header_all |= locks[i].header_all;
			l.header_some |= locks[i].header_some;
		}
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, l.hash, (uint32) l.attachment_id,
							 l.whole ? RACE_LOCK_ATTACHMENT : RACE_LOCK_HEADER);
		(void) LockAcquire(&tag, lock_mode(&l), false, false);
	}
	pfree(locks);
}

/* ---- checking ---- */

/*
 * Is the header row version a line statement read still the current one
 * (visible to snap, the same xmin at the same place)?  No SQL: one buffer
 * read.  The relation cannot have shrunk (the look-up's lock is held until
 * commit), but a pruned slot may hold another row now: hence the xmin.
 */
static bool
version_current(RaceHeader *h, Snapshot snap, Relation *rel)
{
	TupleTableSlot *slot;
	bool		current = false;
	bool		isnull;

	if (*rel == NULL || RelationGetRelid(*rel) != h->rel)
	{
		if (*rel != NULL)
			table_close(*rel, AccessShareLock);
		*rel = NULL;
		if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(h->rel)))
			return false;
		*rel = table_open(h->rel, AccessShareLock);
	}
	if (ItemPointerGetBlockNumber(&h->tid) >= RelationGetNumberOfBlocks(*rel))
		return false;
	slot = table_slot_create(*rel, NULL);
	if (table_tuple_fetch_row_version(*rel, &h->tid, snap, slot))
		current = TransactionIdEquals(DatumGetTransactionId(slot_getsysattr(slot, MinTransactionIdAttributeNumber, &isnull)),
									  h->xmin);
	ExecDropSingleTupleTableSlot(slot);
	return current;
}

/*
 * The checks that need no SQL: which headers read by the line side are no
 * longer as they were read.  True when the group needs the SQL checks (a
 * header to read again, a header side, an overflow).
 */
static bool
fast_pass(RaceGroup *g, Snapshot snap)
{
	HASH_SEQ_STATUS seq;
	KeyMapEntry *e;
	Relation	rel = NULL;
	bool		need = g->nheader > 0 || g->header_overflow || g->line_overflow;

	hash_seq_init(&seq, g->headers);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		RaceHeader *h = e->value;

		if (!h->line_side)
			continue;
		h->recheck = h->mixed || !version_current(h, snap, &rel);
		need |= h->recheck;
	}
	if (rel != NULL)
		table_close(rel, AccessShareLock);
	return need;
}

static Datum
key_array(RaceGroup *g, Datum *keys, int n)
{
	return PointerGetDatum(construct_array(keys, n, g->keytype->typid, g->keytype->typlen,
										   g->keytype->typbyval, g->keytype->typalign));
}

/* The header facts of keys now (or under snap), in a map key -> HeaderFacts. */
static HTAB *
read_headers(RaceGroup *g, Attachment *att, Datum *keys, int n, Snapshot snap)
{
	HTAB	   *map = keymap_create("loyalty headers at commit", CurrentMemoryContext);
	Oid			argtype = get_array_type(g->keytype->typid);
	Datum		arg = key_array(g, keys, n);
	char	   *sql = psprintf("SELECT u.k, h FROM pg_catalog.unnest($1) AS u(k) JOIN %s h ON h.%s %s u.k",
							   mapping_table_ref(att->header, att->header_name),
							   quote_identifier(att->header_match_column),
							   keytype_equality_operator(g->keytype->typid));
	TupleTableSlot *slot = MakeSingleTupleTableSlot(lookup_rowtype_tupdesc_copy(att->header_rowtype, -1),
													&TTSOpsHeapTuple);
	ExprContext *econtext = CreateStandaloneExprContext();
	uint64		r;
	MemoryContext cxt = CurrentMemoryContext;

	PushActiveSnapshot(snap);
	loyalty_spi_check(SPI_execute_with_args(sql, 1, &argtype, &arg, NULL, true, 0), SPI_OK_SELECT,
					  "read the invoice headers again");
	PopActiveSnapshot();
	MemoryContextSwitchTo(cxt);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		bool		isnull,
					keynull,
					found;
		Datum		k = SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &isnull);
		HeapTupleHeader th = DatumGetHeapTupleHeader(SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &isnull));
		HeapTupleData tmp;
		HeaderFacts hf;

		tmp.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&tmp.t_self);
		tmp.t_tableOid = InvalidOid;
		tmp.t_data = th;
		ExecStoreHeapTuple(&tmp, slot, false);
		ResetExprContext(econtext);
		(void) mapping_header_facts(att, econtext, slot, &hf, &keynull);
		keymap_enter(map, g->keytype, k, cxt, &found)->value = header_facts_copy(&hf);
		ExecClearTuple(slot);
	}
	SPI_freetuptable(SPI_tuptable);
	FreeExprContext(econtext, true);
	ExecDropSingleTupleTableSlot(slot);
	return map;
}

/* What a group restates: these customers, from this date's month on. */
typedef struct Restatement
{
	List	   *accounts;		/* String nodes */
	DateADT		since;
} Restatement;

static void
restate_header(RaceHeader *h, const HeaderFacts *now, Restatement *r)
{
	ListCell   *lc;

	foreach(lc, h->accounts)
		r->accounts = list_append_unique(r->accounts, makeString(lfirst(lc)));
	r->since = Min(r->since, h->since);
	if (now != NULL)
	{
		if (now->account != NULL)
			r->accounts = list_append_unique(r->accounts, makeString(now->account));
		r->since = Min(r->since, now->has_date ? now->date : DATEVAL_NOBEGIN);
	}
}

/* Line side: did a header the statements read change its facts since? */
static void
check_lines(RaceGroup *g, Attachment *att, Restatement *restate)
{
	long		max = hash_get_num_entries(g->headers);
	Datum	   *keys = palloc(sizeof(Datum) * (max + 1));
	int			n = 0;
	HASH_SEQ_STATUS seq;
	KeyMapEntry *e;
	HTAB	   *now;

	hash_seq_init(&seq, g->headers);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (((RaceHeader *) e->value)->line_side && ((RaceHeader *) e->value)->recheck)
			keys[n++] = e->key.value;
	if (n == 0)
		return;
	now = read_headers(g, att, keys, n, GetLatestSnapshot());
	hash_seq_init(&seq, g->headers);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		RaceHeader *h = e->value;
		KeyMapEntry *ne;

		if (!h->line_side || !h->recheck)
			continue;
		ne = keymap_find(now, g->keytype, e->key.value);
		if (ne == NULL || h->mixed || !header_facts_equal(h->facts, ne->value))
			restate_header(h, ne ? ne->value : NULL, restate);
	}
}

/* Header side: are the lines of a changed header still those it moved? */
static void
check_header_lines(RaceGroup *g, Attachment *att, Restatement *restate)
{
	long		max = hash_get_num_entries(g->headers);
	Datum	   *keys = palloc(sizeof(Datum) * (max + 1));
	int			n = 0;
	HASH_SEQ_STATUS seq;
	KeyMapEntry *e;
	Oid			argtype = get_array_type(g->keytype->typid);
	Datum		arg;
	char	   *sql;
	uint64		r;
	MemoryContext cxt = CurrentMemoryContext;

	hash_seq_init(&seq, g->headers);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (((RaceHeader *) e->value)->header_side)
		{
			((RaceHeader *) e->value)->now_sum = 0;
			((RaceHeader *) e->value)->now_count = 0;
			keys[n++] = e->key.value;
		}
	if (n == 0)
		return;
	arg = key_array(g, keys, n);
	sql = psprintf("SELECT s.%s, s.tableoid, s.ctid, s.xmin FROM %s s WHERE s.%s %s ANY ($1)",
				   quote_identifier(att->header_key_column),
				   mapping_table_ref(att->source, att->source_name),
				   quote_identifier(att->header_key_column),
				   keytype_equality_operator(g->keytype->typid));
	PushActiveSnapshot(GetLatestSnapshot());
	loyalty_spi_check(SPI_execute_with_args(sql, 1, &argtype, &arg, NULL, true, 0), SPI_OK_SELECT,
					  "read the lines of changed invoice headers again");
	PopActiveSnapshot();
	MemoryContextSwitchTo(cxt);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		k = SPI_getbinval(row, desc, 1, &isnull);
		RaceHeader *h;

		if (isnull || (e = keymap_find(g->headers, g->keytype, k)) == NULL)
			continue;
		h = e->value;
		h->now_sum += line_hash(DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull)),
								(ItemPointer) DatumGetPointer(SPI_getbinval(row, desc, 3, &isnull)),
								DatumGetTransactionId(SPI_getbinval(row, desc, 4, &isnull)));
		h->now_count++;
	}
	hash_seq_init(&seq, g->headers);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		RaceHeader *h = e->value;

		if (h->header_side && (h->now_sum != h->dsum || h->now_count != h->dcount))
			restate_header(h, NULL, restate);
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Line overflow: the header rows others wrote since the group's snapshot,
 * among the headers it read (the Bloom filter's, maybe a few more), with
 * other facts now than then.  True: restate the whole attachment.
 */
static bool
check_line_overflow(RaceGroup *g, Attachment *att)
{
	char	   *sql = psprintf("SELECT h.%s, h.xmin FROM %s h"
							   " WHERE pg_catalog.age(h.xmin) OPERATOR(pg_catalog.<=) pg_catalog.age($1)",
							   quote_identifier(att->header_match_column),
							   mapping_table_ref(att->header, att->header_name));
	Oid			argtype = XIDOID;
	Datum		arg = TransactionIdGetDatum(g->line_snapshot->xmin);
	Datum	   *keys;
	int			n = 0;
	uint64		r;
	HTAB	   *then,
			   *now;
	int			i;
	MemoryContext cxt = CurrentMemoryContext;

	PushActiveSnapshot(GetLatestSnapshot());
	loyalty_spi_check(SPI_execute_with_args(sql, 1, &argtype, &arg, NULL, true, 0), SPI_OK_SELECT,
					  "read the invoice headers written since");
	PopActiveSnapshot();
	MemoryContextSwitchTo(cxt);
	keys = palloc(sizeof(Datum) * (SPI_processed + 1));
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull,
					xnull;
		Datum		k = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);
		TransactionId xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[r],
																 SPI_tuptable->tupdesc, 2, &xnull));

		if (!isnull && !TransactionIdIsCurrentTransactionId(xmin) && bloom_has(g, key_hash(g, k)))
			keys[n++] = datumCopy(k, g->keytype->typbyval, g->keytype->typlen);
	}
	SPI_freetuptable(SPI_tuptable);
	if (n == 0)
		return false;
	then = read_headers(g, att, keys, n, g->line_snapshot);
	now = read_headers(g, att, keys, n, GetLatestSnapshot());
	for (i = 0; i < n; i++)
	{
		KeyMapEntry *a = keymap_find(then, g->keytype, keys[i]);
		KeyMapEntry *b = keymap_find(now, g->keytype, keys[i]);

		if (a == NULL || b == NULL || !header_facts_equal(a->value, b->value))
			return true;
	}
	return false;
}

/*
 * Is the attachment still there, with both its tables?  The transaction
 * itself may have detached it, dropped a table or the extension after
 * writing: then there is nothing left to correct.  Read as the owner.
 */
static bool
still_attached(RaceGroup *g)
{
	Oid			argtype = INT4OID;
	Datum		arg = Int32GetDatum(g->attachment_id);
	bool		isnull;

	reconcile_owner_query(psprintf("SELECT EXISTS (SELECT FROM %s x"
								   " WHERE x.attachment_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL"
								   " AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source::pg_catalog.oid)"
								   " AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.header::pg_catalog.oid))",
								   loyalty_table("attachment")),
						  1, &argtype, &arg, NULL, true);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* One group's checks and restatement, as its role. */
static void
check_group(RaceGroup *g)
{
	Oid			save_user;
	int			save_sec;
	Attachment *att;
	Restatement restate = {NIL, DATEVAL_NOEND};
	bool		all = g->header_overflow;
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "loyalty header race check",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(g->role, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	/* on a Citus worker: the shards co-located with the one they fired on */
	loyalty_shard_resume(g->shard);
	att = mapping_get(g->attachment_id);
	if (!all)
	{
		check_lines(g, att, &restate);
		check_header_lines(g, att, &restate);
		if (g->line_overflow)
			all = check_line_overflow(g, att);
	}
	if (all)
		reconcile_restate(g->attachment_id, NULL, 0, DATEVAL_NOBEGIN, RACE_WHAT);
	else if (restate.accounts != NIL)
	{
		char	  **accounts = palloc(sizeof(char *) * list_length(restate.accounts));
		ListCell   *lc;
		int			n = 0;

		foreach(lc, restate.accounts)
			accounts[n++] = strVal(lfirst(lc));
		reconcile_restate(g->attachment_id, accounts, n, restate.since, RACE_WHAT);
	}
	loyalty_shard_leave();
	SetUserIdAndSecContext(save_user, save_sec);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

static void
race_error_context(void *arg)
{
	errcontext("loyalty's check, at commit, of invoice headers changed by concurrent transactions");
}

/* The records are done with: their snapshots go (the memory goes with the transaction). */
static void
race_forget(void)
{
	ListCell   *lc;

	foreach(lc, race_groups)
	{
		RaceGroup  *g = lfirst(lc);

		if (g->line_snapshot != NULL)
			UnregisterSnapshotFromOwner(g->line_snapshot, TopTransactionResourceOwner);
		g->line_snapshot = NULL;
	}
	race_groups = NIL;
}

/*
 * At PRE_COMMIT or PRE_PREPARE.  Nothing it runs records again (the
 * restatement writes only loyalty's tables, and race_checking stops the
 * recording anyway); an error aborts the transaction, whose postings go
 * with it.
 */
static void
race_check(void)
{
	ErrorContextCallback errcb;
	ListCell   *lc;
	List	   *need = NIL;

	race_checking = true;
	errcb.callback = race_error_context;
	errcb.arg = NULL;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	take_locks();
	PushActiveSnapshot(GetLatestSnapshot());
	foreach(lc, race_groups)
		if (fast_pass(lfirst(lc), GetActiveSnapshot()))
			need = lappend(need, lfirst(lc));
	PopActiveSnapshot();
	/* the extension dropped in this very transaction: nothing left to correct */
	if (need != NIL && OidIsValid(get_extension_oid("loyalty", true)))
	{
		SPI_connect();
		CommandCounterIncrement();
		/* for what reads under the active snapshot: the latest, as every check here */
		PushActiveSnapshot(GetLatestSnapshot());
		foreach(lc, need)
			if (still_attached(lfirst(lc)))
				check_group(lfirst(lc));
		PopActiveSnapshot();
		SPI_finish();
	}
	race_forget();
	error_context_stack = errcb.previous;
}

static void
race_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (race_groups != NIL && !race_checking)
				race_check();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* the memory goes with TopTransactionContext, a snapshot with its owner */
			race_groups = NIL;
			race_cxt = NULL;
			race_checking = false;
			break;
		default:
			break;
	}
}
