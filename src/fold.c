/*
 * fold.c — folding.  Accrual appends one loyalty.balance_delta row per
 * account and statement and never updates a shared row; loyalty.fold()
 * (pg_cron, every minute) adds the committed deltas to
 * loyalty.balance_folded, books what the caps withhold as ledger entries of
 * kind cap, records tier upgrades, and deletes the deltas it folded, all in
 * one transaction.  Readers see the same totals before and after: the view
 * loyalty.balance adds the deltas not folded yet and, through
 * pending_caps(), the caps their fold will book.
 *
 * Only a fold writes balance_folded, and one fold per program runs at a
 * time (a transaction-scoped advisory lock, tried, never waited for), so
 * the ERP's transactions never wait for a fold, nor a fold for them.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "accounts.h"
#include "keytype.h"
#include "ledger.h"
#include "loyalty.h"
#include "mapping.h"
#include "tier_ladder.h"

/* deltas read per round: bounds the fold's memory whatever the backlog */
#define FOLD_BATCH 10000

/* advisory lock class of folds ('LOYF'); the second key is the program */
#define FOLD_LOCK_CLASS 0x4C4F5946

/* One account of a round: its folded row before and after, and the round's deltas. */
typedef struct FoldAccount
{
	char	   *key;
	int64		points;			/* the round's deltas */
	Numeric		qualifying;
	Numeric		rebate;
	Numeric		mdf;
	int64		entries;
	MonthArrays months;
	DateADT		last_doc_date;	/* 0: none */
	/* the folded row, read, then updated in place */
	int64		f_points;
	Numeric		f_qualifying;
	Numeric		f_rebate;
	Numeric		f_mdf;
	int64		f_entries;
	MonthArrays f_months;
	DateADT		f_last_doc_date;
	char	   *tier;			/* the account's tier, NULL if none */
	bool		enrolled;		/* it has a loyalty.account row */
	int64		cap;			/* the cap entry to book (0: none) */
	int64		cap_no;
} FoldAccount;

static bool
try_fold_lock(int32 program_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, FOLD_LOCK_CLASS, (uint32) program_id, 2);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

static Numeric
num_add(Numeric a, Numeric b)
{
	return numeric_add_opt_error(a, b, NULL);
}

static DateADT
date_or_zero(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? 0 : DatumGetDateADT(d);
}

static void
months_of(MonthArrays *m, HeapTuple tup, TupleDesc desc, int first, const char *prefix)
{
	bool		isnull;

	ledger_arrays_read(m, prefix,
					   SPI_getbinval(tup, desc, first, &isnull), SPI_getbinval(tup, desc, first + 1, &isnull),
					   SPI_getbinval(tup, desc, first + 2, &isnull), SPI_getbinval(tup, desc, first + 3, &isnull),
					   SPI_getbinval(tup, desc, first + 4, &isnull));
}

/*
 * Reads up to FOLD_BATCH committed deltas of the program, in account order,
 * summed per account into accts[]; their row ids go to *tids.  Returns the
 * number of deltas read.
 */
static uint64
read_deltas(const Program *prog, FoldAccount *accts, int *naccts, Datum *tids, Datum *tid_keys,
			SPITupleTable **tt)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2];
	Datum	   *tid;
	char	  **tid_key;
	uint64		i;
	int			n = 0;

	if (plan == NULL)
	{
		Oid			t[2] = {INT4OID, INT4OID};

		plan = loyalty_prepare_batch(
			"SELECT d.ctid, d.account_key, d.points, d.qualifying, d.rebate, d.mdf, d.entry_count,"
			"  d.m_month, d.m_attachment, d.m_points, d.m_qualifying, d.m_source_rows, d.last_doc_date"
			" FROM loyalty.balance_delta d WHERE d.program_id OPERATOR(pg_catalog.=) $1"
			" ORDER BY d.account_key LIMIT $2", 2, t);
	}
	args[0] = Int32GetDatum(prog->id);
	args[1] = Int32GetDatum(FOLD_BATCH);
	loyalty_spi_check(SPI_execute_plan(plan, args, NULL, false, 0), SPI_OK_SELECT, "read loyalty.balance_delta");
	*tt = SPI_tuptable;
	tid = palloc(sizeof(Datum) * (SPI_processed + 1));
	tid_key = palloc(sizeof(char *) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *key = SPI_getvalue(tup, desc, 2);
		FoldAccount *a;
		MonthArrays m,
					sum;
		bool		isnull;

		tid[i] = SPI_getbinval(tup, desc, 1, &isnull);
		tid_key[i] = key;
		if (n == 0 || strcmp(accts[n - 1].key, key) != 0)
		{
			a = &accts[n++];
			memset(a, 0, sizeof(FoldAccount));
			a->key = key;
			a->qualifying = a->rebate = a->mdf = int64_to_numeric(0);
		}
		a = &accts[n - 1];
		a->points = ledger_add_points(a->points, DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull)), prog, key);
		a->qualifying = num_add(a->qualifying, DatumGetNumeric(SPI_getbinval(tup, desc, 4, &isnull)));
		a->rebate = num_add(a->rebate, DatumGetNumeric(SPI_getbinval(tup, desc, 5, &isnull)));
		a->mdf = num_add(a->mdf, DatumGetNumeric(SPI_getbinval(tup, desc, 6, &isnull)));
		a->entries += DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
		months_of(&m, tup, desc, 8, "balance_delta.m_");
		ledger_months_merge(&a->months, &m, &sum);
		a->months = sum;
		a->last_doc_date = Max(a->last_doc_date, date_or_zero(tup, desc, 13));
	}
	*naccts = n;
	*tids = PointerGetDatum(construct_array(tid, (int) SPI_processed, TIDOID, sizeof(ItemPointerData), false,
											TYPALIGN_SHORT));
	*tid_keys = loyalty_text_array(tid_key, NULL, (int) SPI_processed);
	return SPI_processed;
}

