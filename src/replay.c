/*
 * replay.c — backfill replays the tier history of the past.
 *
 * What the program would have done, had it run from backfill's since:
 *
 * - Upgrades on accrual.  loyalty.fold() upgrades an account whose rolling
 *   qualifying spend (the window of months ending with the current month)
 *   reaches a higher tier, from the day after, and only when the account had
 *   documents to fold.  The replay takes the documents as arriving on their
 *   own dates and folded at the end of each day: after each document day d
 *   of an account, the window ending with d's month (the days up to d
 *   counted) decides, and an upgrade takes effect on d + 1.
 *
 * - Re-qualification at each period's end, as loyalty.settle() decides it
 *   (_settle_accounts: the window ending with the period's last month, the
 *   program's grace rule, an upgrade reached in the period kept).  A run
 *   that cron starts the day after the period's end changes the tier from
 *   the day after that: period_end + 2.  A settlement change comes before
 *   that day's upgrade (change numbers in that order).
 *
 * Months before since (and the months of the program's other attached
 * tables) count in the windows as the books hold them
 * (loyalty.accrual_month).  Every change the replay writes has reason
 * 'backfill'.  It replaces the rows of dates after since that documents
 * decided (reason backfill or upgrade_on_accrual) of the accounts it
 * replays, and only when they differ from the replay, so that a second
 * backfill writes nothing.  Accounts whose tier an admin set (a tier grant,
 * a manual change after since) are left as they are, as settlement leaves
 * them.  The periods replayed are recorded in loyalty.tier_replay:
 * settle_due() starts after them and settle() refuses them, so that no
 * period is re-qualified twice.
 *
 * The walk is per account in C, over the account's document days; SQL runs
 * a fixed number of set-based statements for all accounts.
 */
#include "postgres.h"

#include "access/xact.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "catalog/namespace.h"

#include "accounts.h"
#include "loyalty.h"
#include "keytype.h"
#include "reconcile.h"
#include "replay.h"
#include "tier_ladder.h"

/* The settlement rules the replay needs, read from loyalty.program. */
typedef struct ReplayRules
{
	int			period_months;	/* 1, 3 or 12 */
	char		grace;			/* n(one), o(ne_level), m(argin), p(eriods) */
	Numeric		margin_factor;	/* 1 - tier_grace_value, for margin */
	int			grace_periods;	/* for periods */
	DateADT		today;
	DateADT		first_open;		/* first day of the period not ended yet */
} ReplayRules;

/* One tier change of the replay. */
typedef struct ReplayChange
{
	DateADT		effective_from;
	int			old_idx;		/* 0-based ladder index, -1: no tier */
	int			new_idx;
	Numeric		rolling;
} ReplayChange;

/* An account's state: what it had, its windows' months, its changes. */
typedef struct ReplayState
{
	const ReplayAccount *acct;
	bool		skip;			/* a tier an admin set: left alone */
	int			start_idx;
	int			nmonths;
	DateADT    *month;
	Numeric    *q;
	int			nchanges;
	ReplayChange *changes;
	/* the rows the replay replaces, as they are */
	int			nold;
	DateADT    *old_from;
	char	  **old_old;
	char	  **old_new;
	int64		max_kept_no;	/* highest change number of the rows kept */
} ReplayState;

static Numeric
num_add(Numeric a, Numeric b)
{
	return numeric_add_opt_error(a, b, NULL);
}

static int
num_cmp(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a), NumericGetDatum(b)));
}

/* The first day of the settlement period holding d. */
static DateADT
period_start(const ReplayRules *r, DateADT d)
{
	int			y,
				m,
				dd;

	j2date(d + POSTGRES_EPOCH_JDATE, &y, &m, &dd);
	return loyalty_add_months(loyalty_month_start(d), -((m - 1) % r->period_months));
}

/* ---- reading the program and the accounts ---- */

static Datum
col(int c, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, c, isnull);
}

/*
 * The program's settlement rules, or false (with a NOTICE) when the replay
 * cannot decide as settlement does.  Settled periods from since on are an
 * error: their tier history is settlement's.
 */
