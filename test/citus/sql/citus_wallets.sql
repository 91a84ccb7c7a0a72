--
-- citus_wallets: the writes of one account that an operator or a portal
-- calls, on loyalty's distributed layout (runs after citus_distribute, in
-- the same database): MDF claims and their approval or rejection,
-- cancel_redemption, award and its approval or rejection.  Each is called
-- on the coordinator; its account part runs on the node holding the
-- account's shard group, where it locks the account, checks the wallet or
-- the balance and posts with that node's transaction id.  Expected
-- figures come from the ERP rows and the calls made here, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;

CREATE TABLE erp.wallet_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                                order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.wallet_orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Wallet Club', ladder => 'Silver:1000, Gold:3000', qualification_window => '3 months') AS wid \gset
SELECT loyalty.attach('erp.wallet_orders', 'Wallet Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
SELECT loyalty.set_benefit('Wallet Club', 'Gold', 'mdf_rate', '0.05');
-- 60 customers, every one Gold in Q1 (at least 3,000 of spend)
INSERT INTO erp.wallet_orders SELECT g, 'W-' || lpad((g % 60)::text, 2, '0'), 100 + (g % 60), DATE '2025-01-01' + g % 89
  FROM generate_series(1, 3000) g;
SELECT r.status FROM loyalty.settle('Wallet Club', '2025-03-31') r;
-- every wallet holds 5% of the account's Q1 spend, on shards of both workers
CREATE TEMP TABLE credited AS
SELECT customer AS account_key, round(sum(amount) * 0.05, 2) AS mdf FROM erp.wallet_orders GROUP BY 1;
SELECT count(*) AS wallets_differing
  FROM credited c FULL JOIN (SELECT account_key, mdf FROM loyalty.balance WHERE program_id = :wid) b USING (account_key)
 WHERE c.mdf IS DISTINCT FROM b.mdf;
SELECT count(DISTINCT nodeport) AS workers
  FROM credited c, LATERAL (SELECT nodeport FROM pg_catalog.pg_dist_shard_placement
                             WHERE shardid = pg_catalog.get_shard_id_for_distribution_column('loyalty.account', c.account_key)) p;

-- MDF claims of every account: 40% of the wallet each, one in three with a
-- reference; a claim of the same reference again is the same claim
CREATE TEMP TABLE claims AS
SELECT c.account_key, round(c.mdf * 0.4, 2) AS amount,
       CASE WHEN right(c.account_key, 2)::int % 3 = 0 THEN 'portal-' || c.account_key END AS reference,
       loyalty.claim_mdf('Wallet Club', c.account_key, round(c.mdf * 0.4, 2), 'Trade fair',
                         CASE WHEN right(c.account_key, 2)::int % 3 = 0 THEN 'portal-' || c.account_key END) AS claim_id
  FROM credited c;
SELECT count(*) AS claims, count(DISTINCT claim_id) AS ids FROM claims;
SELECT count(*) AS same_claim_again
  FROM claims c WHERE c.reference IS NOT NULL
   AND loyalty.claim_mdf('Wallet Club', c.account_key, c.amount, 'Trade fair', c.reference) = c.claim_id;
SELECT f.claims_filed, f.amount = c.amount AS amounts_agree
  FROM (SELECT count(*) AS claims_filed, sum(amount) AS amount FROM loyalty.mdf_claim
         WHERE program_id = :wid AND status = 'pending') f,
       (SELECT sum(amount) AS amount FROM claims) c;
-- a second claim of 70% finds 60% available: refused, nothing filed
SELECT loyalty.claim_mdf('Wallet Club', 'W-07', round(mdf * 0.7, 2), 'Showroom') FROM credited WHERE account_key = 'W-07';
SELECT loyalty.claim_mdf('Wallet Club', 'W-09', 1.00, 'Showroom', 'portal-W-09');   -- the reference of another claim
SELECT loyalty.claim_mdf('Wallet Club', 'W-99', 1.00, 'Showroom');                  -- not enrolled
-- what the portal types goes to the account's node as it was typed
SELECT loyalty.claim_mdf('Wallet Club', 'W-12', 0.50, $$10% off 'spring' %s \ fair$$, $$ref-'%'$$) AS odd_claim \gset
SELECT purpose, reference, amount FROM loyalty.mdf_claim WHERE claim_id = :'odd_claim';
SELECT loyalty.reject_mdf_claim(:'odd_claim', $$note %% 'x'$$);
SELECT status, note FROM loyalty.mdf_claim WHERE claim_id = :'odd_claim';
-- approve the even accounts' claims, reject the odd ones'
SELECT count(*) FILTER (WHERE s = 'approved') AS approved, count(*) FILTER (WHERE s = 'rejected') AS rejected
  FROM (SELECT CASE WHEN right(account_key, 2)::int % 2 = 0 THEN loyalty.approve_mdf_claim(claim_id, 'ok')
                    ELSE loyalty.reject_mdf_claim(claim_id, 'no receipt') END AS s
          FROM claims ORDER BY account_key) d;
-- the same decision again changes nothing; the other one is refused
SELECT loyalty.approve_mdf_claim(claim_id) AS again FROM claims WHERE account_key = 'W-02';
\set VERBOSITY terse
-- (terse: the details name the claim's id)
SELECT loyalty.reject_mdf_claim(claim_id) FROM claims WHERE account_key = 'W-02';
SELECT loyalty.approve_mdf_claim(claim_id) FROM claims WHERE account_key = 'W-03';
\set VERBOSITY default
SELECT loyalty.approve_mdf_claim('00000000-0000-0000-0000-000000000000');
-- the decisions as the claims table records them, by the session's user
SELECT status, count(*), count(*) FILTER (WHERE decided_by = session_user) AS by_this_user,
       count(*) FILTER (WHERE (status = 'approved') = (posted_xid IS NOT NULL AND entry_no IS NOT NULL)) AS entries_consistent
  FROM loyalty.mdf_claim WHERE program_id = :wid GROUP BY 1 ORDER BY 1;
-- wallets: the credit less the approved claims
SELECT count(*) AS wallets_differing
  FROM (SELECT c.account_key, c.mdf - CASE WHEN right(c.account_key, 2)::int % 2 = 0 THEN k.amount ELSE 0 END AS mdf
          FROM credited c JOIN claims k USING (account_key)) e
  FULL JOIN (SELECT account_key, mdf FROM loyalty.balance WHERE program_id = :wid) b USING (account_key)
 WHERE e.mdf IS DISTINCT FROM b.mdf;
-- every claim entry was written on its account's node, with that node's
-- transaction id (the one that inserted the row there)
SELECT sum(result::int) AS claim_entries
  FROM pg_catalog.run_command_on_shards('loyalty.ledger', $$SELECT count(*) FROM %s WHERE kind = 'mdf' AND reason LIKE 'mdf claim%%'$$);
SELECT sum(result::int) AS claim_entries_with_their_nodes_xid
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind = 'mdf' AND reason LIKE 'mdf claim%%'
            AND (posted_xid::text::bigint %% 4294967296)::text = xmin::text$$);
SELECT sum(result::int) AS claim_deltas_with_their_nodes_xid
  FROM pg_catalog.run_command_on_shards('loyalty.balance_delta',
       $$SELECT count(*) FROM %s WHERE mdf < 0 AND (posted_xid::text::bigint %% 4294967296)::text = xmin::text$$);

-- Inside one transaction: a claim and its approval commit together, or
-- roll back together
BEGIN;
SELECT loyalty.claim_mdf('Wallet Club', 'W-10', 1.00, 'Brochures', 'tx-1') AS tx_claim \gset
SELECT loyalty.approve_mdf_claim(:'tx_claim');
ROLLBACK;
SELECT count(*) AS rolled_back_claims FROM loyalty.mdf_claim WHERE program_id = :wid AND reference = 'tx-1';
BEGIN;
SELECT loyalty.claim_mdf('Wallet Club', 'W-10', 1.00, 'Brochures', 'tx-2') AS tx_claim \gset
SELECT loyalty.approve_mdf_claim(:'tx_claim');
SELECT loyalty.claim_mdf('Wallet Club', 'W-11', 1.00, 'Brochures', 'tx-2') IS NOT NULL AS other_account_claimed;
COMMIT;
SELECT account_key, status FROM loyalty.mdf_claim WHERE program_id = :wid AND reference = 'tx-2' ORDER BY 1;
SELECT b.mdf = c.mdf - k.amount - 1.00 AS w10_paid
  FROM loyalty.balance b, credited c, claims k
 WHERE b.program_id = :wid AND b.account_key = 'W-10' AND c.account_key = 'W-10' AND k.account_key = 'W-10';

-- One statement that claims three times and fails at the third: nothing
-- of it stays, on any node
SELECT loyalty.claim_mdf('Wallet Club', k, CASE WHEN k = 'W-53' THEN 1000000 ELSE 1 END, 'Atomic')
  FROM (VALUES ('W-51'), ('W-52'), ('W-53')) v(k);
SELECT count(*) AS claims_of_the_failed_statement FROM loyalty.mdf_claim WHERE program_id = :wid AND purpose = 'Atomic';

-- Two portals claim most of one wallet at once: the account's lock on its
-- node lets one through; the other then finds the wallet spent.
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT format('host=127.0.0.1 port=%s dbname=%s', current_setting('port'), current_database()) AS conninfo \gset
SELECT mdf AS w20 FROM loyalty.balance WHERE program_id = :wid AND account_key = 'W-20' \gset
SELECT dblink_connect('p1', :'conninfo'), dblink_connect('p2', :'conninfo');
SELECT dblink_exec('p1', 'BEGIN');
SELECT claim IS NOT NULL AS first_claimed
  FROM dblink('p1', format($$SELECT loyalty.claim_mdf('Wallet Club', 'W-20', %s, 'Race one')::text$$, round(:w20 * 0.6, 2)))
       AS t(claim text);
SELECT dblink_send_query('p2', format($$SELECT loyalty.claim_mdf('Wallet Club', 'W-20', %s, 'Race two')::text$$, round(:w20 * 0.6, 2)));
SELECT pg_sleep(0.5);
SELECT dblink_is_busy('p2') AS second_waits;
SELECT dblink_exec('p1', 'COMMIT');
SELECT * FROM dblink_get_result('p2', false) AS t(claim text);
SELECT dblink_error_message('p2') LIKE '%of MDF available%' AS second_refused;
SELECT dblink_disconnect('p1'), dblink_disconnect('p2');
SELECT purpose, status FROM loyalty.mdf_claim WHERE program_id = :wid AND account_key = 'W-20' AND purpose LIKE 'Race%';

-- Redemptions cancelled: the points back, pointing at the entry that spent
-- them, and the units back to the stock
SELECT loyalty.set_reward('Wallet Club', 'CAP', 'Cap', 50, stock => 100);
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Wallet Club', 'W-30', 'CAP', 2) r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Wallet Club', 'W-31', 'CAP', 3) r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Wallet Club', 'W-32', 'CAP', 1) r;
SELECT stock AS before_cancel FROM loyalty.reward WHERE program_id = :wid AND reward_id = 'CAP';
-- called in a query over loyalty.redemption itself, Citus pushes the call
-- into the shard queries, where it cannot run: refused, saying so...
SELECT loyalty.cancel_redemption(redemption_id) FROM loyalty.redemption WHERE program_id = :wid AND account_key = 'W-30';
SELECT loyalty.reject_mdf_claim(claim_id) FROM loyalty.mdf_claim WHERE program_id = :wid AND status = 'pending';
-- ...the ids read first (a temporary table, \gset), it runs
CREATE TEMP TABLE to_cancel AS
SELECT redemption_id, account_key FROM loyalty.redemption WHERE program_id = :wid AND account_key IN ('W-30', 'W-31');
SELECT loyalty.cancel_redemption(redemption_id) FROM to_cancel ORDER BY account_key;
SELECT redemption_id AS w30 FROM to_cancel WHERE account_key = 'W-30' \gset
\set VERBOSITY terse
SELECT loyalty.cancel_redemption(:'w30');
\set VERBOSITY default
SELECT loyalty.cancel_redemption('00000000-0000-0000-0000-000000000000');
SELECT stock AS after_cancel FROM loyalty.reward WHERE program_id = :wid AND reward_id = 'CAP';
SELECT account_key, quantity, points, status, cancel_xid IS NOT NULL AS cancel_posted
  FROM loyalty.redemption WHERE program_id = :wid ORDER BY 1;
