/*
 * ledger.c — posting.  Everything here runs as the extension owner.  A
 * statement writes one balance row per account (its totals and per-month
 * sums together), in ascending account order, so two statements never wait
 * on each other in a cycle; then one ledger insert and, rarely, the tier
 * upgrades.  Each step is one statement over arrays, never one per row;
 * arrays, not the transition table's name, carry the data, which keeps the
 * trigger working on Citus shards.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"

#include "accounts.h"
#include "ledger.h"

static SPIPlanPtr balance_plan, balance_one_plan, balance_update_plan, capfix_plan, ledger_plan, ledger_one_plan, lock_plan, upgrade_plan;

/* Adds a change to a balance row: totals, entry count, month sums merged. */
#define BALANCE_ADD(points, qualifying, entries, month, att, pts, qual, rows) \
	" SET points = b.points OPERATOR(pg_catalog.+) " points "," \
	"     qualifying = b.qualifying OPERATOR(pg_catalog.+) " qualifying "," \
	"     entry_count = b.entry_count OPERATOR(pg_catalog.+) " entries "," \
	"     updated_at = pg_catalog.now()," \
	"     (m_month, m_attachment, m_points, m_qualifying, m_source_rows) =" \
	"       (SELECT y.m_month, y.m_attachment, y.m_points, y.m_qualifying, y.m_source_rows" \
	"        FROM loyalty._month_merge(b.m_month, b.m_attachment, b.m_points, b.m_qualifying, b.m_source_rows," \
	"             " month ", " att ", " pts ", " qual ", " rows ") AS y)"
#define BALANCE_RETURNING \
	" RETURNING b.account_key, b.entry_count, b.m_month, b.m_points, b.m_qualifying"
#define BALANCE_UPSERT_TAIL \
	" ON CONFLICT (program_id, account_key) DO UPDATE" \
	BALANCE_ADD("excluded.points", "excluded.qualifying", "excluded.entry_count", "excluded.m_month", \
				"excluded.m_attachment", "excluded.m_points", "excluded.m_qualifying", "excluded.m_source_rows") \
	BALANCE_RETURNING


/*
 * Prepares every posting plan, or none: a preparation that fails (a
 * lock_timeout, a cancel) must not leave some plans set and others NULL,
 * or every later posting of the backend would fail.  Plans prepared before
 * the failure are prepared again next time (a few kilobytes lost, once).
 */
