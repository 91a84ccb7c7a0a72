-- The Distributor Club: a points program attached to the ERP's invoice
-- lines, running inside the ERP's own transactions.
--
--   1. create the program, its rule versions, enrol the customers;
--   2. attach it to erp.invoice_line, whose customer, date, currency,
--      document type and payment dates live on the header erp.invoice;
--   3. post two years of ERP documents (demo/load.sql): every INSERT of
--      lines and every UPDATE of a paid date accrues in the same statement;
--   4. show what came out: balances, tiers, how one line's points were
--      computed, the rows the program refused, an invoice posted and rolled
--      back inside one transaction, and verify().
--
-- Run by scripts/demo.sh after demo/generate.sql, instead of demo/load.sql.

\set QUIET on
\pset footer off
\pset numericlocale on
\set program 'Distributor Club'
\set ladder 'Member:0, Silver:50000, Gold:250000, Platinum:1000000'

\echo
\echo '================================================================================'
\echo ' A. The Distributor Club: program, rules, enrolment, attach'
\echo '================================================================================'
-- The first rule version comes with the program: 1 point per EUR from the
-- start of fiscal 2025.
SELECT loyalty.create_program(:'program',
           currency             => 'EUR',
           ladder               => :'ladder',
           points_per_unit      => 1,
           basis                => 'amount',
           rounding             => 'toward_zero',
           qualification_window => interval '12 months',
           enrollment           => 'explicit',
           strict               => false,      -- rows it cannot accrue go to loyalty.rejected_event
           starts_on            => date '2024-11-01') \g /dev/null

-- Fiscal 2026 pushes solar (x2) and lighting (x1.5), pays 10% more for
-- invoices paid on time, lets Gold and Platinum earn faster and
-- distributors 10% more, and caps an account at 5 million points a
-- quarter. Documents dated before 2025-11-01 keep earning by the first
-- version.
SELECT loyalty.add_rule(:'program', date '2025-11-01', 1,
           product_line_multipliers => '{"SOLAR": 2, "LIGHTING": 1.5}',
           tier_multipliers         => '{"Gold": 1.1, "Platinum": 1.25}',
           segment_multipliers      => '{"cooperation_model": {"distributor": 1.1}}',
           on_time_bonus_pct        => 10,
           cap_points               => 5000000,
           cap_period               => 'quarter') \g /dev/null

SELECT name, currency, ladder, basis, rounding, qualification_window, enrollment, strict
FROM loyalty.program
WHERE name = :'program';

\echo 'Rule versions:'
SELECT r.valid_from, r.points_per_unit, r.product_line_multipliers, r.tier_multipliers,
       r.segment_multipliers, r.on_time_bonus_pct, r.cap_points, r.cap_period
FROM loyalty.rule r JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program'
ORDER BY r.valid_from;

-- Every ERP customer, with its segment, earning from the program's start;
-- one in ten is held out as the control group for the ROI measurement (it
-- qualifies for tiers but earns no points).
SELECT count(*) AS accounts_enrolled
FROM (SELECT loyalty.enroll(:'program', c.customer_id::text,
                            cooperation_model => c.cooperation_model,
                            industry          => c.industry,
                            region            => c.region,
                            potential_spend   => c.potential_spend,
                            cohort            => CASE WHEN c.customer_id % 10 = 0 THEN 'control' ELSE 'pilot' END,
                            enrolled_from     => date '2024-11-01')
      FROM erp.customer c
      ORDER BY c.customer_id) e;

SELECT loyalty.attach('erp.invoice_line', :'program',
           key_column          => 'invoice_id, line_no',
           amount_column       => 'amount',
           product_line_column => 'product_line',
           header              => 'erp.invoice',
           line_header_column  => 'invoice_id',  -- the lines' column; the header's key is its primary key
           -- these live on the header:
           account_column      => 'customer_id',
           date_column         => 'invoice_date',
           currency_column     => 'currency',
           doc_type_column     => 'doc_type',
           credit_note_types   => '{CRN}',
           due_date_column     => 'due_date',
           paid_date_column    => 'paid_date') AS attached;

