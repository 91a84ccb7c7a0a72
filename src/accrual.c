/*
 * accrual.c — the accrual triggers: the hot path of every ERP insert, update,
 * delete and bulk load.
 *
 * Per statement: read the transition rows in C (twice: once for the keys,
 * once for the points), resolve accounts and header rows with one query
 * each, sum per (account, document month) in memory, and hand the sums to
 * ledger.c.  No SQL runs per row, and a hot account costs a hash lookup per
 * row, not a lock or a ledger row.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/md5.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "accounts.h"
#include "keymap.h"
#include "accrual.h"
#include "header_race.h"
#include "keytype.h"
#include "ledger.h"
#include "product.h"
#include "rebate_lines.h"

/* ---- string-keyed hash tables ---- */

typedef struct StrEntry
{
	const char *key;
	void	   *value;
	bool		in_new;			/* seen in an added row */
	bool		bad_key;		/* accounts: a key that is never looked up or written */
	bool		refreshed;		/* accounts: read again in this statement */
	bool		resolved_new;	/* accounts: resolved as an added row's (enrolled) */
	MonthDelta *months;			/* accounts: sums per document month, sorted */
	int			nmonths;
	int			mcap;
} StrEntry;

static uint32
str_hash(const void *key, Size keysize)
{
	const char *s = *(const char *const *) key;

	return hash_bytes((const unsigned char *) s, strlen(s));
}