/* The folded rows (and tiers) of the round's accounts, into accts[]. */
static void
read_folded(const Program *prog, FoldAccount *accts, int n, SPITupleTable **tt)
{
	static SPIPlanPtr plan = NULL;
	char	  **keys = palloc(sizeof(char *) * n);
	Datum		args[2];
	uint64		i;

	if (plan == NULL)
	{
		Oid			t[2] = {INT4OID, TEXTARRAYOID};

		plan = loyalty_prepare_batch(
			"SELECT k.i, f.points, f.qualifying, f.rebate, f.mdf, f.entry_count,"
			"  f.m_month, f.m_attachment, f.m_points, f.m_qualifying, f.m_source_rows, f.last_doc_date, a.tier,"
			"  a.account_key IS NOT NULL"
			" FROM pg_catalog.unnest($2" KEYS_CAST ") WITH ORDINALITY AS k(key, i)"
			" LEFT JOIN loyalty.balance_folded f"
			"   ON f.program_id OPERATOR(pg_catalog.=) $1 AND f.account_key OPERATOR(pg_catalog.=) k.key"
			" LEFT JOIN loyalty.account a"
			"   ON a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) k.key", 2, t);
	}
	for (i = 0; i < (uint64) n; i++)
	{
		FoldAccount *a = &accts[i];

		keys[i] = a->key;
		a->f_qualifying = a->f_rebate = a->f_mdf = int64_to_numeric(0);
		a->f_months.n = 0;
	}
	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(keys, NULL, n);
	loyalty_spi_check(SPI_execute_plan(plan, args, NULL, false, 0), SPI_OK_SELECT, "read loyalty.balance_folded");
	*tt = SPI_tuptable;
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		FoldAccount *a = &accts[DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull)) - 1];

		a->tier = SPI_getvalue(tup, desc, 13);
		a->enrolled = DatumGetBool(SPI_getbinval(tup, desc, 14, &isnull));
		(void) SPI_getbinval(tup, desc, 2, &isnull);
		if (isnull)
			continue;			/* nothing folded yet */
		a->f_points = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		a->f_qualifying = DatumGetNumeric(SPI_getbinval(tup, desc, 3, &isnull));
		a->f_rebate = DatumGetNumeric(SPI_getbinval(tup, desc, 4, &isnull));
		a->f_mdf = DatumGetNumeric(SPI_getbinval(tup, desc, 5, &isnull));
		a->f_entries = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
		months_of(&a->f_months, tup, desc, 7, "balance_folded.m_");
		a->f_last_doc_date = date_or_zero(tup, desc, 12);
	}
}

/* The new folded values of every account of the round, caps included. */
static void
apply_round(const Program *prog, FoldAccount *accts, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		FoldAccount *a = &accts[i];
		MonthArrays after;

		ledger_months_merge(&a->f_months, &a->months, &after);
		a->cap = ledger_cap_change(prog, a->key, &a->f_months, &after);
		a->f_points = ledger_add_points(ledger_add_points(a->f_points, a->points, prog, a->key), a->cap, prog, a->key);
		a->f_qualifying = num_add(a->f_qualifying, a->qualifying);
		a->f_rebate = num_add(a->f_rebate, a->rebate);
		a->f_mdf = num_add(a->f_mdf, a->mdf);
		a->f_entries += a->entries + (a->cap != 0);
		a->f_months = after;
		a->f_last_doc_date = Max(a->f_last_doc_date, a->last_doc_date);
		if (a->cap != 0)
			a->cap_no = ledger_numbers(1);
	}
}

