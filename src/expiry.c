/*
 * expiry.c — settlement's point expiry on a Citus cluster.
 *
 * Expiry is a debit: it locks each account as a redemption does, reads the
 * account's ledger and balance rows, and posts an expire entry and a
 * balance delta with the transaction's own ids.  After loyalty.distribute()
 * all of an account's rows are in one shard group, on one node, where its
 * redemptions run too (redeem is a Citus distributed function).  So the
 * coordinator sends one query per shard of loyalty.account, routed by Citus
 * to the shard's node (reconcile_shard_calls), and there
 * loyalty._settle_expiry_in() runs over the co-located shards, as plain
 * PostgreSQL: the same statements as on one server, on the shard group.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/lsyscache.h"

#include "loyalty.h"
#include "reconcile.h"

PG_FUNCTION_INFO_V1(loyalty_expire_shards);
/*
 * loyalty._expire_shards(program, cutoff): the expiry of every shard group,
 * each on its node; the points expired, summed.  The arguments are
 * constants in the routed query (Citus plans no parameters in a function
 * call it sends to a shard); the cutoff as a number of days, whatever the
 * nodes' DateStyle.
 */
Datum
loyalty_expire_shards(PG_FUNCTION_ARGS)
{
	int32		program;
	DateADT		cutoff;
	char	  **sqls;
	int64		total = 0;
	int			n,
				i;

	/* not STRICT: the planner would fold a call with a NULL past the EXECUTE check */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		elog(ERROR, "loyalty._expire_shards takes no NULL");
	program = PG_GETARG_INT32(0);
	cutoff = PG_GETARG_DATEADT(1);
	if (DATE_NOT_FINITE(cutoff))
		elog(ERROR, "loyalty._expire_shards takes a finite cutoff");
	SPI_connect();
	n = reconcile_shard_calls(get_relname_relid("account", get_namespace_oid("loyalty", false)), NULL,
							  psprintf("loyalty._expire_shard(%d, ('2000-01-01'::pg_catalog.date OPERATOR(pg_catalog.+) %d), %%s)",
									   program, (int) cutoff),
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

			if (!isnull)
				total += DatumGetInt64(d);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_finish();
	PG_RETURN_INT64(total);
}

PG_FUNCTION_INFO_V1(loyalty_expire_shard);
/*
 * loyalty._expire_shard(program, cutoff, shard): on the node of a shard of
 * loyalty.account, inside the query Citus routed there, the expiry of its
 * accounts over the co-located shards; the configuration from this node's
 * placements.
 */
Datum
loyalty_expire_shard(PG_FUNCTION_ARGS)
{
	int32		program;
	DateADT		cutoff;
	Oid			shard;
	volatile int64 total = 0;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		elog(ERROR, "loyalty._expire_shard takes no NULL");
	program = PG_GETARG_INT32(0);
	cutoff = PG_GETARG_DATEADT(1);
	SPI_connect();
	PG_TRY();
	{
		Oid			logical = reconcile_enter_shard(PG_GETARG_TEXT_PP(2), &shard);
		Oid			argtypes[2] = {INT4OID, DATEOID};
		Datum		args[2] = {Int32GetDatum(program), DateADTGetDatum(cutoff)};
		bool		isnull;
		Datum		d;

		if (logical != get_relname_relid("account", get_namespace_oid("loyalty", false)))
			elog(ERROR, "%s is not a shard of loyalty.account", text_to_cstring(PG_GETARG_TEXT_PP(2)));
		reconcile_owner_query(psprintf("SELECT loyalty._settle_expiry_in($1, $2, e.threshold, e.zone, e.capped,"
									   " %s, %s, %s, %s)"
									   " FROM loyalty._expiry_settings($1, $2, %s, %s) e"
									   " WHERE e.threshold IS NOT NULL",
									   quote_literal_cstr(loyalty_table("account")),
									   quote_literal_cstr(loyalty_table("ledger")),
									   quote_literal_cstr(loyalty_table("balance_folded")),
									   quote_literal_cstr(loyalty_table("balance_delta")),
									   quote_literal_cstr(loyalty_table("program")),
									   quote_literal_cstr(loyalty_table("rule"))),
							  2, argtypes, args, NULL, false);
		if (SPI_processed == 1)
		{
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			if (!isnull)
				total = DatumGetInt64(d);
		}
	}
	PG_FINALLY();
	{
		loyalty_shard_leave();
	}
	PG_END_TRY();
	SPI_finish();
	PG_RETURN_INT64(total);
}
