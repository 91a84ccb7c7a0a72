/*
 * tier_ladder.h — the tier_ladder type: ordered named thresholds.
 *
 * The C API below is what the accrual engine uses to place an account on a
 * ladder without going through SQL.
 */
#ifndef LOYALTY_TIER_LADDER_H
#define LOYALTY_TIER_LADDER_H

#include "postgres.h"

#include "fmgr.h"
#include "utils/numeric.h"

/* Limits of one ladder (see literal.h for the limits of a threshold). */
#define TIER_LADDER_MAX_TIERS	64
#define TIER_LADDER_MAX_NAME	63	/* bytes */

/* On-disk format of the value; bumped if the layout ever changes. */
#define TIER_LADDER_VERSION		1

/*
 * The stored value, canonical so that equal ladders are equal bytes.  After
 * the fixed header come 2 * ntiers offsets (from the start of the value):
 * for tier i, entry[2i] locates its threshold, a Numeric in canonical form
 * (4-byte aligned, 4-byte header), and entry[2i + 1] its NUL-terminated name.
 * Padding is zero.  Thresholds are strictly ascending and not negative; names
 * are 1..63 bytes and distinct ignoring ASCII case.
 */
typedef struct TierLadder
{
	int32		vl_len_;		/* varlena header (do not touch directly!) */
	uint8		version;		/* TIER_LADDER_VERSION */
	uint8		unused;			/* zero */
	int16		ntiers;			/* 1..TIER_LADDER_MAX_TIERS */
	uint32		entry[FLEXIBLE_ARRAY_MEMBER];
} TierLadder;

#define DatumGetTierLadderP(d)	((TierLadder *) PG_DETOAST_DATUM(d))
#define PG_GETARG_TIER_LADDER_P(n)	DatumGetTierLadderP(PG_GETARG_DATUM(n))
#define PG_RETURN_TIER_LADDER_P(x)	PG_RETURN_POINTER(x)

/* Number of tiers, at least 1. */
extern int	tier_ladder_ntiers(const TierLadder *l);

/* Name of tier i (0-based, lowest first); points into l. */
extern const char *tier_ladder_name(const TierLadder *l, int i);

/* Threshold of tier i (0-based); points into l: copy it to keep it longer. */
extern Numeric tier_ladder_threshold(const TierLadder *l, int i);

/*
 * 0-based index of the highest tier whose threshold is at most amount, or -1
 * below the first threshold.  A negative amount (net credit) counts as 0.
 * NaN and infinite amounts are an error.
 */
extern int	tier_ladder_index(const TierLadder *l, Numeric amount);

/* 0-based index of the tier called name (ASCII case ignored), or -1. */
extern int	tier_ladder_find(const TierLadder *l, const char *name);

#endif
