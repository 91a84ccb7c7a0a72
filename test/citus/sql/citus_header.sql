--
-- citus_header: invoice lines whose customer, date, currency and document
-- type are on a header table, both distributed by customer and co-located
-- with loyalty's tables (runs after citus_distribute, in the same database).
-- A line's header lives in the shard of the same customer, on the same
-- node: the lines' trigger reads it there, and the header's trigger, on the
-- header's shard, accrues again the lines of a changed header from the
-- co-located shard of the lines.  Expected figures come from the ERP rows,
-- in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';

CREATE TABLE erp.inv_header (customer text NOT NULL, invoice_id bigint NOT NULL, invoice_date date NOT NULL,
                             currency text NOT NULL DEFAULT 'EUR', doc_type text NOT NULL DEFAULT 'INV',
                             note text, PRIMARY KEY (customer, invoice_id));
CREATE TABLE erp.inv_line (customer text NOT NULL, invoice_id bigint NOT NULL, line_no int NOT NULL,
                           quantity numeric(10,2) NOT NULL, unit_price numeric(12,2) NOT NULL,
                           PRIMARY KEY (customer, invoice_id, line_no));
CREATE TABLE erp.inv_header_local (LIKE erp.inv_header INCLUDING ALL);
SELECT create_distributed_table('erp.inv_header', 'customer', colocate_with => 'loyalty.account');
SELECT create_distributed_table('erp.inv_line', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Header Club') AS pid \gset

-- attach refuses what cannot work on shards, saying why
SELECT loyalty.attach('erp.inv_line', 'Header Club', key_column => 'customer, invoice_id, line_no',
                      header => 'erp.inv_header_local', line_header_column => 'invoice_id', header_id_column => 'invoice_id',
                      account_column => 'customer', date_column => 'invoice_date',
                      amount_expression => 'quantity * unit_price');
SELECT loyalty.attach('erp.inv_line', 'Header Club', key_column => 'customer, invoice_id, line_no',
                      header => 'erp.inv_header', line_header_column => 'invoice_id', header_id_column => 'invoice_id',
                      account_column => 'note', date_column => 'invoice_date',
                      amount_expression => 'quantity * unit_price');
SELECT loyalty.attach('erp.inv_line', 'Header Club', key_column => 'customer, invoice_id, line_no',
                      product => 'erp.inv_header_local', line_product_column => 'invoice_id', product_id_column => 'invoice_id',
                      account_column => 'customer', date_column => 'invoice_date', product_line_column => 'note',
                      amount_expression => 'quantity * unit_price');

SELECT loyalty.attach('erp.inv_line', 'Header Club', key_column => 'customer, invoice_id, line_no',
                      header => 'erp.inv_header', line_header_column => 'invoice_id', header_id_column => 'invoice_id',
                      account_column => 'customer', date_column => 'invoice_date', currency_column => 'currency',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}',
                      amount_expression => 'quantity * unit_price') > 0 AS attached;
-- the triggers reached every shard of both tables
SELECT t.table_name, count(*) AS shards, min(r.result::int) AS min_triggers, max(r.result::int) AS max_triggers
  FROM (VALUES ('erp.inv_line'), ('erp.inv_header')) t(table_name),
       LATERAL pg_catalog.run_command_on_shards(t.table_name,
       $$SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = '%s'::pg_catalog.regclass
                                                      AND tgname LIKE 'loyalty_accrual_%%'$$) r
 GROUP BY 1 ORDER BY 1;

-- What each line earns, from the ERP rows alone: its whole currency units,
-- negative on a credit note; nothing in another currency or without header.
CREATE VIEW erp.inv_expected AS
SELECT l.customer, l.invoice_id, l.line_no,
       CASE WHEN h.invoice_id IS NULL OR h.currency <> 'EUR' THEN 0
            WHEN h.doc_type = 'CRN' THEN -trunc(abs(l.quantity * l.unit_price))
            ELSE trunc(l.quantity * l.unit_price) END::bigint AS earns,
       CASE WHEN h.invoice_id IS NULL THEN 'header row not found'
            WHEN h.currency <> 'EUR' THEN 'currency ' || h.currency || ' is not the program currency' END AS reason
  FROM erp.inv_line l LEFT JOIN erp.inv_header h ON h.customer = l.customer AND h.invoice_id = l.invoice_id;
