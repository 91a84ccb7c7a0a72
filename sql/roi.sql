--
-- roi: loyalty.sales() (margin from the ERP rows, as the caller) and
-- loyalty.roi(program, pre, post): difference in differences of margin per
-- account, program cost, ROI with its interval, payback, placebo.  A
-- simulation injects a known uplift into the pilot; a second one injects
-- none.  Every figure is checked against plain SQL over the ERP table and
-- the ledger.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA roi_t;
CREATE TABLE roi_t.invoice (invoice_id bigint PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL,
                            product_line text NOT NULL, doc_type text NOT NULL DEFAULT 'INV',
                            amount numeric(12,2) NOT NULL);
CREATE TABLE roi_t.invoice_null (LIKE roi_t.invoice INCLUDING ALL);

-- One invoice per account and month: a base per account (200 to 1,200), a
-- season, 10% growth in 2025 for everyone, noise of +-20%, the product line
-- from a hash; every 40th invoice is followed by a credit note for a tenth
-- of it (stored positive: the document type makes it negative).  In 2025
-- each pilot account of the first table also buys an extra 25.00 of SERVICE
-- a month: at SERVICE's margin rate of 0.5 that is 12 x 12.50 = 150.00 of
-- margin per pilot account, the injected uplift.
CREATE FUNCTION roi_t.u(k text) RETURNS numeric LANGUAGE sql IMMUTABLE
RETURN (hashtextextended(k, 2025) & 4294967295)::numeric / 4294967296;
CREATE FUNCTION roi_t.rows(y int, accounts int)
RETURNS TABLE (invoice_id bigint, customer_id int, invoice_date date, product_line text, doc_type text, amount numeric)
LANGUAGE sql AS $$
SELECT (y - 2000)::bigint * 100000000 + i * 1000 + m * 10 + c, i, make_date(y, m, 1 + (i % 27)),
       (ARRAY['TOOLS', 'CABLE', 'SERVICE'])[1 + floor(roi_t.u('pl' || i || ':' || m) * 3)::int],
       CASE c WHEN 0 THEN 'INV' ELSE 'CRN' END,
       round((200 + 1000 * roi_t.u('base' || i)) * (1 + 0.3 * sin(m)::numeric) * (1 + 0.1 * (y - 2024))
             * (0.8 + 0.4 * roi_t.u('n' || y || ':' || i || ':' || m)) * CASE c WHEN 0 THEN 1 ELSE 0.1 END, 2)
FROM generate_series(1, accounts) i, generate_series(1, 12) m, generate_series(0, 1) c
WHERE c = 0 OR (i * 12 + m) % 40 = 0
$$;

SELECT loyalty.create_program('roi', points_per_unit => 1, enrollment => 'explicit') > 0 AS created;
SELECT loyalty.create_program('roi_null', points_per_unit => 1, enrollment => 'explicit') > 0 AS created;
SELECT loyalty.attach('roi_t.invoice', 'roi', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', product_line_column => 'product_line',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}') > 0 AS attached;
SELECT loyalty.attach('roi_t.invoice_null', 'roi_null', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', product_line_column => 'product_line',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}') > 0 AS attached;
SELECT count(loyalty.enroll(p, i::text, cooperation_model => (ARRAY['direct', 'distributor', 'reseller'])[1 + i % 3],
                            enrolled_from => '2000-01-01'))
FROM generate_series(1, 1000) i, unnest(ARRAY['roi', 'roi_null']) p;

-- 2024: the pre-period.  Then the experiment is drawn (half pilot), then 2025.
INSERT INTO roi_t.invoice SELECT * FROM roi_t.rows(2024, 1000);
INSERT INTO roi_t.invoice_null SELECT * FROM roi_t.rows(2024, 1000);
SELECT sum(pilot) AS pilot, sum(control) AS control
FROM loyalty.assign_cohorts('roi', 0.5, 2025, pre => daterange('2024-01-01', '2025-01-01'));
SELECT sum(pilot) AS pilot, sum(control) AS control
FROM loyalty.assign_cohorts('roi_null', 0.5, 2025, pre => daterange('2024-01-01', '2025-01-01'));
CREATE TEMP TABLE cohort AS
SELECT p.name AS program, a.account_key::int AS customer_id, a.cohort = 'pilot' AS pilot
FROM loyalty.account a JOIN loyalty.program p USING (program_id) WHERE p.name IN ('roi', 'roi_null');
INSERT INTO roi_t.invoice SELECT * FROM roi_t.rows(2025, 1000);
INSERT INTO roi_t.invoice
SELECT 9000000000 + c.customer_id * 100 + m, c.customer_id, make_date(2025, m, 15), 'SERVICE', 'INV', 25.00
FROM cohort c, generate_series(1, 12) m WHERE c.program = 'roi' AND c.pilot;
INSERT INTO roi_t.invoice_null SELECT * FROM roi_t.rows(2025, 1000);

