/*
 * ledger.c — posting.  Everything here runs as the extension owner.  A
 * statement appends, per account, one loyalty.balance_delta row (its totals
 * and per-month sums) and its ledger entries: no shared row is updated, so
 * two statements never wait for each other (loyalty.fold() adds the deltas
 * up later, fold.c).  The rows go in with heap and index calls (append.c),
 * or as one SQL statement over arrays where that is not possible; never one
 * statement per row.  Also here: the per-month sums and the caps that the
 * fold and loyalty.balance share.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "accounts.h"
#include "append.h"
#include "keytype.h"
#include "ledger.h"

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

static ShardPlan delta_plan, ledger_plan;

/* loyalty.balance_delta's row type, the element type of delta_plan's array */
static Oid	delta_type = InvalidOid;

/* The row type of loyalty.balance_delta as it is now (it changes when the extension is re-created). */
static Oid
current_delta_type(void)
{
	Oid			rel = get_relname_relid("balance_delta", get_namespace_oid("loyalty", false));

	if (!OidIsValid(rel))
		elog(ERROR, "relation loyalty.balance_delta does not exist");
	return get_rel_type_id(rel);
}

static void
prepare_delta_plan(void)
{
	Oid			type = current_delta_type();
	Oid			t[2] = {INT4OID, InvalidOid};

	if (type != delta_type)
		loyalty_plan_forget(&delta_plan);	/* the table was re-created */
	if (!loyalty_plan_stale(&delta_plan))
		return;
	t[1] = get_array_type(type);

	/*
	 * One row per account: the totals, the entries posted and the per-month
	 * sums, as rows of the table's own type, each with its month sums as
	 * typed arrays, so that nothing has to be encoded or decoded.
	 */
	delta_plan.plan = loyalty_prepare(
		psprintf("INSERT INTO %s (program_id, account_key, delta_no, points, qualifying, entry_count,"
				 "  m_month, m_attachment, m_points, m_qualifying, m_source_rows, last_doc_date)"
				 " SELECT $1, u.account_key, u.delta_no, u.points, u.qualifying, u.entry_count,"
				 "  u.m_month, u.m_attachment, u.m_points, u.m_qualifying, u.m_source_rows, u.last_doc_date"
				 " FROM pg_catalog.unnest($2) AS u", loyalty_table("balance_delta")), 2, t);
	delta_type = type;
}

/*
 * Prepares the posting plans that are not ready for this shard (or for no
 * shard).  A preparation that fails (a lock_timeout, a cancel) leaves its
 * plan NULL, and loyalty_plan_stale() has it prepared again next time; the
 * plans prepared before it are kept.
 */
static void
prepare_plans(void)
{
	Oid			t[9] = {INT4OID, INT4OID, TEXTOID, TEXTARRAYOID, INT8ARRAYOID, TEXTARRAYOID,
	INT8ARRAYOID, NUMERICARRAYOID, INT4ARRAYOID};

	prepare_delta_plan();
	if (!loyalty_plan_stale(&ledger_plan))
		return;
	ledger_plan.plan = loyalty_prepare(
		psprintf("INSERT INTO %s"
				 " (program_id, account_key, entry_no, kind, points, qualifying, attachment_id, source_rows, reason)"
				 " SELECT $1, u.k" KEY_CAST ", u.e, u.kind::loyalty.ledger_kind, u.p, u.q, $2, u.r, $3"
				 " FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
				 "                 pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9)) AS u(k, e, kind, p, q, r)",
				 loyalty_table("ledger")),
		9, t);
}

/*
 * Numbers for ledger entries and balance deltas, from 1 within the top
 * transaction: unique with the transaction's id, and handed out without a
 * sequence or a row that two transactions would both have to lock.  On a
 * Citus worker they start at the node's group times 2^40: transaction ids
 * are each node's own, and an account's shard holds rows of other nodes
 * too (copied from the coordinator by distribute(), or moved from another
 * worker), whose (posted_xid, entry_no) a posting here must never repeat.
 * On one server and on the coordinator (group 0) they start at 1.
 */
