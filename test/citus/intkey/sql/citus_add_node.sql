--
-- citus_add_node: a worker added after loyalty.distribute(), in a database
-- of its own (bigint customer keys).  scripts/test-citus.sh starts a spare
-- node on the port after the workers', with this database and Citus but
-- not registered.  Citus alone would refuse it: CREATE EXTENSION loyalty,
-- which Citus runs there, makes text account keys, and the distributed
-- tables' metadata then does not fit.  loyalty.add_node() lays the node out
-- as distribute() laid out the others and adds it; Citus's rebalancer moves
-- shards there; accrual, verify, settlement, redemption, awards and claims
-- then work on its shards.  Citus copies loyalty.attachment there as text
-- (its row-typed column), so that its regclass columns name the new node's
-- own tables; a detached attachment of a table the node will not have
-- (or of a dropped one) keeps its names only.  Expected figures come
-- from the ERP rows.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';
SET client_min_messages = warning;
CREATE EXTENSION loyalty;
RESET client_min_messages;
SELECT current_setting('port')::int + 3 AS spare \gset

CREATE SCHEMA erp;
CREATE TABLE erp.orders (order_id bigint NOT NULL, customer_id bigint NOT NULL, amount numeric(12,2) NOT NULL,
                         order_date date NOT NULL, PRIMARY KEY (customer_id, order_id));