-- Costs: rebates and MDF posted to some pilot accounts (today: costs_until
-- below takes them in), a point costs 0.01, benefits 2.00 per pilot account
-- and month.
SELECT count(loyalty._post(p.program_id, c.customer_id::text, 'rebate', 0, 'Q4 rebate', rebate => 40))
     + count(loyalty._post(p.program_id, c.customer_id::text, 'mdf', 0, 'co-marketing', mdf => 25)) AS postings
FROM cohort c JOIN loyalty.program p ON p.name = c.program
WHERE c.program = 'roi' AND c.pilot AND c.customer_id % 10 = 0;
SELECT cost_per_point, benefit_cost_per_account_month FROM loyalty.set_roi_economics('roi', cost_per_point => 0.01, benefit_cost_per_account_month => 2);
SELECT cost_per_point FROM loyalty.set_roi_economics('roi_null', cost_per_point => 0.01);

--
-- 1. Revenue, until margin rates are set: the report says so.
--
SELECT measured_on, pilot_accounts, control_accounts, uplift_per_account
FROM loyalty.roi('roi', pre => daterange('2024-01-01', '2025-01-01'), post => daterange('2025-01-01', '2026-01-01'));
-- Rates for two lines of three: the rest counts as revenue, and the report
-- says how much.
SELECT loyalty.set_margin_rate('roi', 'TOOLS', 0.2), loyalty.set_margin_rate('roi', 'SERVICE', 0.5);
SELECT measured_on FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'));
-- CABLE's rate; and the same rates for the null program.
SELECT loyalty.set_margin_rate('roi', 'CABLE', 0.1);
SELECT count(loyalty.set_margin_rate('roi_null', product_line, rate))
FROM loyalty.margin_rate m JOIN loyalty.program p USING (program_id) WHERE p.name = 'roi';

--
-- 2. The report, with the rebates posted today counted (costs_until).
--
SELECT (r).* FROM (SELECT loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'),
                                      costs_until => current_date + 1) AS r) x \gx

-- The same in plain SQL: margin per account and period from the ERP rows
-- (credit notes negative, the line's rate), pre scaled to post's length
-- (365 / 366 days), the four means, Welch's standard error.
CREATE TEMP TABLE expect AS
WITH m AS (
    SELECT c.customer_id, c.pilot,
           coalesce(sum(i.amount * CASE WHEN i.doc_type = 'CRN' THEN -1 ELSE 1 END
                        * CASE i.product_line WHEN 'TOOLS' THEN 0.2 WHEN 'SERVICE' THEN 0.5 ELSE 0.1 END)
                    FILTER (WHERE i.invoice_date < '2025-01-01'), 0) * 365 / 366 AS pre,
           coalesce(sum(i.amount * CASE WHEN i.doc_type = 'CRN' THEN -1 ELSE 1 END
                        * CASE i.product_line WHEN 'TOOLS' THEN 0.2 WHEN 'SERVICE' THEN 0.5 ELSE 0.1 END)
                    FILTER (WHERE i.invoice_date >= '2025-01-01'), 0) AS post
    FROM cohort c LEFT JOIN roi_t.invoice i USING (customer_id)
    WHERE c.program = 'roi' GROUP BY 1, 2),
g AS (SELECT pilot, avg(post - pre) AS change, var_samp(post - pre) / count(*) AS v, count(*) AS n FROM m GROUP BY 1)
SELECT (SELECT change FROM g WHERE pilot) - (SELECT change FROM g WHERE NOT pilot) AS uplift,
       (SELECT sqrt(sum(v)) FROM g) AS se,
       (SELECT n FROM g WHERE pilot) AS pilot_n,
       -- points: 1 per currency unit, toward zero per row, credit notes reversing
       (SELECT sum(trunc(i.amount) * CASE WHEN i.doc_type = 'CRN' THEN -1 ELSE 1 END)
        FROM roi_t.invoice i JOIN cohort c USING (customer_id)
        WHERE c.program = 'roi' AND c.pilot AND i.invoice_date >= '2025-01-01') AS points,
       (SELECT count(*) * 40 FROM cohort c WHERE c.program = 'roi' AND c.pilot AND c.customer_id % 10 = 0) AS rebate,
       (SELECT count(*) * 25 FROM cohort c WHERE c.program = 'roi' AND c.pilot AND c.customer_id % 10 = 0) AS mdf;
SELECT round(uplift, 2) AS uplift, round(se, 2) AS se, points, rebate, mdf,
       round(points * 0.01 + rebate + mdf + 2 * pilot_n * 365 / (365.25 / 12), 2) AS program_cost,
       round((uplift * pilot_n - (points * 0.01 + rebate + mdf + 2 * pilot_n * 365 / (365.25 / 12)))
             / (points * 0.01 + rebate + mdf + 2 * pilot_n * 365 / (365.25 / 12)), 4) AS roi
FROM expect;
SELECT r.uplift_per_account = round(e.uplift, 2) AS uplift_ok, r.std_error = round(e.se, 2) AS se_ok,
       r.points_issued = e.points AS points_ok, r.rebate_cost = e.rebate AND r.mdf_cost = e.mdf AS money_ok,
       r.program_cost = round(e.points * 0.01 + e.rebate + e.mdf + 2 * e.pilot_n * 365 / (365.25 / 12), 2) AS cost_ok,
       r.incremental_margin = round(e.uplift * e.pilot_n, 2) AS incremental_ok,
       r.uplift_ci_low < 150 AND 150 < r.uplift_ci_high AS injected_150_inside,
       r.roi_ci_low <= r.roi AND r.roi <= r.roi_ci_high AS roi_inside_its_interval,
       r.payback_months = round(r.program_cost / (r.incremental_margin / (365 / (365.25 / 12))), 1) AS payback_ok
FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'),
                 costs_until => current_date + 1) r, expect e;