#define NODE_ENTRY_BITS 40
int64
ledger_numbers(int count)
{
	static FullTransactionId xid = {0};
	static int64 next = 1;
	FullTransactionId now = GetTopFullTransactionId();
	int64		first;

	if (!FullTransactionIdEquals(now, xid))
	{
		xid = now;
		next = ((int64) loyalty_node_group() << NODE_ENTRY_BITS) + 1;
	}
	first = next;
	next += count;
	return first;
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


/* ---- per-month sums, as parallel arrays (folded balances and deltas) ---- */

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
void
ledger_arrays_read(MonthArrays *m, const char *prefix, Datum mo, Datum at, Datum pt, Datum qu, Datum ro)
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

/*
 * r = a + b, for two sorted sets of per-month sums; elements that net to
 * nothing disappear.
 */
void
ledger_months_merge(const MonthArrays *a, const MonthArrays *b, MonthArrays *r)
{
	int			i = 0,
				j = 0;
	Numeric		zero = int64_to_numeric(0);

	r->n = 0;
	r->month = palloc(sizeof(DateADT) * (a->n + b->n + 1));
	r->attachment = palloc(sizeof(int32) * (a->n + b->n + 1));
	r->points = palloc(sizeof(int64) * (a->n + b->n + 1));
	r->qualifying = palloc(sizeof(Numeric) * (a->n + b->n + 1));
	r->rows = palloc(sizeof(int64) * (a->n + b->n + 1));
	while (i < a->n || j < b->n)
	{
		int			c = i >= a->n ? 1 : j >= b->n ? -1 :
			entry_cmp(a->month[i], a->attachment[i], b->month[j], b->attachment[j]);
		int			k = r->n;

		if (c <= 0)
		{
			r->month[k] = a->month[i];
			r->attachment[k] = a->attachment[i];
			r->points[k] = a->points[i];
			r->qualifying[k] = a->qualifying[i];
			r->rows[k] = a->rows[i];
			i++;
		}
		if (c > 0)
		{
			r->month[k] = b->month[j];
			r->attachment[k] = b->attachment[j];
			r->points[k] = b->points[j];
			r->qualifying[k] = b->qualifying[j];
			r->rows[k] = b->rows[j];
			j++;
		}
		else if (c == 0)
		{
			r->points[k] = merge_add(r->points[k], b->points[j], "points", b->month[j]);
			r->qualifying[k] = numeric_add_opt_error(r->qualifying[k], b->qualifying[j], NULL);
			r->rows[k] = merge_add(r->rows[k], b->rows[j], "source rows", b->month[j]);
			j++;
		}
		if (r->points[k] != 0 || r->rows[k] != 0 || !num_eq(r->qualifying[k], zero))
			r->n++;
	}
}

PG_FUNCTION_INFO_V1(loyalty_month_merge);
/* loyalty._month_merge(five arrays, five arrays): ledger_months_merge for SQL. */
Datum
loyalty_month_merge(PG_FUNCTION_ARGS)
{
	MonthArrays a,
				b,
				r;

	ledger_arrays_read(&a, "a_", PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), PG_GETARG_DATUM(2), PG_GETARG_DATUM(3), PG_GETARG_DATUM(4));
	ledger_arrays_read(&b, "b_", PG_GETARG_DATUM(5), PG_GETARG_DATUM(6), PG_GETARG_DATUM(7), PG_GETARG_DATUM(8), PG_GETARG_DATUM(9));
	ledger_months_merge(&a, &b, &r);
	PG_RETURN_DATUM(arrays_result(fcinfo, &r));
}

/* The points of the months in [start, end), capped, year by year. */
static int64
capped_span(const Program *prog, const MonthArrays *m, DateADT start, DateADT end, const char *account)
{
	int64		total = 0;
	int			i = 0;

	while (i < m->n && m->month[i] < start)
		i++;
	while (i < m->n && m->month[i] < end)
	{
		DateADT		ys = rules_cap_period_start('y', m->month[i]);
		DateADT		ye = rules_cap_period_next('y', ys);
		int64		year[12] = {0};

		for (; i < m->n && m->month[i] < ye; i++)
			year[month_of_year(m->month[i])] =
				ledger_add_points(year[month_of_year(m->month[i])], m->points[i], prog, account);
		total = ledger_add_points(total, ledger_capped_year(prog, ys, year, account), prog, account);
	}
	return total;
}

