
-- Rewards: the catalogue, redemption and its cancellation.
--
-- A redemption is a debit and follows the debit protocol (45_postings.sql):
-- it locks the account (loyalty._lock_for_debit), waits for transactions
-- still posting to the account (a credit note of the ERP in flight), then,
-- in later statements, reads the balance, the stock and the limits, and
-- posts.  Locks are always taken in one order: the account, then the
-- reward.  A credit note that starts after the check may still take the
-- balance below zero: that is the invoice's reversal, not an overdraft of
-- the redemption; a negative balance refuses every redemption until
-- earnings cover it.

-- Registered here rather than with the other tables (20_schema.sql), so that
-- a fresh install lists it where the upgrade from 1.0, which re-creates the
-- table, registers it again.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.redemption', '');

CREATE FUNCTION @extschema@._await_postings(program_id integer, account_key text) RETURNS integer
AS 'MODULE_PATHNAME', 'loyalty_await_postings' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._await_postings(integer, text) IS
'Internal: waits for the other transactions in progress that appended balance deltas of the account (an ERP credit note in flight), so that a debit reads a balance nobody is still changing; returns how many it waited for.';

-- Writes one reward of the catalogue (insert or replace).
CREATE FUNCTION @extschema@.set_reward(
    program           text,
    reward_id         text,
    name              text,
    points_price      bigint,
    kind              text DEFAULT 'goods',
    min_tier          text DEFAULT NULL,
    stock             integer DEFAULT NULL,
    per_account_limit integer DEFAULT NULL,
    period_limit      integer DEFAULT NULL,
    limit_period      text DEFAULT NULL,
    valid_from        date DEFAULT NULL,
    valid_until       date DEFAULT NULL,
    description       text DEFAULT NULL,
    active            boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    lad @extschema@.tier_ladder;
    kinds text[] := ARRAY['discount', 'goods', 'training', 'consultancy', 'extended_warranty',
                          'marketing_support', 'trade_show', 'service_visit', 'expert_session', 'other'];
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id, p.ladder INTO pid, lad FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF reward_id IS NULL OR reward_id = '' OR reward_id <> btrim(reward_id) OR length(reward_id) > 63 THEN
        RAISE EXCEPTION 'reward_id must be a code of 1 to 63 characters without surrounding spaces'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('reward_id %s was given.', coalesce(pg_catalog.quote_literal(reward_id), 'NULL')),
                  HINT = 'For example reward_id => ''TRAINING-SEAT''.';
    END IF;
    IF name IS NULL OR btrim(name) = '' THEN
        RAISE EXCEPTION 'name of reward "%" must not be NULL or empty', reward_id
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'name is what the partner sees in the catalogue.',
                  HINT = 'For example name => ''Training seat, 2 days''.';
    END IF;
    IF points_price IS NULL OR points_price <= 0 OR points_price > 1000000000000 THEN
        RAISE EXCEPTION 'points_price of reward "%" must be between 1 and 1000000000000', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('points_price %s was given.', coalesce(points_price::text, 'NULL')),
                  HINT = 'Give the points one unit costs.';
    END IF;
    IF kind IS NULL OR kind <> ALL (kinds) THEN
        RAISE EXCEPTION 'kind of reward "%" must be one of %', reward_id, pg_catalog.array_to_string(kinds, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('kind %s was given.', coalesce(pg_catalog.quote_literal(kind), 'NULL')),
                  HINT = 'Use other for a reward that fits none of them.';
    END IF;
    IF min_tier IS NOT NULL AND (lad IS NULL OR NOT EXISTS (SELECT FROM @extschema@.tiers(lad) t WHERE t.name = min_tier)) THEN
        RAISE EXCEPTION 'min_tier "%" is not a tier of program "%"', min_tier, program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN lad IS NULL THEN 'The program has no tier ladder.'
                                ELSE pg_catalog.format('Its tiers are %s.', lad) END,
                  HINT = 'Give a tier name of the program''s ladder (exact case), or NULL for every tier.';
    END IF;
    IF stock < 0 OR per_account_limit <= 0 OR period_limit <= 0 THEN
        RAISE EXCEPTION 'stock of reward "%" must not be negative, per_account_limit and period_limit must be positive', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('stock %s, per_account_limit %s, period_limit %s were given.',
                                             coalesce(stock::text, 'NULL'), coalesce(per_account_limit::text, 'NULL'),
                                             coalesce(period_limit::text, 'NULL')),
                  HINT = 'NULL means unlimited.';
    END IF;
    IF (period_limit IS NULL) <> (limit_period IS NULL) OR limit_period <> ALL (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'period_limit and limit_period of reward "%" go together; limit_period is month, quarter or year', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('period_limit %s, limit_period %s were given.', coalesce(period_limit::text, 'NULL'),
                                             coalesce(pg_catalog.quote_literal(limit_period), 'NULL')),
                  HINT = 'For example period_limit => 2, limit_period => ''quarter''.';
    END IF;
    IF NOT pg_catalog.isfinite(valid_from) OR NOT pg_catalog.isfinite(valid_until) OR valid_until <= valid_from THEN
        RAISE EXCEPTION 'valid_from and valid_until of reward "%" must be finite dates, valid_from before valid_until', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('valid_from %s, valid_until %s were given.', coalesce(valid_from::text, 'NULL'),
                                             coalesce(valid_until::text, 'NULL')),
                  HINT = 'NULL means no start (valid_from) or no end (valid_until); valid_until is the first day it is no longer offered.';
    END IF;
    IF active IS NULL THEN
        RAISE EXCEPTION 'active of reward "%" must not be NULL', reward_id
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'active says whether the reward can be redeemed.',
                  HINT = 'Give true or false.';
    END IF;
    INSERT INTO @extschema@.reward AS r (program_id, reward_id, name, points_price, min_tier, stock, per_account_limit,
                                         active, kind, description, valid_from, valid_until, period_limit, limit_period)
    VALUES (pid, reward_id, name, points_price, min_tier, stock, per_account_limit,
            active, kind, description, valid_from, valid_until, period_limit, limit_period)
    ON CONFLICT ON CONSTRAINT reward_pkey DO UPDATE
    SET name = excluded.name, points_price = excluded.points_price, min_tier = excluded.min_tier,
        stock = excluded.stock, per_account_limit = excluded.per_account_limit, active = excluded.active,
        kind = excluded.kind, description = excluded.description, valid_from = excluded.valid_from,
        valid_until = excluded.valid_until, period_limit = excluded.period_limit, limit_period = excluded.limit_period;
END
$$;
COMMENT ON FUNCTION @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean) IS
'Adds a reward to a program''s catalogue, or replaces it: points price, kind, minimum tier, stock, per-account and per-period limits, validity window. Redemptions already made keep their price; deactivate (active => false) instead of deleting.';

-- A redemption: one short transaction.  Written in C (src/redeem.c): the
-- checks and the debit protocol above, in two statements for a reward
-- without stock, tier or limits, through plans each backend prepares once.
CREATE FUNCTION @extschema@.redeem(
    program     text,
    account_key text,
    reward      text,
    quantity    integer DEFAULT 1,
    member      text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'loyalty_redeem'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- Its plans are kept, and every statement looks up one account by its key:
-- planned while balance_delta was empty (a new program, or just after a fold
-- and the autovacuum that follows), a kept plan would scan the whole table
-- for every later redemption as it grows.  Planning with sequential scans
-- off, whenever the plans are made or remade, keeps the index.
SET enable_seqscan = off;
COMMENT ON FUNCTION @extschema@.redeem(text, text, text, integer, text) IS
'Redeems quantity units of a reward for an account (or for one of its members, from the points they earned): checks the catalogue (active, validity window, minimum tier, stock, per-account and per-period limits) and the balance after locking the account, posts a ledger entry of kind redeem and returns the redemption''s id. Never overdraws: an insufficient balance fails with SQLSTATE LY001, a reward out of stock, out of its window or over a limit with LY002, and nothing is written.';

-- The same with the account key as a number, for an ERP whose customer keys
-- are integer or bigint.  On Citus (loyalty.distribute() around a table
-- distributed by such a key) Citus runs a call on the account's node by
-- this argument: a text key cannot be routed to an integer distribution
-- column.  A quoted key ('42') still calls the text version.
CREATE FUNCTION @extschema@.redeem(
    program     text,
    account_key bigint,
    reward      text,
    quantity    integer DEFAULT 1,
    member      text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'loyalty_redeem'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off;
COMMENT ON FUNCTION @extschema@.redeem(text, bigint, text, integer, text) IS
'loyalty.redeem(program, account_key, reward, quantity, member) with the account key as a number: the same redemption; on Citus around an ERP table distributed by an integer or bigint key, the form Citus runs on the account''s node.';

CREATE FUNCTION @extschema@.cancel_redemption(redemption_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    d record;
BEGIN
    PERFORM @extschema@._refuse_shard_query('loyalty.cancel_redemption()');
    IF redemption_id IS NULL THEN
        RAISE EXCEPTION 'redemption_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'redemption_id is what loyalty.redeem() returned.',
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    SELECT x.program_id, x.account_key::text AS account_key, x.redemption_no, x.reward_id, x.quantity INTO d
    FROM @extschema@.redemption x WHERE x.redemption_id = redemption_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'redemption_id names no redemption'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No redemption has id %s; redemption_id is what loyalty.redeem() returned.', redemption_id),
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    -- the same lock order as redeem: the account (on its node), then the
    -- reward (a reference table on Citus, written from here)
    PERFORM @extschema@._on_account_node('cancel_redemption', d.program_id, d.account_key,
                                         ARRAY[d.redemption_no::text, redemption_id::text]);
    UPDATE @extschema@.reward x SET stock = x.stock + d.quantity
    WHERE x.program_id = d.program_id AND x.reward_id = d.reward_id AND x.stock IS NOT NULL;
END
$$;
COMMENT ON FUNCTION @extschema@.cancel_redemption(uuid) IS
'Cancels a redemption: gives its points back with a ledger entry of kind redeem pointing at the original (corrects_xid, corrects), and its units back to the stock. A redemption is cancelled once.';

-- cancel_redemption's account part (args: redemption_no, redemption_id), on
-- the account's node, under the account's lock: the points back, pointing
-- at the entry that spent them, and the redemption marked cancelled.
CREATE FUNCTION @extschema@._cancel_redemption_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    redemption_no bigint := args[1]::bigint;
    redemptions text := @extschema@._table('redemption');
    d record;
    entry bigint;
BEGIN
    PERFORM @extschema@._lock_for_debit(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT x.status, x.cancelled_at, x.quantity, x.reward_id, x.points, x.member_id, x.posted_xid, x.entry_no'
                              ' FROM %s x WHERE x.program_id OPERATOR(pg_catalog.=) $1'
                              ' AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND x.redemption_no OPERATOR(pg_catalog.=) $3',
                              redemptions)
    INTO d USING program_id, account_key, redemption_no;
    IF d.status = 'cancelled' THEN
        RAISE EXCEPTION 'the redemption is already cancelled'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Redemption %s was cancelled at %s; its points were given back then.', args[2], d.cancelled_at),
                  HINT = 'Nothing to do.';
    END IF;
    entry := @extschema@._post_member(program_id, account_key, 'redeem', d.points,
                                      pg_catalog.format('cancel redemption of %s x %s', d.quantity, d.reward_id),
                                      d.member_id, corrects_xid => d.posted_xid, corrects => d.entry_no);
    EXECUTE pg_catalog.format('UPDATE %s x SET status = ''cancelled'', cancelled_at = pg_catalog.now(),'
                              ' cancel_xid = pg_catalog.pg_current_xact_id(), cancel_entry_no = $4'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.redemption_no OPERATOR(pg_catalog.=) $3', redemptions)
    USING program_id, account_key, redemption_no, entry;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._cancel_redemption_in(integer, text, text[]) IS
'Internal: loyalty.cancel_redemption''s account part (args: redemption_no, redemption_id) on the node holding the account, under its lock: posts the points back pointing at the entry that spent them and marks the redemption cancelled (refused if it already is).';

REVOKE ALL ON FUNCTION @extschema@._await_postings(integer, text),
                      @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean),
                      @extschema@.redeem(text, text, text, integer, text),
                      @extschema@.redeem(text, bigint, text, integer, text),
                      @extschema@.cancel_redemption(uuid),
                      @extschema@._cancel_redemption_in(integer, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean)
TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.redeem(text, text, text, integer, text),
                          @extschema@.redeem(text, bigint, text, integer, text),
                          @extschema@.cancel_redemption(uuid) TO loyalty_operator;
