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
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "accounts.h"
#include "ledger.h"

static SPIPlanPtr balance_plan, balance_one_plan, balance_update_plan, capfix_plan, ledger_plan, ledger_one_plan, lock_plan, upgrade_plan;

/* loyalty.balance's row type, the element type of balance_plan's array */
static Oid	balance_type = InvalidOid;

/*
 * Points overflow.  A statement whose points for one account add up beyond
 * bigint fails with this error instead of posting a wrapped sum: every row
 * of it is valid on its own (a row whose own points do not fit is parked by
 * rules.c), so there is no row to park, and parking an arbitrary one would
 * make the result depend on the order of the rows.  The ERP's statement
 * fails; no balance is ever corrupted.
 */
static void
points_overflow(const Program *prog, const char *account, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("%s of account \"%s\" in loyalty program \"%s\" would exceed the bigint range",
					what, account, prog->name),
			 errdetail("Points are bigint: an account's balance, ledger entries and per-month sums must stay between -9223372036854775808 and 9223372036854775807."),
			 errhint("The statement was not applied. Check the amounts of this account's rows.")));
}

int64
ledger_add_points(int64 a, int64 b, const Program *prog, const char *account)
{
	int64		r;

	if (unlikely(pg_add_s64_overflow(a, b, &r)))
		points_overflow(prog, account, "points");
	return r;
}

static int64
sub_points(int64 a, int64 b, const Program *prog, const char *account)
{
	int64		r;

	if (unlikely(pg_sub_s64_overflow(a, b, &r)))
		points_overflow(prog, account, "points");
	return r;
}

static int64
add_rows(int64 a, int64 b, const Program *prog, const char *account)
{
	int64		r;

	if (unlikely(pg_add_s64_overflow(a, b, &r)))
		points_overflow(prog, account, "source rows");
	return r;
}

/* A ledger entry's source_rows column is an integer. */
static int32
entry_rows(int64 rows, const Program *prog, const char *account)
{
	if (rows < 0 ? rows < -(int64) PG_INT32_MAX : rows > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("source rows of account \"%s\" in loyalty program \"%s\" exceed the integer range",
						account, prog->name),
				 errdetail("One ledger entry sums %lld rows; loyalty.ledger.source_rows is an integer.",
						   (long long) rows),
				 errhint("Load the rows in several statements.")));
	return (int32) Abs(rows);
}

/*
 * Whether b.points + add stays in bigint, as SQL that cannot itself fail: a
 * balance row that would overflow is left alone and missing from RETURNING,
 * and ledger_post() names the account in a clear error.
 */
#define POINTS_FIT(add) \
	" ((" add " OPERATOR(pg_catalog.>=) 0 AND b.points OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) " add "))" \
	"  OR (" add " OPERATOR(pg_catalog.<) 0 AND b.points OPERATOR(pg_catalog.>=) ((-9223372036854775807 OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.-) " add ")))"

/* Adds a change to a balance row: totals, entry count, month sums merged. */
#define BALANCE_ADD(points, qualifying, entries, month, att, pts, qual, rows, last) \
	" SET points = b.points OPERATOR(pg_catalog.+) " points "," \
	"     last_doc_date = GREATEST(b.last_doc_date, " last ")," \
	"     qualifying = b.qualifying OPERATOR(pg_catalog.+) " qualifying "," \
	"     entry_count = b.entry_count OPERATOR(pg_catalog.+) " entries "," \
	"     updated_at = pg_catalog.now()," \
	"     (m_month, m_attachment, m_points, m_qualifying, m_source_rows) =" \
	"       (SELECT y.m_month, y.m_attachment, y.m_points, y.m_qualifying, y.m_source_rows" \
	"        FROM loyalty._month_merge(b.m_month, b.m_attachment, b.m_points, b.m_qualifying, b.m_source_rows," \
	"             " month ", " att ", " pts ", " qual ", " rows ") AS y)"
#define BALANCE_RETURNING \
	" RETURNING b.account_key, b.entry_count, b.m_month, b.m_points, b.m_qualifying, b.last_doc_date"
