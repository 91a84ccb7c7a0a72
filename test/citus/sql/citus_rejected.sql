--
-- citus_rejected: dead letters on Citus (runs after citus_distribute, in the
-- same database, with loyalty's tables distributed).  loyalty.rejected_event
-- is keyed by (program_id, account_key, ...) and distributed by account_key
-- with the invoice tables: a row that a shard's trigger cannot accrue is
-- parked in the co-located shard of rejected_event, on the worker, in the
-- shard its account key hashes to; the coordinator reads it with its
-- account; deleting or correcting the row settles it.  Expected letters come
-- from the ERP rows, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';

-- rejected_event is distributed by account_key, co-located with the accounts;
-- partner_login alone stays local
SELECT table_name, layout FROM loyalty._citus_layout() WHERE layout <> 'reference' AND table_name IN
       ('loyalty.rejected_event'::regclass, 'loyalty.partner_login'::regclass, 'loyalty.ledger'::regclass)
 ORDER BY 1::text;
SELECT p.partmethod, pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) AS distribution_column,
       p.colocationid = a.colocationid AS colocated_with_account
  FROM pg_catalog.pg_dist_partition p, pg_catalog.pg_dist_partition a
 WHERE p.logicalrelid = 'loyalty.rejected_event'::regclass AND a.logicalrelid = 'loyalty.account'::regclass;

-- An ERP table of its own, distributed by a text customer with the accounts,
-- whose amount and date may be NULL.
CREATE TABLE erp.orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2),
                         order_date date, currency text NOT NULL DEFAULT 'EUR',
                         PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Orders Club') AS pid \gset
SELECT loyalty.attach('erp.orders', 'Orders Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date', currency_column => 'currency') > 0 AS attached;

-- What the program cannot accrue, from the ERP rows alone: one letter per
-- such row, open while the row is as it was parked.
CREATE VIEW erp.orders_unaccruable AS
SELECT ROW(customer, order_id)::text AS row_key, customer AS account_key,
       CASE WHEN customer = '' THEN 'account key is empty'
            WHEN order_date IS NULL THEN 'document date is NULL or infinite'
            WHEN currency <> 'EUR' THEN 'currency ' || currency || ' is not the program currency'
            WHEN amount IS NULL THEN 'amount is NULL' END AS reason
  FROM erp.orders
 WHERE customer = '' OR order_date IS NULL OR currency <> 'EUR' OR amount IS NULL;
CREATE VIEW erp.letters AS
SELECT row_key, account_key, reason, resolved_at IS NOT NULL AS settled
  FROM loyalty.rejected_event WHERE program_id = :pid;

-- Rows of customers on both workers: single rows, a set, COPY; some cannot
-- accrue (no amount, no date, another currency, an empty customer key).
INSERT INTO erp.orders VALUES (1, 'R-001', 120.50, '2025-04-01', 'EUR');
INSERT INTO erp.orders VALUES (2, 'R-001', NULL, '2025-04-02', 'EUR');
INSERT INTO erp.orders SELECT g, 'R-' || lpad((g % 40)::text, 3, '0'),
                              CASE WHEN g % 9 = 0 THEN NULL ELSE 10 + g % 13 END,
                              CASE WHEN g % 11 = 0 THEN NULL ELSE DATE '2025-04-01' + g % 30 END,
                              CASE WHEN g % 15 = 0 THEN 'USD' ELSE 'EUR' END
  FROM generate_series(3, 400) g;
INSERT INTO erp.orders VALUES (401, '', 50.00, '2025-04-03', 'EUR');
COPY (SELECT g, 'Q-' || (g % 25), CASE WHEN g % 7 = 0 THEN NULL ELSE g % 50 + 0.25 END,
             DATE '2025-05-01' + g % 20, 'EUR'
        FROM generate_series(1001, 1600) g) TO '/tmp/loyalty_citus_orders.csv' (FORMAT csv);
COPY erp.orders FROM '/tmp/loyalty_citus_orders.csv' (FORMAT csv);

-- From the coordinator: every unaccruable row has exactly one open letter,
-- under its account and for its reason, and nothing else is parked.
SELECT count(*) AS unaccruable, count(DISTINCT account_key) AS accounts FROM erp.orders_unaccruable;
SELECT count(*) AS letters_differing
  FROM (SELECT row_key, account_key, reason, count(*) AS n FROM erp.letters WHERE NOT settled GROUP BY 1, 2, 3) l
  FULL JOIN erp.orders_unaccruable e USING (row_key, account_key, reason)
 WHERE l.n IS DISTINCT FROM 1 OR e.row_key IS NULL;
