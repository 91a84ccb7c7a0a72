--
-- Dead letters (loyalty.rejected_event) are settled by whatever makes their
-- row accrue: a header that arrives after its lines (a deferred foreign key,
-- or an ERP that writes lines first), and a rejected row whose key changes
-- leaves no letter under its old key.  Expected points come from the ERP
-- rows in plain SQL.
--
\set VERBOSITY terse
CREATE SCHEMA dl;
CREATE VIEW dl.letters AS
SELECT p.name AS program, e.row_key, e.reason, e.resolved_at IS NOT NULL AS settled
  FROM loyalty.rejected_event e JOIN loyalty.program p USING (program_id);

--
-- 1. Lines before their header, in one transaction (deferred foreign key)
--
CREATE TABLE dl.inv (id int PRIMARY KEY, customer text, inv_date date);
CREATE TABLE dl.line (inv_id int REFERENCES dl.inv DEFERRABLE INITIALLY DEFERRED, line_no int,
                      amount numeric(12,2), PRIMARY KEY (inv_id, line_no));
SELECT loyalty.create_program('dl_deferred') > 0 AS created;
SELECT loyalty.attach('dl.line', 'dl_deferred', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'dl.inv', line_header_column => 'inv_id') > 0 AS attached;
BEGIN;
INSERT INTO dl.line VALUES (1, 1, 10.50), (1, 2, 20), (2, 1, 5);
SELECT row_key, reason, settled FROM dl.letters WHERE program = 'dl_deferred' ORDER BY row_key;
INSERT INTO dl.inv VALUES (1, 'A', '2026-02-01'), (2, 'B', '2026-02-02');
COMMIT;
SELECT row_key, reason, settled FROM dl.letters WHERE program = 'dl_deferred' ORDER BY row_key;
SELECT account_key, points, qualifying FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'dl_deferred' ORDER BY 1;
SELECT h.customer, sum(trunc(l.amount)) AS points, sum(l.amount) AS qualifying
  FROM dl.line l JOIN dl.inv h ON h.id = l.inv_id GROUP BY 1 ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('dl_deferred');

--
-- 2. Lines first, header in a later transaction (no foreign key); a line
--    of the same header inserted after the header accrues at once, and a
--    header inserted again after a delete re-accrues nothing twice.
--
CREATE TABLE dl.inv2 (id int PRIMARY KEY, customer text, inv_date date);
CREATE TABLE dl.line2 (inv_id int, line_no int, amount numeric(12,2), PRIMARY KEY (inv_id, line_no));
SELECT loyalty.create_program('dl_later') > 0 AS created;
SELECT loyalty.attach('dl.line2', 'dl_later', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'dl.inv2', line_header_column => 'inv_id') > 0 AS attached;
INSERT INTO dl.line2 SELECT g % 4, g, 10 * g FROM generate_series(1, 12) g;
SELECT count(*) FILTER (WHERE NOT settled) AS waiting FROM dl.letters WHERE program = 'dl_later';
INSERT INTO dl.inv2 VALUES (1, 'X', '2026-03-01'), (2, 'Y', '2026-03-02');
INSERT INTO dl.line2 VALUES (1, 100, 7);
SELECT row_key, settled FROM dl.letters WHERE program = 'dl_later' ORDER BY row_key COLLATE "C";
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'dl_later' ORDER BY 1;
SELECT h.customer, sum(trunc(l.amount)) AS points
  FROM dl.line2 l JOIN dl.inv2 h ON h.id = l.inv_id GROUP BY 1 ORDER BY 1;
-- header 2 deleted and inserted again (its lines accrued with the first one)
BEGIN;
DELETE FROM dl.inv2 WHERE id = 2;
INSERT INTO dl.inv2 VALUES (2, 'Y', '2026-03-02');
COMMIT;
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'dl_later' ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('dl_later');

--
-- 3. A rejected row whose key changes: its letter under the old key is
--    settled and a new one is parked under the new key; fixing the row
--    settles that one too.
--
CREATE TABLE dl.doc (id int PRIMARY KEY, customer text, amount numeric(12,2), doc_date date, currency text);
SELECT loyalty.create_program('dl_keys') > 0 AS created;
SELECT loyalty.attach('dl.doc', 'dl_keys', account_column => 'customer', amount_column => 'amount',
                      date_column => 'doc_date', currency_column => 'currency') > 0 AS attached;
INSERT INTO dl.doc VALUES (5, 'C', 10, '2026-01-10', 'USD'), (6, 'C', 20, '2026-01-10', 'EUR');
UPDATE dl.doc SET id = 50 WHERE id = 5;
SELECT row_key, reason, settled FROM dl.letters WHERE program = 'dl_keys' ORDER BY row_key;
UPDATE dl.doc SET currency = 'EUR' WHERE id = 50;
SELECT row_key, reason, settled FROM dl.letters WHERE program = 'dl_keys' ORDER BY row_key;
SELECT points FROM loyalty.balance('dl_keys', 'C');
SELECT count(*) AS drift FROM loyalty.verify('dl_keys');