CREATE VIEW erp.inv_differing AS
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(earns) AS points FROM erp.inv_expected GROUP BY 1) e
  FULL JOIN (SELECT b.account_key, b.points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
              WHERE p.name = 'Header Club') b USING (account_key)
 WHERE coalesce(e.points, 0) <> coalesce(b.points, 0);

-- An invoice (header and lines) in one transaction, one customer on each worker
BEGIN;
INSERT INTO erp.inv_header VALUES ('H-0001', 1, '2025-01-10'), ('H-0002', 2, '2025-01-11');
INSERT INTO erp.inv_line VALUES ('H-0001', 1, 1, 2, 50.25), ('H-0001', 1, 2, 1, 9.99), ('H-0002', 2, 1, 3, 33.33);
COMMIT;
SELECT * FROM erp.inv_differing;
-- 2,000 invoices of 500 customers, three lines each, as sets and by COPY
INSERT INTO erp.inv_header SELECT 'H-' || lpad((g % 500)::text, 4, '0'), g, DATE '2025-01-01' + g % 200
  FROM generate_series(10, 2009) g;
INSERT INTO erp.inv_line SELECT 'H-' || lpad((g % 500)::text, 4, '0'), g, n, 1 + n, 10 + g % 37 + (g % 100) / 100.0
  FROM generate_series(10, 1009) g, generate_series(1, 3) n;
COPY (SELECT 'H-' || lpad((g % 500)::text, 4, '0'), g, n, n, 5 + g % 91 + (g % 10) / 10.0
        FROM generate_series(1010, 2009) g, generate_series(1, 3) n) TO '/tmp/loyalty_citus_lines.csv' (FORMAT csv);
COPY erp.inv_line FROM '/tmp/loyalty_citus_lines.csv' (FORMAT csv);
SELECT count(*) AS lines, sum(earns) AS points FROM erp.inv_expected;
SELECT * FROM erp.inv_differing;

-- Header changes: the date into another month, credit notes, another
-- currency and back, on both workers, as sets
UPDATE erp.inv_header SET invoice_date = invoice_date + 40 WHERE invoice_id % 7 = 0;
UPDATE erp.inv_header SET doc_type = 'CRN' WHERE invoice_id % 11 = 0;
UPDATE erp.inv_header SET currency = 'USD' WHERE invoice_id % 13 = 0;
UPDATE erp.inv_header SET currency = 'EUR' WHERE invoice_id % 26 = 0;
-- an UPDATE that changes nothing the program reads accrues nothing again
UPDATE erp.inv_header SET note = 'checked' WHERE invoice_id % 3 = 0;
SELECT * FROM erp.inv_differing;
-- lines: corrections, deletions; an invoice deleted with its lines
UPDATE erp.inv_line SET quantity = quantity + 1 WHERE invoice_id % 5 = 0 AND line_no = 2;
DELETE FROM erp.inv_line WHERE invoice_id % 17 = 0 AND line_no = 3;
BEGIN;
DELETE FROM erp.inv_header WHERE invoice_id IN (20, 21);
DELETE FROM erp.inv_line WHERE invoice_id IN (20, 21);
COMMIT;
-- a rolled back header change leaves nothing
BEGIN;
UPDATE erp.inv_header SET doc_type = 'CRN' WHERE invoice_id BETWEEN 100 AND 200;
ROLLBACK;
SELECT * FROM erp.inv_differing;