static bool
read_rules(Program *prog, DateADT since, ReplayRules *r, bool quiet)
{
	Oid			argtypes[2] = {INT4OID, DATEOID};
	Datum		args[2] = {Int32GetDatum(prog->id), DateADTGetDatum(since)};
	bool		isnull;
	char	   *period,
			   *grace,
			   *basis;
	bool		has_req;
	Datum		settled;

	reconcile_owner_query(psprintf("SELECT p.settlement_period, p.tier_grace, p.tier_grace_value, p.tier_basis,"
								   " EXISTS (SELECT FROM %s q WHERE q.program_id OPERATOR(pg_catalog.=) $1),"
								   " (SELECT pg_catalog.max(s.period_end) FROM %s s"
								   "   WHERE s.program_id OPERATOR(pg_catalog.=) $1 AND s.period_end OPERATOR(pg_catalog.>=) $2)"
								   " FROM %s p WHERE p.program_id OPERATOR(pg_catalog.=) $1",
								   loyalty_table("tier_requirement"), loyalty_table("settlement_run"),
								   loyalty_table("program")),
						  2, argtypes, args, NULL, true);
	period = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	grace = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	basis = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	has_req = DatumGetBool(col(5, &isnull));
	settled = col(6, &isnull);
	if (!isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("loyalty program \"%s\" is settled for a period ending on or after since", prog->name),
				 errdetail("backfill replays the tier history from since on; the period ending %s was settled, and its tier changes are settlement's.",
						   DatumGetCString(DirectFunctionCall1(date_out, settled))),
				 errhint("Backfill from the day after the last settled period, or from a month in a period not settled yet.")));
	if (strcmp(basis, "qualifying") != 0 || has_req)
	{
		ereport(quiet ? DEBUG1 : NOTICE,
				(errmsg("backfill does not replay the tier history of program \"%s\"", prog->name),
				 errdetail("Its tiers qualify on %s%s; the replay re-qualifies on qualifying spend only.",
						   strcmp(basis, "qualifying") == 0 ? "qualifying spend" : basis,
						   has_req ? " with tier requirements" : ""),
				 errhint("The points are backfilled with the tier history as it is.")));
		return false;
	}
	r->period_months = strcmp(period, "month") == 0 ? 1 : strcmp(period, "quarter") == 0 ? 3 : 12;
	r->grace = grace[0];
	if (r->grace == 'm')
		r->margin_factor = numeric_sub_opt_error(int64_to_numeric(1), DatumGetNumericCopy(col(3, &isnull)), NULL);
	if (r->grace == 'p')
		r->grace_periods = DatumGetInt32(DirectFunctionCall1(numeric_int4, col(3, &isnull)));
	r->today = rules_today(prog);
	r->first_open = period_start(r, r->today);
	SPI_freetuptable(SPI_tuptable);
	return true;
}

/* Rows the replay replaces: decided by documents, after since. */
#define REPLACEABLE(h) \
	"(" h ".reason OPERATOR(pg_catalog.=) ANY ('{backfill,upgrade_on_accrual}') AND " h ".effective_from OPERATOR(pg_catalog.>) $2)"
#define OF_ACCOUNT(h) \
	h ".program_id OPERATOR(pg_catalog.=) $1 AND " h ".account_key OPERATOR(pg_catalog.=) k.k"

/*
 * Each account's tier as since's documents found it, whether an admin set
 * its tier, and the rows the replay would replace.
 */