-- the cancelling entries point at the entries that spent the points
SELECT count(*) AS cancels_pointing_at_their_redemption
  FROM loyalty.ledger c JOIN loyalty.redemption r
       ON r.program_id = c.program_id AND r.account_key = c.account_key
      AND c.corrects_xid = r.posted_xid AND c.corrects = r.entry_no
      AND c.posted_xid = r.cancel_xid AND c.entry_no = r.cancel_entry_no
 WHERE c.program_id = :wid AND c.kind = 'redeem' AND c.points > 0;
-- points: the rows' less what stays redeemed
SELECT count(*) AS points_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.wallet_orders GROUP BY 1) e
  LEFT JOIN (SELECT account_key, sum(points)::bigint AS spent FROM loyalty.redemption
              WHERE program_id = :wid AND status <> 'cancelled' GROUP BY 1) r USING (account_key)
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :wid) b USING (account_key)
 WHERE e.points - coalesce(r.spent, 0) IS DISTINCT FROM b.points;

-- Awards: posted on the account's node; the cap and the reference checked
-- there; decisions by id
SELECT loyalty.set_action_rule('Wallet Club', 'webinar', 40, cap_points => 100, cap_period => 'month', valid_from => '2025-01-01');
SELECT loyalty.set_action_rule('Wallet Club', 'training', 200, needs_approval => true, valid_from => '2025-01-01');
SELECT loyalty.award('Wallet Club', 'W-40', 'webinar', '2025-02-03', reference => 'crm-' || g) IS NOT NULL AS awarded
  FROM generate_series(1, 4) g;
