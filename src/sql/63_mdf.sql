
-- Market development funds: a wallet of money (ledger column mdf) that
-- accrues at settlement as a tier-dependent share of the period's qualifying
-- purchases (loyalty._settle_mdf, called by loyalty.settle), and that the
-- partner spends through claims an operator approves.  A claim is a debit:
-- the debit protocol of redemptions (account lock, wait for postings in
-- flight, balance read after the lock) makes sure the wallet never goes
-- below zero, at the claim (pending claims reserve their amount) and again
-- at the approval, which posts the negative mdf entry.

CREATE TABLE @extschema@.mdf_accrual (
    program_id   integer NOT NULL,
    account_key  text NOT NULL,
    period_end   date NOT NULL,
    period_start date NOT NULL,
    spend        numeric NOT NULL,
    rate         numeric NOT NULL,
    amount       numeric NOT NULL CHECK (amount OPERATOR(pg_catalog.>=) 0),
    posted_xid   xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no     bigint,
    PRIMARY KEY (program_id, account_key, period_end),
    CHECK (period_end OPERATOR(pg_catalog.>) period_start)
);
COMMENT ON TABLE @extschema@.mdf_accrual IS 'MDF accrued per account and settlement period (loyalty._settle_mdf): the period''s qualifying spend times the MDF rate of the account''s tier. One row per account and period: settling a period again credits no account twice.';
COMMENT ON COLUMN @extschema@.mdf_accrual.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.mdf_accrual.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.mdf_accrual.period_end IS 'Day after the period''s last day (exclusive end), as in loyalty.settlement_run.';
COMMENT ON COLUMN @extschema@.mdf_accrual.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.mdf_accrual.spend IS 'Qualifying spend of the documents dated in the period (loyalty.accrual_month).';
COMMENT ON COLUMN @extschema@.mdf_accrual.rate IS 'MDF rate of the account''s tier at the period''s end (fraction of spend).';
COMMENT ON COLUMN @extschema@.mdf_accrual.amount IS 'MDF credited: spend (0 if negative) times rate, rounded to cents.';
COMMENT ON COLUMN @extschema@.mdf_accrual.posted_xid IS 'Transaction of the settlement that credited it.';
COMMENT ON COLUMN @extschema@.mdf_accrual.entry_no IS 'Entry number (within posted_xid) of its ledger entry of kind mdf; NULL when the amount was 0.';