static void
read_accounts(Program *prog, DateADT since, ReplayState *st, int n)
{
	Oid			argtypes[3] = {INT4OID, DATEOID, TEXTARRAYOID};
	Datum		args[3];
	char	  **keys = palloc(sizeof(char *) * (n + 1));
	MemoryContext cxt = CurrentMemoryContext;
	int			i;

	for (i = 0; i < n; i++)
		keys[i] = (char *) st[i].acct->key;
	args[0] = Int32GetDatum(prog->id);
	args[1] = DateADTGetDatum(since);
	args[2] = loyalty_text_array(keys, NULL, n);
	reconcile_owner_query(psprintf(
		"SELECT EXISTS (SELECT FROM %1$s g WHERE " OF_ACCOUNT("g") ")"
		"    OR EXISTS (SELECT FROM %2$s h WHERE " OF_ACCOUNT("h")
		"               AND h.reason OPERATOR(pg_catalog.=) 'manual' AND h.effective_from OPERATOR(pg_catalog.>) $2),"
		" (SELECT h.new_tier FROM %2$s h WHERE " OF_ACCOUNT("h") " AND NOT " REPLACEABLE("h")
		"    AND ($2 OPERATOR(pg_catalog.=) '-infinity' OR h.effective_from OPERATOR(pg_catalog.<=) ($2 OPERATOR(pg_catalog.+) 1))"
		"  ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1),"
		" ARRAY(SELECT h.effective_from FROM %2$s h WHERE " OF_ACCOUNT("h") " AND " REPLACEABLE("h")
		"       ORDER BY h.effective_from, h.change_no),"
		" ARRAY(SELECT h.old_tier FROM %2$s h WHERE " OF_ACCOUNT("h") " AND " REPLACEABLE("h")
		"       ORDER BY h.effective_from, h.change_no),"
		" ARRAY(SELECT h.new_tier FROM %2$s h WHERE " OF_ACCOUNT("h") " AND " REPLACEABLE("h")
		"       ORDER BY h.effective_from, h.change_no),"
		" coalesce((SELECT pg_catalog.max(h.change_no) FROM %2$s h WHERE " OF_ACCOUNT("h")
		"           AND NOT " REPLACEABLE("h") "), 0)"
		" FROM pg_catalog.unnest($3" KEYS_CAST ") WITH ORDINALITY AS k(k, i) ORDER BY k.i",
		loyalty_table("tier_grant"), loyalty_table("tier_history")),
		3, argtypes, args, NULL, true);
	Assert(SPI_processed == (uint64) n);
	MemoryContextSwitchTo(cxt);
	for (i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		ReplayState *s = &st[i];
		bool		isnull;
		char	   *start = SPI_getvalue(tup, desc, 2);
		Datum	   *items;
		bool	   *nulls;
		int			m,
					j;

		s->skip = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		s->start_idx = start ? tier_ladder_find(prog->ladder, start) : -1;
		if (start && s->start_idx < 0)
			s->skip = true;		/* a tier off the ladder: settlement keeps it */
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 3, &isnull)), DATEOID, 4, true,
						  TYPALIGN_INT, &items, &nulls, &s->nold);
		s->old_from = palloc(sizeof(DateADT) * (s->nold + 1));
		for (j = 0; j < s->nold; j++)
			s->old_from[j] = DatumGetDateADT(items[j]);
		for (m = 0; m < 2; m++)
		{
			char	  **out = palloc(sizeof(char *) * (s->nold + 1));
			int			nn;

			deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 4 + m, &isnull)), TEXTOID, -1, false,
							  TYPALIGN_INT, &items, &nulls, &nn);
			for (j = 0; j < nn; j++)
				out[j] = nulls[j] ? NULL : TextDatumGetCString(items[j]);
			if (m == 0)
				s->old_old = out;
			else
				s->old_new = out;
		}
		s->max_kept_no = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
}

/* Adds q to an account's month. */
static void
month_add(ReplayState *s, DateADT month, Numeric q)
{
	int			i;

	for (i = s->nmonths - 1; i >= 0; i--)
		if (s->month[i] == month)
		{
			s->q[i] = num_add(s->q[i], q);
			return;
		}
	s->month = s->month ? repalloc(s->month, sizeof(DateADT) * (s->nmonths + 1)) : palloc(sizeof(DateADT));
	s->q = s->q ? repalloc(s->q, sizeof(Numeric) * (s->nmonths + 1)) : palloc(sizeof(Numeric));
	s->month[s->nmonths] = month;
	s->q[s->nmonths++] = q;
}


/*
 * The qualifying spend per account and month of the months before since
 * and of the program's other tables ($1 program, $2 since, $3 keys, $4
 * source), in key order: loyalty.accrual_month's query, over the tables
 * loyalty_table names (on a Citus shard, the co-located shards: a shard's
 * query cannot read the distributed view).
 */
