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
SELECT loyalty.settle('st_club', (date_trunc('quarter', current_date) + interval '3 months' - interval '1 day')::date);
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
-- Grace rules, one per period on one account: P reaches Platinum, then
-- spends less each quarter.
--
SELECT loyalty.create_program('st_grace', ladder => 'Silver:1000, Gold:5000, Platinum:10000',
                              qualification_window => '3 months') > 0 AS created;
SELECT program_id AS gid FROM loyalty.program WHERE name = 'st_grace' \gset
CREATE TABLE st.sale (id int PRIMARY KEY, customer text NOT NULL, sale_date date NOT NULL, amount numeric NOT NULL);
SELECT loyalty.attach('st.sale', 'st_grace', account_column => 'customer', amount_column => 'amount',
                      date_column => 'sale_date') > 0 AS attached;
INSERT INTO st.sale VALUES (1, 'P', '2025-02-01', 12000), (2, 'P', '2025-05-01', 100), (3, 'P', '2025-08-01', 4600),
                           (4, 'P', '2025-11-01', 2000), (5, 'P', '2026-02-01', 2000), (6, 'P', '2026-05-01', 2000);
SELECT (loyalty.settle('st_grace', '2025-03-31')).tiers_up;
-- at most one level per period: Platinum -> Gold although P qualifies for none
SELECT loyalty.set_tier_rules('st_grace', grace => 'one_level');
SELECT (loyalty.settle('st_grace', '2025-06-30')).tiers_down;
-- a margin of 10 %: 4600 is within 10 % of Gold's 5000, P keeps Gold
SELECT loyalty.set_tier_rules('st_grace', grace => 'margin', grace_value => 0.1);
SELECT (loyalty.settle('st_grace', '2025-09-30')).tiers_held;
-- three periods in a row below before dropping: Q3 (margin) was the first
SELECT loyalty.set_tier_rules('st_grace', grace => 'periods', grace_value => 3);
SELECT (loyalty.settle('st_grace', '2025-12-31')).tiers_held;
SELECT (loyalty.settle('st_grace', '2026-03-31')).tiers_down;
SELECT period_end, old_tier, qualified_tier, new_tier, outcome, periods_below, measure
FROM loyalty.settlement_account WHERE program_id = :gid ORDER BY period_end;
SELECT change_no, old_tier, new_tier, reason FROM loyalty.tier_history WHERE program_id = :gid ORDER BY change_no;
-- Bad rules are refused.
SELECT loyalty.set_tier_rules('st_grace', grace => 'margin', grace_value => 1.5);
SELECT loyalty.set_tier_rules('st_grace', grace => 'periods', grace_value => 0.5);
SELECT loyalty.set_tier_rules('st_grace', grace => 'one_level', grace_value => 2);
SELECT loyalty.set_tier_rules('st_grace', grace => 'sometimes');
SELECT loyalty.set_tier_rules('st_grace', basis => 'action');

--
-- An upgrade reached during the period stands at that period's end: the
-- fold records it at once, settlement does not take it back before the
-- next period's end.
--
INSERT INTO st.sale VALUES (10, 'U', current_date, 6000);
SELECT loyalty.fold('st_grace') > 0 AS folded;
SELECT tier FROM loyalty.account WHERE program_id = :gid AND account_key = 'U';
-- (settle the quarter before today: U's spend is dated after it)
SELECT max(period_end) = (date_trunc('quarter', current_date) - interval '1 day')::date AS last_quarter_settled
FROM loyalty.settle_due('st_grace');
SELECT account_key, old_tier, qualified_tier, new_tier, outcome
FROM loyalty.settlement_account WHERE program_id = :gid AND account_key = 'U'
ORDER BY period_end DESC LIMIT 1;

--
-- Qualification on an action count and on spend AND actions.  The actions
-- come from loyalty._action_counts (the actions work); here a stand-in
-- that counts rows of a test table, inside a transaction rolled back.
--
BEGIN;
CREATE TABLE st.certification (customer text, earned date);
INSERT INTO st.certification VALUES ('A', '2025-08-01'), ('A', '2025-08-02'), ('B', '2025-08-03');
CREATE OR REPLACE FUNCTION loyalty._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT c.customer, count(*) FROM st.certification c WHERE action = 'certification'
      AND c.earned >= from_date AND c.earned < to_date GROUP BY 1 $$;
SELECT loyalty.create_program('st_partner', ladder => 'Certified:1, Expert:2', qualification_window => '3 months') > 0 AS created;
SELECT loyalty.set_tier_rules('st_partner', basis => 'action', action => 'certification');
SELECT loyalty.enroll('st_partner', 'A'), loyalty.enroll('st_partner', 'B');
SELECT (loyalty.settle('st_partner', '2025-09-30')).tiers_up;
SELECT account_key, measure, new_tier FROM loyalty.settlement_account
WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'st_partner') ORDER BY 1;
-- Gold needs 5000 of spend AND two certifications
SELECT loyalty.create_program('st_combo', ladder => 'Silver:1000, Gold:5000', qualification_window => '3 months') > 0 AS created;
CREATE TABLE st.combo_sale (id int PRIMARY KEY, customer text NOT NULL, sale_date date NOT NULL, amount numeric NOT NULL);
SELECT loyalty.attach('st.combo_sale', 'st_combo', account_column => 'customer', amount_column => 'amount',
                      date_column => 'sale_date') > 0 AS attached;
SELECT loyalty.set_tier_requirement('st_combo', 'Gold', 'certification', 2);
INSERT INTO st.combo_sale VALUES (1, 'A', '2025-08-01', 6000), (2, 'B', '2025-08-01', 6000);
SELECT loyalty.settle('st_combo', '2025-09-30') IS NOT NULL AS settled;
SELECT account_key, measure, qualified_tier, new_tier FROM loyalty.settlement_account
WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'st_combo') ORDER BY 1;
ROLLBACK;
SELECT loyalty.set_tier_requirement('st_grace', 'Bronze', 'certification', 2);
SELECT loyalty.set_tier_requirement('st_grace', 'Gold', NULL, 2);

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
SELECT * FROM loyalty.verify('st_grace');
