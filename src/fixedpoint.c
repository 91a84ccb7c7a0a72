/*
 * fixedpoint.c — reads numeric's on-disk format (stable across releases, as
 * pg_upgrade requires) into 128-bit integers with their own scale.  See
 * fixedpoint.h.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

#include "fixedpoint.h"

/* numeric's on-disk header bits (src/backend/utils/adt/numeric.c) */
#define N_SIGN_MASK			0xC000
#define N_NEG				0x4000
#define N_SHORT				0x8000
#define N_SPECIAL			0xC000
#define N_SHORT_SIGN_MASK	0x2000
#define N_SHORT_DSCALE_MASK	0x1F80
#define N_SHORT_DSCALE_SHIFT 7
#define N_SHORT_WEIGHT_SIGN	0x0040
#define N_SHORT_WEIGHT_MASK	0x003F
#define N_DSCALE_MASK		0x3FFF

int128
fixed_pow10(int n)
{
	static int128 pow10[FIXED_MAX_SCALE + 1];

	Assert(n >= 0 && n <= FIXED_MAX_SCALE);
	if (pow10[0] == 0)
	{
		int			i;

		pow10[0] = 1;
		for (i = 1; i <= FIXED_MAX_SCALE; i++)
			pow10[i] = pow10[i - 1] * 10;
	}
	return pow10[n];
}

static inline bool
mul_overflow(int128 a, int128 b, int128 *out)
{
	return __builtin_mul_overflow(a, b, out);
}

static inline bool
add_overflow(int128 a, int128 b, int128 *out)
{
	return __builtin_add_overflow(a, b, out);
}

bool
fixed_from_numeric(Numeric n, FixedNum *out)
{
	const char *p = (const char *) n + VARHDRSZ;
	uint16		header;
	bool		neg;
	int			weight;
	const int16 *digits;
	int			ndigits;
	int			exp;
	int128		v = 0;
	int			i;

	if (VARATT_IS_EXTENDED(n))
		return false;			/* callers pass detoasted values; be safe */
	memcpy(&header, p, sizeof(header));
	if ((header & N_SIGN_MASK) == N_SPECIAL)
		return false;			/* NaN, Infinity */
	if (header & N_SHORT)
	{
		neg = (header & N_SHORT_SIGN_MASK) != 0;
		out->dscale = (header & N_SHORT_DSCALE_MASK) >> N_SHORT_DSCALE_SHIFT;
		weight = (header & N_SHORT_WEIGHT_SIGN ? ~N_SHORT_WEIGHT_MASK : 0) | (header & N_SHORT_WEIGHT_MASK);
		digits = (const int16 *) (p + sizeof(uint16));
		ndigits = (VARSIZE(n) - VARHDRSZ - sizeof(uint16)) / sizeof(int16);
	}
	else
	{
		int16		w;

		neg = (header & N_SIGN_MASK) == N_NEG;
		out->dscale = header & N_DSCALE_MASK;
		memcpy(&w, p + sizeof(uint16), sizeof(int16));
		weight = w;
		digits = (const int16 *) (p + 2 * sizeof(uint16));
		ndigits = (VARSIZE(n) - VARHDRSZ - 2 * sizeof(uint16)) / sizeof(int16);
	}
	out->value = 0;
	out->scale = 0;
	if (ndigits == 0)
		return true;			/* zero */
	if (weight > 9)
		return false;			/* >= 10^40: beyond 128 bits */

	/* the base-10000 digits as one integer, then where its last digit sits */
	for (i = 0; i < ndigits; i++)
		if (mul_overflow(v, 10000, &v) || add_overflow(v, digits[i], &v))
			return false;
	exp = weight - (ndigits - 1);
	if (exp >= 0)
	{
		if (mul_overflow(v, fixed_pow10(4 * exp), &v))
			return false;
	}
	else
	{
		int			scale = -4 * exp;

		/* the decimals it really has: 5 / 100 is 0.05, not 0.0500...0 */
		while (scale > 0 && v % 10 == 0)
		{
			v /= 10;
			scale--;
		}
		if (scale > FIXED_MAX_SCALE || scale > out->dscale)
			return false;
		out->scale = scale;
	}
	out->value = neg ? -v : v;
	return true;
}