\echo 'Triggers now on the ERP''s tables:'
SELECT tgrelid::regclass AS erp_table, tgname AS trigger
FROM pg_trigger
WHERE NOT tgisinternal AND tgrelid IN ('erp.invoice'::regclass, 'erp.invoice_line'::regclass)
ORDER BY 1, 2;

-- ---------------------------------------------------------------------------
\ir load.sql
\set QUIET on

\echo
\echo '================================================================================'
\echo ' B. What the load accrued'
\echo '================================================================================'
\echo 'Folding: the triggers only append (ledger entries, balance deltas), so that'
\echo 'ERP transactions never wait for each other; loyalty.fold(), scheduled with'
\echo 'pg_cron every minute, folds the deltas into the stored balances, books the'
\echo 'caps and records tier upgrades. Balances read the same before and after.'
SELECT loyalty.fold(:'program') AS deltas_folded;
\echo 'Ledger entries by kind:'
SELECT l.kind, count(*) AS entries, sum(l.source_rows) AS erp_rows, sum(l.points) AS points,
       round(sum(l.qualifying), 2) AS qualifying_eur
FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program'
GROUP BY l.kind
ORDER BY l.kind;

\echo 'Top 10 balances:'
SELECT b.account_key                         AS customer,
       c.name,
       c.cooperation_model                   AS model,
       a.cohort,
       f.points,
       round(f.rolling_qualifying, 2)        AS rolling_qualifying_eur,
       f.tier
FROM (SELECT bt.account_key
      FROM loyalty.balance bt JOIN loyalty.program p USING (program_id)
      WHERE p.name = :'program'
      ORDER BY bt.points DESC, bt.account_key
      LIMIT 10) b
JOIN loyalty.account a ON a.account_key = b.account_key
                      AND a.program_id = (SELECT program_id FROM loyalty.program WHERE name = :'program')
JOIN erp.customer c ON c.customer_id::text = b.account_key
CROSS JOIN LATERAL loyalty.balance(:'program', b.account_key) f
ORDER BY f.points DESC, b.account_key;

\echo 'Accounts per tier (loyalty.account), by cohort:'
SELECT coalesce(a.tier, '(none)') AS tier,
       count(*) FILTER (WHERE a.cohort = 'pilot')   AS pilot,
       count(*) FILTER (WHERE a.cohort = 'control') AS control,
       count(*)                                     AS accounts
FROM loyalty.account a
JOIN loyalty.program p USING (program_id)
LEFT JOIN LATERAL loyalty.tiers(:'ladder') t ON t.name = a.tier
WHERE p.name = :'program'
GROUP BY a.tier, t.rank
ORDER BY t.rank NULLS FIRST;

\echo 'Tier changes recorded (loyalty.tier_history):'
SELECT h.reason, coalesce(h.old_tier, '(none)') || ' -> ' || coalesce(h.new_tier, '(none)') AS change,
       count(*) AS changes
FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program'
GROUP BY 1, 2
ORDER BY 1, 3 DESC;

\echo
\echo '================================================================================'
\echo ' C. How one line earned its points: loyalty.explain_points'
\echo '================================================================================'
-- A SOLAR line of a distributor in the pilot, on an EUR invoice of FY2026
-- that was paid on time: base rate, product line, segment, tier and bonus.
SELECT l.invoice_id AS ex_invoice, l.line_no AS ex_line
FROM erp.invoice i
JOIN erp.invoice_line l USING (invoice_id)
JOIN erp.customer c USING (customer_id)
WHERE i.doc_type = 'INV' AND i.currency = 'EUR' AND i.invoice_date >= date '2025-11-01'
  AND i.paid_date <= i.due_date AND l.product_line = 'SOLAR'
  AND c.cooperation_model = 'distributor' AND c.customer_id % 10 <> 0
ORDER BY i.invoice_id, l.line_no
LIMIT 1 \gset

SELECT i.document_no, i.customer_id::text AS customer, i.invoice_date, i.due_date, i.paid_date,
       l.line_no, l.product_line, l.quantity, l.unit_price, l.discount, l.amount
FROM erp.invoice i JOIN erp.invoice_line l USING (invoice_id)
WHERE l.invoice_id = :ex_invoice AND l.line_no = :ex_line;

\x on
SELECT * FROM loyalty.explain_points('erp.invoice_line', :'ex_invoice', :'ex_line');
\x off

