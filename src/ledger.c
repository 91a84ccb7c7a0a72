/*
 * ledger.c — posting.  Everything here runs as the extension owner and
 * touches rows in ascending (account, month) order, so two statements never
 * wait on each other in a cycle; each step is one statement over arrays,
 * never one per row.  Arrays, not the transition table's name, carry the
 * data, which keeps the trigger working on Citus shards.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/date.h"

#include "ledger.h"

static SPIPlanPtr month_plan, cap_plan, balance_plan, ledger_plan, rolling_plan, lock_plan, upgrade_plan;

static void
prepare_plans(void)
{
	if (month_plan != NULL)
		return;
	{
		Oid			t[7] = {INT4OID, INT4OID, TEXTARRAYOID, DATEARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID};

		month_plan = loyalty_prepare(
			"INSERT INTO loyalty.accrual_month AS m"
			" (program_id, attachment_id, account_key, month, points, qualifying, source_rows)"
			" SELECT $1, $2, u.k, u.m, u.p, u.q, u.r"
			" FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7)) AS u(k, m, p, q, r) ORDER BY u.k, u.m"
			" ON CONFLICT (program_id, account_key, month, attachment_id) DO UPDATE"
			" SET points = m.points OPERATOR(pg_catalog.+) excluded.points,"
			"     qualifying = m.qualifying OPERATOR(pg_catalog.+) excluded.qualifying,"
			"     source_rows = m.source_rows OPERATOR(pg_catalog.+) excluded.source_rows", 7, t);
	}
	{
		Oid			t[4] = {INT4OID, TEXTARRAYOID, DATEARRAYOID, DATEARRAYOID};

		cap_plan = loyalty_prepare(
			"SELECT COALESCE((SELECT pg_catalog.sum(m.points) FROM loyalty.accrual_month m"
			"   WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND m.account_key OPERATOR(pg_catalog.=) u.k"
			"     AND m.month OPERATOR(pg_catalog.>=) u.ps AND m.month OPERATOR(pg_catalog.<) u.pe), 0)::pg_catalog.int8"
			" FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4)) WITH ORDINALITY AS u(k, ps, pe, i) ORDER BY u.i", 4, t);
	}
	{
		Oid			t[5] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID};

		balance_plan = loyalty_prepare(
			"INSERT INTO loyalty.balance AS b (program_id, account_key, points, qualifying, entry_count)"
			" SELECT $1, u.k, u.p, u.q, u.n FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5)) AS u(k, p, q, n) ORDER BY u.k"
			" ON CONFLICT (program_id, account_key) DO UPDATE"
			" SET points = b.points OPERATOR(pg_catalog.+) excluded.points,"
			"     qualifying = b.qualifying OPERATOR(pg_catalog.+) excluded.qualifying,"
			"     entry_count = b.entry_count OPERATOR(pg_catalog.+) excluded.entry_count,"
			"     updated_at = pg_catalog.now()"
			" RETURNING b.account_key, b.entry_count", 5, t);
	}
	{
		Oid			t[9] = {INT4OID, INT4OID, TEXTOID, TEXTARRAYOID, INT8ARRAYOID, TEXTARRAYOID,
		INT8ARRAYOID, NUMERICARRAYOID, INT4ARRAYOID};

		ledger_plan = loyalty_prepare(
			"INSERT INTO loyalty.ledger"
			" (program_id, account_key, entry_no, kind, points, qualifying, attachment_id, source_rows, reason)"
			" SELECT $1, u.k, u.e, u.kind, u.p, u.q, $2, u.r, $3"
			" FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9)) AS u(k, e, kind, p, q, r)", 9, t);
	}
	{
		Oid			t[4] = {INT4OID, TEXTARRAYOID, DATEOID, DATEOID};

		rolling_plan = loyalty_prepare(
			"SELECT m.account_key, pg_catalog.sum(m.qualifying) FROM loyalty.accrual_month m"
			" WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND m.account_key OPERATOR(pg_catalog.=) ANY ($2)"
			"   AND m.month OPERATOR(pg_catalog.>=) $3 AND m.month OPERATOR(pg_catalog.<=) $4"
			" GROUP BY m.account_key", 4, t);
	}
	{
		Oid			t[2] = {INT4OID, TEXTARRAYOID};

		lock_plan = loyalty_prepare(
			"SELECT a.account_key, a.tier FROM loyalty.account a"
			" WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) ANY ($2)"
			" ORDER BY a.account_key FOR NO KEY UPDATE", 2, t);
	}
	{
		Oid			t[5] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, NUMERICARRAYOID};

		upgrade_plan = loyalty_prepare(
			"WITH u AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5)) AS u(k, old_tier, new_tier, q)),"
			" upd AS (UPDATE loyalty.account a SET tier = u.new_tier, tier_since = pg_catalog.now()"
			"   FROM u WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) u.k)"
			" INSERT INTO loyalty.tier_history"
			" (program_id, account_key, effective_from, old_tier, new_tier, reason, rolling_qualifying)"
			" SELECT $1, u.k, CURRENT_DATE OPERATOR(pg_catalog.+) 1, u.old_tier, u.new_tier, 'upgrade_on_accrual', u.q"
			" FROM u ORDER BY u.k", 5, t);
	}
}

int64
ledger_cap_for_month(const Program *prog, DateADT month, DateADT *ps, DateADT *pe)
{
	static const char periods[3] = {'y', 'q', 'm'};
	int			i;

	if (!prog->has_caps)
		return 0;
	/* the version in force on a period's first day decides that period's cap */
	for (i = 0; i < 3; i++)
	{
		DateADT		start = rules_cap_period_start(periods[i], month);
		const RuleVersion *r = rules_version_on(prog, start);

		if (r && r->cap_points > 0 && r->cap_period == periods[i])
		{
			*ps = start;
			*pe = rules_cap_period_next(periods[i], start);
			return r->cap_points;
		}
	}
	return 0;
}

