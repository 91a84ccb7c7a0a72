
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
    IF kind = ANY ('{earn,reverse,cap,backfill,restate}'::@extschema@.ledger_kind[]) THEN
        RAISE EXCEPTION 'ledger kind % is posted by accrual only', kind
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Accrual kinds are derived from invoice rows and checked against them by verify().';
    END IF;
    IF coalesce(points, 0) = 0 AND coalesce(rebate, 0) = 0 AND coalesce(mdf, 0) = 0 THEN
        RETURN NULL;            -- nothing to post
    END IF;
    INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                         member_id, corrects, corrects_xid, reason)
    VALUES ($1, $2, n, $3, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), $8, $10, $9, $5);
    INSERT INTO @extschema@.balance_delta AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    VALUES ($1, $2, n, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), 1);
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._post(integer, text, @extschema@.ledger_kind, bigint, text, numeric, numeric, text, xid8, bigint) IS
'Internal: posts one ledger entry that does not come from an invoice row (redeem, expire, award, rebate, mdf, adjust, bonus) with its balance delta; returns its entry number within the transaction (NULL when there is nothing to post).';
