--
-- attach: mapping an ERP table onto a program.  attach() checks the
-- mapping against the table's real columns and types when it is called, so
-- that a typo fails now, with the column list in the hint, and not at the
-- first invoice of the night's bulk load.
--
-- Errors show their DETAIL and HINT; CONTEXT lines (PL/pgSQL line numbers)
-- are left out so that the output does not change with the function bodies.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE SCHEMA att;
-- The ledger of a program, without ids and timestamps.
CREATE VIEW att.ledger AS
-- entry_no: the account's entries in posting order (the ledger numbers
-- them within each transaction)
SELECT p.name AS program, l.account_key,
       pg_catalog.row_number() OVER (PARTITION BY l.program_id, l.account_key ORDER BY l.posted_xid, l.entry_no) AS entry_no,
       l.kind, l.points, l.qualifying, l.source_rows, l.reason
  FROM loyalty.ledger l JOIN loyalty.program p USING (program_id);

-- An ERP invoice table as the ERP made it.
CREATE TABLE att.invoice (
    invoice_id   int PRIMARY KEY,
    customer_id  int NOT NULL,
    amount       numeric(12,2) NOT NULL,
    invoice_date date NOT NULL,
    product_line text,
    currency     char(3),
    doc_type     text,
    due_date     date,
    paid_date    date,
    quantity_m3  numeric(10,3)
);
SELECT loyalty.create_program('attach_main') > 0 AS created;

--
-- 1. Validation errors
--

-- A missing column: the message names it, the detail says which parameter
-- named it, the hint lists the table's columns.
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'client_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'total', date_column => 'invoice_date');
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date',
                      paid_date_column => 'payment_date');