static int
str_match(const void *a, const void *b, Size keysize)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static HTAB *
str_table(const char *name, MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(StrEntry);
	ctl.hash = str_hash;
	ctl.match = str_match;
	ctl.hcxt = cxt;
	return hash_create(name, 256, &ctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

static StrEntry *
str_enter(HTAB *h, const char *key, MemoryContext cxt, bool *found)
{
	StrEntry   *e = hash_search(h, &key, HASH_ENTER, found);

	if (!*found)
	{
		e->key = MemoryContextStrdup(cxt, key);
		e->value = NULL;
		e->in_new = false;
		e->bad_key = false;
		e->refreshed = false;
		e->resolved_new = false;
		e->months = NULL;
		e->nmonths = e->mcap = 0;
	}
	return e;
}

static StrEntry *
str_find(HTAB *h, const char *key)
{
	return hash_search(h, &key, HASH_FIND, NULL);
}

HTAB *
accrual_header_map(MemoryContext cxt)
{
	return keymap_create("loyalty header facts", cxt);
}

/* ---- (account, month) sums ---- */

static int
entry_cmp(const void *a, const void *b)
{
	return strcmp((*(StrEntry *const *) a)->key, (*(StrEntry *const *) b)->key);
}

/*
 * The sums of one account's month.  An account's documents span few months,
 * so a short sorted array per account beats a hash table keyed by (account,
 * month): one account lookup per row, then a scan of a handful of months.
 */
static MonthDelta *
account_month(StrEntry *acct, DateADT month, Numeric zero, MemoryContext cxt)
{
	int			i;

	for (i = acct->nmonths - 1; i >= 0; i--)
	{
		if (acct->months[i].month == month)
			return &acct->months[i];
		if (acct->months[i].month < month)
			break;
	}
	/* insert after i */
	if (acct->nmonths == acct->mcap)
	{
		acct->mcap = acct->mcap ? acct->mcap * 2 : 4;
		acct->months = acct->months
			? repalloc(acct->months, sizeof(MonthDelta) * acct->mcap)
			: MemoryContextAlloc(cxt, sizeof(MonthDelta) * acct->mcap);
	}
	i++;
	memmove(&acct->months[i + 1], &acct->months[i], sizeof(MonthDelta) * (acct->nmonths - i));
	acct->nmonths++;
	memset(&acct->months[i], 0, sizeof(MonthDelta));
	acct->months[i].account = (char *) acct->key;
	acct->months[i].month = month;
	acct->months[i].qual_new = acct->months[i].qual_old = zero;
	return &acct->months[i];
}

/* ---- header rows deleted in this transaction, per attachment ---- */

typedef struct StashEntry
{
	int32		attachment_id;
	HTAB	   *headers;		/* header key -> HeaderFacts */
} StashEntry;

static HTAB *header_stash = NULL;

static void
stash_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		header_stash = NULL;	/* its memory goes with TopTransactionContext */
}

static HTAB *
stash_of(Attachment *att, bool create)
{
	StashEntry *se;
	bool		found;

	if (header_stash == NULL)
	{
		HASHCTL		ctl;

		if (!create)
			return NULL;
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int32);
		ctl.entrysize = sizeof(StashEntry);
		ctl.hcxt = TopTransactionContext;
		header_stash = hash_create("loyalty deleted headers", 8, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	se = hash_search(header_stash, &att->id, create ? HASH_ENTER : HASH_FIND, &found);
	if (se == NULL)
		return NULL;
	if (!found)
		se->headers = keymap_create("loyalty deleted headers of an attachment", TopTransactionContext);
	return se->headers;
}

const HeaderFacts *
accrual_stashed_header(Attachment *att, Datum key)
{
	HTAB	   *map = stash_of(att, false);
	KeyMapEntry *e = map ? keymap_find(map, att->header_key, key) : NULL;

	return e ? (const HeaderFacts *) e->value : NULL;
}

/* ---- the batch ---- */

/*
 * A statement's rows are read in chunks of CHUNK_ROWS: each chunk is mapped,
 * its accounts, headers and products looked up (one query each, for what
 * the chunk needs and the caches do not hold), and its rows priced.  The
 * sums of up to BATCH_ACCOUNTS accounts are then posted, and their memory
 * freed, before the next chunk: a statement of any size takes bounded
 * memory, and ledger_post() may see an account in several batches.
 */
#define CHUNK_ROWS 8192
#define BATCH_ACCOUNTS 8192

typedef struct Batch
{
	Attachment *att;
	Program    *prog;
	const char *reason;
	MemoryContext cxt;			/* lives for the statement */
	MemoryContext batchcxt;		/* the accounts' sums: reset after posting */
	MemoryContext chunkcxt;		/* one chunk of rows: reset per chunk */
	MemoryContext rowcxt;		/* reset per row */
	ExprContext *econtext;
	TupleTableSlot *store_slot; /* minimal tuples from a transition table */
	TupleTableSlot *heap_slot;	/* heap tuples from a query */
	TupleTableSlot *header_slot;
	/* per batch, in batchcxt */
	HTAB	   *accounts;		/* key -> AccountInfo, and the account's month sums */
	StrEntry   *last_noted;		/* the account of the previous row */
	HTAB	   *unenrolled;		/* key -> UnenrolledSum */
	List	   *rejects;
	char	  **settled;		/* keys of removed rows whose dead letters are settled */
	int			nsettled;
	int			settled_cap;
	const RebateLines *rebate_lines;	/* NULL: no agreement scopes a product line */
	HTAB	   *line_sums;		/* the qualifying spend per product line, for them */
	/* per chunk, in chunkcxt */
	HTAB	   *headers;		/* header key -> HeaderFacts (looked up), a keymap */
	HTAB	   *products;		/* product key -> ProductFacts, a keymap */
	char	  **settled_keys;	/* by row number of the chunk's removed rows */
	Numeric		zero;
	DateADT		today;			/* in the program's time zone */
	int			customer_attnum;	/* on a Citus shard, with a header: the lines' distribution column */
	FmgrInfo	customer_out;	/* ... and its output function */
} Batch;

typedef struct Reject
{
	char	   *row_key;
	char	   *account;
	char	   *reason;
	char	   *row_json;
} Reject;

typedef struct UnenrolledSum
{
	int64		rows;
	Numeric		amount;
} UnenrolledSum;

/*
 * The identities of lines a header change moves (lines_sql's columns 2 to
 * 5), for header_race.c to tell at commit whether others changed them.
 */
static void
report_moved_lines(Attachment *att, SPITupleTable *tuptable, uint64 n)
{
	uint64		i;

	for (i = 0; i < n; i++)
	{
		HeapTuple	row = tuptable->vals[i];
		bool		isnull;
		Datum		key = SPI_getbinval(row, tuptable->tupdesc, 5, &isnull);

		if (isnull)
			continue;
		header_race_line_moved(att, key,
							   DatumGetObjectId(SPI_getbinval(row, tuptable->tupdesc, 2, &isnull)),
							   (ItemPointer) DatumGetPointer(SPI_getbinval(row, tuptable->tupdesc, 3, &isnull)),
							   DatumGetTransactionId(SPI_getbinval(row, tuptable->tupdesc, 4, &isnull)));
	}
}

/*
 * Reads the next chunk of a row set into chunkcxt; returns how many rows.
 * Transition table rows are copied (the store reuses its buffer once it is
 * on disk); a cursor's rows stay in its SPI result, freed with the chunk.
 */
static int
read_chunk(Batch *b, RowSet *rs, RowSet *prev)
{
	rs->nrows = 0;
	rs->mrows = NULL;
	rs->hrows = NULL;
	rs->tuptable = NULL;
	if (rs->same_rows)
	{
		rs->mrows = prev->mrows;
		rs->hrows = prev->hrows;
		rs->nrows = prev->nrows;
	}
	else if (rs->store != NULL)
	{
		rs->mrows = palloc(sizeof(MinimalTuple) * CHUNK_ROWS);
		while (rs->nrows < CHUNK_ROWS &&
			   tuplestore_gettupleslot(rs->store, true, false, b->store_slot))
			rs->mrows[rs->nrows++] = ExecCopySlotMinimalTuple(b->store_slot);

		/*
		 * A transition table that spilled to disk hands out tuples the slot
		 * owns, allocated in the chunk's context: the slot must let go of
		 * the last one before that context is reset.
		 */
		ExecClearTuple(b->store_slot);
	}
	else if (rs->portal != NULL)
	{
		uint64		i;

		SPI_cursor_fetch(rs->portal, true, CHUNK_ROWS);
		MemoryContextSwitchTo(b->chunkcxt); /* SPI returns in its own context */
		rs->tuptable = SPI_tuptable;
		rs->nrows = (int) SPI_processed;
		rs->hrows = palloc(sizeof(HeapTuple) * (rs->nrows + 1));
		if (rs->report_moves)
			report_moved_lines(b->att, rs->tuptable, SPI_processed);
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			HeapTupleHeader th = DatumGetHeapTupleHeader(SPI_getbinval(rs->tuptable->vals[i],
																	   rs->tuptable->tupdesc, 1, &isnull));
			HeapTuple	t = palloc(sizeof(HeapTupleData));

			t->t_len = HeapTupleHeaderGetDatumLength(th);
			ItemPointerSetInvalid(&t->t_self);
			t->t_tableOid = b->att->source;
			t->t_data = th;
			rs->hrows[i] = t;
		}
	}
	else
	{
		rs->nrows = Min(CHUNK_ROWS, rs->ntuples - rs->next);
		rs->hrows = rs->tuples + rs->next;
		rs->next += rs->nrows;
	}
	return rs->nrows;
}

static void
free_chunk(RowSet *rs)
{
	if (rs->tuptable != NULL)
		SPI_freetuptable(rs->tuptable);
	rs->tuptable = NULL;
}

static TupleTableSlot *
chunk_row(Batch *b, RowSet *rs, int i)
{
	if (rs->mrows != NULL)
		return ExecStoreMinimalTuple(rs->mrows[i], b->store_slot, false);
	return ExecStoreHeapTuple(rs->hrows[i], b->heap_slot, false);
}

static StrEntry *
note_account(Batch *b, const char *account, bool in_new)
{
	bool		found;

	if (account == NULL)
		return NULL;
	if (b->last_noted == NULL || strcmp(b->last_noted->key, account) != 0)
	{
		b->last_noted = str_enter(b->accounts, account, b->batchcxt, &found);
		/* empty or too long to index: its rows are rejected (rules.c) */
		if (!found)
			b->last_noted->bad_key = rules_account_key_problem(account) != NULL;
	}
	b->last_noted->in_new |= in_new;
	return b->last_noted;
}

/* The header facts a row set brings along for the row's header key. */
static const HeaderFacts *
given_header(Batch *b, RowSet *rs, TupleTableSlot *slot)
{
	bool		isnull;
	Datum		key = mapping_header_key(b->att, b->econtext, slot, &isnull);
	KeyMapEntry *e = isnull ? NULL : keymap_find(rs->header_facts, b->att->header_key, key);

	return e ? (const HeaderFacts *) e->value : NULL;
}

/*
 * On a Citus shard, lines and header are distributed by customer: a line's
 * header is the row of its header key and of the line's own customer, as
 * the facts query joins them (loyalty._facts_sql), and as the shards hold
 * them.  The lines' distribution column, when the trigger fires on a shard.
 */
static void
find_customer_column(Batch *b, TupleDesc desc)
{
	const char *column;
	Oid			typoutput;
	bool		varlena;

	if (loyalty_shard_key() == 0 || (column = loyalty_colocated_column(b->att->source)) == NULL ||
		(b->customer_attnum = SPI_fnumber(desc, column)) <= 0)
	{
		b->customer_attnum = 0;
		return;
	}
	getTypeOutputInfo(TupleDescAttr(desc, b->customer_attnum - 1)->atttypid, &typoutput, &varlena);
	fmgr_info_cxt(typoutput, &b->customer_out, b->cxt);
}

/* The header facts hf, unless the line's customer is not the header's (on a shard). */
static const HeaderFacts *
same_customer(Batch *b, TupleTableSlot *slot, const HeaderFacts *hf)
{
	bool		isnull;
	Datum		customer;

	if (hf == NULL || b->customer_attnum == 0)
		return hf;
	customer = slot_getattr(slot, b->customer_attnum, &isnull);
	if (isnull || hf->account == NULL ||
		strcmp(OutputFunctionCall(&b->customer_out, customer), hf->account) != 0)
		return NULL;
	return hf;
}

/* Pass 1: which accounts and header rows does the chunk touch? */
static void
collect_keys(Batch *b, RowSet *sets, int nsets)
{
	Attachment *att = b->att;
	int			s;

	for (s = 0; s < nsets; s++)
	{
		RowSet	   *rs = &sets[s];
		int			rowno;

		/* remember each row's account, so that the second pass need not map it again */
		rs->accounts = att->has_header ? NULL : palloc(sizeof(StrEntry *) * (rs->nrows + 1));
		for (rowno = 0; rowno < rs->nrows; rowno++)
		{
			TupleTableSlot *slot = chunk_row(b, rs, rowno);
			MemoryContext old = MemoryContextSwitchTo(b->rowcxt);

			ResetExprContext(b->econtext);
			if (att->has_product)
			{
				bool		isnull,
							found;
				Datum		key;

				b->econtext->ecxt_scantuple = slot;
				key = ExecEvalExprSwitchContext(att->src[F_PRODUCT_KEY], b->econtext, &isnull);
				if (!isnull)
					keymap_enter(b->products, att->product_key, key, b->chunkcxt, &found);
			}
			if (att->has_header)
			{
				if (rs->header_facts == NULL)
				{
					bool		isnull,
								found;
					Datum		key = mapping_header_key(att, b->econtext, slot, &isnull);

					if (!isnull)
						keymap_enter(b->headers, att->header_key, key, b->chunkcxt, &found)->in_new |= rs->sign > 0;
				}
				else
				{
					const HeaderFacts *hf = given_header(b, rs, slot);

					if (hf != NULL)
						note_account(b, hf->account, rs->sign > 0);
				}
			}
			else
			{
				bool		isnull;
				Datum		d;

				b->econtext->ecxt_scantuple = slot;
				d = ExecEvalExprSwitchContext(att->src[F_ACCOUNT], b->econtext, &isnull);
				rs->accounts[rowno] = isnull ? NULL : note_account(b, TextDatumGetCString(d), rs->sign > 0);
			}
			MemoryContextSwitchTo(old);
			MemoryContextReset(b->rowcxt);
		}
	}
}

/*
 * Prepared as the role running the statement, like everything that reads
 * the ERP's own tables: its privileges and row-level security apply, and
 * nothing of the key type runs with the extension owner's rights.
 */
static SPIPlanPtr
header_plan(Attachment *att)
{
	if (loyalty_plan_stale(&att->header_plan))
	{
		Oid			argtype = get_array_type(att->header_key_type);
		char	   *sql = psprintf("SELECT u.k, h, h.xmin, h.tableoid, h.ctid FROM pg_catalog.unnest($1) AS u(k) JOIN %s h"
								   " ON h.%s %s u.k",
								   mapping_table_ref(att->header, att->header_name),
								   quote_identifier(att->header_match_column),
								   keytype_equality_operator(att->header_key_type));
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, 1, &argtype, CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "could not prepare the header look-up of %s: %s", att->source_name,
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		att->header_plan.plan = plan;
	}
	return att->header_plan.plan;
}

/*
 * A header row read (columns 3 to 5 of header_plan: its version), unless
 * this transaction wrote it: nobody else can change it before we commit.
 */
static void
note_header_version(Attachment *att, HeapTuple row, TupleDesc desc, Datum key, const HeaderFacts *hf)
{
	bool		isnull;
	TransactionId xmin = DatumGetTransactionId(SPI_getbinval(row, desc, 3, &isnull));

	if (TransactionIdIsCurrentTransactionId(xmin))
		return;
	header_race_line_read(att, key, hf, DatumGetObjectId(SPI_getbinval(row, desc, 4, &isnull)),
						  (ItemPointer) DatumGetPointer(SPI_getbinval(row, desc, 5, &isnull)), xmin);
}

/* One query for every header row the statement's lines point at. */
static void
lookup_headers(Batch *b)
{
	Attachment *att = b->att;
	HASH_SEQ_STATUS seq;
	KeyMapEntry *e;
	Datum		arg;
	uint64		r,
				nresult;
	SPITupleTable *result;

	if (hash_get_num_entries(b->headers) == 0)
		return;
	arg = keymap_key_array(b->headers, att->header_key);
	/* a fresh snapshot, for the same reason as the account look-up */
	loyalty_spi_check(SPI_execute_plan(header_plan(att), &arg, NULL, false, 0), SPI_OK_SELECT,
					  "read the header rows");
	result = SPI_tuptable;
	nresult = SPI_processed;

	for (r = 0; r < nresult; r++)
	{
		bool		isnull;
		Datum		k = SPI_getbinval(result->vals[r], result->tupdesc, 1, &isnull);
		Datum		d = SPI_getbinval(result->vals[r], result->tupdesc, 2, &isnull);
		HeapTupleHeader th = DatumGetHeapTupleHeader(d);
		HeapTupleData tmp;
		HeaderFacts hf;
		bool		keynull;
		MemoryContext old = MemoryContextSwitchTo(b->chunkcxt);

		tmp.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&tmp.t_self);
		tmp.t_tableOid = InvalidOid;
		tmp.t_data = th;
		ExecStoreHeapTuple(&tmp, b->header_slot, false);
		ResetExprContext(b->econtext);
		(void) mapping_header_facts(att, b->econtext, b->header_slot, &hf, &keynull);
		if ((e = keymap_find(b->headers, att->header_key, k)) != NULL)
		{
			HeaderFacts *copy = palloc(sizeof(HeaderFacts));

			*copy = hf;
			e->value = copy;
		}
		/* another transaction's row may change before we commit: header_race.c */
		note_header_version(att, result->vals[r], result->tupdesc, k, &hf);
		ExecClearTuple(b->header_slot);
		MemoryContextSwitchTo(old);
	}
	SPI_freetuptable(result);

	/* headers deleted earlier in this transaction (e.g. ON DELETE CASCADE) */
	hash_seq_init(&seq, b->headers);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->value == NULL)
			e->value = (void *) accrual_stashed_header(att, e->key.value);
}

