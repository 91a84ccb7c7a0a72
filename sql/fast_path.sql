--
-- fast_path: points and qualifying spend are computed in 128-bit integers
-- for the amounts real ERPs produce: quantity * unit_price * (1 - discount)
-- has 9 decimals, total / parts up to 20, an on-time bonus of 12.5 % is
-- 0.125 at display scale 20.  A row whose product needs more than 38
-- decimals (the SLOW product line's multiplier has 32 or 19) or more than
-- 128 bits falls back to numeric.  Both give exactly what numeric
-- arithmetic in plain SQL gives, and what explain_points (which always
-- computes in numeric) shows for the same row.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';
CREATE SCHEMA fp;
-- One account per row: each balance is one row's points and spend.
CREATE VIEW fp.balance AS
SELECT p.name AS program, b.account_key, b.points, b.qualifying
  FROM loyalty.balance b JOIN loyalty.program p USING (program_id);

--
-- 1. Nine decimals: quantity * unit_price * (1 - discount)
--
CREATE TABLE fp.line (
    id         int PRIMARY KEY,
    customer   text NOT NULL,
    day        date NOT NULL,
    qty        numeric(12,3) NOT NULL,
    unit_price numeric(12,4) NOT NULL,
    discount   numeric(5,2) NOT NULL,
    line       text,
    due        date,
    paid       date
);
SELECT loyalty.create_program('fp_nine', rounding => 'half_up') > 0 AS created;
SELECT loyalty.add_rule('fp_nine', '2024-01-01', 1,
         product_line_multipliers => '{"FAST": 1.5, "SLOW": 1.00000000000000000000000000000001}',
         on_time_bonus_pct => 12.5);
SELECT loyalty.attach('fp.line', 'fp_nine', key_column => 'id', account_column => 'customer',
         date_column => 'day', amount_expression => 'qty * unit_price * (1 - discount)',
         product_line_column => 'line', due_date_column => 'due', paid_date_column => 'paid') > 0 AS attached;

-- 300 rows, a third on each line, half paid on time; then amounts that are
-- exactly halfway between two points (2.5, 3.75 on FAST, 0.5).
INSERT INTO fp.line
SELECT g, 'L' || g, DATE '2024-03-01' + g % 20,
       (g % 17) + 0.125 * (g % 8), 9.9999 - g * 0.0137, (g % 5) * 0.05,
       (ARRAY['FAST', 'SLOW', NULL])[1 + g % 3],
       DATE '2024-05-01', CASE WHEN g % 2 = 0 THEN DATE '2024-04-15' END
  FROM generate_series(1, 300) g;
INSERT INTO fp.line VALUES
    (1001, 'H1', '2024-03-01', 1, 2.5, 0, NULL, NULL, NULL),
    (1002, 'H2', '2024-03-01', 1, 2.5, 0, 'FAST', NULL, NULL),
    (1003, 'H3', '2024-03-01', 2, 0.25, 0, NULL, NULL, NULL),
    (1004, 'H4', '2024-03-01', 0.5, 1, 0, 'SLOW', NULL, NULL);

-- What each row earns, in plain numeric SQL (round() rounds half away from zero).
CREATE VIEW fp.line_expected AS
SELECT 'fp_nine'::text AS program, customer AS account_key,
       pts + CASE WHEN paid <= due THEN round(pts * 0.125) ELSE 0 END AS points, amount AS qualifying
  FROM (SELECT customer, due, paid, qty * unit_price * (1 - discount) AS amount,
               round(qty * unit_price * (1 - discount)
                     * CASE line WHEN 'FAST' THEN 1.5 WHEN 'SLOW' THEN 1.00000000000000000000000000000001 ELSE 1 END) AS pts
          FROM fp.line) x;

SELECT count(*) AS rows,
       count(*) FILTER (WHERE b.points = e.points) AS points_exact,
       count(*) FILTER (WHERE b.qualifying = e.qualifying) AS qualifying_exact
  FROM fp.line_expected e LEFT JOIN fp.balance b USING (program, account_key);
SELECT e.account_key, b.points, e.points AS expected_points, b.qualifying, e.qualifying AS expected_qualifying
  FROM fp.line_expected e LEFT JOIN fp.balance b USING (program, account_key)
 WHERE e.account_key IN ('L1', 'L2', 'L3', 'L4', 'H1', 'H2', 'H3', 'H4')
 ORDER BY e.account_key;

-- The same row computed in numeric by explain_points.
SELECT count(*) AS rows,
       count(*) FILTER (WHERE x.points + x.on_time_bonus = e.points) AS explained_alike
  FROM fp.line l
  JOIN fp.line_expected e ON e.account_key = l.customer
  CROSS JOIN LATERAL loyalty.explain_points('fp.line', l.id) x;

-- Corrections are exact too: the old rows reversed, the new ones earned.
UPDATE fp.line SET discount = 0.13 WHERE id % 10 = 0;
UPDATE fp.line SET paid = NULL WHERE id % 4 = 0;
DELETE FROM fp.line WHERE id % 25 = 0;
SELECT count(*) AS rows,
       count(*) FILTER (WHERE coalesce(b.points, 0) = coalesce(e.points, 0)) AS points_exact,
       count(*) FILTER (WHERE coalesce(b.qualifying, 0) = coalesce(e.qualifying, 0)) AS qualifying_exact
  FROM fp.line_expected e FULL JOIN (SELECT * FROM fp.balance WHERE program = 'fp_nine') b
       USING (program, account_key);
SELECT count(*) AS drift FROM loyalty.verify('fp_nine');

--
-- 2. Twenty decimals: total / parts
--
CREATE TABLE fp.doc (
    id       int PRIMARY KEY,
    customer text NOT NULL,
    day      date NOT NULL,
    total    numeric NOT NULL,
    parts    int NOT NULL,
    line     text,
    due      date,
    paid     date
);
SELECT loyalty.create_program('fp_twenty', rounding => 'half_up') > 0 AS created;
SELECT loyalty.add_rule('fp_twenty', '2024-01-01', 1,
         product_line_multipliers => '{"FAST": 1.5, "SLOW": 1.0000000000000000001}',
         on_time_bonus_pct => 12.5);
SELECT loyalty.attach('fp.doc', 'fp_twenty', key_column => 'id', account_column => 'customer',
         date_column => 'day', amount_expression => 'total / parts',
         product_line_column => 'line', due_date_column => 'due', paid_date_column => 'paid') > 0 AS attached;

INSERT INTO fp.doc
SELECT g, 'D' || g, DATE '2024-03-01' + g % 20, g * 1.01 + g % 3, 1 + g % 9,
       (ARRAY['FAST', 'SLOW', NULL])[1 + g % 3],
       DATE '2024-05-01', CASE WHEN g % 2 = 0 THEN DATE '2024-04-15' END
  FROM generate_series(1, 300) g;
-- One account whose spend needs more than 128 bits at 20 decimals: its sum
-- goes on in numeric, and stays exact.
INSERT INTO fp.doc VALUES
    (1001, 'BIG', '2024-03-01', 2000000000000000000, 1, NULL, NULL, NULL),
    (1002, 'BIG', '2024-03-02', 1, 7, NULL, NULL, NULL),
    (1003, 'BIG', '2024-03-03', 3, 7, 'FAST', NULL, NULL);

CREATE VIEW fp.doc_expected AS
SELECT 'fp_twenty'::text AS program, customer AS account_key,
       sum(pts + CASE WHEN paid <= due THEN round(pts * 0.125) ELSE 0 END) AS points,
       sum(amount) AS qualifying
  FROM (SELECT customer, due, paid, total / parts AS amount,
               round(total / parts
                     * CASE line WHEN 'FAST' THEN 1.5 WHEN 'SLOW' THEN 1.0000000000000000001 ELSE 1 END) AS pts
          FROM fp.doc) x
 GROUP BY customer;

SELECT count(*) AS accounts,
       count(*) FILTER (WHERE b.points = e.points) AS points_exact,
       count(*) FILTER (WHERE b.qualifying = e.qualifying) AS qualifying_exact
  FROM fp.doc_expected e LEFT JOIN fp.balance b USING (program, account_key);
SELECT e.account_key, b.points, e.points AS expected_points, b.qualifying, e.qualifying AS expected_qualifying
  FROM fp.doc_expected e LEFT JOIN fp.balance b USING (program, account_key)
 WHERE e.account_key IN ('D1', 'D2', 'D3', 'D6', 'BIG')
 ORDER BY e.account_key;
SELECT count(*) AS rows,
       count(*) FILTER (WHERE x.points + x.on_time_bonus = round(d.total / d.parts
             * CASE d.line WHEN 'FAST' THEN 1.5 WHEN 'SLOW' THEN 1.0000000000000000001 ELSE 1 END)
             + CASE WHEN d.paid <= d.due THEN round(round(d.total / d.parts
             * CASE d.line WHEN 'FAST' THEN 1.5 WHEN 'SLOW' THEN 1.0000000000000000001 ELSE 1 END) * 0.125)
             ELSE 0 END) AS explained_alike
  FROM fp.doc d CROSS JOIN LATERAL loyalty.explain_points('fp.doc', d.id) x;

UPDATE fp.doc SET parts = parts + 1 WHERE id % 7 = 0;
DELETE FROM fp.doc WHERE id = 1002;
SELECT count(*) AS accounts,
       count(*) FILTER (WHERE b.points = e.points) AS points_exact,
       count(*) FILTER (WHERE b.qualifying = e.qualifying) AS qualifying_exact
  FROM fp.doc_expected e LEFT JOIN fp.balance b USING (program, account_key);
SELECT b.qualifying, e.qualifying AS expected_qualifying
  FROM fp.doc_expected e JOIN fp.balance b USING (program, account_key) WHERE account_key = 'BIG';
SELECT count(*) AS drift FROM loyalty.verify('fp_twenty');

DROP SCHEMA fp CASCADE;
