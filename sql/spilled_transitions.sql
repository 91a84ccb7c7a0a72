--
-- Statements whose transition tables spill to disk.  Past work_mem,
-- PostgreSQL hands out transition rows that the reading slot owns; the
-- trigger reads them in chunks whose memory it resets, and once crashed
-- (signal 11) on a header UPDATE of more than one chunk of headers.  Small
-- work_mem, more rows than one chunk (8,192), expected values in plain SQL.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS loyalty;
RESET client_min_messages;
CREATE SCHEMA spill;
CREATE TABLE spill.header (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL);
CREATE TABLE spill.line (header_id int NOT NULL, line_no int NOT NULL, amount numeric(12,2) NOT NULL,
                         PRIMARY KEY (header_id, line_no));
CREATE TABLE spill.flat (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL,
                         amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('spill_club') > 0 AS created;
SELECT loyalty.attach('spill.line', 'spill_club', key_column => 'header_id, line_no',
                      header => 'spill.header', line_header_column => 'header_id',
                      account_column => 'customer_id', date_column => 'invoice_date',
                      amount_column => 'amount') > 0 AS attached;
SELECT loyalty.attach('spill.flat', 'spill_club', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_column => 'amount') > 0 AS attached;

SET work_mem = '64kB';
-- 20,000 headers and lines in one statement each: three chunks, spilled
INSERT INTO spill.header SELECT g, g % 700, date '2024-01-01' + g % 300 FROM generate_series(1, 20000) g;
INSERT INTO spill.line SELECT g, 1, (g % 500) + 0.75 FROM generate_series(1, 20000) g;
INSERT INTO spill.flat SELECT g, g % 900, date '2024-01-01' + g % 300, (g % 400) + 0.25 FROM generate_series(1, 20000) g;
-- every header's date moves a day: each line is reversed and accrued again
UPDATE spill.header SET invoice_date = invoice_date + 1;
-- and every customer changes: the points move between accounts
UPDATE spill.header SET customer_id = customer_id + 1;
RESET work_mem;

CREATE VIEW spill.expected AS
SELECT account_key, sum(points) AS points, sum(qualifying) AS qualifying
FROM (SELECT h.customer_id::text AS account_key, trunc(l.amount) AS points, l.amount AS qualifying
      FROM spill.line l JOIN spill.header h ON h.id = l.header_id
      UNION ALL
      SELECT f.customer_id::text, trunc(f.amount), f.amount FROM spill.flat f) x
GROUP BY 1;
SELECT count(*) AS accounts,
       count(*) FILTER (WHERE b.points IS DISTINCT FROM e.points) AS points_differ,
       count(*) FILTER (WHERE b.qualifying IS DISTINCT FROM e.qualifying) AS qualifying_differs
FROM spill.expected e
FULL JOIN (SELECT b.account_key, b.points, b.qualifying FROM loyalty.balance b
           JOIN loyalty.program p USING (program_id) WHERE p.name = 'spill_club' AND (b.points <> 0 OR b.qualifying <> 0)) b USING (account_key);
SELECT count(*) AS drift FROM loyalty.verify('spill_club');