SELECT loyalty.award('Wallet Club', 'W-40', 'webinar', '2025-02-03', reference => 'crm-1') IS NOT NULL AS same_event_again;
SELECT loyalty.award('Wallet Club', 'W-40', 'webinar', '2025-02-04', reference => 'crm-1');     -- another event, same reference
SELECT loyalty.award('Wallet Club', 'W-41', 'training', '2025-02-05') AS approve_me \gset
SELECT loyalty.award('Wallet Club', 'W-42', 'training', '2025-02-05') AS reject_me \gset
SELECT loyalty.approve_award(:'approve_me'), loyalty.reject_award(:'reject_me');
SELECT loyalty.approve_award(:'approve_me') AS again;
\set VERBOSITY terse
SELECT loyalty.approve_award(:'reject_me');
SELECT loyalty.reject_award(:'approve_me');
\set VERBOSITY default
-- an account key with a quote, a % and a backslash is routed by its value
SELECT loyalty.enroll('Wallet Club', $$O'Neil %s 100% \$$) IS NOT NULL AS enrolled;
SELECT loyalty.award('Wallet Club', $$O'Neil %s 100% \$$, 'training', '2025-02-05', reference => $$it's 50%$$) AS odd_award \gset
SELECT loyalty.approve_award(:'odd_award');
SELECT account_key, points, reference, status FROM loyalty.award WHERE award_id = :'odd_award';
SELECT points FROM loyalty.balance WHERE program_id = :wid AND account_key = $$O'Neil %s 100% \$$;
SELECT account_key, reference, points, capped, status, decided_by = session_user AS by_this_user
  FROM loyalty.award WHERE program_id = :wid ORDER BY 1, 2;
SELECT account_key, sum(points) AS awarded FROM loyalty.ledger WHERE program_id = :wid AND kind = 'award' GROUP BY 1 ORDER BY 1;
SELECT sum(result::int) AS award_entries
  FROM pg_catalog.run_command_on_shards('loyalty.ledger', $$SELECT count(*) FROM %s WHERE kind = 'award'$$);
SELECT sum(result::int) AS award_entries_with_their_nodes_xid
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind = 'award' AND (posted_xid::text::bigint %% 4294967296)::text = xmin::text$$);
SELECT sum(result::int) AS cancel_entries_with_their_nodes_xid
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind = 'redeem' AND points > 0 AND (posted_xid::text::bigint %% 4294967296)::text = xmin::text$$);

