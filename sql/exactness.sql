--
-- exactness: corrections are exact.  An UPDATE or DELETE of an invoice, a
-- credit note, a rollback, the paid date of an on-time payment: each is
-- recomputed from the old and the new row by the same points function, so
-- the ledger always says exactly what the invoices now earn, and verify()
-- stays empty.
--
-- Errors show their DETAIL and HINT; CONTEXT lines (PL/pgSQL line numbers)
-- are left out so that the output does not change with the function bodies.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE SCHEMA exa;
-- The ledger of a program, without ids and timestamps.
CREATE VIEW exa.ledger AS
-- entry_no: the account's entries in posting order (the ledger numbers
-- them within each transaction)
SELECT p.name AS program, l.account_key,
       pg_catalog.row_number() OVER (PARTITION BY l.program_id, l.account_key ORDER BY l.posted_xid, l.entry_no) AS entry_no,
       l.kind, l.points, l.qualifying, l.source_rows, l.reason
  FROM loyalty.ledger l JOIN loyalty.program p USING (program_id);
CREATE VIEW exa.main AS
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason
  FROM exa.ledger WHERE program = 'exactness_main';

-- One point per euro (half up), SOLAR x2, 10% bonus for paying on time,
-- two points per euro from June 2024.  Credit notes are documents of type
-- CRN: their amount counts negative whatever sign it is stored with.
CREATE TABLE exa.invoice (
    invoice_id   int PRIMARY KEY,
    customer_id  int NOT NULL,
    amount       numeric(12,2) NOT NULL,
    invoice_date date NOT NULL,
    product_line text,
    doc_type     text NOT NULL DEFAULT 'INV',
    due_date     date,
    paid_date    date,
    note         text
);
SELECT loyalty.create_program('exactness_main', rounding => 'half_up') > 0 AS created;
SELECT loyalty.add_rule('exactness_main', '2024-01-01', 1, product_line_multipliers => '{"SOLAR": 2}',
                        on_time_bonus_pct => 10);
SELECT loyalty.add_rule('exactness_main', '2024-06-01', 2, product_line_multipliers => '{"SOLAR": 2}',
                        on_time_bonus_pct => 10);
SELECT loyalty.attach('exa.invoice', 'exactness_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date',
                      product_line_column => 'product_line', doc_type_column => 'doc_type',
                      credit_note_types => '{CRN}', due_date_column => 'due_date',
                      paid_date_column => 'paid_date') > 0 AS attached;

-- Customer 1: 100.00 SOLAR (200) and 50.00 (50); customer 2: 80.00 (80).
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date, product_line) VALUES
    (1, 1, 100.00, '2024-03-01', 'SOLAR'), (2, 1, 50.00, '2024-03-02', NULL), (3, 2, 80.00, '2024-03-03', NULL);
SELECT * FROM exa.main ORDER BY account_key, entry_no;

--
-- 1. UPDATE: the old row is reversed, the new one earns
--

-- The amount: 50.00 -> 70.00 reverses 50 and earns 70.
UPDATE exa.invoice SET amount = 70.00 WHERE invoice_id = 2;
SELECT * FROM exa.main WHERE account_key = '1' ORDER BY entry_no;

-- The account: invoice 3 moves from customer 2 to customer 1; customer 2
-- loses its 80 points, customer 1 gains them.
UPDATE exa.invoice SET customer_id = 1 WHERE invoice_id = 3;
SELECT * FROM exa.main ORDER BY account_key, entry_no;

-- The product line: invoice 1 is no longer SOLAR, 200 -> 100.
UPDATE exa.invoice SET product_line = NULL WHERE invoice_id = 1;
SELECT * FROM exa.main WHERE account_key = '1' AND entry_no > 4 ORDER BY entry_no;

-- The date, across a rule version: invoice 2 moves to June, where a euro
-- earns two points: 70 -> 140.
UPDATE exa.invoice SET invoice_date = '2024-06-02' WHERE invoice_id = 2;
SELECT * FROM exa.main WHERE account_key = '1' AND entry_no > 6 ORDER BY entry_no;

-- The date, within a rule version: invoice 1 moves from March to April and
-- earns the same 100 points.  The account's totals do not change, so no
-- entry is posted; the per-month sums follow the document (verify checks
-- them against the invoices).
SELECT count(*) AS entries_before FROM exa.main \gset
UPDATE exa.invoice SET invoice_date = '2024-04-01' WHERE invoice_id = 1;
SELECT count(*) - :entries_before AS new_entries FROM exa.main;
SELECT month, points, qualifying, source_rows FROM loyalty.accrual_month m
  JOIN loyalty.program p USING (program_id) WHERE p.name = 'exactness_main' AND m.account_key = '1'
 ORDER BY month;

-- A column the mapping does not read: nothing is posted at all.
UPDATE exa.invoice SET note = 'checked by accounting';
SELECT count(*) - :entries_before AS new_entries FROM exa.main;

