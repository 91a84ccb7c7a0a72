
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
    INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                         member_id, corrects, corrects_xid, reason)
    VALUES ($1, ($2 OPERATOR(pg_catalog.||) '')::@extschema@.account_key, n, $3, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), $8, $10, $9, $5);
    INSERT INTO @extschema@.balance_delta AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    VALUES ($1, ($2 OPERATOR(pg_catalog.||) '')::@extschema@.account_key, n, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), 1);
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
BEGIN
    UPDATE @extschema@.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
    WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key
    RETURNING a.debit_no INTO n;
    IF n IS NULL THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', $2,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1)
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have balances to spend from.',
                  HINT = 'Enrol it with loyalty.enroll(); accounts enrolled automatically appear after loyalty.fold().';
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._lock_for_debit(integer, text) IS
'Internal: locks an account for a debit until commit and returns its next debit number.';
