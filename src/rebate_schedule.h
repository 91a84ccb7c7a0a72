/*
 * rebate_schedule.h — the rebate_schedule type: volume brackets with a mode.
 *
 * The C API below is what settlement and accrual use to price a volume
 * without going through SQL.
 */
#ifndef LOYALTY_REBATE_SCHEDULE_H
#define LOYALTY_REBATE_SCHEDULE_H

#include "postgres.h"

#include "fmgr.h"
#include "utils/numeric.h"

/* Limits of one schedule (see literal.h for the limits of a number). */
#define REBATE_SCHEDULE_MAX_BRACKETS	64

/* On-disk format of the value; bumped if the layout ever changes. */
#define REBATE_SCHEDULE_VERSION		1

typedef enum RebateMode
{
	REBATE_RETRO = 0,			/* the rate reached applies to the whole volume */
	REBATE_MARGINAL = 1			/* each bracket's slice at its own rate */
} RebateMode;

/*
 * The stored value, canonical so that equal schedules are equal bytes.  After
 * the fixed header come 2 * nbrackets offsets (from the start of the value):
 * for bracket i, entry[2i] locates its threshold and entry[2i + 1] its rate
 * in percent, both Numerics in canonical form (4-byte aligned, 4-byte
 * header).  Padding is zero.  Thresholds are strictly ascending and not
 * negative; rates are 0..100.
 */
typedef struct RebateSchedule
{
	int32		vl_len_;		/* varlena header (do not touch directly!) */
	uint8		version;		/* REBATE_SCHEDULE_VERSION */
	uint8		mode;			/* a RebateMode */
	int16		nbrackets;		/* 1..REBATE_SCHEDULE_MAX_BRACKETS */
	uint32		entry[FLEXIBLE_ARRAY_MEMBER];
} RebateSchedule;

#define DatumGetRebateScheduleP(d)	((RebateSchedule *) PG_DETOAST_DATUM(d))
#define PG_GETARG_REBATE_SCHEDULE_P(n)	DatumGetRebateScheduleP(PG_GETARG_DATUM(n))
#define PG_RETURN_REBATE_SCHEDULE_P(x)	PG_RETURN_POINTER(x)

extern RebateMode rebate_schedule_mode(const RebateSchedule *s);
extern int	rebate_schedule_nbrackets(const RebateSchedule *s);

/* Threshold and rate (in percent) of bracket i, 0-based; they point into s. */
extern Numeric rebate_schedule_threshold(const RebateSchedule *s, int i);
extern Numeric rebate_schedule_rate_of(const RebateSchedule *s, int i);

/*
 * 0-based index of the bracket reached by |volume| (the highest whose
 * threshold is at most |volume|), or -1 below the first threshold.
 */
extern int	rebate_schedule_index(const RebateSchedule *s, Numeric volume);

/*
 * The exact rebate on volume, never rounded: its scale is the volume's, or
 * more when the exact amount needs more decimals.  Symmetric: the rebate on
 * a negative volume (credit notes exceeding invoices) is minus the rebate on
 * its absolute value.  NaN and infinite volumes are an error.
 */
extern Numeric rebate_schedule_rebate(const RebateSchedule *s, Numeric volume);

/* The rate in percent of the bracket |volume| reaches; 0 below the first. */
extern Numeric rebate_schedule_rate(const RebateSchedule *s, Numeric volume);

#endif
