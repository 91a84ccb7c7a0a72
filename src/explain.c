/*
 * explain.c — the points function seen from SQL: loyalty.explain_points,
 * loyalty.verify and loyalty.backfill call these with the facts their own
 * set-based queries map from the ERP rows, so that all of them compute
 * exactly what the trigger computes.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "accounts.h"
#include "ledger.h"
#include "mapping.h"

static char *
arg_text(FunctionCallInfo fcinfo, int i)
{
	return PG_ARGISNULL(i) ? NULL : TextDatumGetCString(PG_GETARG_DATUM(i));
}

static Numeric
arg_numeric(FunctionCallInfo fcinfo, int i)
{
	return PG_ARGISNULL(i) ? NULL : PG_GETARG_NUMERIC(i);
}

static bool
arg_date(FunctionCallInfo fcinfo, int i, DateADT *out)
{
	if (PG_ARGISNULL(i))
		return false;
	*out = PG_GETARG_DATEADT(i);
	return true;
}

/*
 * The row_points tuple of a result.  Called in the caller's memory context
 * while still connected to SPI: r's numerics and strings live in SPI's
 * procedure context, which SPI_finish() releases, so everything they hold is
 * copied into the tuple first.
 */
static HeapTuple
row_points_tuple(TupleDesc desc, const Attachment *att, const RowResult *r)
{
	Datum		values[15];
	bool		nulls[15];

	memset(nulls, true, sizeof(nulls));
#define SET(i_, d_) do { values[i_] = (d_); nulls[i_] = false; } while (0)
	SET(0, CStringGetTextDatum(rules_status_name(r->status)));
	if (r->reason)
		SET(1, CStringGetTextDatum(r->reason));
	if (r->rule)
	{
		SET(2, DateADTGetDatum(r->rule->valid_from));
		SET(4, NumericGetDatum(r->rule->points_per_unit));
	}
	if (r->basis)
		SET(3, NumericGetDatum(r->basis));
	if (r->pl_factor)
		SET(5, NumericGetDatum(r->pl_factor));
	if (r->tier_on_date)
		SET(6, CStringGetTextDatum(r->tier_on_date));
	if (r->tier_factor)
		SET(7, NumericGetDatum(r->tier_factor));
	if (r->segment_factor)
		SET(8, NumericGetDatum(r->segment_factor));
	if (r->raw_points)
		SET(9, NumericGetDatum(r->raw_points));
	SET(10, CStringGetTextDatum(rules_rounding_name(att->program->rounding)));
	SET(11, Int64GetDatum(r->points));
	SET(12, Int64GetDatum(r->bonus));
	if (r->qualifying)
		SET(13, NumericGetDatum(r->qualifying));
	if (r->status != ROW_REJECTED)
		SET(14, DateADTGetDatum(r->month));
#undef SET
	return heap_form_tuple(desc, values, nulls);
}

PG_FUNCTION_INFO_V1(loyalty_row_points);
/*
 * loyalty._row_points(attachment, account, amount, quantity, doc_date,
 * product_line, currency, doc_type, due_date, paid_date, header_found):
 * one row's points, with every step of the computation.
 */
Datum
loyalty_row_points(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	TupleDesc	desc;
	Attachment *att;
	RowFacts	f;
	RowResult	r;
	AccountInfo *info = NULL;
	HeapTuple	result;
	char	   *doc_type;
	int			i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("attachment must not be NULL")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);

	SPI_connect();
	att = mapping_get(PG_GETARG_INT32(0));
	memset(&f, 0, sizeof(f));
	f.account = arg_text(fcinfo, 1);
	f.amount = arg_numeric(fcinfo, 2);
	f.quantity = arg_numeric(fcinfo, 3);
	f.has_date = arg_date(fcinfo, 4, &f.date);
	f.product_line = arg_text(fcinfo, 5);
	f.currency_mapped = att->mapped[F_CURRENCY];
	f.currency = arg_text(fcinfo, 6);
	doc_type = arg_text(fcinfo, 7);
	for (i = 0; doc_type && i < att->ncredit; i++)
		if (strcmp(att->credit_types[i], doc_type) == 0)
			f.credit_note = true;
	f.has_due = arg_date(fcinfo, 8, &f.due);
	f.has_paid = arg_date(fcinfo, 9, &f.paid);
	f.header_missing = !PG_ARGISNULL(10) && !PG_GETARG_BOOL(10);
	f.explain = true;
	accounts_begin();
	if (f.account)
	{
		info = accounts_resolve(att->program, &f.account, 1, false)[0];
		/*
		 * Under auto enrolment the trigger would have enrolled an unknown
		 * customer (info is then a private copy, not the cache's).
		 */
		if (!info->enrolled && att->program->auto_enroll)
			info->enrolled = true;
	}
	rules_row_points(att->program, info, &f, &r);

	/* the result outlives SPI_finish(): form it in the caller's context */
	MemoryContextSwitchTo(caller);
	result = row_points_tuple(desc, att, &r);
	SPI_finish();
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}