static char *
background_sql(void)
{
	return psprintf("SELECT u.account_key, u.month, pg_catalog.sum(u.qualifying)"
					" FROM (SELECT b.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows"
					"       FROM %1$s b, ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment),"
					"            pg_catalog.unnest(b.m_points), pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))"
					"            AS x(month, attachment_id, points, qualifying, source_rows)"
					"       WHERE b.program_id OPERATOR(pg_catalog.=) $1"
					"       UNION ALL"
					"       SELECT d.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows"
					"       FROM %2$s d, ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_attachment),"
					"            pg_catalog.unnest(d.m_points), pg_catalog.unnest(d.m_qualifying), pg_catalog.unnest(d.m_source_rows))"
					"            AS x(month, attachment_id, points, qualifying, source_rows)"
					"       WHERE d.program_id OPERATOR(pg_catalog.=) $1) u"
					" JOIN pg_catalog.unnest($3" KEYS_CAST ") AS k(k) ON k.k OPERATOR(pg_catalog.=) u.account_key"
					" WHERE u.month OPERATOR(pg_catalog.<) $2"
					"    OR u.attachment_id OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT x.attachment_id FROM %3$s x"
					"       WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.source::pg_catalog.oid OPERATOR(pg_catalog.=) $4))"
					" GROUP BY u.account_key, u.attachment_id, u.month"
					" HAVING pg_catalog.sum(u.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(u.qualifying) OPERATOR(pg_catalog.<>) 0"
					"     OR pg_catalog.sum(u.source_rows) OPERATOR(pg_catalog.<>) 0"
					" ORDER BY (u.account_key)" KEY_TEXT " COLLATE \"C\"",
					loyalty_table("balance_folded"), loyalty_table("balance_delta"), loyalty_table("attachment"));
}

/*
 * What the books hold for the windows and the scan does not replay: the
 * months before since, and the months of the program's other tables.
 */
static void
read_background(Program *prog, Oid source, DateADT since, ReplayState *st, int n)
{
	Oid			argtypes[4] = {INT4OID, DATEOID, TEXTARRAYOID, OIDOID};
	Datum		args[4];
	char	  **keys = palloc(sizeof(char *) * (n + 1));
	MemoryContext cxt = CurrentMemoryContext;
	uint64		r;
	int			i;

	for (i = 0; i < n; i++)
		keys[i] = (char *) st[i].acct->key;
	args[0] = Int32GetDatum(prog->id);
	args[1] = DateADTGetDatum(since);
	args[2] = loyalty_text_array(keys, NULL, n);
	args[3] = ObjectIdGetDatum(source);
	reconcile_owner_query(background_sql(), 4, argtypes, args, NULL, true);
	MemoryContextSwitchTo(cxt);
	/* both in key order: one walk */
	for (r = 0, i = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *k = SPI_getvalue(tup, desc, 1);
		bool		isnull;

		while (i < n && strcmp(st[i].acct->key, k) < 0)
			i++;
		if (i == n)
			break;
		if (strcmp(st[i].acct->key, k) == 0)
			month_add(&st[i], DatumGetDateADT(SPI_getbinval(tup, desc, 2, &isnull)),
					  DatumGetNumericCopy(SPI_getbinval(tup, desc, 3, &isnull)));
	}
	SPI_freetuptable(SPI_tuptable);
}

/* ---- the walk ---- */

/* The window of months ending with last's month, summed. */
static Numeric
rolling(const Program *prog, const ReplayState *s, DateADT last)
{
	DateADT		to = loyalty_month_start(last);
	DateADT		from = loyalty_add_months(to, -(prog->window_months - 1));
	Numeric		sum = int64_to_numeric(0);
	int			i;

	for (i = 0; i < s->nmonths; i++)
		if (s->month[i] >= from && s->month[i] <= to)
			sum = num_add(sum, s->q[i]);
	return sum;
}

static void
add_change(ReplayState *s, DateADT from, int old_idx, int new_idx, Numeric q)
{
	ReplayChange *c;

	s->changes = s->changes ? repalloc(s->changes, sizeof(ReplayChange) * (s->nchanges + 1))
		: palloc(sizeof(ReplayChange));
	c = &s->changes[s->nchanges++];
	c->effective_from = from;
	c->old_idx = old_idx;
	c->new_idx = new_idx;
	c->rolling = q;
}

/* The highest tier within the margin grace (1-based rank, 0: none). */
static int
margin_rank(const Program *prog, const ReplayRules *r, Numeric measure)
{
	int			rank = 0,
				i;

	for (i = 0; i < tier_ladder_ntiers(prog->ladder); i++)
		if (num_cmp(numeric_mul_opt_error(tier_ladder_threshold(prog->ladder, i), r->margin_factor, NULL),
					measure) <= 0)
			rank = i + 1;
	return rank;
}

