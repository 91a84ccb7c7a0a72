/*
 * redeem.c — loyalty.redeem(): a redemption as one short transaction.
 *
 * The work of the PL/pgSQL version it replaces, in fewer statements and
 * without an interpreter: plans prepared once per backend and kept (the plan
 * cache re-plans them after any change to the tables they read, and parses
 * them again by name after the extension is dropped and re-created).  The
 * common case runs two statements and a wait between them:
 *
 *   1. the account's debit lock (the UPDATE of loyalty._lock_for_debit),
 *      joined with the program and the reward, which it returns;
 *   2. (no SQL) the wait for transactions still posting to the account, as
 *      loyalty._await_postings;
 *   3. the balance, through the view loyalty.balance, in a later statement
 *      than the lock (the debit protocol of 45_postings.sql), and, when it
 *      covers the cost, the ledger entry, its balance delta and the
 *      redemption row, in the same statement.
 *
 * A reward with a stock, a minimum tier or limits, and a member, each add
 * the statement of the PL/pgSQL version for it.  Every check, error, detail
 * and hint is the PL/pgSQL version's, in the same order.
 *
 * The function is SECURITY DEFINER with a pinned search_path: every name
 * below is schema-qualified and every operator is pg_catalog's, so nothing
 * a caller can define runs with the owner's rights.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "keytype.h"
#include "ledger.h"
#include "loyalty.h"

#define ERRCODE_LY_INSUFFICIENT MAKE_SQLSTATE('L','Y','0','0','1')
#define ERRCODE_LY_UNAVAILABLE	MAKE_SQLSTATE('L','Y','0','0','2')

/* The statements, prepared on first use and kept for the backend's life. */
typedef enum RedeemPlan
{
	RP_MAY_ACT,
	RP_LOCK,
	RP_PROGRAM,
	RP_MEMBER,
	RP_REWARD,
	RP_TIER,
	RP_LIMITS,
	RP_BALANCE,
	RP_MEMBER_BALANCE,
	RP_TAKE_STOCK,
	RP_POST,
	RP_POST_MEMBER,
	RP_RECORD,
	RP_COUNT
} RedeemPlan;

/* The reward's columns, in the order RP_LOCK (from its 4th) and RP_REWARD return them. */
#define REWARD_COLUMNS \
	"x.points_price, x.stock, x.active, x.valid_from, x.valid_until, x.min_tier, " \
	"x.per_account_limit, x.period_limit, x.limit_period"