-- The account and the date are required.
SELECT loyalty.attach('att.invoice', 'attach_main', amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id', amount_column => 'amount');
-- So is an amount, for a program that accrues on amounts.
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id', date_column => 'invoice_date');

-- Wrong types.  Money is never float.
CREATE TABLE att.float_invoice (id int PRIMARY KEY, customer_id int, amount double precision,
                                amount_text text, invoice_date date, invoice_day text,
                                customer_no numeric, currency int);
SELECT loyalty.attach('att.float_invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('att.float_invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount_text', date_column => 'invoice_date');
-- A date stored as text.
SELECT loyalty.attach('att.float_invoice', 'attach_main', account_column => 'customer_id',
                      amount_expression => 'amount::numeric', date_column => 'invoice_day');
-- An account key must be an integer or text: a numeric key is refused.
SELECT loyalty.attach('att.float_invoice', 'attach_main', account_column => 'customer_no',
                      amount_expression => 'amount::numeric', date_column => 'invoice_date');
-- A currency is text.
SELECT loyalty.attach('att.float_invoice', 'attach_main', account_column => 'customer_id',
                      amount_expression => 'amount::numeric', date_column => 'invoice_date',
                      currency_column => 'currency');

-- Only tables can be attached: not a view (its rows fire no triggers of
-- ours), and not something that does not exist.
CREATE VIEW att.invoice_view AS SELECT * FROM att.invoice;
SELECT loyalty.attach('att.invoice_view', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('att.no_such_table', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');

-- An unknown program.
SELECT loyalty.attach('att.invoice', 'attach_nope', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');

-- Every row needs a key, so that an UPDATE or DELETE can be told apart from
-- a new invoice: a table without a primary key needs key_column, and the
-- columns named must be unique (a primary key or a unique index).
CREATE TABLE att.invoice_nokey (invoice_no text, customer_id int, amount numeric, invoice_date date);
SELECT loyalty.attach('att.invoice_nokey', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('att.invoice_nokey', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date', key_column => 'invoice_no');
SELECT loyalty.attach('att.invoice_nokey', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date', key_column => 'invoice_nr');
-- A unique index makes the same column a valid key.
CREATE UNIQUE INDEX ON att.invoice_nokey (invoice_no);
SELECT loyalty.attach('att.invoice_nokey', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date', key_column => 'invoice_no') > 0 AS attached;
SELECT loyalty.detach('att.invoice_nokey', 'attach_main');

-- An amount expression is checked against the table: a typo in a column
-- name is reported with the expression.
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id',
                      amount_expression => 'amount * (1 - discount)', date_column => 'invoice_date');
-- Give the amount as a column or as an expression, not both.
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', amount_expression => 'amount * 2',
                      date_column => 'invoice_date');
-- A document type column names the credit-note types, and the other way round.
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date', doc_type_column => 'doc_type');

-- A program that accrues per quantity needs the quantity column.
SELECT loyalty.create_program('attach_per_m3', basis => 'quantity') > 0 AS created;
SELECT loyalty.attach('att.invoice', 'attach_per_m3', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');

-- None of the failed calls left an attachment or a trigger behind.
SELECT count(*) AS attachments FROM loyalty.attachment WHERE source_name LIKE 'att.%' AND detached_at IS NULL;
SELECT tgrelid::regclass, count(*) FROM pg_trigger
 WHERE tgrelid IN ('att.invoice'::regclass, 'att.float_invoice'::regclass, 'att.invoice_nokey'::regclass)
 GROUP BY 1;

--
-- 2. A valid mapping, and what it creates
--

SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date',
                      product_line_column => 'product_line', currency_column => 'currency',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}',
                      due_date_column => 'due_date', paid_date_column => 'paid_date') > 0 AS attached;

-- The mapping is stored as SQL over the row (alias s); the row key is the
-- primary key.
SELECT source, source_name, key_columns, account_expr, amount_expr, quantity_expr, date_expr,
       product_line_expr, currency_expr, doc_type_expr, credit_note_types, due_date_expr,
       paid_date_expr, header, detached_at
  FROM loyalty.attachment a JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'attach_main' AND a.detached_at IS NULL;

-- Four statement-level triggers: INSERT, UPDATE and DELETE with transition
-- tables, and one that refuses TRUNCATE.
SELECT regexp_replace(tgname, '[0-9]+', 'N') AS trigger, tgenabled,
       pg_get_triggerdef(oid) ~ 'FOR EACH STATEMENT' AS per_statement,
       pg_get_triggerdef(oid) ~ 'REFERENCING' AS transition_tables
  FROM pg_trigger WHERE tgrelid = 'att.invoice'::regclass ORDER BY tgname;

-- Attaching the same program twice is refused.
SELECT loyalty.attach('att.invoice', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');

-- The invoices earn: 1 point per euro, toward zero.
INSERT INTO att.invoice (invoice_id, customer_id, amount, invoice_date, currency)
VALUES (1, 42, 120.90, '2024-05-02', 'EUR'), (2, 42, 80.00, '2024-05-03', 'EUR');
SELECT * FROM att.ledger WHERE program = 'attach_main' ORDER BY account_key, entry_no;

--
-- 3. TRUNCATE of an attached table is refused
--

-- TRUNCATE fires no row events, so the points of the removed invoices would
-- stay: it is refused, with what to do instead.
TRUNCATE att.invoice;
SELECT count(*) AS invoices FROM att.invoice;

--
-- 4. Several programs on the same table
--

-- A second program, a tenth of a point per euro rounded half up, reads the
-- same invoices; each program has its own triggers and its own ledger.
SELECT loyalty.create_program('attach_second', points_per_unit => 0.1, rounding => 'half_up') > 0 AS created;
SELECT loyalty.attach('att.invoice', 'attach_second', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
-- 250.00 EUR: 250 points in attach_main, 25.0 -> 25 in attach_second.
-- (Invoices 1 and 2, inserted before attach_second was attached, are not
-- in its ledger: loyalty.backfill() is for history.)
INSERT INTO att.invoice (invoice_id, customer_id, amount, invoice_date, currency)
VALUES (3, 42, 250.00, '2024-05-10', 'EUR');
SELECT * FROM att.ledger WHERE program IN ('attach_main', 'attach_second') ORDER BY program, account_key, entry_no;
SELECT count(*) AS drift FROM loyalty.verify('attach_main');

--
-- 5. detach
--

-- detach drops the program's triggers; what was accrued stays, and the
-- attachment row stays for the audit trail with its detach time.
SELECT loyalty.detach('att.invoice', 'attach_second');
SELECT regexp_replace(tgname, '[0-9]+', 'N') AS trigger, count(*)
  FROM pg_trigger WHERE tgrelid = 'att.invoice'::regclass GROUP BY 1 ORDER BY 1;
SELECT detached_at IS NOT NULL AS detached
  FROM loyalty.attachment a JOIN loyalty.program p USING (program_id) WHERE p.name = 'attach_second';
-- New invoices earn only in the program still attached: 10.00 EUR is 10
-- points in attach_main, nothing in attach_second.
INSERT INTO att.invoice (invoice_id, customer_id, amount, invoice_date, currency)
VALUES (4, 42, 10.00, '2024-05-11', 'EUR');
SELECT program, account_key, entry_no, kind, points FROM att.ledger
 WHERE program IN ('attach_main', 'attach_second') ORDER BY program, account_key, entry_no;

-- Detaching a program that is not attached (any more) is an error.
SELECT loyalty.detach('att.invoice', 'attach_second');
SELECT loyalty.detach('att.float_invoice', 'attach_main');
SELECT loyalty.detach('att.invoice', 'attach_nope');

-- With every program detached, TRUNCATE is the ERP's business again.
CREATE TABLE att.scratch (id int PRIMARY KEY, customer_id int, amount numeric, invoice_date date);
SELECT loyalty.attach('att.scratch', 'attach_second', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
TRUNCATE att.scratch;
SELECT loyalty.detach('att.scratch', 'attach_second');
TRUNCATE att.scratch;

--
-- 6. Account keys: int, bigint and text
--

-- The account key is stored as text, whatever its type in the ERP.
CREATE TABLE att.bigint_invoice (id bigint PRIMARY KEY, customer_id bigint, amount numeric, invoice_date date);
CREATE TABLE att.text_invoice (id text PRIMARY KEY, customer_code varchar(20), amount int, invoice_date timestamp);
SELECT loyalty.create_program('attach_keys') > 0 AS created;
SELECT loyalty.attach('att.bigint_invoice', 'attach_keys', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
-- An integer amount and a timestamp document date are accepted as well.
SELECT loyalty.attach('att.text_invoice', 'attach_keys', account_column => 'customer_code',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
INSERT INTO att.bigint_invoice VALUES (9000000000, 9007199254740993, 15.5, '2024-06-01');
INSERT INTO att.text_invoice VALUES ('INV-1', 'CUST-007', 30, '2024-06-01 23:30:00');
INSERT INTO att.invoice (invoice_id, customer_id, amount, invoice_date, currency) VALUES (5, -7, 1.00, '2024-06-01', 'EUR');
SELECT program, account_key, kind, points, qualifying FROM att.ledger
 WHERE program = 'attach_keys' OR (program = 'attach_main' AND account_key = '-7')
 ORDER BY program, account_key;
SELECT account_key, enrolled_by
  FROM loyalty.account JOIN loyalty.program USING (program_id) WHERE name = 'attach_keys' ORDER BY 1;

--
-- 7. Composite row keys
--

-- Order lines keyed by (order, line number): the primary key is found by
-- itself, in its column order.
CREATE TABLE att.order_line (order_id int, line_no int, customer_id int NOT NULL,
                             amount numeric(12,2) NOT NULL, order_date date NOT NULL,
                             PRIMARY KEY (order_id, line_no));
SELECT loyalty.create_program('attach_lines') > 0 AS created;
SELECT loyalty.attach('att.order_line', 'attach_lines', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'order_date') > 0 AS attached;
-- Order lines keyed by (order, product), with only a unique constraint:
-- key_column names the columns, in any order.
CREATE TABLE att.order_product (order_id int, product text, customer_id int NOT NULL,
                                amount numeric(12,2) NOT NULL, order_date date NOT NULL,
                                UNIQUE (product, order_id));
SELECT loyalty.attach('att.order_product', 'attach_lines', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'order_date',
                      key_column => 'order_id, product') > 0 AS attached;
-- A subset of the unique columns is not a key.
SELECT loyalty.attach('att.order_line', 'attach_main', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'order_date', key_column => 'order_id');
SELECT source_name, key_columns
  FROM loyalty.attachment a JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'attach_lines' ORDER BY source_name;

-- Two lines of one order and a line of another: one ledger entry per
-- account per statement; updating one line by its full key corrects it.
INSERT INTO att.order_line VALUES (1001, 1, 7, 100.00, '2024-06-03'), (1001, 2, 7, 50.00, '2024-06-03'),
                                  (1002, 1, 8, 20.00, '2024-06-04');
INSERT INTO att.order_product VALUES (1001, 'PANEL', 7, 40.00, '2024-06-03'), (1001, 'CABLE', 7, 5.00, '2024-06-03');
UPDATE att.order_line SET amount = 60.00 WHERE order_id = 1001 AND line_no = 2;
SELECT account_key, entry_no, kind, points, qualifying, source_rows, reason FROM att.ledger
 WHERE program = 'attach_lines' ORDER BY account_key, entry_no;
SELECT count(*) AS drift FROM loyalty.verify('attach_lines');
SELECT count(*) AS drift FROM loyalty.verify('attach_keys');

--
-- 8. A partitioned invoice table
--

-- ERP invoice tables are often partitioned by date.  The parent is
-- attached, with a notice: rows the ERP writes through it earn, whatever
-- partition they land in, and verify and explain_points see every
-- partition; a row written straight into a partition bypasses the parent's
-- statement triggers.
CREATE TABLE att.invoice_part (invoice_id int, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                               invoice_date date NOT NULL, PRIMARY KEY (invoice_id, invoice_date))
    PARTITION BY RANGE (invoice_date);
CREATE TABLE att.invoice_part_2024 PARTITION OF att.invoice_part FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE att.invoice_part_2025 PARTITION OF att.invoice_part FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
SELECT loyalty.create_program('attach_partitioned') > 0 AS created;
SELECT loyalty.attach('att.invoice_part', 'attach_partitioned', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
INSERT INTO att.invoice_part VALUES (1, 42, 100.00, '2024-07-01'), (2, 42, 30.00, '2025-07-02');
UPDATE att.invoice_part SET invoice_date = '2025-07-01' WHERE invoice_id = 1;
SELECT points, qualifying FROM loyalty.balance('attach_partitioned', '42');
SELECT count(*) AS drift FROM loyalty.verify('attach_partitioned');
SELECT program, account_key, status, points FROM loyalty.explain_points('att.invoice_part', '1', '2025-07-01');

-- Every program is consistent.
SELECT p.name, count(v.*) AS drift
  FROM loyalty.program p LEFT JOIN LATERAL loyalty.verify(p.name) v ON true
 WHERE p.name LIKE 'attach%' GROUP BY 1 ORDER BY 1;
