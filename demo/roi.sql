-- Incremental ROI of the Distributor Club, measured in SQL where the data is.
--
--   1. the experiment: fiscal 2025 (Nov 2024 - Oct 2025) is the pre-period;
--      the accounts are drawn into pilot and control again, half and half,
--      stratified by cooperation model and FY2025 spend (loyalty.assign_cohorts);
--   2. the economics: margin rates per product line, what a point costs,
--      what the pilot's benefits cost;
--   3. a simulated program effect: in fiscal 2026 the pilot customers buy 15%
--      more on their invoices (an UPDATE of the ERP's lines: the accrual
--      trigger corrects their points in the same statement);
--   4. the ROI report (loyalty.roi) and the KPI summary (loyalty.kpi,
--      loyalty.churn_risk, loyalty.tier_movements) as an executive reads them;
--   5. a picture: pilot vs control monthly margin per account with the
--      program start marked, an SVG written by psql alone.
--
-- Run after demo/accrual.sql:  psql -d demo -v svg=/path/roi.svg -f demo/roi.sql
-- (svg defaults to roi.svg in psql's working directory).

\set QUIET on
\pset footer off
\pset numericlocale on
\set program 'Distributor Club'
\if :{?svg}
\else
\set svg roi.svg
\endif

\echo
\echo '================================================================================'
\echo ' R. Incremental ROI: pilot vs control, difference in differences on margin'
\echo '================================================================================'

-- 1. The experiment.  The accounts had cohorts from the enrolment (1 in 10
-- control); they are drawn again (reassign), half and half in each stratum.
\echo 'Cohorts, per stratum (cooperation model x eighth of FY2025 qualifying spend):'
SELECT stratum, accounts, pilot, control, pilot_mean_spend, control_mean_spend
FROM loyalty.assign_cohorts(:'program', pilot_fraction => 0.5, seed => 20251101,
                            pre => daterange('2024-11-01', '2025-11-01'), spend_bands => 8, reassign => true);

-- 2. The economics: gross margin rates per product line (the rest at 20%),
-- a point costs half a cent, the pilot's tier benefits 15 EUR per account
-- and month.
SELECT count(loyalty.set_margin_rate(:'program', l.product_line, r.rate)) AS margin_rates_set
FROM erp.product_line l
JOIN (VALUES ('CABLES', 0.18), ('SWITCHGEAR', 0.27), ('LIGHTING', 0.32), ('SOLAR', 0.22), ('TOOLS', 0.35))
     AS r(product_line, rate) USING (product_line);
SELECT cost_per_point, benefit_cost_per_account_month, default_margin_rate
FROM loyalty.set_roi_economics(:'program', cost_per_point => 0.005, benefit_cost_per_account_month => 15,
                               default_margin_rate => 0.2);

-- 3. The simulated effect: pilot customers' FY2026 invoice lines carry 15%
-- more quantity.  One UPDATE of the ERP table; the trigger re-accrues.
CREATE TEMP TABLE pilot AS
SELECT a.account_key::int AS customer_id
FROM loyalty.account a JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' AND a.cohort = 'pilot';
UPDATE erp.invoice_line l
SET quantity = round(l.quantity * 1.15, 3),
    amount = round(round(l.quantity * 1.15, 3) * l.unit_price * (1 - l.discount), 2)
FROM erp.invoice i
WHERE i.invoice_id = l.invoice_id AND i.doc_type = 'INV' AND i.invoice_date >= '2025-11-01'
  AND i.customer_id IN (SELECT customer_id FROM pilot);
\echo 'Simulated effect: the pilot''s FY2026 invoice lines carry 15% more quantity.'

-- 4. The report.
CREATE TEMP TABLE report AS
SELECT * FROM loyalty.roi(:'program', pre => daterange('2024-11-01', '2025-11-01'),
                          post => daterange('2025-11-01', '2026-11-01'));

\echo
\echo 'ROI report, fiscal 2026 (post) against fiscal 2025 (pre):'
SELECT measure, value FROM report r, LATERAL (VALUES
    (1, 'Measured on', r.measured_on),
    (2, 'Accounts: pilot / control', format('%s / %s', r.pilot_accounts, r.control_accounts)),
    (3, 'Margin change per account: pilot / control',
        format('%s / %s EUR', to_char(r.pilot_mean_change, 'FM999G999G990D00'), to_char(r.control_mean_change, 'FM999G999G990D00'))),
    (4, 'Incremental margin per pilot account (95% CI)',
        format('%s EUR (%s to %s)', to_char(r.uplift_per_account, 'FM999G999G990D00'),
               to_char(r.uplift_ci_low, 'FM999G999G990D00'), to_char(r.uplift_ci_high, 'FM999G999G990D00'))),
    (5, 'Incremental margin, all pilot accounts (95% CI)',
        format('%s EUR (%s to %s)', to_char(r.incremental_margin, 'FM999G999G990'),
               to_char(r.incremental_margin_ci_low, 'FM999G999G990'), to_char(r.incremental_margin_ci_high, 'FM999G999G990'))),
    (6, 'Program cost', format('%s EUR = points %s (%s points) + rebates %s + MDF %s + benefits %s',
        to_char(r.program_cost, 'FM999G999G990'), to_char(r.points_cost, 'FM999G999G990'),
        to_char(r.points_issued, 'FM999G999G999G990'), to_char(r.rebate_cost, 'FM999G990'),
        to_char(r.mdf_cost, 'FM999G990'), to_char(r.benefits_cost, 'FM999G999G990'))),
    (7, 'ROI = (incremental margin - cost) / cost (95% CI)',
        format('%s%% (%s%% to %s%%)', round(100 * r.roi, 1), round(100 * r.roi_ci_low, 1), round(100 * r.roi_ci_high, 1))),
    (8, 'Payback', coalesce(r.payback_months || ' months', 'never at this margin')),
    (9, 'Verdict', CASE WHEN r.roi_ci_low > 0 THEN 'the program pays: even the low end of the interval is a gain'
                        WHEN r.uplift_ci_low > 0 THEN 'the program lifts margin, but may not cover its cost'
                        WHEN r.uplift_ci_high < 0 THEN 'the pilot lost margin against control'
                        ELSE 'not proven yet: the interval holds both a loss and a gain (more accounts or a longer period)' END),
    (10, 'Parallel trends (placebo: FY2025 halves)',
        format('%s; placebo uplift %s EUR (%s to %s)', r.parallel_trends, r.placebo_uplift, r.placebo_ci_low, r.placebo_ci_high))
) AS m(n, measure, value)
ORDER BY n;

-- What was injected, in margin, for comparison: the extra 15% of the pilot's
-- FY2026 invoice lines at their rates, per pilot account.
SELECT to_char(sum(l.amount * (1 - 1 / 1.15) * coalesce(m.rate, 0.2)) / (SELECT count(*) FROM pilot), 'FM999G990D00')
       || ' EUR per pilot account (about: amounts were rounded)' AS injected_margin_uplift
FROM erp.invoice_line l JOIN erp.invoice i USING (invoice_id)
LEFT JOIN loyalty.margin_rate m ON m.product_line = l.product_line
WHERE i.doc_type = 'INV' AND i.invoice_date >= '2025-11-01' AND i.customer_id IN (SELECT customer_id FROM pilot);

\echo
\echo 'KPIs by cohort, the calendar quarters of fiscal 2026 (loyalty.kpi):'
SELECT k.quarter, k.cohort, sum(k.active_accounts) AS active,
       round(sum(k.retained_accounts)::numeric / nullif(sum(k.previously_active), 0), 3) AS account_retention,
       to_char(sum(k.revenue), 'FM999G999G990') AS revenue, to_char(sum(k.margin), 'FM999G999G990') AS margin,
       sum(k.expansion_accounts) AS expanding, sum(k.cross_sell_accounts) AS cross_sell,
       round(sum(k.points_redeemed) / nullif(sum(k.points_earned), 0), 3) AS utilisation
FROM loyalty.kpi k
WHERE k.program = :'program' AND k.quarter BETWEEN '2025-10-01' AND '2026-07-01' AND k.cohort <> 'none'
GROUP BY 1, 2 ORDER BY 1, 2;

\echo 'Training completion and advocacy by cohort (loyalty.kpi: approved awards, by the quarter the action took place):'
SELECT k.quarter, k.cohort, sum(k.active_accounts) AS active,
       sum(k.trainings_completed) AS trainings, sum(k.accounts_trained) AS accounts_trained,
       round(sum(k.trained_share * k.active_accounts) / nullif(sum(k.active_accounts), 0), 3) AS trained_share,
       sum(k.advocacy_actions) AS advocacy, sum(k.advocating_accounts) AS advocating_accounts,
       round(sum(k.advocacy_share * k.active_accounts) / nullif(sum(k.active_accounts), 0), 3) AS advocacy_share
FROM loyalty.kpi k
WHERE k.program = :'program'
GROUP BY 1, 2 HAVING sum(k.trainings_completed) > 0 OR sum(k.advocacy_actions) > 0 ORDER BY 1, 2;

\echo 'Churn risk today (loyalty.churn_risk), by cohort:'
SELECT a.cohort, c.risk, count(*) AS accounts
FROM loyalty.churn_risk c JOIN loyalty.account_status a ON a.program = c.program AND a.account_key = c.account_key
WHERE c.program = :'program'
GROUP BY 1, 2 ORDER BY 1, 2;

\echo 'Tier movements (loyalty.tier_movements):'
SELECT direction, coalesce(old_tier, '-') || ' -> ' || coalesce(new_tier, '-') AS movement, sum(movements) AS accounts
FROM loyalty.tier_movements WHERE program = :'program'
GROUP BY 1, 2 ORDER BY 1, 2;

-- 5. The picture: mean margin per account and month, pilot and control.
CREATE TEMP TABLE monthly AS
SELECT date_trunc('month', s.doc_date)::date AS month, a.cohort,
       sum(s.margin) / (SELECT count(*) FROM loyalty.account x WHERE x.program_id = a.program_id AND x.cohort = a.cohort) AS margin
FROM loyalty.sales(:'program') s
JOIN loyalty.account a ON a.program_id = (SELECT program_id FROM loyalty.program WHERE name = :'program')
                      AND a.account_key = s.account_key
WHERE a.cohort IS NOT NULL
GROUP BY 1, 2, a.program_id;

\pset format unaligned
\pset tuples_only on
\o :svg
WITH bounds AS (
    SELECT min(month) AS m0, max(month) AS m1, ceil(max(margin) / 100) * 100 AS top FROM monthly),
geo AS (  -- plot area: x 70..870, y 60..400
    SELECT m0, m1, top, (extract(year FROM age(m1, m0)) * 12 + extract(month FROM age(m1, m0)))::numeric AS span FROM bounds),
pt AS (
    SELECT m.cohort, m.month,
           round(70 + 800 * (extract(year FROM age(m.month, g.m0)) * 12 + extract(month FROM age(m.month, g.m0))) / g.span, 1) AS x,
           round(400 - 340 * m.margin / g.top, 1) AS y
    FROM monthly m, geo g),
start AS (
    SELECT round(70 + 800 * (extract(year FROM age('2025-11-01'::date, g.m0)) * 12
                             + extract(month FROM age('2025-11-01'::date, g.m0))) / g.span, 1) AS x FROM geo g)
SELECT concat_ws(E'\n',
  '<svg xmlns="http://www.w3.org/2000/svg" width="900" height="470" viewBox="0 0 900 470" font-family="sans-serif" font-size="12">',
  '<rect width="900" height="470" fill="white"/>',
  '<text x="450" y="28" text-anchor="middle" font-size="16">Distributor Club: mean margin per account and month, pilot vs control (EUR)</text>',
  -- horizontal grid and labels
  (SELECT string_agg(format('<line x1="70" y1="%s" x2="870" y2="%s" stroke="#ddd"/><text x="62" y="%s" text-anchor="end">%s</text>',
                            round(400 - 340 * k / 4.0, 1), round(400 - 340 * k / 4.0, 1), round(404 - 340 * k / 4.0, 1),
                            to_char(g.top * k / 4, 'FM999G990')), '')
   FROM geo g, generate_series(0, 4) k),
  -- month labels, every third month
  (SELECT string_agg(format('<text x="%s" y="420" text-anchor="middle">%s</text>', p.x, to_char(p.month, 'Mon YY')), '' ORDER BY p.month)
   FROM pt p WHERE p.cohort = 'pilot' AND extract(month FROM p.month)::int % 3 = 2),
  '<line x1="70" y1="400" x2="870" y2="400" stroke="#333"/><line x1="70" y1="60" x2="70" y2="400" stroke="#333"/>',
  -- the program start
  (SELECT format('<line x1="%s" y1="50" x2="%s" y2="400" stroke="#555" stroke-dasharray="6 4"/>'
                 '<text x="%s" y="48" text-anchor="start">program start (pilot), 1 Nov 2025</text>', x, x, x + 4) FROM start),
  (SELECT string_agg(format('<polyline fill="none" stroke="%s" stroke-width="2.5" points="%s"/>',
                            CASE c.cohort WHEN 'pilot' THEN '#1f77b4' ELSE '#ff7f0e' END,
                            (SELECT string_agg(p.x || ',' || p.y, ' ' ORDER BY p.month) FROM pt p WHERE p.cohort = c.cohort)), '')
   FROM (SELECT DISTINCT cohort FROM pt) c),
  '<rect x="640" y="440" width="14" height="4" fill="#1f77b4"/><text x="660" y="446">pilot</text>',
  '<rect x="720" y="440" width="14" height="4" fill="#ff7f0e"/><text x="740" y="446">control</text>',
  '</svg>')
FROM geo;
\o
\pset format aligned
\pset tuples_only off
\echo 'Picture: pilot vs control monthly margin written to' :'svg'