/* The points of all the months, uncapped. */
static int64
raw_points(const Program *prog, const MonthArrays *m, const char *account)
{
	int64		total = 0;
	int			i;

	for (i = 0; i < m->n; i++)
		total = ledger_add_points(total, m->points[i], prog, account);
	return total;
}

/*
 * What the caps withhold (negative) or give back when an account's months
 * go from before to after, against the uncapped change: the points of a
 * cap entry.  Caps act on whole calendar years (the outermost cap period).
 */
int64
ledger_cap_change(const Program *prog, const char *account, const MonthArrays *before, const MonthArrays *after)
{
	int64		capped;

	if (!prog->has_caps)
		return 0;
	capped = sub_points(capped_span(prog, after, DATEVAL_NOBEGIN, DATEVAL_NOEND, account),
						capped_span(prog, before, DATEVAL_NOBEGIN, DATEVAL_NOEND, account), prog, account);
	return sub_points(capped, sub_points(raw_points(prog, after, account), raw_points(prog, before, account),
										 prog, account), prog, account);
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

/* What one statement changes for one account. */
typedef struct AccountSums
{
	char	   *account;
	int			first_delta;	/* its deltas are d[first_delta .. +ndeltas) */
	int			ndeltas;
	int64		pn,
				po,
				bonus;
	Numeric		qn,
				qo;
	int64		rn,
				ro;
	bool		has_old;		/* write an entry for removed rows */
	bool		has_new;		/* write an entry for added rows */
	int			nentries;
	int64		first_no;		/* its numbers: delta_no, then the entries' */
	int64		points;			/* net, before caps */
	Numeric		qualifying;		/* net */
	DateADT		max_date;		/* the latest document date this statement adds (0: none) */
} AccountSums;

/*
 * The multi-account insert's argument: for each account, a
 * loyalty.balance_delta row holding the change (totals, entries posted,
 * month sums), as an array of the table's own row type.
 */
static Datum
delta_rows(const Program *prog, int32 attachment_id, MonthDelta *d, AccountSums **rows, int nb)
{
	static const char *const names[] = {"account_key", "delta_no", "points", "qualifying", "entry_count",
	"m_month", "m_attachment", "m_points", "m_qualifying", "m_source_rows", "last_doc_date"};
	TupleDesc	desc = lookup_rowtype_tupdesc(delta_type, -1);
	int			col[lengthof(names)];
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	Datum	   *out = palloc(sizeof(Datum) * nb);
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
			elog(ERROR, "loyalty.balance_delta has no column %s", names[i]);
		col[i] = a;
	}
	for (i = 0; i < nb; i++)
	{
		AccountSums *s = rows[i];
		MonthArrays m;

		delta_arrays(prog, &d[s->first_delta], s->ndeltas, attachment_id, &m);
		memset(nulls, true, sizeof(bool) * desc->natts);
		for (a = 0; a < (int) lengthof(names); a++)
			nulls[col[a]] = false;
		values[col[0]] = loyalty_key_datum(TupleDescAttr(desc, col[0])->atttypid, s->account);
		values[col[1]] = Int64GetDatum(s->first_no);
		values[col[2]] = Int64GetDatum(s->points);
		values[col[3]] = NumericGetDatum(s->qualifying);
		values[col[4]] = Int64GetDatum(s->nentries);
		values[col[5]] = loyalty_date_array(m.month, m.n);
		values[col[6]] = loyalty_int4_array(m.attachment, m.n);
		values[col[7]] = loyalty_int8_array(m.points, m.n);
		values[col[8]] = loyalty_numeric_array(m.qualifying, m.n);
		values[col[9]] = loyalty_int8_array(m.rows, m.n);
		values[col[10]] = DateADTGetDatum(s->max_date);
		nulls[col[10]] = (s->max_date == 0);
		out[i] = HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
	}
	ReleaseTupleDesc(desc);
	get_typlenbyvalalign(delta_type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(out, nb, delta_type, typlen, typbyval, typalign));
}