\echo 'And a credit-note line, which takes back what it returns:'
SELECT l.invoice_id AS cn_invoice, l.line_no AS cn_line
FROM erp.invoice i
JOIN erp.invoice_line l USING (invoice_id)
WHERE i.doc_type = 'CRN' AND i.currency = 'EUR' AND i.invoice_date >= date '2025-11-01'
  AND i.customer_id % 10 <> 0
ORDER BY i.invoice_id, l.line_no
LIMIT 1 \gset

SELECT i.document_no, i.customer_id::text AS customer, i.invoice_date,
       r.document_no AS credits, l.line_no, l.product_line, l.quantity, l.amount
FROM erp.invoice i
JOIN erp.invoice r ON r.invoice_id = i.reference_invoice_id
JOIN erp.invoice_line l ON l.invoice_id = i.invoice_id
WHERE l.invoice_id = :cn_invoice AND l.line_no = :cn_line;

\x on
SELECT * FROM loyalty.explain_points('erp.invoice_line', :'cn_invoice', :'cn_line');
\x off

\echo
\echo '================================================================================'
\echo ' D. Rows the program refused (loyalty.rejected_event)'
\echo '================================================================================'
SELECT r.reason, count(*) AS rows, count(DISTINCT nullif(r.account_key, '')) AS accounts
FROM loyalty.rejected_event r JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program'
GROUP BY r.reason
ORDER BY rows DESC, r.reason;

\echo 'For comparison, the ERP''s invoice lines in a currency other than EUR:'
SELECT i.currency, count(*) AS lines
FROM erp.invoice i JOIN erp.invoice_line l USING (invoice_id)
WHERE i.currency <> 'EUR'
GROUP BY i.currency
ORDER BY i.currency;

\echo
\echo '================================================================================'
\echo ' E. One transaction: an invoice posted, then rolled back'
\echo '================================================================================'
-- The largest distributor in the pilot buys ten solar modules.
SELECT a.account_key AS live_account
FROM loyalty.balance a JOIN loyalty.program p USING (program_id)
JOIN erp.customer c ON c.customer_id::text = a.account_key
WHERE p.name = :'program' AND c.cooperation_model = 'distributor' AND c.customer_id % 10 <> 0
ORDER BY a.points DESC, a.account_key
LIMIT 1 \gset
SELECT product_id AS live_product, list_price AS live_price
FROM erp.product WHERE product_line = 'SOLAR' ORDER BY product_id LIMIT 1 \gset

SELECT points AS before_points FROM loyalty.balance(:'program', :'live_account') \gset
BEGIN;
INSERT INTO erp.invoice (invoice_id, document_no, customer_id, invoice_date, doc_type, currency, due_date)
VALUES (9000001, 'INV-2026-900001', :live_account, date '2026-10-30', 'INV', 'EUR', date '2026-12-29');
INSERT INTO erp.invoice_line (invoice_id, line_no, product_id, product_line, quantity, unit_price, discount, amount)
VALUES (9000001, 1, :live_product, 'SOLAR', 10, :live_price, 0, round(10 * :live_price, 2));
SELECT points AS inside_points FROM loyalty.balance(:'program', :'live_account') \gset
ROLLBACK;
SELECT points AS after_points FROM loyalty.balance(:'program', :'live_account') \gset

SELECT :'live_account' AS customer,
       round(10 * :live_price, 2)     AS invoice_eur,
       :before_points::bigint         AS points_before,
       :inside_points::bigint         AS points_inside_the_transaction,
       :after_points::bigint          AS points_after_rollback;

\echo
\echo '================================================================================'
\echo ' F. loyalty.verify: recompute everything from the ERP rows and the ledger'
\echo '================================================================================'
SELECT count(*) AS drift_rows, count(*) = 0 AS verify_clean
FROM loyalty.verify(:'program') \gset
SELECT :drift_rows::bigint AS drift_rows;
\if :verify_clean
\echo 'verify(''Distributor Club''): no drift, every balance matches the ERP rows and the ledger'
\else
\echo 'verify(''Distributor Club'') found drift:'
SELECT * FROM loyalty.verify(:'program') LIMIT 20;
\endif
