
-- Partner self-service: a login role of the partner's own (a person at the
-- customer, through the company's portal) mapped to one account of a program
-- reads that account and nothing else.  Row-level security on every
-- account-scoped table does it for direct reads (the partner's portal may
-- query the tables and views as it likes); the reading functions check the
-- same mapping first, because they read as the owner.  Loyalty's own roles
-- (reader, operator, admin) read every row as before; the extension owner,
-- which writes everything, bypasses the policies as a table owner does.

CREATE TABLE @extschema@.partner_login (
    login       regrole NOT NULL,
    program_id  integer NOT NULL REFERENCES @extschema@.program,
    account_key text NOT NULL,
    member_id   text,
    granted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (login, program_id),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member
);
COMMENT ON TABLE @extschema@.partner_login IS 'Which account (and member) of a program a partner''s login role may read: one account per login and program. Written by loyalty.grant_partner() and loyalty.revoke_partner().';
COMMENT ON COLUMN @extschema@.partner_login.login IS 'The partner''s login role (a member of loyalty_partner).';
COMMENT ON COLUMN @extschema@.partner_login.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.partner_login.account_key IS 'The one account of the program the login reads.';
COMMENT ON COLUMN @extschema@.partner_login.member_id IS 'The person at the account the login stands for (loyalty.member), if any.';
COMMENT ON COLUMN @extschema@.partner_login.granted_at IS 'When the mapping was made.';
CREATE INDEX partner_login_account ON @extschema@.partner_login (program_id, account_key);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.partner_login', '');

-- Is the current role staff (a loyalty role, or a superuser)?  Partners are
-- everyone else who may call a reading function.
CREATE FUNCTION @extschema@._is_staff() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN pg_catalog.pg_has_role(CURRENT_USER, 'loyalty_reader', 'USAGE')
    OR pg_catalog.pg_has_role(CURRENT_USER, 'loyalty_operator', 'USAGE')
    OR pg_catalog.pg_has_role(CURRENT_USER, 'loyalty_admin', 'USAGE');
COMMENT ON FUNCTION @extschema@._is_staff() IS 'Internal: true when the current role is a loyalty role (reader, operator, admin) or a superuser.';

-- Runs as the caller (CURRENT_USER is the role that called the reading
-- function): staff pass; a partner passes for its own account only, and gets
-- the same error for every other key, enrolled or not, so that the error
-- tells nothing about other accounts.
CREATE FUNCTION @extschema@._may_read(program text, account_key text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._is_staff() THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p USING (program_id)
                   WHERE pl.login OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
                     AND p.name OPERATOR(pg_catalog.=) program
                     AND pl.account_key OPERATOR(pg_catalog.=) _may_read.account_key) THEN
        RAISE EXCEPTION 'permission denied for this account'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A partner login reads its own account only.',
                  HINT = 'The account your login may read is in loyalty.partner_login.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._may_read(text, text) IS 'Internal: raises insufficient_privilege unless the caller is a loyalty role or the partner login of this account.';

CREATE FUNCTION @extschema@.grant_partner(login regrole, program text, account_key text, member_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    -- the shared check of a program argument, raised here so that the
    -- error comes from this function (no internal helper in its CONTEXT)
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) grant_partner.program;
    IF login IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN login IS NULL THEN 'login' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'grant_partner maps a login role to one account of a program.',
                  HINT = 'For example loyalty.grant_partner(''acme_portal'', ''Distributor Club'', ''1042'').';
    END IF;
    IF (SELECT r.rolsuper OR r.rolcreaterole OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) login)
       OR pg_catalog.pg_has_role(login, 'loyalty_reader', 'USAGE') OR pg_catalog.pg_has_role(login, 'loyalty_operator', 'USAGE')
       OR pg_catalog.pg_has_role(login, 'loyalty_admin', 'USAGE') THEN
        RAISE EXCEPTION 'role % cannot be a partner login', login
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A superuser, a role that creates roles or bypasses row-level security, or a loyalty role reads every account: mapping it to one account would restrict nothing.',
                  HINT = 'Create a login role for the partner alone, e.g. CREATE ROLE acme_portal LOGIN.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a
                   WHERE a.program_id OPERATOR(pg_catalog.=) pid AND a.account_key OPERATOR(pg_catalog.=) grant_partner.account_key) THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'account_key must name an account of the program (loyalty.account).',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member_id IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m
                   WHERE m.program_id OPERATOR(pg_catalog.=) pid AND m.account_key OPERATOR(pg_catalog.=) grant_partner.account_key
                     AND m.member_id OPERATOR(pg_catalog.=) grant_partner.member_id) THEN
        RAISE EXCEPTION 'member "%" does not exist at account "%"', member_id, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'member_id must name a member of the account, or be NULL.',
                  HINT = 'Members are rows of loyalty.member.';
    END IF;
    INSERT INTO @extschema@.partner_login AS pl (login, program_id, account_key, member_id)
    VALUES (login, pid, account_key, member_id)
    ON CONFLICT ON CONSTRAINT partner_login_pkey DO UPDATE
    SET account_key = excluded.account_key, member_id = excluded.member_id, granted_at = pg_catalog.now();
    EXECUTE pg_catalog.format('GRANT loyalty_partner TO %I', pg_catalog.pg_get_userbyid(login));
