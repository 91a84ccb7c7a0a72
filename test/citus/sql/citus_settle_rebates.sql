--
-- citus_settle_rebates: volume rebates on loyalty's distributed layout
-- (runs after citus_distribute, in the same database).  Estimates,
-- settlement lines, true-ups and adjustments are posted on each shard
-- group's node, over the co-located shards; the coordinator sums them.  Expected amounts come
-- from the ERP rows with the brackets written out in plain SQL, never with
-- loyalty.rebate().
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE TABLE erp.rebate_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                                order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.rebate_orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Rebate Club', currency => 'EUR', settlement_period => 'quarter') AS rid \gset
SELECT loyalty.attach('erp.rebate_orders', 'Rebate Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
-- 240 accounts, every second one in region EU
SELECT count(loyalty.enroll('Rebate Club', 'B-' || lpad(g::text, 3, '0'), region => CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END))
       AS enrolled
  FROM generate_series(0, 239) g;
-- one account, quarterly, retro brackets; every EU account, monthly, marginal
SELECT loyalty.create_rebate_agreement('Rebate Club', 'ONE', 'retro: 0:1%, 20000:2%', account_key => 'B-007',
                                       valid_from => '2025-01-01');
SELECT loyalty.create_rebate_agreement('Rebate Club', 'EU', 'marginal: 0:1%, 3000:2%', region => 'EU', period => 'month',
                                       valid_from => '2025-01-01');

-- The brackets, by hand: retro is the reached rate on the whole volume,
-- marginal each bracket at its own rate; a negative volume earns nothing.
CREATE FUNCTION erp.retro(v numeric) RETURNS numeric LANGUAGE sql
RETURN round(CASE WHEN v >= 20000 THEN v * 0.02 WHEN v > 0 THEN v * 0.01 ELSE 0 END, 2);
CREATE FUNCTION erp.marginal(v numeric) RETURNS numeric LANGUAGE sql
RETURN round(CASE WHEN v <= 0 THEN 0 ELSE least(v, 3000) * 0.01 + greatest(v - 3000, 0) * 0.02 END, 2);
-- every document of a covered account, by agreement and period
CREATE VIEW erp.rebate_volume AS
SELECT 'ONE' AS agreement_id, customer AS account_key, date_trunc('quarter', order_date)::date AS period_start,
       date_trunc('month', order_date)::date AS month, amount
  FROM erp.rebate_orders WHERE customer = 'B-007'
UNION ALL
SELECT 'EU', customer, date_trunc('month', order_date)::date, date_trunc('month', order_date)::date, amount
  FROM erp.rebate_orders WHERE right(customer, 3)::int % 2 = 0;

-- 4,800 orders of the first half of 2025, a few credit notes
INSERT INTO erp.rebate_orders
SELECT g, 'B-' || lpad((g % 240)::text, 3, '0'), round(50 + ((g * 37) % 900) + (g % 240) * 1.5, 2), DATE '2025-01-01' + (g * 7) % 181
  FROM generate_series(1, 4800) g;
INSERT INTO erp.rebate_orders
SELECT 10000 + g, 'B-' || lpad((g * 7 % 240)::text, 3, '0'), -(200 + g), DATE '2025-01-01' + (g * 11) % 181
  FROM generate_series(1, 60) g;
-- B-007 buys enough for the upper bracket in Q1
INSERT INTO erp.rebate_orders VALUES (20001, 'B-007', 25000, '2025-02-20');

-- Estimates as of 2025-02-15: ONE's first quarter and EU's January and
-- February, on the volume of January and February.
CREATE TEMP TABLE estimate_expected AS
SELECT agreement_id, account_key, period_start,
       CASE agreement_id WHEN 'ONE' THEN erp.retro(sum(amount)) ELSE erp.marginal(sum(amount)) END AS amount
  FROM erp.rebate_volume WHERE month <= '2025-02-01' GROUP BY 1, 2, 3;
SELECT loyalty.accrue_rebates('Rebate Club', '2025-02-15') = (SELECT sum(amount) FROM estimate_expected) AS estimated_exact;
SELECT count(*) AS estimates_differing
  FROM estimate_expected e
  FULL JOIN (SELECT agreement_id, account_key, period_start, sum(amount) AS amount FROM loyalty.rebate_posting
              WHERE program_id = :rid GROUP BY 1, 2, 3) p USING (agreement_id, account_key, period_start)
 WHERE coalesce(e.amount, 0) <> coalesce(p.amount, 0);
SELECT count(*) > 100 AS many_estimates, count(DISTINCT kind) AS kinds FROM loyalty.rebate_posting WHERE program_id = :rid;
-- idempotent
SELECT loyalty.accrue_rebates('Rebate Club', '2025-02-15') AS estimated_again;

-- Settlement of Q1 rolled back inside a transaction block: nothing on any node
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT r.status, r.rebate_total > 0 AS posted FROM loyalty.settle('Rebate Club', '2025-03-31') r;
ROLLBACK;
SELECT count(*) AS settlement_lines FROM loyalty.settlement_line WHERE program_id = :rid;
SELECT count(*) AS postings_beyond_estimates FROM loyalty.rebate_posting WHERE program_id = :rid AND kind <> 'estimate';

-- Settlement of Q1: a line per period ending by April 1st (ONE's Q1, EU's
-- January to March) with the final rebate on the volume now; the true-up
-- posted is the final less the estimates.
CREATE TEMP TABLE q1_expected AS
SELECT agreement_id, account_key, period_start, sum(amount) AS volume,
       CASE agreement_id WHEN 'ONE' THEN erp.retro(sum(amount)) ELSE erp.marginal(sum(amount)) END AS final
  FROM erp.rebate_volume WHERE period_start < '2025-04-01' GROUP BY 1, 2, 3;
SELECT r.status, r.rebate_total = (SELECT sum(final) FROM q1_expected) - (SELECT sum(amount) FROM estimate_expected) AS trueup_exact
  FROM loyalty.settle('Rebate Club', '2025-03-31') r;
SELECT count(*) AS lines_differing
  FROM (SELECT * FROM q1_expected WHERE final <> 0) e
  FULL JOIN (SELECT agreement_id, account_key, period_start, volume, final, credit_note, adjustment_no, currency
               FROM loyalty.settlement_line WHERE program_id = :rid) l USING (agreement_id, account_key, period_start)
 WHERE l.final IS DISTINCT FROM e.final OR l.volume IS DISTINCT FROM e.volume OR l.credit_note IS DISTINCT FROM e.final
    OR l.adjustment_no <> 0 OR l.currency <> 'EUR';
SELECT agreement_id, account_key, period_start, period_end, volume, final,
       replace(document_key, 'LOY-' || :rid || '-', 'LOY-<program>-') AS document_key
  FROM loyalty.settlement_line WHERE program_id = :rid AND account_key = 'B-007' ORDER BY 1, 3;
-- each account's rebate wallet holds its finals: estimates and true-ups add up
SELECT count(*) AS wallets_differing
  FROM (SELECT account_key, sum(final) AS rebate FROM q1_expected GROUP BY 1) e
  FULL JOIN (SELECT account_key, rebate FROM loyalty.balance WHERE program_id = :rid AND rebate <> 0) b USING (account_key)
 WHERE coalesce(e.rebate, 0) <> coalesce(b.rebate, 0);
-- every rebate entry has its posting, and each posting its entry
SELECT count(*) AS entries_unmatched
  FROM (SELECT account_key, posted_xid, entry_no, rebate FROM loyalty.ledger WHERE program_id = :rid AND kind = 'rebate') l
  FULL JOIN (SELECT account_key, posted_xid, entry_no, amount FROM loyalty.rebate_posting WHERE program_id = :rid) p
       USING (account_key, posted_xid, entry_no)
 WHERE l.rebate IS DISTINCT FROM p.amount;
-- the lines were written on the shards of both workers
SELECT count(DISTINCT p.nodeport) AS workers_with_lines
  FROM pg_catalog.run_command_on_shards('loyalty.settlement_line', $$SELECT count(*) FROM %s$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;
-- the same period again: the same run, no line twice
SELECT count(*) AS runs FROM loyalty.settle('Rebate Club', '2025-03-31');
SELECT count(*) AS lines, count(DISTINCT document_key) AS document_keys
  FROM loyalty.settlement_line WHERE program_id = :rid;

-- Late documents for settled periods: a credit note dated in February for
-- an EU account, and an order of March for B-007.  Settling Q2 writes Q2's
-- lines and an adjustment line for each changed period, whose credit note
-- is the change of the final rebate.
INSERT INTO erp.rebate_orders VALUES (30001, 'B-010', -400, '2025-02-10'), (30002, 'B-007', 5000, '2025-03-05');
SELECT r.status FROM loyalty.settle('Rebate Club', '2025-06-30') r;
SELECT agreement_id, account_key, period_start, adjustment_no,
       replace(document_key, 'LOY-' || :rid || '-', 'LOY-<program>-') AS document_key
  FROM loyalty.settlement_line WHERE program_id = :rid AND adjustment_no > 0 ORDER BY 1, 2;
-- every settled period's last line has the final on the ERP rows now, its
-- credit notes add up to it, and each account's rebate wallet holds its
-- finals (read again below, after the next settlement)
CREATE VIEW erp.rebate_differences AS
WITH e AS (
    SELECT agreement_id, account_key, period_start,
           CASE agreement_id WHEN 'ONE' THEN erp.retro(sum(amount)) ELSE erp.marginal(sum(amount)) END AS final
      FROM erp.rebate_volume GROUP BY 1, 2, 3)
SELECT (SELECT count(*)
          FROM (SELECT * FROM e WHERE final <> 0) e
          FULL JOIN (SELECT agreement_id, account_key, period_start,
                            (array_agg(final ORDER BY adjustment_no DESC))[1] AS final, sum(credit_note) AS credit_notes
                       FROM loyalty.settlement_line WHERE program_id = :rid GROUP BY 1, 2, 3) l
               USING (agreement_id, account_key, period_start)
         WHERE l.final IS DISTINCT FROM e.final OR l.credit_notes IS DISTINCT FROM e.final) AS periods_differing,
       (SELECT count(*)
          FROM (SELECT account_key, sum(final) AS rebate FROM e GROUP BY 1) e
          FULL JOIN (SELECT account_key, rebate FROM loyalty.balance WHERE program_id = :rid AND rebate <> 0) b
               USING (account_key)
         WHERE coalesce(e.rebate, 0) <> coalesce(b.rebate, 0)) AS wallets_differing;
SELECT * FROM erp.rebate_differences;
-- An estimate and a settlement at once (two sessions, through dblink): the
-- settlement waits for the estimate's transaction on the coordinator's
-- rebate lock, then trues up what it posted (the estimate saw July, the
-- settlement August too).  Orders of July and August.
INSERT INTO erp.rebate_orders
SELECT 40000 + g, 'B-' || lpad((g % 240)::text, 3, '0'), 100 + (g * 13) % 700, DATE '2025-07-01' + (g * 3) % 62
  FROM generate_series(1, 1200) g;
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
SELECT format('host=127.0.0.1 port=%s dbname=%s', current_setting('port'), current_database()) AS conninfo \gset
SELECT dblink_connect('s1', :'conninfo'), dblink_connect('s2', :'conninfo');
SELECT dblink_exec('s1', 'BEGIN');
SELECT * FROM dblink('s1', $$SELECT loyalty.accrue_rebates('Rebate Club', '2025-07-15') > 0$$) AS t(estimated boolean);
SELECT dblink_send_query('s2', $$SELECT status FROM loyalty.settle('Rebate Club', '2025-09-30')$$);
SELECT pg_sleep(0.5);
SELECT dblink_is_busy('s2') AS settlement_waits;
SELECT dblink_exec('s1', 'COMMIT');
SELECT * FROM dblink_get_result('s2') AS t(status text);
SELECT dblink_disconnect('s1'), dblink_disconnect('s2');
SELECT count(*) FILTER (WHERE kind = 'estimate' AND period_start >= '2025-07-01') > 0 AS q3_estimated,
       count(*) FILTER (WHERE kind = 'trueup' AND period_start >= '2025-07-01') > 0 AS q3_trued_up
  FROM loyalty.rebate_posting WHERE program_id = :rid;
SELECT * FROM erp.rebate_differences;
SELECT count(*) AS findings FROM loyalty.verify('Rebate Club');