static const struct
{
	const char *sql;
	int			nargs;
	Oid			argtypes[10];
}			plan_defs[RP_COUNT] = {
	[RP_MAY_ACT] = {
		/* a partner's login redeems for its own account (or member) only */
		"SELECT loyalty._may_act($1, $2, $3)",
		3, {TEXTOID, TEXTOID, TEXTOID}
	},
	[RP_LOCK] = {
		/* the account first: the lock of loyalty._lock_for_debit */
		"UPDATE loyalty.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1"
		" FROM loyalty.program p LEFT JOIN loyalty.reward x"
		"   ON x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.reward_id OPERATOR(pg_catalog.=) $3"
		" WHERE p.name OPERATOR(pg_catalog.=) $1 AND a.program_id OPERATOR(pg_catalog.=) p.program_id"
		"   AND a.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST
		" RETURNING a.debit_no, p.program_id, ($4 AT TIME ZONE p.time_zone)::pg_catalog.date,"
		"   x.reward_id IS NOT NULL, " REWARD_COLUMNS,
		4, {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID}
	},
	[RP_PROGRAM] = {
		/* no account locked: does the program exist? */
		"SELECT p.program_id FROM loyalty.program p WHERE p.name OPERATOR(pg_catalog.=) $1",
		1, {TEXTOID}
	},
	[RP_MEMBER] = {
		"SELECT FROM loyalty.member m WHERE m.program_id OPERATOR(pg_catalog.=) $1"
		" AND m.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST " AND m.member_id OPERATOR(pg_catalog.=) $3",
		3, {INT4OID, TEXTOID, TEXTOID}
	},
	[RP_REWARD] = {
		/* then the reward, when it has a stock to take from */
		"SELECT " REWARD_COLUMNS " FROM loyalty.reward x"
		" WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.reward_id OPERATOR(pg_catalog.=) $2"
		" FOR NO KEY UPDATE",
		2, {INT4OID, TEXTOID}
	},
	[RP_TIER] = {
		/* the tier as loyalty.tier() tells it (upgrades count at once) */
		"SELECT b.tier,"
		"   coalesce((SELECT t.rank FROM loyalty.tiers(p.ladder) t WHERE t.name OPERATOR(pg_catalog.=) b.tier), 0)"
		"   OPERATOR(pg_catalog.<) coalesce((SELECT t.rank FROM loyalty.tiers(p.ladder) t"
		"                                                WHERE t.name OPERATOR(pg_catalog.=) $4), 0),"
		"   pg_catalog.format('The program''s tiers are %s.', p.ladder)"
		" FROM loyalty.program p LEFT JOIN loyalty.balance($2, $3) b ON true"
		" WHERE p.program_id OPERATOR(pg_catalog.=) $1",
		4, {INT4OID, TEXTOID, TEXTOID, TEXTOID}
	},
	[RP_LIMITS] = {
		/* units redeemed in all and since the start of the period */
		"SELECT coalesce(pg_catalog.sum(d.quantity), 0)::pg_catalog.int8,"
		"   coalesce(pg_catalog.sum(d.quantity) FILTER (WHERE d.redeemed_on OPERATOR(pg_catalog.>=)"
		"       pg_catalog.date_trunc($4, $5::pg_catalog.timestamp)::pg_catalog.date), 0)::pg_catalog.int8"
		" FROM loyalty.redemption d"
		" WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND d.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST
		"   AND d.reward_id OPERATOR(pg_catalog.=) $3 AND d.status OPERATOR(pg_catalog.=) 'redeemed'",
		5, {INT4OID, TEXTOID, TEXTOID, TEXTOID, DATEOID}
	},
	[RP_BALANCE] = {
		"SELECT b.points FROM loyalty.balance b"
		" WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST,
		2, {INT4OID, TEXTOID}
	},
	[RP_MEMBER_BALANCE] = {
		"SELECT coalesce(pg_catalog.sum(t.points), 0)::pg_catalog.int8 FROM loyalty.member_points t"
		" WHERE t.program_id OPERATOR(pg_catalog.=) $1 AND t.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST
		"   AND t.member_id OPERATOR(pg_catalog.=) $3",
		3, {INT4OID, TEXTOID, TEXTOID}
	},
	[RP_TAKE_STOCK] = {
		"UPDATE loyalty.reward x SET stock = x.stock OPERATOR(pg_catalog.-) $3"
		" WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.reward_id OPERATOR(pg_catalog.=) $2",
		3, {INT4OID, TEXTOID, INT4OID}
	},
	[RP_POST] = {
		/*
		 * The balance, then, if it covers the cost, the posting of
		 * loyalty._post (one ledger entry and one balance delta, numbered
		 * from the transaction's counter, the columns _post fills) and the
		 * redemption, in one statement: the balance is read in its
		 * snapshot, taken after the lock's statement, before any of its
		 * inserts.  A balance short of the cost writes nothing and comes
		 * back with a NULL id.
		 */
		"WITH b AS (SELECT coalesce((SELECT b.points FROM loyalty.balance b"
		"                            WHERE b.program_id OPERATOR(pg_catalog.=) $1"
		"                              AND b.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST "), 0) AS points),"
		"     l AS (INSERT INTO loyalty.ledger (program_id, account_key, entry_no, kind, points, rebate, mdf,"
		"                                       member_id, corrects, corrects_xid, reason)"
		"           SELECT $1, $2" KEY_CAST ", $3, 'redeem', $4, 0, 0, NULL, NULL, NULL, $5 FROM b"
		"           WHERE b.points OPERATOR(pg_catalog.>=) $9),"
		"     d AS (INSERT INTO loyalty.balance_delta (program_id, account_key, delta_no, points, rebate, mdf, entry_count)"
		"           SELECT $1, $2" KEY_CAST ", $3, $4, 0, 0, 1 FROM b WHERE b.points OPERATOR(pg_catalog.>=) $9),"
		"     r AS (INSERT INTO loyalty.redemption AS r (program_id, account_key, redemption_no, reward_id, member_id,"
		"                                                quantity, points, redeemed_on, entry_no)"
		"           SELECT $1, $2" KEY_CAST ", $6, $7, NULL, $8, $9, $10, $3 FROM b WHERE b.points OPERATOR(pg_catalog.>=) $9"
		"           RETURNING r.redemption_id)"
		" SELECT b.points, r.redemption_id FROM b LEFT JOIN r ON true",
		10, {INT4OID, TEXTOID, INT8OID, INT8OID, TEXTOID, INT8OID, TEXTOID, INT4OID, INT8OID, DATEOID}
	},
	[RP_POST_MEMBER] = {
		"SELECT loyalty._post_member($1, $2, 'redeem', $3, $4, $5)",
		5, {INT4OID, TEXTOID, INT8OID, TEXTOID, TEXTOID}
	},
	[RP_RECORD] = {
		"INSERT INTO loyalty.redemption AS r (program_id, account_key, redemption_no, reward_id, member_id, quantity,"
		"                                     points, redeemed_on, entry_no)"
		" VALUES ($1, " KEY_VALUE("$2") ", $3, $4, $5, $6, $7, $8, $9) RETURNING r.redemption_id",
		9, {INT4OID, TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID, INT8OID, DATEOID, INT8OID}
	},
};

