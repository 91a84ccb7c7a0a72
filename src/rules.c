/*
 * rules.c — programs and their versioned earning rules, loaded once per
 * backend, and rules_row_points(): the pure function from one mapped ERP row
 * to its points.  Accrual, reversal, explain_points, verify and backfill all
 * call it, which is what makes a reversal exact.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "rules.h"

static Numeric
num_mul(Numeric a, Numeric b)
{
	return numeric_mul_opt_error(a, b, NULL);
}

static int
num_cmp(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a), NumericGetDatum(b)));
}

static Numeric
num_abs(Numeric a)
{
	return DatumGetNumeric(DirectFunctionCall1(numeric_abs, NumericGetDatum(a)));
}

static Numeric
num_neg(Numeric a)
{
	return DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(a)));
}

static bool
num_is_one(Numeric a)
{
	static Numeric one = NULL;

	if (one == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		one = int64_to_numeric(1);
		MemoryContextSwitchTo(old);
	}
	return num_cmp(a, one) == 0;
}

/*
 * A whole number as points.  numeric_int8() would raise an error: a row
 * whose points do not fit in a bigint is parked instead (rules_row_points).
 */
static bool
numeric_to_points(Numeric x, int64 *out)
{
	static Numeric min = NULL,
				max = NULL;

	if (min == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		max = int64_to_numeric(PG_INT64_MAX);
		min = int64_to_numeric(PG_INT64_MIN);
		MemoryContextSwitchTo(old);
	}
	if (num_cmp(x, min) < 0 || num_cmp(x, max) > 0)
		return false;
	*out = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(x)));
	return true;
}

/*
 * Rounds to a whole number of points, symmetrically around zero; false when
 * the result does not fit in a bigint.
 */
static bool
round_points(Numeric x, RoundingMode mode, int64 *out)
{
	Numeric		r;

	switch (mode)
	{
		case ROUND_TOWARD_ZERO:
			r = DatumGetNumeric(DirectFunctionCall2(numeric_trunc, NumericGetDatum(x), Int32GetDatum(0)));
			break;
		case ROUND_HALF_UP:
			r = DatumGetNumeric(DirectFunctionCall2(numeric_round, NumericGetDatum(x), Int32GetDatum(0)));
			break;
		case ROUND_HALF_EVEN:
		default:
			{
				Numeric		t = DatumGetNumeric(DirectFunctionCall2(numeric_trunc, NumericGetDatum(x), Int32GetDatum(0)));
				Numeric		frac = num_abs(numeric_sub_opt_error(x, t, NULL));
				int			c = num_cmp(frac, DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum("0.5"),
																				ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1))));
				int64		ti;
				int			sign = num_cmp(x, int64_to_numeric(0));

				if (!numeric_to_points(t, &ti))
					return false;
				if ((c > 0 || (c == 0 && (ti % 2) != 0)) && pg_add_s64_overflow(ti, sign, &ti))
					return false;
				*out = ti;
				return true;
			}
	}
	return numeric_to_points(r, out);
}

/* The same rounding on a fixed-point product: p is scaled by unit. */
static bool
round_fixed(int128 p, int128 unit, RoundingMode mode, int64 *out)
{
	int128		q = p / unit;	/* truncates toward zero */
	int128		r = p % unit;
	int128		ar = r < 0 ? -r : r;
	int			sign = p < 0 ? -1 : 1;

	if (mode == ROUND_HALF_UP ? 2 * ar >= unit :
		mode == ROUND_HALF_EVEN ? (2 * ar > unit || (2 * ar == unit && q % 2 != 0)) : false)
		q += sign;
	if (q > PG_INT64_MAX || q < PG_INT64_MIN)
		return false;
	*out = (int64) q;
	return true;
}

/*
 * basis * factor (NULL: 1) exactly in integers, for any scale a real amount
 * expression gives (quantity * unit_price * (1 - discount) has 9 decimals,
 * amount / 100 up to 20); false sends the row to numeric.
 */
static bool
fixed_points(Numeric basis, Numeric factor, FixedNum *product)
{
	FixedNum	b,
				f;

	if (!fixed_from_numeric(basis, &b))
		return false;
	if (factor == NULL)
	{
		*product = b;
		return true;
	}
	return fixed_from_numeric(factor, &f) && fixed_mul(&b, &f, product);
}