/* balance_delta rows, appended directly; false: write them through SQL */
static bool
append_deltas(const Program *prog, int32 attachment_id, MonthDelta *d, AccountSums **rows, int nb)
{
	static const char *const names[] = {"program_id", "account_key", "posted_xid", "delta_no", "points",
		"qualifying", "rebate", "mdf", "entry_count", "m_month", "m_attachment", "m_points", "m_qualifying",
	"m_source_rows", "last_doc_date", "posted_at"};
	int			col[lengthof(names)];
	TupleDesc	desc;
	Relation	rel = append_open("balance_delta", names, lengthof(names), col, &desc);
	HeapTuple  *tuples;
	Datum	   *values;
	bool	   *nulls;
	Numeric		zero = int64_to_numeric(0);
	Datum		xid = FullTransactionIdGetDatum(GetTopFullTransactionId());
	Datum		posted_at = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	int			i;

	if (rel == NULL)
		return false;
	tuples = palloc(sizeof(HeapTuple) * nb);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	for (i = 0; i < nb; i++)
	{
		AccountSums *s = rows[i];
		MonthArrays m;

		delta_arrays(prog, &d[s->first_delta], s->ndeltas, attachment_id, &m);
		memset(nulls, true, sizeof(bool) * desc->natts);
		values[col[0]] = Int32GetDatum(prog->id);
		values[col[1]] = loyalty_key_datum(TupleDescAttr(desc, col[1])->atttypid, s->account);
		values[col[2]] = xid;
		values[col[3]] = Int64GetDatum(s->first_no);
		values[col[4]] = Int64GetDatum(s->points);
		values[col[5]] = NumericGetDatum(s->qualifying);
		values[col[6]] = NumericGetDatum(zero);
		values[col[7]] = NumericGetDatum(zero);
		values[col[8]] = Int64GetDatum(s->nentries);
		values[col[9]] = loyalty_date_array(m.month, m.n);
		values[col[10]] = loyalty_int4_array(m.attachment, m.n);
		values[col[11]] = loyalty_int8_array(m.points, m.n);
		values[col[12]] = loyalty_numeric_array(m.qualifying, m.n);
		values[col[13]] = loyalty_int8_array(m.rows, m.n);
		values[col[14]] = DateADTGetDatum(s->max_date);
		values[col[15]] = posted_at;
		for (int c = 0; c < (int) lengthof(names); c++)
			nulls[col[c]] = false;
		nulls[col[14]] = (s->max_date == 0);
		tuples[i] = heap_form_tuple(desc, values, nulls);
	}
	append_close(rel, tuples, nb);
	return true;
}

/* The ledger_kind value of a label. */
static Datum
kind_value(const char *label)
{
	Oid			type = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid, CStringGetDatum("ledger_kind"),
									   ObjectIdGetDatum(get_namespace_oid("loyalty", false)));

	return DirectFunctionCall2(enum_in, CStringGetDatum(label), ObjectIdGetDatum(type));
}