static SPIPlanPtr plans[RP_COUNT];

/* The reward as the checks read it. */
typedef struct Reward
{
	bool		found;
	int64		points_price;
	bool		has_stock;
	int32		stock;
	bool		active;
	bool		has_from;
	DateADT		valid_from;
	bool		has_until;
	DateADT		valid_until;
	char	   *min_tier;		/* NULL: any tier */
	bool		has_account_limit;
	int32		per_account_limit;
	bool		has_period_limit;
	int32		period_limit;
	char	   *limit_period;	/* NULL with period_limit */
} Reward;

/* What the call asks. */
typedef struct Request
{
	text	   *program;
	text	   *account;		/* NULL when given as NULL */
	text	   *reward;			/* NULL when given as NULL */
	bool		has_quantity;
	int32		quantity;
	text	   *member;			/* NULL: the account redeems */
	/* the strings of the messages, "<NULL>" for NULL as RAISE prints it */
	char	   *program_s;
	char	   *account_s;
	char	   *reward_s;
} Request;

static bool plans_custom = false;	/* plans[] made for Citus (custom plans) */

/*
 * Runs a kept plan (prepared on first use); returns SPI_processed.  On a
 * distributed layout the plans are custom: Citus cannot plan a generic
 * plan's parameters over its tables ("could not create distributed plan").
 */
static uint64
run(RedeemPlan which, Datum *values, const char *nulls, int expected)
{
	int			ret;
	bool		custom = loyalty_citus_distributed();
	int			i;

	if (custom != plans_custom)
	{
		for (i = 0; i < RP_COUNT; i++)
			if (plans[i] != NULL)
			{
				SPI_freeplan(plans[i]);
				plans[i] = NULL;
			}
		plans_custom = custom;
	}
	if (plans[which] == NULL)
		plans[which] = custom
			? loyalty_prepare_batch(plan_defs[which].sql, plan_defs[which].nargs, (Oid *) plan_defs[which].argtypes)
			: loyalty_prepare(plan_defs[which].sql, plan_defs[which].nargs, (Oid *) plan_defs[which].argtypes);
	ret = SPI_execute_plan(plans[which], values, nulls, false, 0);
	loyalty_spi_check(ret, expected, "run a statement of loyalty.redeem()");
	return SPI_processed;
}

/* Column col (1-based) of the first result row. */
static Datum
col(int c, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, c, isnull);
}

