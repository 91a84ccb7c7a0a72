/*
 * rebate_lines.c — the qualifying spend per product line that rebate
 * agreements scoped to product lines are computed on.
 *
 * The product line of an ERP row is known only where the row is read: in
 * the accrual trigger, as the role that writes it (the mapping expressions
 * and the product table are the attaching user's, never evaluated as the
 * extension owner).  Settlement is SECURITY DEFINER and may run from
 * pg_cron as anyone, so it cannot read the rows itself.  Instead the
 * trigger appends, next to its per-month sums, the same qualifying spend
 * split by product line to loyalty.rebate_line_volume: one bucket per line
 * some agreement of the program scopes, and one (product_line NULL) for
 * everything else, so that the buckets of an account's month add up to its
 * accrual_month qualifying spend (verify checks it).  Inserts, updates,
 * deletes and credit notes flow through it like through accrual_month.
 *
 * A program without scoped agreements pays one pointer test per row: the
 * set of scoped lines is read once per program and backend (after each
 * configuration change: rebate_agreement has the cache trigger).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "fixedpoint.h"
#include "loyalty.h"
#include "keytype.h"
#include "rebate_lines.h"

typedef struct LineKey
{
	const char *account;		/* the batch's account key: one pointer per account */
	DateADT		month;
	int			line;			/* index in RebateLines, -1: no scoped line */
} LineKey;

typedef struct LineSum
{
	LineKey		key;
	FixedSum	qualifying;
	int64		rows;
} LineSum;

static int
cmp_line(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Reads the set once per program and configuration, as the owner. */
const RebateLines *
rebate_lines_of(Program *prog)
{
	static ShardPlan plan;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1];
	OwnerScope	scope;
	MemoryContext old;
	RebateLines *rl;
	uint64		i;

	if (prog->rebate_lines_loaded)
		return prog->rebate_lines;
	if (loyalty_plan_stale(&plan))
		plan.plan = loyalty_prepare(
			psprintf("SELECT DISTINCT l FROM %s g, pg_catalog.unnest(g.product_lines) l"
					 " WHERE g.program_id OPERATOR(pg_catalog.=) $1", loyalty_table("rebate_agreement")), 1, argtypes);
	args[0] = Int32GetDatum(prog->id);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(loyalty_execute_latest(plan.plan, args, 0), SPI_OK_SELECT, "read loyalty.rebate_agreement");
	loyalty_leave_owner(&scope);

	/* with the program, in the configuration cache */
	old = MemoryContextSwitchTo(GetMemoryChunkContext(prog));
	rl = NULL;
	if (SPI_processed > 0)
	{
		rl = palloc(sizeof(RebateLines));
		rl->n = (int) SPI_processed;
		rl->lines = palloc(sizeof(char *) * rl->n);
		for (i = 0; i < SPI_processed; i++)
			rl->lines[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		qsort(rl->lines, rl->n, sizeof(char *), cmp_line);
	}
	MemoryContextSwitchTo(old);
	prog->rebate_lines = rl;
	prog->rebate_lines_loaded = true;
	return rl;
}

HTAB *
rebate_lines_start(MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(LineKey);
	ctl.entrysize = sizeof(LineSum);
	ctl.hcxt = cxt;
	return hash_create("loyalty rebate lines", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* Adds one row's qualifying spend (sign < 0: a removed row) to its bucket. */
void
rebate_lines_add(HTAB *sums, const RebateLines *rl, const char *account, DateADT month,
				 const char *line, Numeric qualifying, int sign)
{
	LineKey		key;
	LineSum    *s;
	bool		found;
	char	  **hit = NULL;

	if (line != NULL)
		hit = bsearch(&line, rl->lines, rl->n, sizeof(char *), cmp_line);
	memset(&key, 0, sizeof(key));	/* hashed as bytes, padding included */
	key.account = account;
	key.month = month;
	key.line = hit ? (int) (hit - rl->lines) : -1;
	s = hash_search(sums, &key, HASH_ENTER, &found);
	if (!found)
	{
		memset(&s->qualifying, 0, sizeof(FixedSum));
		s->rows = 0;
	}
	fixed_sum_add(&s->qualifying, qualifying, sign);
	s->rows += sign;
}

/* Appends the batch's buckets, as the owner; a bucket that nets to nothing is left out. */
void
rebate_lines_post(Program *prog, HTAB *sums)
{
	static ShardPlan plan;
	long		n = hash_get_num_entries(sums);
	char	  **accounts;
	bool	   *line_nulls;
	char	  **lines;
	DateADT    *months;
	Numeric    *quals;
	int64	   *rows;
	HASH_SEQ_STATUS seq;
	LineSum    *s;
	int			k = 0;
	Datum		args[6];
	OwnerScope	scope;
	Numeric		zero = int64_to_numeric(0);

	if (n == 0)
		return;
	if (loyalty_plan_stale(&plan))
	{
		Oid			t[6] = {INT4OID, TEXTARRAYOID, DATEARRAYOID, TEXTARRAYOID, NUMERICARRAYOID, INT8ARRAYOID};

		plan.plan = loyalty_prepare(
			psprintf("INSERT INTO %s (program_id, account_key, entry_no, month, product_line,"
					 " qualifying, source_rows)"
					 " SELECT $1, u.a" KEY_CAST ", loyalty._ledger_number(), u.m, u.l, u.q, u.r"
					 " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
					 " pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(a, m, l, q, r)",
					 loyalty_table("rebate_line_volume")), 6, t);
	}
	accounts = palloc(sizeof(char *) * n);
	lines = palloc(sizeof(char *) * n);
	line_nulls = palloc(sizeof(bool) * n);
	months = palloc(sizeof(DateADT) * n);
	quals = palloc(sizeof(Numeric) * n);
	rows = palloc(sizeof(int64) * n);
	hash_seq_init(&seq, sums);
	while ((s = hash_seq_search(&seq)) != NULL)
	{
		Numeric		q = fixed_sum_value(&s->qualifying);

		if (s->rows == 0 &&
			DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(q), NumericGetDatum(zero))) == 0)
			continue;
		accounts[k] = (char *) s->key.account;
		months[k] = s->key.month;
		line_nulls[k] = s->key.line < 0;
		lines[k] = s->key.line < 0 ? NULL : prog->rebate_lines->lines[s->key.line];
		quals[k] = q;
		rows[k] = s->rows;
		k++;
	}
	if (k == 0)
		return;
	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(accounts, NULL, k);
	args[2] = loyalty_date_array(months, k);
	args[3] = loyalty_text_array(lines, line_nulls, k);
	args[4] = loyalty_numeric_array(quals, k);
	args[5] = loyalty_int8_array(rows, k);
	loyalty_enter_owner(&scope);
	loyalty_spi_check(SPI_execute_plan(plan.plan, args, NULL, false, 0), SPI_OK_INSERT,
					  "insert into loyalty.rebate_line_volume");
	loyalty_leave_owner(&scope);
}