/* loyalty.balance_folded rows holding the new values, as an array of its row type. */
static Datum
folded_rows(FoldAccount *accts, int n, Oid *type)
{
	static const char *const names[] = {"account_key", "points", "qualifying", "rebate", "mdf", "entry_count",
	"m_month", "m_attachment", "m_points", "m_qualifying", "m_source_rows", "last_doc_date"};
	Oid			rel = get_relname_relid("balance_folded", get_namespace_oid("loyalty", false));
	TupleDesc	desc;
	int			col[lengthof(names)];
	Datum	   *values;
	bool	   *nulls;
	Datum	   *out = palloc(sizeof(Datum) * n);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			i,
				c;

	if (!OidIsValid(rel))
		elog(ERROR, "relation loyalty.balance_folded does not exist");
	*type = get_rel_type_id(rel);
	desc = lookup_rowtype_tupdesc(*type, -1);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	for (i = 0; i < (int) lengthof(names); i++)
	{
		for (c = 0; c < desc->natts; c++)
			if (!TupleDescAttr(desc, c)->attisdropped &&
				strcmp(NameStr(TupleDescAttr(desc, c)->attname), names[i]) == 0)
				break;
		if (c == desc->natts)
			elog(ERROR, "loyalty.balance_folded has no column %s", names[i]);
		col[i] = c;
	}
	for (i = 0; i < n; i++)
	{
		FoldAccount *a = &accts[i];
		MonthArrays *m = &a->f_months;

		memset(nulls, true, sizeof(bool) * desc->natts);
		for (c = 0; c < (int) lengthof(names); c++)
			nulls[col[c]] = false;
		values[col[0]] = loyalty_key_datum(TupleDescAttr(desc, col[0])->atttypid, a->key);
		values[col[1]] = Int64GetDatum(a->f_points);
		values[col[2]] = NumericGetDatum(a->f_qualifying);
		values[col[3]] = NumericGetDatum(a->f_rebate);
		values[col[4]] = NumericGetDatum(a->f_mdf);
		values[col[5]] = Int64GetDatum(a->f_entries);
		values[col[6]] = loyalty_date_array(m->month, m->n);
		values[col[7]] = loyalty_int4_array(m->attachment, m->n);
		values[col[8]] = loyalty_int8_array(m->points, m->n);
		values[col[9]] = loyalty_numeric_array(m->qualifying, m->n);
		values[col[10]] = loyalty_int8_array(m->rows, m->n);
		values[col[11]] = DateADTGetDatum(a->f_last_doc_date);
		nulls[col[11]] = (a->f_last_doc_date == 0);
		out[i] = HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
	}
	ReleaseTupleDesc(desc);
	get_typlenbyvalalign(*type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(out, n, *type, typlen, typbyval, typalign));
}

