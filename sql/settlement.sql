--
-- settlement: loyalty.settle(program, period_end) re-qualifies tiers over
-- the rolling window, once per period, and carries documents that arrive
-- late for a settled period into the next run.  Expected figures come from
-- the invoices, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE SCHEMA st;
CREATE TABLE st.invoice (id int PRIMARY KEY, customer text NOT NULL, inv_date date NOT NULL, amount numeric(12,2) NOT NULL);
-- a window of one quarter: the quarter settled decides the tier
SELECT loyalty.create_program('st_club', ladder => 'Silver:1000, Gold:5000', qualification_window => '3 months') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'st_club' \gset
SELECT loyalty.attach('st.invoice', 'st_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;

-- 2025 Q1: A reaches Gold, B Silver, C nothing; a thousand small accounts
-- make the run set-based for real.
INSERT INTO st.invoice VALUES (1, 'A', '2025-01-10', 4000), (2, 'A', '2025-03-20', 2000),
                              (3, 'B', '2025-02-01', 1500), (4, 'C', '2025-03-31', 100);
INSERT INTO st.invoice SELECT 100 + g, 'S' || g, '2025-01-01'::date + g % 90, g % 7 FROM generate_series(1, 1000) g;

-- Which dates are period ends: the program settles by quarter.
SELECT loyalty.settle('st_club', '2025-03-30');
SELECT loyalty.settle('st_club', '2025-04-30');
SELECT loyalty.settle('st_club', NULL);
SELECT loyalty.settle('st_club', '2999-12-31');
SELECT loyalty.settle('no such program', '2025-03-31');

-- The run: counts from the invoices.
SELECT period_start, period_end, status, accounts, tiers_up, tiers_down, tiers_held,
       period_qualifying = (SELECT sum(amount) FROM st.invoice WHERE inv_date BETWEEN '2025-01-01' AND '2025-03-31') AS period_ok,
       carried_qualifying, points_expired, rebate_total, mdf_total
FROM loyalty.settle('st_club', '2025-03-31');
SELECT account_key, old_tier, qualified_tier, new_tier, outcome, measure
FROM loyalty.settlement_account WHERE program_id = :pid AND period_end = '2025-03-31' AND account_key IN ('A', 'B', 'C')
ORDER BY 1;
SELECT account_key, tier FROM loyalty.account WHERE program_id = :pid AND account_key IN ('A', 'B', 'C') ORDER BY 1;
-- Every change is in the history, numbered per account, from tomorrow on.
SELECT account_key, change_no, old_tier, new_tier, reason, rolling_qualifying, effective_from = current_date + 1 AS from_tomorrow
FROM loyalty.tier_history WHERE program_id = :pid ORDER BY 1, 2;

-- A second call is a no-op that says so and returns the same run.
SELECT period_end, accounts, finished_at = (SELECT finished_at FROM loyalty.settlement_run
                                             WHERE program_id = :pid AND period_end = '2025-03-31') AS same_run
FROM loyalty.settle('st_club', '2025-03-31');
SELECT count(*) AS runs FROM loyalty.settlement_run WHERE program_id = :pid;

-- Q2: A spends 2000 (Silver), B nothing.  Late for Q1: an invoice of C
-- dated in March and a credit note for B; neither changes the Q1 run, both
-- are carried into Q2.
INSERT INTO st.invoice VALUES (5, 'A', '2025-05-05', 2000), (6, 'C', '2025-03-15', 500), (7, 'B', '2025-02-01', -300);
SELECT period_qualifying = (SELECT sum(amount) FROM st.invoice WHERE inv_date BETWEEN '2025-04-01' AND '2025-06-30') AS period_ok,
       carried_qualifying, tiers_up, tiers_down
FROM loyalty.settle('st_club', '2025-06-30');
SELECT account_key, old_tier, qualified_tier, new_tier, outcome, period_qualifying, carried_qualifying
FROM loyalty.settlement_account WHERE program_id = :pid AND period_end = '2025-06-30' AND account_key IN ('A', 'B', 'C')
ORDER BY 1;
-- Never lost, never counted twice: the runs add up to the invoices.
SELECT (SELECT sum(period_qualifying + carried_qualifying) FROM loyalty.settlement_run WHERE program_id = :pid)
       = (SELECT sum(amount) FROM st.invoice WHERE inv_date <= '2025-06-30') AS runs_add_up,
       (SELECT sum(period_points + carried_points) FROM loyalty.settlement_run WHERE program_id = :pid)
       = (SELECT sum(points) FROM loyalty.ledger WHERE program_id = :pid) AS points_add_up;
SELECT account_key, change_no, old_tier, new_tier, reason FROM loyalty.tier_history
WHERE program_id = :pid AND account_key IN ('A', 'B') ORDER BY 1, 2;
-- Periods are settled in order.
SELECT loyalty.settle('st_club', '2025-03-31') IS NOT NULL AS earlier_is_a_no_op;

-- settle_due() settles every ended period, oldest first: 2025 Q3 up to the
-- last quarter before today.
SELECT count(*) = (SELECT count(*) FROM generate_series('2025-07-01'::date, date_trunc('quarter', current_date) - interval '1 day',
                                                          interval '3 months'))
       AS all_due, min(period_end) AS first, bool_and(status = 'done') AS done
FROM loyalty.settle_due('st_club');
SELECT count(*) AS nothing_left FROM loyalty.settle_due('st_club');
SELECT loyalty.settle_due('no such program');

--
-- Who may settle: operators and admins; readers see the runs.
--
CREATE ROLE st_reader IN ROLE loyalty_reader;
CREATE ROLE st_operator IN ROLE loyalty_operator;
SET ROLE st_reader;
SELECT loyalty.settle('st_club', '2025-03-31');
SELECT loyalty.settle_due();
SELECT count(*) > 0 AS reads_runs FROM loyalty.settlement_run;
SET ROLE st_operator;
SELECT period_end FROM loyalty.settle('st_club', '2025-03-31');
SELECT loyalty.set_tier_rules('st_club', grace => 'none');
RESET ROLE;
DROP ROLE st_reader, st_operator;

-- Everything reconciles.
SELECT * FROM loyalty.verify('st_club');