/*
 * Settlement's decision at a period's end (_settle_accounts), in 1-based
 * ranks (0: no tier): the new rank; *below is the grace periods count.
 */
static int
requalify(const Program *prog, const ReplayRules *r, Numeric measure, int cur_rank,
		  bool reached, int *below)
{
	int			q_rank = tier_ladder_index(prog->ladder, measure) + 1;
	int			new_rank;

	if (q_rank >= cur_rank)
		new_rank = q_rank;
	else if (reached)
		new_rank = cur_rank;
	else if (r->grace == 'o')
		new_rank = Max(q_rank, cur_rank - 1);
	else if (r->grace == 'm')
		new_rank = Max(q_rank, Min(margin_rank(prog, r, measure), cur_rank));
	else if (r->grace == 'p' && *below + 1 < r->grace_periods)
		new_rank = cur_rank;
	else
		new_rank = q_rank;
	*below = (cur_rank > 0 && q_rank < cur_rank && new_rank == cur_rank && !reached) ? *below + 1 : 0;
	return new_rank;
}

/*
 * One account's days and period ends, in date order, from the period
 * holding its first day (since's, when since is a date) to the last
 * document day.
 */
static void
walk_account(const Program *prog, const ReplayRules *r, DateADT since, ReplayState *s)
{
	const ReplayAccount *a = s->acct;
	int			cur = s->start_idx;
	int			below = 0;
	int			d = 0;
	DateADT		ps = period_start(r, since == DATEVAL_NOBEGIN ? a->days[0].day : since);

	for (;;)
	{
		DateADT		next = loyalty_add_months(ps, r->period_months);
		bool		closed = next <= r->first_open;
		bool		reached = false;

		/* the period's documents, each day folded at its end */
		for (; d < a->ndays && (!closed || a->days[d].day < next); d++)
		{
			Numeric		q;
			int			idx;

			month_add(s, loyalty_month_start(a->days[d].day), a->days[d].qualifying);
			q = rolling(prog, s, a->days[d].day);
			idx = tier_ladder_index(prog->ladder, q);
			if (idx < 0 || idx <= cur)
				continue;
			add_change(s, a->days[d].day + 1, cur, idx, q);
			cur = idx;
			reached = true;
		}
		if (!closed)
			break;
		/* settled the day after the period's end: effective the day after */
		{
			Numeric		measure = rolling(prog, s, next - 1);
			int			rank = requalify(prog, r, measure, cur + 1, reached, &below);

			if (rank - 1 != cur)
			{
				add_change(s, next + 1, cur, rank - 1, measure);
				cur = rank - 1;
			}
		}
		ps = next;
	}
}

/* ---- writing ---- */

static const char *
tier_name(const Program *prog, int idx)
{
	return idx < 0 ? NULL : tier_ladder_name(prog->ladder, idx);
}