-- Lines written before their header wait as "header row not found", filed
-- under the customer the lines are distributed by, in that customer's
-- shard; the header's arrival accrues them and settles the letters.
INSERT INTO erp.inv_line VALUES ('H-0777', 5001, 1, 4, 25.00), ('H-0777', 5001, 2, 1, 3.50), ('H-0778', 5002, 1, 2, 10.00);
SELECT account_key, row_key, reason FROM loyalty.rejected_event
 WHERE program_id = :pid AND resolved_at IS NULL AND reason = 'header row not found' ORDER BY row_key;
INSERT INTO erp.inv_header VALUES ('H-0777', 5001, '2025-06-01', 'EUR'), ('H-0778', 5002, '2025-06-02', 'USD');
SELECT account_key, row_key, reason, resolved_at IS NOT NULL AS settled FROM loyalty.rejected_event
 WHERE program_id = :pid AND account_key IN ('H-0777', 'H-0778') ORDER BY row_key, reason;
-- open letters are those of the rows the program cannot accrue, from the ERP rows
SELECT (SELECT count(*) FROM erp.inv_expected WHERE reason IS NOT NULL) AS rows_unaccruable,
       (SELECT count(*) FROM loyalty.rejected_event WHERE program_id = :pid AND resolved_at IS NULL) AS letters_open,
       (SELECT count(*) FROM erp.inv_expected e JOIN loyalty.rejected_event r
                ON r.program_id = :pid AND r.resolved_at IS NULL AND r.account_key = e.customer
               AND r.row_key = ROW(e.customer, e.invoice_id, e.line_no)::text AND r.reason = e.reason) AS matching;
SELECT * FROM erp.inv_differing;

-- A line whose customer is not its header's does not find it, even in a
-- shard that holds both customers: lines and header are joined by
-- customer and header key, as the co-located shards hold them.
SELECT c AS other_customer FROM (SELECT 'X-' || g AS c FROM generate_series(1, 5000) g) x
 WHERE pg_catalog.get_shard_id_for_distribution_column('erp.inv_line', c)
     = pg_catalog.get_shard_id_for_distribution_column('erp.inv_line', 'H-0001')
 ORDER BY c LIMIT 1 \gset
INSERT INTO erp.inv_line VALUES (:'other_customer', 1, 9, 1, 100.00), ('H-0002', 1, 9, 1, 100.00);
SELECT account_key = :'other_customer' AS filed_under_line_customer, row_key = format('(%s,1,9)', :'other_customer') AS row_key_ok, reason
  FROM loyalty.rejected_event WHERE program_id = :pid AND resolved_at IS NULL AND row_key LIKE '(X-%' ;
SELECT account_key, row_key, reason FROM loyalty.rejected_event
 WHERE program_id = :pid AND resolved_at IS NULL AND account_key = 'H-0002';
SELECT * FROM erp.inv_differing;
SELECT * FROM loyalty.verify('Header Club', account => 'H-0001');

-- A header changed by another transaction while lines of it are written:
-- each transaction's check at commit runs on the worker of the shards it
-- wrote, and restates what the other moved.  Lines side: the lines read
-- the header as it was, the header's change commits first.
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT dblink_connect('other', pg_catalog.format('dbname=%s port=%s host=%s user=%s', current_database(),
                      current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1),
                      current_user));
INSERT INTO erp.inv_header SELECT 'R-' || g, 7000 + g, '2025-08-01' FROM generate_series(1, 6) g;
BEGIN;
INSERT INTO erp.inv_line SELECT 'R-' || g, 7000 + g, 1, 2, 40.50 FROM generate_series(1, 6) g;
SELECT dblink_exec('other', $$UPDATE erp.inv_header SET doc_type = 'CRN' WHERE invoice_id BETWEEN 7001 AND 7006$$);
COMMIT;
SELECT count(DISTINCT p.nodeport) AS workers
  FROM pg_catalog.pg_dist_shard_placement p
 WHERE p.shardid IN (SELECT pg_catalog.get_shard_id_for_distribution_column('erp.inv_line', 'R-' || g)
                       FROM generate_series(1, 6) g);