static void
note_header_accounts(Batch *b, HTAB *map)
{
	HASH_SEQ_STATUS seq;
	KeyMapEntry *e;

	hash_seq_init(&seq, map);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->value != NULL)
			note_account(b, ((HeaderFacts *) e->value)->account, e->in_new);
}

static void
resolve_accounts(Batch *b)
{
	long		n = hash_get_num_entries(b->accounts);
	char	  **enroll = palloc(sizeof(char *) * (n + 1));
	char	  **lookup = palloc(sizeof(char *) * (n + 1));
	StrEntry  **ee = palloc(sizeof(StrEntry *) * (n + 1));
	StrEntry  **le = palloc(sizeof(StrEntry *) * (n + 1));
	int			ne = 0,
				nl = 0,
				i;
	HASH_SEQ_STATUS seq;
	StrEntry   *e;
	AccountInfo **info;
	MemoryContext old;

	hash_seq_init(&seq, b->accounts);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->bad_key)
			continue;
		/* only added rows enrol; a removed row of an unknown account earned nothing */
		if (e->in_new && !e->resolved_new)
		{
			ee[ne] = e;
			enroll[ne++] = (char *) e->key;
		}
		else if (e->value == NULL)
		{
			le[nl] = e;
			lookup[nl++] = (char *) e->key;
		}
	}
	/* what an unknown account resolves to is used by the batch's later chunks */
	old = MemoryContextSwitchTo(b->batchcxt);
	info = accounts_resolve(b->prog, enroll, ne, true);
	for (i = 0; i < ne; i++)
	{
		ee[i]->value = info[i];
		ee[i]->resolved_new = true;
	}
	info = accounts_resolve(b->prog, lookup, nl, false);
	for (i = 0; i < nl; i++)
		le[i]->value = info[i];
	MemoryContextSwitchTo(old);
}

static Numeric
add_into(Batch *b, Numeric sum, Numeric x)
{
	MemoryContext old = MemoryContextSwitchTo(b->batchcxt);
	Numeric		r = numeric_add_opt_error(sum, x, NULL);

	MemoryContextSwitchTo(old);
	if (sum != b->zero)
		pfree(sum);
	return r;
}

/*
 * A row or account key as loyalty.rejected_event stores it.  Both columns
 * are indexed (a btree entry holds about 2.7 kB), so a key longer than
 * LOYALTY_MAX_KEY_BYTES is stored as its first bytes and the MD5 of the
 * whole: never an error from our own INSERT, and the same text again when
 * the row is settled.
 */
static char *
stored_row_key(char *key)
{
	size_t		len;
	char		md5[33];
	const char *errstr = NULL;

	if (key == NULL || (len = strlen(key)) <= LOYALTY_MAX_KEY_BYTES)
		return key;
	if (!pg_md5_hash(key, len, md5, &errstr))
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not compute the MD5 of a row key: %s", errstr)));
	return psprintf("%.*s... (md5 %s)", pg_mbcliplen(key, (int) len, LOYALTY_MAX_KEY_BYTES - 64), key, md5);
}

/*
 * The account key a dead letter is filed under: the row's, or '' when it
 * gave none, since the column leads the table's key and cannot be NULL (no
 * account has the key '', so it names none).  On Citus the letter goes to
 * the shard of the row's own distribution column, co-located with the row:
 * that is its account, or for a line without its header the customer the
 * line is distributed by (a shard holds no key '', nor can a number).
 */
static char *
stored_account_key(Batch *b, TupleTableSlot *slot, const char *account)
{
	bool		isnull;
	Datum		customer;

	if (account != NULL)
		return stored_row_key((char *) account);
	if (b->customer_attnum == 0)
		return "";
	customer = slot_getattr(slot, b->customer_attnum, &isnull);
	return isnull ? "" : stored_row_key(OutputFunctionCall(&b->customer_out, customer));
}