/* Writes the round: folded rows, cap entries, and the deltas deleted. */
static void
write_round(const Program *prog, FoldAccount *accts, int n, Datum tids, Datum tid_keys)
{
	static SPIPlanPtr upsert = NULL,
				caps = NULL,
				del = NULL,
				del_sharded = NULL;
	static Oid	upsert_type = InvalidOid;
	Oid			type;
	Datum		args[4];
	char	  **ck = palloc(sizeof(char *) * n);
	int64	   *cno = palloc(sizeof(int64) * n);
	int64	   *cp = palloc(sizeof(int64) * n);
	int			nc = 0,
				i;

	args[0] = Int32GetDatum(prog->id);
	args[1] = folded_rows(accts, n, &type);
	/*
	 * now() as a value: Citus takes no volatile function in DO UPDATE SET,
	 * nor a parameter there (it sends that clause to the workers as is)
	 */
	args[2] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	if (upsert == NULL || type != upsert_type)
	{
		Oid			t[3] = {INT4OID, get_array_type(type), TIMESTAMPTZOID};

		if (upsert != NULL)
			SPI_freeplan(upsert);
		upsert = NULL;
		upsert = loyalty_prepare_batch(
			"INSERT INTO loyalty.balance_folded AS b (program_id, account_key, points, qualifying, rebate, mdf,"
			"  entry_count, m_month, m_attachment, m_points, m_qualifying, m_source_rows, last_doc_date, updated_at)"
			" SELECT $1, u.account_key, u.points, u.qualifying, u.rebate, u.mdf, u.entry_count,"
			"  u.m_month, u.m_attachment, u.m_points, u.m_qualifying, u.m_source_rows, u.last_doc_date, $3"
			" FROM pg_catalog.unnest($2) AS u ORDER BY u.account_key"
			" ON CONFLICT (program_id, account_key) DO UPDATE SET points = excluded.points,"
			"  qualifying = excluded.qualifying, rebate = excluded.rebate, mdf = excluded.mdf,"
			"  entry_count = excluded.entry_count, m_month = excluded.m_month, m_attachment = excluded.m_attachment,"
			"  m_points = excluded.m_points, m_qualifying = excluded.m_qualifying,"
			"  m_source_rows = excluded.m_source_rows, last_doc_date = excluded.last_doc_date,"
			"  updated_at = excluded.updated_at", 3, t);
		upsert_type = type;
	}
	loyalty_spi_check(SPI_execute_plan(upsert, args, NULL, false, 0), SPI_OK_INSERT, "write loyalty.balance_folded");

	for (i = 0; i < n; i++)
		if (accts[i].cap != 0)
		{
			ck[nc] = accts[i].key;
			cno[nc] = accts[i].cap_no;
			cp[nc++] = accts[i].cap;
		}
	if (nc > 0)
	{
		if (caps == NULL)
		{
			Oid			t[4] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID};

			caps = loyalty_prepare_batch(
				"INSERT INTO loyalty.ledger (program_id, account_key, entry_no, kind, points, reason)"
				" SELECT $1, u.k, u.e, 'cap', u.p, 'fold'"
				" FROM ROWS FROM (pg_catalog.unnest($2" KEYS_CAST "), pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(k, e, p)",
				4, t);
		}
		args[1] = loyalty_text_array(ck, NULL, nc);
		args[2] = loyalty_int8_array(cno, nc);
		args[3] = loyalty_int8_array(cp, nc);
		loyalty_spi_check(SPI_execute_plan(caps, args, NULL, false, 0), SPI_OK_INSERT, "write cap entries");
	}

	if (loyalty_citus_distributed())
	{
		/*
		 * On Citus a ctid is an address within one shard: the same ctid names
		 * a row in every shard.  The account key says which shard (it is the
		 * distribution column), so each delta is deleted by the pair.
		 */
		if (del_sharded == NULL)
		{
			Oid			t[2] = {TEXTARRAYOID, TIDARRAYOID};

			del_sharded = loyalty_prepare_batch(
				"DELETE FROM loyalty.balance_delta d"
				" USING ROWS FROM (pg_catalog.unnest($1" KEYS_CAST "), pg_catalog.unnest($2)) AS u(k, t)"
				" WHERE d.account_key OPERATOR(pg_catalog.=) u.k AND d.ctid OPERATOR(pg_catalog.=) u.t", 2, t);
		}
		args[0] = tid_keys;
		args[1] = tids;
		loyalty_spi_check(SPI_execute_plan(del_sharded, args, NULL, false, 0), SPI_OK_DELETE, "delete folded deltas");
		return;
	}
	if (del == NULL)
	{
		Oid			t[1] = {TIDARRAYOID};

		del = loyalty_prepare_batch("DELETE FROM loyalty.balance_delta WHERE ctid OPERATOR(pg_catalog.=) ANY ($1)", 1, t);
	}
	args[0] = tids;
	loyalty_spi_check(SPI_execute_plan(del, args, NULL, false, 0), SPI_OK_DELETE, "delete folded deltas");
}

/*
 * Accounts that posted without a loyalty.account row: their first invoice
 * came while another transaction was auto-enrolling them, and that one
 * rolled back (accounts.c does not wait for it).  Auto-enrolment programs
 * only; the row gets the defaults the postings assumed.
 */
static void
enroll_missing(const Program *prog, FoldAccount *accts, int n)
{
	static SPIPlanPtr plan = NULL;
	char	  **keys = palloc(sizeof(char *) * n);
	int			nk = 0,
				nskip,
				i;
	Datum		args[2];

	if (!prog->auto_enroll)
		return;
	for (i = 0; i < n; i++)
		if (!accts[i].enrolled)
			keys[nk++] = accts[i].key;
	/* those another transaction is enrolling: it will, or a later fold */
	nskip = accounts_enrolling_elsewhere(prog->id, keys, nk);
	if (nk == nskip)
		return;
	if (plan == NULL)
	{
		Oid			t[2] = {INT4OID, TEXTARRAYOID};

		plan = loyalty_prepare_batch(
			"INSERT INTO loyalty.account (program_id, account_key, enrolled_by, enrolled_from)"
			" SELECT $1, k, 'auto', '-infinity' FROM pg_catalog.unnest($2" KEYS_CAST ") AS k ORDER BY k"
			" ON CONFLICT DO NOTHING", 2, t);
	}
	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(keys + nskip, NULL, nk - nskip);
	loyalty_spi_check(SPI_execute_plan(plan, args, NULL, false, 0), SPI_OK_INSERT, "enrol accounts");
}

