/*
 * account_calls.c — the writes of one account that an operator or a
 * portal calls, as opposed to an invoice row: MDF claims and their
 * decisions, cancelled redemptions, awards and their decisions.
 *
 * Each locks the account (its next debit number), may wait for the ERP
 * transactions still posting to it, checks a balance and posts a ledger
 * entry and a balance delta stamped with the transaction's own id.  After
 * loyalty.distribute() that must happen on the node holding the account's
 * shard group, with that node's transaction id: a coordinator's xid stored
 * in a worker's ledger would be compared with the worker's transactions
 * (the debit's wait) and could collide with the worker's own entries of
 * the account (the ledger's key).  So the SQL function checks its
 * arguments where it is called, then hands the account's part, a function
 * loyalty._<step>_in(program, account, args), to loyalty._on_account_node:
 * on one server it runs right there over loyalty's tables; on Citus it is
 * sent as one query that Citus routes to the account's shard
 * (reconcile_shard_calls), and there it runs over the co-located shards,
 * which loyalty._table names, as plain PostgreSQL in the caller's
 * distributed transaction.  What it returns comes back as text.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "loyalty.h"
#include "reconcile.h"

/* The account parts, by the step name the SQL callers give. */
static const char *const steps[] = {"claim_mdf", "decide_mdf_claim", "cancel_redemption", "award", "decide_award"};

static const char *
step_of(text *name)
{
	return reconcile_step(name, steps, lengthof(steps), "account step");
}

/*
 * Runs the step's function with ($1 program, $2 account, $3 args) as the
 * extension owner, by a plan kept for the backend's life; its text result,
 * copied out of SPI (NULL for none).  The caller is connected to SPI.
 */
static text *
run_step(const char *step, Datum program, Datum account, Datum args, bool args_null)
{
	static SPIPlanPtr plans[lengthof(steps)];
	Oid			argtypes[3] = {INT4OID, TEXTOID, TEXTARRAYOID};
	Datum		values[3] = {program, account, args};
	char		nulls[4] = "   ";
	bool		isnull = true;
	Datum		d = (Datum) 0;
	OwnerScope	scope;
	int			i;

	for (i = 0; steps[i] != step; i++)
		;
	if (plans[i] == NULL)
		plans[i] = loyalty_prepare(psprintf("SELECT loyalty.%s($1, $2, $3)::pg_catalog.text",
											quote_identifier(psprintf("_%s_in", step))), 3, argtypes);
	nulls[2] = args_null ? 'n' : ' ';
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plans[i], values, nulls, false, 0), SPI_OK_SELECT, "run an account step");
	loyalty_leave_owner(&scope);
	if (SPI_processed == 1)
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? NULL : DatumGetTextP(SPI_datumTransfer(d, false, -1));
}

/* A literal for text, with every % doubled: it goes through a format string. */
static void
append_literal(StringInfo buf, const char *value)
{
	const char *q = value ? quote_literal_cstr(value) : "NULL";

	for (; *q; q++)
	{
		if (*q == '%')
			appendStringInfoChar(buf, '%');
		appendStringInfoChar(buf, *q);
	}
}

/*
 * The routed call of _account_shard for the step, its arguments as
 * constants (Citus plans no parameters in a function call it sends to a
 * shard); %s where reconcile_shard_calls puts the shard's name.
 */
static char *
shard_call(const char *step, int32 program, const char *account, ArrayType *args)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "loyalty._account_shard('%s', %d, ", step, program);
	append_literal(&buf, account);
	appendStringInfoString(&buf, ", ");
	if (args == NULL)
		appendStringInfoString(&buf, "NULL");
	else
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n,
					i;

		deconstruct_array(args, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		appendStringInfoString(&buf, "ARRAY[");
		for (i = 0; i < n; i++)
		{
			if (i > 0)
				appendStringInfoString(&buf, ", ");
			append_literal(&buf, nulls[i] ? NULL : TextDatumGetCString(elems[i]));
		}
		appendStringInfoString(&buf, "]");
	}
	appendStringInfoString(&buf, "::pg_catalog.text[], %s)");
	return buf.data;
}

/*
 * Makes the account's node a part of this transaction before the routed
 * call: Citus sends a query it sees as a read (the call is a SELECT) to a
 * worker outside any transaction there when the caller has none open on
 * it, and the call's writes would commit at once, whatever became of the
 * caller's statement.  A write to the account's row (it sets debit_no to
 * itself, under the row lock the account part takes anyway) opens the
 * worker's transaction, which Citus commits or rolls back with the
 * caller's, and ties the account's shard group to that connection, where
 * the routed call then runs.
 */