SELECT * FROM erp.inv_differing;
-- header side: the header's change reads its lines before others' commit
INSERT INTO erp.inv_header SELECT 'S-' || g, 7100 + g, '2025-08-01' FROM generate_series(1, 6) g;
BEGIN;
UPDATE erp.inv_header SET doc_type = 'CRN' WHERE invoice_id BETWEEN 7101 AND 7106;
SELECT dblink_exec('other', $$INSERT INTO erp.inv_line SELECT 'S-' || g, 7100 + g, 1, 3, 20.25 FROM generate_series(1, 6) g$$);
COMMIT;
SELECT * FROM erp.inv_differing;
-- both were corrected at commit, by a restatement on the worker
SELECT left(account_key, 1) AS customers, kind, reason, count(DISTINCT account_key) AS accounts
  FROM loyalty.ledger WHERE program_id = :pid AND (account_key LIKE 'R-%' OR account_key LIKE 'S-%')
 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
SELECT dblink_disconnect('other');
DROP EXTENSION dblink;

-- verify agrees, whole, by account and since a date; explain_points reads
-- the line with its header, on the node of its shard
SELECT * FROM loyalty.verify('Header Club');
SELECT * FROM loyalty.verify('Header Club', account => 'H-0007');
SELECT * FROM loyalty.verify('Header Club', since => '2025-05-01');
SELECT program, account_key, document_date, status, basis, points
  FROM loyalty.explain_points('erp.inv_line', 'H-0001', 1, 2);
SELECT program, account_key, document_date, status, reason
  FROM loyalty.explain_points('erp.inv_line', 'H-0013', 13, 1);

-- backfill: lines written while detached earn on backfill, once
SELECT loyalty.detach('erp.inv_line', 'Header Club');
INSERT INTO erp.inv_header VALUES ('H-0900', 6001, '2025-07-01'), ('H-0901', 6002, '2025-07-02');
INSERT INTO erp.inv_line VALUES ('H-0900', 6001, 1, 10, 12.34), ('H-0901', 6002, 1, 1, 999.99);
SELECT loyalty.attach('erp.inv_line', 'Header Club', key_column => 'customer, invoice_id, line_no',
                      header => 'erp.inv_header', line_header_column => 'invoice_id', header_id_column => 'invoice_id',
                      account_column => 'customer', date_column => 'invoice_date', currency_column => 'currency',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}',
                      amount_expression => 'quantity * unit_price') > 0 AS attached;
SELECT count(*) AS rows_to_backfill FROM loyalty.verify('Header Club');
SELECT b.accounts, b.source_rows, b.points FROM loyalty.backfill('erp.inv_line', 'Header Club', since => '-infinity') b;
SELECT b.accounts, b.source_rows, b.points FROM loyalty.backfill('erp.inv_line', 'Header Club', since => '-infinity') b;
SELECT * FROM loyalty.verify('Header Club');
SELECT * FROM erp.inv_differing;
-- a header change after the re-attach follows the new attachment
UPDATE erp.inv_header SET doc_type = 'CRN' WHERE invoice_id = 6002;
SELECT * FROM erp.inv_differing;
SELECT * FROM loyalty.verify('Header Club');
-- sales (ROI and KPIs read it) join lines and header by customer, on the workers
SELECT (SELECT sum(revenue) FROM loyalty.sales('Header Club'))
     = (SELECT sum(CASE WHEN h.doc_type = 'CRN' THEN -1 ELSE 1 END * l.quantity * l.unit_price)
          FROM erp.inv_line l JOIN erp.inv_header h ON h.customer = l.customer AND h.invoice_id = l.invoice_id
         WHERE h.currency = 'EUR') AS sales_exact;
-- the ledger agrees with the ERP rows
SELECT (SELECT sum(points) FROM loyalty.ledger WHERE program_id = :pid)
     = (SELECT sum(earns) FROM erp.inv_expected) AS ledger_exact;