PG_FUNCTION_INFO_V1(loyalty_cap_for_month);
/* loyalty._cap_for_month(program, month): the cap period a month falls in. */
Datum
loyalty_cap_for_month(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Program    *prog;
	DateADT		ps = 0,
				pe = 0;
	int64		cap;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);
	if (DATE_NOT_FINITE(PG_GETARG_DATEADT(1)))
		PG_RETURN_NULL();		/* no calendar period holds it */
	SPI_connect();
	prog = mapping_get_program(PG_GETARG_INT32(0));
	cap = ledger_cap_for_month(prog, loyalty_month_start(PG_GETARG_DATEADT(1)), &ps, &pe);
	SPI_finish();
	if (cap == 0)
		PG_RETURN_NULL();
	values[0] = DateADTGetDatum(ps);
	values[1] = DateADTGetDatum(pe);
	values[2] = Int64GetDatum(cap);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * _post_backfill's arrays as MonthDelta: one per (account, month), in
 * strictly ascending (account, month) order, keys that could be enrolled,
 * finite first days of months and finite numbers, or a clear error.
 */
static MonthDelta *
backfill_deltas(FunctionCallInfo fcinfo, int *n)
{
	Datum	   *k = loyalty_array_items(PG_GETARG_DATUM(1), TEXTOID, "", "accounts", -1, NULL, n);
	Datum	   *m = loyalty_array_items(PG_GETARG_DATUM(2), DATEOID, "", "months", *n, "accounts", n);
	Datum	   *p = loyalty_array_items(PG_GETARG_DATUM(3), INT8OID, "", "points", *n, "accounts", n);
	Datum	   *q = loyalty_array_items(PG_GETARG_DATUM(4), NUMERICOID, "", "qualifying", *n, "accounts", n);
	Datum	   *r = loyalty_array_items(PG_GETARG_DATUM(5), INT8OID, "", "source_rows", *n, "accounts", n);
	MonthDelta *d = palloc0(sizeof(MonthDelta) * (*n + 1));
	Numeric		zero = int64_to_numeric(0);
	int			i;

	for (i = 0; i < *n; i++)
	{
		const char *problem;

		d[i].account = TextDatumGetCString(k[i]);
		d[i].month = DatumGetDateADT(m[i]);
		/* signed: what the month lacks (or, after drift, has too much) */
		d[i].points_new = DatumGetInt64(p[i]);
		d[i].qual_new = DatumGetNumeric(q[i]);
		d[i].qual_old = zero;
		d[i].rows_new = DatumGetInt64(r[i]);
		if ((problem = rules_account_key_problem(d[i].account)) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("accounts element %d is invalid: %s", i + 1, problem)));
		if (DATE_NOT_FINITE(d[i].month))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("months element %d is not a finite date", i + 1)));
		if (loyalty_month_start(d[i].month) != d[i].month)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("months element %d is not the first day of a month", i + 1)));
		if (numeric_is_nan(d[i].qual_new) || numeric_is_inf(d[i].qual_new))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("qualifying element %d is not a finite number", i + 1)));
		if (i > 0)
		{
			int			c = strcmp(d[i - 1].account, d[i].account);

			if (c > 0 || (c == 0 && d[i - 1].month >= d[i].month))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("backfill sums must be in strictly ascending (account, month) order"),
						 errdetail("Element %d does not follow element %d.", i + 1, i)));
		}
	}
	return d;
}

PG_FUNCTION_INFO_V1(loyalty_post_backfill);
/*
 * loyalty._post_backfill(attachment, accounts text[], months date[],
 * points int8[], qualifying numeric[], rows int8[], kind): posts what
 * backfill found missing, through the same path as the trigger (caps,
 * balances, tier upgrades).  Arrays must be sorted by (account, month).
 */
Datum
loyalty_post_backfill(PG_FUNCTION_ARGS)
{
	Attachment *att;
	char	   *kind = PG_NARGS() > 6 ? TextDatumGetCString(PG_GETARG_DATUM(6)) : "backfill";
	MonthDelta *d;
	char	  **keys;
	int			n,
				nkeys = 0,
				i;

	if (strcmp(kind, "backfill") != 0 && strcmp(kind, "restate") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown posting kind \"%s\"", kind),
				 errhint("The kinds are backfill and restate.")));
	d = backfill_deltas(fcinfo, &n);
	keys = palloc(sizeof(char *) * (n + 1));
	for (i = 0; i < n; i++)
		if (nkeys == 0 || strcmp(keys[nkeys - 1], d[i].account) != 0)
			keys[nkeys++] = d[i].account;

	SPI_connect();
	att = mapping_get(PG_GETARG_INT32(0));
	accounts_begin();
	(void) accounts_resolve(att->program, keys, nkeys, true);
	ledger_post(att->program, att->id, d, n, kind, kind, kind);
	SPI_finish();
	PG_RETURN_VOID();
}