static void
join_on_node(int32 program, const char *account)
{
	reconcile_owner_query(psprintf("UPDATE loyalty.account a SET debit_no = a.debit_no"
								   " WHERE a.program_id OPERATOR(pg_catalog.=) %d"
								   " AND a.account_key OPERATOR(pg_catalog.=) %s::loyalty.account_key",
								   program, quote_literal_cstr(account)),
						  0, NULL, NULL, NULL, false);
}

PG_FUNCTION_INFO_V1(loyalty_on_account_node);
/*
 * loyalty._on_account_node(step, program, account, args): the step's
 * account part, on the node that holds the account's rows; its result.
 */
Datum
loyalty_on_account_node(PG_FUNCTION_ARGS)
{
	const char *step;
	char	  **sqls;
	text	   *result = NULL;
	int			n;

	/* not STRICT: the planner would fold a call with a NULL past the EXECUTE check */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		elog(ERROR, "loyalty._on_account_node takes a step, a program and an account");
	step = step_of(PG_GETARG_TEXT_PP(0));
	SPI_connect();
	n = reconcile_shard_calls(reconcile_account_table(), text_to_cstring(PG_GETARG_TEXT_PP(2)),
							  shard_call(step, PG_GETARG_INT32(1), text_to_cstring(PG_GETARG_TEXT_PP(2)),
										 PG_ARGISNULL(3) ? NULL : PG_GETARG_ARRAYTYPE_P(3)),
							  &sqls);
	if (n == 0)
		result = run_step(step, PG_GETARG_DATUM(1), PG_GETARG_DATUM(2), PG_GETARG_DATUM(3), PG_ARGISNULL(3));
	else
	{
		bool		isnull = true;
		Datum		d = (Datum) 0;

		Assert(n == 1);
		join_on_node(PG_GETARG_INT32(1), text_to_cstring(PG_GETARG_TEXT_PP(2)));
		reconcile_owner_query(sqls[0], 0, NULL, NULL, NULL, false);
		if (SPI_processed == 1)
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			result = DatumGetTextP(SPI_datumTransfer(d, false, -1));
	}
	SPI_finish();
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(result);
}

PG_FUNCTION_INFO_V1(loyalty_account_shard_call);
/*
 * loyalty._account_shard(step, program, account, args, shard): on the node
 * of a shard of loyalty.account, inside the query Citus routed there, the
 * step's account part over the co-located shards (and this node's
 * placements of the reference tables).
 */
Datum
loyalty_account_shard_call(PG_FUNCTION_ARGS)
{
	const char *step;
	Oid			shard;
	text	   *volatile result = NULL;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(4))
		elog(ERROR, "loyalty._account_shard takes a step, a program, an account and a shard");
	step = step_of(PG_GETARG_TEXT_PP(0));
	SPI_connect();
	PG_TRY();
	{
		if (reconcile_enter_shard(PG_GETARG_TEXT_PP(4), &shard) != reconcile_account_table())
			elog(ERROR, "%s is not a shard of loyalty.account", text_to_cstring(PG_GETARG_TEXT_PP(4)));
		result = run_step(step, PG_GETARG_DATUM(1), PG_GETARG_DATUM(2), PG_GETARG_DATUM(3), PG_ARGISNULL(3));
	}
	PG_FINALLY();
	{
		loyalty_shard_leave();
	}
	PG_END_TRY();
	SPI_finish();
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(result);
}

PG_FUNCTION_INFO_V1(loyalty_table_name);
/*
 * loyalty._table(name): loyalty's table as the account steps address it:
 * loyalty.<name>, or inside _account_shard the co-located shard of it (a
 * reference table: this node's placement).
 */
Datum
loyalty_table_name(PG_FUNCTION_ARGS)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *name;
	char	   *table;

	if (PG_ARGISNULL(0))
		elog(ERROR, "loyalty._table takes a table name");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!OidIsValid(get_relname_relid(name, get_namespace_oid("loyalty", false))))
		elog(ERROR, "loyalty has no table \"%s\"", name);
	/* a connection of its own: on Citus the reference tables' placements are read */
	SPI_connect();
	table = MemoryContextStrdup(cxt, loyalty_table(name));
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(table));
}
