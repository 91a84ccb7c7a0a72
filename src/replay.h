/*
 * replay.h — backfill's replay of the tier history: the upgrades accrual
 * would have made and the re-qualifications settlement would have made,
 * period by period from backfill's since, written to loyalty.tier_history.
 */
#ifndef LOYALTY_REPLAY_H
#define LOYALTY_REPLAY_H

#include "rules.h"

/* What an account's rows from since on qualify with, per document day. */
typedef struct ReplayDay
{
	DateADT		day;
	Numeric		qualifying;
} ReplayDay;

typedef struct ReplayAccount
{
	const char *key;
	ReplayDay  *days;			/* ascending day, one entry per day */
	int			ndays;
} ReplayAccount;

/* What replays of several Citus shards add up to, recorded once. */
typedef struct ReplayTotals
{
	int			accounts;		/* replayed */
	int64		changes;		/* tier changes written */
	int			written;		/* accounts whose history changed */
	DateADT		through;		/* the last day replayed */
} ReplayTotals;

/*
 * Replays the tiers of accts[0..n) (keys ascending, bytewise) of one
 * attachment from since (a month start, or -infinity) and rewrites their
 * tier history where it differs.  The caller is connected to SPI and holds
 * the attachment's backfill lock.  With totals (on a Citus shard) the
 * counts are added there, for replay_record() on the coordinator; without,
 * they are recorded in loyalty.tier_replay and reported now.
 */
extern void replay_tiers(Program *prog, int32 attachment_id, Oid source, DateADT since,
						 ReplayAccount *accts, int n, ReplayTotals *totals);
extern bool replay_will_run(Program *prog, DateADT since);
extern void replay_record(Program *prog, int32 attachment_id, DateADT since, const ReplayTotals *totals);

#endif
