--
-- backfill: the ERP's history is already in PostgreSQL and must count on
-- day one.  backfill(source, program, since) accrues, set-based, what the
-- triggers have not: the invoices that existed before attach, from the
-- month of `since` on.  It posts only the difference between what the rows
-- earn and what is accrued, so running it twice, or after an interruption,
-- posts nothing more.
--
-- Errors show their DETAIL and HINT; CONTEXT lines (PL/pgSQL line numbers)
-- are left out so that the output does not change with the function bodies.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE SCHEMA bf;
-- The ledger of a program, without ids and timestamps.
CREATE VIEW bf.ledger AS
-- entry_no: the account's entries in posting order (the ledger numbers
-- them within each transaction)
SELECT p.name AS program, l.account_key,
       pg_catalog.row_number() OVER (PARTITION BY l.program_id, l.account_key ORDER BY l.posted_xid, l.entry_no) AS entry_no,
       l.kind, l.points, l.qualifying, l.source_rows, l.reason
  FROM loyalty.ledger l JOIN loyalty.program p USING (program_id);

-- Two years of invoices, before any program existed.
CREATE TABLE bf.invoice (invoice_id int PRIMARY KEY, customer_id text NOT NULL,
                         amount numeric(12,2) NOT NULL, invoice_date date NOT NULL);
INSERT INTO bf.invoice VALUES
    (1, 'A', 100.00, '2023-11-15'),
    (2, 'A', 200.00, '2024-01-10'),
    (3, 'A', 300.50, '2024-02-01'),
    (4, 'A', 40.00, '2024-02-20'),
    (5, 'B', 500.00, '2024-02-05'),
    (6, 'B', 60.00, '2024-03-01'),
    (7, 'C', 70.00, '2024-03-02'),
    (8, 'D', 80.00, '2024-01-31');

