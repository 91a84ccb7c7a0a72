-- Point expiry and volume rebates on the demo data: what settlement does
-- at a quarter end, shown step by step on the Distributor Club.
--
--   1. points get an 18-month lifetime; what expires soon, per cutoff;
--      the expiry of the quarter ending 2026-09-30 (the oldest points are
--      spent first: only what nobody spent expires);
--   2. two rebate agreements: every DACH distributor (quarterly, retro
--      brackets) and the biggest customer alone (monthly, marginal);
--      estimates while the quarter runs, the true-up at its end, the
--      settlement lines the ERP turns into credit notes;
--   3. a credit note dated in the settled quarter arrives late: the next
--      settlement posts an adjustment line with a new document key.
--
-- Run after demo/accrual.sql (the program, its attachment and two years of
-- documents).  Settlement calls loyalty._settle_expiry and
-- loyalty._settle_rebates inside loyalty.settle(); here they are called
-- directly, as the superuser, for one quarter.

\set QUIET on
\pset footer off
\pset numericlocale on
\set program 'Distributor Club'
SELECT program_id AS pid FROM loyalty.program WHERE name = :'program' \gset

\echo
\echo '================================================================================'
\echo ' W1. Point expiry: an 18-month lifetime, the oldest points spent first'
\echo '================================================================================'
-- The lifetime is a column of the program (loyalty.create_program's
-- point_lifetime); the demo program was created without one.
UPDATE loyalty.program SET point_lifetime = interval '18 months' WHERE name = :'program';
\echo 'The points of a month expire at the first quarter end at which the whole'
\echo 'month is older than 18 months: at 2026-10-01, the months before April 2025.'
\echo
\echo 'Expiring in the 90 days after 2026-08-15, per cutoff (the five largest):'
SELECT e.account_key, c.name AS customer, e.cutoff, e.points AS expiring, b.points AS balance
FROM loyalty.expiring_points(:'program', as_of => '2026-08-15') e
JOIN erp.customer c ON c.customer_id::text = e.account_key
JOIN loyalty.balance b ON b.program_id = :pid AND b.account_key = e.account_key
ORDER BY e.points DESC, 1 LIMIT 5;

-- a few accounts spend some of their points first (a redemption locks the
-- account, then reads its balance): they spend their oldest points
CREATE TEMP TABLE spent AS
SELECT b.account_key, loyalty._lock_for_debit(:pid, b.account_key) AS debit_no
FROM loyalty.balance b WHERE b.program_id = :pid AND b.points > 1 AND b.account_key::int % 7 = 0;
SELECT count(loyalty._post(:pid, s.account_key, 'redeem', -(b.points / 2), 'demo: voucher')) AS redemptions,
       sum(b.points / 2) AS points_spent
FROM spent s JOIN loyalty.balance b ON b.program_id = :pid AND b.account_key = s.account_key \gset
\echo
\echo 'Redeemed first:' :redemptions 'accounts spent' :points_spent 'points (half their balance).'

CREATE TEMP TABLE before AS SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid;
SELECT loyalty._settle_expiry(:pid, '2026-07-01', '2026-10-01') AS expired \gset
\echo 'The expiry of the quarter ending 2026-09-30 expired' :expired 'points:'
SELECT count(*) AS accounts, sum(-l.points) AS points_expired,
       sum(-l.points) FILTER (WHERE l.account_key IN (SELECT account_key FROM spent)) AS of_which_from_redeemers
FROM loyalty.ledger l WHERE l.program_id = :pid AND l.kind = 'expire';
\echo 'Five accounts before and after (a redeemer spent its old points; nothing is'
\echo 'taken twice):'
SELECT b.account_key, x.points AS before, -l.points AS expired, b.points AS after,
       s.account_key IS NOT NULL AS redeemed
FROM loyalty.balance b JOIN before x USING (account_key)
JOIN loyalty.ledger l ON l.program_id = b.program_id AND l.account_key = b.account_key AND l.kind = 'expire'
LEFT JOIN spent s ON s.account_key = b.account_key
WHERE b.program_id = :pid
ORDER BY s.account_key IS NULL, -l.points DESC LIMIT 5;
SELECT loyalty._settle_expiry(:pid, '2026-07-01', '2026-10-01') AS expired_again_posts_nothing;

