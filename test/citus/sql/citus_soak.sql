--
-- citus_soak: four ERP sessions at once on an invoice table distributed
-- with loyalty's tables, each transaction an INSERT, an UPDATE and a
-- DELETE of the same customer among 40, for five seconds.  No session may
-- fail (no deadlock, no serialization failure, no unique violation of
-- loyalty's keys), and afterwards every account's points equal its rows.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';

CREATE TABLE erp.soak_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                         order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.soak_orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Soak Club') > 0 AS created;
SELECT loyalty.attach('erp.soak_orders', 'Soak Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'order_date') > 0 AS attached;
INSERT INTO erp.soak_orders SELECT g, (g % 40)::text, 10 + g % 13, DATE '2025-01-01' + g % 60
  FROM generate_series(1, 4000) g;

-- the sessions: pgbench on the coordinator (pg_regress gives the host and
-- port).  The rows updated and the rows deleted are disjoint, so that the
-- ERP's own statements cannot deadlock each other: any failure is loyalty's.
\setenv PGDATABASE :DBNAME
\! printf '%s\n' '\set c random(0, 39)' '\set i random(5000, 900000000)' '\set a random(1, 500)' 'BEGIN;' 'INSERT INTO erp.soak_orders VALUES (:i, (:c)::text, :a, make_date(2025, 2, 1 + :c % 28)) ON CONFLICT DO NOTHING;' 'UPDATE erp.soak_orders SET amount = amount + 1 WHERE customer = (:c)::text AND order_id = (:i % 50) * 80 + :c;' 'DELETE FROM erp.soak_orders WHERE customer = (:c)::text AND order_id = (:i % 49) * 80 + 40 + :c;' 'COMMIT;' > /tmp/loyalty_citus_soak.pgb
\! pgbench -n -c 4 -j 4 -T 5 -f /tmp/loyalty_citus_soak.pgb 2>&1 | grep -E '^number of failed|aborted|ERROR'

SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.soak_orders GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance
              WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Soak Club')) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;
SELECT count(*) > 4000 AS more_rows_than_before FROM erp.soak_orders;
