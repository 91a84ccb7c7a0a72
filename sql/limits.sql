--
-- limits: points are bigint, account keys are indexed.  What does not fit
-- is never wrapped around and never fails inside loyalty's own INSERT:
--
--   - a row whose own points (or points with its on-time bonus) exceed
--     bigint, a row whose account key is empty, or longer than 1024 bytes,
--     is parked in loyalty.rejected_event with the reason on a non-strict
--     program, and fails the ERP's statement with that reason on a strict
--     one;
--   - a statement whose rows, each valid, would take an account's sums or
--     balance beyond bigint fails with an error that names the account and
--     the program: no balance is ever corrupted;
--   - a dead letter whose row key is too long to index is stored with a
--     shortened key, and is still settled when its row goes.
--
-- Expected values are computed here in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA lim;
-- n bytes of text that no compression shortens (hex digits of MD5s).
CREATE FUNCTION lim.noise(n int, seed text) RETURNS text LANGUAGE sql IMMUTABLE
RETURN left((SELECT string_agg(md5(seed || g), '') FROM generate_series(1, n / 32 + 1) g), n);

CREATE TABLE lim.invoice (
    invoice_id   int PRIMARY KEY,
    customer_id  text,
    invoice_date date NOT NULL,
    amount       numeric,
    due_date     date,
    paid_date    date
);
-- One point per euro, toward zero; 10 % more for paying on time.
SELECT loyalty.create_program('limits_lax', starts_on => '2024-01-01') > 0 AS created;
SELECT loyalty.add_rule('limits_lax', '2024-02-01', 1, on_time_bonus_pct => 10);
SELECT loyalty.attach('lim.invoice', 'limits_lax', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', due_date_column => 'due_date',
                      paid_date_column => 'paid_date') > 0 AS attached;

-- What a row earns, in plain SQL, and whether that fits in a bigint.
CREATE VIEW lim.expected AS
SELECT i.invoice_id, i.customer_id, i.amount, e.points,
       e.points BETWEEN -9223372036854775808 AND 9223372036854775807 AS fits
FROM lim.invoice i,
     LATERAL (SELECT trunc(i.amount) + CASE WHEN i.paid_date <= i.due_date AND i.invoice_date >= '2024-02-01'
                                            THEN trunc(trunc(i.amount) * 0.1) ELSE 0 END AS points) e;
-- The balances, and the dead letters, of a program.
CREATE VIEW lim.balances AS
SELECT p.name, b.account_key, b.points, b.qualifying
FROM loyalty.balance b JOIN loyalty.program p USING (program_id);
CREATE VIEW lim.parked AS
SELECT p.name, e.row_key, octet_length(e.row_key) AS key_bytes, left(e.account_key, 8) AS account,
       octet_length(e.account_key) AS account_bytes,
       e.reason, e.resolved_at IS NOT NULL AS settled
FROM loyalty.rejected_event e JOIN loyalty.program p USING (program_id);

--
-- 1. Single rows at the edge of bigint (non-strict program)
--
-- The largest and smallest amounts whose points fit earn them; a cent
-- below the floor still fits (toward zero); one more euro does not, and
-- is parked.  The ERP's statement goes through.
INSERT INTO lim.invoice (invoice_id, customer_id, invoice_date, amount) VALUES
    (1, 'max', '2024-01-10', 9223372036854775807),
    (2, 'min', '2024-01-10', -9223372036854775808),
    (3, 'max_cents', '2024-01-10', 9223372036854775807.99),
    (4, 'over', '2024-01-10', 9223372036854775808),
    (5, 'under', '2024-01-10', -9223372036854775809),
    (6, 'huge', '2024-01-10', 1e40);
-- On time: the bonus of a row is added to its points; if the two together
-- do not fit, the row is parked.
INSERT INTO lim.invoice VALUES
    (7, 'bonus', '2024-03-01', 1000, '2024-03-31', '2024-03-15'),
    (8, 'bonus_over', '2024-03-01', 9000000000000000000, '2024-03-31', '2024-03-15');