static void
prepare_plans(void)
{
	static bool prepared = false;

	if (prepared)
		return;
	{
		Oid			t[7] = {INT4OID, INT4OID, TEXTARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID, BYTEAARRAYOID};

		/*
		 * One row per account: the totals, the entry numbers handed out, and
		 * the per-month sums merged in.  ORDER BY gives the lock order.
		 */
		balance_plan = loyalty_prepare(
			"INSERT INTO loyalty.balance AS b (program_id, account_key, points, qualifying, entry_count,"
			"  m_month, m_attachment, m_points, m_qualifying, m_source_rows)"
			" SELECT $1, u.k, u.p, u.q, u.n, x.m_month, x.m_attachment, x.m_points, x.m_qualifying, x.m_source_rows"
			" FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5),"
			"                 pg_catalog.unnest($6), pg_catalog.unnest($7)) AS u(k, p, q, n, d)"
			"  CROSS JOIN LATERAL loyalty._month_delta(u.d, $2) AS x"
			" ORDER BY u.k"
			BALANCE_UPSERT_TAIL, 7, t);
	}
	{
		Oid			t[11] = {INT4OID, INT4OID, TEXTOID, INT8OID, NUMERICOID, INT8OID,
		DATEARRAYOID, INT4ARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID};

		/* the same for one account (single-row ERP transactions): less to plan and start */
		balance_one_plan = loyalty_prepare(
			"INSERT INTO loyalty.balance AS b (program_id, account_key, points, qualifying, entry_count,"
			"  m_month, m_attachment, m_points, m_qualifying, m_source_rows)"
			" VALUES ($1, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
			BALANCE_UPSERT_TAIL, 11, t);
	}
	{
		Oid			t[11] = {INT4OID, INT4OID, TEXTOID, INT8OID, NUMERICOID, INT8OID,
		DATEARRAYOID, INT4ARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID};

		/*
		 * An account seen before has its row: a plain (HOT) update costs less
		 * than the speculative insertion of an upsert.
		 */
		balance_update_plan = loyalty_prepare(
			"UPDATE loyalty.balance AS b"
			BALANCE_ADD("$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11")
			" WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.account_key OPERATOR(pg_catalog.=) $3"
			BALANCE_RETURNING, 11, t);
	}
	{
		Oid			t[3] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID};

		/* rows are already locked by balance_plan in this transaction */
		capfix_plan = loyalty_prepare(
			"UPDATE loyalty.balance AS b SET points = b.points OPERATOR(pg_catalog.+) u.c,"
			"  entry_count = b.entry_count OPERATOR(pg_catalog.+) 1"
			" FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(k, c)"
			" WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.account_key OPERATOR(pg_catalog.=) u.k"
			" RETURNING b.account_key, b.entry_count", 3, t);
	}
	{
		Oid			t[9] = {INT4OID, INT4OID, TEXTOID, TEXTARRAYOID, INT8ARRAYOID, TEXTARRAYOID,
		INT8ARRAYOID, NUMERICARRAYOID, INT4ARRAYOID};

		ledger_plan = loyalty_prepare(
			"INSERT INTO loyalty.ledger"
			" (program_id, account_key, entry_no, kind, points, qualifying, attachment_id, source_rows, reason)"
			" SELECT $1, u.k, u.e, u.kind::loyalty.ledger_kind, u.p, u.q, $2, u.r, $3"
			" FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
			"                 pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9)) AS u(k, e, kind, p, q, r)",
			9, t);
	}
	{
		Oid			t[9] = {INT4OID, INT4OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, INT8OID, NUMERICOID, INT4OID};

		ledger_one_plan = loyalty_prepare(
			"INSERT INTO loyalty.ledger"
			" (program_id, account_key, entry_no, kind, points, qualifying, attachment_id, source_rows, reason)"
			" VALUES ($1, $4, $5, $6::loyalty.ledger_kind, $7, $8, $2, $9, $3)", 9, t);
	}
	{
		Oid			t[2] = {INT4OID, TEXTARRAYOID};

		lock_plan = loyalty_prepare(
			"SELECT a.account_key, a.tier FROM loyalty.account a"
			" WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) ANY ($2)"
			" ORDER BY a.account_key FOR NO KEY UPDATE", 2, t);
	}
	{
		Oid			t[6] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, NUMERICARRAYOID, DATEARRAYOID};

		upgrade_plan = loyalty_prepare(
			"WITH u AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
			"                                    pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(k, old_tier, new_tier, q, eff)),"
			" upd AS (UPDATE loyalty.account a SET tier = u.new_tier, tier_since = pg_catalog.now()"
			"   FROM u WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) u.k)"
			" INSERT INTO loyalty.tier_history"
			" (program_id, account_key, effective_from, old_tier, new_tier, reason, rolling_qualifying)"
			" SELECT $1, u.k, u.eff, u.old_tier, u.new_tier, 'upgrade_on_accrual', u.q"
			" FROM u ORDER BY u.k", 6, t);
	}
	prepared = true;
}

int64
ledger_cap_for_month(const Program *prog, DateADT month, DateADT *ps, DateADT *pe)
{
	static const char periods[3] = {'y', 'q', 'm'};
	int			i;

	if (!prog->has_caps)
		return 0;
	/* the version in force on a period's first day decides that period's cap */
	for (i = 0; i < 3; i++)
	{
		DateADT		start = rules_cap_period_start(periods[i], month);
		const RuleVersion *r = rules_version_on(prog, start);

		if (r && r->cap_points > 0 && r->cap_period == periods[i])
		{
			*ps = start;
			*pe = rules_cap_period_next(periods[i], start);
			return r->cap_points;
		}
	}
	return 0;
}

static bool
num_eq(Numeric a, Numeric b)
{
	return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(a), NumericGetDatum(b)));
}

static bool
num_positive(Numeric a)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a),
											 NumericGetDatum(int64_to_numeric(0)))) > 0;
}

/* ---- per-month sums kept as parallel arrays on the balance row ---- */

