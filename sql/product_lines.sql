--
-- product_lines: the product line of an invoice line read from the product
-- master, on a Northwind-shaped schema.  The lines (order_details) name
-- their product; the product's category_id is the product line, looked up
-- once per statement.  A product moved to another category later changes
-- nothing already earned: the line it had stays in force for the documents
-- dated before the move (loyalty.product_history).
--
-- Decision: the product line is the product table's own column
-- (products.category_id); a further join (categories.category_name) is not
-- mapped.  Category ids are stable where names get renamed, and a renamed
-- category must not change what was earned; the multiplier map is built by
-- name from categories when the rule is added.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA nw;
CREATE TABLE nw.categories (
    category_id   int PRIMARY KEY,
    category_name text NOT NULL UNIQUE
);
CREATE TABLE nw.products (
    product_id   int PRIMARY KEY,
    product_name text NOT NULL,
    category_id  int REFERENCES nw.categories,
    unit_price   real
);
CREATE TABLE nw.orders (
    order_id    int PRIMARY KEY,
    customer_id text NOT NULL,
    order_date  date NOT NULL,
    doc_type    text NOT NULL DEFAULT 'INV'
);
-- No foreign key to products: an ERP import may name a product that is not
-- (yet) in the master.
CREATE TABLE nw.order_details (
    order_id   int NOT NULL REFERENCES nw.orders ON DELETE CASCADE,
    product_id int NOT NULL,
    unit_price real NOT NULL,
    quantity   smallint NOT NULL,
    discount   real NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, product_id)
);
INSERT INTO nw.categories VALUES (1, 'Beverages'), (2, 'Condiments'), (3, 'Confections'), (4, 'Dairy Products');
INSERT INTO nw.products VALUES
    (1, 'Chai', 1, 18), (2, 'Chang', 1, 19), (3, 'Aniseed Syrup', 2, 10),
    (16, 'Pavlova', 3, 17.45), (11, 'Queso Cabrales', 4, 21), (77, 'Original Frankfurter', NULL, 13);

-- One point per unit of money, rounded half up; Beverages x2, Confections
-- x1.5, by name, through categories.
SELECT loyalty.create_program('northwind', rounding => 'half_up') > 0 AS created;
SELECT loyalty.add_rule('northwind', '1996-01-01', 1, product_line_multipliers =>
    (SELECT jsonb_object_agg(c.category_id, m.factor)
       FROM nw.categories c JOIN (VALUES ('Beverages', 2), ('Confections', 1.5)) AS m(name, factor)
         ON m.name = c.category_name));

-- What each line should earn, computed from the ERP rows alone: the
-- category in force on the order's date (product_moves lists the moves this
-- test makes: before moved_on the product was in old_category), its
-- multiplier by name, the amount from the real columns cast to numeric.
CREATE TABLE nw.product_moves (product_id int, old_category int, moved_on date);
CREATE VIEW nw.expected AS
SELECT o.customer_id,
       sum(round((CASE WHEN o.doc_type = 'CRN' THEN -1 ELSE 1 END)
                 * d.unit_price::numeric * d.quantity * (1 - d.discount::numeric)
                 * coalesce(m.factor, 1))) AS points
  FROM nw.order_details d
  JOIN nw.orders o USING (order_id)
  LEFT JOIN nw.products p USING (product_id)
  LEFT JOIN LATERAL (SELECT x.old_category, true AS moved FROM nw.product_moves x
                     WHERE x.product_id = d.product_id AND o.order_date < x.moved_on
                     ORDER BY x.moved_on LIMIT 1) mv ON true
  LEFT JOIN nw.categories c ON c.category_id = CASE WHEN mv.moved THEN mv.old_category ELSE p.category_id END
  LEFT JOIN (VALUES ('Beverages', 2), ('Confections', 1.5)) AS m(name, factor) ON m.name = c.category_name
 GROUP BY o.customer_id;
-- The balances against that, and verify(): both empty when all is exact.
CREATE VIEW nw.drift AS
SELECT e.customer_id, e.points AS expected, b.points AS actual
  FROM nw.expected e, LATERAL loyalty.balance('northwind', e.customer_id) b
 WHERE b.points <> e.points
UNION ALL
SELECT v.account_key, v.expected, v.actual FROM loyalty.verify('northwind') v;

--
-- 1. attach() with the product table
--
-- errors first: product without its lines' column, a column of neither
-- table, keys of different types, a product column that is no key
SELECT loyalty.attach('nw.order_details', 'northwind', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      header => 'nw.orders', line_header_column => 'order_id',
                      product => 'nw.products', product_line_column => 'category_id');
SELECT loyalty.attach('nw.order_details', 'northwind', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      header => 'nw.orders', line_header_column => 'order_id',
                      product => 'nw.products', line_product_column => 'product_id', product_line_column => 'category');
SELECT loyalty.attach('nw.order_details', 'northwind', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      header => 'nw.orders', line_header_column => 'order_id',
                      product => 'nw.products', line_product_column => 'quantity', product_line_column => 'category_id');
