--
-- header: an invoice-lines table whose customer, date, currency, document
-- type and payment dates live on its header table.  attach() takes the ERP
-- tables as they are: the lines are mapped through the header's key, found
-- with one batched look-up per statement, and a change on the header (the
-- paid date, the customer) re-accrues its lines.
--
-- Errors show their DETAIL and HINT; CONTEXT lines (PL/pgSQL line numbers)
-- are left out so that the output does not change with the function bodies.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE SCHEMA hdr;
-- The ledger of a program, without ids and timestamps.
CREATE VIEW hdr.ledger AS
-- entry_no: the account's entries in posting order (the ledger numbers
-- them within each transaction)
SELECT p.name AS program, l.account_key,
       pg_catalog.row_number() OVER (PARTITION BY l.program_id, l.account_key ORDER BY l.posted_xid, l.entry_no) AS entry_no,
       l.kind, l.points, l.qualifying, l.source_rows, l.reason
  FROM loyalty.ledger l JOIN loyalty.program p USING (program_id);

-- The ERP's invoice header and its lines; the lines follow their header
-- (ON UPDATE CASCADE ON DELETE CASCADE).  A line's amount is an expression
-- of its columns.
CREATE TABLE hdr.invoice (
    invoice_id   int PRIMARY KEY,
    customer_id  int NOT NULL,
    invoice_date date NOT NULL,
    currency     text NOT NULL DEFAULT 'EUR',
    doc_type     text NOT NULL DEFAULT 'INV',
    due_date     date,
    paid_date    date,
    note         text
);
CREATE TABLE hdr.invoice_line (
    invoice_id   int NOT NULL REFERENCES hdr.invoice ON UPDATE CASCADE ON DELETE CASCADE,
    line_no      int NOT NULL,
    quantity     numeric(10,2) NOT NULL,
    unit_price   numeric(12,2) NOT NULL,
    discount     numeric(4,3) NOT NULL DEFAULT 0,
    product_line text,
    PRIMARY KEY (invoice_id, line_no)
);
-- One point per euro rounded half up, SOLAR x2, 10% bonus for paying on time.
SELECT loyalty.create_program('header_main', rounding => 'half_up') > 0 AS created;
SELECT loyalty.add_rule('header_main', '2024-01-01', 1, product_line_multipliers => '{"SOLAR": 2}',
                        on_time_bonus_pct => 10);

--
-- 1. Mapping errors
--

-- The lines' column that references the header, line_header_column, is
-- required with a header.
SELECT loyalty.attach('hdr.invoice_line', 'header_main', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_expression => 'quantity * unit_price',
                      header => 'hdr.invoice'::regclass);
-- The account, date and document columns are looked for on the header: a
-- wrong name is reported with the header's columns.
SELECT loyalty.attach('hdr.invoice_line', 'header_main', account_column => 'client_id',
                      date_column => 'invoice_date', amount_expression => 'quantity * unit_price',
                      header => 'hdr.invoice'::regclass, line_header_column => 'invoice_id');
-- line_header_column is looked for on the lines.
SELECT loyalty.attach('hdr.invoice_line', 'header_main', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_expression => 'quantity * unit_price',
                      header => 'hdr.invoice'::regclass, line_header_column => 'header_id');
-- The amount expression is an expression of the line's own columns.
SELECT loyalty.attach('hdr.invoice_line', 'header_main', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_expression => 'quantity * price',
                      header => 'hdr.invoice'::regclass, line_header_column => 'invoice_id');
-- A header without a single-column primary key needs header_id_column: the
-- header's own column that line_header_column references.
CREATE TABLE hdr.nokey_header (doc_no int, customer_id int, doc_date date);
SELECT loyalty.attach('hdr.invoice_line', 'header_main', account_column => 'customer_id',
                      date_column => 'doc_date', amount_expression => 'quantity * unit_price',
                      header => 'hdr.nokey_header'::regclass, line_header_column => 'invoice_id');