#define BALANCE_UPSERT_TAIL \
	" ON CONFLICT (program_id, account_key) DO UPDATE" \
	BALANCE_ADD("excluded.points", "excluded.qualifying", "excluded.entry_count", "excluded.m_month", \
				"excluded.m_attachment", "excluded.m_points", "excluded.m_qualifying", "excluded.m_source_rows", \
				"excluded.last_doc_date") \
	" WHERE" POINTS_FIT("excluded.points") \
	BALANCE_RETURNING

/* The row type of loyalty.balance as it is now (it changes when the extension is re-created). */
static Oid
current_balance_type(void)
{
	Oid			rel = get_relname_relid("balance", get_namespace_oid("loyalty", false));

	if (!OidIsValid(rel))
		elog(ERROR, "relation loyalty.balance does not exist");
	return get_rel_type_id(rel);
}


static void
prepare_balance_plan(void)
{
	Oid			type = current_balance_type();
	Oid			t[2] = {INT4OID, InvalidOid};

	if (balance_plan != NULL && type == balance_type)
		return;
	if (balance_plan != NULL)
		SPI_freeplan(balance_plan);
	balance_plan = NULL;
	t[1] = get_array_type(type);

	/*
	 * One row per account: the totals, the entry numbers handed out, and
	 * the per-month sums merged in.  The changes come as rows of the table's
	 * own type, each with its month sums as typed arrays, so that nothing
	 * has to be encoded or decoded.  ORDER BY gives the lock order.
	 */
	balance_plan = loyalty_prepare(
		"INSERT INTO loyalty.balance AS b (program_id, account_key, points, qualifying, entry_count,"
		"  m_month, m_attachment, m_points, m_qualifying, m_source_rows, last_doc_date)"
		" SELECT $1, u.account_key, u.points, u.qualifying, u.entry_count,"
		"  u.m_month, u.m_attachment, u.m_points, u.m_qualifying, u.m_source_rows, u.last_doc_date"
		" FROM pg_catalog.unnest($2) AS u"
		" ORDER BY u.account_key"
		BALANCE_UPSERT_TAIL, 2, t);
	balance_type = type;
}

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

	prepare_balance_plan();
	if (prepared)
		return;
	{
		Oid			t[12] = {INT4OID, INT4OID, TEXTOID, INT8OID, NUMERICOID, INT8OID,
		DATEARRAYOID, INT4ARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID, DATEOID};

		/* the same for one account (single-row ERP transactions): less to plan and start */
		balance_one_plan = loyalty_prepare(
			"INSERT INTO loyalty.balance AS b (program_id, account_key, points, qualifying, entry_count,"
			"  m_month, m_attachment, m_points, m_qualifying, m_source_rows, last_doc_date)"
			" VALUES ($1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
			BALANCE_UPSERT_TAIL, 12, t);
	}
	{
		Oid			t[12] = {INT4OID, INT4OID, TEXTOID, INT8OID, NUMERICOID, INT8OID,
		DATEARRAYOID, INT4ARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID, DATEOID};

		/*
		 * An account seen before has its row: a plain (HOT) update costs less
		 * than the speculative insertion of an upsert.
		 */
		balance_update_plan = loyalty_prepare(
			"UPDATE loyalty.balance AS b"
			BALANCE_ADD("$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12")
			" WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.account_key OPERATOR(pg_catalog.=) $3"
			"   AND" POINTS_FIT("$4")
			BALANCE_RETURNING, 12, t);
	}
	{
		Oid			t[3] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID};

		/* rows are already locked by balance_plan in this transaction */
		capfix_plan = loyalty_prepare(
			"UPDATE loyalty.balance AS b SET points = b.points OPERATOR(pg_catalog.+) u.c,"
			"  entry_count = b.entry_count OPERATOR(pg_catalog.+) 1"
			" FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(k, c)"
			" WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.account_key OPERATOR(pg_catalog.=) u.k"
			"   AND" POINTS_FIT("u.c")
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

/*
 * Caps nest: a version's cap applies to the periods that start while it is
 * in force, and every cap whose period covers a month applies to it, the
 * month's first, then its quarter's, then its year's.  A year cap in force
 * on 1 January and a month cap from a version starting in April both hold
 * from April on.
 */
int
ledger_caps_for_month(const Program *prog, DateADT month, LedgerCap caps[3])
{
	static const char periods[3] = {'y', 'q', 'm'};
	int			i,
				n = 0;

	if (!prog->has_caps)
		return 0;
	for (i = 0; i < 3; i++)
	{
		DateADT		start = rules_cap_period_start(periods[i], month);
		const RuleVersion *r = rules_version_on(prog, start);

		if (r && r->cap_points > 0 && r->cap_period == periods[i])
		{
			caps[n].period = periods[i];
			caps[n].start = start;
			caps[n].end = rules_cap_period_next(periods[i], start);
			caps[n].points = r->cap_points;
			n++;
		}
	}
	return n;
}

static int64
cap_of(const Program *prog, char period, DateADT start)
{
	const RuleVersion *r = rules_version_on(prog, start);

	return (r && r->cap_points > 0 && r->cap_period == period) ? r->cap_points : -1;
}

/*
 * The points of one calendar year's twelve months (uncapped, net) after
 * its caps: each month's cap, then each quarter's over its capped months,
 * then the year's over its capped quarters.
 */
int64
ledger_capped_year(const Program *prog, DateADT year_start, const int64 month_points[12],
				   const char *account)
{
	int64		year = 0;
	int64		cap;
	int			q,
				m;

	for (q = 0; q < 4; q++)
	{
		int64		quarter = 0;

		for (m = 3 * q; m < 3 * q + 3; m++)
		{
			int64		v = month_points[m];

			cap = cap_of(prog, 'm', loyalty_add_months(year_start, m));
			quarter = ledger_add_points(quarter, cap >= 0 ? Min(v, cap) : v, prog, account);
		}
		cap = cap_of(prog, 'q', loyalty_add_months(year_start, 3 * q));
		year = ledger_add_points(year, cap >= 0 ? Min(quarter, cap) : quarter, prog, account);
	}
	cap = cap_of(prog, 'y', year_start);
	return cap >= 0 ? Min(year, cap) : year;
}

/* 0..11: a document month's place in its calendar year. */
static int
month_of_year(DateADT month)
{
	int			y,
				m,
				d;

	j2date(month + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	return m - 1;
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

static char *
iso_date(DateADT d)
{
	int			y,
				m,
				day;

	if (DATE_NOT_FINITE(d))
		return pstrdup(DATE_IS_NOBEGIN(d) ? "-infinity" : "infinity");
	j2date(d + POSTGRES_EPOCH_JDATE, &y, &m, &day);
	return psprintf("%04d-%02d-%02d", y, m, day);
}

/*
 * Reads the five arrays (attachments and rows may be left out: (Datum) 0).
 * Months are finite, in ascending (month, attachment) order without
 * duplicates, sums of qualifying spend are finite numbers.
 */
static void
arrays_read(MonthArrays *m, const char *prefix, Datum mo, Datum at, Datum pt, Datum qu, Datum ro)
{
	Datum	   *d;
	int			n,
				i;

	d = loyalty_array_items(mo, DATEOID, prefix, "month", -1, NULL, &n);
	m->n = n;
	m->month = palloc(sizeof(DateADT) * (n + 1));
	for (i = 0; i < n; i++)
		m->month[i] = DatumGetDateADT(d[i]);
	m->attachment = palloc0(sizeof(int32) * (n + 1));
	m->points = palloc(sizeof(int64) * (n + 1));
	m->qualifying = palloc(sizeof(Numeric) * (n + 1));
	m->rows = palloc0(sizeof(int64) * (n + 1));
	if (at != (Datum) 0)
	{
		d = loyalty_array_items(at, INT4OID, prefix, "attachment", n, "month", &n);
		for (i = 0; i < n; i++)
			m->attachment[i] = DatumGetInt32(d[i]);
	}
	d = loyalty_array_items(pt, INT8OID, prefix, "points", n, "month", &n);
	for (i = 0; i < n; i++)
		m->points[i] = DatumGetInt64(d[i]);
	d = loyalty_array_items(qu, NUMERICOID, prefix, "qualifying", n, "month", &n);
	for (i = 0; i < n; i++)
	{
		m->qualifying[i] = DatumGetNumeric(d[i]);
		if (numeric_is_nan(m->qualifying[i]) || numeric_is_inf(m->qualifying[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%squalifying must hold finite numbers", prefix),
					 errdetail("Element %d is %s.", i + 1,
							   numeric_is_nan(m->qualifying[i]) ? "NaN" : "infinite")));
	}
	if (ro != (Datum) 0)
	{
		d = loyalty_array_items(ro, INT8OID, prefix, "source_rows", n, "month", &n);
		for (i = 0; i < n; i++)
			m->rows[i] = DatumGetInt64(d[i]);
	}
	for (i = 0; i < n; i++)
	{
		if (DATE_NOT_FINITE(m->month[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%smonth must hold finite dates", prefix),
					 errdetail("Element %d is %s.", i + 1, iso_date(m->month[i]))));
		if (at != (Datum) 0 && i > 0 &&
			(m->month[i] < m->month[i - 1] ||
			 (m->month[i] == m->month[i - 1] && m->attachment[i] <= m->attachment[i - 1])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("per-month sums must be in ascending (month, attachment) order without duplicates"),
					 errdetail("%smonth element %d (%s, attachment %d) follows (%s, attachment %d).", prefix,
							   i + 1, iso_date(m->month[i]), m->attachment[i],
							   iso_date(m->month[i - 1]), m->attachment[i - 1])));
	}
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
net_points(const Program *prog, const MonthDelta *d)
{
	int64		added = ledger_add_points(d->points_new, d->bonus_new, prog, d->account);
	int64		removed = ledger_add_points(d->points_old, d->bonus_old, prog, d->account);

	return sub_points(added, removed, prog, d->account);
}

/* One account's month changes as parallel arrays (one element per month). */
static void
delta_arrays(const Program *prog, MonthDelta *d, int n, int32 attachment, MonthArrays *m)
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
		m->points[i] = net_points(prog, &d[i]);
		m->qualifying[i] = numeric_sub_opt_error(d[i].qual_new, d[i].qual_old, NULL);
		if (unlikely(pg_sub_s64_overflow(d[i].rows_new, d[i].rows_old, &m->rows[i])))
			points_overflow(prog, d[i].account, "source rows");
	}
}

PG_FUNCTION_INFO_V1(loyalty_month_delta);
/*
 * loyalty._month_delta(bytea, attachment) of 1.0 decoded raw bytes into
 * numerics: crafted bytes crashed the backend.  Statements now pass the
 * per-month sums as typed arrays; the symbol stays for 1.0's install script.
 */
Datum
loyalty_month_delta(PG_FUNCTION_ARGS)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("loyalty._month_delta() was removed in loyalty 1.1"),
			 errhint("Run ALTER EXTENSION loyalty UPDATE.")));
	PG_RETURN_NULL();
}

static int
entry_cmp(DateADT ma, int32 aa, DateADT mb, int32 ab)
{
	if (ma != mb)
		return ma < mb ? -1 : 1;
	return aa < ab ? -1 : aa > ab ? 1 : 0;
}

/* The sum of one month's element on both sides, or a clear error. */
static int64
merge_add(int64 a, int64 b, const char *what, DateADT month)
{
	int64		r;

	if (unlikely(pg_add_s64_overflow(a, b, &r)))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("per-month %s of %s would exceed the bigint range", what, iso_date(month)),
				 errdetail("%lld + %lld does not fit in a bigint.", (long long) a, (long long) b),
				 errhint("The statement was not applied. Check the amounts of the rows dated in that month.")));
	return r;
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

	arrays_read(&a, "a_", PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), PG_GETARG_DATUM(2), PG_GETARG_DATUM(3), PG_GETARG_DATUM(4));
	arrays_read(&b, "b_", PG_GETARG_DATUM(5), PG_GETARG_DATUM(6), PG_GETARG_DATUM(7), PG_GETARG_DATUM(8), PG_GETARG_DATUM(9));
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
			r.points[k] = merge_add(a.points[i], b.points[j], "points", a.month[i]);
			r.qualifying[k] = numeric_add_opt_error(a.qualifying[i], b.qualifying[j], NULL);
			r.rows[k] = merge_add(a.rows[i], b.rows[j], "source rows", a.month[i]);
			i++;
			j++;
		}
		if (r.points[k] != 0 || r.rows[k] != 0 || !num_eq(r.qualifying[k], zero))
			r.n++;
	}
	PG_RETURN_DATUM(arrays_result(fcinfo, &r));
}