SELECT invoice_id, customer_id, amount, points, fits FROM lim.expected ORDER BY invoice_id;
SELECT account_key, points, qualifying FROM lim.balances WHERE name = 'limits_lax' ORDER BY account_key;
SELECT row_key, reason, settled FROM lim.parked WHERE name = 'limits_lax' ORDER BY row_key;
-- explain_points says the same.
SELECT status, reason, raw_points, points FROM loyalty.explain_points('lim.invoice', '4');
SELECT status, reason, raw_points, points, on_time_bonus FROM loyalty.explain_points('lim.invoice', '8');

--
-- 2. Rows that fit alone and overflow together
--
-- In one statement: the statement fails, naming the account; nothing of it
-- is written.
INSERT INTO lim.invoice (invoice_id, customer_id, invoice_date, amount) VALUES
    (10, 'twice', '2024-01-10', 5000000000000000000),
    (11, 'twice', '2024-01-20', 5000000000000000000);
SELECT count(*) AS rows_written FROM lim.invoice WHERE invoice_id IN (10, 11);
-- In two statements: the first earns, the second would take the balance
-- beyond bigint, alone or together with another account's rows.
INSERT INTO lim.invoice (invoice_id, customer_id, invoice_date, amount) VALUES
    (10, 'twice', '2024-01-10', 5000000000000000000);
INSERT INTO lim.invoice (invoice_id, customer_id, invoice_date, amount) VALUES
    (11, 'twice', '2024-02-20', 5000000000000000000);
INSERT INTO lim.invoice (invoice_id, customer_id, invoice_date, amount) VALUES
    (11, 'twice', '2024-02-20', 5000000000000000000),
    (12, 'another', '2024-02-20', 10);
-- Credits overflow the other way.
INSERT INTO lim.invoice (invoice_id, customer_id, invoice_date, amount) VALUES
    (13, 'credits', '2024-01-10', -5000000000000000000),
    (14, 'credits', '2024-01-11', -5000000000000000000);
-- Moving a big invoice onto an account that cannot take it fails too; the
-- invoice stays where it was.
UPDATE lim.invoice SET customer_id = 'twice' WHERE invoice_id = 1;
SELECT account_key, points FROM lim.balances
 WHERE name = 'limits_lax' AND account_key IN ('twice', 'another', 'credits', 'max') ORDER BY account_key;

--
-- 3. Account keys that cannot be indexed
--
INSERT INTO lim.invoice (invoice_id, customer_id, invoice_date, amount) VALUES
    (20, '', '2024-01-10', 100),
    (21, lim.noise(3000, 'a'), '2024-01-10', 100),
    (22, lim.noise(1024, 'b'), '2024-01-10', 100),
    (23, 'ok', '2024-01-10', 100);
SELECT row_key, account_bytes, reason FROM lim.parked
 WHERE name = 'limits_lax' AND row_key IN ('20', '21', '22', '23') ORDER BY row_key;
-- The dead letter is filed under the account (part of its key, indexed):
-- the 3000-byte key as its first bytes and the MD5 of the whole.
SELECT e.account_key = left(lim.noise(3000, 'a'), 960) || '... (md5 ' || md5(lim.noise(3000, 'a')) || ')' AS shortened
  FROM loyalty.rejected_event e JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'limits_lax' AND e.row_key = '21';
SELECT octet_length(account_key) AS key_bytes, points FROM lim.balances
 WHERE name = 'limits_lax' AND account_key IN (lim.noise(1024, 'b'), 'ok') ORDER BY 1;
-- Nothing was enrolled under the keys that were parked.
SELECT count(*) AS enrolled FROM loyalty.account a JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'limits_lax' AND (a.account_key = '' OR octet_length(a.account_key) > 1024);