static char *
col_text(int c)
{
	bool		isnull;
	Datum		d = col(c, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* The reward's columns from column first of the first result row. */
static void
read_reward(Reward *r, int first)
{
	bool		isnull;
	Datum		d;

	d = col(first, &isnull);
	r->points_price = isnull ? 0 : DatumGetInt64(d);
	d = col(first + 1, &isnull);
	r->has_stock = !isnull;
	r->stock = isnull ? 0 : DatumGetInt32(d);
	d = col(first + 2, &isnull);
	r->active = !isnull && DatumGetBool(d);
	d = col(first + 3, &isnull);
	r->has_from = !isnull;
	r->valid_from = isnull ? 0 : DatumGetDateADT(d);
	d = col(first + 4, &isnull);
	r->has_until = !isnull;
	r->valid_until = isnull ? 0 : DatumGetDateADT(d);
	r->min_tier = col_text(first + 5);
	d = col(first + 6, &isnull);
	r->has_account_limit = !isnull;
	r->per_account_limit = isnull ? 0 : DatumGetInt32(d);
	d = col(first + 7, &isnull);
	r->has_period_limit = !isnull;
	r->period_limit = isnull ? 0 : DatumGetInt32(d);
	r->limit_period = col_text(first + 8);
}

static char *
date_text(DateADT d)
{
	return DatumGetCString(DirectFunctionCall1(date_out, DateADTGetDatum(d)));
}

static char *
or_null(text *t)
{
	return t ? text_to_cstring(t) : "<NULL>";
}

/*
 * Is the caller staff: a loyalty role, or a superuser?  The caller is the
 * role the session acts as (SET ROLE, else the session user), as
 * loyalty._caller() says inside a SECURITY DEFINER function, where the
 * current user is the extension's owner.  Asked of the role caches in C:
 * it is the answer for every redemption an operator makes, and the same
 * question in SQL costs as much as the rest of the redemption.
 */
static bool
caller_is_staff(void)
{
	static const char *const staff[] = {"loyalty_reader", "loyalty_operator", "loyalty_admin"};
	Oid			caller = GetOuterUserId();
	size_t		i;

	if (superuser_arg(caller))
		return true;
	for (i = 0; i < lengthof(staff); i++)
	{
		Oid			role = get_role_oid(staff[i], true);

		if (OidIsValid(role) && has_privs_of_role(caller, role))
			return true;
	}
	return false;
}

/*
 * Step 0: the caller may act for this account: staff for any, a partner's
 * login for its own account (as the account or as its own member), before
 * anything is read or locked.  Another account fails the same way whether it
 * exists or not.
 */
static void
check_caller(Request *q)
{
	Datum		args[3] = {PointerGetDatum(q->program), PointerGetDatum(q->account), PointerGetDatum(q->member)};
	char		nulls[3] = {' ', q->account ? ' ' : 'n', q->member ? ' ' : 'n'};

	if (caller_is_staff())
		return;
	run(RP_MAY_ACT, args, nulls, SPI_OK_SELECT);
}

/*
 * Step 1: locks the account and reads the program and the reward in the same
 * statement; the account's debit number is the redemption's.  No row: the
 * program does not exist or the account is not enrolled.
 */
static int64
lock_account(Request *q, int32 *program_id, DateADT *today, Reward *r)
{
	/* now() as a value: Citus takes no volatile function in RETURNING */
	Datum		args[4] = {PointerGetDatum(q->program), PointerGetDatum(q->account), PointerGetDatum(q->reward),
	TimestampTzGetDatum(GetCurrentTransactionStartTimestamp())};
	char		nulls[4] = {' ', q->account ? ' ' : 'n', q->reward ? ' ' : 'n', ' '};
	bool		isnull;
	int64		no;

	if (run(RP_LOCK, args, nulls, SPI_OK_UPDATE_RETURNING) == 0)
	{
		if (run(RP_PROGRAM, args, nulls, SPI_OK_SELECT) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("loyalty program \"%s\" does not exist", q->program_s),
					 errdetail("program names no program of this database (names are case-sensitive)."),
					 errhint("List programs with SELECT name FROM loyalty.program.")));
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("account_key \"%s\" is not enrolled in program \"%s\"", q->account_s, q->program_s),
				 errdetail("Only enrolled accounts have points to redeem."),
				 errhint("Enrol it with loyalty.enroll(); accounts enrolled automatically appear after loyalty.fold().")));
	}
	no = DatumGetInt64(col(1, &isnull));
	*program_id = DatumGetInt32(col(2, &isnull));
	*today = DatumGetDateADT(col(3, &isnull));
	r->found = DatumGetBool(col(4, &isnull));
	read_reward(r, 5);
	return no;
}

/*
 * On Citus, a redemption runs on the node holding the account's shard:
 * distribute() registers loyalty.redeem as a Citus distributed function by
 * account_key, so that Citus sends a call made as a statement of its own
 * to that node.  There the account lock, the wait for postings in flight
 * (which reads the shard's posted_xid, this node's xids) and the postings
 * (with this node's xid) are local.  A call Citus did not delegate (inside
 * BEGIN ... COMMIT, or with arguments that are not constants) arrives on
 * the coordinator, where the wait would scan an empty shell: refused.
 */
