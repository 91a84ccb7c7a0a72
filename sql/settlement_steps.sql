--
-- settle() end to end with every step: tier re-qualification, the rebate
-- true-up, MDF at the tier's rate and point expiry, quarter after quarter,
-- on 400 accounts.  Every figure is recomputed here in plain SQL from the
-- ERP rows: the credit-note lines, the MDF wallets, the expired points.
--
\set VERBOSITY terse
SET datestyle = 'ISO, YMD';
SET client_min_messages = warning;

CREATE SCHEMA sst;
CREATE TABLE sst.invoice (id int PRIMARY KEY, customer text NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('steps_club', ladder => 'Member:0, Gold:100000000',
                              point_lifetime => '12 months', settlement_period => 'quarter') > 0 AS created;
SELECT loyalty.attach('sst.invoice', 'steps_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
-- seven quarters of invoices (2025-Q1 .. 2026-Q3), some credit notes
INSERT INTO sst.invoice
SELECT i, 'S' || (i % 400), date '2025-01-01' + ((i * 7919) % 638),
       CASE WHEN i % 23 = 0 THEN -(50 + i % 300) ELSE 20 + (i * 31) % 900 END
FROM generate_series(1, 12000) i;
SELECT loyalty.fold('steps_club') >= 0 AS folded;
SELECT loyalty.set_benefit('steps_club', 'Member', 'mdf_rate', '0.01');
SELECT loyalty.create_rebate_agreement('steps_club', 'VOL', 'retro: 0:0%, 1000:2%, 5000:3%', cooperation_model => NULL,
                                       period => 'quarter', valid_from => '2025-01-01');

-- Every quarter, in order.
SELECT r.period_end, r.status, r.accounts FROM generate_series(date '2025-04-01', date '2026-10-01', interval '3 months') q,
     LATERAL loyalty.settle('steps_club', q::date - 1) r ORDER BY 1;
-- a second call of the last one is a no-op
SELECT (loyalty.settle('steps_club', '2026-09-30')).status AS again;

-- Rebates: the credit-note lines equal the schedule applied by hand to
-- each account's net purchases of each quarter (retro: the bracket reached
-- applies to the whole volume; a negative volume earns nothing).
WITH q AS (
    SELECT customer, date_trunc('quarter', invoice_date)::date AS quarter, sum(amount) AS volume
    FROM sst.invoice GROUP BY 1, 2),
expected AS (
    SELECT customer, quarter,
           round(CASE WHEN volume >= 5000 THEN volume * 0.03 WHEN volume >= 1000 THEN volume * 0.02 ELSE 0 END, 2) AS rebate
    FROM q),
lines AS (
    SELECT l.account_key, sum(l.amount) AS amount FROM loyalty.settlement_line l JOIN loyalty.program p USING (program_id)
    WHERE p.name = 'steps_club' GROUP BY 1)
SELECT count(*) AS accounts, count(*) FILTER (WHERE e.rebate IS DISTINCT FROM coalesce(l.amount, 0)) AS differing,
       sum(e.rebate) > 0 AS some_rebate
FROM (SELECT customer, sum(rebate) AS rebate FROM expected GROUP BY 1) e
LEFT JOIN lines l ON l.account_key = e.customer;

-- MDF: 1 % of each quarter's net purchases (nothing for a negative one).
WITH q AS (
    SELECT customer, date_trunc('quarter', invoice_date)::date AS quarter, sum(amount) AS volume
    FROM sst.invoice GROUP BY 1, 2),
expected AS (SELECT customer, sum(round(greatest(volume, 0) * 0.01, 2)) AS mdf FROM q GROUP BY 1)
SELECT count(*) AS accounts, count(*) FILTER (WHERE e.mdf IS DISTINCT FROM b.mdf) AS differing
FROM expected e JOIN loyalty.balance b ON b.account_key = e.customer
JOIN loyalty.program p ON p.program_id = b.program_id AND p.name = 'steps_club';

-- Expiry: a 12-month lifetime, month-granular; at the last cutoff
-- (2026-10-01) the points of documents dated before 2025-10-01 are gone,
-- oldest first, nothing having been spent.  A month's points are its
-- documents' points (credit notes included); a month that nets negative
-- takes back the newest points before it, so what is left of the old points
-- is the smallest running total from the last old month on.
WITH m AS (
    SELECT customer, date_trunc('month', invoice_date)::date AS month, sum(trunc(amount)) AS points
    FROM sst.invoice GROUP BY 1, 2),
c AS (SELECT customer, month, sum(points) OVER (PARTITION BY customer ORDER BY month) AS running FROM m),
old AS (
    SELECT customer,
           greatest(0, least(sum(points) FILTER (WHERE month < '2025-10-01'),
                             (SELECT min(c.running) FROM c WHERE c.customer = m.customer AND c.month >= '2025-10-01'))) AS old
    FROM m GROUP BY 1),
expired AS (
    SELECT l.account_key, -sum(l.points) AS expired FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
    WHERE p.name = 'steps_club' AND l.kind = 'expire' GROUP BY 1)
SELECT count(*) AS accounts, count(*) FILTER (WHERE coalesce(o.old, 0) IS DISTINCT FROM coalesce(x.expired, 0)) AS differing,
       sum(x.expired) > 0 AS some_expired
FROM old o LEFT JOIN expired x ON x.account_key = o.customer;
SELECT count(*) AS negative_balances FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = 'steps_club' AND b.points < 0;

-- The runs, once each, with what each step did.
SELECT count(*) AS runs, sum(rebate_total) > 0 AS rebates, sum(mdf_total) > 0 AS mdf, sum(points_expired) > 0 AS expiry
FROM loyalty.settlement_run r JOIN loyalty.program p USING (program_id) WHERE p.name = 'steps_club';
SELECT * FROM loyalty.verify('steps_club');