typedef struct MonthArrays
{
	int			n;
	DateADT    *month;
	int32	   *attachment;
	int64	   *points;
	Numeric    *qualifying;
	int64	   *rows;
} MonthArrays;

static void
arrays_read(MonthArrays *m, Datum mo, Datum at, Datum pt, Datum qu, Datum ro)
{
	Datum	   *d;
	int			n,
				i;

	deconstruct_array(DatumGetArrayTypeP(mo), DATEOID, 4, true, TYPALIGN_INT, &d, NULL, &n);
	m->n = n;
	m->month = palloc(sizeof(DateADT) * (n + 1));
	for (i = 0; i < n; i++)
		m->month[i] = DatumGetDateADT(d[i]);
	m->attachment = palloc(sizeof(int32) * (n + 1));
	m->points = palloc(sizeof(int64) * (n + 1));
	m->qualifying = palloc(sizeof(Numeric) * (n + 1));
	m->rows = palloc(sizeof(int64) * (n + 1));
#define READ(arr, oid, len, byval, align, field, conv) \
	do { int n2; \
		deconstruct_array(DatumGetArrayTypeP(arr), oid, len, byval, align, &d, NULL, &n2); \
		if (n2 != n) elog(ERROR, "loyalty.balance month arrays differ in length"); \
		for (i = 0; i < n; i++) m->field[i] = conv(d[i]); } while (0)
	if (at != (Datum) 0)
		READ(at, INT4OID, 4, true, TYPALIGN_INT, attachment, DatumGetInt32);
	READ(pt, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, points, DatumGetInt64);
	READ(qu, NUMERICOID, -1, false, TYPALIGN_INT, qualifying, DatumGetNumeric);
	if (ro != (Datum) 0)
		READ(ro, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, rows, DatumGetInt64);
#undef READ
}

static Datum
arrays_result(FunctionCallInfo fcinfo, MonthArrays *m)
{
	TupleDesc	desc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = loyalty_date_array(m->month, m->n);
	values[1] = loyalty_int4_array(m->attachment, m->n);
	values[2] = loyalty_int8_array(m->points, m->n);
	values[3] = loyalty_numeric_array(m->qualifying, m->n);
	values[4] = loyalty_int8_array(m->rows, m->n);
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls));
}

/* A month's net change: what was added minus what was removed. */
static int64
net_points(const MonthDelta *d)
{
	return d->points_new + d->bonus_new - d->points_old - d->bonus_old;
}

/* One account's month changes as parallel arrays (one element per month). */
static void
delta_arrays(MonthDelta *d, int n, int32 attachment, MonthArrays *m)
{
	int			i;

	m->n = n;
	m->month = palloc(sizeof(DateADT) * (n + 1));
	m->attachment = palloc(sizeof(int32) * (n + 1));
	m->points = palloc(sizeof(int64) * (n + 1));
	m->qualifying = palloc(sizeof(Numeric) * (n + 1));
	m->rows = palloc(sizeof(int64) * (n + 1));
	for (i = 0; i < n; i++)
	{
		m->month[i] = d[i].month;
		m->attachment[i] = attachment;
		m->points[i] = net_points(&d[i]);
		m->qualifying[i] = numeric_sub_opt_error(d[i].qual_new, d[i].qual_old, NULL);
		m->rows[i] = d[i].rows_new - d[i].rows_old;
	}
}

/*
 * For a multi-account statement the same arrays travel as one bytea per
 * account (so that the balance upsert takes one array element per account):
 * a sequence of (month int32, points int64, rows int64, qualifying numeric).
 */
static bytea *
delta_encode(MonthDelta *d, int n)
{
	StringInfoData buf;
	MonthArrays m;
	int			i;

	delta_arrays(d, n, 0, &m);
	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, "\0\0\0\0", VARHDRSZ);
	for (i = 0; i < m.n; i++)
	{
		int32		month = m.month[i];
		uint32		len = VARSIZE_ANY(m.qualifying[i]);

		appendBinaryStringInfo(&buf, (char *) &month, sizeof(month));
		appendBinaryStringInfo(&buf, (char *) &m.points[i], sizeof(int64));
		appendBinaryStringInfo(&buf, (char *) &m.rows[i], sizeof(int64));
		appendBinaryStringInfo(&buf, (char *) &len, sizeof(len));
		appendBinaryStringInfo(&buf, (char *) m.qualifying[i], len);
	}
	SET_VARSIZE(buf.data, buf.len);
	return (bytea *) buf.data;
}