/* Ledger entries, appended directly; false: write them through SQL. */
static bool
append_entries(const Program *prog, int32 attachment_id, const char *reason, int ne, char **ek, int64 *eno,
			   char **ekind, int64 *ep, Numeric *eq, int32 *er)
{
	static const char *const names[] = {"program_id", "account_key", "entry_no", "kind", "points",
		"qualifying", "rebate", "mdf", "member_id", "attachment_id", "source_rows", "corrects", "reason",
	"posted_at", "posted_xid", "corrects_xid"};
	int			col[lengthof(names)];
	TupleDesc	desc;
	Relation	rel = append_open("ledger", names, lengthof(names), col, &desc);
	HeapTuple  *tuples;
	Datum	   *values;
	bool	   *nulls;
	Numeric		zero = int64_to_numeric(0);
	const char *last_kind = NULL;
	Datum		kind = (Datum) 0;
	Datum		xid = FullTransactionIdGetDatum(GetTopFullTransactionId());
	Datum		posted_at = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	int			i;

	if (rel == NULL)
		return false;
	tuples = palloc(sizeof(HeapTuple) * ne);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	for (i = 0; i < ne; i++)
	{
		if (last_kind == NULL || strcmp(last_kind, ekind[i]) != 0)
			kind = kind_value(last_kind = ekind[i]);
		memset(nulls, true, sizeof(bool) * desc->natts);
		values[col[0]] = Int32GetDatum(prog->id);
		values[col[1]] = loyalty_key_datum(TupleDescAttr(desc, col[1])->atttypid, ek[i]);
		values[col[2]] = Int64GetDatum(eno[i]);
		values[col[3]] = kind;
		values[col[4]] = Int64GetDatum(ep[i]);
		values[col[5]] = NumericGetDatum(eq[i]);
		values[col[6]] = NumericGetDatum(zero);
		values[col[7]] = NumericGetDatum(zero);
		values[col[9]] = Int32GetDatum(attachment_id);
		values[col[10]] = Int32GetDatum(er[i]);
		values[col[12]] = CStringGetTextDatum(reason);
		values[col[13]] = posted_at;
		values[col[14]] = xid;
		for (int c = 0; c < (int) lengthof(names); c++)
			nulls[col[c]] = (c == 8 || c == 11 || c == 15);	/* member_id, corrects, corrects_xid */
		tuples[i] = heap_form_tuple(desc, values, nulls);
	}
	append_close(rel, tuples, ne);
	return true;
}

/* The ledger entries of the statement: one per kind and account. */
static void
write_entries(const Program *prog, int32 attachment_id, AccountSums **rows, int nb,
			  const char *kind_new, const char *kind_old, const char *reason)
{
	int			maxe = nb * 3;
	char	  **ek = palloc(sizeof(char *) * maxe);
	int64	   *eno = palloc(sizeof(int64) * maxe);
	char	  **ekind = palloc(sizeof(char *) * maxe);
	int64	   *ep = palloc(sizeof(int64) * maxe);
	Numeric    *eq = palloc(sizeof(Numeric) * maxe);
	int32	   *er = palloc(sizeof(int32) * maxe);
	Numeric		zero = int64_to_numeric(0);
	int			ne = 0;
	int			i;
	Datum		args[9];

	for (i = 0; i < nb; i++)
	{
		AccountSums *s = rows[i];
		int64		e = s->first_no;

#define ENTRY(kind_, p_, q_, r_) \
		do { ek[ne] = s->account; eno[ne] = e++; ekind[ne] = (char *) (kind_); \
			 ep[ne] = (p_); eq[ne] = (q_); er[ne] = (int32) (r_); ne++; } while (0)
		if (s->has_old)
			ENTRY(kind_old, sub_points(0, s->po, prog, s->account),
				  DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(s->qo))),
				  entry_rows(s->ro, prog, s->account));
		if (s->has_new)
			ENTRY(kind_new, s->pn, s->qn, entry_rows(s->rn, prog, s->account));
		if (s->bonus != 0)
			ENTRY("bonus", s->bonus, zero, 0);
#undef ENTRY
	}
	if (ne == 0)
		return;
	if (append_entries(prog, attachment_id, reason, ne, ek, eno, ekind, ep, eq, er))
		return;
	prepare_plans();
	args[0] = Int32GetDatum(prog->id);
	args[1] = Int32GetDatum(attachment_id);
	args[2] = CStringGetTextDatum(reason);
	args[3] = loyalty_text_array(ek, NULL, ne);
	args[4] = loyalty_int8_array(eno, ne);
	args[5] = loyalty_text_array(ekind, NULL, ne);
	args[6] = loyalty_int8_array(ep, ne);
	args[7] = loyalty_numeric_array(eq, ne);
	args[8] = loyalty_int4_array(er, ne);
	loyalty_spi_check(SPI_execute_plan(ledger_plan.plan, args, NULL, false, 0), SPI_OK_INSERT,
					  "write loyalty.ledger");
}