-- Several rows of several accounts in one UPDATE: one reversal and one
-- earning per account.  Customer 2 gets a new invoice first.
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (4, 2, 10.00, '2024-03-04');
UPDATE exa.invoice SET amount = amount + 1 WHERE invoice_id IN (1, 3, 4);
-- customer 1: invoices 1 and 3, 100 + 80 -> 101 + 81; customer 2: 10 -> 11.
SELECT * FROM exa.main WHERE entry_no > 8 OR account_key = '2' ORDER BY account_key, entry_no;
SELECT count(*) AS drift FROM loyalty.verify('exactness_main');

--
-- 2. DELETE reverses
--

-- Deleting invoice 4 takes back its 11 points and 11.00 of qualifying spend.
DELETE FROM exa.invoice WHERE invoice_id = 4;
SELECT * FROM exa.main WHERE account_key = '2' ORDER BY entry_no;
SELECT points, qualifying FROM loyalty.balance('exactness_main', '2');

-- Deleting and inserting the same invoice again earns it once.
SELECT points AS points_before FROM loyalty.balance('exactness_main', '1') \gset
BEGIN;
DELETE FROM exa.invoice WHERE invoice_id = 3;
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (3, 1, 81.00, '2024-03-03');
COMMIT;
SELECT points - :points_before AS change FROM loyalty.balance('exactness_main', '1');

--
-- 3. Credit notes
--

-- A credit note of type CRN counts negative, whether the ERP stores its
-- amount as positive or as negative: -30 points either way.
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date, doc_type) VALUES
    (10, 5, 30.00, '2024-03-10', 'CRN'), (11, 6, -30.00, '2024-03-10', 'CRN');
SELECT invoice_id, amount, e.basis, e.points, e.qualifying
  FROM exa.invoice i, loyalty.explain_points('exa.invoice', i.invoice_id::text) e
 WHERE invoice_id IN (10, 11) ORDER BY invoice_id;
SELECT * FROM exa.main WHERE account_key IN ('5', '6') ORDER BY account_key, entry_no;

-- An invoice and its credit note cancel out exactly, even where rounding
-- applies: 12.50 rounds half up to 13, and its credit note to -13.
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (12, 7, 12.50, '2024-03-11');
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date, doc_type) VALUES (13, 7, 12.50, '2024-03-12', 'CRN');
SELECT * FROM exa.main WHERE account_key = '7' ORDER BY entry_no;
SELECT points, qualifying FROM loyalty.balance('exactness_main', '7');

-- Turning an invoice into a credit note by its document type: +13 -> -13.
UPDATE exa.invoice SET doc_type = 'CRN' WHERE invoice_id = 12;
SELECT * FROM exa.main WHERE account_key = '7' AND entry_no > 2 ORDER BY entry_no;
SELECT count(*) AS drift FROM loyalty.verify('exactness_main');

--
-- 4. Rollbacks leave nothing
--

SELECT count(*) AS entries_before FROM exa.main \gset
-- A rolled-back transaction: its invoices, corrections and enrolments vanish.
BEGIN;
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (20, 20, 500.00, '2024-03-20');
UPDATE exa.invoice SET amount = 999 WHERE invoice_id = 1;
DELETE FROM exa.invoice WHERE invoice_id = 2;
ROLLBACK;
SELECT count(*) - :entries_before AS new_entries FROM exa.main;
SELECT count(*) AS account_20 FROM loyalty.account JOIN loyalty.program USING (program_id)
 WHERE name = 'exactness_main' AND account_key = '20';

-- A rolled-back savepoint: what came before and after it stays, what was
-- inside it vanishes -- including the enrolment of customer 21, who is
-- enrolled again by the next invoice.
BEGIN;
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (21, 21, 10.00, '2024-03-21');
SAVEPOINT s1;
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (22, 22, 20.00, '2024-03-21');
UPDATE exa.invoice SET amount = 15.00 WHERE invoice_id = 21;
ROLLBACK TO SAVEPOINT s1;
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (23, 22, 40.00, '2024-03-22');
COMMIT;
SELECT * FROM exa.main WHERE account_key IN ('21', '22') ORDER BY account_key, entry_no;
SELECT account_key, enrolled_by FROM loyalty.account JOIN loyalty.program USING (program_id)
 WHERE name = 'exactness_main' AND account_key IN ('21', '22') ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('exactness_main');

--
-- 5. The on-time payment bonus follows the paid date
--

-- Invoice 30, 1000.00 due 4 April; 10% of its 1000 points when paid on or
-- before the due date.  The bonus is its own ledger entry.
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date, due_date) VALUES
    (30, 3, 1000.00, '2024-03-05', '2024-04-04');