static void
add_reject(Batch *b, TupleTableSlot *slot, const RowFacts *f, const RowResult *r, TupleDesc desc)
{
	Reject	   *rj;
	char	   *row_key = stored_row_key(mapping_row_key(b->att, b->econtext, slot));
	Datum		row = ExecFetchSlotHeapTupleDatum(slot);
	char	   *json = TextDatumGetCString(DirectFunctionCall1(row_to_json, row));
	MemoryContext old = MemoryContextSwitchTo(b->batchcxt);

	if (b->prog->strict)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("row %s of %s cannot be accrued by loyalty program \"%s\"",
						row_key ? row_key : "(no key)", b->att->source_name, b->prog->name),
				 errdetail("The row's %s.", r->reason),
				 errhint("Fix the row: the program is strict, so a row it cannot accrue fails the statement instead of waiting in loyalty.rejected_event.")));
	rj = palloc(sizeof(Reject));
	rj->row_key = row_key ? pstrdup(row_key) : NULL;
	rj->account = pstrdup(stored_account_key(b, slot, f->account));
	rj->reason = pstrdup(r->reason);
	rj->row_json = pstrdup(json);
	b->rejects = lappend(b->rejects, rj);
	MemoryContextSwitchTo(old);
}

/*
 * Is the new version of an updated row parked as its old version was: for
 * the same reason and under the same row key?  Then its dead letter stays
 * as it is.  A changed key settles the old letter and parks a new one.
 */
static bool
still_parked(Batch *b, Attachment *att, TupleTableSlot *slot, char **old_reasons, int64 nold,
			 int64 rowno, const char *reason)
{
	char	   *key;

	if (old_reasons == NULL || rowno >= nold || old_reasons[rowno] == NULL ||
		strcmp(old_reasons[rowno], reason) != 0)
		return false;
	key = mapping_row_key(att, b->econtext, slot);
	return key != NULL && b->settled_keys[rowno] != NULL && strcmp(key, b->settled_keys[rowno]) == 0;
}

/* The product line of a row: its product's, in force on the row's date. */
static char *
row_product_line(Batch *b, TupleTableSlot *slot, const RowFacts *f)
{
	bool		isnull;
	Datum		key;
	KeyMapEntry *e;

	b->econtext->ecxt_scantuple = slot;
	key = ExecEvalExprSwitchContext(b->att->src[F_PRODUCT_KEY], b->econtext, &isnull);
	if (isnull || (e = keymap_find(b->products, b->att->product_key, key)) == NULL)
		return NULL;
	return product_line_on((ProductFacts *) e->value, f->has_date, f->date);
}

/* Pass 2: the points of every row of the chunk, summed per (account, month). */
static void
sum_points(Batch *b, RowSet *sets, int nsets, TupleDesc desc)
{
	Attachment *att = b->att;
	int			s;

	/*
	 * The old and new rows of an UPDATE come in the same order, chunk by
	 * chunk.  A row that was rejected before and still is, for the same
	 * reason, is not parked again (a header update re-reads every line of
	 * the document).
	 */
	char	  **old_reasons = NULL;
	int64		nold = 0;

	b->settled_keys = NULL;
	for (s = 0; s < nsets; s++)
	{
		RowSet	   *rs = &sets[s];
		HTAB	   *hmap = rs->header_facts ? rs->header_facts : b->headers;
		int			rowno;
		StrEntry   *last = NULL;

		for (rowno = 0; rowno < rs->nrows; rowno++)
		{
			TupleTableSlot *slot = chunk_row(b, rs, rowno);
			MemoryContext old = MemoryContextSwitchTo(b->rowcxt);
			RowFacts	f;
			RowResult	r;
			AccountInfo *info = NULL;
			StrEntry   *acct = NULL;

			ResetExprContext(b->econtext);
			mapping_source_facts(att, b->econtext, slot, &f, rs->accounts == NULL);
			if (rs->accounts)
			{
				/* mapped by the first pass */
				acct = rs->accounts[rowno];
				f.account = acct ? (char *) acct->key : NULL;
			}
			else if (att->has_header)
			{
				bool		isnull;
				Datum		key = mapping_header_key(att, b->econtext, slot, &isnull);
				KeyMapEntry *e = isnull ? NULL : keymap_find(hmap, att->header_key, key);

				mapping_apply_header(att, same_customer(b, slot, e ? (HeaderFacts *) e->value : NULL), &f);
			}
			if (f.account != NULL && acct == NULL)
			{
				/* bulk loads come in runs of one customer's lines */
				if (last == NULL || strcmp(last->key, f.account) != 0)
					last = str_find(b->accounts, f.account);
				acct = last;
			}
			if (att->has_product)
				f.product_line = row_product_line(b, slot, &f);
			info = acct ? (AccountInfo *) acct->value : NULL;
			if (info && info->enrolled && f.has_date && f.date > b->today && !acct->refreshed)
			{
				/* a document dated after today: another session's upgrade may count for it */
				acct->value = info = accounts_refresh(b->prog, acct->key);
				acct->refreshed = true;
				MemoryContextSwitchTo(b->rowcxt);	/* SPI left us in its own */
			}
			rules_row_points(b->prog, info, &f, &r);

			switch (r.status)
			{
				case ROW_EARNS:
				case ROW_BELOW_MINIMUM:
				case ROW_CONTROL:
					{
						MonthDelta *d = account_month(acct, r.month, b->zero, b->batchcxt);

						MemoryContextSwitchTo(b->batchcxt); /* sums outlive the row */
						if (rs->sign > 0)
						{
							d->max_date = Max(d->max_date, f.date);
							d->points_new = ledger_add_points(d->points_new, r.points, b->prog, acct->key);
							d->bonus_new = ledger_add_points(d->bonus_new, r.bonus, b->prog, acct->key);
							fixed_sum_add(&d->qual_new_sum, r.qualifying, 1);
							d->rows_new++;
						}
						else
						{
							d->points_old = ledger_add_points(d->points_old, r.points, b->prog, acct->key);
							d->bonus_old = ledger_add_points(d->bonus_old, r.bonus, b->prog, acct->key);
							fixed_sum_add(&d->qual_old_sum, r.qualifying, 1);
							d->rows_old++;
						}
						if (b->rebate_lines)
							rebate_lines_add(b->line_sums, b->rebate_lines, acct->key, r.month,
											 f.product_line, r.qualifying, rs->sign);
					}
					break;
				case ROW_NOT_ENROLLED:
					if (!b->prog->auto_enroll)
					{
						bool		found;
						StrEntry   *e = str_enter(b->unenrolled, f.account, b->batchcxt, &found);
						UnenrolledSum *u = e->value;

						if (!found)
						{
							u = MemoryContextAllocZero(b->batchcxt, sizeof(UnenrolledSum));
							u->amount = b->zero;
							e->value = u;
						}
						u->rows += rs->sign;
						u->amount = add_into(b, u->amount, rs->sign > 0 ? r.basis :
											 DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(r.basis))));
					}
					break;
				case ROW_REJECTED:
					if (rs->sign < 0)
					{
						/* a removed row that was parked: its dead letter is settled ... */
						if (old_reasons == NULL)
						{
							old_reasons = MemoryContextAllocZero(b->chunkcxt, sizeof(char *) * (rs->nrows + 1));
							b->settled_keys = MemoryContextAllocZero(b->chunkcxt, sizeof(char *) * (rs->nrows + 1));
						}
						old_reasons[rowno] = MemoryContextStrdup(b->chunkcxt, r.reason);
						b->settled_keys[rowno] = stored_row_key(mapping_row_key(att, b->econtext, slot));
						if (b->settled_keys[rowno])
							b->settled_keys[rowno] = MemoryContextStrdup(b->chunkcxt, b->settled_keys[rowno]);
					}
					else if (still_parked(b, att, slot, old_reasons, nold, rowno, r.reason))
						b->settled_keys[rowno] = NULL;	/* ... unless its new version is parked for the same reason */
					else
						add_reject(b, slot, &f, &r, desc);
					break;
			}
			MemoryContextSwitchTo(old);
			MemoryContextReset(b->rowcxt);
		}
		if (rs->sign < 0)
			nold = rs->nrows;
	}

	/* the chunk's settled letters join the batch's */
	if (b->settled_keys != NULL)
	{
		int64		i;

		for (i = 0; i < nold; i++)
		{
			if (b->settled_keys[i] == NULL)
				continue;
			if (b->nsettled == b->settled_cap)
			{
				b->settled_cap = b->settled_cap ? 2 * b->settled_cap : 64;
				b->settled = b->settled
					? repalloc(b->settled, sizeof(char *) * b->settled_cap)
					: MemoryContextAlloc(b->batchcxt, sizeof(char *) * b->settled_cap);
			}
			b->settled[b->nsettled++] = MemoryContextStrdup(b->batchcxt, b->settled_keys[i]);
		}
	}
}