static void
check_on_account_node(Request *q)
{
	if (q->account == NULL || !loyalty_citus_distributed())
		return;
	if (!OidIsValid(loyalty_account_shard("account", q->account)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("loyalty.redeem() for account \"%s\" must run on the node holding the account", q->account_s),
				 errdetail("loyalty's tables are distributed (loyalty.distribute()): the check for postings in flight and the postings use the transaction ids of the account's node; this call was not sent there."),
				 loyalty_key_type() == TEXTOID ?
				 errhint("Call it as a statement of its own, outside BEGIN ... COMMIT, with constant arguments: SELECT loyalty.redeem('program', 'account', 'reward'); Citus then runs it on the account's node.") :
				 errhint("Call it as a statement of its own, outside BEGIN ... COMMIT, with constant arguments and the account key as a number: SELECT loyalty.redeem('program', 42, 'reward'); Citus then runs it on the account's node.")));
}

/* The checks of the arguments the PL/pgSQL version made before its lock. */
static void
check_request(Request *q, int32 program_id, Reward *r)
{
	int64		cost;

	if (q->member)
	{
		Datum		args[3] = {Int32GetDatum(program_id), PointerGetDatum(q->account), PointerGetDatum(q->member)};

		if (run(RP_MEMBER, args, NULL, SPI_OK_SELECT) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("member \"%s\" is not a member of account \"%s\"", text_to_cstring(q->member), q->account_s),
					 errdetail("A member redeems from the points they earned at their own account."),
					 errhint("Add the person to loyalty.member first, or redeem for the account (member => NULL).")));
	}
	if (!q->has_quantity || q->quantity <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantity must be a positive number of units"),
				 errdetail("quantity %s was given.", q->has_quantity ? psprintf("%d", q->quantity) : "NULL"),
				 errhint("Give the number of units to redeem, 1 or more.")));
	if (!r->found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("reward \"%s\" is not in the catalogue of program \"%s\"", q->reward_s, q->program_s),
				 errdetail("reward is a reward_id of loyalty.reward."),
				 errhint("List the catalogue with SELECT reward_id, name FROM loyalty.reward.")));
	if (pg_mul_s64_overflow(r->points_price, q->quantity, &cost))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("quantity %d of reward \"%s\" costs more points than any balance can hold", q->quantity, q->reward_s),
				 errdetail("%d units at " INT64_FORMAT " points each.", q->quantity, r->points_price),
				 errhint("Redeem fewer units.")));
}

/* The reward's window and minimum tier. */
static void
check_offer(Request *q, int32 program_id, DateADT today, Reward *r)
{
	if (!r->active || (r->has_from && today < r->valid_from) || (r->has_until && today >= r->valid_until))
		ereport(ERROR,
				(errcode(ERRCODE_LY_UNAVAILABLE),
				 errmsg("reward \"%s\" cannot be redeemed today", q->reward_s),
				 !r->active ? errdetail("It is not active.")
				 : errdetail("It is offered from %s until (not including) %s; today is %s.",
							 r->has_from ? date_text(r->valid_from) : "always",
							 r->has_until ? date_text(r->valid_until) : "no end", date_text(today)),
				 errhint("Nothing was redeemed. Choose a reward on offer.")));
	if (r->min_tier)
	{
		Datum		args[4] = {Int32GetDatum(program_id), PointerGetDatum(q->program),
		PointerGetDatum(q->account), CStringGetTextDatum(r->min_tier)};
		bool		isnull;
		char	   *tier;

		/* one row: the program cannot go while its account is locked */
		if (run(RP_TIER, args, NULL, SPI_OK_SELECT) == 0)
			elog(ERROR, "program %d of a redemption not found", program_id);
		tier = col_text(1);
		if (DatumGetBool(col(2, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_LY_UNAVAILABLE),
					 errmsg("reward \"%s\" needs tier %s or higher; account \"%s\" is %s", q->reward_s, r->min_tier,
							q->account_s, tier ? psprintf("in tier %s", tier) : "in no tier"),
					 errdetail("%s", col_text(3)),
					 errhint("Nothing was redeemed. Choose a reward of the account's tier.")));
	}
}