-- Paid on 1 April: +100.
UPDATE exa.invoice SET paid_date = '2024-04-01' WHERE invoice_id = 30;
SELECT * FROM exa.main WHERE account_key = '3' ORDER BY entry_no;
-- The payment is cleared again (a bounced transfer): -100.
UPDATE exa.invoice SET paid_date = NULL WHERE invoice_id = 30;
-- Paid late, on 20 April: no bonus, nothing posted.
UPDATE exa.invoice SET paid_date = '2024-04-20' WHERE invoice_id = 30;
-- Paid exactly on the due date counts as on time: +100.
UPDATE exa.invoice SET paid_date = '2024-04-04' WHERE invoice_id = 30;
SELECT * FROM exa.main WHERE account_key = '3' ORDER BY entry_no;
-- An invoice inserted already paid on time earns both at once; the bonus
-- is a share of the row's points (SOLAR: 2 x 15.00 = 30, bonus 3).
INSERT INTO exa.invoice (invoice_id, customer_id, amount, invoice_date, product_line, due_date, paid_date) VALUES
    (31, 3, 15.00, '2024-03-06', 'SOLAR', '2024-04-05', '2024-03-30');
-- Deleting it takes both back.
DELETE FROM exa.invoice WHERE invoice_id = 31;
SELECT * FROM exa.main WHERE account_key = '3' AND entry_no > 3 ORDER BY entry_no;
SELECT points, qualifying FROM loyalty.balance('exactness_main', '3');

--
-- 6. explain_points: how one invoice's points were computed
--

-- Every step, for the program attached to the table: the rule version, the
-- basis, each multiplier (1 when none applies), the unrounded points, the
-- rounding, the points, the bonus, the qualifying spend and the cap (none
-- here).
SELECT * FROM loyalty.explain_points('exa.invoice', '30');
-- A key that matches no row gives no row.
SELECT count(*) FROM loyalty.explain_points('exa.invoice', '999');

-- A composite key: order lines keyed by (order_id, line_no).  The values are
-- given in the key's column order.
CREATE TABLE exa.order_line (order_id int, line_no int, customer_id int NOT NULL,
                             amount numeric(12,2) NOT NULL, order_date date NOT NULL,
                             product_line text, PRIMARY KEY (order_id, line_no));
SELECT loyalty.create_program('exactness_lines') > 0 AS created;
SELECT loyalty.attach('exa.order_line', 'exactness_lines', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'order_date',
                      product_line_column => 'product_line') > 0 AS attached;
INSERT INTO exa.order_line VALUES (1001, 1, 9, 10.00, '2024-03-01', 'PANEL'), (1001, 2, 9, 25.75, '2024-03-01', 'CABLE');
SELECT * FROM loyalty.explain_points('exa.order_line', '1001', '2');
-- The key values may be given in their own types, each compared with its
-- key column by that column's type: the same row as with text.
SELECT program, account_key, points FROM loyalty.explain_points('exa.order_line', 1001, 2);
SELECT program, account_key, points FROM loyalty.explain_points('exa.order_line', 1001::bigint, 2::smallint);
SELECT program, account_key, points FROM loyalty.explain_points('exa.order_line', VARIADIC ARRAY[1001, 2]);
SELECT e.points FROM exa.order_line l, loyalty.explain_points('exa.order_line', l.order_id, l.line_no) e
 ORDER BY l.line_no;
-- The number of values must match the key, and each must be one its column reads.
SELECT * FROM loyalty.explain_points('exa.order_line', '1001');
SELECT * FROM loyalty.explain_points('exa.order_line', 1001);
SELECT * FROM loyalty.explain_points('exa.order_line', 1001, 'two');
SELECT * FROM loyalty.explain_points('exa.order_line', 1001, NULL::int);
-- A table no program is attached to.
SELECT * FROM loyalty.explain_points('exa.ledger', '1');

--
-- 7. After all of this, every point reconciles
--

SELECT * FROM loyalty.verify('exactness_main');
SELECT * FROM loyalty.verify('exactness_lines');
-- The balances are the sums of the ledger.
SELECT b.account_key, b.points, b.qualifying,
       (SELECT sum(points) FROM exa.main m WHERE m.account_key = b.account_key) AS ledger_points
  FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'exactness_main' ORDER BY b.account_key::int;

--
-- 8. Dead letters are settled when their row is fixed or deleted
--

-- A parked row stays open while it is still wrong (and is not parked twice);
-- fixing it, or deleting it, settles its dead letter.
CREATE TABLE exa.dead (id int PRIMARY KEY, customer_id int, doc_date date, amount numeric(12,2));
SELECT loyalty.create_program('exactness_dead') > 0 AS created;
SELECT loyalty.attach('exa.dead', 'exactness_dead', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'doc_date') > 0 AS attached;
INSERT INTO exa.dead VALUES (1, 1, '2024-01-10', NULL), (2, 1, '2024-01-10', NULL),
                            (3, NULL, '2024-01-10', 5), (4, 2, '2024-01-10', NULL);
UPDATE exa.dead SET amount = 10 WHERE id = 1;
UPDATE exa.dead SET doc_date = '2024-01-11' WHERE id = 2;
UPDATE exa.dead SET customer_id = 3 WHERE id = 3;
DELETE FROM exa.dead WHERE id = 4;
SELECT e.row_key, e.reason, e.resolved_at IS NOT NULL AS settled
  FROM loyalty.rejected_event e JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'exactness_dead' ORDER BY e.row_key;
SELECT count(*) AS drift FROM loyalty.verify('exactness_dead');
