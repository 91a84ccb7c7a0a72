/*
 * did.c — the difference-in-differences aggregate loyalty.did(is_pilot,
 * pre, post) and the Student t quantile its interval needs.
 *
 * State.  Per group (control, pilot): the count, the mean and the sum of
 * squared deviations (M2) of the change post - pre, updated by Welford's
 * recurrence and merged by Chan et al.'s pairwise formula, so that a
 * parallel plan (partial states combined in any order) gives the serial
 * result up to rounding.  The state is float8: means and variances of
 * money need no more than 15 significant digits, and the estimate agrees
 * with the exact OLS interaction estimate to 1e-9 (sql/did.sql).
 *
 * Rows.  A row with a NULL in any argument is skipped (it is not counted).
 * A numeric is read straight from its on-disk format (as fixedpoint.c does)
 * into a double, correctly rounded; only values beyond 36 digits or 22
 * decimals go through numeric's own conversion.  NaN and infinities are
 * refused: they would make every figure of the result meaningless.
 *
 * Result.  pilot_n and control_n always; a group's mean change when it has
 * a row; the uplift (pilot mean change - control mean change) when both
 * have; the standard error sqrt(s_p^2/n_p + s_c^2/n_c) (Welch), the Welch-
 * Satterthwaite degrees of freedom and the 95% interval uplift +- t(0.975,
 * df) * se only when both groups have at least two rows.  When the standard
 * error is 0 (every change equal within each group) the interval is the
 * uplift itself and the degrees of freedom are NULL (0/0).
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/numeric.h"

/* numeric's on-disk header bits (src/backend/utils/adt/numeric.c) */
#define N_SIGN_MASK			0xC000
#define N_NEG				0x4000
#define N_SHORT				0x8000
#define N_SPECIAL			0xC000
#define N_SHORT_SIGN_MASK	0x2000
#define N_SHORT_WEIGHT_SIGN	0x0040
#define N_SHORT_WEIGHT_MASK	0x003F

#define DID_RESULT_NATTS 9

typedef struct DidGroup
{
	int64		n;
	double		mean;
	double		m2;
} DidGroup;

typedef struct DidState
{
	DidGroup	g[2];			/* [0] control, [1] pilot */
} DidState;

/* ---- numeric to double ---- */

static const double pow10_exact[] = {
	1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22
};

/*
 * A numeric datum (possibly with a short header, never detoasted here) as
 * a double, correctly rounded: its base-10000 digits are an exact 128-bit
 * integer, divided or multiplied by a power of ten that double holds
 * exactly.  False when it does not fit that path.
 */
static bool
numeric_fast_double(struct varlena *v, double *out)
{
	const char *p = VARDATA_ANY(v);
	int			len = VARSIZE_ANY_EXHDR(v);
	uint16		header;
	bool		neg;
	int			weight;
	int			ndigits;
	int			exp;
	int128		acc = 0;
	int			i;

	memcpy(&header, p, sizeof(header));
	if ((header & N_SIGN_MASK) == N_SPECIAL)
		return false;
	if (header & N_SHORT)
	{
		neg = (header & N_SHORT_SIGN_MASK) != 0;
		weight = (header & N_SHORT_WEIGHT_SIGN ? ~N_SHORT_WEIGHT_MASK : 0) | (header & N_SHORT_WEIGHT_MASK);
		p += sizeof(uint16);
		len -= sizeof(uint16);
	}
	else
	{
		int16		w;

		neg = (header & N_SIGN_MASK) == N_NEG;
		memcpy(&w, p + sizeof(uint16), sizeof(int16));
		weight = w;
		p += 2 * sizeof(uint16);
		len -= 2 * sizeof(uint16);
	}
	ndigits = len / (int) sizeof(int16);
	if (ndigits == 0)
	{
		*out = 0.0;
		return true;
	}
	if (ndigits > 9)
		return false;			/* 10000^9 < 2^127: the integer cannot overflow */
	for (i = 0; i < ndigits; i++)
	{
		int16		d;

		memcpy(&d, p + i * sizeof(int16), sizeof(int16));
		acc = acc * 10000 + d;
	}
	exp = 4 * (weight - (ndigits - 1));
	if (exp < -22 || exp > 22)
		return false;
	*out = exp < 0 ? (double) acc / pow10_exact[-exp] : (double) acc * pow10_exact[exp];
	if (neg)
		*out = -*out;
	return true;
}