PG_FUNCTION_INFO_V1(loyalty_month_delta);
/* loyalty._month_delta(bytea, attachment): decodes a statement's deltas. */
Datum
loyalty_month_delta(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	int32		attachment = PG_GETARG_INT32(1);
	const char *p = VARDATA_ANY(b);
	const char *end = p + VARSIZE_ANY_EXHDR(b);
	MonthArrays m;
	int			cap = 16;

	m.n = 0;
	m.month = palloc(sizeof(DateADT) * cap);
	m.attachment = palloc(sizeof(int32) * cap);
	m.points = palloc(sizeof(int64) * cap);
	m.qualifying = palloc(sizeof(Numeric) * cap);
	m.rows = palloc(sizeof(int64) * cap);
	while (p < end)
	{
		uint32		len;

		if (end - p < 24)
			elog(ERROR, "corrupt loyalty month delta");
		if (m.n == cap)
		{
			cap *= 2;
			m.month = repalloc(m.month, sizeof(DateADT) * cap);
			m.attachment = repalloc(m.attachment, sizeof(int32) * cap);
			m.points = repalloc(m.points, sizeof(int64) * cap);
			m.qualifying = repalloc(m.qualifying, sizeof(Numeric) * cap);
			m.rows = repalloc(m.rows, sizeof(int64) * cap);
		}
		memcpy(&m.month[m.n], p, 4);
		memcpy(&m.points[m.n], p + 4, 8);
		memcpy(&m.rows[m.n], p + 12, 8);
		memcpy(&len, p + 20, 4);
		p += 24;
		if (len < VARHDRSZ || (uint32) (end - p) < len)
			elog(ERROR, "corrupt loyalty month delta");
		m.qualifying[m.n] = palloc(len);
		memcpy(m.qualifying[m.n], p, len);
		p += len;
		m.attachment[m.n] = attachment;
		m.n++;
	}
	PG_RETURN_DATUM(arrays_result(fcinfo, &m));
}

static int
entry_cmp(DateADT ma, int32 aa, DateADT mb, int32 ab)
{
	if (ma != mb)
		return ma < mb ? -1 : 1;
	return aa < ab ? -1 : aa > ab ? 1 : 0;
}

PG_FUNCTION_INFO_V1(loyalty_month_merge);
/*
 * loyalty._month_merge(five arrays, five arrays): adds two sorted sets of
 * per-month sums; elements that net to nothing disappear.
 */
Datum
loyalty_month_merge(PG_FUNCTION_ARGS)
{
	MonthArrays a,
				b,
				r;
	int			i = 0,
				j = 0;
	Numeric		zero = int64_to_numeric(0);

	arrays_read(&a, PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), PG_GETARG_DATUM(2), PG_GETARG_DATUM(3), PG_GETARG_DATUM(4));
	arrays_read(&b, PG_GETARG_DATUM(5), PG_GETARG_DATUM(6), PG_GETARG_DATUM(7), PG_GETARG_DATUM(8), PG_GETARG_DATUM(9));
	r.n = 0;
	r.month = palloc(sizeof(DateADT) * (a.n + b.n + 1));
	r.attachment = palloc(sizeof(int32) * (a.n + b.n + 1));
	r.points = palloc(sizeof(int64) * (a.n + b.n + 1));
	r.qualifying = palloc(sizeof(Numeric) * (a.n + b.n + 1));
	r.rows = palloc(sizeof(int64) * (a.n + b.n + 1));
	while (i < a.n || j < b.n)
	{
		int			c = i >= a.n ? 1 : j >= b.n ? -1 :
			entry_cmp(a.month[i], a.attachment[i], b.month[j], b.attachment[j]);
		int			k = r.n;

		if (c < 0)
		{
			r.month[k] = a.month[i];
			r.attachment[k] = a.attachment[i];
			r.points[k] = a.points[i];
			r.qualifying[k] = a.qualifying[i];
			r.rows[k] = a.rows[i];
			i++;
		}
		else if (c > 0)
		{
			r.month[k] = b.month[j];
			r.attachment[k] = b.attachment[j];
			r.points[k] = b.points[j];
			r.qualifying[k] = b.qualifying[j];
			r.rows[k] = b.rows[j];
			j++;
		}
		else
		{
			r.month[k] = a.month[i];
			r.attachment[k] = a.attachment[i];
			r.points[k] = a.points[i] + b.points[j];
			r.qualifying[k] = numeric_add_opt_error(a.qualifying[i], b.qualifying[j], NULL);
			r.rows[k] = a.rows[i] + b.rows[j];
			i++;
			j++;
		}
		if (r.points[k] != 0 || r.rows[k] != 0 || !num_eq(r.qualifying[k], zero))
			r.n++;
	}
	PG_RETURN_DATUM(arrays_result(fcinfo, &r));
}