CREATE TABLE @extschema@.mdf_claim (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    claim_no    bigint NOT NULL,
    claim_id    uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    amount      numeric NOT NULL CHECK (amount OPERATOR(pg_catalog.>) 0),
    purpose     text NOT NULL,
    reference   text,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    claimed_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_at  timestamptz,
    decided_by  text,
    note        text,
    posted_xid  xid8,
    entry_no    bigint,
    PRIMARY KEY (program_id, account_key, claim_no),
    CONSTRAINT mdf_claim_reference_key UNIQUE (program_id, account_key, reference),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    CONSTRAINT mdf_claim_decision_check CHECK ((status OPERATOR(pg_catalog.=) 'pending') = (decided_at IS NULL)),
    CONSTRAINT mdf_claim_entry_check CHECK ((status OPERATOR(pg_catalog.=) 'approved') = (entry_no IS NOT NULL)
                                           AND (posted_xid IS NULL) = (entry_no IS NULL))
);
CREATE INDEX mdf_claim_id_idx ON @extschema@.mdf_claim (claim_id);
COMMENT ON TABLE @extschema@.mdf_claim IS 'Claims against the MDF wallet (loyalty.claim_mdf): pending until an operator approves (the ledger entry of kind mdf takes the amount from the wallet) or rejects (nothing posted).';
COMMENT ON COLUMN @extschema@.mdf_claim.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.mdf_claim.account_key IS 'The claiming account.';
COMMENT ON COLUMN @extschema@.mdf_claim.claim_no IS 'The account''s debit number (loyalty.account.debit_no) the claim took.';
COMMENT ON COLUMN @extschema@.mdf_claim.claim_id IS 'The claim''s identifier, returned by loyalty.claim_mdf() and taken by approve_mdf_claim() and reject_mdf_claim().';
COMMENT ON COLUMN @extschema@.mdf_claim.amount IS 'Money claimed, in the program''s currency (cents at most).';
COMMENT ON COLUMN @extschema@.mdf_claim.purpose IS 'What the funds pay for (campaign, event, co-op advertising).';
COMMENT ON COLUMN @extschema@.mdf_claim.reference IS 'The partner portal''s identifier of the claim: the same reference for the same account claims once.';
COMMENT ON COLUMN @extschema@.mdf_claim.status IS 'pending, approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.claimed_at IS 'When it was claimed.';
COMMENT ON COLUMN @extschema@.mdf_claim.decided_at IS 'When it was approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.decided_by IS 'Session user who approved or rejected it.';
COMMENT ON COLUMN @extschema@.mdf_claim.note IS 'Why it was approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.posted_xid IS 'Transaction of the ledger entry that paid it (approved claims).';
COMMENT ON COLUMN @extschema@.mdf_claim.entry_no IS 'Entry number (within posted_xid) of the ledger entry that paid it.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.mdf_accrual', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.mdf_claim', '');
GRANT SELECT ON @extschema@.mdf_accrual, @extschema@.mdf_claim TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Settlement's MDF credit over the given tables: loyalty's own on one
-- server, or on a Citus worker one shard group (settle_shards.c), with this
-- node's placements of the reference tables.  Per account, the qualifying
-- spend of the document months from period_start's to period_end's (both
-- days included; loyalty.accrual_month's sums over folded and delta) times
-- the mdf_rate benefit of the tier it holds on period_end: the last tier
-- change in effect that day (none: no rate), or before its first change
-- its first recorded tier (a period settled before the tier it decided
-- takes effect).  Rounded to cents; accounts already credited for the
-- period are skipped.  One statement; each credit with the exact shape of
-- _post's (one ledger entry and one balance delta, numbered in key order)
-- and its mdf_accrual row.  Returns the total credited.
CREATE FUNCTION @extschema@._mdf_in(program_id integer, period_start date, period_end date,
                                    benefit_table regclass, history_table regclass, folded regclass, delta regclass,
                                    accrual_table regclass, ledger regclass)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total numeric;
BEGIN
    EXECUTE pg_catalog.format($q$
WITH spend AS (
    SELECT u.account_key, pg_catalog.sum(u.qualifying) AS spend
    FROM (SELECT b.account_key, x.month, x.qualifying
          FROM %3$s b, ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_qualifying)) AS x(month, qualifying)
          WHERE b.program_id OPERATOR(pg_catalog.=) $1
          UNION ALL
          SELECT d.account_key, x.month, x.qualifying
          FROM %4$s d, ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_qualifying)) AS x(month, qualifying)
          WHERE d.program_id OPERATOR(pg_catalog.=) $1) u
    WHERE u.month OPERATOR(pg_catalog.>=) pg_catalog.date_trunc('month', $2)::date AND u.month OPERATOR(pg_catalog.<=) $3
    GROUP BY u.account_key),
-- the tier on period_end: the last change in effect, else the first one's
held AS (
    SELECT h.account_key,
           CASE WHEN pg_catalog.bool_or(h.effective_from OPERATOR(pg_catalog.<=) $3)
                THEN (pg_catalog.array_agg(h.new_tier ORDER BY h.effective_from DESC, h.change_no DESC)
                        FILTER (WHERE h.effective_from OPERATOR(pg_catalog.<=) $3))[1]
                ELSE (pg_catalog.array_agg(h.new_tier ORDER BY h.effective_from, h.change_no))[1] END AS tier
    FROM %2$s h
    WHERE h.program_id OPERATOR(pg_catalog.=) $1
    GROUP BY h.account_key),
