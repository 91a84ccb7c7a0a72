/*
 * fixedpoint.h — an exact fast path for the numeric arithmetic of accrual.
 * A numeric is read as a 128-bit integer and the number of decimals it
 * really has (trailing zeros dropped: 5 / 100 is 0.05 at display scale 20,
 * held as 5 and 2 decimals).  Products, comparisons, roundings and sums run
 * on those integers and go back to numeric once per sum, with numeric's own
 * display scale.  Anything that does not fit (more than FIXED_MAX_SCALE
 * decimals in a product, a value or product beyond 128 bits, NaN,
 * infinity) makes the caller fall back to numeric: never a rounded result.
 */
#ifndef LOYALTY_FIXEDPOINT_H
#define LOYALTY_FIXEDPOINT_H

#include "postgres.h"
#include "utils/numeric.h"

/* 10^38 is the largest power of ten below 2^127 */
#define FIXED_MAX_SCALE 38

/* An exact number: value / 10^scale. */
typedef struct FixedNum
{
	int128		value;
	int			scale;			/* decimals held, 0..FIXED_MAX_SCALE */
	int			dscale;			/* numeric's display scale, >= scale */
} FixedNum;

/* n as a FixedNum; false if it does not fit (or is NaN or infinite) */
extern bool fixed_from_numeric(Numeric n, FixedNum *out);
/* the exact numeric of value / 10^scale shown with dscale decimals */
extern Numeric fixed_to_numeric(int128 value, int scale, int dscale);
/* a * b exactly; false if the product does not fit */
extern bool fixed_mul(const FixedNum *a, const FixedNum *b, FixedNum *out);
/* |a| < |b|, exactly; false in *ok if it cannot tell in 128 bits */
extern bool fixed_abs_less(const FixedNum *a, const FixedNum *b, bool *ok);
/* 10^n for 0 <= n <= FIXED_MAX_SCALE */
extern int128 fixed_pow10(int n);

/* A sum that stays in integers while it can. */
typedef struct FixedSum
{
	int128		fixed;			/* sum of the values that fit, scaled by 10^scale */
	int			scale;
	int			dscale;			/* largest display scale among them */
	Numeric		rest;			/* sum of the others, NULL if none */
} FixedSum;

/*
 * Adds n (sign < 0: subtracts it).  The sum's numeric part is allocated in
 * CurrentMemoryContext, which must outlive the sum; the previous partial
 * sum is freed, so a long sum takes constant memory.
 */
extern void fixed_sum_add(FixedSum *s, Numeric n, int sign);
extern Numeric fixed_sum_value(const FixedSum *s);

#endif