/* |basis| below the rule's minimum; fast: basis fits a FixedNum */
static bool
below_minimum(const RuleVersion *rule, Numeric basis, bool fast)
{
	FixedNum	b;
	bool		ok = false;
	bool		less = false;

	if (fast && rule->min_fixed_ok && fixed_from_numeric(basis, &b))
		less = fixed_abs_less(&b, &rule->min_fixed, &ok);
	return ok ? less : num_cmp(num_abs(basis), rule->min_amount) < 0;
}

static void
load_map(MultiplierMap *map, Datum keys, Datum values, bool isnull)
{
	Datum	   *k,
			   *v;
	int			nk,
				nv,
				i;

	map->n = 0;
	map->items = NULL;
	if (isnull)
		return;
	deconstruct_array(DatumGetArrayTypeP(keys), TEXTOID, -1, false, TYPALIGN_INT, &k, NULL, &nk);
	deconstruct_array(DatumGetArrayTypeP(values), NUMERICOID, -1, false, TYPALIGN_INT, &v, NULL, &nv);
	if (nk != nv)
		elog(ERROR, "multiplier map keys and values differ in length");
	map->n = nk;
	map->items = palloc(sizeof(Multiplier) * (nk > 0 ? nk : 1));
	for (i = 0; i < nk; i++)
	{
		map->items[i].key = TextDatumGetCString(k[i]);
		map->items[i].factor = DatumGetNumericCopy(v[i]);
	}
}

static Numeric
map_lookup(const MultiplierMap *map, const char *key)
{
	int			i;

	if (key == NULL)
		return NULL;
	for (i = 0; i < map->n; i++)
		if (strcmp(map->items[i].key, key) == 0)
			return map->items[i].factor;
	return NULL;
}

#define MAP_COLS(expr) \
	"ARRAY(SELECT e.key FROM pg_catalog.jsonb_each(" expr ") e ORDER BY e.key), " \
	"ARRAY(SELECT (e.value)::text::pg_catalog.numeric FROM pg_catalog.jsonb_each(" expr ") e ORDER BY e.key)"

/*
 * Loads a program and all its rule versions into cxt.  Caller is connected
 * to SPI.
 */
