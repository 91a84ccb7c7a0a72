
-- Postings that do not come from an invoice row: redemptions, awards, expiry,
-- rebates, MDF, adjustments.  They go through one place, as the trigger's do:
-- a ledger entry and a balance delta in the same transaction, numbered from
-- the transaction's own counter (no sequence, no shared row to lock), so that
-- loyalty.balance, the fold and verify() see them as they see accrual.

CREATE FUNCTION @extschema@._ledger_number() RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_ledger_number' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@._ledger_number() IS
'Internal: the next ledger entry number of the current transaction.';

CREATE FUNCTION @extschema@._post(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    rebate       numeric DEFAULT 0,
    mdf          numeric DEFAULT 0,
    member_id    text DEFAULT NULL,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_post' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._post(integer, text, @extschema@.ledger_kind, bigint, text, numeric, numeric, text, xid8, bigint) IS
'Internal: posts one ledger entry that does not come from an invoice row (redeem, expire, award, rebate, mdf, adjust) with its balance delta; returns its entry number within the transaction (NULL when there is nothing to post).';

-- A debit (redemption, MDF claim, expiry) checks a balance and then lowers
-- it.  Two debits of one account must not both pass the check on the same
-- balance: each first takes the account's next debit number, which locks its
-- row until commit.  Under READ COMMITTED the debit's next statement then
-- sees every debit committed before; under REPEATABLE READ or SERIALIZABLE a
-- debit committed since the snapshot makes this UPDATE fail with
-- serialization_failure instead of overdrawing.  Accrual never takes this
-- lock: the ERP's statements do not wait for debits.
CREATE FUNCTION @extschema@._lock_for_debit(program_id integer, account_key text) RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_lock_for_debit' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._lock_for_debit(integer, text) IS
'Internal: locks an account for a debit until commit and returns its next debit number.';

-- The writes of one account that an operator or a portal calls (MDF claims
-- and their decisions, cancelled redemptions, awards and their decisions)
-- do their checks where they are called, then hand the account's part,
-- loyalty._<step>_in(program, account, args), to _on_account_node: on one
-- server it runs right there; after loyalty.distribute() Citus routes it to
-- the node holding the account's shard group, where it locks, waits, checks
-- and posts over the co-located shards (named by _table) with that node's
-- transaction id, as an accrual there does (src/account_calls.c).
CREATE FUNCTION @extschema@._table(name text) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_table_name' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._table(text) IS
'Internal: loyalty''s table of that name as the account steps address it (loyalty.<name>; inside _account_shard on a Citus worker, its shard co-located with the account''s, or this node''s placement of a reference table), quoted for a statement.';

CREATE FUNCTION @extschema@._on_account_node(step text, program_id integer, account_key text, args text[]) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_on_account_node' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._on_account_node(text, integer, text, text[]) IS
'Internal: runs loyalty._<step>_in(program_id, account_key, args) (steps claim_mdf, decide_mdf_claim, cancel_redemption, award, decide_award) on the node holding the account''s rows: here on one server, on Citus in one query routed to the account''s shard of loyalty.account (_account_shard); returns its result as text.';

CREATE FUNCTION @extschema@._account_shard(step text, program_id integer, account_key text, args text[], shard text) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_account_shard_call' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._account_shard(text, integer, text, text[], text) IS
'Internal: on a Citus worker, inside the query _on_account_node routed there, loyalty._<step>_in over the shards co-located with the given shard of loyalty.account; returns its result as text.';

-- A call Citus sent into a query on a shard (SELECT loyalty.approve_award(id)
-- FROM loyalty.award ...: Citus pushes the call down with the query) runs on
-- a worker, inside the shard's task, where it can neither read loyalty's
-- distributed tables nor route its account part: refused, saying what to do
-- instead.  Citus's own connections name themselves citus_internal.
CREATE FUNCTION @extschema@._refuse_shard_query(fn text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_setting('application_name') LIKE 'citus\_internal gpid=%' THEN
        RAISE EXCEPTION '% cannot run inside a query on a Citus shard', fn
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Citus sent the call to a worker with a query over one of loyalty''s distributed tables; the call finds its account and sends the account''s part to its node itself.',
                  HINT = 'Read the ids first (a temporary table, \gset, the application), then call it in a statement of its own, e.g. SELECT loyalty.approve_award(award_id) FROM my_ids.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_shard_query(text) IS
'Internal: refuses (0A000) a call of fn that Citus sent to a worker inside a query on a shard, where the account steps cannot run.';