-- One point per euro, toward zero.
SELECT loyalty.create_program('backfill_main') > 0 AS created;
SELECT loyalty.attach('bf.invoice', 'backfill_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;

-- Attaching accrues nothing by itself; verify lists what the history
-- should have earned and has not.
SELECT count(*) AS entries FROM bf.ledger WHERE program = 'backfill_main';
SELECT account_key, month, item, expected, actual FROM loyalty.verify('backfill_main')
 WHERE item = 'points' ORDER BY account_key, month;

--
-- 1. Changes between attach and backfill
--

-- A new invoice earns at once: E 90.
INSERT INTO bf.invoice VALUES (9, 'E', 90.00, '2024-03-10');
-- An old invoice corrected after attach: its old version is reversed
-- although it never earned (-40), its new version earns (45).  A's ledger
-- is off by the history for now; backfill settles it.
UPDATE bf.invoice SET amount = 45.00 WHERE invoice_id = 4;
-- An old invoice deleted after attach: C had never earned anything, so
-- C's invoice 7 leaves no trace.
DELETE FROM bf.invoice WHERE invoice_id = 7;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM bf.ledger
 WHERE program = 'backfill_main' ORDER BY account_key, entry_no;

--
-- 2. Backfill from a date
--

-- `since` is rounded down to its month: 15 February backfills February
-- and March 2024, whole.
--   A  Feb: 300 + 45 earn, minus the -40 + 45 already accrued     -> +340, 2 rows
--   B  Feb: 500; Mar: 60                                          -> +560, 2 rows
--   E  Mar: already accrued                                       -> nothing
-- So 2 accounts, 3 months, 4 rows, 900 points, 900.50 qualifying.
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_main', '2024-02-15');
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM bf.ledger
 WHERE program = 'backfill_main' AND kind = 'backfill' ORDER BY account_key, entry_no;
-- The customers of the history are enrolled as by their first invoice.
SELECT account_key, enrolled_by FROM loyalty.account JOIN loyalty.program USING (program_id)
 WHERE name = 'backfill_main' ORDER BY 1;

-- A second run finds nothing to do.
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_main', '2024-02-15');
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_main', '2024-02-01');
-- What is left is before February.
SELECT account_key, month, item, expected, actual FROM loyalty.verify('backfill_main')
 WHERE item = 'points' ORDER BY account_key, month;

-- The rest of the history: A 100 (Nov 2023) + 200 (Jan), D 80 (Jan).
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_main', '-infinity');
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_main', '-infinity');
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM bf.ledger
 WHERE program = 'backfill_main' AND kind = 'backfill' ORDER BY account_key, entry_no;

-- Every invoice has earned exactly once: A 100 + 200 + 300 + 45 = 645,
-- B 560, D 80, E 90.
SELECT k, b.points, b.qualifying FROM unnest(ARRAY['A', 'B', 'D', 'E']) k, loyalty.balance('backfill_main', k) b;
SELECT * FROM loyalty.verify('backfill_main');

-- After backfill, corrections of history are exact like any other.
UPDATE bf.invoice SET amount = 150.00 WHERE invoice_id = 1;
DELETE FROM bf.invoice WHERE invoice_id = 8;
-- A: 150 instead of 100 (-100, +150); D: -80.
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM bf.ledger
 WHERE program = 'backfill_main' AND account_key IN ('A', 'D') ORDER BY account_key, entry_no;
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_main', '-infinity');
SELECT count(*) AS drift FROM loyalty.verify('backfill_main');

--
-- 3. Backfill applies the program's rules
--

-- A program with a minimum invoice of 100, SOLAR x2 and a cap of 500 points
-- per account per year: backfilled history earns exactly what the triggers
-- would have posted, cap included.
CREATE TABLE bf.sale (sale_id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                      sale_date date NOT NULL, product_line text);
INSERT INTO bf.sale VALUES
    (1, 1, 99.00, '2024-01-05', NULL),     --  below minimum:   0 points, 99 qualifying
    (2, 1, 150.00, '2024-01-06', 'SOLAR'), --  150 x 2 =      300
    (3, 1, 400.00, '2024-02-07', NULL),    --                 400 -> 700 in 2024, capped at 500
    (4, 2, 120.00, '2024-02-08', NULL);    --                 120
SELECT loyalty.create_program('backfill_rules') > 0 AS created;
SELECT loyalty.add_rule('backfill_rules', '2024-01-01', 1, min_amount => 100,
                        product_line_multipliers => '{"SOLAR": 2}', cap_points => 500, cap_period => 'year');
SELECT loyalty.attach('bf.sale', 'backfill_rules', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'sale_date',
                      product_line_column => 'product_line') > 0 AS attached;
-- 2 accounts, 3 account-months, 4 rows, 820 points before the cap, 769.00.
SELECT * FROM loyalty.backfill('bf.sale', 'backfill_rules', '-infinity');
-- Customer 1: 700 backfilled, 200 withheld by the cap (booked by the fold).
SELECT loyalty.fold('backfill_rules') AS folded;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM bf.ledger
 WHERE program = 'backfill_rules' ORDER BY account_key, entry_no;
SELECT k, b.points, b.qualifying FROM unnest(ARRAY['1', '2']) k, loyalty.balance('backfill_rules', k) b;
SELECT count(*) AS drift FROM loyalty.verify('backfill_rules');

--
-- 4. Detaching and attaching again
--

-- What was accrued under the first attachment stays accrued: after a
-- detach and a new attach of the same table, backfill does not post the
-- history a second time, and verify agrees.
SELECT loyalty.detach('bf.sale', 'backfill_rules');
SELECT loyalty.attach('bf.sale', 'backfill_rules', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'sale_date',
                      product_line_column => 'product_line') > 0 AS attached;
SELECT count(*) AS drift FROM loyalty.verify('backfill_rules');
SELECT * FROM loyalty.backfill('bf.sale', 'backfill_rules', '-infinity');
SELECT k, b.points, b.qualifying FROM unnest(ARRAY['1', '2']) k, loyalty.balance('backfill_rules', k) b;
SELECT count(*) AS drift FROM loyalty.verify('backfill_rules');

--
-- 5. Errors
--

-- A table the program is not attached to, an unknown program, no date.
CREATE TABLE bf.other (id int PRIMARY KEY);
SELECT * FROM loyalty.backfill('bf.other', 'backfill_main', '-infinity');
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_nope', '-infinity');
SELECT * FROM loyalty.backfill('bf.invoice', 'backfill_main', NULL);