static bool
months_change(const Program *prog, MonthDelta *d, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		if (net_points(prog, &d[i]) != 0 ||
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
	DateADT		max_date;		/* the latest document date this statement adds (0: none) */
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
 * Caps act on whole calendar years (the outermost cap period): what the
 * year earned after the statement, capped, minus what it earned before,
 * capped, against the uncapped change; the difference is withheld (or
 * given back) by the account's cap entry.
 */
static void
apply_caps(Program *prog, MonthDelta *d, AccountSums *s, MonthArrays *after)
{
	int			i = s->first_delta;
	int			end = s->first_delta + s->ndeltas;

	while (i < end)
	{
		DateADT		ys = rules_cap_period_start('y', d[i].month);
		DateADT		ye = rules_cap_period_next('y', ys);
		int64		now[12] = {0},
					was[12];
		int64		raw = 0,
					capped;
		int			j;

		for (j = 0; j < after->n; j++)
			if (after->month[j] >= ys && after->month[j] < ye)
				now[month_of_year(after->month[j])] =
					ledger_add_points(now[month_of_year(after->month[j])], after->points[j], prog, s->account);
		memcpy(was, now, sizeof(was));
		for (; i < end && d[i].month < ye; i++)
		{
			int64		change = net_points(prog, &d[i]);

			was[month_of_year(d[i].month)] = sub_points(was[month_of_year(d[i].month)], change, prog, s->account);
			raw = ledger_add_points(raw, change, prog, s->account);
		}
		capped = sub_points(ledger_capped_year(prog, ys, now, s->account),
							ledger_capped_year(prog, ys, was, s->account), prog, s->account);
		s->cap = ledger_add_points(s->cap, sub_points(capped, raw, prog, s->account), prog, s->account);
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
	loyalty_spi_check(SPI_execute_plan(lock_plan, args, NULL, false, 0), SPI_OK_SELECT,
					  "lock accounts");
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
	loyalty_spi_check(SPI_execute_plan(upgrade_plan, args, NULL, false, 0), SPI_OK_INSERT,
					  "record tier upgrades");
	for (j = 0; j < nu; j++)
		accounts_note_tier(prog, uk[j], un[j], ueff[j]);
}

/*
 * The multi-account upsert's argument: for each account, a loyalty.balance
 * row holding the change (totals, entries handed out, month sums), as an
 * array of the table's own row type.
 */
static Datum
balance_changes(const Program *prog, int32 attachment_id, MonthDelta *d, AccountSums *sums,
				const int *which, int nb, const int64 *p, const Numeric *q, const int64 *e)
{
	static const char *const names[] = {"account_key", "points", "qualifying", "entry_count",
	"m_month", "m_attachment", "m_points", "m_qualifying", "m_source_rows", "last_doc_date"};
	TupleDesc	desc = lookup_rowtype_tupdesc(balance_type, -1);
	int			col[lengthof(names)];
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	Datum	   *rows = palloc(sizeof(Datum) * nb);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			i,
				a;

	for (i = 0; i < (int) lengthof(names); i++)
	{
		for (a = 0; a < desc->natts; a++)
			if (!TupleDescAttr(desc, a)->attisdropped &&
				strcmp(NameStr(TupleDescAttr(desc, a)->attname), names[i]) == 0)
				break;
		if (a == desc->natts)
			elog(ERROR, "loyalty.balance has no column %s", names[i]);
		col[i] = a;
	}
	for (i = 0; i < nb; i++)
	{
		AccountSums *s = &sums[which[i]];
		MonthArrays m;

		delta_arrays(prog, &d[s->first_delta], s->ndeltas, attachment_id, &m);
		memset(nulls, true, sizeof(bool) * desc->natts);
		for (a = 0; a < (int) lengthof(names); a++)
			nulls[col[a]] = false;
		values[col[0]] = CStringGetTextDatum(s->account);
		values[col[1]] = Int64GetDatum(p[i]);
		values[col[2]] = NumericGetDatum(q[i]);
		values[col[3]] = Int64GetDatum(e[i]);
		values[col[4]] = loyalty_date_array(m.month, m.n);
		values[col[5]] = loyalty_int4_array(m.attachment, m.n);
		values[col[6]] = loyalty_int8_array(m.points, m.n);
		values[col[7]] = loyalty_numeric_array(m.qualifying, m.n);
		values[col[8]] = loyalty_int8_array(m.rows, m.n);
		values[col[9]] = DateADTGetDatum(s->max_date);
		nulls[col[9]] = (s->max_date == 0);
		rows[i] = HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
	}
	ReleaseTupleDesc(desc);
	get_typlenbyvalalign(balance_type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(rows, nb, balance_type, typlen, typbyval, typalign));
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
		s->pn = ledger_add_points(s->pn, d[i].points_new, prog, s->account);
		s->po = ledger_add_points(s->po, d[i].points_old, prog, s->account);
		s->bonus = ledger_add_points(s->bonus, sub_points(d[i].bonus_new, d[i].bonus_old, prog, s->account),
									 prog, s->account);
		s->qn = numeric_add_opt_error(s->qn, d[i].qual_new, NULL);
		s->qo = numeric_add_opt_error(s->qo, d[i].qual_old, NULL);
		s->rn = add_rows(s->rn, d[i].rows_new, prog, s->account);
		s->ro = add_rows(s->ro, d[i].rows_old, prog, s->account);
		s->max_date = Max(s->max_date, d[i].max_date);
	}

	loyalty_enter_owner(&scope);

	/* 1. balances with their per-month sums: one row per account */
	{
		char	  **k = palloc(sizeof(char *) * nsums);
		int64	   *p = palloc(sizeof(int64) * nsums);
		Numeric    *q = palloc(sizeof(Numeric) * nsums);
		int64	   *e = palloc(sizeof(int64) * nsums);
		Datum		args[12];
		bool		nulls[12] = {0};
		char		nullchars[13];
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
			if (s->nentries == 0 && !months_change(prog, &d[s->first_delta], s->ndeltas))
				continue;
			k[nb] = s->account;
			p[nb] = ledger_add_points(cancels ? 0 : sub_points(s->pn, s->po, prog, s->account), s->bonus,
									  prog, s->account);
			q[nb] = cancels ? zero : numeric_sub_opt_error(s->qn, s->qo, NULL);
			e[nb] = s->nentries;
			which[nb++] = i;
		}
		if (nb == 0)
		{
			loyalty_leave_owner(&scope);
			return;
		}
		args[0] = Int32GetDatum(prog->id);
		args[1] = Int32GetDatum(attachment_id);
		if (nb == 1)
		{
			/* one account: its month sums as plain parameters */
			AccountSums *s = &sums[which[0]];
			MonthArrays m;

			delta_arrays(prog, &d[s->first_delta], s->ndeltas, attachment_id, &m);
			args[2] = CStringGetTextDatum(k[0]);
			args[3] = Int64GetDatum(p[0]);
			args[4] = NumericGetDatum(q[0]);
			args[5] = Int64GetDatum(e[0]);
			args[6] = loyalty_date_array(m.month, m.n);
			args[7] = loyalty_int4_array(m.attachment, m.n);
			args[8] = loyalty_int8_array(m.points, m.n);
			args[9] = loyalty_numeric_array(m.qualifying, m.n);
			args[10] = loyalty_int8_array(m.rows, m.n);
			args[11] = DateADTGetDatum(s->max_date);
			nulls[11] = (s->max_date == 0);
		}
		else
			args[1] = balance_changes(prog, attachment_id, d, sums, which, nb, p, q, e);
		if (nb == 1)
		{
			for (i = 0; i < 12; i++)
				nullchars[i] = nulls[i] ? 'n' : ' ';
			nullchars[12] = '\0';
			loyalty_spi_check(SPI_execute_plan(balance_update_plan, args, nullchars, false, 0), SPI_OK_UPDATE_RETURNING,
							  "update loyalty.balance");
			if (SPI_processed == 0)
				loyalty_spi_check(SPI_execute_plan(balance_one_plan, args, nullchars, false, 0), SPI_OK_INSERT_RETURNING,
								  "insert into loyalty.balance");
		}
		else
			loyalty_spi_check(SPI_execute_plan(balance_plan, args, NULL, false, 0), SPI_OK_INSERT_RETURNING,
							  "upsert loyalty.balance");
		if (SPI_processed > (uint64) nb)
			elog(ERROR, "loyalty.balance returned " UINT64_FORMAT " rows for %d accounts", SPI_processed, nb);

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
			s->last_doc_date = DatumGetDateADT(SPI_getbinval(tup, desc, 6, &isnull));
			if (isnull)
				s->last_doc_date = 0;
			if (!prog->has_caps && !(prog->ladder && window_grew(d, s, window_first, window_last)))
				continue;
			arrays_read(&after, "m_", SPI_getbinval(tup, desc, 3, &isnull), (Datum) 0,
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
		/* a row left out of RETURNING is one whose points would overflow */
		for (i = 0; i < nb; i++)
			if (!sums[which[i]].written)
				points_overflow(prog, sums[which[i]].account, "points balance");
	}

	/* 2. what caps withheld or gave back: one more entry per account */
	if (ncap > 0)
	{
		Datum		args[3];
		uint64		j;

		args[0] = Int32GetDatum(prog->id);
		args[1] = loyalty_text_array(capk, NULL, ncap);
		args[2] = loyalty_int8_array(capv, ncap);
		loyalty_spi_check(SPI_execute_plan(capfix_plan, args, NULL, false, 0), SPI_OK_UPDATE_RETURNING,
						  "apply caps to loyalty.balance");
		if (SPI_processed > (uint64) ncap)
			elog(ERROR, "loyalty.balance returned " UINT64_FORMAT " rows for %d capped accounts", SPI_processed, ncap);
		for (j = 0; j < SPI_processed; j++)
		{
			bool		isnull;
			AccountSums *s = &sums[find_sums(sums, nsums, SPI_getvalue(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1))];

			s->cap_entry = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 2, &isnull));
		}
		for (i = 0; i < nsums; i++)
			if (sums[i].cap != 0 && sums[i].cap_entry == 0)
				points_overflow(prog, sums[i].account, "points balance");
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
				ENTRY(e++, kind_old, sub_points(0, s->po, prog, s->account),
					  DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(s->qo))),
					  entry_rows(s->ro, prog, s->account));
			if (s->has_new)
				ENTRY(e++, kind_new, s->pn, s->qn, entry_rows(s->rn, prog, s->account));
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
			loyalty_spi_check(SPI_execute_plan(ne == 1 ? ledger_one_plan : ledger_plan, args, NULL, false, 0), SPI_OK_INSERT,
							  "write loyalty.ledger");
		}
	}

	/* 4. upgrades on accrual; downgrades wait for settlement */
	if (prog->ladder != NULL)
		upgrade_tiers(prog, sums, nsums);

	loyalty_leave_owner(&scope);
}
