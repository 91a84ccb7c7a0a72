
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
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._ledger_number();
BEGIN
    IF kind = ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[]) THEN
        RAISE EXCEPTION 'ledger kind % is posted by accrual only', kind
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Accrual kinds are derived from invoice rows and checked against them by verify().';
    END IF;
    IF coalesce(points, 0) = 0 AND coalesce(rebate, 0) = 0 AND coalesce(mdf, 0) = 0 THEN
        RETURN NULL;            -- nothing to post
    END IF;
    -- loyalty._table: on Citus, inside _account_shard, the account's shards
    EXECUTE pg_catalog.format('INSERT INTO %s AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,'
                              ' member_id, corrects, corrects_xid, reason)'
                              ' VALUES ($1, $2::@extschema@.account_key, $3, $4, $5, $6, $7, $8, $9, $10, $11)',
                              @extschema@._table('ledger'))
    USING $1, $2, n, $3, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), $8, $10, $9, $5;
    EXECUTE pg_catalog.format('INSERT INTO %s AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)'
                              ' VALUES ($1, $2::@extschema@.account_key, $3, $4, $5, $6, 1)',
                              @extschema@._table('balance_delta'))
    USING $1, $2, n, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0);
    RETURN n;
END
$$;
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
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    program_name text;
BEGIN
    EXECUTE pg_catalog.format('UPDATE %s a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1'
                              ' WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' RETURNING a.debit_no', @extschema@._table('account'))
    INTO n USING $1, $2;
    IF n IS NULL THEN
        EXECUTE pg_catalog.format('SELECT p.name FROM %s p WHERE p.program_id OPERATOR(pg_catalog.=) $1',
                                  @extschema@._table('program'))
        INTO program_name USING $1;
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', $2, program_name
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have balances to spend from.',
                  HINT = 'Enrol it with loyalty.enroll(); accounts enrolled automatically appear after loyalty.fold().';
    END IF;
    RETURN n;
END
$$;
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

