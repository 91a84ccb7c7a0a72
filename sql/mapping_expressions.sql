--
-- mapping_expressions: what attach() accepts as a mapping, and what it
-- stores.  An amount expression is one deterministic scalar expression of
-- the row's columns, numeric or integer, never float; it is parsed alone
-- (no text of it is pasted into other SQL), and stored in a canonical form
-- printed from its parse tree.  Columns are mapped from the catalog, quoted,
-- never by editing SQL text.  A mapped column cannot be renamed from under
-- an attachment.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA mex;
SELECT loyalty.create_program('mapping_nw') > 0 AS created;

--
-- 1. Money is never float
--

-- Northwind's order details: unit_price and discount are real.
CREATE TABLE mex.order_details (order_id int, product_id int, customer_id text NOT NULL, order_date date NOT NULL,
                                unit_price real NOT NULL, quantity smallint NOT NULL, discount real NOT NULL,
                                PRIMARY KEY (order_id, product_id));
INSERT INTO mex.order_details VALUES
    (10248, 11, 'VINET', '1996-07-04', 14, 12, 0),
    (10248, 42, 'VINET', '1996-07-04', 9.8, 10, 0),
    (10250, 51, 'HANAR', '1996-07-08', 42.4, 35, 0.15),
    (10250, 65, 'HANAR', '1996-07-08', 16.8, 15, 0.15),
    (10251, 22, 'VICTE', '1996-07-08', 16.8, 6, 0.05),
    (10251, 57, 'VICTE', '1996-07-08', 15.6, 15, 0.05),
    (10258, 2, 'ERNSH', '1996-07-17', 15.2, 50, 0.2),
    (10258, 5, 'ERNSH', '1996-07-17', 17, 65, 0.2),
    (10260, 41, 'OTTIK', '1996-07-19', 7.7, 16, 0.25),
    (10263, 74, 'ERNSH', '1996-07-23', 8, 36, 0.25);
-- Computed in floating point, most lines are off the exact decimal amount.
SELECT count(*) FILTER (WHERE (unit_price * quantity * (1 - discount))::numeric
                              <> unit_price::numeric * quantity * (1 - discount::numeric)) AS lines_off,
       count(*) AS lines
  FROM mex.order_details;
-- So the float expression is refused, with the way out in the hint ...
SELECT loyalty.attach('mex.order_details', 'mapping_nw', account_column => 'customer_id',
                      date_column => 'order_date', amount_expression => 'unit_price * quantity * (1 - discount)');
-- ... as is any part computed in float, a float constant included ...
SELECT loyalty.attach('mex.order_details', 'mapping_nw', account_column => 'customer_id',
                      date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::float8)::numeric');
SELECT loyalty.attach('mex.order_details', 'mapping_nw', account_column => 'customer_id',
                      date_column => 'order_date', amount_expression => 'quantity * 1.5::float8');
-- ... and an expression that is not money at all.
SELECT loyalty.attach('mex.order_details', 'mapping_nw', account_column => 'customer_id',
                      date_column => 'order_date', amount_expression => 'customer_id || ''x''');
-- Each float column cast to numeric first: accepted, and exact.
SELECT loyalty.attach('mex.order_details', 'mapping_nw', account_column => 'customer_id',
                      date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)') > 0 AS attached;
SELECT loyalty.backfill('mex.order_details', 'mapping_nw', since => '-infinity');
-- The exact decimal amounts, per customer, in plain SQL: the qualifying
-- spend matches to the cent, and each line earns the whole part of its
-- amount.
WITH exact AS (SELECT customer_id, sum(unit_price::numeric * quantity * (1 - discount::numeric)) AS spend
                 FROM mex.order_details GROUP BY 1)
SELECT e.customer_id, e.spend, b.qualifying, b.qualifying = e.spend AS exact,
       b.points = (SELECT sum(trunc(d.unit_price::numeric * d.quantity * (1 - d.discount::numeric)))
                     FROM mex.order_details d WHERE d.customer_id = e.customer_id) AS points_match
  FROM exact e JOIN loyalty.balance b ON b.account_key = e.customer_id
 WHERE b.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'mapping_nw')
 ORDER BY 1;
INSERT INTO mex.order_details VALUES (10264, 2, 'FOLKO', '1996-07-24', 15.2, 35, 0);
UPDATE mex.order_details SET discount = 0.1 WHERE order_id = 10250 AND product_id = 51;
SELECT count(*) AS drift FROM loyalty.verify('mapping_nw');
SELECT loyalty.detach('mex.order_details', 'mapping_nw');

--
-- 2. One deterministic scalar expression of the row
--

CREATE TABLE mex.invoice (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                          discount numeric(4,3) NOT NULL DEFAULT 0, invoice_date date NOT NULL);
-- A second statement, a FROM clause, a UNION or a bare *: not one expression.
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount; DROP TABLE mex.invoice');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount FROM mex.invoice');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount UNION SELECT 1');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => '*');
-- Sub-selects, aggregates, window and set-returning functions would make
-- every later ERP write fail: refused now.
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount * (SELECT max(discount) FROM mex.invoice)');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'sum(amount)');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount - lag(amount) OVER ()');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'generate_series(1, 2) * amount');
-- A volatile function: a reversal must recompute exactly what was earned.
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount * random()::numeric');
-- Nor the session's clock, time zone or settings: built-in stable functions
-- and CURRENT_DATE-style values give another amount on another day.
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'CASE WHEN now() < ''2027-01-01'' THEN amount ELSE 0 END');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount * (current_date - invoice_date)');
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'amount * current_setting(''my.rate'')::numeric');
-- System columns and whole-row references are not the row's columns.
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'xmin::text::numeric');
-- A function of the user's own is found by its schema (attach parses with
-- search_path = pg_catalog), and stored qualified.
CREATE FUNCTION mex.net(amount numeric, discount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE RETURN round(amount * (1 - discount), 2);
SET search_path = mex, public;
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'net(amount, discount)');
RESET search_path;
SELECT loyalty.attach('mex.invoice', 'mapping_nw', account_column => 'customer_id', date_column => 'invoice_date',
                      amount_expression => 'mex.net(amount, discount) + 0 * id') > 0 AS attached;