static double
did_numeric_value(Datum d, const char *param)
{
	struct varlena *v = (struct varlena *) DatumGetPointer(d);
	double		x;

	if (VARATT_IS_EXTENDED(v) && !VARATT_IS_SHORT(v))
		v = pg_detoast_datum_packed(v);
	if (numeric_fast_double(v, &x))
		return x;
	x = DatumGetFloat8(DirectFunctionCall1(numeric_float8, PointerGetDatum(pg_detoast_datum(v))));
	if (isnan(x) || isinf(x))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("did() cannot use %s %s", param, isnan(x) ? "NaN" : "infinity"),
				 errdetail("A change that is not a finite number has no mean and no variance."),
				 errhint("Filter the rows, e.g. WHERE %s <> 'NaN', or map them to NULL, which did() skips.", param)));
	return x;
}

/* ---- state ---- */

static DidState *
did_state(FunctionCallInfo fcinfo, const char *fn)
{
	MemoryContext aggcxt;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "%s called in non-aggregate context", fn);
	if (PG_ARGISNULL(0))
		return (DidState *) MemoryContextAllocZero(aggcxt, sizeof(DidState));
	return (DidState *) PG_GETARG_POINTER(0);
}

/* Welford: one more change x in group g. */
static inline void
group_add(DidGroup *g, double x)
{
	double		delta = x - g->mean;

	g->n++;
	g->mean += delta / (double) g->n;
	g->m2 += delta * (x - g->mean);
}

/* Chan et al.: b merged into a. */
static void
group_merge(DidGroup *a, const DidGroup *b)
{
	double		n,
				delta;

	if (b->n == 0)
		return;
	if (a->n == 0)
	{
		*a = *b;
		return;
	}
	n = (double) a->n + (double) b->n;
	delta = b->mean - a->mean;
	a->mean += delta * ((double) b->n / n);
	a->m2 += b->m2 + delta * delta * ((double) a->n * (double) b->n / n);
	a->n += b->n;
}

/* Transition: rows with a NULL argument are skipped. */
PG_FUNCTION_INFO_V1(loyalty_did_trans);
Datum
loyalty_did_trans(PG_FUNCTION_ARGS)
{
	DidState   *s = did_state(fcinfo, "loyalty_did_trans");
	double		pre,
				post;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		PG_RETURN_POINTER(s);
	pre = did_numeric_value(PG_GETARG_DATUM(2), "pre");
	post = did_numeric_value(PG_GETARG_DATUM(3), "post");
	group_add(&s->g[PG_GETARG_BOOL(1) ? 1 : 0], post - pre);
	PG_RETURN_POINTER(s);
}

/* Combine: two partial states of a parallel plan. */
PG_FUNCTION_INFO_V1(loyalty_did_combine);
Datum
loyalty_did_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	DidState   *a;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "loyalty_did_combine called in non-aggregate context");
	if (PG_ARGISNULL(1))
		PG_RETURN_POINTER(PG_ARGISNULL(0) ? NULL : PG_GETARG_POINTER(0));
	a = PG_ARGISNULL(0) ? (DidState *) MemoryContextAllocZero(aggcxt, sizeof(DidState))
		: (DidState *) PG_GETARG_POINTER(0);
	group_merge(&a->g[0], &((DidState *) PG_GETARG_POINTER(1))->g[0]);
	group_merge(&a->g[1], &((DidState *) PG_GETARG_POINTER(1))->g[1]);
	PG_RETURN_POINTER(a);
}

