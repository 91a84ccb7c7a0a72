/*
 * fixedpoint.c — reads numeric's on-disk format (stable across releases, as
 * pg_upgrade requires) into scaled integers.  See fixedpoint.h.
 */
#include "postgres.h"

#include "common/int128.h"
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

bool
fixed_from_numeric(Numeric n, int64 *out, int *dscale)
{
	const char *p = (const char *) n + VARHDRSZ;
	uint16		header;
	bool		neg;
	int			weight;
	const int16 *digits;
	int			ndigits;
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
		*dscale = (header & N_SHORT_DSCALE_MASK) >> N_SHORT_DSCALE_SHIFT;
		weight = (header & N_SHORT_WEIGHT_SIGN ? ~N_SHORT_WEIGHT_MASK : 0) | (header & N_SHORT_WEIGHT_MASK);
		digits = (const int16 *) (p + sizeof(uint16));
		ndigits = (VARSIZE(n) - VARHDRSZ - sizeof(uint16)) / sizeof(int16);
	}
	else
	{
		int16		w;

		neg = (header & N_SIGN_MASK) == N_NEG;
		*dscale = header & N_DSCALE_MASK;
		memcpy(&w, p + sizeof(uint16), sizeof(int16));
		weight = w;
		digits = (const int16 *) (p + 2 * sizeof(uint16));
		ndigits = (VARSIZE(n) - VARHDRSZ - 2 * sizeof(uint16)) / sizeof(int16);
	}
	if (*dscale > FIXED_SCALE || weight > 4)
		return false;			/* > 10^20: leave it to numeric */

	for (i = 0; i < ndigits; i++)
	{
		/* digit i is worth 10000^(weight - i); times 10^6 */
		int			e = 4 * (weight - i) + FIXED_SCALE;
		int128		d = digits[i];

		if (e >= 0)
		{
			while (e-- > 0)
				d *= 10;
		}
		else
		{
			int			div = 1;

			while (e++ < 0)
				div *= 10;
			if (d % div != 0)
				return false;	/* cannot happen with dscale <= 6, but be exact */
			d /= div;
		}
		v += d;
	}
	if (neg)
		v = -v;
	if (v > PG_INT64_MAX || v < PG_INT64_MIN)
		return false;
	*out = (int64) v;
	return true;
}

Numeric
fixed_to_numeric(int128 value, int dscale)
{
	char		buf[64];
	char	   *p = buf + sizeof(buf);
	bool		neg = value < 0;
	uint128		u = neg ? -(uint128) value : (uint128) value;
	int			digits = 0;

	*--p = '\0';
	/* digits below the display scale are zero by construction */
	while (u > 0 || digits <= FIXED_SCALE)
	{
		if (digits == FIXED_SCALE)
			*--p = '.';
		*--p = '0' + (int) (u % 10);
		u /= 10;
		digits++;
	}
	if (neg)
		*--p = '-';
	/* drop the decimals beyond dscale (they are zeros) */
	{
		char	   *dot = strchr(p, '.');

		if (dscale <= 0)
			*dot = '\0';
		else
			dot[1 + Min(dscale, FIXED_SCALE)] = '\0';
	}
	return DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(p),
											   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
}

void
fixed_sum_add(FixedSum *s, Numeric n, int sign)
{
	int64		v;
	int			dscale;

	if (fixed_from_numeric(n, &v, &dscale))
	{
		/*
		 * Cannot overflow: each term is below 2^63 in magnitude, so int128
		 * holds the sum of any number of rows a statement can have (2^63).
		 */
		s->fixed += sign > 0 ? (int128) v : -(int128) v;
		if (dscale > s->dscale)
			s->dscale = dscale;
		return;
	}
	if (sign < 0)
		n = DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(n)));
	/* the sum outlives the row: never keep a pointer to the caller's value */
	s->rest = s->rest ? numeric_add_opt_error(s->rest, n, NULL)
		: DatumGetNumericCopy(NumericGetDatum(n));
}

Numeric
fixed_sum_value(const FixedSum *s)
{
	Numeric		f = fixed_to_numeric(s->fixed, s->dscale);

	return s->rest ? numeric_add_opt_error(f, s->rest, NULL) : f;
}