due AS (
    SELECT s.account_key, s.spend, r.rate,
           pg_catalog.round(GREATEST(s.spend, 0) OPERATOR(pg_catalog.*) r.rate, 2) AS amount
    FROM spend s
    JOIN held t ON t.account_key OPERATOR(pg_catalog.=) s.account_key
    JOIN LATERAL (SELECT b.value::numeric AS rate FROM %1$s b
                  WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.benefit OPERATOR(pg_catalog.=) 'mdf_rate'
                    AND b.tier OPERATOR(pg_catalog.=) t.tier) r ON true
    WHERE NOT EXISTS (SELECT FROM %5$s a
                      WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) s.account_key
                        AND a.period_end OPERATOR(pg_catalog.=) $3)),
-- numbered in key order (a volatile target is computed after the sort)
numbered AS (
    SELECT d.*, @extschema@._ledger_number() AS entry_no
    FROM due d WHERE d.amount OPERATOR(pg_catalog.>) 0
    ORDER BY d.account_key),
entries AS (
    INSERT INTO %6$s AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                           member_id, corrects, corrects_xid, reason)
    SELECT $1, n.account_key, n.entry_no, 'mdf', 0, 0, n.amount, NULL, NULL, NULL,
           pg_catalog.format('mdf accrual %%s..%%s', pg_catalog.to_char($2, 'YYYY-MM-DD'), pg_catalog.to_char($3, 'YYYY-MM-DD'))
    FROM numbered n
    RETURNING l.entry_no),
deltas AS (
    INSERT INTO %4$s AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    SELECT $1, n.account_key, n.entry_no, 0, 0, n.amount, 1 FROM numbered n
    RETURNING b.delta_no),
credited AS (
    INSERT INTO %5$s AS a (program_id, account_key, period_end, period_start, spend, rate, amount, entry_no)
    SELECT $1, n.account_key, $3, $2, n.spend, n.rate, n.amount, n.entry_no FROM numbered n
    RETURNING a.amount)
SELECT coalesce(pg_catalog.sum(c.amount), 0) FROM credited c$q$,
        benefit_table, history_table, folded, delta, accrual_table, ledger)
    INTO total USING program_id, period_start, period_end;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._mdf_in(integer, date, date, regclass, regclass, regclass, regclass, regclass, regclass) IS
'Internal: settlement''s MDF credit over the given tables (loyalty''s, or one shard group on a Citus worker): per account, the qualifying spend of the document months from period_start''s to period_end''s times the mdf_rate benefit of its tier on period_end, rounded to cents, posted once per period. Returns the total credited.';

-- Settlement's MDF credit (called by loyalty.settle), over loyalty's
-- tables, or on Citus on every shard group on its node (_settle_shards).
CREATE FUNCTION @extschema@._settle_mdf(program_id integer, period_start date, period_end date)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF period_start IS NULL OR period_end IS NULL OR period_end < period_start THEN
        RAISE EXCEPTION 'MDF period [%, %] is empty', period_start, period_end
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period_start and period_end are the period''s first and last days, both included (as loyalty.settle passes them).',
                  HINT = 'Give period_start <= period_end.';
    END IF;
    -- no tier of the program has an MDF rate: nothing to credit, without
    -- summing every account's spend and looking up its tier to find that out
    IF NOT EXISTS (SELECT FROM @extschema@.tier_benefit b
                   WHERE b.program_id = $1 AND b.benefit = 'mdf_rate') THEN
        RETURN 0;
    END IF;
    IF @extschema@._distributed() THEN
        RETURN @extschema@._settle_shards('mdf', $1, $2, $3);
    END IF;
    RETURN @extschema@._mdf_in($1, $2, $3, '@extschema@.tier_benefit', '@extschema@.tier_history', '@extschema@.balance_folded',
                               '@extschema@.balance_delta', '@extschema@.mdf_accrual', '@extschema@.ledger');
