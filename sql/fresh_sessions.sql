--
-- fresh_sessions: verify(), explain_points() and backfill() each run in a
-- new session, on programs with thousands of accounts.  The first call of
-- the points function in a session loads every account of the program at
-- once; what it computes must not live in memory that is released before
-- the result is returned.  (With a handful of accounts freed memory happens
-- to stay readable, which is why these calls need thousands.)
--
-- Expected values are computed here in plain SQL from the invoices, never
-- with loyalty's own functions.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA fs;
CREATE TABLE fs.invoice (
    invoice_id   int PRIMARY KEY,
    customer_id  int NOT NULL,
    invoice_date date NOT NULL,
    product_line text,
    amount       numeric(12,2) NOT NULL
);

-- fs_main: half up; 1.5 points per euro in the first half of 2024 (SOLAR x2,
-- PUMP x1.25), 2.25 from July (SOLAR x2.5).
SELECT loyalty.create_program('fs_main', rounding => 'half_up', starts_on => '2023-01-01') > 0 AS created;
SELECT loyalty.add_rule('fs_main', '2024-01-01', 1.5, product_line_multipliers => '{"SOLAR": 2, "PUMP": 1.25}');
SELECT loyalty.add_rule('fs_main', '2024-07-01', 2.25, product_line_multipliers => '{"SOLAR": 2.5}');
SELECT loyalty.attach('fs.invoice', 'fs_main', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', product_line_column => 'product_line') > 0 AS attached;

-- 3,000 customers, four invoices each in two months of 2024 (before and
-- after July for about half of them), every product line, amounts with
-- cents, one row in seventeen a credit (negative amount).
INSERT INTO fs.invoice
SELECT g, g % 3000 + 1, date '2024-01-01' + ((g % 3000) * 7 + (g / 6000) * 190 + g / 3000) % 366,
       (ARRAY[NULL, 'SOLAR', 'PUMP', 'CABLE'])[g % 4 + 1],
       CASE WHEN g % 17 = 0 THEN -1 ELSE 1 END * (((g * 7919) % 100000) / 100.0 + 0.05)
FROM generate_series(1, 12000) g;

-- What each invoice earns, computed independently of loyalty.
CREATE VIEW fs.expected_main AS
SELECT i.*, e.raw, round(e.raw)::bigint AS points
FROM fs.invoice i,
     LATERAL (SELECT i.amount * CASE WHEN i.invoice_date < '2024-07-01'
                                     THEN 1.5 * CASE i.product_line WHEN 'SOLAR' THEN 2 WHEN 'PUMP' THEN 1.25 ELSE 1 END
                                     ELSE 2.25 * CASE i.product_line WHEN 'SOLAR' THEN 2.5 ELSE 1 END END AS raw) e;

SELECT count(DISTINCT customer_id) AS customers, count(*) AS invoices, sum(points) AS points,
       sum(amount) AS qualifying
FROM fs.expected_main;

--
-- 1. verify() as the first thing a new session does
--
\c
SET datestyle = 'ISO, YMD';
SELECT count(*) AS drift FROM loyalty.verify('fs_main');

-- The balances are those of the invoices, account by account.
SELECT count(*) AS accounts,
       count(*) FILTER (WHERE b.points IS DISTINCT FROM e.points) AS points_differ,
       count(*) FILTER (WHERE b.qualifying IS DISTINCT FROM e.qualifying) AS qualifying_differs
FROM (SELECT customer_id::text AS account_key, sum(points) AS points, sum(amount) AS qualifying
      FROM fs.expected_main GROUP BY 1) e
FULL JOIN (SELECT b.account_key, b.points, b.qualifying FROM loyalty.balance b
           JOIN loyalty.program p USING (program_id) WHERE p.name = 'fs_main') b USING (account_key);

--
-- 2. explain_points() as the first thing a new session does, for several
-- invoices: every step of the computation is returned intact.
--
\c
SET datestyle = 'ISO, YMD';
SELECT x.invoice_id, e.status, e.rule_valid_from, e.basis, e.points_per_unit, e.product_line,
       e.product_line_multiplier, e.raw_points, e.rounding, e.points, e.qualifying,
       e.raw_points = x.raw AS raw_ok, e.points = x.points AS points_ok
FROM fs.expected_main x,
     LATERAL loyalty.explain_points('fs.invoice', VARIADIC ARRAY[x.invoice_id::text]) e
WHERE x.invoice_id IN (1, 2, 3, 4, 17, 2999, 7001, 11998)
ORDER BY x.invoice_id;

-- One invoice in a hundred, across all customers and both rule versions,
-- in one more new session: the same numbers as plain SQL.  (A sample: each
-- call is a query of its own, and the memory-checking run executes this
-- file under valgrind, where twelve thousand of them would take hours.)
\c
SELECT count(*) AS invoices,
       count(*) FILTER (WHERE e.points IS DISTINCT FROM x.points
                           OR e.raw_points IS DISTINCT FROM x.raw
                           OR e.qualifying IS DISTINCT FROM x.amount) AS differ
FROM fs.expected_main x,
     LATERAL loyalty.explain_points('fs.invoice', VARIADIC ARRAY[x.invoice_id::text]) e
WHERE e.program = 'fs_main' AND x.invoice_id % 100 = 0;

--
-- 3. backfill() as the first thing a new session does: a second program is
-- attached to the same invoices after they were written, so none of them
-- accrued for it.  Floor (toward zero); 0.5 points per euro, 3 from April
-- with PUMP x2.
--
SELECT loyalty.create_program('fs_history', points_per_unit => 0.5) > 0 AS created;
SELECT loyalty.add_rule('fs_history', '2024-04-01', 3, product_line_multipliers => '{"PUMP": 2}');
SELECT loyalty.attach('fs.invoice', 'fs_history', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', product_line_column => 'product_line') > 0 AS attached;
CREATE VIEW fs.expected_history AS
SELECT i.*, trunc(i.amount * CASE WHEN i.invoice_date < '2024-04-01' THEN 0.5
                                  WHEN i.product_line = 'PUMP' THEN 6 ELSE 3 END)::bigint AS points
FROM fs.invoice i;

\c
SET datestyle = 'ISO, YMD';
SELECT * FROM loyalty.backfill('fs.invoice', 'fs_history', since => '-infinity');
SELECT count(DISTINCT customer_id) AS accounts,
       count(DISTINCT (customer_id, date_trunc('month', invoice_date))) AS months,
       count(*) AS source_rows, sum(points) AS points, sum(amount) AS qualifying
FROM fs.expected_history;

\c
SELECT count(*) AS drift FROM loyalty.verify('fs_history');
SELECT count(*) AS accounts,
       count(*) FILTER (WHERE b.points IS DISTINCT FROM e.points) AS points_differ,
       count(*) FILTER (WHERE b.qualifying IS DISTINCT FROM e.qualifying) AS qualifying_differs
FROM (SELECT customer_id::text AS account_key, sum(points) AS points, sum(amount) AS qualifying
      FROM fs.expected_history GROUP BY 1) e
FULL JOIN (SELECT b.account_key, b.points, b.qualifying FROM loyalty.balance b
           JOIN loyalty.program p USING (program_id) WHERE p.name = 'fs_history') b USING (account_key);

-- A second backfill, in yet another session, finds nothing missing.
\c
SELECT * FROM loyalty.backfill('fs.invoice', 'fs_history', since => '-infinity');

-- The other program was not touched.
SELECT count(*) AS drift FROM loyalty.verify('fs_main');