static bool
same_name(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

/* The replay's changes are the rows it would replace: nothing to write. */
static bool
unchanged(const Program *prog, const ReplayState *s)
{
	int			i;

	if (s->nchanges != s->nold)
		return false;
	for (i = 0; i < s->nold; i++)
		if (s->changes[i].effective_from != s->old_from[i] ||
			!same_name(tier_name(prog, s->changes[i].old_idx), s->old_old[i]) ||
			!same_name(tier_name(prog, s->changes[i].new_idx), s->old_new[i]))
			return false;
	return true;
}

/*
 * Rewrites the history of the accounts whose replay differs: their
 * replaceable rows go, the replay's changes come, their tier is the last.
 * Returns how many changes it wrote.
 */
static int64
write_changes(const Program *prog, DateADT since, ReplayState *st, int n, int *naccounts)
{
	char	  **keys = palloc(sizeof(char *) * (n + 1)),
			  **tiers = palloc(sizeof(char *) * (n + 1));
	bool	   *tnulls = palloc(sizeof(bool) * (n + 1));
	int			nk = 0,
				nc = 0,
				cap = 64,
				i,
				j;
	char	  **ck = palloc(sizeof(char *) * cap),
			  **co = palloc(sizeof(char *) * cap),
			  **cn = palloc(sizeof(char *) * cap);
	bool	   *conulls = palloc(sizeof(bool) * cap),
			   *cnnulls = palloc(sizeof(bool) * cap);
	int64	   *cno = palloc(sizeof(int64) * cap);
	DateADT    *cfrom = palloc(sizeof(DateADT) * cap);
	Numeric    *cq = palloc(sizeof(Numeric) * cap);
	Oid			dt[3] = {INT4OID, DATEOID, TEXTARRAYOID};
	Oid			it[8] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, DATEARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, NUMERICARRAYOID, TEXTARRAYOID};
	Datum		args[8];

	for (i = 0; i < n; i++)
	{
		ReplayState *s = &st[i];
		int			last = s->nchanges > 0 ? s->changes[s->nchanges - 1].new_idx : s->start_idx;

		if (s->skip || unchanged(prog, s))
			continue;
		keys[nk] = (char *) s->acct->key;
		tiers[nk] = (char *) tier_name(prog, last);
		tnulls[nk++] = last < 0;
		for (j = 0; j < s->nchanges; j++)
		{
			if (nc == cap)
			{
				cap *= 2;
				ck = repalloc(ck, sizeof(char *) * cap);
				co = repalloc(co, sizeof(char *) * cap);
				cn = repalloc(cn, sizeof(char *) * cap);
				conulls = repalloc(conulls, sizeof(bool) * cap);
				cnnulls = repalloc(cnnulls, sizeof(bool) * cap);
				cno = repalloc(cno, sizeof(int64) * cap);
				cfrom = repalloc(cfrom, sizeof(DateADT) * cap);
				cq = repalloc(cq, sizeof(Numeric) * cap);
			}
			ck[nc] = (char *) s->acct->key;
			cno[nc] = s->max_kept_no + j + 1;
			cfrom[nc] = s->changes[j].effective_from;
			co[nc] = (char *) tier_name(prog, s->changes[j].old_idx);
			conulls[nc] = co[nc] == NULL;
			cn[nc] = (char *) tier_name(prog, s->changes[j].new_idx);
			cnnulls[nc] = cn[nc] == NULL;
			cq[nc++] = s->changes[j].rolling;
		}
	}
	*naccounts = nk;
	if (nk == 0)
		return 0;
	args[0] = Int32GetDatum(prog->id);
	args[1] = DateADTGetDatum(since);
	args[2] = loyalty_text_array(keys, NULL, nk);
	reconcile_owner_query(psprintf("DELETE FROM %s h USING pg_catalog.unnest($3" KEYS_CAST ") AS k(k)"
								   " WHERE " OF_ACCOUNT("h") " AND " REPLACEABLE("h"), loyalty_table("tier_history")),
						  3, dt, args, NULL, false);
	if (nc > 0)
	{
		args[1] = loyalty_text_array(ck, NULL, nc);
		args[2] = loyalty_int8_array(cno, nc);
		args[3] = loyalty_date_array(cfrom, nc);
		args[4] = loyalty_text_array(co, conulls, nc);
		args[5] = loyalty_text_array(cn, cnnulls, nc);
		args[6] = loyalty_numeric_array(cq, nc);
		reconcile_owner_query(psprintf("INSERT INTO %s"
							  " (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)"
							  " SELECT $1, c.k" KEY_CAST ", c.no, c.eff, c.o, c.n, 'backfill', c.q"
							  " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
							  "                 pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7))"
							  "      AS c(k, no, eff, o, n, q)", loyalty_table("tier_history")),
							  7, it, args, NULL, false);
	}
	/* the accounts' rows in key order, as every writer of them locks them */
	args[1] = loyalty_text_array(keys, NULL, nk);
	args[2] = loyalty_text_array(tiers, tnulls, nk);
	{
		Oid			ut[3] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID};

		reconcile_owner_query(psprintf("UPDATE %s a SET tier = u.t,"
							  " tier_since = CASE WHEN u.t IS NULL THEN NULL ELSE pg_catalog.now() END"
							  " FROM ROWS FROM (pg_catalog.unnest($2" KEYS_CAST "), pg_catalog.unnest($3)) AS u(k, t)"
							  " WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) u.k"
							  "   AND a.tier IS DISTINCT FROM u.t", loyalty_table("account")),
							  3, ut, args, NULL, false);
	}
	return nc;
}