END
$$;
COMMENT ON FUNCTION @extschema@.grant_partner(regrole, text, text, text) IS 'Lets a partner''s login role read one account of a program (and stand for one of its members): maps it in loyalty.partner_login and grants it loyalty_partner. Refuses superusers, roles with CREATEROLE or BYPASSRLS, and loyalty roles.';

CREATE FUNCTION @extschema@.revoke_partner(login regrole, program text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    -- the shared check of a program argument, raised here so that the
    -- error comes from this function (no internal helper in its CONTEXT)
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) revoke_partner.program;
    IF login IS NULL THEN
        RAISE EXCEPTION 'login must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'revoke_partner ends the access of one login role to its account of a program.',
                  HINT = 'For example loyalty.revoke_partner(''acme_portal'', ''Distributor Club'').';
    END IF;
    DELETE FROM @extschema@.partner_login pl
    WHERE pl.login OPERATOR(pg_catalog.=) revoke_partner.login AND pl.program_id OPERATOR(pg_catalog.=) pid;
    IF NOT FOUND THEN
        RAISE NOTICE 'role % had no account of program "%"', login, program;
    END IF;
    -- the role stays a loyalty_partner while it maps an account of another program
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl WHERE pl.login OPERATOR(pg_catalog.=) revoke_partner.login)
       AND pg_catalog.pg_has_role(login, 'loyalty_partner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('REVOKE loyalty_partner FROM %I', pg_catalog.pg_get_userbyid(login));
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.revoke_partner(regrole, text) IS 'Ends a partner login''s access to its account of a program (and its loyalty_partner membership when it maps no other).';

-- The policies.  Staff see every row; a partner the rows of its account.
-- partner_login's own policy shows a partner its own mapping, which the
-- others' policies read.
ALTER TABLE @extschema@.partner_login ENABLE ROW LEVEL SECURITY;
CREATE POLICY staff ON @extschema@.partner_login TO loyalty_reader, loyalty_operator, loyalty_admin USING (true);
CREATE POLICY partner ON @extschema@.partner_login FOR SELECT TO loyalty_partner
    USING (login OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)));

DO $policies$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['account', 'account_history', 'member', 'ledger', 'balance_folded', 'balance_delta',
                             'tier_history', 'redemption'] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('CREATE POLICY staff ON @extschema@.%I TO loyalty_reader, loyalty_operator, loyalty_admin'
                                  ' USING (true) WITH CHECK (true)', t);
        EXECUTE pg_catalog.format('CREATE POLICY partner ON @extschema@.%I FOR SELECT TO loyalty_partner USING (EXISTS ('
                                  'SELECT FROM @extschema@.partner_login pl'
                                  ' WHERE pl.program_id OPERATOR(pg_catalog.=) %I.program_id'
                                  ' AND pl.account_key OPERATOR(pg_catalog.=) %I.account_key))', t, t, t);
    END LOOP;
END
$policies$;

-- The views read as their reader, so that the policies apply to it.
ALTER VIEW @extschema@.balance SET (security_invoker = true);
ALTER VIEW @extschema@.accrual_month SET (security_invoker = true);

GRANT USAGE ON SCHEMA @extschema@ TO loyalty_partner;
GRANT SELECT ON @extschema@.program, @extschema@.reward, @extschema@.partner_login, @extschema@.member,
                @extschema@.ledger, @extschema@.balance_folded, @extschema@.balance_delta, @extschema@.tier_history,
                @extschema@.redemption, @extschema@.balance, @extschema@.accrual_month
TO loyalty_partner;
-- of its account row, what the partner may know: not its cohort (pilot or
-- control), its potential spend or the bookkeeping columns
GRANT SELECT (program_id, account_key, cooperation_model, industry, region, tier, tier_since, enrolled_from, enrolled_at)
    ON @extschema@.account TO loyalty_partner;
GRANT SELECT ON @extschema@.partner_login TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.grant_partner(regrole, text, text, text),
                          @extschema@.revoke_partner(regrole, text) TO loyalty_admin;
-- balance() reads as its caller: the calendar helpers it calls, and the
-- partner check, are the callers' too (they read the program's settings only)
GRANT EXECUTE ON FUNCTION @extschema@._may_read(text, text), @extschema@._is_staff(),
                          @extschema@._today(integer), @extschema@._rolling_start(integer),
                          @extschema@._window_months(interval)
TO loyalty_reader, loyalty_operator, loyalty_admin, loyalty_partner;