/*
 * An upgrade counts for documents dated from tomorrow, in the program's
 * time zone, but never for a document already accrued: when the account
 * has accruals dated later (an invoice dated in the future), the upgrade
 * waits for the day after the latest of them.  Otherwise reversing such a
 * document would price it with a tier it did not earn with.
 */
static DateADT
upgrade_effective_from(DateADT tomorrow, DateADT last_doc_date)
{
	return last_doc_date >= tomorrow ? last_doc_date + 1 : tomorrow;
}

/*
 * The upgrades of upgrade_tiers on a distributed layout, where Citus plans
 * neither the data-modifying CTE nor the correlated change number: the
 * accounts first (a multi-shard UPDATE, each shard's rows on its node),
 * then the last change numbers of those that moved, then their history
 * rows.  The tier lock this fold holds keeps every other tier writer of
 * the program out meanwhile.  moved[i] tells whether uk[i] was written.
 */
static int
upgrade_tiers_sharded(const Program *prog, Datum *args, char **uk, char **uo, char **un, Numeric *uq,
					  DateADT *ueff, int nu, bool *moved)
{
	static SPIPlanPtr upd = NULL,
				last = NULL,
				ins = NULL;
	char	  **mk = palloc(sizeof(char *) * nu),
			  **mo = palloc(sizeof(char *) * nu),
			  **mn = palloc(sizeof(char *) * nu);
	bool	   *monulls = palloc(sizeof(bool) * nu);
	Numeric    *mq = palloc(sizeof(Numeric) * nu);
	DateADT    *meff = palloc(sizeof(DateADT) * nu);
	int64	   *mno = palloc(sizeof(int64) * nu);
	Datum		a[8];
	int			nm = 0,
				i;
	uint64		r;

	if (upd == NULL)
	{
		Oid			t[5] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZOID};

		upd = loyalty_prepare_batch(
			"UPDATE loyalty.account a SET tier = u.new_tier, tier_since = $5"
			" FROM ROWS FROM (pg_catalog.unnest($2" KEYS_CAST "), pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(k, old_tier, new_tier)"
			" WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) u.k"
			"   AND a.tier IS NOT DISTINCT FROM u.old_tier"
			"   AND NOT EXISTS (SELECT FROM loyalty.tier_grant g WHERE g.program_id OPERATOR(pg_catalog.=) $1"
			"                   AND g.account_key OPERATOR(pg_catalog.=) a.account_key)"
			" RETURNING a.account_key", 5, t);
	}
	a[0] = args[0];
	a[1] = args[1];
	a[2] = args[2];
	a[3] = args[3];
	a[4] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	loyalty_spi_check(SPI_execute_plan(upd, a, NULL, false, 0), SPI_OK_UPDATE_RETURNING, "record tier upgrades");
	memset(moved, 0, sizeof(bool) * nu);
	for (r = 0; r < SPI_processed; r++)
	{
		char	   *k = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);

		for (i = 0; i < nu; i++)
			if (!moved[i] && strcmp(k, uk[i]) == 0)
			{
				moved[i] = true;
				break;
			}
	}
	for (i = 0; i < nu; i++)
		if (moved[i])
		{
			mk[nm] = uk[i];
			mo[nm] = uo[i];
			monulls[nm] = (uo[i] == NULL);
			mn[nm] = un[i];
			mq[nm] = uq[i];
			meff[nm] = ueff[i];
			mno[nm++] = 1;
		}
	if (nm == 0)
		return 0;

	if (last == NULL)
	{
		Oid			t[2] = {INT4OID, TEXTARRAYOID};

		last = loyalty_prepare_batch(
			"SELECT h.account_key, pg_catalog.max(h.change_no) FROM loyalty.tier_history h"
			" WHERE h.program_id OPERATOR(pg_catalog.=) $1 AND h.account_key OPERATOR(pg_catalog.=) ANY ($2" KEYS_CAST ")"
			" GROUP BY h.account_key", 2, t);
	}
	a[1] = loyalty_text_array(mk, NULL, nm);
	loyalty_spi_check(SPI_execute_plan(last, a, NULL, false, 0), SPI_OK_SELECT, "read tier change numbers");
	for (r = 0; r < SPI_processed; r++)
	{
		char	   *k = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
		bool		isnull;
		int64		no = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));

		for (i = 0; i < nm; i++)
			if (strcmp(k, mk[i]) == 0)
				mno[i] = no + 1;
	}

	if (ins == NULL)
	{
		Oid			t[7] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, DATEARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		NUMERICARRAYOID};

		ins = loyalty_prepare_batch(
			"INSERT INTO loyalty.tier_history"
			" (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)"
			" SELECT $1, u.k, u.no, u.eff, u.old_tier, u.new_tier, 'upgrade_on_accrual', u.q"
			" FROM ROWS FROM (pg_catalog.unnest($2" KEYS_CAST "), pg_catalog.unnest($3), pg_catalog.unnest($4),"
			"                 pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7))"
			"      AS u(k, no, eff, old_tier, new_tier, q) ORDER BY u.k", 7, t);
	}
	a[2] = loyalty_int8_array(mno, nm);
	a[3] = loyalty_date_array(meff, nm);
	a[4] = loyalty_text_array(mo, monulls, nm);
	a[5] = loyalty_text_array(mn, NULL, nm);
	a[6] = loyalty_numeric_array(mq, nm);
	loyalty_spi_check(SPI_execute_plan(ins, a, NULL, false, 0), SPI_OK_INSERT, "record tier upgrades");
	return nm;
}