--
-- 4. A dead letter whose row key is too long to index
--
-- The key of this table is a number of 3,000 digits: its index entry is
-- small, its text is not.  The row has no amount and is parked; the dead
-- letter keeps the key's first bytes and the MD5 of the whole.
CREATE TABLE lim.long_key (id numeric PRIMARY KEY, customer_id text, invoice_date date, amount numeric);
SELECT loyalty.attach('lim.long_key', 'limits_lax', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
INSERT INTO lim.long_key VALUES
    (translate(lim.noise(3000, 'c'), 'abcdef', '123456')::numeric, 'long', '2024-01-10', NULL),
    (1, 'long', '2024-01-10', NULL);
SELECT key_bytes,
       CASE WHEN key_bytes > 1024 THEN NULL
            WHEN key_bytes > 100
            THEN right(row_key, 39) = ' (md5 ' || md5(translate(lim.noise(3000, 'c'), 'abcdef', '123456')::numeric::text) || ')'
       END AS md5_ok,
       left(row_key, 20) AS starts_with, reason, settled
FROM lim.parked WHERE name = 'limits_lax' AND account = 'long' ORDER BY key_bytes;
-- Deleting the rows settles both dead letters.
DELETE FROM lim.long_key;
SELECT key_bytes, settled FROM lim.parked WHERE name = 'limits_lax' AND account = 'long' ORDER BY key_bytes;

--
-- 5. The same rows on a strict program fail the ERP's statement, each with
-- its reason.
--
CREATE TABLE lim.strict_invoice (invoice_id int PRIMARY KEY, customer_id text, invoice_date date, amount numeric);
SELECT loyalty.create_program('limits_strict', strict => true) > 0 AS created;
SELECT loyalty.attach('lim.strict_invoice', 'limits_strict', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
INSERT INTO lim.strict_invoice VALUES (1, 'a', '2024-01-10', 9223372036854775808);
INSERT INTO lim.strict_invoice VALUES (2, '', '2024-01-10', 1);
INSERT INTO lim.strict_invoice VALUES (3, repeat('k', 1025), '2024-01-10', 1);
INSERT INTO lim.strict_invoice VALUES (4, 'a', '2024-01-10', 5000000000000000000), (5, 'a', '2024-01-10', 5000000000000000000);
-- What fits is accrued.
INSERT INTO lim.strict_invoice VALUES (6, 'a', '2024-01-10', 9223372036854775807), (7, repeat('k', 1024), '2024-01-10', 1);
SELECT left(account_key, 5) AS account, octet_length(account_key) AS key_bytes, points
  FROM lim.balances WHERE name = 'limits_strict' ORDER BY 2;
SELECT count(*) AS parked FROM lim.parked WHERE name = 'limits_strict';

--
-- 6. Every balance is what plain SQL says, and verify() is empty.
--
SELECT count(*) AS accounts,
       count(*) FILTER (WHERE b.points IS DISTINCT FROM e.points) AS points_differ,
       count(*) FILTER (WHERE b.qualifying IS DISTINCT FROM e.qualifying) AS qualifying_differs
FROM (SELECT customer_id AS account_key, sum(points)::bigint AS points, sum(amount) AS qualifying
      FROM lim.expected
      WHERE fits AND customer_id <> '' AND octet_length(customer_id) <= 1024 GROUP BY 1) e
FULL JOIN (SELECT account_key, points, qualifying FROM lim.balances WHERE name = 'limits_lax') b USING (account_key);
SELECT count(*) AS parked_rows,
       count(*) FILTER (WHERE NOT settled) AS open
FROM lim.parked WHERE name = 'limits_lax';
SELECT p.name, count(v.*) AS drift
  FROM loyalty.program p LEFT JOIN LATERAL loyalty.verify(p.name) v ON true
 WHERE p.name LIKE 'limits%' GROUP BY 1 ORDER BY 1;

--
-- backfill() under automatic enrolment enrols the history's customers, but
-- never a key that cannot be an account's (empty, or over the limit): those
-- rows earn nothing, as in the trigger.
--
CREATE TABLE lim.history (id int PRIMARY KEY, customer text, doc_date date, amount numeric(12,2));
INSERT INTO lim.history VALUES (1, '', '2026-01-01', 10), (2, repeat('x', 3000), '2026-01-01', 20),
                               (3, 'H', '2026-01-01', 30);
SELECT loyalty.create_program('lim_backfill') > 0 AS created;
SELECT loyalty.attach('lim.history', 'lim_backfill', account_column => 'customer', amount_column => 'amount',
                      date_column => 'doc_date') > 0 AS attached;
SELECT * FROM loyalty.backfill('lim.history', 'lim_backfill', '-infinity');
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'lim_backfill';
SELECT count(*) AS drift FROM loyalty.verify('lim_backfill');