END
$$;
COMMENT ON FUNCTION @extschema@._settle_mdf(integer, date, date) IS
'Internal: credits the MDF wallets for a settlement period (called by loyalty.settle): per account, the qualifying spend of the document months from period_start''s to period_end''s (both days included) times the MDF rate of its tier at period_end, rounded to cents; accounts already credited for the period are skipped (loyalty._mdf_in; on Citus on each shard group''s node). Returns the total credited.';

CREATE FUNCTION @extschema@.claim_mdf(
    program     text,
    account_key text,
    amount      numeric,
    purpose     text,
    reference   text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
BEGIN
    PERFORM @extschema@._refuse_shard_query('loyalty.claim_mdf()');
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have an MDF wallet.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF amount IS NULL OR amount <= 0 OR amount = 'Infinity' OR amount = 'NaN' OR amount <> pg_catalog.round(amount, 2) THEN
        RAISE EXCEPTION 'amount must be a positive sum of money in cents'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('amount %s was given.', coalesce(amount::text, 'NULL')),
                  HINT = 'For example amount => 1500.00.';
    END IF;
    IF purpose IS NULL OR btrim(purpose) = '' THEN
        RAISE EXCEPTION 'purpose must not be NULL or empty'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'purpose says what the funds pay for; the approver reads it.',
                  HINT = 'For example purpose => ''Trade show booth, spring fair''.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the partner portal''s identifier of the claim.',
                  HINT = 'Give the claim''s identifier, or NULL when there is none.';
    END IF;

    -- the reference, the wallet and the claim: on the account's node
    RETURN @extschema@._on_account_node('claim_mdf', pid, account_key, ARRAY[amount::text, purpose, reference])::uuid;
END
$$;
COMMENT ON FUNCTION @extschema@.claim_mdf(text, text, numeric, text, text) IS
'Claims an amount from an account''s MDF wallet, pending an operator''s approval; returns the claim''s id. The amount must be available: the wallet less the pending claims (SQLSTATE LY001 otherwise, nothing written). Idempotent by reference.';

-- The MDF wallet of an account: its folded balance and the deltas not
-- folded yet, over loyalty's tables or the account's shards (_table).
CREATE FUNCTION @extschema@._mdf_wallet(program_id integer, account_key text) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wallet numeric;
BEGIN
    EXECUTE pg_catalog.format(
        'SELECT coalesce(pg_catalog.sum(u.mdf), 0) FROM'
        ' (SELECT f.mdf FROM %s f WHERE f.program_id OPERATOR(pg_catalog.=) $1 AND f.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
        '  UNION ALL'
        '  SELECT d.mdf FROM %s d WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND d.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key) u',
        @extschema@._table('balance_folded'), @extschema@._table('balance_delta'))
    INTO wallet USING $1, $2;
    RETURN wallet;
END
$$;
COMMENT ON FUNCTION @extschema@._mdf_wallet(integer, text) IS
'Internal: the MDF money of an account (folded balance plus the deltas not folded yet), over loyalty''s tables or, on a Citus worker, the account''s shards.';

-- claim_mdf's account part (args: amount, purpose, reference), on the
-- account's node: under the account's lock, once the postings in flight
-- are in, the reference, the wallet less the pending claims, the claim.
CREATE FUNCTION @extschema@._claim_mdf_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    amount numeric := args[1]::numeric;
    purpose text := args[2];
    reference text := args[3];
    claims text := @extschema@._table('mdf_claim');
    no bigint;
    prior_id uuid;
    prior_amount numeric;
    prior_purpose text;
    wallet numeric;
    reserved numeric;
    id uuid;
BEGIN
    no := @extschema@._lock_for_debit(program_id, account_key);
    PERFORM @extschema@._await_postings(program_id, account_key);
    IF reference IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT c.claim_id, c.amount, c.purpose FROM %s c WHERE c.program_id OPERATOR(pg_catalog.=) $1'
                                  ' AND c.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND c.reference OPERATOR(pg_catalog.=) $3',
                                  claims)
        INTO prior_id, prior_amount, prior_purpose USING program_id, account_key, reference;
        IF prior_id IS NOT NULL THEN
            IF prior_amount <> amount OR prior_purpose <> purpose THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already claimed for another amount or purpose', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It claimed %s for %s.', prior_amount, pg_catalog.quote_literal(prior_purpose)),
                          HINT = 'A reference names one claim; give a new claim its own reference.';
            END IF;
            RETURN prior_id;      -- the same claim again
        END IF;
    END IF;
    wallet := @extschema@._mdf_wallet(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT coalesce(pg_catalog.sum(c.amount), 0) FROM %s c WHERE c.program_id OPERATOR(pg_catalog.=) $1'
                              ' AND c.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND c.status OPERATOR(pg_catalog.=) ''pending''',
                              claims)
    INTO reserved USING program_id, account_key;
    IF wallet - reserved < amount THEN
        RAISE EXCEPTION 'account "%" has % of MDF available, % claimed', account_key, wallet - reserved, amount
            USING ERRCODE = 'LY001',
                  DETAIL = pg_catalog.format('The wallet holds %s, of which pending claims reserve %s; it never goes below zero.',
                                             wallet, reserved),
                  HINT = 'Nothing was claimed. Claim less, or after the next settlement credits the wallet.';
    END IF;
    EXECUTE pg_catalog.format('INSERT INTO %s AS c (program_id, account_key, claim_no, amount, purpose, reference)'
                              ' VALUES ($1, $2::@extschema@.account_key, $3, $4, $5, $6) RETURNING c.claim_id', claims)
    INTO id USING program_id, account_key, no, amount, purpose, reference;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@._claim_mdf_in(integer, text, text[]) IS