/*
 * Upgrades on accrual: an account whose rolling qualifying spend, folded,
 * reaches a higher tier than it has.  Downgrades wait for settlement.
 * Returns how many accounts were upgraded.
 */
static int
upgrade_tiers(const Program *prog, FoldAccount *accts, int n)
{
	static SPIPlanPtr plan = NULL;
	DateADT		today = rules_today(prog);
	DateADT		last = loyalty_month_start(today);
	DateADT		first = loyalty_add_months(last, -(prog->window_months - 1));
	char	  **uk = palloc(sizeof(char *) * n),
			  **uo = palloc(sizeof(char *) * n),
			  **un = palloc(sizeof(char *) * n);
	bool	   *onulls = palloc(sizeof(bool) * n);
	Numeric    *uq = palloc(sizeof(Numeric) * n);
	DateADT    *ueff = palloc(sizeof(DateADT) * n);
	int			nu = 0,
				i,
				m;
	Datum		args[6];

	if (prog->ladder == NULL)
		return 0;
	for (i = 0; i < n; i++)
	{
		FoldAccount *a = &accts[i];
		Numeric		rolling = int64_to_numeric(0);
		int			idx;

		for (m = 0; m < a->f_months.n; m++)
			if (a->f_months.month[m] >= first && a->f_months.month[m] <= last)
				rolling = num_add(rolling, a->f_months.qualifying[m]);
		idx = tier_ladder_index(prog->ladder, rolling);
		if (idx < 0 || (a->tier && idx <= tier_ladder_find(prog->ladder, a->tier)))
			continue;
		uk[nu] = a->key;
		uo[nu] = a->tier;
		onulls[nu] = (a->tier == NULL);
		un[nu] = pstrdup(tier_ladder_name(prog->ladder, idx));
		uq[nu] = rolling;
		ueff[nu] = upgrade_effective_from(today + 1, a->f_last_doc_date);
		nu++;
	}
	if (nu == 0)
		return 0;
	if (loyalty_citus_distributed())
	{
		bool	   *moved = palloc(sizeof(bool) * nu);
		int			nm;

		args[0] = Int32GetDatum(prog->id);
		args[1] = loyalty_text_array(uk, NULL, nu);
		args[2] = loyalty_text_array(uo, onulls, nu);
		args[3] = loyalty_text_array(un, NULL, nu);
		nm = upgrade_tiers_sharded(prog, args, uk, uo, un, uq, ueff, nu, moved);
		for (i = 0; i < nu; i++)
			if (moved[i])
				accounts_note_tier((Program *) prog, uk[i], un[i], ueff[i]);
		return nm;
	}
	if (plan == NULL)
	{
		Oid			t[6] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, NUMERICARRAYOID, DATEARRAYOID};

		/*
		 * The account rows are locked in key order; only enrolled accounts
		 * move, and not those holding a tier granted by hand.  The change
		 * number is the account's next: every tier writer of the program
		 * holds the tier lock this fold holds, so no other can take it.
		 */
		plan = loyalty_prepare_batch(
			"WITH u AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($2" KEYS_CAST "), pg_catalog.unnest($3), pg_catalog.unnest($4),"
			"                                    pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(k, old_tier, new_tier, q, eff)),"
			" upd AS (UPDATE loyalty.account a SET tier = u.new_tier, tier_since = pg_catalog.now()"
			"   FROM u WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) u.k"
			"     AND a.tier IS NOT DISTINCT FROM u.old_tier"
			"     AND NOT EXISTS (SELECT FROM loyalty.tier_grant g WHERE g.program_id OPERATOR(pg_catalog.=) $1"
			"                     AND g.account_key OPERATOR(pg_catalog.=) u.k)"
			"   RETURNING a.account_key)"
			" INSERT INTO loyalty.tier_history"
			" (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)"
			" SELECT $1, u.k,"
			"  coalesce((SELECT pg_catalog.max(h.change_no) FROM loyalty.tier_history h"
			"            WHERE h.program_id OPERATOR(pg_catalog.=) $1 AND h.account_key OPERATOR(pg_catalog.=) u.k), 0)"
			"  OPERATOR(pg_catalog.+) 1,"
			"  u.eff, u.old_tier, u.new_tier, 'upgrade_on_accrual', u.q"
			" FROM u JOIN upd ON upd.account_key OPERATOR(pg_catalog.=) u.k ORDER BY u.k"
			" RETURNING account_key", 6, t);
	}
	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(uk, NULL, nu);
	args[2] = loyalty_text_array(uo, onulls, nu);
	args[3] = loyalty_text_array(un, NULL, nu);
	args[4] = loyalty_numeric_array(uq, nu);
	args[5] = loyalty_date_array(ueff, nu);
	loyalty_spi_check(SPI_execute_plan(plan, args, NULL, false, 0), SPI_OK_INSERT_RETURNING,
					  "record tier upgrades");

	/*
	 * Only the accounts whose upgrade was written go to the cache: one that
	 * moved meanwhile, or holds a tier granted by hand, keeps its tier.  The
	 * returned keys are a subsequence of uk[] (both in the order of the
	 * deltas' keys), so one walk matches them.
	 */
	for (i = 0, m = 0; i < nu && m < (int) SPI_processed; i++)
	{
		char	   *k = SPI_getvalue(SPI_tuptable->vals[m], SPI_tuptable->tupdesc, 1);

		if (strcmp(k, uk[i]) == 0)
		{
			accounts_note_tier((Program *) prog, uk[i], un[i], ueff[i]);
			m++;
		}
	}
	return (int) SPI_processed;
}

