--
-- citus_header_bigint: invoice lines with a header table on a Citus cluster
-- whose customers are bigint keys (a database of its own: distribute() sets
-- the type of loyalty's account keys once per database).  Header and lines
-- are distributed by the customer, co-located with loyalty's tables; a line
-- reads its header in the co-located shard.  Accrual is exact under INSERT,
-- COPY, line corrections, header changes (date, document type, currency)
-- and lines written before their header, which wait under the line's own
-- customer (a bigint account key: never ''); verify, explain_points and
-- backfill agree.  Expected figures come from the ERP rows, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;
CREATE EXTENSION loyalty;
RESET client_min_messages;

CREATE SCHEMA erp;
CREATE TABLE erp.invoice (customer_id bigint NOT NULL, invoice_no bigint NOT NULL, invoice_date date NOT NULL,
                          currency char(3) NOT NULL DEFAULT 'EUR', doc_type text NOT NULL DEFAULT 'INV',
                          PRIMARY KEY (customer_id, invoice_no));
CREATE TABLE erp.invoice_line (customer_id bigint NOT NULL, invoice_no bigint NOT NULL, line_no smallint NOT NULL,
                               quantity integer NOT NULL, unit_price numeric(12,2) NOT NULL,
                               PRIMARY KEY (customer_id, invoice_no, line_no));
SELECT create_distributed_table('erp.invoice', 'customer_id');
SET client_min_messages = warning;
SELECT layout, count(*) FROM loyalty.distribute('erp.invoice') GROUP BY 1 ORDER BY 1;
RESET client_min_messages;
SELECT create_distributed_table('erp.invoice_line', 'customer_id', colocate_with => 'erp.invoice');
SELECT format_type(atttypid, atttypmod) AS account_key_type FROM pg_attribute
 WHERE attrelid = 'loyalty.account'::regclass AND attname = 'account_key';

SELECT loyalty.create_program('Bigint Header Club') AS pid \gset
SELECT loyalty.attach('erp.invoice_line', 'Bigint Header Club', key_column => 'customer_id, invoice_no, line_no',
                      header => 'erp.invoice', line_header_column => 'invoice_no', header_id_column => 'invoice_no',
                      account_column => 'customer_id', date_column => 'invoice_date', currency_column => 'currency',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}',
                      amount_expression => 'quantity * unit_price') > 0 AS attached;

CREATE VIEW erp.expected AS
SELECT l.customer_id, l.invoice_no, l.line_no,
       CASE WHEN h.invoice_no IS NULL OR h.currency <> 'EUR' THEN 0
            WHEN h.doc_type = 'CRN' THEN -trunc(abs(l.quantity * l.unit_price))
            ELSE trunc(l.quantity * l.unit_price) END::bigint AS earns,
       CASE WHEN h.invoice_no IS NULL THEN 'header row not found'
            WHEN h.currency <> 'EUR' THEN 'currency ' || h.currency || ' is not the program currency' END AS reason
  FROM erp.invoice_line l LEFT JOIN erp.invoice h ON h.customer_id = l.customer_id AND h.invoice_no = l.invoice_no;
CREATE VIEW erp.differing AS
SELECT count(*) AS accounts_differing
  FROM (SELECT customer_id AS account_key, sum(earns) AS points FROM erp.expected GROUP BY 1) e
  FULL JOIN (SELECT b.account_key, b.points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
              WHERE p.name = 'Bigint Header Club') b USING (account_key)
 WHERE coalesce(e.points, 0) <> coalesce(b.points, 0);

-- 1,200 invoices of 400 customers beyond 2^31 (and two at the ends of the
-- range), two lines each: as sets, and by COPY
INSERT INTO erp.invoice SELECT 3000000000 + g % 400, g, DATE '2025-01-01' + g % 180 FROM generate_series(1, 1200) g;
INSERT INTO erp.invoice VALUES (-9223372036854775808, 5001, '2025-02-01'), (9223372036854775807, 5002, '2025-02-02');
INSERT INTO erp.invoice_line SELECT 3000000000 + g % 400, g, n, n + g % 3, 7.25 + g % 50
  FROM generate_series(1, 600) g, generate_series(1, 2) n;