/*
 * The batch's dead letters, each filed under its account and numbered
 * within this transaction: no sequence, nothing another transaction
 * parking rows of the same account waits for.
 */
static void
write_rejects(Batch *b)
{
	static ShardPlan plan;
	int			n = list_length(b->rejects);
	char	  **k,
			  **a,
			  **r,
			  **j;
	bool	   *kn;
	Datum		args[7];
	ListCell   *lc;
	int			i = 0;
	OwnerScope	scope;

	if (n == 0)
		return;
	if (loyalty_plan_stale(&plan))
	{
		Oid			t[7] = {INT4OID, INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT8OID};

		plan.plan = loyalty_prepare(
			psprintf("INSERT INTO %s (program_id, account_key, event_no, attachment_id, row_key, reason, row_data)"
					 " SELECT $1, u.a" KEY_CAST ", $7 OPERATOR(pg_catalog.+) u.i, $2, u.k, u.r, u.j::pg_catalog.jsonb"
					 " FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6))"
					 "      WITH ORDINALITY AS u(k, a, r, j, i)", loyalty_table("rejected_event")), 7, t);
	}
	k = palloc(sizeof(char *) * n);
	a = palloc(sizeof(char *) * n);
	r = palloc(sizeof(char *) * n);
	j = palloc(sizeof(char *) * n);
	kn = palloc(sizeof(bool) * n);
	foreach(lc, b->rejects)
	{
		Reject	   *rj = lfirst(lc);

		k[i] = rj->row_key;
		kn[i] = rj->row_key == NULL;
		a[i] = rj->account;
		r[i] = rj->reason;
		j[i] = rj->row_json;
		i++;
	}
	args[0] = Int32GetDatum(b->prog->id);
	args[1] = Int32GetDatum(b->att->id);
	args[2] = loyalty_text_array(k, kn, n);
	args[3] = loyalty_text_array(a, NULL, n);
	args[4] = loyalty_text_array(r, NULL, n);
	args[5] = loyalty_text_array(j, NULL, n);
	args[6] = Int64GetDatum(ledger_numbers(n) - 1);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_INSERT,
					  "write loyalty.rejected_event");
	loyalty_leave_owner(&scope);
}

/* Dead letters of rows deleted, or updated into rows that accrue, are settled. */
static void
settle_rejects(Batch *b)
{
	static ShardPlan plan;
	char	  **keys;
	int			n = 0;
	Datum		args[3];
	OwnerScope	scope;

	if (b->nsettled == 0)
		return;
	keys = b->settled;
	n = b->nsettled;
	if (loyalty_plan_stale(&plan))
	{
		Oid			t[3] = {INT4OID, INT4OID, TEXTARRAYOID};

		plan.plan = loyalty_prepare(
			psprintf("UPDATE %s SET resolved_at = pg_catalog.now()"
					 " WHERE program_id OPERATOR(pg_catalog.=) $1 AND attachment_id OPERATOR(pg_catalog.=) $2"
					 "   AND row_key OPERATOR(pg_catalog.=) ANY ($3) AND resolved_at IS NULL",
					 loyalty_table("rejected_event")), 3, t);
	}
	args[0] = Int32GetDatum(b->prog->id);
	args[1] = Int32GetDatum(b->att->id);
	args[2] = loyalty_text_array(keys, NULL, n);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_UPDATE,
					  "settle loyalty.rejected_event");
	loyalty_leave_owner(&scope);
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static void
write_unenrolled(Batch *b)
{
	static ShardPlan plan;
	long		n = hash_get_num_entries(b->unenrolled);
	char	  **k;
	int64	   *rows;
	Numeric    *amt;
	HASH_SEQ_STATUS seq;
	StrEntry   *e;
	int			i = 0;
	Datum		args[6];
	OwnerScope	scope;

	if (n == 0)
		return;
	if (loyalty_plan_stale(&plan))
	{
		Oid			t[6] = {INT4OID, INT4OID, TEXTARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8OID};

		/* appended, never updated: see loyalty.unenrolled_delta */
		plan.plan = loyalty_prepare(
			psprintf("INSERT INTO %s (program_id, attachment_id, delta_no, account_key, source_rows, amount)"
					 " SELECT $1, $2, $6 OPERATOR(pg_catalog.+) u.i, u.k" KEY_CAST ", u.r, u.a"
					 " FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))"
					 "      WITH ORDINALITY AS u(k, r, a, i)", loyalty_table("unenrolled_delta")), 6, t);
	}
	k = palloc(sizeof(char *) * n);
	hash_seq_init(&seq, b->unenrolled);
	while ((e = hash_seq_search(&seq)) != NULL)
		k[i++] = (char *) e->key;
	qsort(k, n, sizeof(char *), cmp_str);
	rows = palloc(sizeof(int64) * n);
	amt = palloc(sizeof(Numeric) * n);
	for (i = 0; i < n; i++)
	{
		UnenrolledSum *u = str_find(b->unenrolled, k[i])->value;

		rows[i] = u->rows;
		amt[i] = u->amount;
	}
	args[0] = Int32GetDatum(b->prog->id);
	args[1] = Int32GetDatum(b->att->id);
	args[2] = loyalty_text_array(k, NULL, n);
	args[3] = loyalty_int8_array(rows, n);
	args[4] = loyalty_numeric_array(amt, n);
	args[5] = Int64GetDatum(ledger_numbers((int) n) - 1);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_INSERT,
					  "write loyalty.unenrolled_activity");
	loyalty_leave_owner(&scope);
}

/* The batch's per-account state, empty, in a fresh batchcxt. */
static void
batch_start(Batch *b)
{
	MemoryContextReset(b->batchcxt);
	b->accounts = str_table("loyalty accounts", b->batchcxt);
	b->unenrolled = str_table("loyalty unenrolled", b->batchcxt);
	b->last_noted = NULL;
	b->rejects = NIL;
	b->settled = NULL;
	b->nsettled = b->settled_cap = 0;
	if (b->rebate_lines)
		b->line_sums = rebate_lines_start(b->batchcxt);
	/* nothing of the previous batch points into the account cache any more */
	accounts_begin();
}

/*
 * Posts the batch: every account's months in (account, month) order (the
 * accounts sorted, their months sorted already), then the unenrolled sums
 * and the dead letters.  Everything it allocates goes with the batch.
 */