-- The names of 1.0, header_key_column (the lines' column) and
-- header_match_column (the header's), still work as deprecated aliases,
-- with a notice, and map the same columns; given with the new names too,
-- they are refused.
BEGIN;
SELECT loyalty.attach('hdr.invoice_line', 'header_main', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_expression => 'quantity * unit_price',
                      header => 'hdr.invoice'::regclass, header_key_column => 'invoice_id',
                      header_match_column => 'invoice_id') > 0 AS attached;
SELECT a.header, a.header_key_column, a.header_match_column
  FROM loyalty.attachment a JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'header_main' AND a.detached_at IS NULL;
ROLLBACK;
SELECT loyalty.attach('hdr.invoice_line', 'header_main', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_expression => 'quantity * unit_price',
                      header => 'hdr.invoice'::regclass, header_key_column => 'invoice_id',
                      line_header_column => 'invoice_id');

--
-- 2. Attaching the lines through the header
--

SELECT loyalty.attach('hdr.invoice_line', 'header_main',
                      account_column => 'customer_id', date_column => 'invoice_date',
                      currency_column => 'currency', doc_type_column => 'doc_type',
                      credit_note_types => '{CRN}', due_date_column => 'due_date',
                      paid_date_column => 'paid_date',
                      amount_expression => 'quantity * unit_price * (1 - discount)',
                      product_line_column => 'product_line',
                      header => 'hdr.invoice'::regclass, line_header_column => 'invoice_id') > 0 AS attached;
-- Header columns are read through alias h, line columns through alias s;
-- the header is matched on its primary key.
SELECT key_columns, account_expr, amount_expr, date_expr, currency_expr, doc_type_expr,
       due_date_expr, paid_date_expr, product_line_expr, header, header_key_column, header_match_column
  FROM loyalty.attachment a JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'header_main' AND a.detached_at IS NULL;
-- Triggers on the lines, and on the header: an UPDATE re-accrues the lines
-- of changed headers, a row trigger keeps a deleted header's facts for the
-- cascade, and TRUNCATE is refused on both.
SELECT tgrelid::regclass AS table_name, regexp_replace(tgname, '[0-9]+', 'N') AS trigger
  FROM pg_trigger WHERE tgrelid IN ('hdr.invoice'::regclass, 'hdr.invoice_line'::regclass)
   AND NOT tgisinternal ORDER BY 1, 2;

-- Headers alone earn nothing.
INSERT INTO hdr.invoice (invoice_id, customer_id, invoice_date, due_date) VALUES
    (1, 10, '2024-03-01', '2024-03-31'),
    (2, 20, '2024-03-02', '2024-04-01');
SELECT count(*) AS entries FROM hdr.ledger WHERE program = 'header_main';

-- The lines earn for the header's customer, by the header's date:
--   1/1  10 x 12.50 x (1 - 0.10)  = 112.50  SOLAR x2 = 225
--   1/2   3 x  9.99               =  29.97  -> 30
--   2/1   4 x 250.00 x (1 - 0.25) = 750.00  -> 750
--   2/2   1 x  0.49               =   0.49  -> 0
-- Customer 10: 255 points, 142.47 qualifying; customer 20: 750, 750.49.
INSERT INTO hdr.invoice_line VALUES
    (1, 1, 10, 12.50, 0.10, 'SOLAR'), (1, 2, 3, 9.99, 0, NULL),
    (2, 1, 4, 250.00, 0.25, NULL), (2, 2, 1, 0.49, 0, NULL);
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM hdr.ledger
 WHERE program = 'header_main' ORDER BY account_key, entry_no;
SELECT l.invoice_id, l.line_no, e.account_key, e.document_date, e.basis, e.product_line_multiplier,
       e.raw_points, e.points, e.on_time_bonus
  FROM hdr.invoice_line l, loyalty.explain_points('hdr.invoice_line', l.invoice_id::text, l.line_no::text) e
 ORDER BY 1, 2;

-- A line's own change re-accrues the line: 2/2 becomes 3 x 0.49 = 1.47 -> 1.
UPDATE hdr.invoice_line SET quantity = 3 WHERE invoice_id = 2 AND line_no = 2;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM hdr.ledger
 WHERE program = 'header_main' AND account_key = '20' ORDER BY entry_no;

--
-- 3. Changes on the header
--

-- Invoice 1 is paid on time: the bonus of its lines is posted, 10% of each
-- line's points rounded half up: 22.5 -> 23 and 3.0 -> 3, so +26.
UPDATE hdr.invoice SET paid_date = '2024-03-25' WHERE invoice_id = 1;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM hdr.ledger
 WHERE program = 'header_main' AND account_key = '10' ORDER BY entry_no;

-- A header column the mapping does not read: nothing is posted.
SELECT count(*) AS entries_before FROM hdr.ledger WHERE program = 'header_main' \gset
UPDATE hdr.invoice SET note = 'sent by mail';
SELECT count(*) - :entries_before AS new_entries FROM hdr.ledger WHERE program = 'header_main';

-- Invoice 2 was booked on the wrong customer: moving the header to
-- customer 30 moves its lines' 751 points and 751.47 of spend with it.
UPDATE hdr.invoice SET customer_id = 30 WHERE invoice_id = 2;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM hdr.ledger
 WHERE program = 'header_main' AND account_key IN ('20', '30') ORDER BY account_key, entry_no;

-- Renumbering an invoice renumbers its lines (ON UPDATE CASCADE): the
-- lines earn what they earned, for the customer they earned it for, so
-- nothing is posted.  Invoice 2 becomes invoice 5.
SELECT count(*) AS entries_before FROM hdr.ledger WHERE program = 'header_main' \gset
UPDATE hdr.invoice SET invoice_id = 5 WHERE invoice_id = 2;
SELECT invoice_id, line_no FROM hdr.invoice_line ORDER BY 1, 2;
SELECT count(*) - :entries_before AS new_entries FROM hdr.ledger WHERE program = 'header_main';
SELECT points, qualifying FROM loyalty.balance('header_main', '30');
SELECT count(*) AS drift FROM loyalty.verify('header_main');

-- A header turned into a credit note turns its lines negative: invoice 3's
-- one line of 40.00 earns -40.
INSERT INTO hdr.invoice (invoice_id, customer_id, invoice_date, doc_type) VALUES (3, 10, '2024-03-05', 'CRN');
INSERT INTO hdr.invoice_line VALUES (3, 1, 2, 20.00, 0, NULL);
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM hdr.ledger
 WHERE program = 'header_main' AND account_key = '10' AND entry_no > 2 ORDER BY entry_no;
SELECT count(*) AS drift FROM loyalty.verify('header_main');

--
-- 4. Deleting a header deletes its lines and reverses them exactly
--

-- Invoice 1 goes, with its two lines (ON DELETE CASCADE): the lines are
-- reversed by the facts the deleted header had -- customer 10, paid on
-- time -- so both the 255 points and the 26 of bonus come back out.
DELETE FROM hdr.invoice WHERE invoice_id = 1;
SELECT count(*) AS lines_left FROM hdr.invoice_line WHERE invoice_id = 1;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM hdr.ledger
 WHERE program = 'header_main' AND account_key = '10' ORDER BY entry_no;
-- Customer 10 is left with the credit note only: -40 points, -40.00.
SELECT points, qualifying FROM loyalty.balance('header_main', '10');

-- The same inside a transaction that also re-creates the invoice under a
-- new number: the old lines are reversed, the new ones earn.
BEGIN;
DELETE FROM hdr.invoice WHERE invoice_id = 3;
INSERT INTO hdr.invoice (invoice_id, customer_id, invoice_date, doc_type) VALUES (4, 10, '2024-03-05', 'CRN');
INSERT INTO hdr.invoice_line VALUES (4, 1, 2, 20.00, 0, NULL);
COMMIT;
SELECT points, qualifying FROM loyalty.balance('header_main', '10');
SELECT count(*) AS drift FROM loyalty.verify('header_main');

--
-- 5. A line whose header is missing is rejected
--

-- A second lines table, without a foreign key, mapped by another program
-- through the same header: a line pointing at no header cannot be accrued;
-- it is parked with the reason, the rest of the statement accrues.
CREATE TABLE hdr.manual_line (line_id int PRIMARY KEY, invoice_id int, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('header_manual') > 0 AS created;
SELECT loyalty.attach('hdr.manual_line', 'header_manual', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_column => 'amount',
                      header => 'hdr.invoice'::regclass, line_header_column => 'invoice_id') > 0 AS attached;
INSERT INTO hdr.manual_line VALUES (1, 5, 15.00), (2, 999, 25.00), (3, NULL, 5.00);
SELECT r.row_key, r.account_key, r.reason, r.row_data
  FROM loyalty.rejected_event r JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'header_manual' ORDER BY r.row_key;
SELECT account_key, kind, points, qualifying, source_rows FROM hdr.ledger WHERE program = 'header_manual';
SELECT status, reason FROM loyalty.explain_points('hdr.manual_line', '2');
-- A header change re-accrues the lines of both programs: invoice 5 moves
-- back to customer 20.
UPDATE hdr.invoice SET customer_id = 20 WHERE invoice_id = 5;
SELECT program, account_key, kind, points, qualifying, source_rows, reason FROM hdr.ledger
 WHERE program IN ('header_main', 'header_manual') AND account_key IN ('20', '30')
 ORDER BY program, account_key, entry_no;

-- Every point reconciles.
SELECT * FROM loyalty.verify('header_main');
SELECT * FROM loyalty.verify('header_manual');