\echo
\echo '================================================================================'
\echo ' W2. Volume rebates: estimates while the quarter runs, true-up at its end'
\echo '================================================================================'
SELECT c.customer_id::text AS big_customer
FROM erp.customer c JOIN loyalty.balance b ON b.program_id = :pid AND b.account_key = c.customer_id::text
ORDER BY b.qualifying DESC LIMIT 1 \gset
SELECT loyalty.create_rebate_agreement(:'program', 'DACH_DIST', 'retro: 0:0%, 20000:1%, 60000:2%, 150000:3%',
                                       cooperation_model => 'distributor', region => 'DACH',
                                       valid_from => '2026-01-01') \g /dev/null
SELECT loyalty.create_rebate_agreement(:'program', 'KEY_ACCOUNT', 'marginal: 0:0.5%, 100000:1.5%',
                                       account_key => :'big_customer', period => 'month',
                                       valid_from => '2026-01-01') \g /dev/null
SELECT agreement_id, coalesce(account_key, cooperation_model || ' / ' || region) AS covers, schedule, period, valid_from
FROM loyalty.rebate_agreement WHERE program_id = :pid ORDER BY 1;

SELECT loyalty.accrue_rebates(:'program', '2026-07-15') AS estimated \gset
\echo 'Estimates posted as of 2026-07-15 (the rebate on the volume so far, every'
\echo 'period of 2026 not settled yet):' :estimated 'EUR'
SELECT loyalty.accrue_rebates(:'program', '2026-08-20') AS estimated \gset
\echo 'and as of 2026-08-20, only the difference:' :estimated 'EUR'

SELECT loyalty._settle_rebates(:pid, '2026-07-01', '2026-10-01') AS trued_up \gset
\echo 'Settlement at 2026-10-01 (every period ending by then): true-ups of' :trued_up 'EUR in total'
\echo '(September was not estimated yet).'
\echo 'The third quarter''s lines, largest first (the ERP issues credit_note per document_key):'
SELECT s.document_key, s.volume, s.final, s.accrued, s.amount AS trued_up, s.credit_note, s.currency
FROM loyalty.settlement_line s
WHERE s.program_id = :pid AND s.period_end IN ('2026-10-01', '2026-08-01', '2026-09-01')
ORDER BY s.final DESC LIMIT 6;
SELECT count(*) AS lines, sum(credit_note) AS credit_notes, sum(amount) AS trued_up
FROM loyalty.settlement_line WHERE program_id = :pid;

\echo
\echo '================================================================================'
\echo ' W3. A late credit note for the settled quarter: an adjustment line'
\echo '================================================================================'
SELECT s.account_key AS late_customer, s.final AS final_before
FROM loyalty.settlement_line s
WHERE s.program_id = :pid AND s.agreement_id = 'DACH_DIST' AND s.period_end = '2026-10-01'
ORDER BY s.final DESC LIMIT 1 \gset
BEGIN;
INSERT INTO erp.invoice (invoice_id, document_no, customer_id, invoice_date, doc_type, reference_invoice_id, currency, due_date)
SELECT 9000001, 'CRN-2026-LATE01', i.customer_id, '2026-09-28', 'CRN', i.invoice_id, 'EUR', '2026-09-28'
FROM erp.invoice i
WHERE i.customer_id = :'late_customer'::int AND i.doc_type = 'INV' AND i.invoice_date < '2026-09-28'
ORDER BY i.invoice_date DESC LIMIT 1;
INSERT INTO erp.invoice_line (invoice_id, line_no, product_id, product_line, quantity, unit_price, discount, amount)
SELECT 9000001, 1, p.product_id, p.product_line, -1, 25000, 0, -25000 FROM erp.product p ORDER BY p.product_id LIMIT 1;
COMMIT;
\echo 'A credit note of 25,000 EUR dated 2026-09-28 for customer' :late_customer 'arrives in October.'
\echo 'The next settlement (2027-01-01) writes, besides the fourth quarter''s lines:'
SELECT loyalty._settle_rebates(:pid, '2026-10-01', '2027-01-01') AS trued_up \gset
SELECT s.document_key, s.volume, s.final, s.accrued, s.credit_note
FROM loyalty.settlement_line s
WHERE s.program_id = :pid AND s.adjustment_no > 0 ORDER BY 1;
\echo 'and nothing twice when it runs again:'
SELECT loyalty._settle_rebates(:pid, '2026-10-01', '2027-01-01') AS posted_again;
\echo
\echo 'verify() after expiry and rebates (empty: every point and every cent reconciles):'
SELECT * FROM loyalty.verify(:'program');