static bool
months_change(MonthDelta *d, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		if (net_points(&d[i]) != 0 ||
			d[i].rows_new != d[i].rows_old || !num_eq(d[i].qual_new, d[i].qual_old))
			return true;
	return false;
}

typedef struct AccountSums
{
	char	   *account;
	int			first_delta;	/* its deltas are d[first_delta .. +ndeltas) */
	int			ndeltas;
	int64		pn,
				po,
				bonus,
				cap;
	Numeric		qn,
				qo;
	int64		rn,
				ro;
	bool		has_old;		/* write an entry for removed rows */
	bool		has_new;		/* write an entry for added rows */
	int			nentries;		/* without the cap entry */
	int64		first_entry;
	int64		cap_entry;
	Numeric		rolling;		/* rolling qualifying spend after the statement */
	DateADT		last_doc_date;	/* the latest document date ever accrued (0: none) */
	bool		written;		/* its balance row was written */
	const char *tier;			/* cached current tier, NULL if none or unknown */
} AccountSums;

/* Did the statement add qualifying spend to the rolling window? */
static bool
window_grew(MonthDelta *d, AccountSums *s, DateADT first, DateADT last)
{
	Numeric		sum = int64_to_numeric(0);
	int			i;

	for (i = s->first_delta; i < s->first_delta + s->ndeltas; i++)
		if (d[i].month >= first && d[i].month <= last)
			sum = numeric_add_opt_error(sum, numeric_sub_opt_error(d[i].qual_new, d[i].qual_old, NULL), NULL);
	return num_positive(sum);
}

