/*
 * rules.h — programs, versioned earning rules and the one pure points
 * function that accrual, explain_points, verify and backfill all use.
 */
#ifndef LOYALTY_RULES_H
#define LOYALTY_RULES_H

#include "loyalty.h"
#include "fixedpoint.h"
#include "tier_ladder.h"

typedef enum RoundingMode
{
	ROUND_TOWARD_ZERO,			/* drops the fraction: -247.83 gives -247 */
	ROUND_HALF_UP,				/* half away from zero */
	ROUND_HALF_EVEN
} RoundingMode;

typedef enum SegmentAttr
{
	SEG_COOPERATION_MODEL,
	SEG_INDUSTRY,
	SEG_REGION,
	SEG_COUNT
} SegmentAttr;

typedef struct Multiplier
{
	char	   *key;
	Numeric		factor;
} Multiplier;

typedef struct MultiplierMap
{
	int			n;
	Multiplier *items;
} MultiplierMap;

typedef struct RuleVersion
{
	DateADT		valid_from;
	Numeric		points_per_unit;
	Numeric		min_amount;
	bool		no_minimum;		/* min_amount = 0: skip the comparison */
	bool		unit_rate;		/* points_per_unit = 1: skip the product */
	bool		min_fixed_ok;	/* min_amount as a fixed-point number */
	FixedNum	min_fixed;
	bool		bonus_fixed_ok; /* bonus_pct as a fixed-point number */
	FixedNum	bonus_fixed;
	Numeric		bonus_pct;		/* NULL when there is no on-time bonus */
	int64		cap_points;		/* 0 when uncapped */
	char		cap_period;		/* 'm', 'q', 'y' or 0 */
	MultiplierMap product_line;
	MultiplierMap tier;
	MultiplierMap segment[SEG_COUNT];
} RuleVersion;

typedef struct Program
{
	int32		id;
	char	   *name;
	char		currency[4];
	bool		basis_quantity;
	RoundingMode rounding;
	int			window_months;
	char	   *time_zone;		/* the program's calendar: "today", document dates */
	bool		auto_enroll;
	bool		strict;
	TierLadder *ladder;			/* NULL: no tiers */
	bool		has_caps;
	bool		uses_tier_multipliers;	/* accounts' tier history is needed */
	int			nrules;
	RuleVersion *rules;			/* ascending valid_from */
	/* rebate_lines.c: the product lines rebate agreements scope, read lazily */
	bool		rebate_lines_loaded;
	struct RebateLines *rebate_lines;	/* NULL: none */
} Program;

/* What the points function needs to know about an account. */
typedef struct AccountInfo
{
	char	   *key;
	bool		enrolled;
	DateADT		enrolled_from;	/* documents before it do not earn */
	bool		control;
	char	   *segment[SEG_COUNT];
	char	   *tier;			/* current tier */
	int			nseg_hist;		/* earlier segments and cohorts, ascending valid_until */
	DateADT    *seg_until;
	char	 ***seg_hist;		/* [i][SEG_COUNT] */
	bool	   *control_hist;
	int			nhist;
	DateADT    *hist_from;		/* tier history, ascending effective_from */
	char	  **hist_tier;
} AccountInfo;

/* One ERP row, mapped: what the attachment's expressions produced. */
typedef struct RowFacts
{
	char	   *account;		/* NULL when the column was NULL */
	Numeric		amount;
	Numeric		quantity;
	bool		has_date;
	DateADT		date;
	char	   *product_line;
	bool		currency_mapped;
	bool		amount_mapped;	/* the attachment maps an amount (NULL then means unknown) */
	char	   *currency;
	bool		credit_note;
	bool		has_due;
	DateADT		due;
	bool		has_paid;
	DateADT		paid;
	bool		header_missing;
	bool		explain;		/* also compute RowResult.raw_points */
} RowFacts;

typedef enum RowStatus
{
	ROW_EARNS,					/* points and qualifying spend */
	ROW_BELOW_MINIMUM,			/* qualifying spend only */
	ROW_CONTROL,				/* control cohort: qualifying spend only */
	ROW_NOT_ENROLLED,			/* ignored, counted */
	ROW_REJECTED				/* dead letter */
} RowStatus;

typedef struct RowResult
{
	RowStatus	status;
	char	   *reason;			/* for ROW_REJECTED */
	const RuleVersion *rule;
	Numeric		basis;			/* signed */
	Numeric		pl_factor;
	const char *tier_on_date;
	Numeric		tier_factor;
	Numeric		segment_factor;
	Numeric		raw_points;
	int64		points;
	int64		bonus;
	Numeric		qualifying;		/* signed; NULL when nothing qualifies */
	DateADT		month;
} RowResult;

/*
 * Account keys are btree-indexed (loyalty.account, balance, ledger), and a
 * btree entry holds at most about 2.7 kB: a row whose key is longer than
 * this, or empty, is rejected before anything is written.
 */
#define LOYALTY_MAX_KEY_BYTES 1024

extern const char *rules_account_key_problem(const char *key);
extern Program *rules_load_program(int32 program_id, MemoryContext cxt);
extern const char *rules_status_name(RowStatus status);
extern const char *rules_rounding_name(RoundingMode mode);
extern void rules_row_points(const Program *prog, const AccountInfo *acct,
							 const RowFacts *facts, RowResult *result);
extern const RuleVersion *rules_version_on(const Program *prog, DateADT d);
extern DateADT rules_cap_period_start(char period, DateADT d);
extern DateADT rules_cap_period_next(char period, DateADT start);

extern const char *rules_header_missing_reason(void);

/* Today in the program's time zone (the transaction's start, as now()). */
extern DateADT rules_today(const Program *prog);

#endif