INSERT INTO erp.invoice_line VALUES (-9223372036854775808, 5001, 1, 2, 19.99), (9223372036854775807, 5002, 1, 1, 250.00);
COPY (SELECT 3000000000 + g % 400, g, n, n, 3.5 + g % 70 FROM generate_series(601, 1200) g, generate_series(1, 2) n)
  TO '/tmp/loyalty_citus_bigint_lines.csv' (FORMAT csv);
COPY erp.invoice_line FROM '/tmp/loyalty_citus_bigint_lines.csv' (FORMAT csv);
SELECT count(*) AS lines, sum(earns) AS points FROM erp.expected;
SELECT * FROM erp.differing;

-- header changes and line corrections, on both workers
UPDATE erp.invoice SET invoice_date = invoice_date + 35 WHERE invoice_no % 6 = 0;
UPDATE erp.invoice SET doc_type = 'CRN' WHERE invoice_no % 9 = 0;
UPDATE erp.invoice SET currency = 'USD' WHERE invoice_no % 10 = 0;
UPDATE erp.invoice_line SET quantity = quantity + 2 WHERE invoice_no % 4 = 0;
DELETE FROM erp.invoice_line WHERE invoice_no % 15 = 0 AND line_no = 2;
SELECT * FROM erp.differing;

-- lines before their header: parked under the line's customer, a bigint
INSERT INTO erp.invoice_line VALUES (4000000001, 9001, 1, 3, 11.00), (4000000002, 9002, 1, 1, 99.00);
SELECT account_key, row_key, reason FROM loyalty.rejected_event
 WHERE program_id = :pid AND resolved_at IS NULL AND reason = 'header row not found' ORDER BY row_key;
INSERT INTO erp.invoice VALUES (4000000001, 9001, '2025-05-05');
SELECT account_key, row_key, reason, resolved_at IS NOT NULL AS settled FROM loyalty.rejected_event
 WHERE program_id = :pid AND account_key IN (4000000001, 4000000002) ORDER BY row_key;
SELECT * FROM erp.differing;
SELECT (SELECT count(*) FROM erp.expected WHERE reason IS NOT NULL)
     = (SELECT count(*) FROM loyalty.rejected_event WHERE program_id = :pid AND resolved_at IS NULL) AS letters_match_rows;

-- verify, explain_points, backfill
SELECT * FROM loyalty.verify('Bigint Header Club');
SELECT * FROM loyalty.verify('Bigint Header Club', account => '3000000007');
SELECT program, account_key, document_date, status, points
  FROM loyalty.explain_points('erp.invoice_line', '9223372036854775807', '5002', '1');
SELECT loyalty.detach('erp.invoice_line', 'Bigint Header Club');
INSERT INTO erp.invoice VALUES (4000000003, 9003, '2025-06-01');
INSERT INTO erp.invoice_line VALUES (4000000003, 9003, 1, 5, 20.00);
SELECT loyalty.attach('erp.invoice_line', 'Bigint Header Club', key_column => 'customer_id, invoice_no, line_no',
                      header => 'erp.invoice', line_header_column => 'invoice_no', header_id_column => 'invoice_no',
                      account_column => 'customer_id', date_column => 'invoice_date', currency_column => 'currency',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}',
                      amount_expression => 'quantity * unit_price') > 0 AS attached;
SELECT b.accounts, b.source_rows, b.points FROM loyalty.backfill('erp.invoice_line', 'Bigint Header Club', since => '-infinity') b;
SELECT * FROM loyalty.verify('Bigint Header Club');
SELECT * FROM erp.differing;
SELECT (SELECT sum(points) FROM loyalty.ledger WHERE program_id = :pid)
     = (SELECT sum(earns) FROM erp.expected) AS ledger_exact;