-- nothing above is refused by verify, and a fold changes no balance
SELECT count(*) AS verify_findings FROM loyalty.verify('Wallet Club');
CREATE TEMP TABLE before_fold AS SELECT account_key, points, mdf FROM loyalty.balance WHERE program_id = :wid;
SELECT loyalty.fold('Wallet Club') > 0 AS folded;
SELECT count(*) AS balances_changed_by_fold
  FROM before_fold f FULL JOIN (SELECT account_key, points, mdf FROM loyalty.balance WHERE program_id = :wid) b USING (account_key)
 WHERE (f.points, f.mdf) IS DISTINCT FROM (b.points, b.mdf);

-- A shard group moved to the other worker keeps its rows' transaction ids,
-- which are the first node's: ids this node may not have reached yet.  A
-- claim there waits only for this node's transactions still posting.
SELECT p.nodeport AS src, (SELECT min(nodeport) FROM pg_catalog.pg_dist_node
                            WHERE groupid > 0 AND nodeport <> p.nodeport) AS dst,
       p.shardid AS moving
  FROM pg_catalog.pg_dist_shard_placement p
 WHERE p.shardid = pg_catalog.get_shard_id_for_distribution_column('loyalty.account', 'W-50') \gset
-- the first node runs ahead: 3,000 transaction ids more than the other
SELECT dblink_connect('src', format('host=127.0.0.1 port=%s dbname=%s', :src, current_database()));
SELECT dblink_exec('src', $$CREATE TABLE burn (i int)$$);
SELECT dblink_exec('src', $b$DO $d$ BEGIN FOR i IN 1..3000 LOOP BEGIN INSERT INTO burn VALUES (i); RAISE EXCEPTION 'next'; EXCEPTION WHEN raise_exception THEN NULL; END; END LOOP; END $d$$b$);
SELECT dblink_exec('src', $$DROP TABLE burn$$);
SELECT dblink_disconnect('src');
-- a posting of W-50 there, with one of those ids, then the move
SELECT loyalty.claim_mdf('Wallet Club', 'W-50', 1.00, 'Before the move') AS before_move \gset
SELECT loyalty.approve_mdf_claim(:'before_move');
SELECT pg_catalog.citus_move_shard_placement(:moving, '127.0.0.1', :src, '127.0.0.1', :dst, shard_transfer_mode => 'block_writes');
SELECT nodeport = :dst AS moved FROM pg_catalog.pg_dist_shard_placement WHERE shardid = :moving;
SELECT loyalty.claim_mdf('Wallet Club', 'W-50', 1.00, 'After the move') IS NOT NULL AS claimed_after_the_move;
SELECT r IS NOT NULL AS redeemed_after_the_move FROM loyalty.redeem('Wallet Club', 'W-50', 'CAP') r;
SELECT b.mdf = c.mdf - k.amount - 1.00 AS w50_wallet_right
  FROM loyalty.balance b, credited c, claims k
 WHERE b.program_id = :wid AND b.account_key = 'W-50' AND c.account_key = 'W-50' AND k.account_key = 'W-50';