SELECT loyalty.attach('nw.order_details', 'northwind', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      header => 'nw.orders', line_header_column => 'order_id',
                      product => 'nw.products', line_product_column => 'product_id', product_id_column => 'category_id',
                      product_line_column => 'category_id');
SELECT loyalty.attach('nw.order_details', 'northwind', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      line_product_column => 'product_id');
SELECT loyalty.attach('nw.order_details', 'northwind', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      product => 'loyalty.ledger', line_product_column => 'product_id', product_line_column => 'kind');
-- the attachment (product_id_column defaults to the products' primary key)
SELECT loyalty.attach('nw.order_details', 'northwind', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      key_column => 'order_id, product_id',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}',
                      header => 'nw.orders', line_header_column => 'order_id',
                      product => 'nw.products', line_product_column => 'product_id',
                      product_line_column => 'category_id') > 0 AS attached;
SELECT product::text, line_product_column, product_id_column, product_line_expr
  FROM loyalty.attachment WHERE source = 'nw.order_details'::regclass;

--
-- 2. Inserts, updates, deletes, credit notes
--
INSERT INTO nw.orders VALUES (10248, 'VINET', '1996-07-04'), (10249, 'TOMSP', '1996-07-05'),
                             (10250, 'HANAR', '1996-07-08');
-- one statement, many lines, one look-up of their products
INSERT INTO nw.order_details VALUES
    (10248, 11, 14, 12, 0), (10248, 1, 14.4, 10, 0.05), (10248, 16, 13.9, 5, 0),
    (10249, 2, 15.2, 9, 0.15), (10249, 3, 8, 4, 0),
    (10250, 77, 10.4, 35, 0.15), (10250, 1, 14.4, 15, 0.15);
SELECT customer_id, points FROM nw.expected ORDER BY 1;
SELECT * FROM nw.drift;
-- the product line each line earned by, as explain_points shows it
SELECT e.product_line, e.product_line_multiplier, e.points
  FROM loyalty.explain_points('nw.order_details', 10248, 1) e;
SELECT e.product_line, e.product_line_multiplier, e.points
  FROM loyalty.explain_points('nw.order_details', 10248, 11) e;
-- a line moved to another product (Chai -> Pavlova), a quantity changed, a line deleted
UPDATE nw.order_details SET product_id = 16 WHERE order_id = 10249 AND product_id = 2;
UPDATE nw.order_details SET quantity = 20 WHERE order_id = 10250 AND product_id = 1;
DELETE FROM nw.order_details WHERE order_id = 10248 AND product_id = 11;
SELECT * FROM nw.drift;
-- a credit note
INSERT INTO nw.orders VALUES (10251, 'VINET', '1996-07-08', 'CRN');
INSERT INTO nw.order_details VALUES (10251, 1, 14.4, 3, 0);
SELECT customer_id, points FROM nw.expected ORDER BY 1;
SELECT * FROM nw.drift;

--
-- 3. A product whose row is not in the product master: no product line,
-- so no product-line multiplier; it earns, it is not parked.
--
INSERT INTO nw.orders VALUES (10252, 'SUPRD', '1996-07-09');
INSERT INTO nw.order_details VALUES (10252, 99, 64.8, 40, 0.05), (10252, 1, 10, 10, 0);
SELECT e.product_line, e.product_line_multiplier, e.points, e.status
  FROM loyalty.explain_points('nw.order_details', 10252, 99) e;
SELECT count(*) AS parked FROM loyalty.rejected_event r JOIN loyalty.attachment a USING (attachment_id)
 WHERE a.source = 'nw.order_details'::regclass AND r.resolved_at IS NULL;
SELECT * FROM nw.drift;

--
-- 4. A product moved to another category after its lines accrued: Chai
-- (Beverages x2) becomes a Condiment.  Its lines keep what they earned; a
-- reversal takes back exactly that; lines dated from tomorrow earn by the
-- new category; a line inserted now but dated before the move still earns
-- by the category it had then.
--
SELECT b.points AS vinet_before FROM loyalty.balance('northwind', 'VINET') b;
UPDATE nw.products SET category_id = 2 WHERE product_id = 1;
INSERT INTO nw.product_moves VALUES (1, 1, current_date + 1);
SELECT product_key, valid_until = current_date + 1 AS from_tomorrow, product_line
  FROM loyalty.product_history ORDER BY 1, 2;
SELECT b.points AS vinet_after FROM loyalty.balance('northwind', 'VINET') b;
SELECT * FROM nw.drift;
-- the old lines still explain as Beverages
SELECT e.product_line, e.product_line_multiplier, e.points
  FROM loyalty.explain_points('nw.order_details', 10248, 1) e;
-- a new order dated tomorrow earns by Condiments, one dated in 1996 by Beverages
INSERT INTO nw.orders VALUES (10260, 'VINET', current_date + 1), (10261, 'VINET', '1996-07-20');
INSERT INTO nw.order_details VALUES (10260, 1, 18, 10, 0), (10261, 1, 18, 10, 0);
SELECT o.order_id, e.product_line, e.product_line_multiplier, e.points
  FROM nw.orders o, LATERAL loyalty.explain_points('nw.order_details', o.order_id, 1) e
 WHERE o.order_id IN (10260, 10261) ORDER BY 1;
