--
-- benefits: what each tier unlocks, as typed named entitlements, read by
-- the ERP with one join (loyalty.account_benefits) and per account with
-- loyalty.benefits(program, account).
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;

CREATE SCHEMA bn;
CREATE TABLE bn.invoice (id int PRIMARY KEY, customer int NOT NULL, inv_date date NOT NULL, amount numeric NOT NULL);
CREATE TABLE bn.sales_order (order_id int PRIMARY KEY, customer int NOT NULL);
SELECT loyalty.create_program('bn_club', ladder => 'Silver:1000, Gold:5000', qualification_window => '3 months') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'bn_club' \gset
SELECT loyalty.attach('bn.invoice', 'bn_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;

SELECT loyalty.set_benefit('bn_club', 'Silver', 'payment_terms_days', '30');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'payment_terms_days', '60');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'support_sla_hours', '4');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'priority_shipping', 'true');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'mdf_rate', '0.02');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'training_seats', '5');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'lounge', '"airport lounge access"');
-- typed by name
SELECT loyalty.set_benefit('bn_club', 'Gold', 'payment_terms_days', '45.5');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'mdf_rate', '2');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'priority_shipping', '"yes"');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'Bad Name', '1');
SELECT loyalty.set_benefit('bn_club', 'Gold', 'nested', '{"a": 1}');
SELECT loyalty.set_benefit('bn_club', NULL, 'mdf_rate', '0.1');
-- NULL removes one
SELECT loyalty.set_benefit('bn_club', 'Silver', 'early_access', 'true');
SELECT loyalty.set_benefit('bn_club', 'Silver', 'early_access', NULL);
SELECT tier, benefit, value FROM loyalty.tier_benefit WHERE program_id = :pid ORDER BY 1, 2;

-- 1000 customers: every tenth Gold, every tenth + 1 Silver.
INSERT INTO bn.invoice SELECT g, g, '2025-02-01', CASE g % 10 WHEN 0 THEN 6000 WHEN 1 THEN 1500 ELSE 10 END
FROM generate_series(1, 1000) g;
INSERT INTO bn.sales_order SELECT g, g FROM generate_series(1, 1000) g;
SELECT (loyalty.settle('bn_club', '2025-03-31')).tiers_up;

-- The ERP's order entry: payment terms in one join.
SELECT coalesce(b.payment_terms_days, 14) AS terms, count(*) AS orders
FROM bn.sales_order o
LEFT JOIN loyalty.account_benefits b ON b.program = 'bn_club' AND b.account_key = o.customer::text
GROUP BY 1 ORDER BY 1;
-- ... as expected from the invoices
SELECT count(*) FILTER (WHERE amount >= 5000) AS gold, count(*) FILTER (WHERE amount >= 1000 AND amount < 5000) AS silver
FROM bn.invoice;
SELECT account_key, tier, payment_terms_days, support_sla_hours, priority_shipping, mdf_rate, early_access,
       dedicated_account_manager, benefits
FROM loyalty.account_benefits WHERE program = 'bn_club' AND account_key IN ('10', '11', '12') ORDER BY 1;

SELECT * FROM loyalty.benefits('bn_club', '10');
SELECT * FROM loyalty.benefits('bn_club', '12');
SELECT * FROM loyalty.benefits('bn_club', 'nobody');

-- A benefit on a date (what the MDF work reads): by the tier of that day.
SELECT loyalty._benefit(:pid, '10', 'mdf_rate', '2025-03-31') AS before_gold,
       loyalty._benefit(:pid, '10', 'mdf_rate', current_date + 1)::numeric AS from_gold;

-- Who may: admins set, every loyalty role reads.
CREATE ROLE bn_operator IN ROLE loyalty_operator;
CREATE ROLE bn_reader IN ROLE loyalty_reader;
SET ROLE bn_operator;
SELECT loyalty.set_benefit('bn_club', 'Gold', 'payment_terms_days', '90');
INSERT INTO loyalty.tier_benefit VALUES (:pid, 'Gold', 'payment_terms_days', '90');
SET ROLE bn_reader;
SELECT count(*) AS rows FROM loyalty.benefits('bn_club', '10');
SELECT count(*) AS gold FROM loyalty.account_benefits WHERE program = 'bn_club' AND tier = 'Gold';
SELECT loyalty._benefit(:pid, '10', 'mdf_rate', current_date);
RESET ROLE;
DROP ROLE bn_operator, bn_reader;

SELECT * FROM loyalty.verify('bn_club');