'Internal: loyalty.claim_mdf''s account part (args: amount, purpose, reference) on the node holding the account: under its lock, once the postings in flight are in, returns the claim of the same reference or files a new one if the wallet less the pending claims covers it (LY001 otherwise).';

-- A decision on a claim (args: claim_no, claim_id, approve, note, the
-- deciding session user), on the account's node, under the account's lock:
-- an approval pays from the wallet if it still holds the amount (LY001
-- otherwise, the claim stays pending); a decision is final, the same one
-- again changes nothing.  Returns the claim's status.
CREATE FUNCTION @extschema@._decide_mdf_claim_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    claim_no bigint := args[1]::bigint;
    claim_id uuid := args[2]::uuid;
    approve boolean := args[3]::boolean;
    claims text := @extschema@._table('mdf_claim');
    st text;
    amount numeric;
    purpose text;
    reference text;
    wallet numeric;
    entry bigint;
BEGIN
    PERFORM @extschema@._lock_for_debit(program_id, account_key);
    PERFORM @extschema@._await_postings(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT c.status, c.amount, c.purpose, c.reference FROM %s c WHERE c.program_id OPERATOR(pg_catalog.=) $1'
                              ' AND c.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND c.claim_no OPERATOR(pg_catalog.=) $3',
                              claims)
    INTO st, amount, purpose, reference USING program_id, account_key, claim_no;
    IF approve AND st = 'rejected' THEN
        RAISE EXCEPTION 'the MDF claim was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was rejected; a decision on a claim is final.', claim_id),
                  HINT = 'File a new claim if it is genuine.';
    ELSIF NOT approve AND st = 'approved' THEN
        RAISE EXCEPTION 'the MDF claim was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was paid from the wallet; a decision on a claim is final.', claim_id),
                  HINT = 'Nothing to do.';
    ELSIF st IS DISTINCT FROM 'pending' THEN
        RETURN st;              -- the same decision again
    END IF;
    IF approve THEN
        wallet := @extschema@._mdf_wallet(program_id, account_key);
        IF wallet < amount THEN
            RAISE EXCEPTION 'account "%" has % of MDF, the claim asks %', account_key, wallet, amount
                USING ERRCODE = 'LY001',
                      DETAIL = pg_catalog.format('Claim %s stays pending: the MDF wallet never goes below zero.', claim_id),
                      HINT = 'The claim stays pending: approve it after the next settlement credits the wallet, or reject it.';
        END IF;
        entry := @extschema@._post(program_id, account_key, 'mdf', 0,
                                   pg_catalog.format('mdf claim: %s', purpose) || coalesce(' ref ' || reference, ''),
                                   mdf => -amount);
    END IF;
    st := CASE WHEN approve THEN 'approved' ELSE 'rejected' END;
    EXECUTE pg_catalog.format('UPDATE %s x SET status = $4, decided_at = pg_catalog.now(), decided_by = $5, note = $6,'
                              ' posted_xid = CASE WHEN $7 IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = $7'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.claim_no OPERATOR(pg_catalog.=) $3', claims)
    USING program_id, account_key, claim_no, st, args[5], args[4], entry;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@._decide_mdf_claim_in(integer, text, text[]) IS
'Internal: approves (pays from the wallet, if it still holds the amount; LY001 otherwise) or rejects a pending MDF claim (args: claim_no, claim_id, approve, note, decided_by) on the node holding the account, under its lock; a decision is final (the other one is refused, the same one changes nothing). Returns the status.';

-- A decision on a claim given by its id: its account is found where the
-- call is made (on Citus a query over every shard), the decision is made on
-- the account's node.  Returns the claim's status.
CREATE FUNCTION @extschema@._decide_mdf_claim(claim_id uuid, approve boolean, note text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    c record;
BEGIN
    PERFORM @extschema@._refuse_shard_query(CASE WHEN approve THEN 'loyalty.approve_mdf_claim()' ELSE 'loyalty.reject_mdf_claim()' END);
    IF claim_id IS NULL THEN
        RAISE EXCEPTION 'claim_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'claim_id is what loyalty.claim_mdf() returned.',
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    SELECT x.program_id, x.account_key::text AS account_key, x.claim_no INTO c
    FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim_id names no MDF claim'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No claim has id %s; claim_id is what loyalty.claim_mdf() returned.', claim_id),
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    RETURN @extschema@._on_account_node('decide_mdf_claim', c.program_id, c.account_key,
                                        ARRAY[c.claim_no::text, claim_id::text, approve::text, note, SESSION_USER::text]);
END
$$;
COMMENT ON FUNCTION @extschema@._decide_mdf_claim(uuid, boolean, text) IS
'Internal: finds an MDF claim by its id and decides it on the node holding its account (loyalty._decide_mdf_claim_in); returns the status.';

CREATE FUNCTION @extschema@.approve_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_mdf_claim(claim_id, true, note);
END
$$;
COMMENT ON FUNCTION @extschema@.approve_mdf_claim(uuid, text) IS
'Approves a pending MDF claim: posts a ledger entry of kind mdf that takes the amount from the wallet, which must still hold it (SQLSTATE LY001 otherwise; the claim stays pending). Approving an approved claim again changes nothing; returns the status.';

CREATE FUNCTION @extschema@.reject_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_mdf_claim(claim_id, false, note);
END
$$;
COMMENT ON FUNCTION @extschema@.reject_mdf_claim(uuid, text) IS
'Rejects a pending MDF claim: nothing is posted and its reserve is released. Rejecting a rejected claim again changes nothing; returns the status.';

REVOKE ALL ON FUNCTION @extschema@._settle_mdf(integer, date, date),
                      @extschema@.claim_mdf(text, text, numeric, text, text),
                      @extschema@._decide_mdf_claim(uuid, boolean, text),
                      @extschema@._mdf_wallet(integer, text), @extschema@._claim_mdf_in(integer, text, text[]),
                      @extschema@._decide_mdf_claim_in(integer, text, text[]),
                      @extschema@.approve_mdf_claim(uuid, text), @extschema@.reject_mdf_claim(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.claim_mdf(text, text, numeric, text, text),
                          @extschema@.approve_mdf_claim(uuid, text), @extschema@.reject_mdf_claim(uuid, text) TO loyalty_operator;