/* The stock and the per-account and per-period limits. */
static void
check_limits(Request *q, int32 program_id, DateADT today, Reward *r)
{
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', r->limit_period ? ' ' : 'n', ' '};
	bool		isnull;
	int64		used;

	if (r->has_stock && r->stock < q->quantity)
		ereport(ERROR,
				(errcode(ERRCODE_LY_UNAVAILABLE),
				 errmsg("reward \"%s\" has %d units left, %d asked", q->reward_s, r->stock, q->quantity),
				 errdetail("The stock never goes below zero."),
				 errhint("Nothing was redeemed. Redeem fewer units, or restock with loyalty.set_reward().")));
	if (!r->has_account_limit && !r->has_period_limit)
		return;
	args[0] = Int32GetDatum(program_id);
	args[1] = PointerGetDatum(q->account);
	args[2] = PointerGetDatum(q->reward);
	args[3] = r->limit_period ? CStringGetTextDatum(r->limit_period) : (Datum) 0;
	args[4] = DateADTGetDatum(today);
	run(RP_LIMITS, args, nulls, SPI_OK_SELECT);
	used = DatumGetInt64(col(1, &isnull));
	if (r->has_account_limit && used + q->quantity > r->per_account_limit)
		ereport(ERROR,
				(errcode(ERRCODE_LY_UNAVAILABLE),
				 errmsg("account \"%s\" may redeem %d units of reward \"%s\" in all and has redeemed " INT64_FORMAT,
						q->account_s, r->per_account_limit, q->reward_s, used),
				 errdetail("quantity %d would exceed the per-account limit.", q->quantity),
				 errhint("Nothing was redeemed. Cancelled redemptions do not count.")));
	used = DatumGetInt64(col(2, &isnull));
	if (r->has_period_limit && used + q->quantity > r->period_limit)
		ereport(ERROR,
				(errcode(ERRCODE_LY_UNAVAILABLE),
				 errmsg("account \"%s\" may redeem %d units of reward \"%s\" per %s, and has redeemed " INT64_FORMAT " this %s",
						q->account_s, r->period_limit, q->reward_s, r->limit_period, used, r->limit_period),
				 errdetail("quantity %d would exceed the per-%s limit.", q->quantity, r->limit_period),
				 errhint("Nothing was redeemed. Redeem again next period; cancelled redemptions do not count.")));
}

/* The refusal of a redemption the account's points do not cover. */
static void
refuse_points(Request *q, int64 have, int64 cost)
{
	ereport(ERROR,
			(errcode(ERRCODE_LY_INSUFFICIENT),
			 errmsg("account \"%s\" has " INT64_FORMAT " points, %d x reward \"%s\" costs " INT64_FORMAT,
					q->account_s, have, q->quantity, q->reward_s, cost),
			 errdetail("A redemption never takes a balance below zero."),
			 errhint("Nothing was redeemed. Redeem when earnings cover it.")));
}

/* The account's and the member's points, read after the lock, for a member's redemption. */
static void
check_member_balance(Request *q, int32 program_id, int64 cost)
{
	Datum		args[3] = {Int32GetDatum(program_id), PointerGetDatum(q->account), PointerGetDatum(q->member)};
	bool		isnull = true;
	int64		have = 0;

	if (run(RP_BALANCE, args, NULL, SPI_OK_SELECT) > 0)
	{
		Datum		d = col(1, &isnull);

		have = isnull ? 0 : DatumGetInt64(d);
	}
	if (have < cost)
		refuse_points(q, have, cost);
	run(RP_MEMBER_BALANCE, args, NULL, SPI_OK_SELECT);
	have = DatumGetInt64(col(1, &isnull));
	if (have < cost)
		ereport(ERROR,
				(errcode(ERRCODE_LY_INSUFFICIENT),
				 errmsg("member \"%s\" of account \"%s\" has " INT64_FORMAT " points, %d x reward \"%s\" costs " INT64_FORMAT,
						text_to_cstring(q->member), q->account_s, have, q->quantity, q->reward_s, cost),
				 errdetail("A member redeems from the points they earned, never below zero."),
				 errhint("Nothing was redeemed. Redeem for the account instead (member => NULL).")));
}

/*
 * Takes the stock, checks the balance (and the member's), posts the points
 * and records the redemption; returns its id (in SPI memory).
 */