/* Sums the committed activity of unenrolled customers; returns how many rows it folded. */
static int64
fold_unenrolled(const Program *prog)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[1];

	if (plan == NULL)
	{
		Oid			t[1] = {INT4OID};

		plan = loyalty_prepare_batch(
			"WITH d AS (DELETE FROM loyalty.unenrolled_delta x WHERE x.program_id OPERATOR(pg_catalog.=) $1"
			"           RETURNING x.attachment_id, x.account_key, x.source_rows, x.amount, x.seen_at)"
			" INSERT INTO loyalty.unenrolled_folded AS f"
			"  (program_id, attachment_id, account_key, source_rows, amount, first_seen, last_seen)"
			" SELECT $1, d.attachment_id, d.account_key, pg_catalog.sum(d.source_rows), pg_catalog.sum(d.amount),"
			"        pg_catalog.min(d.seen_at), pg_catalog.max(d.seen_at)"
			" FROM d GROUP BY d.attachment_id, d.account_key ORDER BY d.account_key, d.attachment_id"
			" ON CONFLICT (program_id, account_key, attachment_id) DO UPDATE"
			" SET source_rows = f.source_rows OPERATOR(pg_catalog.+) excluded.source_rows,"
			"     amount = f.amount OPERATOR(pg_catalog.+) excluded.amount,"
			"     last_seen = GREATEST(f.last_seen, excluded.last_seen)", 1, t);
	}
	args[0] = Int32GetDatum(prog->id);
	loyalty_spi_check(SPI_execute_plan(plan, args, NULL, false, 0), SPI_OK_INSERT, "fold loyalty.unenrolled_delta");
	return (int64) SPI_processed;
}

/* Folds one program's committed deltas; returns how many. */
static int64
fold_program(const Program *prog)
{
	MemoryContext round_cxt,
				old;
	int64		total = 0;
	int			upgraded = 0;
	uint64		n;

	if (!try_fold_lock(prog->id))
		return 0;				/* another fold of the program is running */
	round_cxt = AllocSetContextCreate(CurrentMemoryContext, "loyalty fold round", ALLOCSET_DEFAULT_SIZES);
	do
	{
		FoldAccount *accts = NULL;
		int			naccts;
		Datum		tids,
					tid_keys;
		SPITupleTable *deltas = NULL,
				   *folded = NULL;

		old = MemoryContextSwitchTo(round_cxt);
		accts = palloc(sizeof(FoldAccount) * FOLD_BATCH);
		n = read_deltas(prog, accts, &naccts, &tids, &tid_keys, &deltas);
		if (n > 0)
		{
			read_folded(prog, accts, naccts, &folded);
			apply_round(prog, accts, naccts);
			write_round(prog, accts, naccts, tids, tid_keys);
			enroll_missing(prog, accts, naccts);
			upgraded += upgrade_tiers(prog, accts, naccts);
		}
		MemoryContextSwitchTo(old);
		/* the round's values point into these: free them with it */
		SPI_freetuptable(deltas);
		SPI_freetuptable(folded);
		MemoryContextReset(round_cxt);
		total += (int64) n;
	} while (n == FOLD_BATCH);
	MemoryContextDelete(round_cxt);
	total += fold_unenrolled(prog);

	/* other backends cached the old tiers: documents from tomorrow need the new ones */
	if (upgraded > 0)
		CacheInvalidateRelcacheByRelid(get_relname_relid("account", get_namespace_oid("loyalty", false)));
	return total;
}