static void
batch_post(Batch *b)
{
	MemoryContext old;
	HASH_SEQ_STATUS seq;
	StrEntry   *e;
	StrEntry  **accts;
	MonthDelta *deltas;
	long		n = 0;
	int			na = 0,
				a,
				i = 0;

	/* as in process_chunk: ledger_post's leftovers go with the batch */
	SPI_connect();
	old = MemoryContextSwitchTo(b->batchcxt);
	accts = palloc(sizeof(StrEntry *) * (hash_get_num_entries(b->accounts) + 1));
	hash_seq_init(&seq, b->accounts);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->nmonths > 0)
		{
			accts[na++] = e;
			n += e->nmonths;
		}
	qsort(accts, na, sizeof(StrEntry *), entry_cmp);
	deltas = palloc(sizeof(MonthDelta) * (n + 1));
	for (a = 0; a < na; a++)
	{
		int			j;

		for (j = 0; j < accts[a]->nmonths; j++)
		{
			MonthDelta *d = &accts[a]->months[j];

			d->qual_new = fixed_sum_value(&d->qual_new_sum);
			d->qual_old = fixed_sum_value(&d->qual_old_sum);
			deltas[i++] = *d;
		}
	}
	if (n > 0)
		ledger_post(b->prog, b->att->id, deltas, (int) n, "earn", "reverse", b->reason);
	if (b->rebate_lines)
		rebate_lines_post(b->prog, b->line_sums);
	write_unenrolled(b);
	settle_rejects(b);
	write_rejects(b);
	MemoryContextSwitchTo(old);
	SPI_finish();
}

/* Maps, looks up and prices one chunk of rows. */
static void
process_chunk(Batch *b, RowSet *sets, int nsets, TupleDesc desc)
{
	if (b->att->has_header)
		b->headers = keymap_create("loyalty headers", b->chunkcxt);
	if (b->att->has_product)
		b->products = keymap_create("loyalty products", b->chunkcxt);
	collect_keys(b, sets, nsets);
	if (b->att->has_product)
		product_lookup(b->att, b->products, b->chunkcxt);
	if (b->att->has_header)
	{
		lookup_headers(b);
		note_header_accounts(b, b->headers);
	}
	resolve_accounts(b);
	sum_points(b, sets, nsets, desc);
}

/*
 * Accrues a statement's rows.  Caller is connected to SPI; desc is the
 * source table's descriptor.  The sets of an UPDATE (old rows, then new)
 * come in the same order and have as many rows: each chunk holds the same
 * rows of both.
 */
void
accrual_process(Attachment *att, TupleDesc desc, RowSet *sets, int nsets, const char *reason)
{
	Batch		b;
	MemoryContext old;
	int			s;

	memset(&b, 0, sizeof(b));
	b.att = att;
	b.prog = att->program;
	b.reason = reason;
	b.cxt = AllocSetContextCreate(CurrentMemoryContext, "loyalty accrual", ALLOCSET_DEFAULT_SIZES);
	b.batchcxt = AllocSetContextCreate(b.cxt, "loyalty accrual batch", ALLOCSET_DEFAULT_SIZES);
	b.chunkcxt = AllocSetContextCreate(b.cxt, "loyalty accrual chunk", ALLOCSET_DEFAULT_SIZES);
	b.rowcxt = AllocSetContextCreate(b.cxt, "loyalty accrual row", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(b.cxt);
	b.econtext = CreateStandaloneExprContext();
	b.store_slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	b.heap_slot = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
	if (att->has_header)
		b.header_slot = MakeSingleTupleTableSlot(lookup_rowtype_tupdesc_copy(att->header_rowtype, -1),
												 &TTSOpsHeapTuple);
	if (att->has_header)
		find_customer_column(&b, desc);
	b.zero = int64_to_numeric(0);
	b.today = rules_today(b.prog);
	b.rebate_lines = rebate_lines_of(b.prog);
	for (s = 0; s < nsets; s++)
	{
		if (sets[s].store != NULL)
			tuplestore_rescan(sets[s].store);
		sets[s].next = 0;
	}

	batch_start(&b);
	for (;;)
	{
		int			total = 0;

		MemoryContextReset(b.chunkcxt);
		MemoryContextSwitchTo(b.chunkcxt);
		for (s = 0; s < nsets; s++)
			total += read_chunk(&b, &sets[s], s > 0 ? &sets[s - 1] : NULL);
		if (total > 0)
		{
			/*
			 * A connection of its own: what SPI and the functions we call
			 * leave in its procedure context (result sets, anything palloc'd
			 * after a query) goes with the chunk, not with the statement.
			 */
			SPI_connect();
			process_chunk(&b, sets, nsets, desc);
			SPI_finish();
		}
		for (s = 0; s < nsets; s++)
			free_chunk(&sets[s]);
		MemoryContextSwitchTo(b.cxt);
		if (total == 0)
			break;
		if (hash_get_num_entries(b.accounts) >= BATCH_ACCOUNTS)
		{
			batch_post(&b);
			batch_start(&b);
		}
	}
	batch_post(&b);
	MemoryContextSwitchTo(b.cxt);

	ExecDropSingleTupleTableSlot(b.store_slot);
	ExecDropSingleTupleTableSlot(b.heap_slot);
	if (b.header_slot)
		ExecDropSingleTupleTableSlot(b.header_slot);
	FreeExprContext(b.econtext, true);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(b.cxt);
}

static TriggerData *
check_trigger(FunctionCallInfo fcinfo, const char *fname, bool row_level)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s() was not called by the trigger manager", fname)));
	if (row_level ? !TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BEFORE(td->tg_event)
		: !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) || !TRIGGER_FIRED_AFTER(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s() must be fired %s", fname, row_level ? "BEFORE ... FOR EACH ROW" : "AFTER ... FOR EACH STATEMENT"),
				 errhint("Create accrual triggers with loyalty.attach().")));
	if (td->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s() takes one trigger argument, the attachment id", fname),
				 errhint("Create accrual triggers with loyalty.attach().")));
	return td;
}

static Attachment *
trigger_attachment(TriggerData *td, bool on_header)
{
	int32		id = pg_strtoint32(td->tg_trigger->tgargs[0]);
	Oid			table = loyalty_trigger_table(td->tg_relation);	/* first: it picks the shard */
	Attachment *att = mapping_get(id);
	Oid			expected = on_header ? att->header : att->source;

	if (table != expected)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("loyalty trigger \"%s\" on %s belongs to attachment %d of another table",
						td->tg_trigger->tgname, RelationGetRelationName(td->tg_relation), id)));
	return att;
}

PG_FUNCTION_INFO_V1(loyalty_accrue);
/* AFTER INSERT OR UPDATE OR DELETE ... FOR EACH STATEMENT on an ERP table. */
Datum
loyalty_accrue(PG_FUNCTION_ARGS)
{
	TriggerData *td = check_trigger(fcinfo, "loyalty.accrue", false);
	Attachment *att;
	RowSet		sets[2];
	int			nsets = 0;
	const char *reason;

	if (td->tg_oldtable == NULL && td->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("loyalty.accrue() needs transition tables"),
				 errhint("Create accrual triggers with loyalty.attach().")));

	SPI_connect();
	att = trigger_attachment(td, false);
	memset(sets, 0, sizeof(sets));
	if (td->tg_oldtable && !TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		sets[nsets].store = td->tg_oldtable;
		sets[nsets++].sign = -1;
	}
	if (td->tg_newtable && !TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		sets[nsets].store = td->tg_newtable;
		sets[nsets++].sign = 1;
	}
	reason = TRIGGER_FIRED_BY_INSERT(td->tg_event) ? "INSERT" :
		TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? "UPDATE" : "DELETE";
	accrual_process(att, RelationGetDescr(td->tg_relation), sets, nsets, reason);
	loyalty_shard_leave();
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * The query for the lines of an array of header keys ($1), as the running
 * role: the whole row, then its identity and header key (report_moved_lines).
 */
static char *
lines_sql(Attachment *att)
{
	return psprintf("SELECT s, s.tableoid, s.ctid, s.xmin, s.%s FROM %s s WHERE s.%s %s ANY ($1)",
					quote_identifier(att->header_key_column),
					mapping_table_ref(att->source, att->source_name),
					quote_identifier(att->header_key_column),
					keytype_equality_operator(att->header_key_type));
}