SELECT row_key, account_key, reason FROM erp.letters WHERE row_key = '(R-001,2)' OR account_key = '' ORDER BY 1;
-- Each letter lives in the shard its account key hashes to (so a query
-- routed by the account finds it), placed on the node of the order's shard.
SELECT count(*) AS letters, count(*) FILTER (WHERE s.shardid <> pg_catalog.get_shard_id_for_distribution_column(
                                                   'loyalty.rejected_event', k.account_key)) AS in_another_shard,
       count(*) FILTER (WHERE lp.nodeport <> op.nodeport) AS on_another_node_than_the_order,
       count(DISTINCT lp.nodeport) AS workers
  FROM pg_catalog.run_command_on_shards('loyalty.rejected_event',
         $$SELECT coalesce(pg_catalog.string_agg(pg_catalog.quote_literal(account_key), ','), '') FROM %s
            WHERE program_id = $$ || :pid) r
  JOIN pg_catalog.pg_dist_shard s USING (shardid)
  CROSS JOIN LATERAL (SELECT pg_catalog.btrim(k, '''') AS account_key
                        FROM pg_catalog.unnest(pg_catalog.string_to_array(r.result, ',')) k WHERE r.result <> '') k
  JOIN pg_catalog.pg_dist_shard_placement lp ON lp.shardid = s.shardid
  JOIN pg_catalog.pg_dist_shard_placement op
    ON op.shardid = pg_catalog.get_shard_id_for_distribution_column('erp.orders', k.account_key);
SELECT count(*) AS routed_letters FROM loyalty.rejected_event WHERE program_id = :pid AND account_key = 'R-001';
SELECT count(*) AS routed_letters FROM loyalty.rejected_event WHERE program_id = :pid AND account_key = '';

-- Accrual of the rest is exact.
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.orders
         WHERE customer <> '' AND order_date IS NOT NULL AND currency = 'EUR' AND amount IS NOT NULL GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid AND points <> 0) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;

-- Settling on the shards: a parked row deleted, one corrected (it accrues
-- now), one changed to another reason (old letter settled, new one parked),
-- an empty-key row deleted; a correction rolled back changes nothing.
DELETE FROM erp.orders WHERE customer = 'R-001' AND order_id = 2;
UPDATE erp.orders SET amount = 99.99 WHERE customer = 'R-009' AND order_id = 9;
UPDATE erp.orders SET currency = 'CHF' WHERE customer = 'R-018' AND order_id = 18;
DELETE FROM erp.orders WHERE customer = '';
BEGIN;
UPDATE erp.orders SET amount = 1 WHERE customer = 'R-027' AND order_id = 27;
ROLLBACK;
SELECT row_key, account_key, reason, settled FROM erp.letters
 WHERE row_key IN ('(R-001,2)', '(R-009,9)', '(R-018,18)', '(R-027,27)') OR account_key = ''
 ORDER BY 1, settled DESC;
-- a set of corrections across shards: every missing amount filled in
UPDATE erp.orders SET amount = 5 WHERE amount IS NULL AND order_date IS NOT NULL AND currency = 'EUR';
SELECT count(*) AS letters_differing
  FROM (SELECT row_key, account_key, reason, count(*) AS n FROM erp.letters WHERE NOT settled GROUP BY 1, 2, 3) l
  FULL JOIN erp.orders_unaccruable e USING (row_key, account_key, reason)
 WHERE l.n IS DISTINCT FROM 1 OR e.row_key IS NULL;
SELECT count(*) FILTER (WHERE reason = 'amount is NULL' AND NOT settled) AS open_amount_letters,
       count(*) FILTER (WHERE reason = 'amount is NULL' AND settled) AS settled_amount_letters
  FROM erp.letters;
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.orders
         WHERE customer <> '' AND order_date IS NOT NULL AND currency = 'EUR' AND amount IS NOT NULL GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid AND points <> 0) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;

-- What a DBA does from the coordinator: marks a letter handled, once.
SELECT row_key AS handled_row FROM erp.letters WHERE NOT settled AND account_key = 'R-011' ORDER BY 1 LIMIT 1 \gset
UPDATE loyalty.rejected_event SET resolved_at = '2025-06-01 00:00+00'
 WHERE program_id = :pid AND account_key = 'R-011' AND row_key = :'handled_row';
-- (terse: the refusal comes from the worker, whose DETAIL shows the time in
-- the worker's own time zone)
\set VERBOSITY terse
UPDATE loyalty.rejected_event SET resolved_at = '2025-06-02 00:00+00'
 WHERE program_id = :pid AND account_key = 'R-011' AND row_key = :'handled_row';
\set VERBOSITY default
SELECT resolved_at AT TIME ZONE 'UTC' AS resolved_at_utc FROM loyalty.rejected_event
 WHERE program_id = :pid AND account_key = 'R-011' AND row_key = :'handled_row';

DROP VIEW erp.letters;
DROP VIEW erp.orders_unaccruable;