-- Without costs_until, the rebates and MDF posted today fall after post.
SELECT rebate_cost, mdf_cost
FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'));
-- benefit_cost given for the period replaces the monthly rate.
SELECT benefits_cost
FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'), benefit_cost => 1000);

--
-- 3. The null simulation: the same data without the injection.  The
-- uplift's interval holds 0, and so does the placebo's (2024's halves).
--
SELECT measured_on, uplift_per_account, uplift_ci_low <= 0 AND 0 <= uplift_ci_high AS covers_zero,
       placebo_ci_low <= 0 AND 0 <= placebo_ci_high AS placebo_covers_zero, parallel_trends,
       roi < 0 AS loses_money
FROM loyalty.roi('roi_null', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'));

--
-- 4. sales(): the ERP rows as the report reads them, against plain SQL.
--
SELECT sum(revenue) = (SELECT sum(CASE WHEN doc_type = 'CRN' THEN -amount ELSE amount END) FROM roi_t.invoice) AS revenue_ok,
       sum(source_rows) = (SELECT count(*) FROM roi_t.invoice) AS rows_ok, sum(unrated_revenue) AS unrated
FROM loyalty.sales('roi');
SELECT product_line, sum(revenue) AS revenue, sum(margin) AS margin
FROM loyalty.sales('roi', daterange('2025-12-01', '2026-01-01')) GROUP BY 1 ORDER BY 1;
SELECT product_line, sum(CASE WHEN doc_type = 'CRN' THEN -amount ELSE amount END) AS revenue
FROM roi_t.invoice WHERE invoice_date >= '2025-12-01' AND invoice_date < '2026-01-01' GROUP BY 1 ORDER BY 1;

--
-- 5. Errors.
--
SELECT * FROM loyalty.roi('roi', NULL, daterange('2025-01-01', '2026-01-01'));
SELECT * FROM loyalty.roi('roi', daterange('2024-01-01', NULL), daterange('2025-01-01', '2026-01-01'));
SELECT * FROM loyalty.roi('roi', daterange('2024-01-01', '2025-02-01'), daterange('2025-01-01', '2026-01-01'));
SELECT * FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'), benefit_cost => -1);
SELECT * FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'), costs_until => '2024-06-01');
SELECT loyalty.set_margin_rate('roi', 'TOOLS', 25);
SELECT loyalty.set_margin_rate('roi', NULL, 0.2);
SELECT loyalty.set_roi_economics('roi', cost_per_point => -0.01);
SELECT loyalty.set_roi_economics('roi', default_margin_rate => 2);

--
-- 6. As the caller.  The ERP rows are read with the caller's rights: a
-- reader who may not read the invoices gets no report, whatever the
-- extension owner may read.  Setting economics is for admins.
--
CREATE ROLE roi_reader IN ROLE loyalty_reader;
GRANT USAGE ON SCHEMA roi_t TO roi_reader;
SET ROLE roi_reader;
SELECT uplift_per_account FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'));
SELECT loyalty.set_margin_rate('roi', 'TOOLS', 0.3);
RESET ROLE;
GRANT SELECT ON roi_t.invoice TO roi_reader;
SET ROLE roi_reader;
SELECT uplift_per_account FROM loyalty.roi('roi', daterange('2024-01-01', '2025-01-01'), daterange('2025-01-01', '2026-01-01'));
RESET ROLE;

SELECT * FROM loyalty.verify('roi');
SELECT * FROM loyalty.verify('roi_null');
REVOKE ALL ON SCHEMA roi_t FROM roi_reader;
REVOKE ALL ON roi_t.invoice FROM roi_reader;
DROP ROLE roi_reader;