/* Per-account sums of the (account, month)-sorted deltas; returns how many accounts. */
static int
sum_accounts(const Program *prog, MonthDelta *d, int n, AccountSums *sums)
{
	Numeric		zero = int64_to_numeric(0);
	int			nsums = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		AccountSums *s;

		if (nsums == 0 || strcmp(sums[nsums - 1].account, d[i].account) != 0)
		{
			s = &sums[nsums++];
			s->account = d[i].account;
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
	return nsums;
}

/*
 * Postings this large (about 4.5e15 points) are checked against the
 * account's balance before they are appended: no realistic program comes
 * near, but a statement that would carry a balance beyond bigint must fail
 * cleanly rather than leave a balance nobody can read or fold.  Smaller
 * postings cannot get a balance there without millions of them.
 */
#define LARGE_POSTING (INT64CONST(1) << 52)

static void
check_balance_fits(const Program *prog, AccountSums *s)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2];
	bool		isnull;
	Datum		points;

	if (plan == NULL)
	{
		Oid			t[2] = {INT4OID, TEXTOID};

		plan = loyalty_prepare(
			"SELECT b.points FROM loyalty.balance b"
			" WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST, 2, t);
	}
	args[0] = Int32GetDatum(prog->id);
	args[1] = CStringGetTextDatum(s->account);
	loyalty_spi_check(SPI_execute_plan(plan, args, NULL, false, 1), SPI_OK_SELECT, "read loyalty.balance");
	if (SPI_processed == 0)
		return;
	points = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
	{
		int64		sum;

		if (pg_add_s64_overflow(DatumGetInt64(points), s->points, &sum))
			points_overflow(prog, s->account, "points balance");
	}
}

/*
 * Posting appends: one balance_delta row and its ledger entries per
 * account, nothing updated, nothing read.  Two transactions posting to the
 * same customer therefore never wait for each other, never deadlock, and
 * never fail to serialize because of loyalty.  Caps and tier upgrades depend
 * on what every transaction posted; loyalty.balance applies the caps when
 * it is read, loyalty.fold() books them and records the upgrades.
 */
void
ledger_post(Program *prog, int32 attachment_id, MonthDelta *d, int n,
			const char *kind_new, const char *kind_old, const char *reason)
{
	OwnerScope	scope;
	AccountSums *sums;
	AccountSums **rows;
	Numeric		zero = int64_to_numeric(0);
	int			nsums,
				nb = 0,
				i;

	if (n == 0)
		return;
	sums = palloc0(sizeof(AccountSums) * n);
	rows = palloc(sizeof(AccountSums *) * n);
	nsums = sum_accounts(prog, d, n, sums);
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
		s->points = ledger_add_points(cancels ? 0 : sub_points(s->pn, s->po, prog, s->account), s->bonus,
									  prog, s->account);
		s->qualifying = cancels ? zero : numeric_sub_opt_error(s->qn, s->qo, NULL);
		rows[nb++] = s;
	}
	if (nb == 0)
		return;

	loyalty_enter_owner(&scope);
	for (i = 0; i < nb; i++)
	{
		rows[i]->first_no = ledger_numbers(Max(rows[i]->nentries, 1));
		if (rows[i]->points >= LARGE_POSTING || rows[i]->points <= -LARGE_POSTING)
			check_balance_fits(prog, rows[i]);
	}
	/* through SQL where the table cannot take direct appends (append.c) */
	if (!append_deltas(prog, attachment_id, d, rows, nb))
	{
		Datum		args[2];

		prepare_plans();
		args[0] = Int32GetDatum(prog->id);
		args[1] = delta_rows(prog, attachment_id, d, rows, nb);
		loyalty_spi_check(SPI_execute_plan(delta_plan.plan, args, NULL, false, 0), SPI_OK_INSERT,
						  "write loyalty.balance_delta");
	}
	write_entries(prog, attachment_id, rows, nb, kind_new, kind_old, reason);
	loyalty_leave_owner(&scope);
}

PG_FUNCTION_INFO_V1(loyalty_ledger_number);
/*
 * loyalty._ledger_number(): the next entry number of this transaction, for
 * postings made in SQL (loyalty._post); shares the counter with the
 * trigger's postings so that both can write in one transaction.
 */
Datum
loyalty_ledger_number(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(ledger_numbers(1));
}