Program *
rules_load_program(int32 program_id, MemoryContext cxt)
{
	static ShardPlan prog_plan;
	static ShardPlan rule_plan;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(program_id)};
	Program    *p;
	MemoryContext old;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *s;
	uint64		i;

	if (loyalty_plan_stale(&prog_plan))
		prog_plan.plan = loyalty_prepare(
			psprintf("SELECT name, currency, ladder, basis, rounding,"
					 " loyalty._window_months(qualification_window), enrollment, strict, time_zone"
					 " FROM %s WHERE program_id OPERATOR(pg_catalog.=) $1", loyalty_table("program")), 1, argtypes);
	if (loyalty_plan_stale(&rule_plan))
		rule_plan.plan = loyalty_prepare(psprintf(
			"SELECT valid_from, points_per_unit, min_amount, on_time_bonus_pct, cap_points, cap_period, "
			MAP_COLS("product_line_multipliers") ", "
			MAP_COLS("tier_multipliers") ", "
			MAP_COLS("COALESCE(segment_multipliers OPERATOR(pg_catalog.->) 'cooperation_model', '{}')") ", "
			MAP_COLS("COALESCE(segment_multipliers OPERATOR(pg_catalog.->) 'industry', '{}')") ", "
			MAP_COLS("COALESCE(segment_multipliers OPERATOR(pg_catalog.->) 'region', '{}')")
			" FROM %s WHERE program_id OPERATOR(pg_catalog.=) $1 ORDER BY valid_from", loyalty_table("rule")), 1, argtypes);

	loyalty_spi_check(loyalty_execute_latest(prog_plan.plan, args, 1), SPI_OK_SELECT,
					  "read loyalty.program");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("loyalty program %d does not exist", program_id)));

	old = MemoryContextSwitchTo(cxt);
	p = palloc0(sizeof(Program));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	p->id = program_id;
	p->name = SPI_getvalue(tup, desc, 1);
	strlcpy(p->currency, SPI_getvalue(tup, desc, 2), sizeof(p->currency));
	{
		Datum		d = SPI_getbinval(tup, desc, 3, &isnull);

		p->ladder = isnull ? NULL : (TierLadder *) pg_detoast_datum_copy((struct varlena *) DatumGetPointer(d));
	}
	p->basis_quantity = strcmp(SPI_getvalue(tup, desc, 4), "quantity") == 0;
	s = SPI_getvalue(tup, desc, 5);
	p->rounding = strcmp(s, "half_up") == 0 ? ROUND_HALF_UP :
		strcmp(s, "half_even") == 0 ? ROUND_HALF_EVEN : ROUND_TOWARD_ZERO;
	p->window_months = Max(1, DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull)));
	p->auto_enroll = strcmp(SPI_getvalue(tup, desc, 7), "auto") == 0;
	p->strict = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	p->time_zone = SPI_getvalue(tup, desc, 9);
	MemoryContextSwitchTo(old);

	loyalty_spi_check(loyalty_execute_latest(rule_plan.plan, args, 0), SPI_OK_SELECT,
					  "read loyalty.rule");

	old = MemoryContextSwitchTo(cxt);
	desc = SPI_tuptable->tupdesc;
	p->nrules = (int) SPI_processed;
	p->rules = palloc0(sizeof(RuleVersion) * (p->nrules > 0 ? p->nrules : 1));
	for (i = 0; i < SPI_processed; i++)
	{
		RuleVersion *r = &p->rules[i];
		Datum		d;
		int			m;

		tup = SPI_tuptable->vals[i];
		r->valid_from = DatumGetDateADT(SPI_getbinval(tup, desc, 1, &isnull));
		r->points_per_unit = DatumGetNumericCopy(SPI_getbinval(tup, desc, 2, &isnull));
		r->min_amount = DatumGetNumericCopy(SPI_getbinval(tup, desc, 3, &isnull));
		r->no_minimum = num_cmp(r->min_amount, int64_to_numeric(0)) == 0;
		r->unit_rate = num_is_one(r->points_per_unit);
		r->min_fixed_ok = fixed_from_numeric(r->min_amount, &r->min_fixed);
		d = SPI_getbinval(tup, desc, 4, &isnull);
		r->bonus_pct = NULL;
		if (num_cmp(DatumGetNumeric(d), int64_to_numeric(0)) > 0)
		{
			/* 10 / 100 has display scale 20 but one decimal: still the fast path */
			r->bonus_pct = numeric_div_opt_error(DatumGetNumeric(d), int64_to_numeric(100), NULL);
			r->bonus_fixed_ok = fixed_from_numeric(r->bonus_pct, &r->bonus_fixed);
		}
		d = SPI_getbinval(tup, desc, 5, &isnull);
		r->cap_points = isnull ? 0 : DatumGetInt64(d);
		s = SPI_getvalue(tup, desc, 6);
		r->cap_period = s == NULL ? 0 : s[0];	/* month, quarter, year */
		if (r->cap_points > 0)
			p->has_caps = true;
		for (m = 0; m < 2 + SEG_COUNT; m++)
		{
			MultiplierMap *map = m == 0 ? &r->product_line : m == 1 ? &r->tier : &r->segment[m - 2];
			Datum		keys = SPI_getbinval(tup, desc, 7 + 2 * m, &isnull);
			Datum		vals = SPI_getbinval(tup, desc, 8 + 2 * m, &isnull);

			load_map(map, keys, vals, isnull);
		}
		if (r->tier.n > 0)
			p->uses_tier_multipliers = true;
	}
	MemoryContextSwitchTo(old);
	return p;
}

const RuleVersion *
rules_version_on(const Program *prog, DateADT d)
{
	int			lo = 0,
				hi = prog->nrules - 1,
				found = -1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (prog->rules[mid].valid_from <= d)
		{
			found = mid;
			lo = mid + 1;
		}
		else
			hi = mid - 1;
	}
	return found < 0 ? NULL : &prog->rules[found];
}