Numeric
fixed_to_numeric(int128 value, int scale, int dscale)
{
	char		digits[48];
	char	   *d = digits + sizeof(digits);
	bool		neg = value < 0;
	uint128		u = neg ? -(uint128) value : (uint128) value;
	int			nd = 0;
	char	   *buf,
			   *p;

	Assert(scale >= 0 && scale <= dscale);
	*--d = '\0';
	while (u > 0 || nd <= scale)
	{
		*--d = '0' + (int) (u % 10);
		u /= 10;
		nd++;
	}
	/* sign, integer digits, point, the held decimals, zeros up to dscale */
	buf = p = palloc(nd + dscale + 4);
	if (neg)
		*p++ = '-';
	memcpy(p, d, nd - scale);
	p += nd - scale;
	if (dscale > 0)
	{
		*p++ = '.';
		memcpy(p, d + nd - scale, scale);
		p += scale;
		memset(p, '0', dscale - scale);
		p += dscale - scale;
	}
	*p = '\0';
	return DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(buf),
											   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
}

bool
fixed_mul(const FixedNum *a, const FixedNum *b, FixedNum *out)
{
	if (a->scale + b->scale > FIXED_MAX_SCALE || mul_overflow(a->value, b->value, &out->value))
		return false;
	out->scale = a->scale + b->scale;
	out->dscale = a->dscale + b->dscale;	/* what numeric's multiplication shows */
	return true;
}

bool
fixed_abs_less(const FixedNum *a, const FixedNum *b, bool *ok)
{
	int128		x = a->value < 0 ? -a->value : a->value;
	int128		y = b->value < 0 ? -b->value : b->value;

	*ok = a->scale >= b->scale
		? !mul_overflow(y, fixed_pow10(a->scale - b->scale), &y)
		: !mul_overflow(x, fixed_pow10(b->scale - a->scale), &x);
	return *ok && x < y;
}

/* The slow part of a sum: numeric, the previous partial sum freed. */
static void
rest_add(FixedSum *s, Numeric n, int sign)
{
	Numeric		old = s->rest;

	if (old == NULL)
		s->rest = sign < 0 ? DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(n)))
			: DatumGetNumericCopy(NumericGetDatum(n));
	else
	{
		s->rest = sign < 0 ? numeric_sub_opt_error(old, n, NULL) : numeric_add_opt_error(old, n, NULL);
		pfree(old);
	}
}

void
fixed_sum_add(FixedSum *s, Numeric n, int sign)
{
	FixedNum	x;
	int128		v;

	if (!fixed_from_numeric(n, &x))
	{
		rest_add(s, n, sign);
		return;
	}
	v = sign < 0 ? -x.value : x.value;
	if (x.scale > s->scale)
	{
		int128		rescaled;

		if (mul_overflow(s->fixed, fixed_pow10(x.scale - s->scale), &rescaled))
		{
			/* the integer sum cannot take more decimals: it moves to numeric */
			Numeric		f = fixed_to_numeric(s->fixed, s->scale, s->dscale);

			rest_add(s, f, 1);
			pfree(f);
			rescaled = 0;
			s->dscale = 0;
		}
		s->fixed = rescaled;
		s->scale = x.scale;
		/* never above the final display scale: x has at least this many */
		s->dscale = Max(s->dscale, s->scale);
	}
	if ((x.scale < s->scale && mul_overflow(v, fixed_pow10(s->scale - x.scale), &v)) ||
		add_overflow(s->fixed, v, &v))
	{
		rest_add(s, n, sign);
		return;
	}
	s->fixed = v;
	s->dscale = Max(s->dscale, x.dscale);
}

Numeric
fixed_sum_value(const FixedSum *s)
{
	Numeric		f = fixed_to_numeric(s->fixed, s->scale, s->dscale);
	Numeric		r;

	if (s->rest == NULL)
		return f;
	r = numeric_add_opt_error(f, s->rest, NULL);
	pfree(f);
	return r;
}
