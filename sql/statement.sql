--
-- statement: the partner statement (QBR) of an account for a settled
-- period, as (section, item, value) rows.  Expected figures from the
-- invoices in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;

CREATE SCHEMA stm;
CREATE TABLE stm.invoice (id int PRIMARY KEY, customer text NOT NULL, inv_date date NOT NULL, amount numeric NOT NULL);
CREATE TABLE stm.service (id int PRIMARY KEY, customer text NOT NULL, svc_date date NOT NULL, fee numeric NOT NULL);
SELECT loyalty.create_program('stm_club', ladder => 'Silver:1000, Gold:5000, Platinum:20000',
                              qualification_window => '3 months') > 0 AS created;
SELECT loyalty.attach('stm.invoice', 'stm_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;
SELECT loyalty.attach('stm.service', 'stm_club', account_column => 'customer', amount_column => 'fee',
                      date_column => 'svc_date') > 0 AS attached;
SELECT loyalty.set_benefit('stm_club', 'Silver', 'payment_terms_days', '30');
SELECT loyalty.set_benefit('stm_club', 'Gold', 'payment_terms_days', '60');
SELECT loyalty.set_benefit('stm_club', 'Gold', 'priority_shipping', 'true');
SELECT loyalty.set_benefit('stm_club', 'Platinum', 'payment_terms_days', '90');
SELECT loyalty.set_benefit('stm_club', 'Platinum', 'priority_shipping', 'true');
SELECT loyalty.set_benefit('stm_club', 'Platinum', 'dedicated_account_manager', 'true');
INSERT INTO stm.invoice VALUES (1, 'A', '2025-01-15', 4000), (2, 'A', '2025-02-15', 2000), (3, 'A', '2024-12-20', 500);
INSERT INTO stm.service VALUES (1, 'A', '2025-03-01', 300);
SELECT (loyalty.settle('stm_club', '2024-12-31')).accounts, (loyalty.settle('stm_club', '2025-03-31')).tiers_up;

-- (since: the day after the settlement ran, i.e. tomorrow)
SELECT section, item, CASE item WHEN 'since' THEN 'tomorrow: ' || (value::date = current_date + 1) ELSE value END AS value
FROM loyalty.statement('stm_club', 'A', '2025-03-31');
-- by source, as the invoices say
SELECT 'stm.invoice' AS source, sum(amount)::bigint AS points FROM stm.invoice WHERE inv_date BETWEEN '2025-01-01' AND '2025-03-31'
UNION ALL SELECT 'stm.service', sum(fee)::bigint FROM stm.service WHERE svc_date BETWEEN '2025-01-01' AND '2025-03-31';
-- A period not settled yet shows the tier of its last day: Gold from the
-- day after the settlement on (the quarter holding tomorrow), with what
-- is missing to Platinum.
SELECT section, item, value FROM loyalty.statement('stm_club', 'A',
    (date_trunc('quarter', current_date + 1) + interval '3 months' - interval '1 day')::date)
WHERE section IN ('tier', 'progress') AND item <> 'since' ORDER BY 1, 2;

SELECT * FROM loyalty.statement('stm_club', 'A', '2025-03-30');
SELECT * FROM loyalty.statement('stm_club', NULL, '2025-03-31');
SELECT count(*) AS rows FROM loyalty.statement('stm_club', 'nobody', '2025-03-31');

CREATE ROLE stm_reader IN ROLE loyalty_reader;
SET ROLE stm_reader;
SELECT count(*) > 10 AS reader_reads FROM loyalty.statement('stm_club', 'A', '2025-03-31');
RESET ROLE;
DROP ROLE stm_reader;

SELECT * FROM loyalty.verify('stm_club');
