/*
 * ledger.h — the write side of accrual: a statement's ledger entries and
 * balance deltas, appended as the extension owner in one batched statement
 * each; the per-month sums and the caps that loyalty.fold() and
 * loyalty.balance share.
 */
#ifndef LOYALTY_LEDGER_H
#define LOYALTY_LEDGER_H

#include "fixedpoint.h"
#include "rules.h"

/* Change of one account's sums for one document month. */
typedef struct MonthDelta
{
	char	   *account;
	DateADT		month;
	int64		points_new;		/* rows added: base points */
	int64		points_old;		/* rows removed: base points */
	int64		bonus_new;
	int64		bonus_old;
	Numeric		qual_new;
	Numeric		qual_old;
	FixedSum	qual_new_sum;	/* accrual sums here, then fills qual_new/old */
	FixedSum	qual_old_sum;
	int64		rows_new;
	int64		rows_old;
	DateADT		max_date;		/* the latest document date of the rows added (0: none) */
} MonthDelta;

/*
 * Posts a statement's deltas; deltas[] must be sorted by (account, month).
 * kind_new / kind_old name the ledger kinds of the added and removed rows
 * ("earn"/"reverse" for the trigger, "backfill" for backfill).
 */
extern void ledger_post(Program *prog, int32 attachment_id, MonthDelta *deltas, int n,
						const char *kind_new, const char *kind_old, const char *reason);

/* a + b points of one account, or a clear error naming it (never a wrapped sum) */
extern int64 ledger_add_points(int64 a, int64 b, const Program *prog, const char *account);

/* A cap that applies to a document month: its period and points. */
typedef struct LedgerCap
{
	char		period;			/* 'y', 'q' or 'm' */
	DateADT		start;
	DateADT		end;			/* exclusive */
	int64		points;
} LedgerCap;

/* The caps of a document month, year first; returns how many (0 to 3). */
extern int	ledger_caps_for_month(const Program *prog, DateADT month, LedgerCap caps[3]);

/* A calendar year's twelve monthly point sums after its caps. */
extern int64 ledger_capped_year(const Program *prog, DateADT year_start, const int64 month_points[12],
								const char *account);

/* Per-month sums as parallel arrays, sorted by (month, attachment). */
typedef struct MonthArrays
{
	int			n;
	DateADT    *month;
	int32	   *attachment;
	int64	   *points;
	Numeric    *qualifying;
	int64	   *rows;
} MonthArrays;

/* Reads and checks five arrays ((Datum) 0 for attachments or rows: zeros). */
extern void ledger_arrays_read(MonthArrays *m, const char *prefix, Datum mo, Datum at, Datum pt, Datum qu, Datum ro);

/* r = a + b; elements that net to nothing disappear. */
extern void ledger_months_merge(const MonthArrays *a, const MonthArrays *b, MonthArrays *r);

/* Points the caps withhold (negative) or give back when months go from before to after. */
extern int64 ledger_cap_change(const Program *prog, const char *account, const MonthArrays *before,
							   const MonthArrays *after);

/* count consecutive numbers for ledger entries and deltas, unique within the transaction */
extern int64 ledger_numbers(int count);

#endif