DateADT
rules_cap_period_start(char period, DateADT d)
{
	int			y,
				m,
				day;

	j2date(d + POSTGRES_EPOCH_JDATE, &y, &m, &day);
	if (period == 'q')
		m = ((m - 1) / 3) * 3 + 1;
	else if (period == 'y')
		m = 1;
	return date2j(y, m, 1) - POSTGRES_EPOCH_JDATE;
}

DateADT
rules_cap_period_next(char period, DateADT start)
{
	return loyalty_add_months(start, period == 'q' ? 3 : period == 'y' ? 12 : 1);
}

const char *
rules_status_name(RowStatus status)
{
	switch (status)
	{
		case ROW_EARNS:
			return "earns";
		case ROW_BELOW_MINIMUM:
			return "below_minimum";
		case ROW_CONTROL:
			return "control_cohort";
		case ROW_NOT_ENROLLED:
			return "not_enrolled";
		case ROW_REJECTED:
			return "rejected";
	}
	return "?";
}

const char *
rules_rounding_name(RoundingMode mode)
{
	return mode == ROUND_HALF_UP ? "half_up" : mode == ROUND_HALF_EVEN ? "half_even" : "toward_zero";
}

static const char *
tier_on(const AccountInfo *acct, DateADT d)
{
	const char *t = NULL;
	int			i;

	for (i = 0; i < acct->nhist && acct->hist_from[i] <= d; i++)
		t = acct->hist_tier[i];
	return t;
}

const char *
rules_account_key_problem(const char *key)
{
	if (key[0] == '\0')
		return "account key is empty";
	if (strnlen(key, LOYALTY_MAX_KEY_BYTES + 1) > LOYALTY_MAX_KEY_BYTES)
		return "account key is longer than " CppAsString2(LOYALTY_MAX_KEY_BYTES) " bytes";
	return NULL;
}

static bool
numeric_not_finite(Numeric n)
{
	return numeric_is_nan(n) || numeric_is_inf(n);
}

static void
reject(RowResult *r, const char *fmt, const char *arg)
{
	r->status = ROW_REJECTED;
	r->reason = psprintf(fmt, arg);
	r->points = r->bonus = 0;
	r->qualifying = NULL;
}

/*
 * The points of one row.  Pure: the result depends only on the row, the
 * program's rules (versions are immutable once in force) and the account's
 * enrolment and tier history, never on the order rows arrive in.  Caps are
 * not applied here; they act on the per-period sums (ledger.c).
 */
