/*
 * fixedpoint.h — an exact fast path for the numeric arithmetic of accrual.
 * Amounts and rates with at most FIXED_SCALE decimals are read as integers
 * scaled by 10^FIXED_SCALE, summed and multiplied in 64/128-bit integers, and
 * turned back into numeric once per sum.  Anything else (more decimals, huge
 * values, NaN) makes the caller fall back to numeric: never a rounded result.
 */
#ifndef LOYALTY_FIXEDPOINT_H
#define LOYALTY_FIXEDPOINT_H

#include "postgres.h"
#include "utils/numeric.h"

#define FIXED_SCALE 6
#define FIXED_ONE INT64CONST(1000000)

/* value * 10^FIXED_SCALE, and the number's display scale; false if it does not fit */
extern bool fixed_from_numeric(Numeric n, int64 *out, int *dscale);
/* an exact numeric of value / 10^FIXED_SCALE shown with dscale decimals */
extern Numeric fixed_to_numeric(int128 value, int dscale);

/* A sum that stays in integers while it can. */
typedef struct FixedSum
{
	int128		fixed;			/* sum of the values that fit */
	int			dscale;			/* largest display scale seen */
	Numeric		rest;			/* sum of the others, NULL if none */
} FixedSum;

extern void fixed_sum_add(FixedSum *s, Numeric n, int sign);
extern Numeric fixed_sum_value(const FixedSum *s);

#endif