static Datum
header_key_array(Attachment *att, Datum *keys, int nkeys)
{
	return PointerGetDatum(construct_array(keys, nkeys, att->header_key_type,
										   att->header_key->typlen, att->header_key->typbyval,
										   att->header_key->typalign));
}

/* The lines of the given header keys, in one query, as the running role. */
static HeapTuple *
lines_of_headers(Attachment *att, Datum *keys, int nkeys, uint64 *nlines)
{
	Oid			argtype = get_array_type(att->header_key_type);
	Datum		arg = header_key_array(att, keys, nkeys);
	HeapTuple  *tuples;
	SPITupleTable *result;
	uint64		i;

	loyalty_spi_check(SPI_execute_with_args(lines_sql(att), 1, &argtype, &arg, NULL, false, 0), SPI_OK_SELECT,
					  "read the lines of changed headers");
	result = SPI_tuptable;
	*nlines = SPI_processed;
	tuples = palloc(sizeof(HeapTuple) * (*nlines + 1));
	for (i = 0; i < *nlines; i++)
	{
		bool		isnull;
		HeapTupleHeader th = DatumGetHeapTupleHeader(SPI_getbinval(result->vals[i],
																   result->tupdesc, 1, &isnull));
		HeapTupleData tmp;

		tmp.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&tmp.t_self);
		tmp.t_tableOid = att->source;
		tmp.t_data = th;
		tuples[i] = heap_copytuple(&tmp);
	}
	SPI_freetuptable(result);
	return tuples;
}

static bool
same_key(Attachment *att, Datum a, Datum b)
{
	return DatumGetBool(FunctionCall2Coll(&att->header_key->eq, att->header_key->collation, a, b));
}

/* The row keys among keys[0..n) that have an open dead letter for reason. */
static HTAB *
open_dead_letters(Attachment *att, char **keys, int n, const char *reason)
{
	static ShardPlan plan;
	Datum		args[3];
	OwnerScope	scope;
	HTAB	   *found = str_table("loyalty open dead letters", CurrentMemoryContext);
	uint64		i;

	if (loyalty_plan_stale(&plan))
	{
		Oid			t[3] = {INT4OID, TEXTARRAYOID, TEXTOID};

		plan.plan = loyalty_prepare(
			psprintf("SELECT row_key FROM %s WHERE attachment_id OPERATOR(pg_catalog.=) $1"
					 " AND row_key OPERATOR(pg_catalog.=) ANY ($2) AND reason OPERATOR(pg_catalog.=) $3"
					 " AND resolved_at IS NULL", loyalty_table("rejected_event")), 3, t);
	}
	args[0] = Int32GetDatum(att->id);
	args[1] = loyalty_text_array(keys, NULL, n);
	args[2] = CStringGetTextDatum(reason);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_SELECT,
					  "read loyalty.rejected_event");
	loyalty_leave_owner(&scope);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		dup;

		str_enter(found, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
				  CurrentMemoryContext, &dup);
	}
	return found;
}

static void
settle_dead_letters(Attachment *att, char **keys, int n, const char *reason)
{
	static ShardPlan plan;
	Datum		args[3];
	OwnerScope	scope;

	if (loyalty_plan_stale(&plan))
	{
		Oid			t[3] = {INT4OID, TEXTARRAYOID, TEXTOID};

		plan.plan = loyalty_prepare(
			psprintf("UPDATE %s SET resolved_at = pg_catalog.now()"
					 " WHERE attachment_id OPERATOR(pg_catalog.=) $1 AND row_key OPERATOR(pg_catalog.=) ANY ($2)"
					 "   AND reason OPERATOR(pg_catalog.=) $3 AND resolved_at IS NULL",
					 loyalty_table("rejected_event")), 3, t);
	}
	args[0] = Int32GetDatum(att->id);
	args[1] = loyalty_text_array(keys, NULL, n);
	args[2] = CStringGetTextDatum(reason);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_UPDATE,
					  "settle loyalty.rejected_event");
	loyalty_leave_owner(&scope);
}

/*
 * Headers inserted after their lines (a deferred foreign key, or an ERP
 * that writes lines first): the lines waiting for them in the dead-letter
 * table accrue now, and their letters are settled.  Lines that accrued
 * already (with a header deleted and inserted again) are left alone.
 */
static void
header_inserted(TriggerData *td, Attachment *att)
{
	TupleTableSlot *hslot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
	ExprContext *econtext = CreateStandaloneExprContext();
	HTAB	   *seen = keymap_create("loyalty inserted headers", CurrentMemoryContext);
	Datum	   *keys = palloc(sizeof(Datum) * (tuplestore_tuple_count(td->tg_newtable) + 1));
	int			nkeys = 0;
	Relation	src;
	TupleTableSlot *lslot;
	HeapTuple  *lines;
	uint64		nlines,
				i;
	char	  **rowkeys;
	HTAB	   *waiting;
	int			nwaiting = 0;
	RowSet		set;
	const char *reason = rules_header_missing_reason();

	tuplestore_rescan(td->tg_newtable);
	while (tuplestore_gettupleslot(td->tg_newtable, true, false, hslot))
	{
		HeaderFacts hf;
		bool		isnull,
					found;
		Datum		k;

		ResetExprContext(econtext);
		k = mapping_header_facts(att, econtext, hslot, &hf, &isnull);
		if (!isnull)
		{
			KeyMapEntry *e = keymap_enter(seen, att->header_key, k, CurrentMemoryContext, &found);

			if (!found)
				keys[nkeys++] = e->key.value;
		}
	}
	ExecDropSingleTupleTableSlot(hslot);
	if (nkeys == 0)
		return;
	lines = lines_of_headers(att, keys, nkeys, &nlines);
	if (nlines == 0)
		return;

	/* which of those lines wait in the dead-letter table */
	src = table_open(att->source, AccessShareLock);
	lslot = MakeSingleTupleTableSlot(RelationGetDescr(src), &TTSOpsHeapTuple);
	rowkeys = palloc(sizeof(char *) * nlines);
	for (i = 0; i < nlines; i++)
	{
		ExecStoreHeapTuple(lines[i], lslot, false);
		ResetExprContext(econtext);
		rowkeys[i] = mapping_row_key(att, econtext, lslot);
		rowkeys[i] = rowkeys[i] ? pstrdup(rowkeys[i]) : "";
	}
	waiting = open_dead_letters(att, rowkeys, (int) nlines, reason);
	for (i = 0; i < nlines; i++)
		if (str_find(waiting, rowkeys[i]) != NULL)
		{
			rowkeys[nwaiting] = rowkeys[i];
			lines[nwaiting++] = lines[i];
		}
	if (nwaiting > 0)
	{
		memset(&set, 0, sizeof(set));
		set.tuples = lines;
		set.ntuples = nwaiting;
		set.sign = 1;
		settle_dead_letters(att, rowkeys, nwaiting, reason);
		accrual_process(att, RelationGetDescr(src), &set, 1, "INSERT of header");
	}
	ExecDropSingleTupleTableSlot(lslot);
	table_close(src, AccessShareLock);
}

/*
 * Reverses the lines of the given headers with their old facts and accrues
 * them with the new ones, reading them through a cursor, chunk by chunk.
 */