static Datum
write_redemption(Request *q, int32 program_id, DateADT today, Reward *r, int64 no, int64 cost)
{
	Datum		reason = CStringGetTextDatum(psprintf("redeem %d x %s", q->quantity, q->reward_s));
	bool		isnull;
	Datum		id;

	/* a refusal below rolls it back with the rest */
	if (r->has_stock)
	{
		Datum		args[3] = {Int32GetDatum(program_id), PointerGetDatum(q->reward), Int32GetDatum(q->quantity)};

		run(RP_TAKE_STOCK, args, NULL, SPI_OK_UPDATE);
	}
	if (q->member == NULL)
	{
		Datum		args[10] = {Int32GetDatum(program_id), PointerGetDatum(q->account), Int64GetDatum(ledger_numbers(1)),
			Int64GetDatum(-cost), reason, Int64GetDatum(no), PointerGetDatum(q->reward),
		Int32GetDatum(q->quantity), Int64GetDatum(cost), DateADTGetDatum(today)};

		run(RP_POST, args, NULL, SPI_OK_SELECT);
		id = col(2, &isnull);
		if (isnull)
			refuse_points(q, DatumGetInt64(col(1, &isnull)), cost);
	}
	else
	{
		Datum		post[5] = {Int32GetDatum(program_id), PointerGetDatum(q->account), Int64GetDatum(-cost), reason,
		PointerGetDatum(q->member)};
		Datum		entry;
		Datum		args[9];

		check_member_balance(q, program_id, cost);
		run(RP_POST_MEMBER, post, NULL, SPI_OK_SELECT);
		entry = col(1, &isnull);
		args[0] = Int32GetDatum(program_id);
		args[1] = PointerGetDatum(q->account);
		args[2] = Int64GetDatum(no);
		args[3] = PointerGetDatum(q->reward);
		args[4] = PointerGetDatum(q->member);
		args[5] = Int32GetDatum(q->quantity);
		args[6] = Int64GetDatum(cost);
		args[7] = DateADTGetDatum(today);
		args[8] = entry;
		run(RP_RECORD, args, NULL, SPI_OK_INSERT_RETURNING);
		id = col(1, &isnull);
	}
	return id;
}

PG_FUNCTION_INFO_V1(loyalty_redeem);
/*
 * loyalty.redeem(program, account_key, reward, quantity, member): see
 * 60_rewards.sql.  Not STRICT: a NULL argument gets its own error.
 */
Datum
loyalty_redeem(PG_FUNCTION_ARGS)
{
	Request		q;
	Reward		r;
	int32		program_id;
	DateADT		today;
	int64		no;
	int64		cost;
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	loyalty_require(PG_ARGISNULL(0), "program", LOYALTY_PROGRAM_DETAIL,
					"List programs with SELECT name FROM loyalty.program.");

	memset(&q, 0, sizeof(q));
	memset(&r, 0, sizeof(r));
	q.program = PG_GETARG_TEXT_PP(0);
	q.account = PG_ARGISNULL(1) ? NULL : loyalty_key_arg(fcinfo, 1);
	q.reward = PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2);
	q.has_quantity = !PG_ARGISNULL(3);
	q.quantity = q.has_quantity ? PG_GETARG_INT32(3) : 0;
	q.member = PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4);
	q.program_s = text_to_cstring(q.program);
	q.account_s = or_null(q.account);
	q.reward_s = or_null(q.reward);

	SPI_connect();

	check_on_account_node(&q);
	check_caller(&q);
	no = lock_account(&q, &program_id, &today, &r);
	check_request(&q, program_id, &r);

	/*
	 * The debit protocol: wait for the transactions still posting to the
	 * account; from here on everything is read in statements after the lock.
	 */
	loyalty_await_account(program_id, q.account);
	if (r.has_stock)
	{
		Datum		args[2] = {Int32GetDatum(program_id), PointerGetDatum(q.reward)};

		if (run(RP_REWARD, args, NULL, SPI_OK_SELECT) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("reward \"%s\" left the catalogue of program \"%s\"", q.reward_s, q.program_s),
					 errdetail("It was deleted while the redemption waited for the account."),
					 errhint("Nothing was redeemed. Deactivate rewards (active => false) instead of deleting them.")));
		read_reward(&r, 1);
	}
	check_offer(&q, program_id, today, &r);
	check_limits(&q, program_id, today, &r);
	if (pg_mul_s64_overflow(r.points_price, q.quantity, &cost))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bigint out of range")));
	memcpy(id, DatumGetUUIDP(write_redemption(&q, program_id, today, &r, no, cost)), sizeof(pg_uuid_t));
	SPI_finish();
	PG_RETURN_UUID_P(id);
}
