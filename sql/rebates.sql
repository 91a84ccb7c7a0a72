--
-- rebates: retrospective volume rebates.  Agreements give an account or a
-- segment a rebate schedule over each period's qualifying spend; the
-- estimate is posted while the period runs (loyalty.accrue_rebates), the
-- true-up at settlement (loyalty._settle_rebates, which settle() calls; here
-- the superuser calls it), with settlement lines for the ERP's credit
-- notes, and adjustment lines when invoices arrive for a settled period.
-- Expected amounts are computed by hand from the ERP rows with the
-- brackets written out in SQL, never with loyalty.rebate().
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE SCHEMA reb;
CREATE TABLE reb.invoice (invoice_id int PRIMARY KEY, customer_id text NOT NULL,
                          invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('rebate club', currency => 'EUR', settlement_period => 'quarter') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'rebate club' \gset
SELECT loyalty.attach('reb.invoice', 'rebate club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
SELECT loyalty.enroll('rebate club', 'A', cooperation_model => 'distributor', region => 'EU');
SELECT loyalty.enroll('rebate club', 'B', cooperation_model => 'distributor', region => 'US');
SELECT loyalty.enroll('rebate club', 'C', cooperation_model => 'reseller', region => 'EU');

-- The hand-written brackets of the two schedules used below.
-- retro: 0:0%, 10000:2%, 50000:3.5%  (the reached rate on the whole volume)
CREATE FUNCTION reb.retro(v numeric) RETURNS numeric LANGUAGE sql
RETURN round(CASE WHEN v >= 50000 THEN v * 0.035 WHEN v >= 10000 THEN v * 0.02 ELSE 0 END, 2);
-- marginal: 0:1%, 20000:2%  (each bracket at its own rate)
CREATE FUNCTION reb.marginal(v numeric) RETURNS numeric LANGUAGE sql
RETURN round(CASE WHEN v <= 0 THEN 0 ELSE least(v, 20000) * 0.01 + greatest(v - 20000, 0) * 0.02 END, 2);
-- the volume of an account in [f, t) from the ERP rows
CREATE FUNCTION reb.volume(k text, f date, t date) RETURNS numeric LANGUAGE sql
RETURN (SELECT coalesce(sum(amount), 0) FROM reb.invoice WHERE customer_id = k AND invoice_date >= f AND invoice_date < t);

--
-- 1. Agreements
--
-- A alone, quarterly (the program's period), retro brackets.
SELECT loyalty.create_rebate_agreement('rebate club', 'ACC_A', 'retro: 0:0%, 10000:2%, 50000:3.5%',
                                       account_key => 'A', valid_from => '2026-01-01');
-- every distributor (A and B, not C), monthly, marginal brackets
SELECT loyalty.create_rebate_agreement('rebate club', 'DIST', 'marginal: 0:1%, 20000:2%',
                                       cooperation_model => 'distributor', period => 'month', valid_from => '2026-01-01');
SELECT agreement_id, account_key, cooperation_model, region, schedule, period, valid_from, valid_until
FROM loyalty.rebate_agreement WHERE program_id = :pid ORDER BY 1;
-- clear errors
\set VERBOSITY terse
SELECT loyalty.create_rebate_agreement('rebate club', 'ACC_A', 'retro: 0:1%', account_key => 'A');
SELECT loyalty.create_rebate_agreement('rebate club', 'X-1', 'retro: 0:1%', account_key => 'A');
SELECT loyalty.create_rebate_agreement('rebate club', 'X', 'retro: 0:1%', account_key => 'A', region => 'EU');
SELECT loyalty.create_rebate_agreement('rebate club', 'X', 'retro: 0:1%', account_key => 'nobody');
SELECT loyalty.create_rebate_agreement('rebate club', 'X', 'retro: 0:1%', period => 'week');
SELECT loyalty.create_rebate_agreement('rebate club', 'X', 'retro: 0:1%', product_lines => '{SOLAR}');
SELECT loyalty.create_rebate_agreement('rebate club', 'X', 'retro: 0:1%', valid_from => '2026-05-01', valid_until => '2026-05-01');
SELECT loyalty.create_rebate_agreement('rebate club', 'X', NULL);
SELECT loyalty.create_rebate_agreement('nope', 'X', 'retro: 0:1%');
SELECT loyalty.end_rebate_agreement('rebate club', 'NOPE');
\set VERBOSITY default

--
-- 2. Estimates while the periods run
--
INSERT INTO reb.invoice VALUES
    (1, 'A', '2026-01-10', 8000), (2, 'A', '2026-01-20', 9000), (3, 'A', '2026-02-03', 4000),
    (4, 'B', '2026-01-15', 30000), (5, 'B', '2026-02-01', 5000), (6, 'C', '2026-01-05', 70000);
-- as of 2026-02-15: ACC_A's first quarter (A: 21000 so far), DIST's January
-- (A: 17000, B: 30000) and February (A: 4000, B: 5000); C has no agreement
SELECT loyalty.accrue_rebates('rebate club', '2026-02-15') AS estimated,
       reb.retro(21000) + reb.marginal(17000) + reb.marginal(30000) + reb.marginal(4000) + reb.marginal(5000) AS expected;
SELECT agreement_id, account_key, period_start, period_end, kind, volume, amount
FROM loyalty.rebate_posting WHERE program_id = :pid ORDER BY 1, 2, 3;
SELECT account_key, kind, rebate, reason FROM loyalty.ledger WHERE program_id = :pid AND kind = 'rebate' ORDER BY 1, 4;
-- idempotent: nothing changed, nothing posted
SELECT loyalty.accrue_rebates('rebate club', '2026-02-15') AS estimated_again;
-- more invoices, and a credit note: only the differences are posted
INSERT INTO reb.invoice VALUES (7, 'A', '2026-02-20', 35000), (8, 'B', '2026-02-25', -2000), (9, 'A', '2026-03-05', 1000);
SELECT loyalty.accrue_rebates('rebate club', '2026-03-10') AS estimated,
       (reb.retro(57000) - reb.retro(21000)) + (reb.marginal(39000) - reb.marginal(4000))
       + (reb.marginal(3000) - reb.marginal(5000)) + reb.marginal(1000) AS expected;

--
-- 3. True-up at settlement of the first quarter
--
-- More spend in March after the last estimate: the true-up pays the rest.
INSERT INTO reb.invoice VALUES (10, 'B', '2026-03-20', 25000);
SELECT loyalty._settle_rebates(:pid, '2026-01-01', '2026-04-01') AS trued_up;
SELECT account_key, agreement_id, period_start, period_end, adjustment_no, regexp_replace(document_key, '^LOY-[0-9]+-', 'LOY-<pid>-') AS document_key, volume, final, accrued, amount,
       credit_note, currency, settled_through, entry_no IS NOT NULL AS posted
FROM loyalty.settlement_line WHERE program_id = :pid ORDER BY 1, 2, 4, 5;
-- the finals by hand, from the ERP rows
SELECT a.k, a.g, a.f, a.t, a.final, s.final AS line_final, a.final = s.final AS same
FROM (SELECT 'A' AS k, 'ACC_A' AS g, date '2026-01-01' AS f, date '2026-04-01' AS t,
             reb.retro(reb.volume('A', '2026-01-01', '2026-04-01')) AS final
      UNION ALL
      SELECT k, 'DIST', m::date, (m + interval '1 month')::date, reb.marginal(reb.volume(k, m::date, (m + interval '1 month')::date))
      FROM unnest(ARRAY['A', 'B']) k, generate_series(date '2026-01-01', date '2026-03-01', interval '1 month') m) a
LEFT JOIN loyalty.settlement_line s ON s.program_id = :pid AND s.account_key = a.k AND s.agreement_id = a.g AND s.period_end = a.t
ORDER BY 1, 2, 3;
-- the rebate wallet holds the finals; the true-up was final - accrued
SELECT b.account_key, b.rebate,
       (SELECT sum(s.final) FROM loyalty.settlement_line s WHERE s.program_id = :pid AND s.account_key = b.account_key) AS finals
FROM loyalty.balance b WHERE b.program_id = :pid ORDER BY 1;
SELECT sum(amount) = (SELECT sum(final) - sum(accrued) FROM loyalty.settlement_line WHERE program_id = :pid) AS trueup_is_final_minus_accrued
FROM loyalty.settlement_line WHERE program_id = :pid;
-- idempotent: the same settlement again posts nothing and writes no line
SELECT loyalty._settle_rebates(:pid, '2026-01-01', '2026-04-01') AS trued_up_again;
SELECT count(*) AS lines FROM loyalty.settlement_line WHERE program_id = :pid;
-- a settled period is no longer estimated
SELECT loyalty.accrue_rebates('rebate club', '2026-03-31') AS estimated_after_settlement;

--
-- 4. Late postings: an invoice and a credit note dated in the settled
-- quarter arrive in the second quarter.  Nothing changes until the next
-- settlement, which posts one adjustment line per changed period (a new
-- document key), next to the second quarter's own lines.
--
INSERT INTO reb.invoice VALUES (11, 'A', '2026-02-10', 3000),   -- ACC_A Q1 and DIST February of A
                               (12, 'B', '2026-03-30', -4000),  -- DIST March of B
                               (13, 'A', '2026-04-15', 12000);  -- the second quarter
SELECT loyalty.accrue_rebates('rebate club', '2026-05-15') AS estimated_q2,
       reb.retro(12000) + reb.marginal(12000) AS expected;
SELECT loyalty._settle_rebates(:pid, '2026-04-01', '2026-07-01') AS trued_up_q2,
       (reb.retro(60000) - reb.retro(57000)) + (reb.marginal(42000) - reb.marginal(39000))
       + (reb.marginal(21000) - reb.marginal(25000)) AS expected_adjustments;
SELECT account_key, agreement_id, period_end, adjustment_no, regexp_replace(document_key, '^LOY-[0-9]+-', 'LOY-<pid>-') AS document_key, volume, final, accrued, amount, credit_note, settled_through
FROM loyalty.settlement_line WHERE program_id = :pid AND settled_through = '2026-07-01' ORDER BY 1, 2, 3, 4;
-- each period's credit notes add up to its final rebate now
SELECT s.account_key, s.agreement_id, s.period_end, sum(s.credit_note) AS credit_notes,
       CASE s.agreement_id WHEN 'ACC_A' THEN reb.retro(reb.volume(s.account_key, min(s.period_start), s.period_end))
                           ELSE reb.marginal(reb.volume(s.account_key, min(s.period_start), s.period_end)) END AS final_by_hand
FROM loyalty.settlement_line s WHERE s.program_id = :pid
GROUP BY 1, 2, 3 HAVING sum(s.credit_note) <> CASE s.agreement_id WHEN 'ACC_A' THEN reb.retro(reb.volume(s.account_key, min(s.period_start), s.period_end))
                                                                 ELSE reb.marginal(reb.volume(s.account_key, min(s.period_start), s.period_end)) END;
-- never twice: the same settlement again, or the next one, adds no line for them
SELECT loyalty._settle_rebates(:pid, '2026-04-01', '2026-07-01') AS again;
-- a second late credit note for the same period: a second adjustment
INSERT INTO reb.invoice VALUES (14, 'A', '2026-01-31', -1000);
SELECT loyalty._settle_rebates(:pid, '2026-07-01', '2026-10-01') AS trued_up_q3;
SELECT account_key, agreement_id, period_end, adjustment_no, regexp_replace(document_key, '^LOY-[0-9]+-', 'LOY-<pid>-') AS document_key, credit_note
FROM loyalty.settlement_line WHERE program_id = :pid AND settled_through = '2026-10-01' ORDER BY 1, 2, 3, 4;
-- the wallet: the latest final of every settled period
SELECT b.account_key, b.rebate = (SELECT sum(s.credit_note) FROM loyalty.settlement_line s
                                  WHERE s.program_id = :pid AND s.account_key = b.account_key) AS wallet_is_credit_notes
FROM loyalty.balance b WHERE b.program_id = :pid AND b.rebate <> 0 ORDER BY 1;
SELECT * FROM loyalty.verify('rebate club');

-- Ending an agreement: never before a settled period (DIST is settled up to
-- April), never extended.
\set VERBOSITY terse
SELECT loyalty.end_rebate_agreement('rebate club', 'DIST', '2026-04-01');
\set VERBOSITY default
SELECT loyalty.end_rebate_agreement('rebate club', 'DIST', '2026-11-01');
SELECT agreement_id, valid_until, ended_at IS NOT NULL AS ended FROM loyalty.rebate_agreement WHERE program_id = :pid ORDER BY 1;
\set VERBOSITY terse
SELECT loyalty.end_rebate_agreement('rebate club', 'DIST', '2026-12-01');
\set VERBOSITY default

--
-- 5. Roles: operators estimate, admins configure, readers read the lines.
--
CREATE ROLE rebate_operator IN ROLE loyalty_operator;
CREATE ROLE rebate_reader IN ROLE loyalty_reader;
SET ROLE rebate_operator;
SELECT loyalty.accrue_rebates('rebate club', '2026-10-15') >= 0 AS operator_estimates;
\set VERBOSITY terse
SELECT loyalty.create_rebate_agreement('rebate club', 'OP', 'retro: 0:50%');
SELECT loyalty._settle_rebates(:pid, '2026-10-01', '2027-01-01');
SET ROLE rebate_reader;
SELECT loyalty.accrue_rebates('rebate club');
INSERT INTO loyalty.settlement_line SELECT * FROM loyalty.settlement_line LIMIT 1;
\set VERBOSITY default
SELECT count(*) > 0 AS reader_reads_lines FROM loyalty.settlement_line;
RESET ROLE;
DROP ROLE rebate_operator;
DROP ROLE rebate_reader;

--
-- 6. A segment of 600 accounts over a year of random invoices, credit
-- notes and late postings: every line's final is the hand-computed rebate
-- of the ERP rows, every period's credit notes add up to it.
--
SELECT setseed(0.3);
SELECT loyalty.create_program('rebate load', settlement_period => 'quarter') > 0 AS created;
SELECT program_id AS lid FROM loyalty.program WHERE name = 'rebate load' \gset
CREATE TABLE reb.sale (sale_id int PRIMARY KEY, customer_id text NOT NULL, sale_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.attach('reb.sale', 'rebate load', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'sale_date') > 0 AS attached;
SELECT count(loyalty.enroll('rebate load', 'r' || i, region => CASE WHEN i % 3 = 0 THEN 'NORTH' ELSE 'SOUTH' END))
FROM generate_series(1, 600) i;
SELECT loyalty.create_rebate_agreement('rebate load', 'NORTH', 'retro: 0:0%, 10000:2%, 50000:3.5%',
                                       region => 'NORTH', valid_from => '2025-01-01');
CREATE FUNCTION reb.load_quarter(q date, n int) RETURNS void LANGUAGE sql AS $$
INSERT INTO reb.sale
SELECT coalesce((SELECT max(sale_id) FROM reb.sale), 0) + i, 'r' || (1 + (random() * 599)::int),
       q + (random() * 89)::int, round((random() * 9000 - 1000)::numeric, 2)
FROM generate_series(1, n) i
$$;
SELECT reb.load_quarter('2025-01-01', 4000);
SELECT loyalty.accrue_rebates('rebate load', '2025-02-14') > 0 AS estimated;
SELECT loyalty._settle_rebates(:lid, '2025-01-01', '2025-04-01') IS NOT NULL AS settled_q1;
SELECT reb.load_quarter('2025-04-01', 4000);
SELECT reb.load_quarter('2025-01-01', 300);   -- late postings for the settled quarter
SELECT loyalty.accrue_rebates('rebate load', '2025-05-20') > 0 AS estimated;
SELECT loyalty._settle_rebates(:lid, '2025-04-01', '2025-07-01') IS NOT NULL AS settled_q2;
SELECT count(*) FILTER (WHERE adjustment_no = 0 AND period_end = '2025-04-01') AS q1_lines,
       count(*) FILTER (WHERE adjustment_no > 0) > 50 AS many_adjustments
FROM loyalty.settlement_line WHERE program_id = :lid;
-- every period of every NORTH account: credit notes = hand-computed rebate
SELECT k.account_key, p.f, p.t, reb.retro(sum_v) AS final_by_hand, s.credit_notes
FROM (SELECT 'r' || i AS account_key FROM generate_series(3, 600, 3) i) k
CROSS JOIN (VALUES (date '2025-01-01', date '2025-04-01'), (date '2025-04-01', date '2025-07-01')) p(f, t)
CROSS JOIN LATERAL (SELECT coalesce(sum(amount), 0) AS sum_v FROM reb.sale
                    WHERE customer_id = k.account_key AND sale_date >= p.f AND sale_date < p.t) v
LEFT JOIN LATERAL (SELECT sum(credit_note) AS credit_notes FROM loyalty.settlement_line s
                   WHERE s.program_id = :lid AND s.account_key = k.account_key AND s.period_end = p.t) s ON true
WHERE reb.retro(sum_v) IS DISTINCT FROM coalesce(s.credit_notes, 0);
-- no SOUTH account has a line; the wallets hold the latest finals
SELECT count(*) AS south_lines FROM loyalty.settlement_line WHERE program_id = :lid AND account_key IN
    (SELECT 'r' || i FROM generate_series(1, 600) i WHERE i % 3 <> 0);
SELECT count(*) AS wallets_off FROM loyalty.balance b
WHERE b.program_id = :lid
  AND b.rebate <> (SELECT coalesce(sum(s.credit_note), 0) FROM loyalty.settlement_line s
                   WHERE s.program_id = :lid AND s.account_key = b.account_key);
SELECT * FROM loyalty.verify('rebate load');
