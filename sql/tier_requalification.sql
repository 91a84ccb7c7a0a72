--
-- tier_requalification: how settlement moves tiers.  Grace rules (one level
-- per period, a margin below the threshold, N periods below), an upgrade
-- reached during the period, tiers on action counts and on spend AND
-- actions, tiers granted by hand.  Expected tiers follow from the sales
-- listed here and the ladders.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;

CREATE SCHEMA strq;
--
-- Grace rules, one per period on one account: P reaches Platinum, then
-- spends less each quarter.
--
SELECT loyalty.create_program('st_grace', ladder => 'Silver:1000, Gold:5000, Platinum:10000',
                              qualification_window => '3 months') > 0 AS created;
SELECT program_id AS gid FROM loyalty.program WHERE name = 'st_grace' \gset
CREATE TABLE strq.sale (id int PRIMARY KEY, customer text NOT NULL, sale_date date NOT NULL, amount numeric NOT NULL);
SELECT loyalty.attach('strq.sale', 'st_grace', account_column => 'customer', amount_column => 'amount',
                      date_column => 'sale_date') > 0 AS attached;
INSERT INTO strq.sale VALUES (1, 'P', '2025-02-01', 12000), (2, 'P', '2025-05-01', 100), (3, 'P', '2025-08-01', 4600),
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
INSERT INTO strq.sale VALUES (10, 'U', current_date, 6000);
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
CREATE TABLE strq.certification (customer text, earned date);
INSERT INTO strq.certification VALUES ('A', '2025-08-01'), ('A', '2025-08-02'), ('B', '2025-08-03');
CREATE OR REPLACE FUNCTION loyalty._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT c.customer, count(*) FROM strq.certification c WHERE action = 'certification'
      AND c.earned >= from_date AND c.earned < to_date GROUP BY 1 $$;
SELECT loyalty.create_program('st_partner', ladder => 'Certified:1, Expert:2', qualification_window => '3 months') > 0 AS created;
SELECT loyalty.set_tier_rules('st_partner', basis => 'action', action => 'certification');
SELECT loyalty.enroll('st_partner', 'A'), loyalty.enroll('st_partner', 'B');
SELECT (loyalty.settle('st_partner', '2025-09-30')).tiers_up;
SELECT account_key, measure, new_tier FROM loyalty.settlement_account
WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'st_partner') ORDER BY 1;
-- Gold needs 5000 of spend AND two certifications
SELECT loyalty.create_program('st_combo', ladder => 'Silver:1000, Gold:5000', qualification_window => '3 months') > 0 AS created;
CREATE TABLE strq.combo_sale (id int PRIMARY KEY, customer text NOT NULL, sale_date date NOT NULL, amount numeric NOT NULL);
SELECT loyalty.attach('strq.combo_sale', 'st_combo', account_column => 'customer', amount_column => 'amount',
                      date_column => 'sale_date') > 0 AS attached;
SELECT loyalty.set_tier_requirement('st_combo', 'Gold', 'certification', 2);
INSERT INTO strq.combo_sale VALUES (1, 'A', '2025-08-01', 6000), (2, 'B', '2025-08-01', 6000);
SELECT loyalty.settle('st_combo', '2025-09-30') IS NOT NULL AS settled;
SELECT account_key, measure, qualified_tier, new_tier FROM loyalty.settlement_account
WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'st_combo') ORDER BY 1;
ROLLBACK;
SELECT loyalty.set_tier_requirement('st_grace', 'Bronze', 'certification', 2);
SELECT loyalty.set_tier_requirement('st_grace', 'Gold', NULL, 2);

--
-- A tier granted by hand (a paid VIP membership, no threshold) is kept
-- through re-qualification and accrual upgrades until revoked.
--
SELECT loyalty.grant_tier('st_grace', 'P', 'VIP');
SELECT loyalty.set_benefit('st_grace', 'VIP', 'dedicated_account_manager', 'true');
SELECT loyalty.grant_tier('st_grace', 'P', 'VIP', reason => 'paid membership 2026');
SELECT loyalty.grant_tier('st_grace', 'nobody', 'VIP');
SELECT tier FROM loyalty.account WHERE program_id = :gid AND account_key = 'P';
INSERT INTO strq.sale VALUES (20, 'P', current_date, 20000);
SELECT loyalty.fold('st_grace') > 0 AS folded;
SELECT tier FROM loyalty.account WHERE program_id = :gid AND account_key = 'P';
SELECT change_no, old_tier, new_tier, reason FROM loyalty.tier_history WHERE program_id = :gid AND account_key = 'P'
ORDER BY change_no;
SELECT loyalty.revoke_tier('st_grace', 'P');
SELECT loyalty.revoke_tier('st_grace', 'P');
SELECT change_no, old_tier, new_tier, reason FROM loyalty.tier_history WHERE program_id = :gid AND account_key = 'P'
ORDER BY change_no;
SELECT * FROM loyalty.verify('st_grace');