PG_FUNCTION_INFO_V1(loyalty_fold);
/* loyalty.fold(program text DEFAULT NULL): folds one program, or all. */
Datum
loyalty_fold(PG_FUNCTION_ARGS)
{
	char	   *name = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	OwnerScope	scope;
	int32	   *ids;
	uint64		nids,
				i;
	int64		total = 0;
	Datum		args[1];
	Oid			t[1] = {TEXTOID};

	SPI_connect();
	loyalty_enter_owner(&scope);
	args[0] = name ? CStringGetTextDatum(name) : (Datum) 0;
	loyalty_spi_check(SPI_execute_with_args(
						  "SELECT p.program_id FROM loyalty.program p"
						  " WHERE $1 IS NULL OR p.name OPERATOR(pg_catalog.=) $1 ORDER BY 1",
						  1, t, args, name ? NULL : "n", true, 0), SPI_OK_SELECT, "list programs");
	if (name != NULL && SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("loyalty program \"%s\" does not exist", name),
				 errdetail("program names no program of this database (names are case-sensitive)."),
				 errhint("Call loyalty.fold() without an argument to fold every program.")));
	nids = SPI_processed;
	ids = palloc(sizeof(int32) * (nids + 1));
	for (i = 0; i < nids; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	loyalty_leave_owner(&scope);
	for (i = 0; i < nids; i++)
	{
		Program    *prog = mapping_get_program(ids[i]);

		loyalty_enter_owner(&scope);
		total += fold_program(prog);
		loyalty_leave_owner(&scope);
	}
	SPI_finish();
	PG_RETURN_INT64(total);
}

PG_FUNCTION_INFO_V1(loyalty_pending_caps);
/*
 * loyalty.pending_caps(program_id, account_key): the cap entry the next
 * fold of the account will book, for loyalty.balance.  Reads with the
 * caller's snapshot and rights, so that a transaction sees its own
 * uncommitted postings capped exactly as they will be.
 */
Datum
loyalty_pending_caps(PG_FUNCTION_ARGS)
{
	int32		program_id = PG_GETARG_INT32(0);
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Program    *prog;
	MonthArrays before,
				after;
	Datum		args[2];
	Oid			t[2] = {INT4OID, TEXTOID};
	int64		cap;
	uint64		i;

	SPI_connect();
	prog = mapping_get_program(program_id);
	if (prog == NULL || !prog->has_caps)
	{
		SPI_finish();
		PG_RETURN_INT64(0);
	}
	args[0] = Int32GetDatum(program_id);
	args[1] = CStringGetTextDatum(key);
	before.n = 0;
	loyalty_spi_check(SPI_execute_with_args(
						  "SELECT f.m_month, f.m_attachment, f.m_points, f.m_qualifying, f.m_source_rows"
						  " FROM loyalty.balance_folded f"
						  " WHERE f.program_id OPERATOR(pg_catalog.=) $1 AND f.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST,
						  2, t, args, NULL, true, 0), SPI_OK_SELECT, "read loyalty.balance_folded");
	if (SPI_processed > 0)
		months_of(&before, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, "balance_folded.m_");
	after = before;
	loyalty_spi_check(SPI_execute_with_args(
						  "SELECT d.m_month, d.m_attachment, d.m_points, d.m_qualifying, d.m_source_rows"
						  " FROM loyalty.balance_delta d"
						  " WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND d.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST,
						  2, t, args, NULL, true, 0), SPI_OK_SELECT, "read loyalty.balance_delta");
	for (i = 0; i < SPI_processed; i++)
	{
		MonthArrays m,
					sum;

		months_of(&m, SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, "balance_delta.m_");
		ledger_months_merge(&after, &m, &sum);
		after = sum;
	}
	cap = ledger_cap_change(prog, key, &before, &after);
	SPI_finish();
	PG_RETURN_INT64(cap);
}
