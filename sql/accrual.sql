--
-- accrual: what an ERP statement on an attached table earns.  The trigger
-- computes every row's points by the rule version in force on the row's
-- date, sums them per account and posts one ledger entry per account per
-- statement, in the ERP's own transaction.
--
-- Errors show their DETAIL and HINT; CONTEXT lines (PL/pgSQL line numbers)
-- are left out so that the output does not change with the function bodies.
-- Dates near today are only compared with current_date, never printed.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE SCHEMA acc;
-- The ledger of a program, without ids and timestamps.
CREATE VIEW acc.ledger AS
-- entry_no: the account's entries in posting order (the ledger numbers
-- them within each transaction)
SELECT p.name AS program, l.account_key,
       pg_catalog.row_number() OVER (PARTITION BY l.program_id, l.account_key ORDER BY l.posted_xid, l.entry_no) AS entry_no,
       l.kind, l.points, l.qualifying, l.source_rows, l.reason
  FROM loyalty.ledger l JOIN loyalty.program p USING (program_id);

--
-- 1. One statement, several invoices, several accounts
--

CREATE TABLE acc.invoice (invoice_id int PRIMARY KEY, customer_id text NOT NULL,
                          amount numeric(12,2), invoice_date date, product_line text);
SELECT loyalty.create_program('accrual_basic') > 0 AS created;
SELECT loyalty.attach('acc.invoice', 'accrual_basic', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;

-- Five invoices of three customers in two months, in one INSERT.  One
-- point per euro, each row rounded toward zero on its own:
--   A: 100.99 -> 100, 50.50 -> 50, 10.00 -> 10 (March and April): 160
--   B: 200.00 -> 200
--   C: 0.99 -> 0 (a row too small for a point still qualifies)
INSERT INTO acc.invoice VALUES
    (1, 'A', 100.99, '2024-03-01', NULL), (2, 'A', 50.50, '2024-03-15', NULL),
    (3, 'B', 200.00, '2024-03-20', NULL), (4, 'A', 10.00, '2024-04-02', NULL),
    (5, 'C', 0.99, '2024-04-03', NULL);
-- One 'earn' entry per account, summing its rows (source_rows), whatever
-- the number of rows and months.
SELECT * FROM acc.ledger WHERE program = 'accrual_basic' ORDER BY account_key, entry_no;
-- Accounts are enrolled by their first invoice (automatic enrolment).
SELECT account_key, enrolled_by, enrolled_from, tier
  FROM loyalty.account JOIN loyalty.program USING (program_id) WHERE name = 'accrual_basic' ORDER BY 1;
-- The balance: points, lifetime qualifying spend (161.49 for A), and the
-- rolling qualifying spend of the tier window (these 2024 invoices are
-- outside it today).
SELECT k, b.* FROM unnest(ARRAY['A', 'B', 'C']) k, loyalty.balance('accrual_basic', k) b;

-- A second statement for A is a second entry.
INSERT INTO acc.invoice VALUES (6, 'A', 5.00, '2024-04-03', NULL);
SELECT * FROM acc.ledger WHERE program = 'accrual_basic' AND account_key = 'A' ORDER BY entry_no;

-- An INSERT of no rows posts nothing.
INSERT INTO acc.invoice SELECT * FROM acc.invoice WHERE false;
SELECT count(*) AS entries FROM acc.ledger WHERE program = 'accrual_basic';
SELECT count(*) AS drift FROM loyalty.verify('accrual_basic');

--
-- 2. Multipliers: product line and segment
--

-- More points on the lines the supplier wants to grow (SOLAR x2), fewer on
-- commodities (CABLE x0.5); distributors x1.1 and the North region x1.5.
-- Segment multipliers that apply multiply: a North distributor earns x1.65.
CREATE TABLE acc.sale (sale_id int PRIMARY KEY, customer_id text NOT NULL, amount numeric(12,2) NOT NULL,
                       sale_date date NOT NULL, product_line text);
SELECT loyalty.create_program('accrual_multipliers') > 0 AS created;
SELECT loyalty.add_rule('accrual_multipliers', '2024-01-01', 1,
                        product_line_multipliers => '{"SOLAR": 2, "CABLE": 0.5}',
                        segment_multipliers => '{"cooperation_model": {"distributor": 1.1}, "region": {"North": 1.5}}');
SELECT loyalty.attach('acc.sale', 'accrual_multipliers', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'sale_date',
                      product_line_column => 'product_line') > 0 AS attached;
SELECT loyalty.enroll('accrual_multipliers', 'DIST', cooperation_model => 'distributor', region => 'North');
SELECT loyalty.enroll('accrual_multipliers', 'RES', cooperation_model => 'reseller', region => 'South');

--   DIST SOLAR 100 -> 100 x 2 x 1.1 x 1.5 = 330
--   DIST CABLE 100 -> 100 x 0.5 x 1.65 = 82.5 -> 82
--   RES  SOLAR 100 -> 100 x 2 = 200 (no segment multiplier for resellers or the South)
--   RES  (no line) 100 -> 100
--   NEW  OTHER 33.33 -> 33 (an unlisted line counts x1; auto-enrolled, no segment)
INSERT INTO acc.sale VALUES
    (1, 'DIST', 100, '2024-05-01', 'SOLAR'), (2, 'DIST', 100, '2024-05-01', 'CABLE'),
    (3, 'RES', 100, '2024-05-01', 'SOLAR'), (4, 'RES', 100, '2024-05-01', NULL),
    (5, 'NEW', 33.33, '2024-05-01', 'OTHER');
-- explain_points shows each factor (1 where none applies).
SELECT s.sale_id, e.account_key, e.product_line, e.basis, e.points_per_unit,
       e.product_line_multiplier, e.segment_multiplier, e.raw_points, e.points
  FROM acc.sale s, loyalty.explain_points('acc.sale', s.sale_id::text) e ORDER BY s.sale_id;
-- DIST 330 + 82 = 412, RES 200 + 100 = 300, NEW 33.
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger
 WHERE program = 'accrual_multipliers' ORDER BY account_key, entry_no;

-- A segment changed later applies to later invoices.  What an earlier
-- invoice earned does not change: deleting sale 1 takes back exactly the
-- 330 points it earned, and verify agrees with the ledger throughout.
SELECT loyalty.enroll('accrual_multipliers', 'DIST', cooperation_model => 'direct');
SELECT count(*) AS drift FROM loyalty.verify('accrual_multipliers');
-- A SOLAR sale of 100 dated tomorrow earns by the new segment:
-- 100 x 2 x 1.5 (North only) = 300.
INSERT INTO acc.sale VALUES (6, 'DIST', 100, current_date + 1, 'SOLAR');
DELETE FROM acc.sale WHERE sale_id = 1;
-- 412 + 300 - 330 = 382
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger
 WHERE program = 'accrual_multipliers' AND account_key = 'DIST' ORDER BY entry_no;
SELECT points FROM loyalty.balance('accrual_multipliers', 'DIST');
SELECT count(*) AS drift FROM loyalty.verify('accrual_multipliers');

--
-- 3. Rounding: toward_zero, half_up, half_even, symmetric around zero
--

-- Three programs with a tenth of a point per euro read the same documents,
-- each with its own rounding.  A credit note stored as a negative amount
-- earns exactly the opposite of the same invoice: toward_zero drops the
-- fraction (-24.783 gives -24, not the floor -25), half_up rounds a half
-- away from zero, half_even to the even neighbour.
--   amount   raw    toward_zero  half_up  half_even
--    25.00   2.5         2         3        2
--    35.00   3.5         3         4        4
--    24.99   2.499       2         2        2
--    25.01   2.501       2         3        3
--   -25.00  -2.5        -2        -3       -2
--   -35.00  -3.5        -3        -4       -4
--    -5.00  -0.5         0        -1        0
--     5.00   0.5         0         1        0
--   247.83  24.783      24        25       25
--  -247.83 -24.783     -24       -25      -25
CREATE TABLE acc.doc (doc_id int PRIMARY KEY, customer_id text NOT NULL, amount numeric(12,2) NOT NULL,
                      doc_date date NOT NULL);
SELECT loyalty.create_program('accrual_toward_zero', points_per_unit => 0.1, rounding => 'toward_zero') > 0 AS created;
SELECT loyalty.create_program('accrual_half_up', points_per_unit => 0.1, rounding => 'half_up') > 0 AS created;
SELECT loyalty.create_program('accrual_half_even', points_per_unit => 0.1, rounding => 'half_even') > 0 AS created;
SELECT loyalty.attach('acc.doc', p, account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'doc_date') > 0 AS attached
  FROM unnest(ARRAY['accrual_toward_zero', 'accrual_half_up', 'accrual_half_even']) p;
INSERT INTO acc.doc VALUES
    (1, 'R', 25.00, '2024-05-01'), (2, 'R', 35.00, '2024-05-01'), (3, 'R', 24.99, '2024-05-01'),
    (4, 'R', 25.01, '2024-05-01'), (5, 'R', -25.00, '2024-05-01'), (6, 'R', -35.00, '2024-05-01'),
    (7, 'R', -5.00, '2024-05-01'), (8, 'R', 5.00, '2024-05-01'), (9, 'R', 247.83, '2024-05-01'),
    (10, 'R', -247.83, '2024-05-01');
SELECT d.doc_id, d.amount, max(e.raw_points) AS raw,
       max(e.points) FILTER (WHERE e.program = 'accrual_toward_zero') AS toward_zero,
       max(e.points) FILTER (WHERE e.program = 'accrual_half_up') AS half_up,
       max(e.points) FILTER (WHERE e.program = 'accrual_half_even') AS half_even
  FROM acc.doc d, loyalty.explain_points('acc.doc', d.doc_id::text) e
 GROUP BY d.doc_id, d.amount ORDER BY d.doc_id;
-- explain_points names each program's rounding.
SELECT program, rounding, raw_points, points FROM loyalty.explain_points('acc.doc', 10) ORDER BY program;
-- In one INSERT, so one entry per program: each invoice and its credit
-- note cancel out (25/-25, 35/-35, 5/-5, 247.83/-247.83), leaving 24.99 and 25.01:
--   toward_zero 2 + 2 = 4, half_up 2 + 3 = 5, half_even 2 + 3 = 5; qualifying 50.00.
SELECT program, kind, points, qualifying, source_rows FROM acc.ledger
 WHERE program IN ('accrual_toward_zero', 'accrual_half_up', 'accrual_half_even') ORDER BY program;
SELECT p, count(v.*) AS drift
  FROM unnest(ARRAY['accrual_toward_zero', 'accrual_half_up', 'accrual_half_even']) p
  LEFT JOIN LATERAL loyalty.verify(p) v ON true GROUP BY p ORDER BY p;

--
-- 4. A minimum amount: below it a row qualifies but earns no points
--

CREATE TABLE acc.small (id int PRIMARY KEY, customer_id text NOT NULL, amount numeric(12,2) NOT NULL,
                        doc_date date NOT NULL);
SELECT loyalty.create_program('accrual_minimum') > 0 AS created;
SELECT loyalty.add_rule('accrual_minimum', '2024-01-01', 1, min_amount => 50);
SELECT loyalty.attach('acc.small', 'accrual_minimum', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date') > 0 AS attached;
-- 49.99 is below 50: qualifying only.  50.00 is not below: 50 points.  A
-- credit note of -20 is below by its absolute value: -20 qualifying, 0 points.
INSERT INTO acc.small VALUES (1, 'M', 49.99, '2024-05-01'), (2, 'M', 50.00, '2024-05-01'),
                             (3, 'M', -20.00, '2024-05-02');
SELECT s.id, e.status, e.basis, e.points, e.qualifying
  FROM acc.small s, loyalty.explain_points('acc.small', s.id::text) e ORDER BY s.id;
-- 50 points; 49.99 + 50.00 - 20.00 = 79.99 qualifying.
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger WHERE program = 'accrual_minimum';
SELECT count(*) AS drift FROM loyalty.verify('accrual_minimum');

--
-- 5. The control cohort: qualifying spend, no points
--

-- For the ROI measurement, control accounts keep their tier spend but earn
-- no points; pilot accounts earn as usual.
CREATE TABLE acc.pilot (id int PRIMARY KEY, customer_id text NOT NULL, amount numeric(12,2) NOT NULL,
                        doc_date date NOT NULL);
SELECT loyalty.create_program('accrual_cohorts') > 0 AS created;
SELECT loyalty.attach('acc.pilot', 'accrual_cohorts', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date') > 0 AS attached;
SELECT loyalty.enroll('accrual_cohorts', 'P', cohort => 'pilot');
SELECT loyalty.enroll('accrual_cohorts', 'K', cohort => 'control');
INSERT INTO acc.pilot VALUES (1, 'P', 300, '2024-05-01'), (2, 'K', 300, '2024-05-01');
SELECT s.id, e.account_key, e.status, e.points, e.qualifying
  FROM acc.pilot s, loyalty.explain_points('acc.pilot', s.id::text) e ORDER BY s.id;
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger
 WHERE program = 'accrual_cohorts' ORDER BY account_key;
SELECT count(*) AS drift FROM loyalty.verify('accrual_cohorts');

-- Moving an account to the control cohort changes what later documents
-- earn, not what earlier ones did: P's invoice of tomorrow earns no points,
-- and deleting its first invoice takes back exactly the 300 it earned.
SELECT loyalty.enroll('accrual_cohorts', 'P', cohort => 'control');
SELECT count(*) AS drift FROM loyalty.verify('accrual_cohorts');
INSERT INTO acc.pilot VALUES (3, 'P', 50, current_date + 1);
DELETE FROM acc.pilot WHERE id = 1;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM acc.ledger
 WHERE program = 'accrual_cohorts' AND account_key = 'P' ORDER BY entry_no;
-- 300 + 0 - 300 = 0 points; 300 + 50 - 300 = 50.00 qualifying.
SELECT points, qualifying FROM loyalty.balance('accrual_cohorts', 'P');
SELECT count(*) AS drift FROM loyalty.verify('accrual_cohorts');

--
-- 6. Explicit enrolment
--

-- Only enrolled accounts earn, and only from documents dated on or after
-- their enrolled_from (today by default): enrolling never changes what an
-- older document earned.  Customers that invoice without being enrolled
-- are counted in loyalty.unenrolled_activity, candidates to enrol.
CREATE TABLE acc.member_invoice (id int PRIMARY KEY, customer_id text NOT NULL,
                                 amount numeric(12,2) NOT NULL, doc_date date NOT NULL);
SELECT loyalty.create_program('accrual_explicit', enrollment => 'explicit') > 0 AS created;
SELECT loyalty.attach('acc.member_invoice', 'accrual_explicit', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date') > 0 AS attached;
SELECT loyalty.enroll('accrual_explicit', 'E1');
SELECT loyalty.enroll('accrual_explicit', 'E2', enrolled_from => '2024-01-01');
--   1  E1  today       100  earns
--   2  E1  2024-06-01   10  before E1's enrolment (today): not enrolled
--   3  E2  2024-06-01   20  earns
--   4  E2  2023-12-31   30  before E2's enrolment: not enrolled
--   5  U1  2024-06-01   40  not enrolled
--   6  U1  2024-06-02    2  not enrolled
INSERT INTO acc.member_invoice VALUES
    (1, 'E1', 100, current_date), (2, 'E1', 10, '2024-06-01'), (3, 'E2', 20, '2024-06-01'),
    (4, 'E2', 30, '2023-12-31'), (5, 'U1', 40, '2024-06-01'), (6, 'U1', 2, '2024-06-02');
SELECT s.id, e.account_key, e.status, e.points, e.qualifying
  FROM acc.member_invoice s, loyalty.explain_points('acc.member_invoice', s.id::text) e ORDER BY s.id;
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger
 WHERE program = 'accrual_explicit' ORDER BY account_key;
-- U1 is not enrolled by its invoices.
SELECT account_key, enrolled_by FROM loyalty.account JOIN loyalty.program USING (program_id)
 WHERE name = 'accrual_explicit' ORDER BY 1;
SELECT * FROM loyalty.balance('accrual_explicit', 'U1');
-- What was ignored, per customer: net rows and net amount.
SELECT u.account_key, u.source_rows, u.amount
  FROM loyalty.unenrolled_activity u JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_explicit' ORDER BY 1;
-- The counts are appended per statement and folded by loyalty.fold(): they
-- read the same before and after it, and the next statement adds to them.
SELECT loyalty.fold('accrual_explicit') > 0 AS folded;
SELECT u.account_key, u.source_rows, u.amount
  FROM loyalty.unenrolled_activity u JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_explicit' ORDER BY 1;
SELECT count(*) AS unfolded FROM loyalty.unenrolled_delta d JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_explicit';
-- Deleting an ignored invoice takes it out of the count again.
DELETE FROM acc.member_invoice WHERE id = 6;
SELECT u.account_key, u.source_rows, u.amount
  FROM loyalty.unenrolled_activity u JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_explicit' ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('accrual_explicit');

--
-- 7. Rejected rows go to the dead-letter table
--

-- A program that starts on 1 January 2024 and accrues euros only, with the
-- document currency mapped.  Rows it cannot accrue are parked in
-- loyalty.rejected_event with the reason; the ERP's INSERT goes through.
CREATE TABLE acc.erp_doc (doc_id int PRIMARY KEY, customer_id text, amount numeric(12,2),
                          doc_date date, currency text);
SELECT loyalty.create_program('accrual_rejects', starts_on => '2024-01-01') > 0 AS created;
SELECT loyalty.attach('acc.erp_doc', 'accrual_rejects', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date',
                      currency_column => 'currency') > 0 AS attached;
INSERT INTO acc.erp_doc VALUES
    (1, 'OK', 100.00, '2024-02-01', 'EUR'),
    (2, 'OK', NULL, '2024-02-01', 'EUR'),
    (3, NULL, 10.00, '2024-02-01', 'EUR'),
    (4, 'OK', 10.00, '2024-02-01', 'USD'),
    (5, 'OK', 10.00, '2024-02-01', NULL),
    (6, 'OK', 10.00, '2023-12-31', 'EUR'),
    (7, 'OK', 10.00, NULL, 'EUR');
SELECT count(*) AS invoices FROM acc.erp_doc;
SELECT r.row_key, r.account_key, r.reason, r.row_data, r.resolved_at
  FROM loyalty.rejected_event r JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_rejects' ORDER BY r.row_key;
-- Only row 1 earned.
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger WHERE program = 'accrual_rejects';
-- explain_points gives the same reason.
SELECT status, reason, points FROM loyalty.explain_points('acc.erp_doc', '4');
-- Fixing a rejected row in the ERP accrues it: 55 points.
UPDATE acc.erp_doc SET amount = 55.00 WHERE doc_id = 2;
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger
 WHERE program = 'accrual_rejects' ORDER BY entry_no;
SELECT count(*) AS drift FROM loyalty.verify('accrual_rejects');

--
-- 8. A strict program fails the ERP statement instead
--

CREATE TABLE acc.strict_doc (doc_id int PRIMARY KEY, customer_id text, amount numeric(12,2), doc_date date);
SELECT loyalty.create_program('accrual_strict', strict => true) > 0 AS created;
SELECT loyalty.attach('acc.strict_doc', 'accrual_strict', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date') > 0 AS attached;
-- One bad row fails the whole INSERT, with the row, the reason and the way out.
INSERT INTO acc.strict_doc VALUES (1, 'S', 10.00, '2024-02-01'), (2, 'S', NULL, '2024-02-01');
INSERT INTO acc.strict_doc VALUES (3, NULL, 10.00, '2024-02-01');
-- Nothing was written: no invoice, no entry, no account, no dead letter.
SELECT (SELECT count(*) FROM acc.strict_doc) AS invoices,
       (SELECT count(*) FROM acc.ledger WHERE program = 'accrual_strict') AS entries,
       (SELECT count(*) FROM loyalty.account JOIN loyalty.program USING (program_id) WHERE name = 'accrual_strict') AS accounts,
       (SELECT count(*) FROM loyalty.rejected_event JOIN loyalty.program USING (program_id) WHERE name = 'accrual_strict') AS rejected;
-- Good rows go through.
INSERT INTO acc.strict_doc VALUES (1, 'S', 10.00, '2024-02-01');
SELECT account_key, kind, points FROM acc.ledger WHERE program = 'accrual_strict';

--
-- 9. Points per quantity: a building-materials dealer pays per cubic metre
--

-- Ten points per m3, rounded half up; the amount is still mapped, and is
-- the qualifying spend.
CREATE TABLE acc.delivery (id int PRIMARY KEY, customer_id text NOT NULL, volume_m3 numeric(10,3) NOT NULL,
                           amount numeric(12,2) NOT NULL, delivery_date date NOT NULL);
SELECT loyalty.create_program('accrual_m3', basis => 'quantity', points_per_unit => 10,
                              rounding => 'half_up') > 0 AS created;
SELECT loyalty.attach('acc.delivery', 'accrual_m3', account_column => 'customer_id',
                      quantity_column => 'volume_m3', amount_column => 'amount',
                      date_column => 'delivery_date') > 0 AS attached;
--   12.345 m3 -> 123.45 -> 123;  0.050 m3 -> 0.5 -> 1;  -2.000 m3 (a return) -> -20
INSERT INTO acc.delivery VALUES (1, 'BLD', 12.345, 1234.50, '2024-05-01'),
                                (2, 'BLD', 0.050, 5.00, '2024-05-01'),
                                (3, 'BLD', -2.000, -200.00, '2024-05-02');
SELECT d.id, e.basis, e.points_per_unit, e.raw_points, e.points, e.qualifying
  FROM acc.delivery d, loyalty.explain_points('acc.delivery', d.id::text) e ORDER BY d.id;
-- 123 + 1 - 20 = 104 points; 1234.50 + 5.00 - 200.00 = 1039.50 qualifying.
SELECT account_key, kind, points, qualifying, source_rows FROM acc.ledger WHERE program = 'accrual_m3';
SELECT count(*) AS drift FROM loyalty.verify('accrual_m3');
-- A delivery whose amount is unknown (NULL) earns on its volume and
-- qualifies no spend: qualifying spend is money, never cubic metres.
ALTER TABLE acc.delivery ALTER COLUMN amount DROP NOT NULL;
INSERT INTO acc.delivery VALUES (4, 'BLD', 3.000, NULL, '2024-05-03');
SELECT e.points, e.qualifying FROM loyalty.explain_points('acc.delivery', '4') e;
SELECT points, qualifying FROM loyalty.balance('accrual_m3', 'BLD');
-- Without an amount mapped at all, the volume is what qualifies (tiers by volume).
CREATE TABLE acc.volume_only (id int PRIMARY KEY, customer_id text, volume_m3 numeric(10,3), delivery_date date);
SELECT loyalty.create_program('accrual_m3_volume', basis => 'quantity', points_per_unit => 10) > 0 AS created;
SELECT loyalty.attach('acc.volume_only', 'accrual_m3_volume', account_column => 'customer_id',
                      quantity_column => 'volume_m3', date_column => 'delivery_date') > 0 AS attached;
INSERT INTO acc.volume_only VALUES (1, 'VOL', 2.5, '2024-05-01');
SELECT points, qualifying FROM loyalty.balance('accrual_m3_volume', 'VOL');
SELECT count(*) AS drift FROM loyalty.verify('accrual_m3');
SELECT count(*) AS drift FROM loyalty.verify('accrual_m3_volume');

--
-- 10. A cap per account per period
--

-- Anti-abuse: at most 1000 points per account per calendar quarter from
-- 2024 on.  Points above the cap are withheld by a 'cap' entry; when the
-- period's points fall back under the cap, the withheld points come back.
-- Balances apply the caps as soon as they are read; loyalty.fold() (run by
-- pg_cron) books them as 'cap' entries, so that postings never wait for
-- each other.
CREATE TABLE acc.capped (id int PRIMARY KEY, customer_id text NOT NULL, amount numeric(12,2) NOT NULL,
                         doc_date date NOT NULL);
SELECT loyalty.create_program('accrual_cap') > 0 AS created;
SELECT loyalty.add_rule('accrual_cap', '2024-01-01', 1, cap_points => 1000, cap_period => 'quarter');
SELECT loyalty.attach('acc.capped', 'accrual_cap', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date') > 0 AS attached;
-- Q1: 600, under the cap.
INSERT INTO acc.capped VALUES (1, 'H', 600, '2024-01-10');
-- Q1: 300 + 400 more make 1300: 700 earned, 300 withheld (cap -300).
INSERT INTO acc.capped VALUES (2, 'H', 300, '2024-02-10'), (3, 'H', 400, '2024-03-10');
-- Q2 is a new period: 200 earned in full.
INSERT INTO acc.capped VALUES (4, 'H', 200, '2024-04-10');
-- 1000 (Q1, capped) + 200 (Q2) = 1200 points; qualifying spend is never
-- capped: 600 + 300 + 400 + 200 = 1500.00.
SELECT points, qualifying FROM loyalty.balance('accrual_cap', 'H');
SELECT count(*) AS drift FROM loyalty.verify('accrual_cap');
-- The fold books the 300 withheld; the balance stays what it was.
SELECT loyalty.fold('accrual_cap') AS folded;
SELECT points, qualifying FROM loyalty.balance('accrual_cap', 'H');
-- Deleting the 400 of March: Q1 falls to 900, under the cap again.  The
-- reversal takes back 400 and the cap gives back the 300 it withheld, so
-- Q1 nets 900: 1000 -> 900.
DELETE FROM acc.capped WHERE id = 3;
SELECT loyalty.fold('accrual_cap') AS folded;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM acc.ledger
 WHERE program = 'accrual_cap' ORDER BY entry_no;
-- 900 (Q1) + 200 (Q2) = 1100 points; 1500.00 - 400.00 = 1100.00 qualifying.
SELECT points, qualifying FROM loyalty.balance('accrual_cap', 'H');
-- explain_points shows the cap that applies to the row's period.
SELECT status, points, cap FROM loyalty.explain_points('acc.capped', '1');
SELECT count(*) AS drift FROM loyalty.verify('accrual_cap');

-- Caps nest.  A version from 1 January 2025 caps the year at 5,000 points;
-- a version from 1 April 2025 caps each month at 1,000 (and no year).  From
-- April 2025 both hold: each month at most 1,000, and 2025 at most 5,000;
-- from 2026 (the April version in force on 1 January) only the month cap.
CREATE TABLE acc.nested (id int PRIMARY KEY, customer_id text, amount numeric(12,2), doc_date date);
SELECT loyalty.create_program('accrual_nested', starts_on => '2024-01-01') > 0 AS created;
SELECT loyalty.add_rule('accrual_nested', '2025-01-01', 1, cap_points => 5000, cap_period => 'year');
SELECT loyalty.add_rule('accrual_nested', '2025-04-01', 1, cap_points => 1000, cap_period => 'month');
SELECT loyalty.attach('acc.nested', 'accrual_nested', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'doc_date') > 0 AS attached;
INSERT INTO acc.nested VALUES (1, 'N', 1000, '2025-01-15'), (2, 'N', 1500, '2025-04-15'), (3, 'N', 800, '2025-05-15'),
                              (4, 'M', 2000, '2025-01-15'), (5, 'M', 2500, '2025-02-15'), (6, 'M', 900, '2025-04-15'),
                              (7, 'M', 900, '2025-05-15'), (8, 'M', 1200, '2026-01-15');
-- expected, in plain SQL: month caps from April 2025, then the 2025 year cap
WITH months AS (
    SELECT customer_id, date_trunc('month', doc_date)::date AS m, sum(trunc(amount)) AS p
    FROM acc.nested GROUP BY 1, 2),
capped AS (
    SELECT customer_id, extract(year FROM m) AS y,
           sum(CASE WHEN m >= '2025-04-01' THEN least(p, 1000) ELSE p END) AS p
    FROM months GROUP BY 1, 2)
SELECT customer_id, sum(CASE WHEN y = 2025 THEN least(p, 5000) ELSE p END) AS expected
  FROM capped GROUP BY 1 ORDER BY 1;
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_nested' ORDER BY 1;
SELECT status, points, cap FROM loyalty.explain_points('acc.nested', '2');
-- taking back April's 1,500 gives back nothing of what April withheld beyond its cap
DELETE FROM acc.nested WHERE id = 2;
SELECT points FROM loyalty.balance('accrual_nested', 'N');
SELECT count(*) AS drift FROM loyalty.verify('accrual_nested');

--
-- 11. Tiers: upgrade on accrual, multipliers from the next day
--

-- Silver from 1000 of rolling qualifying spend, Gold from 5000; Gold
-- earns x1.5.  An upgrade takes effect on the day after it happens, so a
-- document dated today earns by today's tier, whenever it is recomputed.
CREATE TABLE acc.tiered (id int PRIMARY KEY, customer_id text NOT NULL, amount numeric(12,2) NOT NULL,
                         doc_date date NOT NULL);
SELECT loyalty.create_program('accrual_tiers', ladder => 'Silver:1000, Gold:5000') > 0 AS created;
SELECT loyalty.add_rule('accrual_tiers', '2024-01-01', 1, tier_multipliers => '{"Gold": 1.5}');
SELECT loyalty.attach('acc.tiered', 'accrual_tiers', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date') > 0 AS attached;
-- 1500 today: rolling spend 1500 reaches Silver.
INSERT INTO acc.tiered VALUES (1, 'T', 1500, current_date);
SELECT loyalty.tier('accrual_tiers', 'T');
-- The fold (pg_cron, every minute) records the upgrade in the history.
SELECT loyalty.fold('accrual_tiers') AS folded;
-- 4000 more today: 5500 reaches Gold.  Still no multiplier for today's
-- documents: 1500 + 4000 = 5500 points.
INSERT INTO acc.tiered VALUES (2, 'T', 4000, current_date);
SELECT * FROM loyalty.balance('accrual_tiers', 'T');
SELECT loyalty.fold('accrual_tiers') AS folded;
-- Every change is in the history, effective tomorrow.
SELECT h.old_tier, h.new_tier, h.reason, h.rolling_qualifying,
       h.effective_from = current_date + 1 AS from_tomorrow
  FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_tiers' ORDER BY h.change_no;
-- A document dated today still earns x1; one dated tomorrow or later
-- earns Gold's x1.5: 100 -> 100, 100 -> 150, 100 -> 150.
INSERT INTO acc.tiered VALUES (3, 'T', 100, current_date), (4, 'T', 100, current_date + 1),
                              (5, 'T', 100, current_date + 30);
SELECT t.id, e.tier_on_date, e.tier_multiplier, e.points
  FROM acc.tiered t, loyalty.explain_points('acc.tiered', t.id::text) e ORDER BY t.id;
-- 5500 + 100 + 150 + 150 = 5900.  The rolling window runs up to the
-- current month, so documents dated in a later month do not count in it
-- yet: 5600 from today's documents, plus 100 for each of the other two that
-- falls in the current month.
SELECT points, qualifying, tier FROM loyalty.balance('accrual_tiers', 'T');
SELECT rolling_qualifying = 5600
       + CASE WHEN date_trunc('month', current_date + 1) = date_trunc('month', current_date) THEN 100 ELSE 0 END
       + CASE WHEN date_trunc('month', current_date + 30) = date_trunc('month', current_date) THEN 100 ELSE 0 END
       AS rolling_ok
  FROM loyalty.balance('accrual_tiers', 'T');
-- A small customer stays without a tier, and without history.
INSERT INTO acc.tiered VALUES (6, 'T2', 999.99, current_date);
SELECT loyalty.tier('accrual_tiers', 'T2') IS NULL AS no_tier,
       (SELECT count(*) FROM loyalty.tier_history WHERE account_key = 'T2') AS changes;

-- Spend that enters the window by an UPDATE upgrades as well: T3's invoice
-- of 6000 dated 2020 is outside the window; re-dated to today, the rolling
-- spend is 6000 and T3 is Gold from tomorrow.
INSERT INTO acc.tiered VALUES (7, 'T3', 6000, '2020-01-15');
SELECT tier, rolling_qualifying FROM loyalty.balance('accrual_tiers', 'T3');
UPDATE acc.tiered SET doc_date = current_date WHERE id = 7;
SELECT tier, rolling_qualifying FROM loyalty.balance('accrual_tiers', 'T3');
SELECT loyalty.fold('accrual_tiers') AS folded;
SELECT h.old_tier, h.new_tier, h.reason, h.rolling_qualifying,
       h.effective_from = current_date + 1 AS from_tomorrow
  FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'accrual_tiers' AND h.account_key = 'T3';
SELECT count(*) AS drift FROM loyalty.verify('accrual_tiers');

--
-- 12. Reading balances: errors
--

SELECT * FROM loyalty.balance('accrual_basic', 'Z');
SELECT * FROM loyalty.balance('accrual_nope', 'A');
SELECT loyalty.tier('accrual_tiers', 'nobody');

-- Every program of this file is consistent.
SELECT p.name, count(v.*) AS drift
  FROM loyalty.program p LEFT JOIN LATERAL loyalty.verify(p.name) v ON true
 WHERE p.name LIKE 'accrual%' GROUP BY 1 ORDER BY 1;