SELECT create_distributed_table('erp.orders', 'customer_id');
SET client_min_messages = warning;
SELECT count(*) AS tables_laid_out FROM loyalty.distribute('erp.orders');
RESET client_min_messages;
SELECT loyalty.create_program('Grow Club', ladder => 'Gold:1') AS gid \gset
SELECT loyalty.attach('erp.orders', 'Grow Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
SELECT loyalty.set_benefit('Grow Club', 'Gold', 'mdf_rate', '0.1');
INSERT INTO erp.orders SELECT g, 8000000000 + g % 300, 10 + g % 7, DATE '2025-01-01' + g % 80
  FROM generate_series(1, 6000) g;

-- a table attached once, detached, then made a plain table of the
-- coordinator again (undistribute_table makes a new table): the detached
-- attachment holds the OID of a dropped table, which the new node may have
-- given to another one
CREATE TABLE erp.old_orders (LIKE erp.orders INCLUDING ALL);
SELECT create_distributed_table('erp.old_orders', 'customer_id', colocate_with => 'erp.orders');
SELECT loyalty.attach('erp.old_orders', 'Grow Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'order_date') AS old_attachment \gset
SELECT loyalty.detach('erp.old_orders', 'Grow Club');
SET client_min_messages = warning;
SELECT undistribute_table('erp.old_orders');
RESET client_min_messages;

-- refused to whoever is not a superuser (an admin of the programs too),
-- and without a host
CREATE ROLE grow_dba;
GRANT loyalty_admin TO grow_dba;
SET ROLE grow_dba;
SELECT loyalty.add_node('127.0.0.1', :spare);
RESET ROLE;
DROP ROLE grow_dba;
SELECT loyalty.add_node(NULL, :spare);
-- the node made and laid out, then added
SELECT loyalty.add_node('127.0.0.1', :spare) > 0 AS added;
SELECT count(*) AS workers FROM pg_catalog.pg_dist_node WHERE groupid > 0 AND isactive;
-- the detached attachment keeps its names; its table is '-' (no relation)
SELECT source, source_name, names_at_attach FROM loyalty.attachment WHERE attachment_id = :old_attachment;
SELECT result AS key_type_on_the_new_node
  FROM pg_catalog.run_command_on_workers($$SELECT pg_catalog.format_type(typbasetype, NULL) FROM pg_catalog.pg_type
                                           WHERE typname = 'account_key'$$)
 WHERE nodeport = :spare;
-- adding it again is Citus's answer (it is there already)
SELECT loyalty.add_node('127.0.0.1', :spare) > 0 AS added_again;

-- shards move to it
SET client_min_messages = warning;  -- which shards move is Citus's choice
SELECT pg_catalog.rebalance_table_shards();
RESET client_min_messages;
-- the attachment there names that node's own erp.orders (Citus copied it by name)
SELECT result AS attached_table_on_the_new_node
  FROM pg_catalog.run_command_on_workers($$SELECT string_agg(format('%s %s', source, source = 'erp.orders'::regclass), ', ')
                                           FROM loyalty.attachment WHERE detached_at IS NULL$$)
 WHERE nodeport = :spare;
SELECT count(DISTINCT nodeport) AS nodes_with_account_shards, bool_or(nodeport = :spare) AS the_new_one_too
  FROM pg_catalog.pg_dist_shard_placement p JOIN pg_catalog.pg_dist_shard s USING (shardid)
 WHERE s.logicalrelid = 'loyalty.account'::regclass;

-- more rows, some of accounts whose shards moved; every balance as the rows say
INSERT INTO erp.orders SELECT g, 8000000000 + g % 400, 10 + g % 7, DATE '2025-02-01' + g % 50
  FROM generate_series(6001, 12000) g;
UPDATE erp.orders SET amount = amount + 1 WHERE order_id % 97 = 0;
DELETE FROM erp.orders WHERE order_id % 89 = 0;
CREATE TABLE erp.expected AS
SELECT customer_id AS account_key, sum(trunc(amount))::bigint AS points, sum(amount) AS spend
  FROM erp.orders GROUP BY 1;
SELECT count(*) AS balances_differing
  FROM erp.expected e FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :gid) b USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;
SELECT count(*) AS accounts_on_the_new_node
  FROM erp.expected e
 WHERE (SELECT nodeport FROM pg_catalog.pg_dist_shard_placement
         WHERE shardid = pg_catalog.get_shard_id_for_distribution_column('loyalty.account', e.account_key)) = :spare
HAVING count(*) > 0;
SELECT * FROM loyalty.verify('Grow Club');

-- settlement credits every wallet, on every node
SELECT r.status FROM loyalty.settle('Grow Club', '2025-03-31') r;
SELECT count(*) AS wallets_differing
  FROM (SELECT account_key, round(spend * 0.1, 2) AS mdf FROM erp.expected) e
  FULL JOIN (SELECT account_key, mdf FROM loyalty.balance WHERE program_id = :gid) b USING (account_key)
 WHERE e.mdf IS DISTINCT FROM b.mdf;

-- the account steps and a redemption for an account on the new node
SELECT min(e.account_key) AS moved
  FROM erp.expected e
 WHERE (SELECT nodeport FROM pg_catalog.pg_dist_shard_placement
         WHERE shardid = pg_catalog.get_shard_id_for_distribution_column('loyalty.account', e.account_key)) = :spare \gset
SELECT loyalty.set_reward('Grow Club', 'MUG', 'Mug', 100);
SELECT loyalty.set_action_rule('Grow Club', 'webinar', 25, valid_from => '2025-01-01');
SELECT loyalty.claim_mdf('Grow Club', :'moved', 5.00, 'Fair') AS claim \gset
SELECT loyalty.approve_mdf_claim(:'claim');
SELECT loyalty.award('Grow Club', :'moved', 'webinar', '2025-03-01') IS NOT NULL AS awarded;
\c -
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Grow Club', :moved, 'MUG') r;
SELECT b.points = e.points - 100 + 25 AS points_right, b.mdf = round(e.spend * 0.1, 2) - 5.00 AS wallet_right
  FROM loyalty.balance b JOIN erp.expected e USING (account_key)
 WHERE b.program_id = :gid AND b.account_key = :moved;
-- written on the new node, with its transaction ids
SELECT sum(result::int) AS entries_with_their_nodes_xid_on_the_new_node
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind IN ('award', 'redeem') AND (posted_xid::text::bigint %% 4294967296)::text = xmin::text$$) s
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE p.nodeport = :spare;
SELECT * FROM loyalty.verify('Grow Club');
