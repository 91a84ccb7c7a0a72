--
-- Lines find their header exactly as SQL would join them: by the key
-- type's own equality and collation (char(n) with and without trailing
-- blanks, numeric 1 and 1.0, a case-insensitive collation), on partitioned
-- header tables, and header changes reach the lines of a partitioned lines
-- table.  Expected points are computed from the ERP rows in plain SQL.
--
\set VERBOSITY terse
CREATE SCHEMA hk;

--
-- 1. char(10) invoice numbers: 'A1' and 'A1        ' are one key
--
CREATE TABLE hk.inv_c (inv_no char(10) PRIMARY KEY, customer text, inv_date date);
CREATE TABLE hk.line_c (inv_no char(10) REFERENCES hk.inv_c, line_no int, amount numeric(12,2),
                        PRIMARY KEY (inv_no, line_no));
SELECT loyalty.create_program('hk_char') > 0 AS created;
SELECT loyalty.attach('hk.line_c', 'hk_char', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inv_c', line_header_column => 'inv_no') > 0 AS attached;
INSERT INTO hk.inv_c VALUES ('A1', 'C1', '2026-02-01'), ('B22', 'C2', '2026-02-02');
INSERT INTO hk.line_c VALUES ('A1', 1, 100.50), ('A1', 2, 20), ('B22', 1, 7.99);
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_char' ORDER BY 1;
SELECT h.customer, sum(trunc(l.amount)) AS expected
  FROM hk.line_c l JOIN hk.inv_c h USING (inv_no) GROUP BY 1 ORDER BY 1;
SELECT count(*) AS parked FROM loyalty.rejected_event r JOIN loyalty.program p USING (program_id) WHERE p.name = 'hk_char';
-- a header change reaches its lines
UPDATE hk.inv_c SET customer = 'C3' WHERE inv_no = 'B22';
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_char' ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('hk_char');

--
-- 2. numeric keys: the header says 1.0, the line 1
--
CREATE TABLE hk.inv_n (id numeric PRIMARY KEY, customer text, inv_date date);
CREATE TABLE hk.line_n (id numeric, line_no int, amount numeric(12,2), PRIMARY KEY (id, line_no));
SELECT loyalty.create_program('hk_num') > 0 AS created;
SELECT loyalty.attach('hk.line_n', 'hk_num', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inv_n', line_header_column => 'id') > 0 AS attached;
INSERT INTO hk.inv_n VALUES (1.0, 'N1', '2026-03-01'), (2.50, 'N2', '2026-03-01');
INSERT INTO hk.line_n VALUES (1, 1, 40), (1.00, 2, 2), (2.5, 1, 9);
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_num' ORDER BY 1;
SELECT h.customer, sum(trunc(l.amount)) AS expected
  FROM hk.line_n l JOIN hk.inv_n h ON h.id = l.id GROUP BY 1 ORDER BY 1;
DELETE FROM hk.line_n WHERE id = 1 AND line_no = 2;
SELECT count(*) AS drift FROM loyalty.verify('hk_num');

--
-- 3. a case-insensitive (nondeterministic) collation on text keys
--
CREATE COLLATION hk.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE hk.inv_ci (code text COLLATE hk.ci PRIMARY KEY, customer text, inv_date date);
CREATE TABLE hk.line_ci (code text COLLATE hk.ci, line_no int, amount numeric(12,2), PRIMARY KEY (code, line_no));
SELECT loyalty.create_program('hk_ci') > 0 AS created;
SELECT loyalty.attach('hk.line_ci', 'hk_ci', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inv_ci', line_header_column => 'code') > 0 AS attached;
INSERT INTO hk.inv_ci VALUES ('INV-X', 'K1', '2026-04-01');
INSERT INTO hk.line_ci VALUES ('inv-x', 1, 11), ('Inv-X', 2, 12);
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_ci' ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('hk_ci');

--
-- 4. a header table partitioned by date: lines find headers in any partition
--
CREATE TABLE hk.inv_p (id int, customer text, inv_date date, PRIMARY KEY (id, inv_date))
    PARTITION BY RANGE (inv_date);
CREATE TABLE hk.inv_p_2025 PARTITION OF hk.inv_p FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE hk.inv_p_2026 PARTITION OF hk.inv_p FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE hk.line_p (inv_id int, line_no int, amount numeric(12,2), PRIMARY KEY (inv_id, line_no));
SELECT loyalty.create_program('hk_part') > 0 AS created;
SELECT loyalty.attach('hk.line_p', 'hk_part', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inv_p', line_header_column => 'inv_id',
                      header_id_column => 'id') > 0 AS attached;
INSERT INTO hk.inv_p VALUES (1, 'P1', '2025-06-01'), (2, 'P2', '2026-06-01');
INSERT INTO hk.line_p VALUES (1, 1, 100), (2, 1, 200), (2, 2, 5);
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_part' ORDER BY 1;
SELECT count(*) AS parked FROM loyalty.rejected_event r JOIN loyalty.program p USING (program_id) WHERE p.name = 'hk_part';
UPDATE hk.inv_p SET customer = 'P3' WHERE id = 2;
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_part' ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('hk_part');

--
-- 5. a partitioned lines table: a header change re-accrues lines in every
--    partition
--
CREATE TABLE hk.inv_h (id int PRIMARY KEY, customer text, inv_date date);
CREATE TABLE hk.line_h (inv_id int, line_no int, amount numeric(12,2), PRIMARY KEY (inv_id, line_no))
    PARTITION BY HASH (inv_id);
CREATE TABLE hk.line_h0 PARTITION OF hk.line_h FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE hk.line_h1 PARTITION OF hk.line_h FOR VALUES WITH (MODULUS 2, REMAINDER 1);
SELECT loyalty.create_program('hk_lines') > 0 AS created;
SET client_min_messages = warning;
SELECT loyalty.attach('hk.line_h', 'hk_lines', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inv_h', line_header_column => 'inv_id') > 0 AS attached;
RESET client_min_messages;
INSERT INTO hk.inv_h SELECT g, 'H' || (g % 3), '2026-05-01' FROM generate_series(1, 20) g;
INSERT INTO hk.line_h SELECT g, l, 10 * l FROM generate_series(1, 20) g, generate_series(1, 3) l;
UPDATE hk.inv_h SET customer = 'H9' WHERE id <= 5;
SELECT account_key, points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_lines' ORDER BY 1;
SELECT h.customer, sum(trunc(l.amount)) AS expected
  FROM hk.line_h l JOIN hk.inv_h h ON h.id = l.inv_id GROUP BY 1 ORDER BY 1;
SELECT count(*) AS drift FROM loyalty.verify('hk_lines');

--
-- 6. Inheritance: a parent with children, a child, and a partition attached
--    on its own are refused (their rows would accrue incompletely, or be
--    reversed without having earned); as header tables too.
--
CREATE TABLE hk.inh_parent (id int PRIMARY KEY, customer text, inv_date date, amount numeric(12,2));
CREATE TABLE hk.inh_child () INHERITS (hk.inh_parent);
SELECT loyalty.create_program('hk_inh') > 0 AS created;
SELECT loyalty.attach('hk.inh_parent', 'hk_inh', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date');
SELECT loyalty.attach('hk.inh_child', 'hk_inh', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', key_column => 'id');
SELECT loyalty.attach('hk.line_h0', 'hk_inh', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inv_h', header_key_column => 'inv_id');
SELECT loyalty.attach('hk.line_p', 'hk_inh', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inh_parent', header_key_column => 'inv_id',
                      header_match_column => 'id');
SELECT loyalty.attach('hk.line_p', 'hk_inh', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hk.inv_p_2026', header_key_column => 'inv_id',
                      header_match_column => 'id');
SELECT count(*) AS attachments FROM loyalty.attachment x JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'hk_inh';
