-- Quarter-end settlement of the Distributor Club (after demo/accrual.sql):
--
--   1. the tier rules: re-qualification over the 12-month window, a tier
--      kept for one quarter below its threshold (grace), a paid VIP
--      membership granted by hand, and what each tier unlocks;
--   2. loyalty.settle_due(): every quarter that has ended, oldest first,
--      each in one transaction, once;
--   3. what moved: tiers up, down, held by grace; rebates trued up, MDF,
--      points expired (the steps of the rebate, MDF and expiry work; 0
--      until they are installed);
--   4. the ERP's order entry reading payment terms with one join;
--   5. one partner statement.
--
-- Run by scripts/demo.sh after demo/accrual.sql.

\set QUIET on
\pset footer off
\pset numericlocale on
\set program 'Distributor Club'

\echo
\echo '================================================================================'
\echo ' S1. Tier rules and benefits'
\echo '================================================================================'
-- Downgrades wait one quarter: a partner below its tier for one settled
-- quarter keeps it, and drops at the second.
SELECT loyalty.set_tier_rules(:'program', grace => 'periods', grace_value => 2) \g /dev/null
SELECT loyalty.set_benefit(:'program', t.tier, t.benefit, t.value::jsonb)
FROM (VALUES ('Member', 'payment_terms_days', '30'),
             ('Silver', 'payment_terms_days', '45'), ('Silver', 'support_sla_hours', '24'),
             ('Gold', 'payment_terms_days', '60'), ('Gold', 'support_sla_hours', '8'),
             ('Gold', 'priority_shipping', 'true'), ('Gold', 'mdf_rate', '0.01'),
             ('Platinum', 'payment_terms_days', '90'), ('Platinum', 'support_sla_hours', '4'),
             ('Platinum', 'priority_shipping', 'true'), ('Platinum', 'mdf_rate', '0.02'),
             ('Platinum', 'dedicated_account_manager', 'true'), ('Platinum', 'early_access', 'true'),
             -- a benefit-only tier: no threshold, granted by hand
             ('VIP', 'payment_terms_days', '75'), ('VIP', 'dedicated_account_manager', 'true'))
     AS t(tier, benefit, value) \g /dev/null
SELECT tier_basis, tier_grace, tier_grace_value, settlement_period, qualification_window
FROM loyalty.program WHERE name = :'program';
SELECT tier, jsonb_object_agg(benefit, value ORDER BY benefit) AS benefits
FROM loyalty.tier_benefit b JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' GROUP BY tier ORDER BY min(CASE tier WHEN 'Member' THEN 1 WHEN 'Silver' THEN 2
                                                              WHEN 'Gold' THEN 3 WHEN 'Platinum' THEN 4 ELSE 5 END);

-- The smallest active customer buys the paid VIP membership.
SELECT c.customer_id AS vip FROM erp.customer c
JOIN loyalty.balance b ON b.account_key = c.customer_id::text
ORDER BY b.qualifying, c.customer_id LIMIT 1 \gset
SELECT loyalty.grant_tier(:'program', :'vip', 'VIP', reason => 'paid VIP membership') \g /dev/null

\echo
\echo '================================================================================'
\echo ' S2. loyalty.settle_due(): every quarter that has ended, once'
\echo '================================================================================'
SET client_min_messages = warning;
SELECT period_start, period_end, accounts, tiers_up AS up, tiers_down AS down, tiers_held AS held,
       period_qualifying, carried_qualifying AS carried, rebate_total AS rebates_trued_up,
       mdf_total AS mdf, points_expired
FROM loyalty.settle_due(:'program') ORDER BY period_end;
RESET client_min_messages;
-- again: nothing is due
SELECT count(*) AS settled_again FROM loyalty.settle_due(:'program');

\echo
\echo '================================================================================'
\echo ' S3. Tier movements at the last quarter-end'
\echo '================================================================================'
SELECT max(period_end) AS last_end FROM loyalty.settlement_run r JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' \gset
SELECT s.outcome, coalesce(s.old_tier, '-') || ' -> ' || coalesce(s.new_tier, '-') AS movement,
       count(*) AS accounts, round(avg(s.measure)) AS avg_rolling_spend
FROM loyalty.settlement_account s JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' AND s.period_end = :'last_end' AND s.outcome <> 'same'
GROUP BY 1, 2 ORDER BY 1, 2;
-- every change is in the tier history with its reason
SELECT h.reason, count(*) AS changes
FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' GROUP BY 1 ORDER BY 1;

\echo
\echo '================================================================================'
\echo ' S4. The ERP reads payment terms with one join'
\echo '================================================================================'
SELECT coalesce(b.tier, '(none)') AS tier, coalesce(b.payment_terms_days, c.payment_terms_days) AS terms_days,
       count(*) AS customers
FROM erp.customer c
LEFT JOIN loyalty.account_benefits b ON b.program = :'program' AND b.account_key = c.customer_id::text
GROUP BY 1, 2 ORDER BY 2 DESC, 1;

\echo
\echo '================================================================================'
\echo ' S5. Partner statement of the largest customer, last quarter'
\echo '================================================================================'
SELECT c.customer_id AS top, c.name FROM erp.customer c
JOIN loyalty.balance b ON b.account_key = c.customer_id::text
ORDER BY b.qualifying DESC LIMIT 1 \gset
\echo :name
SELECT * FROM loyalty.statement(:'program', :'top', :'last_end');

SELECT count(*) AS verify_differences FROM loyalty.verify(:'program');