static Numeric
num_add(Numeric a, Numeric b)
{
	return numeric_add_opt_error(a, b, NULL);
}

static bool
num_eq(Numeric a, Numeric b)
{
	return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(a), NumericGetDatum(b)));
}

static bool
num_positive(Numeric a)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a),
											 NumericGetDatum(int64_to_numeric(0)))) > 0;
}

typedef struct AccountSums
{
	char	   *account;
	int64		pn,
				po,
				bonus,
				cap;
	Numeric		qn,
				qo;
	int64		rn,
				ro;
	bool		has_old;		/* write an entry for removed rows */
	bool		has_new;		/* write an entry for added rows */
	int			nentries;
	int64		first_entry;
} AccountSums;

/* Per-(account, cap period) change, to turn uncapped sums into capped ones. */
typedef struct CapDelta
{
	int			account;		/* index into sums */
	DateADT		ps,
				pe;
	int64		cap;
	int64		delta;
} CapDelta;

static void
apply_caps(Program *prog, MonthDelta *d, int n, AccountSums *sums, int *acct_of)
{
	CapDelta   *caps = palloc(sizeof(CapDelta) * n);
	int			ncaps = 0;
	int			i;
	char	  **k;
	DateADT    *ps,
			   *pe;
	Datum		args[4];

	for (i = 0; i < n; i++)
	{
		int64		delta = d[i].points_new + d[i].bonus_new - d[i].points_old - d[i].bonus_old;
		DateADT		s,
					e;
		int64		cap;

		if (delta == 0 || (cap = ledger_cap_for_month(prog, d[i].month, &s, &e)) == 0)
			continue;
		if (ncaps > 0 && caps[ncaps - 1].account == acct_of[i] && caps[ncaps - 1].ps == s)
			caps[ncaps - 1].delta += delta;
		else
			caps[ncaps++] = (CapDelta) {acct_of[i], s, e, cap, delta};
	}
	if (ncaps == 0)
		return;

	k = palloc(sizeof(char *) * ncaps);
	ps = palloc(sizeof(DateADT) * ncaps);
	pe = palloc(sizeof(DateADT) * ncaps);
	for (i = 0; i < ncaps; i++)
	{
		k[i] = sums[caps[i].account].account;
		ps[i] = caps[i].ps;
		pe[i] = caps[i].pe;
	}
	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(k, NULL, ncaps);
	args[2] = loyalty_date_array(ps, ncaps);
	args[3] = loyalty_date_array(pe, ncaps);
	if (SPI_execute_plan(cap_plan, args, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != (uint64) ncaps)
		elog(ERROR, "could not read cap periods");
	for (i = 0; i < ncaps; i++)
	{
		bool		isnull;
		int64		now_total = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int64		before = now_total - caps[i].delta;
		int64		capped_delta = Min(caps[i].cap, now_total) - Min(caps[i].cap, before);

		sums[caps[i].account].cap += capped_delta - caps[i].delta;
	}
}

static void
upgrade_tiers(Program *prog, AccountSums *sums, int nsums)
{
	char	  **keys = palloc(sizeof(char *) * nsums);
	int			nkeys = 0;
	DateADT		today = GetSQLCurrentDate();
	DateADT		last = loyalty_month_start(today);
	DateADT		first = loyalty_add_months(last, -(prog->window_months - 1));
	Datum		args[5];
	uint64		i;
	char	  **rk;
	int		   *rank;
	Numeric    *rq;
	int			nr = 0;
	char	  **uk,
			  **uo,
			  **un;
	Numeric    *uq;
	int			nu = 0;
	int			j;

	for (j = 0; j < nsums; j++)
		if (num_positive(num_add(sums[j].qn, DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(sums[j].qo))))))
			keys[nkeys++] = sums[j].account;
	if (nkeys == 0)
		return;

	args[0] = Int32GetDatum(prog->id);
	args[1] = loyalty_text_array(keys, NULL, nkeys);
	args[2] = DateADTGetDatum(first);
	args[3] = DateADTGetDatum(last);
	if (SPI_execute_plan(rolling_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read rolling qualifying spend");
	rk = palloc(sizeof(char *) * (SPI_processed + 1));
	rank = palloc(sizeof(int) * (SPI_processed + 1));
	rq = palloc(sizeof(Numeric) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Numeric		q = DatumGetNumericCopy(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		int			idx = isnull ? -1 : tier_ladder_index(prog->ladder, q);

		if (idx < 0)
			continue;
		rk[nr] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		rank[nr] = idx;
		rq[nr] = q;
		nr++;
	}
	if (nr == 0)
		return;

	/* lock the candidates in key order, then compare with their real tier */
	args[1] = loyalty_text_array(rk, NULL, nr);
	if (SPI_execute_plan(lock_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not lock accounts");
	uk = palloc(sizeof(char *) * nr);
	uo = palloc(sizeof(char *) * nr);
	un = palloc(sizeof(char *) * nr);
	uq = palloc(sizeof(Numeric) * nr);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *cur = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		int			cur_idx = cur ? tier_ladder_find(prog->ladder, cur) : -1;

		for (j = 0; j < nr; j++)
			if (strcmp(rk[j], key) == 0)
				break;
		if (j == nr || rank[j] <= cur_idx)
			continue;
		uk[nu] = key;
		uo[nu] = cur;
		un[nu] = pstrdup(tier_ladder_name(prog->ladder, rank[j]));
		uq[nu] = rq[j];
		nu++;
	}
	if (nu == 0)
		return;
	{
		bool	   *onulls = palloc(sizeof(bool) * nu);

		for (j = 0; j < nu; j++)
			onulls[j] = (uo[j] == NULL);
		args[1] = loyalty_text_array(uk, NULL, nu);
		args[2] = loyalty_text_array(uo, onulls, nu);
		args[3] = loyalty_text_array(un, NULL, nu);
		args[4] = loyalty_numeric_array(uq, nu);
	}
	if (SPI_execute_plan(upgrade_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record tier upgrades");
}

void
ledger_post(Program *prog, int32 attachment_id, MonthDelta *d, int n,
			const char *kind_new, const char *kind_old, const char *reason)
{
	OwnerScope	scope;
	AccountSums *sums = palloc0(sizeof(AccountSums) * (n > 0 ? n : 1));
	int		   *acct_of = palloc(sizeof(int) * (n > 0 ? n : 1));
	int			nsums = 0;
	int			nm = 0;
	int			i;
	Numeric		zero = int64_to_numeric(0);

	if (n == 0)
		return;
	prepare_plans();

	/* per-account sums; months whose change nets to nothing are dropped */
	for (i = 0; i < n; i++)
	{
		AccountSums *s;

		if (nsums == 0 || strcmp(sums[nsums - 1].account, d[i].account) != 0)
		{
			s = &sums[nsums++];
			s->account = d[i].account;
			s->qn = s->qo = zero;
		}
		s = &sums[nsums - 1];
		acct_of[i] = nsums - 1;
		s->pn += d[i].points_new;
		s->po += d[i].points_old;
		s->bonus += d[i].bonus_new - d[i].bonus_old;
		s->qn = num_add(s->qn, d[i].qual_new);
		s->qo = num_add(s->qo, d[i].qual_old);
		s->rn += d[i].rows_new;
		s->ro += d[i].rows_old;
	}

	loyalty_enter_owner(&scope);

	/* 1. per-month sums, which caps and the tier window read */
	{
		char	  **k = palloc(sizeof(char *) * n);
		DateADT    *m = palloc(sizeof(DateADT) * n);
		int64	   *p = palloc(sizeof(int64) * n);
		Numeric    *q = palloc(sizeof(Numeric) * n);
		int64	   *r = palloc(sizeof(int64) * n);
		Datum		args[7];

		for (i = 0; i < n; i++)
		{
			int64		dp = d[i].points_new + d[i].bonus_new - d[i].points_old - d[i].bonus_old;
			Numeric		dq = numeric_sub_opt_error(d[i].qual_new, d[i].qual_old, NULL);
			int64		dr = d[i].rows_new - d[i].rows_old;

			if (dp == 0 && dr == 0 && num_eq(dq, zero))
				continue;
			k[nm] = d[i].account;
			m[nm] = d[i].month;
			p[nm] = dp;
			q[nm] = dq;
			r[nm] = dr;
			nm++;
		}
		if (nm > 0)
		{
			args[0] = Int32GetDatum(prog->id);
			args[1] = Int32GetDatum(attachment_id);
			args[2] = loyalty_text_array(k, NULL, nm);
			args[3] = loyalty_date_array(m, nm);
			args[4] = loyalty_int8_array(p, nm);
			args[5] = loyalty_numeric_array(q, nm);
			args[6] = loyalty_int8_array(r, nm);
			if (SPI_execute_plan(month_plan, args, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not update loyalty.accrual_month");
		}
	}

	/* 2. caps act on the period sums just written */
	if (prog->has_caps)
		apply_caps(prog, d, n, sums, acct_of);

	/* 3. ledger entries and balances */
	{
		int			maxe = nsums * 4;
		char	  **ek = palloc(sizeof(char *) * maxe);
		int64	   *eno = palloc(sizeof(int64) * maxe);
		char	  **ekind = palloc(sizeof(char *) * maxe);
		int64	   *ep = palloc(sizeof(int64) * maxe);
		Numeric    *eq = palloc(sizeof(Numeric) * maxe);
		int32	   *er = palloc(sizeof(int32) * maxe);
		int			ne = 0;
		char	  **bk = palloc(sizeof(char *) * nsums);
		int64	   *bp = palloc(sizeof(int64) * nsums);
		Numeric    *bq = palloc(sizeof(Numeric) * nsums);
		int64	   *bn = palloc(sizeof(int64) * nsums);
		int			nb = 0;
		int		   *bidx = palloc(sizeof(int) * nsums);
		Datum		args[9];
		uint64		j;

		for (i = 0; i < nsums; i++)
		{
			AccountSums *s = &sums[i];
			bool		cancels = (s->pn == s->po && s->rn == s->ro && num_eq(s->qn, s->qo));

			s->has_old = !cancels && (s->ro != 0 || s->po != 0 || !num_eq(s->qo, zero));
			s->has_new = !cancels && (s->rn != 0 || s->pn != 0 || !num_eq(s->qn, zero));
			s->nentries = s->has_old + s->has_new + (s->bonus != 0) + (s->cap != 0);
			if (s->nentries == 0)
				continue;
			bk[nb] = s->account;
			bp[nb] = (cancels ? 0 : s->pn - s->po) + s->bonus + s->cap;
			bq[nb] = cancels ? zero : numeric_sub_opt_error(s->qn, s->qo, NULL);
			bn[nb] = s->nentries;
			bidx[nb] = i;
			nb++;
		}
		if (nb == 0)
		{
			loyalty_leave_owner(&scope);
			return;
		}
		args[0] = Int32GetDatum(prog->id);
		args[1] = loyalty_text_array(bk, NULL, nb);
		args[2] = loyalty_int8_array(bp, nb);
		args[3] = loyalty_numeric_array(bq, nb);
		args[4] = loyalty_int8_array(bn, nb);
		if (SPI_execute_plan(balance_plan, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
			SPI_processed != (uint64) nb)
			elog(ERROR, "could not update loyalty.balance");

		/* entry numbers: the balance row handed out the last nentries */
		for (j = 0; j < SPI_processed; j++)
		{
			bool		isnull;
			char	   *key = SPI_getvalue(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1);
			int64		last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 2, &isnull));
			int			lo = 0,
						hi = nb - 1;

			while (lo < hi)
			{
				int			mid = (lo + hi) / 2;

				if (strcmp(bk[mid], key) < 0)
					lo = mid + 1;
				else
					hi = mid;
			}
			sums[bidx[lo]].first_entry = last - sums[bidx[lo]].nentries + 1;
		}
		for (i = 0; i < nb; i++)
		{
			AccountSums *s = &sums[bidx[i]];
			int64		e = s->first_entry;

#define ENTRY(kind_, p_, q_, r_) \
			do { ek[ne] = s->account; eno[ne] = e++; ekind[ne] = (char *) (kind_); \
				 ep[ne] = (p_); eq[ne] = (q_); er[ne] = (int32) (r_); ne++; } while (0)
			if (s->has_old)
				ENTRY(kind_old, -s->po, DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(s->qo))), Abs(s->ro));
			if (s->has_new)
				ENTRY(kind_new, s->pn, s->qn, Abs(s->rn));
			if (s->bonus != 0)
				ENTRY("bonus", s->bonus, zero, 0);
			if (s->cap != 0)
				ENTRY("cap", s->cap, zero, 0);
#undef ENTRY
		}
		args[0] = Int32GetDatum(prog->id);
		args[1] = Int32GetDatum(attachment_id);
		args[2] = CStringGetTextDatum(reason);
		args[3] = loyalty_text_array(ek, NULL, ne);
		args[4] = loyalty_int8_array(eno, ne);
		args[5] = loyalty_text_array(ekind, NULL, ne);
		args[6] = loyalty_int8_array(ep, ne);
		args[7] = loyalty_numeric_array(eq, ne);
		args[8] = loyalty_int4_array(er, ne);
		if (SPI_execute_plan(ledger_plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write loyalty.ledger");
	}

	/* 4. upgrades on accrual; downgrades wait for settlement */
	if (prog->ladder != NULL)
		upgrade_tiers(prog, sums, nsums);

	loyalty_leave_owner(&scope);
}