-- Stored as printed from the parse tree: qualified, columns over alias s.
SELECT account_expr, amount_expr, date_expr FROM loyalty.attachment
 WHERE source = 'mex.invoice'::regclass AND detached_at IS NULL;
INSERT INTO mex.invoice VALUES (1, 42, 100.00, 0.125, '2024-05-01'), (2, 42, 19.99, 0, '2024-05-02');
-- round(100 * 0.875, 2) + 19.99 = 107.49
SELECT qualifying FROM loyalty.balance('mapping_nw', '42');
SELECT loyalty.detach('mex.invoice', 'mapping_nw');

--
-- 3. Column names are quoted from the catalog
--

-- A header whose customer column is named "cus.s.tomer", next to a
-- "cuh.h.tomer" (the sales rep): the mapping names the first, whatever the
-- dots in it, and the customer earns.
CREATE TABLE mex.order_header ("order no" int PRIMARY KEY, "cus.s.tomer" int NOT NULL, "cuh.h.tomer" int NOT NULL,
                               "s.date" date NOT NULL);
CREATE TABLE mex.order_line ("order no" int, line int, "s.amount" numeric(12,2) NOT NULL,
                             PRIMARY KEY ("order no", line));
SELECT loyalty.create_program('mapping_quoted') > 0 AS created;
SELECT loyalty.attach('mex.order_line', 'mapping_quoted', header => 'mex.order_header',
                      line_header_column => 'order no', account_column => 'cus.s.tomer',
                      date_column => 's.date', amount_column => 's.amount') > 0 AS attached;
SELECT account_expr, amount_expr, date_expr, header_key_column, header_match_column FROM loyalty.attachment
 WHERE source = 'mex.order_line'::regclass AND detached_at IS NULL;
INSERT INTO mex.order_header VALUES (1, 7, 900, '2024-05-01');
INSERT INTO mex.order_line VALUES (1, 1, 40.00), (1, 2, 2.50);
-- 42.50 for customer 7; nothing for the rep, 900.
SELECT account_key, points, qualifying FROM loyalty.balance
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'mapping_quoted') ORDER BY 1;

--
-- 4. loyalty's own tables are not ERP tables
--

-- (Their writes are the accrual's own: an accrual trigger on the ledger
-- would post into the ledger, which fires it again, and again.)
SELECT loyalty.attach('loyalty.ledger', 'mapping_quoted', account_column => 'account_key',
                      date_column => 'posted_at', amount_column => 'points');
SELECT loyalty.attach('mex.order_line', 'mapping_nw', header => 'loyalty.account', line_header_column => 'order no',
                      header_id_column => 'account_key', account_column => 'account_key',
                      date_column => 'enrolled_from', amount_column => 's.amount');

--
-- 5. Renaming a mapped column
--

-- Refused when the ALTER TABLE ends, with what to do.  On the lines ...
ALTER TABLE mex.order_line RENAME COLUMN "s.amount" TO net_amount;
-- ... and on the header.
ALTER TABLE mex.order_header RENAME COLUMN "cus.s.tomer" TO customer_id;
ALTER TABLE mex.order_header DROP COLUMN "s.date";
-- Columns nobody maps are the ERP's business.
ALTER TABLE mex.order_header RENAME COLUMN "cuh.h.tomer" TO sales_rep;
ALTER TABLE mex.order_line ADD COLUMN note text;
-- A rename that got through anyway (here: with the check switched off)
-- fails the ERP's writes with an error that names the program and the
-- table and says how to repair it, not "column does not exist" pointing
-- into the ERP's own INSERT.
ALTER EVENT TRIGGER loyalty_check_mapped_columns DISABLE;
ALTER TABLE mex.order_header RENAME COLUMN "cus.s.tomer" TO customer_id;
ALTER EVENT TRIGGER loyalty_check_mapped_columns ENABLE;
INSERT INTO mex.order_line VALUES (1, 3, 1.00);
-- Detach and attach again with the new name: the writes accrue again.
SELECT loyalty.detach('mex.order_line', 'mapping_quoted');
SELECT loyalty.attach('mex.order_line', 'mapping_quoted', header => 'mex.order_header',
                      line_header_column => 'order no', account_column => 'customer_id',
                      date_column => 's.date', amount_column => 's.amount') > 0 AS attached;
INSERT INTO mex.order_line VALUES (1, 3, 1.00);
SELECT account_key, points, qualifying FROM loyalty.balance
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'mapping_quoted') ORDER BY 1;

-- Every program is consistent.
SELECT p.name, count(v.*) AS drift
  FROM loyalty.program p LEFT JOIN LATERAL loyalty.verify(p.name) v ON true
 WHERE p.name LIKE 'mapping%' GROUP BY 1 ORDER BY 1;