static void
reaccrue_lines(Attachment *att, Datum *keys, int nkeys, HTAB *old_map, HTAB *new_map, bool report)
{
	Oid			argtype = get_array_type(att->header_key_type);
	Datum		arg = header_key_array(att, keys, nkeys);
	Relation	src = table_open(att->source, AccessShareLock);
	Portal		portal;
	RowSet		sets[2];

	portal = SPI_cursor_open_with_args(NULL, lines_sql(att), 1, &argtype, &arg, NULL, false, 0);
	if (portal == NULL)
		elog(ERROR, "could not open a cursor over the lines of changed headers: %s",
			 SPI_result_code_string(SPI_result));
	memset(sets, 0, sizeof(sets));
	sets[0].portal = portal;
	sets[0].sign = -1;
	sets[0].header_facts = old_map;
	sets[0].report_moves = report;
	sets[1].same_rows = true;
	sets[1].sign = 1;
	sets[1].header_facts = new_map;
	accrual_process(att, RelationGetDescr(src), sets, 2, "UPDATE of header");
	SPI_cursor_close(portal);
	table_close(src, AccessShareLock);
}

/*
 * An UPDATE of a header table: the headers whose account, date, currency,
 * document type or payment dates changed, HEADER_CHUNK at a time, have
 * their lines accrued again.  A row that changed none of them (most
 * UPDATEs of an ERP's header table) leaves nothing behind: each row is
 * mapped in a context reset per row.
 */
#define HEADER_CHUNK 8192

static void
header_updated(TriggerData *td, Attachment *att)
{
	TupleDesc	hdesc = RelationGetDescr(td->tg_relation);
	TupleTableSlot *oslot = MakeSingleTupleTableSlot(hdesc, &TTSOpsMinimalTuple);
	TupleTableSlot *nslot = MakeSingleTupleTableSlot(hdesc, &TTSOpsMinimalTuple);
	ExprContext *econtext = CreateStandaloneExprContext();
	MemoryContext chunkcxt = AllocSetContextCreate(CurrentMemoryContext, "loyalty changed headers",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "loyalty header row",
												 ALLOCSET_SMALL_SIZES);
	MemoryContext old = CurrentMemoryContext;
	bool		more = true;
	bool		report = false;

	/* old and new transition rows of an UPDATE come in the same order */
	tuplestore_rescan(td->tg_oldtable);
	tuplestore_rescan(td->tg_newtable);
	while (more)
	{
		HTAB	   *old_map,
				   *new_map;
		Datum	   *keys;
		int			nkeys = 0;

		/*
		 * The slots may own the last rows read (a transition table spilled
		 * to disk hands out tuples allocated in chunkcxt): release them
		 * before the context goes.
		 */
		ExecClearTuple(oslot);
		ExecClearTuple(nslot);
		MemoryContextReset(chunkcxt);
		MemoryContextSwitchTo(chunkcxt);
		old_map = accrual_header_map(chunkcxt);
		new_map = accrual_header_map(chunkcxt);
		keys = palloc(sizeof(Datum) * HEADER_CHUNK);
		while (nkeys < HEADER_CHUNK)
		{
			HeaderFacts of,
						nf;
			Datum		okey,
						nkey;
			bool		onull,
						nnull,
						found,
						changed;
			KeyMapEntry *e;

			if (!tuplestore_gettupleslot(td->tg_oldtable, true, false, oslot) ||
				!tuplestore_gettupleslot(td->tg_newtable, true, false, nslot))
			{
				more = false;
				break;
			}
			MemoryContextSwitchTo(rowcxt);
			ResetExprContext(econtext);
			okey = mapping_header_facts(att, econtext, oslot, &of, &onull);
			nkey = mapping_header_facts(att, econtext, nslot, &nf, &nnull);
			/* key changes are followed by the lines' own trigger */
			changed = !onull && !nnull && same_key(att, okey, nkey) && !header_facts_equal(&of, &nf);
			MemoryContextSwitchTo(chunkcxt);
			if (changed)
			{
				/* record it for the check at commit; report its lines the first time */
				report |= header_race_header_changed(att, okey, &of, &nf);
				e = keymap_enter(old_map, att->header_key, okey, chunkcxt, &found);
				e->value = header_facts_copy(&of);
				keymap_enter(new_map, att->header_key, okey, chunkcxt, &found)->value = header_facts_copy(&nf);
				if (!found)
					keys[nkeys++] = e->key.value;
			}
			MemoryContextReset(rowcxt);
		}
		if (nkeys > 0)
			reaccrue_lines(att, keys, nkeys, old_map, new_map, report);
		MemoryContextSwitchTo(old);
	}
	header_race_statement_done();
	ExecDropSingleTupleTableSlot(oslot);
	ExecDropSingleTupleTableSlot(nslot);
	FreeExprContext(econtext, true);
	MemoryContextDelete(chunkcxt);
	MemoryContextDelete(rowcxt);
}

PG_FUNCTION_INFO_V1(loyalty_accrue_header);
/*
 * AFTER INSERT ... FOR EACH STATEMENT on a header table: see
 * header_inserted().
 *
 * AFTER UPDATE ... FOR EACH STATEMENT on a header table: when a header's
 * account, date, currency, document type or payment dates change, its lines
 * are reversed with the old facts and accrued with the new ones (this is how
 * the on-time bonus follows the paid date).
 */
Datum
loyalty_accrue_header(PG_FUNCTION_ARGS)
{
	TriggerData *td = check_trigger(fcinfo, "loyalty.accrue_header", false);
	Attachment *att;
	MemoryContext cxt;
	MemoryContext old;

	if (td->tg_newtable == NULL ||
		(TRIGGER_FIRED_BY_UPDATE(td->tg_event) && td->tg_oldtable == NULL))
		return PointerGetDatum(NULL);
	SPI_connect();
	att = trigger_attachment(td, true);
	cxt = AllocSetContextCreate(CurrentMemoryContext, "loyalty header", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		header_inserted(td, att);
	else
		header_updated(td, att);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	loyalty_shard_leave();
	SPI_finish();
	return PointerGetDatum(NULL);
}

PG_FUNCTION_INFO_V1(loyalty_stash_header);
/*
 * BEFORE DELETE or UPDATE OF <key> ... FOR EACH ROW on a header table:
 * remember the facts of a header that is deleted or renumbered until the end
 * of the transaction, so that its lines, deleted or re-keyed after it (ON
 * DELETE / ON UPDATE CASCADE), are still reversed exactly.
 */
Datum
loyalty_stash_header(PG_FUNCTION_ARGS)
{
	TriggerData *td = check_trigger(fcinfo, "loyalty.stash_header", true);
	Attachment *att;
	static bool registered = false;
	TupleTableSlot *slot;
	ExprContext *econtext;
	HeaderFacts hf;
	Datum		key;
	bool		isnull;

	HeapTuple	result = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;

	if (!TRIGGER_FIRED_BY_DELETE(td->tg_event) && !TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return PointerGetDatum(result);
	SPI_connect();
	att = trigger_attachment(td, true);
	if (!registered)
	{
		RegisterXactCallback(stash_xact_callback, NULL);
		registered = true;
	}
	/* mapped in SPI's context, which goes with the row; only a stashed header is kept */
	slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsHeapTuple);
	ExecStoreHeapTuple(td->tg_trigtuple, slot, false);
	econtext = CreateStandaloneExprContext();
	key = mapping_header_facts(att, econtext, slot, &hf, &isnull);
	if (!isnull && TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		/* only a renumbered header needs remembering */
		HeaderFacts nf;
		bool		nnull;
		Datum		nkey;

		key = datumCopy(key, att->header_key->typbyval, att->header_key->typlen);
		ExecStoreHeapTuple(td->tg_newtuple, slot, false);
		nkey = mapping_header_facts(att, econtext, slot, &nf, &nnull);
		if (!nnull && same_key(att, key, nkey))
			isnull = true;
	}
	if (!isnull)
	{
		bool		found;
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		keymap_enter(stash_of(att, true), att->header_key, key, TopTransactionContext, &found)->value =
			header_facts_copy(&hf);
		MemoryContextSwitchTo(old);
	}
	FreeExprContext(econtext, true);
	ExecDropSingleTupleTableSlot(slot);
	loyalty_shard_leave();
	SPI_finish();
	return PointerGetDatum(result);
}