/* The periods replayed, for settle() and settle_due(). */
static void
record_replay(const Program *prog, int32 attachment_id, DateADT since, DateADT through,
			  int accounts, int64 changes)
{
	Oid			t[7] = {INT4OID, INT4OID, DATEOID, DATEOID, INT4OID, INT8OID, TIMESTAMPTZOID};
	Datum		args[7] = {Int32GetDatum(prog->id), Int32GetDatum(attachment_id), DateADTGetDatum(since),
		DateADTGetDatum(through), Int32GetDatum(accounts), Int64GetDatum(changes),
	TimestampTzGetDatum(GetCurrentTransactionStartTimestamp())};

	/* now() as a value: Citus takes no function in DO UPDATE of a reference table */
	reconcile_owner_query("INSERT INTO loyalty.tier_replay AS r"
						  " (program_id, attachment_id, since, through, accounts, tier_changes, replayed_at)"
						  " VALUES ($1, $2, $3, $4, $5, $6, $7)"
						  " ON CONFLICT (program_id, attachment_id) DO UPDATE"
						  " SET since = excluded.since, through = excluded.through, replayed_at = excluded.replayed_at,"
						  "     accounts = excluded.accounts, tier_changes = excluded.tier_changes",
						  7, t, args, NULL, false);
}

void
replay_tiers(Program *prog, int32 attachment_id, Oid source, DateADT since,
			 ReplayAccount *accts, int n, ReplayTotals *totals)
{
	MemoryContext cxt = CurrentMemoryContext;
	ReplayRules r;
	ReplayState *st;
	Oid			lt[1] = {INT4OID};
	Datum		la[1] = {Int32GetDatum(prog->id)};
	ReplayTotals mine = {0};
	int			i;

	if (prog->ladder == NULL)
		return;
	/* tier writes of a program one transaction at a time (fold, settle, grants) */
	reconcile_owner_query("SELECT loyalty._tier_lock($1)", 1, lt, la, NULL, false);
	/* on a shard quiet: the coordinator said it (replay_will_run) */
	if (!read_rules(prog, since, &r, totals != NULL))
		return;
	MemoryContextSwitchTo(cxt);
	st = palloc0(sizeof(ReplayState) * (n + 1));
	for (i = 0; i < n; i++)
		st[i].acct = &accts[i];
	if (n > 0)
	{
		read_accounts(prog, since, st, n);
		read_background(prog, source, since, st, n);
	}
	for (i = 0; i < n; i++)
		if (!st[i].skip)
			walk_account(prog, &r, since, &st[i]);
	mine.changes = write_changes(prog, since, st, n, &mine.written);
	mine.accounts = n;
	mine.through = r.first_open - 1;
	MemoryContextSwitchTo(cxt);
	if (mine.written > 0)
	{
		/* other backends cached the old tier history */
		CacheInvalidateRelcacheByRelid(get_relname_relid("account", get_namespace_oid("loyalty", false)));
		accounts_forget();
	}
	if (totals == NULL)
	{
		replay_record(prog, attachment_id, since, &mine);
		return;
	}
	totals->accounts += mine.accounts;
	totals->changes += mine.changes;
	totals->written += mine.written;
	totals->through = mine.through;
}

/*
 * Whether replay_tiers replays the program's tiers from since: its checks
 * (an error for a settled period, a notice for tiers it cannot replay),
 * made once on the Citus coordinator before the shards replay.  Inside SPI.
 */
bool
replay_will_run(Program *prog, DateADT since)
{
	ReplayRules r;

	return prog->ladder != NULL && read_rules(prog, since, &r, false);
}

/*
 * The periods replayed, for settle() and settle_due() (with no account
 * replayed, settlement decides every period as usual), and the report.
 */
void
replay_record(Program *prog, int32 attachment_id, DateADT since, const ReplayTotals *totals)
{
	if (totals->accounts > 0)
		record_replay(prog, attachment_id, since, totals->through, totals->accounts, totals->changes);
	ereport(NOTICE,
			(errmsg("backfill replayed the tiers of %d accounts: %lld tier changes written for %d accounts",
					totals->accounts, (long long) totals->changes, totals->written)));
}