SELECT count(*) AS verify_findings FROM loyalty.verify('Wallet Club');

-- ...and the moved rows' ids are ids this node will reach: postings of the
-- same account with them must not repeat a moved entry's key (posted_xid,
-- entry_no).  The node is run up to just below the id of W-50's entry from
-- the first node, then 200 approvals of W-50 follow, one transaction each
-- on this node, past that id: all are posted (one with an id a moved
-- entry of W-50 has was refused as a duplicate key before entries were
-- numbered per node).
SELECT max(posted_xid::text::bigint) AS moved_xid FROM loyalty.ledger
 WHERE program_id = :wid AND account_key = 'W-50' AND reason LIKE 'mdf claim: Before the move%' \gset
SELECT dblink_connect('dst', format('host=127.0.0.1 port=%s dbname=%s', :dst, current_database()));
SELECT dblink_exec('dst', $$CREATE TABLE burn (i int)$$);
SELECT xid AS dst_xid FROM dblink('dst', $$SELECT pg_catalog.pg_current_xact_id()::text::bigint$$) AS t(xid bigint) \gset
SELECT :moved_xid > :dst_xid + 60 AS first_node_was_ahead;
SELECT dblink_exec('dst', format($b$DO $d$ BEGIN FOR i IN 1..%s LOOP BEGIN INSERT INTO burn VALUES (i); RAISE EXCEPTION 'next'; EXCEPTION WHEN raise_exception THEN NULL; END; END LOOP; END $d$$b$,
                                 :moved_xid - :dst_xid - 60));
SELECT dblink_exec('dst', $$DROP TABLE burn$$);
SELECT dblink_disconnect('dst');
CREATE TEMP TABLE near_claims AS
SELECT g, loyalty.claim_mdf('Wallet Club', 'W-50', 0.01, 'Near ' || g) AS claim_id FROM generate_series(1, 200) g;
-- (one statement each, their echo and results left out: they name ids)
\set ECHO none
\o /dev/null
SELECT format('SELECT loyalty.approve_mdf_claim(%L)', claim_id) FROM near_claims ORDER BY g \gexec
\o
\set ECHO all
SELECT count(*) AS approved FROM loyalty.mdf_claim WHERE program_id = :wid AND purpose LIKE 'Near %' AND status = 'approved';
SELECT min(posted_xid::text::bigint) <= :moved_xid AND max(posted_xid::text::bigint) >= :moved_xid AS approvals_spanned_the_moved_id
  FROM loyalty.ledger WHERE program_id = :wid AND account_key = 'W-50' AND reason LIKE 'mdf claim: Near%';
SELECT count(*) AS verify_findings FROM loyalty.verify('Wallet Club');
