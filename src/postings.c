/*
 * postings.c — the postings that do not come from an invoice row
 * (loyalty._post) and the debit lock (loyalty._lock_for_debit), in C.
 *
 * The account steps (account_calls.c) call them for the account they work
 * on, over loyalty's tables on one server or over the account's shards on
 * a Citus worker (loyalty_table names them).  In PL/pgSQL those statements
 * had to be built and planned at every call; here each is prepared once per
 * backend and shard (loyalty_plan_stale), as the trigger's are.  They run
 * as the caller, which is the extension owner: both are internal, called
 * by SECURITY DEFINER functions.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include "keytype.h"
#include "ledger.h"
#include "loyalty.h"

/* The ledger kinds only accrual posts: verify() checks them against invoice rows. */
static const char *const accrual_kinds[] = {"earn", "reverse", "bonus", "cap", "backfill", "restate"};

static bool
is_zero(FunctionCallInfo fcinfo, int arg)
{
	return PG_ARGISNULL(arg) ||
		DatumGetBool(DirectFunctionCall2(numeric_eq, PG_GETARG_DATUM(arg), NumericGetDatum(int64_to_numeric(0))));
}

PG_FUNCTION_INFO_V1(loyalty_post);
/*
 * loyalty._post(program_id, account_key, kind, points, reason, rebate, mdf,
 * member_id, corrects_xid, corrects): one ledger entry and its balance
 * delta, numbered from the transaction's counter; the entry number, or
 * NULL when there is nothing to post.
 */
Datum
loyalty_post(PG_FUNCTION_ARGS)
{
	static ShardPlan plan;
	char	   *kind;
	int64		n;
	Datum		args[11];
	char		nulls[12] = "           ";
	size_t		i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		elog(ERROR, "loyalty._post takes a program, an account and a kind");
	kind = DatumGetCString(DirectFunctionCall1(enum_out, PG_GETARG_DATUM(2)));
	for (i = 0; i < lengthof(accrual_kinds); i++)
		if (strcmp(kind, accrual_kinds[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ledger kind %s is posted by accrual only", kind),
					 errdetail("Accrual kinds are derived from invoice rows and checked against them by verify().")));
	if ((PG_ARGISNULL(3) || PG_GETARG_INT64(3) == 0) && is_zero(fcinfo, 5) && is_zero(fcinfo, 6))
		PG_RETURN_NULL();		/* nothing to post */
	n = ledger_numbers(1);
	SPI_connect();
	if (loyalty_plan_stale(&plan))
	{
		Oid			t[11] = {INT4OID, TEXTOID, INT8OID, TEXTOID, INT8OID, NUMERICOID, NUMERICOID, TEXTOID,
		INT8OID, XID8OID, TEXTOID};

		plan.plan = loyalty_prepare(
			psprintf("WITH l AS (INSERT INTO %s (program_id, account_key, entry_no, kind, points, rebate, mdf,"
					 "                       member_id, corrects, corrects_xid, reason)"
					 "           VALUES ($1, " KEY_VALUE("$2") ", $3, $4::loyalty.ledger_kind, $5, $6, $7, $8, $9, $10, $11))"
					 " INSERT INTO %s (program_id, account_key, delta_no, points, rebate, mdf, entry_count)"
					 " VALUES ($1, " KEY_VALUE("$2") ", $3, $5, $6, $7, 1)",
					 loyalty_table("ledger"), loyalty_table("balance_delta")), 11, t);
	}
	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	args[2] = Int64GetDatum(n);
	args[3] = CStringGetTextDatum(kind);
	args[4] = Int64GetDatum(PG_ARGISNULL(3) ? 0 : PG_GETARG_INT64(3));
	args[5] = PG_ARGISNULL(5) ? NumericGetDatum(int64_to_numeric(0)) : PG_GETARG_DATUM(5);
	args[6] = PG_ARGISNULL(6) ? NumericGetDatum(int64_to_numeric(0)) : PG_GETARG_DATUM(6);
	args[7] = PG_ARGISNULL(7) ? (Datum) 0 : PG_GETARG_DATUM(7);
	nulls[7] = PG_ARGISNULL(7) ? 'n' : ' ';
	args[8] = PG_ARGISNULL(9) ? (Datum) 0 : PG_GETARG_DATUM(9);
	nulls[8] = PG_ARGISNULL(9) ? 'n' : ' ';
	args[9] = PG_ARGISNULL(8) ? (Datum) 0 : PG_GETARG_DATUM(8);
	nulls[9] = PG_ARGISNULL(8) ? 'n' : ' ';
	args[10] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
	nulls[10] = PG_ARGISNULL(4) ? 'n' : ' ';
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, nulls, false, 0), SPI_OK_INSERT, "post a ledger entry");
	SPI_finish();
	PG_RETURN_INT64(n);
}

PG_FUNCTION_INFO_V1(loyalty_lock_for_debit);
/*
 * loyalty._lock_for_debit(program_id, account_key): takes the account's
 * next debit number, which locks its row until commit (the debit protocol
 * of src/sql/45_postings.sql); returns it.
 */
Datum
loyalty_lock_for_debit(PG_FUNCTION_ARGS)
{
	static ShardPlan plan;
	Datum		args[2];
	bool		isnull;
	int64		n;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		elog(ERROR, "loyalty._lock_for_debit takes a program and an account");
	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	SPI_connect();
	if (loyalty_plan_stale(&plan))
	{
		Oid			t[2] = {INT4OID, TEXTOID};

		plan.plan = loyalty_prepare(
			psprintf("UPDATE %s a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1"
					 " WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) $2" KEY_CAST
					 " RETURNING a.debit_no", loyalty_table("account")), 2, t);
	}
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_UPDATE_RETURNING, "lock an account");
	if (SPI_processed == 0)
	{
		Oid			t[1] = {INT4OID};
		char	   *program = NULL;

		loyalty_spi_check(SPI_execute_with_args(psprintf("SELECT p.name FROM %s p WHERE p.program_id OPERATOR(pg_catalog.=) $1",
														 loyalty_table("program")), 1, t, args, NULL, true, 1),
						  SPI_OK_SELECT, "read a program's name");
		if (SPI_processed == 1)
			program = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("account \"%s\" is not enrolled in program \"%s\"", TextDatumGetCString(args[1]),
						program ? program : "<NULL>"),
				 errdetail("Only enrolled accounts have balances to spend from."),
				 errhint("Enrol it with loyalty.enroll(); accounts enrolled automatically appear after loyalty.fold().")));
	}
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PG_RETURN_INT64(n);
}