/* Serialise: six numbers, float8 in IEEE binary form (exact round trip). */
PG_FUNCTION_INFO_V1(loyalty_did_serial);
Datum
loyalty_did_serial(PG_FUNCTION_ARGS)
{
	DidState   *s = (DidState *) PG_GETARG_POINTER(0);
	StringInfoData buf;
	int			i;

	pq_begintypsend(&buf);
	for (i = 0; i < 2; i++)
	{
		pq_sendint64(&buf, s->g[i].n);
		pq_sendfloat8(&buf, s->g[i].mean);
		pq_sendfloat8(&buf, s->g[i].m2);
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(loyalty_did_deserial);
Datum
loyalty_did_deserial(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	MemoryContext aggcxt;
	StringInfoData buf;
	DidState   *s;
	int			i;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "loyalty_did_deserial called in non-aggregate context");
	s = (DidState *) MemoryContextAllocZero(aggcxt, sizeof(DidState));
	buf.data = VARDATA_ANY(b);
	buf.len = VARSIZE_ANY_EXHDR(b);
	buf.maxlen = buf.len;
	buf.cursor = 0;
	for (i = 0; i < 2; i++)
	{
		s->g[i].n = pq_getmsgint64(&buf);
		s->g[i].mean = pq_getmsgfloat8(&buf);
		s->g[i].m2 = pq_getmsgfloat8(&buf);
	}
	pq_getmsgend(&buf);
	PG_RETURN_POINTER(s);
}

/* ---- Student's t quantile ---- */

/*
 * The standard normal quantile: Acklam's rational approximation (relative
 * error below 1.2e-9), refined by one Halley step on erfc, which brings it
 * to full double precision.
 */
static double
normal_quantile(double p)
{
	static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
	1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
	static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
	6.680131188771972e+01, -1.328068155288572e+01};
	static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
	-2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
	static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
	3.754408661907416e+00};
	double		q,
				r,
				x,
				e,
				u;

	if (p < 0.02425)
	{
		q = sqrt(-2 * log(p));
		x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
			((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
	}
	else if (p <= 1 - 0.02425)
	{
		q = p - 0.5;
		r = q * q;
		x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
			(((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
	}
	else
	{
		q = sqrt(-2 * log(1 - p));
		x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
			((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
	}
	e = 0.5 * erfc(-x / M_SQRT2) - p;
	u = e * sqrt(2 * M_PI) * exp(x * x / 2);
	return x - u / (1 + x * u / 2);
}

/*
 * The regularised incomplete beta function I_x(a, b) by its continued
 * fraction (modified Lentz), for x < (a + 1) / (a + b + 2), where it
 * converges fast; y = 1 - x is passed separately so that no digits are
 * lost when x is near 1.
 */
static double
beta_cf(double a, double b, double x, double y)
{
	const double tiny = 1e-300;
	double		front,
				c,
				d,
				f;
	int			m;

	front = exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log(y)) / a;
	f = 1.0;
	c = 1.0;
	d = 1.0 - (a + b) * x / (a + 1.0);
	d = fabs(d) < tiny ? tiny : d;
	d = 1.0 / d;
	f = d;
	for (m = 1; m <= 10000; m++)
	{
		double		num,
					delta;

		num = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
		d = 1.0 + num * d;
		d = fabs(d) < tiny ? tiny : d;
		c = 1.0 + num / c;
		c = fabs(c) < tiny ? tiny : c;
		d = 1.0 / d;
		f *= c * d;

		num = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
		d = 1.0 + num * d;
		d = fabs(d) < tiny ? tiny : d;
		c = 1.0 + num / c;
		c = fabs(c) < tiny ? tiny : c;
		d = 1.0 / d;
		delta = c * d;
		f *= delta;
		if (fabs(delta - 1.0) < 1e-16)
			break;
	}
	return front * f;
}

static double
incomplete_beta(double a, double b, double x, double y)
{
	if (x <= 0)
		return 0;
	if (y <= 0)
		return 1;
	if (x < (a + 1.0) / (a + b + 2.0))
		return beta_cf(a, b, x, y);
	return 1.0 - beta_cf(b, a, y, x);
}

/* P(T > t) for t >= 0, T Student's t with df degrees of freedom. */
static double
t_upper_tail(double t, double df)
{
	double		t2 = t * t;

	return 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2));
}

static double
t_density(double t, double df)
{
	return exp(lgamma((df + 1) / 2) - lgamma(df / 2) - 0.5 * log(df * M_PI)
			   - (df + 1) / 2 * log1p(t * t / df));
}

/*
 * The Cornish-Fisher expansion of the t quantile in powers of 1/df
 * (Abramowitz and Stegun 26.7.5): its error is O(df^-5), below 1e-12 from
 * df = 1000 on, where the incomplete beta's log-gamma terms would lose more.
 */
static double
t_quantile_expansion(double z, double df)
{
	double		z2 = z * z;
	double		g1 = (z2 + 1) * z / 4;
	double		g2 = ((5 * z2 + 16) * z2 + 3) * z / 96;
	double		g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384;
	double		g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160;

	return z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df;
}

/*
 * t with P(T <= t) = p.  Newton's method on the upper tail from the
 * expansion's estimate, kept inside a bracket that bisection shrinks when a
 * step would leave it; converges to a relative 1e-15 in a few steps.
 */
static double
t_quantile(double p, double df)
{
	double		q = p < 0.5 ? p : 1.0 - p;	/* the tail beyond |t| */
	double		z = -normal_quantile(q);
	double		t,
				lo = 0,
				hi = 1;
	int			i;

	if (p == 0.5)
		return 0;
	t = t_quantile_expansion(z, df);
	if (df < 1000)
	{
		while (t_upper_tail(hi, df) > q)
			hi *= 2;
		if (!(t > lo && t < hi))
			t = (lo + hi) / 2;
		for (i = 0; i < 200; i++)
		{
			double		tail = t_upper_tail(t, df);
			double		next;

			if (tail > q)
				lo = t;
			else
				hi = t;
			next = t + (tail - q) / t_density(t, df);
			if (!(next > lo && next < hi))
				next = (lo + hi) / 2;
			if (fabs(next - t) <= 1e-15 * fabs(t))
			{
				t = next;
				break;
			}
			t = next;
		}
	}
	return p < 0.5 ? -t : t;
}

/* The quantile function of Student's t, SQL-visible for checking. */
PG_FUNCTION_INFO_V1(loyalty_t_quantile);
Datum
loyalty_t_quantile(PG_FUNCTION_ARGS)
{
	float8		p = PG_GETARG_FLOAT8(0);
	float8		df = PG_GETARG_FLOAT8(1);

	if (!(p > 0 && p < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("p must be between 0 and 1 (exclusive), not %g", p),
				 errdetail("p is the probability P(T <= t) of the quantile t."),
				 errhint("For a two-sided 95%% interval use p => 0.975.")));
	if (!(df > 0) || isinf(df))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("df must be a positive finite number, not %g", df),
				 errdetail("df is the degrees of freedom of Student's t distribution."),
				 errhint("For the normal distribution's quantile use a large df, e.g. 1e12.")));
	PG_RETURN_FLOAT8(t_quantile(p, df));
}

/* ---- final ---- */

/* The result row; see the header comment for which fields are NULL when. */
PG_FUNCTION_INFO_V1(loyalty_did_final);
Datum
loyalty_did_final(PG_FUNCTION_ARGS)
{
	DidState	empty = {0};
	DidState   *s = PG_ARGISNULL(0) ? &empty : (DidState *) PG_GETARG_POINTER(0);
	const DidGroup *pg = &s->g[1],
			   *cg = &s->g[0];
	TupleDesc	desc;
	Datum		values[DID_RESULT_NATTS];
	bool		nulls[DID_RESULT_NATTS];
	int			i;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "did() must return a composite type");
	desc = BlessTupleDesc(desc);
	for (i = 0; i < DID_RESULT_NATTS; i++)
		nulls[i] = true;
	values[0] = Int64GetDatum(pg->n);
	values[1] = Int64GetDatum(cg->n);
	nulls[0] = nulls[1] = false;
	if (pg->n > 0)
	{
		values[2] = Float8GetDatum(pg->mean);
		nulls[2] = false;
	}
	if (cg->n > 0)
	{
		values[3] = Float8GetDatum(cg->mean);
		nulls[3] = false;
	}
	if (pg->n > 0 && cg->n > 0)
	{
		double		uplift = pg->mean - cg->mean;

		values[4] = Float8GetDatum(uplift);
		nulls[4] = false;
		if (pg->n > 1 && cg->n > 1)
		{
			double		vp = pg->m2 / (double) (pg->n - 1) / (double) pg->n;
			double		vc = cg->m2 / (double) (cg->n - 1) / (double) cg->n;
			double		se = sqrt(vp + vc);
			double		half = 0;

			if (se > 0)
			{
				double		df = (vp + vc) * (vp + vc) /
					(vp * vp / (double) (pg->n - 1) + vc * vc / (double) (cg->n - 1));

				half = t_quantile(0.975, df) * se;
				values[8] = Float8GetDatum(df);
				nulls[8] = false;
			}
			values[5] = Float8GetDatum(se);
			values[6] = Float8GetDatum(uplift - half);
			values[7] = Float8GetDatum(uplift + half);
			nulls[5] = nulls[6] = nulls[7] = false;
		}
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
