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

/*
 * Replays the tiers of accts[0..n) (keys ascending, bytewise) of one
 * attachment from since (a month start, or -infinity) and rewrites their
 * tier history where it differs.  The caller is connected to SPI and holds
 * the attachment's backfill lock.
 */
extern void replay_tiers(Program *prog, int32 attachment_id, Oid source, DateADT since,
						 ReplayAccount *accts, int n);

#endif
