/*
 * settle_shards.c — the settlement steps that post to accounts, on a Citus
 * cluster: point expiry, rebate true-ups and estimates, MDF credits.
 *
 * Each is a debit or a posting per account: it locks or reads the account's
 * ledger, balance and rebate rows, and posts entries and balance deltas
 * with the transaction's own ids.  After loyalty.distribute() all of an
 * account's rows are in one shard group, on one node, where its redemptions
 * run too (redeem is a Citus distributed function).  So the coordinator
 * sends one query per shard of loyalty.account, routed by Citus to the
 * shard's node (reconcile_shard_calls), and there the step's statements run
 * over the co-located shards (and this node's placements of the reference
 * tables), as plain PostgreSQL: the same statements as on one server, on
 * one shard group.  The coordinator sums what the shard groups posted.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include "loyalty.h"
#include "reconcile.h"

/* The steps, by the name the SQL callers give. */
static const char *const steps[] = {"expiry", "rebates", "rebate_estimates", "mdf"};

static const char *
step_of(text *name)
{
	return reconcile_step(name, steps, lengthof(steps), "settlement step");
}

/*
 * A date argument of the routed call: a number of days, whatever the
 * nodes' DateStyle; NULL stays NULL.
 */
static char *
date_constant(FunctionCallInfo fcinfo, int arg)
{
	DateADT		d;

	if (PG_ARGISNULL(arg))
		return "NULL::pg_catalog.date";
	d = PG_GETARG_DATEADT(arg);
	if (DATE_NOT_FINITE(d))
		elog(ERROR, "loyalty's settlement steps take finite dates");
	return psprintf("('2000-01-01'::pg_catalog.date OPERATOR(pg_catalog.+) %d)", (int) d);
}

PG_FUNCTION_INFO_V1(loyalty_settle_shards);
/*
 * loyalty._settle_shards(step, program, period_start, period_end): the step
 * on every shard group, each on its node; what they posted, summed.  The
 * arguments are constants in the routed query (Citus plans no parameters in
 * a function call it sends to a shard).
 */
Datum
loyalty_settle_shards(PG_FUNCTION_ARGS)
{
	const char *step;
	int32		program;
	char	  **sqls;
	Numeric		total = int64_to_numeric(0);
	int			n,
				i;

	/* not STRICT: the planner would fold a call with a NULL past the EXECUTE check */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3))
		elog(ERROR, "loyalty._settle_shards takes a step, a program and a period end");
	step = step_of(PG_GETARG_TEXT_PP(0));
	program = PG_GETARG_INT32(1);
	SPI_connect();
	n = reconcile_shard_calls(reconcile_account_table(), NULL,
							  psprintf("loyalty._settle_shard('%s', %d, %s, %s, %%s)",
									   step, program, date_constant(fcinfo, 2), date_constant(fcinfo, 3)),
							  &sqls);
	if (n == 0)
		elog(ERROR, "loyalty.account is not a Citus distributed table");
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		reconcile_owner_query(sqls[i], 0, NULL, NULL, NULL, false);
		if (SPI_processed == 1)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			/* the sum in the function's context: SPI_finish frees the tuples */
			if (!isnull)
				total = DatumGetNumeric(SPI_datumTransfer(DirectFunctionCall2(numeric_add, NumericGetDatum(total), d),
														  false, -1));
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_finish();
	PG_RETURN_NUMERIC(total);
}

/*
 * The step's statement on a shard group: loyalty's SQL over the shards of
 * this node ($1 program, $2 period_start, $3 period_end).
 */
static char *
shard_step_sql(const char *step)
{
	if (strcmp(step, "expiry") == 0)
		return psprintf("SELECT loyalty._settle_expiry_in($1, $3, e.threshold, e.zone, e.capped,"
						" %s, %s, %s, %s)::pg_catalog.numeric"
						" FROM loyalty._expiry_settings($1, $3, %s, %s) e"
						" WHERE e.threshold IS NOT NULL",
						quote_literal_cstr(loyalty_table("account")),
						quote_literal_cstr(loyalty_table("ledger")),
						quote_literal_cstr(loyalty_table("balance_folded")),
						quote_literal_cstr(loyalty_table("balance_delta")),
						quote_literal_cstr(loyalty_table("program")),
						quote_literal_cstr(loyalty_table("rule")));
	if (strcmp(step, "mdf") == 0)
		return psprintf("SELECT loyalty._mdf_in($1, $2, $3, %s, %s, %s, %s, %s, %s)",
						quote_literal_cstr(loyalty_table("tier_benefit")),
						quote_literal_cstr(loyalty_table("tier_history")),
						quote_literal_cstr(loyalty_table("balance_folded")),
						quote_literal_cstr(loyalty_table("balance_delta")),
						quote_literal_cstr(loyalty_table("mdf_accrual")),
						quote_literal_cstr(loyalty_table("ledger")));
	return psprintf("SELECT loyalty._rebates_in($1, $3, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
					strcmp(step, "rebate_estimates") == 0 ? "true" : "false",
					quote_literal_cstr(loyalty_table("rebate_agreement")),
					quote_literal_cstr(loyalty_table("program")),
					quote_literal_cstr(loyalty_table("account")),
					quote_literal_cstr(loyalty_table("rebate_posting")),
					quote_literal_cstr(loyalty_table("settlement_line")),
					quote_literal_cstr(loyalty_table("balance_folded")),
					quote_literal_cstr(loyalty_table("balance_delta")),
					quote_literal_cstr(loyalty_table("rebate_line_volume")),
					quote_literal_cstr(loyalty_table("ledger")));
}

PG_FUNCTION_INFO_V1(loyalty_settle_shard);
/*
 * loyalty._settle_shard(step, program, period_start, period_end, shard): on the node of a shard
 * of loyalty.account, inside the query Citus routed there, the step for its
 * accounts over the co-located shards; the configuration from this node's
 * placements.
 */
Datum
loyalty_settle_shard(PG_FUNCTION_ARGS)
{
	const char *step;
	Oid			shard;
	Numeric volatile total = int64_to_numeric(0);
	Oid			argtypes[3] = {INT4OID, DATEOID, DATEOID};
	Datum		args[3];
	char		nulls[4] = "   ";

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		elog(ERROR, "loyalty._settle_shard takes a step, a program, a period end and a shard");
	step = step_of(PG_GETARG_TEXT_PP(0));
	args[0] = PG_GETARG_DATUM(1);
	args[1] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[1] = PG_ARGISNULL(2) ? 'n' : ' ';
	args[2] = PG_GETARG_DATUM(3);
	SPI_connect();
	PG_TRY();
	{
		Oid			logical = reconcile_enter_shard(PG_GETARG_TEXT_PP(4), &shard);
		bool		isnull;
		Datum		d;

		if (logical != reconcile_account_table())
			elog(ERROR, "%s is not a shard of loyalty.account", text_to_cstring(PG_GETARG_TEXT_PP(4)));
		reconcile_owner_query(shard_step_sql(step), 3, argtypes, args, nulls, false);
		if (SPI_processed == 1)
		{
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			if (!isnull)
				total = DatumGetNumeric(SPI_datumTransfer(d, false, -1));
		}
	}
	PG_FINALLY();
	{
		loyalty_shard_leave();
	}
	PG_END_TRY();
	SPI_finish();
	PG_RETURN_NUMERIC(total);
}