void
rules_row_points(const Program *prog, const AccountInfo *acct,
				 const RowFacts *f, RowResult *r)
{
	Numeric		basis;
	Numeric		amount;
	Numeric		factor;
	const RuleVersion *rule;
	int			s;
	char	   *const *segment;
	bool		control;
	const char *key_problem;
	int64		total;

	memset(r, 0, sizeof(RowResult));

	if (f->header_missing)
		return reject(r, "%s", rules_header_missing_reason());
	if (f->account == NULL)
		return reject(r, "account is NULL%s", "");
	if ((key_problem = rules_account_key_problem(f->account)) != NULL)
		return reject(r, "%s", key_problem);
	if (!f->has_date || DATE_NOT_FINITE(f->date))
		return reject(r, "document date is NULL or infinite%s", "");
	if (f->currency_mapped && (f->currency == NULL || strcmp(f->currency, prog->currency) != 0))
		return reject(r, "currency %s is not the program currency",
					  f->currency ? f->currency : "NULL");

	basis = prog->basis_quantity ? f->quantity : f->amount;
	if (basis == NULL)
		return reject(r, "%s is NULL", prog->basis_quantity ? "quantity" : "amount");
	if (numeric_not_finite(basis) || (f->amount && numeric_not_finite(f->amount)))
		return reject(r, "%s is NaN or infinite", prog->basis_quantity ? "quantity or amount" : "amount");

	rule = rules_version_on(prog, f->date);
	if (rule == NULL)
	{
		int			y,
					m,
					dd;

		/* ISO, whatever the session's DateStyle: reasons are compared and grouped */
		j2date(f->date + POSTGRES_EPOCH_JDATE, &y, &m, &dd);
		return reject(r, "no rule in force on %s", psprintf("%04d-%02d-%02d", y, m, dd));
	}

	if (f->credit_note)
	{
		basis = num_neg(num_abs(basis));
		amount = f->amount ? num_neg(num_abs(f->amount)) : NULL;
	}
	else
		amount = f->amount;

	r->rule = rule;
	r->basis = basis;
	r->month = loyalty_month_start(f->date);
	/*
	 * Qualifying spend is money: the amount.  Under the quantity basis a
	 * program that maps no amount qualifies on the quantity itself (tiers by
	 * volume); one that maps an amount counts a row whose amount is NULL as
	 * no spend (it still earns its points on the quantity).
	 */
	r->qualifying = amount ? amount : (f->amount_mapped ? int64_to_numeric(0) : basis);
	r->points = r->bonus = 0;

	if (acct == NULL || !acct->enrolled || f->date < acct->enrolled_from)
	{
		r->status = ROW_NOT_ENROLLED;
		r->qualifying = NULL;
		return;
	}

	/* the segment and cohort in force on the document date */
	segment = acct->segment;
	control = acct->control;
	for (s = 0; s < acct->nseg_hist; s++)
		if (f->date < acct->seg_until[s])
		{
			segment = acct->seg_hist[s];
			control = acct->control_hist[s];
			break;
		}

	/* base rate times every multiplier that applies; NULL stands for 1 */
	factor = rule->unit_rate ? NULL : rule->points_per_unit;
	r->pl_factor = map_lookup(&rule->product_line, f->product_line);
	if (r->pl_factor)
		factor = factor ? num_mul(factor, r->pl_factor) : r->pl_factor;
	r->tier_on_date = tier_on(acct, f->date);
	r->tier_factor = map_lookup(&rule->tier, r->tier_on_date);
	if (r->tier_factor)
		factor = factor ? num_mul(factor, r->tier_factor) : r->tier_factor;
	for (s = 0; s < SEG_COUNT; s++)
	{
		Numeric		sf = map_lookup(&rule->segment[s], segment[s]);

		if (sf)
		{
			factor = factor ? num_mul(factor, sf) : sf;
			r->segment_factor = r->segment_factor ? num_mul(r->segment_factor, sf) : sf;
		}
	}

	if (control)
	{
		r->status = ROW_CONTROL;
		return;
	}
	{
		FixedNum	product;
		bool		fast = fixed_points(basis, factor, &product);

		if (!rule->no_minimum && below_minimum(rule, basis, fast))
		{
			r->status = ROW_BELOW_MINIMUM;
			return;
		}

		r->status = ROW_EARNS;
		if (f->explain || !fast ||
			!round_fixed(product.value, fixed_pow10(product.scale), prog->rounding, &r->points))
		{
			r->raw_points = factor ? num_mul(basis, factor) : basis;
			if (!round_points(r->raw_points, prog->rounding, &r->points))
				return reject(r, "points exceed the bigint range%s", "");
		}
	}
	if (rule->bonus_pct && f->has_due && f->has_paid && f->paid <= f->due && r->points != 0)
	{
		FixedNum	pts = {r->points, 0, 0};
		FixedNum	bonus;

		if ((!rule->bonus_fixed_ok || !fixed_mul(&pts, &rule->bonus_fixed, &bonus) ||
			 !round_fixed(bonus.value, fixed_pow10(bonus.scale), prog->rounding, &r->bonus)) &&
			!round_points(num_mul(int64_to_numeric(r->points), rule->bonus_pct), prog->rounding, &r->bonus))
			return reject(r, "on-time bonus exceeds the bigint range%s", "");
		/* the row's points and bonus are summed into one month's sum */
		if (pg_add_s64_overflow(r->points, r->bonus, &total))
			return reject(r, "points with the on-time bonus exceed the bigint range%s", "");
	}
}

DateADT
rules_today(const Program *prog)
{
	Datum		local = DirectFunctionCall2(timestamptz_zone,
											CStringGetTextDatum(prog->time_zone),
											TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()));

	return DatumGetDateADT(DirectFunctionCall1(timestamp_date, local));
}

/* The dead-letter reason of a line whose header row is not there (yet). */
const char *
rules_header_missing_reason(void)
{
	return "header row not found";
}