SELECT * FROM nw.drift;
-- reversal of a line that earned before the move takes back what it earned
DELETE FROM nw.order_details WHERE order_id = 10248 AND product_id = 1;
UPDATE nw.order_details SET quantity = 30 WHERE order_id = 10250 AND product_id = 1;
SELECT * FROM nw.drift;
-- a second move, now that a document dated tomorrow earned by Condiments:
-- Confections apply from the day after it, Condiments until then
UPDATE nw.products SET category_id = 3 WHERE product_id = 1;
INSERT INTO nw.product_moves VALUES (1, 2, current_date + 2);
SELECT product_key, valid_until - current_date AS days_from_today, product_line
  FROM loyalty.product_history ORDER BY 1, 2;
SELECT * FROM nw.drift;
UPDATE nw.order_details SET quantity = quantity + 1 WHERE product_id = 1;
SELECT * FROM nw.drift;
-- an update of another column records nothing
UPDATE nw.products SET unit_price = 20 WHERE product_id = 16;
SELECT count(*) AS history_rows FROM loyalty.product_history;

--
-- 5. A product deleted, and one inserted after lines named it: the lines
-- keep the line they earned by.
--
-- (after the latest accrued document, dated tomorrow, as above)
DELETE FROM nw.products WHERE product_id = 77;
INSERT INTO nw.products VALUES (99, 'Mishi Kobe Niku', 3, 97);
-- a product inserted that no line names records nothing
INSERT INTO nw.products VALUES (100, 'Unsold', 3, 1);
INSERT INTO nw.product_moves VALUES (77, NULL, current_date + 2), (99, NULL, current_date + 2);
SELECT product_key, valid_until - current_date AS days_from_today, product_line
  FROM loyalty.product_history ORDER BY 1, 2;
UPDATE nw.order_details SET quantity = quantity + 1 WHERE product_id IN (77, 99);
SELECT * FROM nw.drift;
-- an order of product 99 dated tomorrow earns without a product line, as
-- the lines before it did; one dated three days from now by Confections
INSERT INTO nw.orders VALUES (10262, 'VINET', current_date + 3);
INSERT INTO nw.order_details VALUES (10260, 99, 50, 2, 0), (10262, 99, 50, 2, 0);
SELECT o.order_id, e.product_line, e.product_line_multiplier, e.points
  FROM nw.orders o, LATERAL loyalty.explain_points('nw.order_details', o.order_id, 99) e
 WHERE o.order_id IN (10260, 10262) ORDER BY 1;
SELECT * FROM nw.drift;

--
-- 6. backfill follows the same mapping: a second program attached to the
-- same tables afterwards prices every line by the product master (it has
-- no history of its own yet, so by today's categories), as its trigger
-- would, and verify() agrees.
--
SELECT loyalty.create_program('northwind_late', rounding => 'half_up') > 0 AS created;
SELECT loyalty.add_rule('northwind_late', '1996-01-01', 1, product_line_multipliers =>
    (SELECT jsonb_object_agg(c.category_id, m.factor)
       FROM nw.categories c JOIN (VALUES ('Beverages', 2), ('Confections', 1.5)) AS m(name, factor)
         ON m.name = c.category_name));
SELECT loyalty.attach('nw.order_details', 'northwind_late', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'unit_price::numeric * quantity * (1 - discount::numeric)',
                      key_column => 'order_id, product_id',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}',
                      header => 'nw.orders', line_header_column => 'order_id',
                      product => 'nw.products', line_product_column => 'product_id',
                      product_line_column => 'category_id') > 0 AS attached;
SELECT source_rows FROM loyalty.backfill('nw.order_details', 'northwind_late', '1996-01-01');
SELECT * FROM loyalty.verify('northwind_late');
SELECT b.points AS late_vinet FROM loyalty.balance('northwind_late', 'VINET') b;
SELECT sum(round(d.unit_price::numeric * d.quantity * (1 - d.discount::numeric)
                 * CASE p.category_id WHEN 1 THEN 2 WHEN 3 THEN 1.5 ELSE 1 END
                 * CASE WHEN o.doc_type = 'CRN' THEN -1 ELSE 1 END)) AS late_vinet_expected
  FROM nw.order_details d JOIN nw.orders o USING (order_id) LEFT JOIN nw.products p USING (product_id)
 WHERE o.customer_id = 'VINET';

--
-- 7. detach drops the product table's triggers; TRUNCATE of it is refused
-- while attached
--
TRUNCATE nw.products CASCADE;
SELECT loyalty.detach('nw.order_details', 'northwind_late');
SELECT loyalty.detach('nw.order_details', 'northwind');
SELECT count(*) AS loyalty_triggers_left FROM pg_trigger WHERE tgrelid = 'nw.products'::regclass AND tgname LIKE 'loyalty%';