static int
find_sums(AccountSums *sums, int nsums, const char *key)
{
	int			lo = 0,
				hi = nsums - 1;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (strcmp(sums[mid].account, key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (nsums == 0 || strcmp(sums[lo].account, key) != 0)
		elog(ERROR, "account \"%s\" came back from loyalty.balance unasked", key);
	return lo;
}

/*
 * Caps act on the sums of whole cap periods: what the period earned after
 * the statement, capped, minus what it earned before, capped.
 */
static void
apply_caps(Program *prog, MonthDelta *d, AccountSums *s, MonthArrays *after)
{
	int			i;

	for (i = s->first_delta; i < s->first_delta + s->ndeltas; i++)
	{
		DateADT		ps,
					pe;
		int64		cap = ledger_cap_for_month(prog, d[i].month, &ps, &pe);
		int64		delta = 0,
					total = 0;
		int			j;

		if (cap == 0)
			continue;
		/* each period once: only at its first delta month */
		if (i > s->first_delta && d[i - 1].month >= ps)
			continue;
		for (j = i; j < s->first_delta + s->ndeltas && d[j].month < pe; j++)
			delta += net_points(&d[j]);
		for (j = 0; j < after->n; j++)
			if (after->month[j] >= ps && after->month[j] < pe)
				total += after->points[j];
		s->cap += (Min(cap, total) - Min(cap, total - delta)) - delta;
	}
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

static void
upgrade_tiers(Program *prog, AccountSums *sums, int nsums)
{
	char	  **rk = palloc(sizeof(char *) * (nsums + 1));
	int		   *rank = palloc(sizeof(int) * (nsums + 1));
	Numeric    *rq = palloc(sizeof(Numeric) * (nsums + 1));
	DateADT    *rlast = palloc(sizeof(DateADT) * (nsums + 1));
	int			nr = 0;
	char	  **uk,
			  **uo,
			  **un;
	Numeric    *uq;
	DateADT    *ueff;
	DateADT		tomorrow = rules_today(prog) + 1;
	bool	   *onulls;
	int			nu = 0;
	Datum		args[6];
	uint64		i;
	int			j;

	for (j = 0; j < nsums; j++)
	{
		int			idx;

		if (sums[j].rolling == NULL)
			continue;
		idx = tier_ladder_index(prog->ladder, sums[j].rolling);
		/* most statements move no account past its next threshold */
		if (idx < 0 || (sums[j].tier && idx <= tier_ladder_find(prog->ladder, sums[j].tier)))
			continue;
		rk[nr] = sums[j].account;
		rank[nr] = idx;
		rq[nr] = sums[j].rolling;
		rlast[nr] = sums[j].last_doc_date;
		nr++;
	}
	if (nr == 0)
		return;

	/* lock the candidates in key order, then compare with their real tier */
	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(rk, NULL, nr);
	if (SPI_execute_plan(lock_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not lock accounts");
	uk = palloc(sizeof(char *) * nr);
	uo = palloc(sizeof(char *) * nr);
	un = palloc(sizeof(char *) * nr);
	uq = palloc(sizeof(Numeric) * nr);
	ueff = palloc(sizeof(DateADT) * nr);
	onulls = palloc(sizeof(bool) * nr);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *cur = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		int			cur_idx = cur ? tier_ladder_find(prog->ladder, cur) : -1;

		for (j = 0; j < nr; j++)
			if (strcmp(rk[j], key) == 0)
				break;
		if (j == nr || rank[j] <= cur_idx)
			continue;
		uk[nu] = key;
		uo[nu] = cur;
		onulls[nu] = (cur == NULL);
		un[nu] = pstrdup(tier_ladder_name(prog->ladder, rank[j]));
		uq[nu] = rq[j];
		ueff[nu] = upgrade_effective_from(tomorrow, rlast[j]);
		nu++;
	}
	if (nu == 0)
		return;
	args[1] = loyalty_text_array(uk, NULL, nu);
	args[2] = loyalty_text_array(uo, onulls, nu);
	args[3] = loyalty_text_array(un, NULL, nu);
	args[4] = loyalty_numeric_array(uq, nu);
	args[5] = loyalty_date_array(ueff, nu);
	if (SPI_execute_plan(upgrade_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record tier upgrades");
	for (j = 0; j < nu; j++)
		accounts_note_tier(prog, uk[j], un[j], ueff[j]);
}

void
ledger_post(Program *prog, int32 attachment_id, MonthDelta *d, int n,
			const char *kind_new, const char *kind_old, const char *reason)
{
	OwnerScope	scope;
	AccountSums *sums = palloc0(sizeof(AccountSums) * (n > 0 ? n : 1));
	int			nsums = 0;
	int			i;
	Numeric		zero = int64_to_numeric(0);
	DateADT		window_last = 0,
				window_first = 0;
	char	  **capk;
	int64	   *capv;
	int			ncap = 0;

	if (n == 0)
		return;
	prepare_plans();
	if (prog->ladder != NULL)
	{
		window_last = loyalty_month_start(rules_today(prog));
		window_first = loyalty_add_months(window_last, -(prog->window_months - 1));
	}

	/* per-account sums of the (account, month)-sorted deltas */
	for (i = 0; i < n; i++)
	{
		AccountSums *s;

		if (nsums == 0 || strcmp(sums[nsums - 1].account, d[i].account) != 0)
		{
			s = &sums[nsums++];
			s->account = d[i].account;
			s->tier = d[i].tier;
			s->first_delta = i;
			s->qn = s->qo = zero;
		}
		s = &sums[nsums - 1];
		s->ndeltas++;
		s->pn += d[i].points_new;
		s->po += d[i].points_old;
		s->bonus += d[i].bonus_new - d[i].bonus_old;
		s->qn = numeric_add_opt_error(s->qn, d[i].qual_new, NULL);
		s->qo = numeric_add_opt_error(s->qo, d[i].qual_old, NULL);
		s->rn += d[i].rows_new;
		s->ro += d[i].rows_old;
	}

	loyalty_enter_owner(&scope);

	/* 1. balances with their per-month sums: one row per account */
	{
		char	  **k = palloc(sizeof(char *) * nsums);
		int64	   *p = palloc(sizeof(int64) * nsums);
		Numeric    *q = palloc(sizeof(Numeric) * nsums);
		int64	   *e = palloc(sizeof(int64) * nsums);
		Datum	   *deltas = palloc(sizeof(Datum) * nsums);
		Datum		args[11];
		uint64		j;
		int			nb = 0;
		int		   *which = palloc(sizeof(int) * nsums);	/* sums index of each row */

		for (i = 0; i < nsums; i++)
		{
			AccountSums *s = &sums[i];
			bool		cancels = (s->pn == s->po && s->rn == s->ro && num_eq(s->qn, s->qo));

			s->has_old = !cancels && (s->ro != 0 || s->po != 0 || !num_eq(s->qo, zero));
			s->has_new = !cancels && (s->rn != 0 || s->pn != 0 || !num_eq(s->qn, zero));
			s->nentries = s->has_old + s->has_new + (s->bonus != 0);
			/* an UPDATE that changed nothing loyalty-relevant writes nothing */
			if (s->nentries == 0 && !months_change(&d[s->first_delta], s->ndeltas))
				continue;
			k[nb] = s->account;
			p[nb] = (cancels ? 0 : s->pn - s->po) + s->bonus;
			q[nb] = cancels ? zero : numeric_sub_opt_error(s->qn, s->qo, NULL);
			e[nb] = s->nentries;
			which[nb++] = i;
		}
		for (i = 0; nb > 1 && i < nb; i++)
			deltas[i] = PointerGetDatum(delta_encode(&d[sums[which[i]].first_delta], sums[which[i]].ndeltas));
		if (nb == 0)
		{
			loyalty_leave_owner(&scope);
			return;
		}
		args[0] = Int32GetDatum(prog->id);
		args[1] = Int32GetDatum(attachment_id);
		if (nb == 1)
		{
			/* one account: its month sums as arrays, no bytea to decode */
			AccountSums *s = &sums[which[0]];
			MonthArrays m;

			delta_arrays(&d[s->first_delta], s->ndeltas, attachment_id, &m);
			args[2] = CStringGetTextDatum(k[0]);
			args[3] = Int64GetDatum(p[0]);
			args[4] = NumericGetDatum(q[0]);
			args[5] = Int64GetDatum(e[0]);
			args[6] = loyalty_date_array(m.month, m.n);
			args[7] = loyalty_int4_array(m.attachment, m.n);
			args[8] = loyalty_int8_array(m.points, m.n);
			args[9] = loyalty_numeric_array(m.qualifying, m.n);
			args[10] = loyalty_int8_array(m.rows, m.n);
		}
		else
		{
			args[2] = loyalty_text_array(k, NULL, nb);
			args[3] = loyalty_int8_array(p, nb);
			args[4] = loyalty_numeric_array(q, nb);
			args[5] = loyalty_int8_array(e, nb);
			args[6] = PointerGetDatum(construct_array(deltas, nb, BYTEAOID, -1, false, TYPALIGN_INT));
		}
		if (nb == 1)
		{
			if (SPI_execute_plan(balance_update_plan, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
				elog(ERROR, "could not update loyalty.balance");
			if (SPI_processed == 0 &&
				SPI_execute_plan(balance_one_plan, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
				elog(ERROR, "could not update loyalty.balance");
		}
		else if (SPI_execute_plan(balance_plan, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not update loyalty.balance");
		if (SPI_processed != (uint64) nb)
			elog(ERROR, "could not update loyalty.balance");

		capk = palloc(sizeof(char *) * nsums);
		capv = palloc(sizeof(int64) * nsums);
		for (j = 0; j < SPI_processed; j++)
		{
			HeapTuple	tup = SPI_tuptable->vals[j];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			AccountSums *s = &sums[find_sums(sums, nsums, SPI_getvalue(tup, desc, 1))];
			MonthArrays after;
			int			m;

			s->written = true;
			s->first_entry = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull)) - s->nentries + 1;
			if (!prog->has_caps && !(prog->ladder && window_grew(d, s, window_first, window_last)))
				continue;
			arrays_read(&after, SPI_getbinval(tup, desc, 3, &isnull), (Datum) 0,
						SPI_getbinval(tup, desc, 4, &isnull), SPI_getbinval(tup, desc, 5, &isnull), (Datum) 0);
			if (prog->has_caps)
			{
				apply_caps(prog, d, s, &after);
				if (s->cap != 0)
				{
					capk[ncap] = s->account;
					capv[ncap++] = s->cap;
				}
			}
			/* an upgrade is possible only when the window's spend grew */
			if (prog->ladder && window_grew(d, s, window_first, window_last))
			{
				s->rolling = zero;
				for (m = 0; m < after.n; m++)
					if (after.month[m] >= window_first && after.month[m] <= window_last)
						s->rolling = numeric_add_opt_error(s->rolling, after.qualifying[m], NULL);
			}
		}
	}

	/* 2. what caps withheld or gave back: one more entry per account */
	if (ncap > 0)
	{
		Datum		args[3];
		uint64		j;

		args[0] = Int32GetDatum(prog->id);
		args[1] = loyalty_text_array(capk, NULL, ncap);
		args[2] = loyalty_int8_array(capv, ncap);
		if (SPI_execute_plan(capfix_plan, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING ||
			SPI_processed != (uint64) ncap)
			elog(ERROR, "could not apply caps to loyalty.balance");
		for (j = 0; j < SPI_processed; j++)
		{
			bool		isnull;
			AccountSums *s = &sums[find_sums(sums, nsums, SPI_getvalue(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1))];

			s->cap_entry = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 2, &isnull));
		}
	}

	/* 3. the ledger entries */
	{
		int			maxe = nsums * 4;
		char	  **ek = palloc(sizeof(char *) * maxe);
		int64	   *eno = palloc(sizeof(int64) * maxe);
		char	  **ekind = palloc(sizeof(char *) * maxe);
		int64	   *ep = palloc(sizeof(int64) * maxe);
		Numeric    *eq = palloc(sizeof(Numeric) * maxe);
		int32	   *er = palloc(sizeof(int32) * maxe);
		int			ne = 0;
		Datum		args[9];

		for (i = 0; i < nsums; i++)
		{
			AccountSums *s = &sums[i];
			int64		e = s->first_entry;

			if (!s->written)
				continue;

#define ENTRY(no_, kind_, p_, q_, r_) \
			do { ek[ne] = s->account; eno[ne] = (no_); ekind[ne] = (char *) (kind_); \
				 ep[ne] = (p_); eq[ne] = (q_); er[ne] = (int32) (r_); ne++; } while (0)
			if (s->has_old)
				ENTRY(e++, kind_old, -s->po, DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(s->qo))), Abs(s->ro));
			if (s->has_new)
				ENTRY(e++, kind_new, s->pn, s->qn, Abs(s->rn));
			if (s->bonus != 0)
				ENTRY(e++, "bonus", s->bonus, zero, 0);
			if (s->cap != 0)
				ENTRY(s->cap_entry, "cap", s->cap, zero, 0);
#undef ENTRY
		}
		if (ne > 0)
		{
			args[0] = Int32GetDatum(prog->id);
			args[1] = Int32GetDatum(attachment_id);
			args[2] = CStringGetTextDatum(reason);
			if (ne == 1)
			{
				args[3] = CStringGetTextDatum(ek[0]);
				args[4] = Int64GetDatum(eno[0]);
				args[5] = CStringGetTextDatum(ekind[0]);
				args[6] = Int64GetDatum(ep[0]);
				args[7] = NumericGetDatum(eq[0]);
				args[8] = Int32GetDatum(er[0]);
			}
			else
			{
				args[3] = loyalty_text_array(ek, NULL, ne);
				args[4] = loyalty_int8_array(eno, ne);
				args[5] = loyalty_text_array(ekind, NULL, ne);
				args[6] = loyalty_int8_array(ep, ne);
				args[7] = loyalty_numeric_array(eq, ne);
				args[8] = loyalty_int4_array(er, ne);
			}
			if (SPI_execute_plan(ne == 1 ? ledger_one_plan : ledger_plan, args, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not write loyalty.ledger");
		}
	}

	/* 4. upgrades on accrual; downgrades wait for settlement */
	if (prog->ladder != NULL)
		upgrade_tiers(prog, sums, nsums);

	loyalty_leave_owner(&scope);
}
