
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

-- Who is calling.  Outside the extension's SECURITY DEFINER functions that
-- is CURRENT_USER.  Inside one, CURRENT_USER is the extension's owner, and
-- the caller is the role the session acts as: the one set with SET ROLE,
-- else the session user (neither changes when a definer function starts,
-- and a session sets only roles it is a member of).
CREATE FUNCTION @extschema@._caller() RETURNS regrole
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN CURRENT_USER OPERATOR(pg_catalog.<>)
                 (SELECT pg_catalog.pg_get_userbyid(e.extowner) FROM pg_catalog.pg_extension e
                  WHERE e.extname OPERATOR(pg_catalog.=) 'loyalty')
            THEN pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
            WHEN pg_catalog.current_setting('role') OPERATOR(pg_catalog.=) 'none'
            THEN pg_catalog.to_regrole(pg_catalog.quote_ident(SESSION_USER))
            ELSE pg_catalog.to_regrole(pg_catalog.quote_ident(pg_catalog.current_setting('role'))) END
$$;
COMMENT ON FUNCTION @extschema@._caller() IS 'Internal: the role that called: CURRENT_USER, or, inside a SECURITY DEFINER function of the extension (CURRENT_USER is its owner), the role the session acts as (SET ROLE, else the session user).';

-- Is the caller staff (a loyalty role, or a superuser)?  Partners are
-- everyone else who may call a reading function.
CREATE FUNCTION @extschema@._is_staff() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT coalesce((SELECT pg_catalog.pg_has_role(c.r, 'loyalty_reader', 'USAGE')
                         OR pg_catalog.pg_has_role(c.r, 'loyalty_operator', 'USAGE')
                         OR pg_catalog.pg_has_role(c.r, 'loyalty_admin', 'USAGE')
                 FROM (SELECT @extschema@._caller() AS r) c), false)
$$;
COMMENT ON FUNCTION @extschema@._is_staff() IS 'Internal: true when the caller (loyalty._caller()) is a loyalty role (reader, operator, admin) or a superuser.';

-- Checks the caller (loyalty._caller(): the reading function's caller,
-- also when that function is SECURITY DEFINER): staff pass; a partner passes for its own account only, and gets
-- the same error for every other key, enrolled or not, so that the error
-- tells nothing about other accounts.
CREATE FUNCTION @extschema@._may_read(program text, account_key text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._is_staff() THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p USING (program_id)
                   WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                     AND p.name OPERATOR(pg_catalog.=) program
                     AND pl.account_key OPERATOR(pg_catalog.=) _may_read.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'permission denied for this account'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A partner login reads its own account only.',
                  HINT = 'The account your login may read is in loyalty.partner_login.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._may_read(text, text) IS 'Internal: raises insufficient_privilege unless the caller is a loyalty role or the partner login of this account.';

-- The same for acting (redeeming): a partner acts for its own account, and
-- as its own member or as the account (member_id NULL); the same error for
-- every other account or member, existing or not.
CREATE FUNCTION @extschema@._may_act(program text, account_key text, member_id text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._is_staff() THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p USING (program_id)
                   WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                     AND p.name OPERATOR(pg_catalog.=) program
                     AND pl.account_key OPERATOR(pg_catalog.=) _may_act.account_key::@extschema@.account_key
                     AND (_may_act.member_id IS NULL OR pl.member_id OPERATOR(pg_catalog.=) _may_act.member_id)) THEN
        RAISE EXCEPTION 'permission denied for this account'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A partner login acts for its own account only, as the account or as its own member.',
                  HINT = 'The account and member your login acts for are in loyalty.partner_login.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._may_act(text, text, text) IS 'Internal: raises insufficient_privilege unless the caller is a loyalty role, or the partner login of this account acting as the account (member_id NULL) or as its own member.';

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
                   WHERE a.program_id OPERATOR(pg_catalog.=) pid AND a.account_key OPERATOR(pg_catalog.=) grant_partner.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'account_key must name an account of the program (loyalty.account).',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member_id IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m
                   WHERE m.program_id OPERATOR(pg_catalog.=) pid AND m.account_key OPERATOR(pg_catalog.=) grant_partner.account_key::@extschema@.account_key
                     AND m.member_id OPERATOR(pg_catalog.=) grant_partner.member_id) THEN
        RAISE EXCEPTION 'member "%" does not exist at account "%"', member_id, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'member_id must name a member of the account, or be NULL.',
                  HINT = 'Members are rows of loyalty.member.';
    END IF;
    INSERT INTO @extschema@.partner_login AS pl (login, program_id, account_key, member_id)
    VALUES (login, pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, member_id)
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

-- ---------------------------------------------------------------------------
-- The partner's cabinet: settlement and rewards.  A partner reads, for its
-- own account, the period results, rebates, MDF wallet and claims, awards,
-- member points, benefits and the rewards it may redeem, and redeems for
-- itself (loyalty.redeem checks loyalty._may_act first).  The reading
-- functions that run as the owner (statement, benefits, expiring_points,
-- tier and balance as of a date) check loyalty._may_read first.  Cancelling
-- a redemption stays the operator's: it is a return, decided by the vendor.
-- ---------------------------------------------------------------------------

-- Row-level security on the account-scoped tables of settlement and
-- rewards, as on the ones above.  tier_grant (who granted a tier, and why)
-- is not granted to partners; the policy keeps it closed all the same.
DO $policies$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['settlement_account', 'tier_grant', 'award', 'member_points', 'mdf_accrual', 'mdf_claim',
                             'settlement_line', 'rebate_posting'] LOOP
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

-- The catalogue: a partner sees the rewards it may redeem today: active,
-- within their validity window (the program's calendar), and of a minimum
-- tier its tier reaches, the tier as loyalty.tier() tells it, as redeem()
-- checks it.  Stock and limits are not filtered: an item out of stock is
-- still on offer.  Staff see the whole catalogue.
ALTER TABLE @extschema@.reward ENABLE ROW LEVEL SECURITY;
CREATE POLICY staff ON @extschema@.reward TO loyalty_reader, loyalty_operator, loyalty_admin USING (true) WITH CHECK (true);
CREATE POLICY partner ON @extschema@.reward FOR SELECT TO loyalty_partner USING (
    active AND EXISTS (
        SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) pl.program_id
        CROSS JOIN LATERAL (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date AS today) d
        WHERE pl.program_id OPERATOR(pg_catalog.=) reward.program_id
          AND (reward.valid_from IS NULL OR reward.valid_from OPERATOR(pg_catalog.<=) d.today)
          AND (reward.valid_until IS NULL OR d.today OPERATOR(pg_catalog.<) reward.valid_until)
          AND (reward.min_tier IS NULL
               OR coalesce((SELECT t.rank FROM @extschema@.tiers(p.ladder) t
                            WHERE t.name OPERATOR(pg_catalog.=) @extschema@.tier(p.name, pl.account_key)), 0)
                  OPERATOR(pg_catalog.>=)
                  coalesce((SELECT t.rank FROM @extschema@.tiers(p.ladder) t
                            WHERE t.name OPERATOR(pg_catalog.=) reward.min_tier), 0))));

-- The leaderboard (src/sql/62_members.sql) runs as its owner, so that a
-- partner gets its true rank among all accounts, but shows a partner the
-- rows of its own account only: the filter applies after the ranking and,
-- the view being a security barrier, before any predicate of the reader's.
-- Ranks, never another account's key or points: a rank is what a
-- leaderboard is for, and it tells how many did better, not who or how much.
-- Staff see every row.
CREATE OR REPLACE VIEW @extschema@.leaderboard WITH (security_barrier = true) AS
WITH earned AS (
    SELECT l.program_id, p.name AS program, l.account_key, l.member_id,
           (l.posted_at AT TIME ZONE p.time_zone)::date AS day, l.points
    FROM @extschema@.ledger l
    JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) l.program_id
    WHERE l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'award')
), per AS (
    SELECT e.program_id, e.program, g.period, pg_catalog.date_trunc(g.period, e.day::timestamp)::date AS period_start,
           s.scope, e.account_key, CASE WHEN s.scope OPERATOR(pg_catalog.=) 'member' THEN e.member_id END AS member_id,
           pg_catalog.sum(e.points)::bigint AS points
    FROM earned e
    CROSS JOIN (VALUES ('month'), ('quarter'), ('year')) AS g(period)
    CROSS JOIN (VALUES ('account'), ('member')) AS s(scope)
    WHERE s.scope OPERATOR(pg_catalog.=) 'account' OR e.member_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7
)
SELECT x.program_id, x.program, x.period, x.period_start, x.scope, x.rank, x.account_key, x.member_id, x.points
FROM (SELECT r.program_id, r.program, r.period, r.period_start, r.scope,
             pg_catalog.rank() OVER (PARTITION BY r.program_id, r.period, r.period_start, r.scope ORDER BY r.points DESC) AS rank,
             r.account_key, r.member_id, r.points
      FROM per r) x
WHERE (SELECT @extschema@._is_staff())
   OR EXISTS (SELECT FROM @extschema@.partner_login pl
              WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                AND pl.program_id OPERATOR(pg_catalog.=) x.program_id AND pl.account_key OPERATOR(pg_catalog.=) x.account_key);

-- account_status: one row per enrolled account, the row a BI tool starts
-- from (with the KPI views of src/sql/71_kpi.sql).  For partners: a partner may not read
-- its account's cohort or potential spend (column privileges of
-- loyalty.account), and a view checks the privileges of every column its
-- definition names, whichever its reader selects.  So the view reads the
-- two through account_private, which runs as its owner and shows staff every
-- row, a partner none: a partner's row of account_status has them NULL.  Its
-- filter names no column: the planner makes it a one-time filter (a gate
-- evaluated once, before the scan below it starts), so no predicate of the
-- reader's sees a row when it is false.  Not a security barrier: that would
-- keep the join's key out of the scan, and each row of account_status would
-- then read every account.
CREATE VIEW @extschema@.account_private AS
SELECT a.program_id, a.account_key, a.cohort, a.potential_spend
FROM @extschema@.account a
WHERE (SELECT @extschema@._is_staff());
COMMENT ON VIEW @extschema@.account_private IS 'The columns of loyalty.account a partner''s login may not read (cohort, potential spend), all rows for loyalty''s roles, none for a partner: loyalty.account_status reads them through it.';
COMMENT ON COLUMN @extschema@.account_private.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.account_private.account_key IS 'The ERP''s customer key.';
COMMENT ON COLUMN @extschema@.account_private.cohort IS 'pilot or control (NULL: not in the experiment).';
COMMENT ON COLUMN @extschema@.account_private.potential_spend IS 'Estimated annual wallet (share of wallet''s denominator).';
CREATE VIEW @extschema@.account_status WITH (security_invoker = true) AS
-- each program's row with today in its calendar, a result of its own: on
-- Citus the coordinator computes it once and sends it to the shards (a
-- sub-select without FROM cannot go there, and now() on a shard is that
-- node's own transaction start)
WITH p AS MATERIALIZED (SELECT p.*, (pg_catalog.now() AT TIME ZONE p.time_zone)::date AS today
                        FROM @extschema@.program p)
SELECT p.name AS program, a.account_key, a.cooperation_model, a.industry, a.region, ap.cohort,
       a.tier, a.tier_since,
       coalesce(b.points, 0) AS points, coalesce(b.qualifying, 0) AS qualifying,
       coalesce(r.rolling, 0) AS rolling_qualifying,
       n.name AS next_tier, n.threshold AS next_tier_threshold, n.gap AS gap_to_next_tier,
       coalesce(b.rebate, 0) AS rebate, coalesce(b.mdf, 0) AS mdf, ap.potential_spend,
       b.last_doc_date AS last_invoice_date,
       p.today OPERATOR(pg_catalog.-) b.last_doc_date AS days_since_last_invoice,
       coalesce(w.trainings, 0) AS trainings_completed, coalesce(w.certifications, 0) AS certifications
FROM @extschema@.account a
JOIN p ON p.program_id OPERATOR(pg_catalog.=) a.program_id
-- staff only: a partner's row has them NULL
LEFT JOIN @extschema@.account_private ap ON ap.program_id OPERATOR(pg_catalog.=) a.program_id
                                         AND ap.account_key OPERATOR(pg_catalog.=) a.account_key
LEFT JOIN @extschema@.balance b ON b.program_id OPERATOR(pg_catalog.=) a.program_id
                               AND b.account_key OPERATOR(pg_catalog.=) a.account_key
-- the tier window: whole calendar months ending with the current one (as
-- loyalty.balance() counts it)
LEFT JOIN LATERAL (
    SELECT pg_catalog.sum(m.qualifying) AS rolling
    FROM @extschema@.accrual_month m
    WHERE m.program_id OPERATOR(pg_catalog.=) a.program_id AND m.account_key OPERATOR(pg_catalog.=) a.account_key
      AND m.month OPERATOR(pg_catalog.<=) p.today
      AND m.month OPERATOR(pg_catalog.>=) (pg_catalog.date_trunc('month', p.today::timestamp)
          OPERATOR(pg_catalog.-) pg_catalog.make_interval(months => GREATEST(1,
              (pg_catalog.date_part('year', p.qualification_window) OPERATOR(pg_catalog.*) 12
               OPERATOR(pg_catalog.+) pg_catalog.date_part('month', p.qualification_window)
               OPERATOR(pg_catalog.+) pg_catalog.round(pg_catalog.date_part('day', p.qualification_window) OPERATOR(pg_catalog./) 30))::integer)
              OPERATOR(pg_catalog.-) 1))::date) r ON true
LEFT JOIN LATERAL @extschema@.next_tier(p.ladder, coalesce(r.rolling, 0)) n ON true
-- approved training and certification actions, its members' included
LEFT JOIN LATERAL (
    SELECT pg_catalog.sum(x.quantity)::bigint AS trainings,
           pg_catalog.sum(x.quantity) FILTER (WHERE ar.category OPERATOR(pg_catalog.=) 'certification')::bigint AS certifications
    FROM @extschema@.award x
    JOIN @extschema@.action_rule ar ON ar.program_id OPERATOR(pg_catalog.=) x.program_id
                                   AND ar.action OPERATOR(pg_catalog.=) x.action AND ar.valid_from OPERATOR(pg_catalog.=) x.rule_from
    WHERE x.program_id OPERATOR(pg_catalog.=) a.program_id AND x.account_key OPERATOR(pg_catalog.=) a.account_key
      AND x.status OPERATOR(pg_catalog.=) 'approved' AND ar.category IN ('training', 'certification')) w ON true;
COMMENT ON VIEW @extschema@.account_status IS 'One row per enrolled account: segment, cohort, tier, balances, progress to the next tier, trainings and certifications. The row a BI tool starts from.';
COMMENT ON COLUMN @extschema@.account_status.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.account_status.account_key IS 'The ERP''s customer key.';
COMMENT ON COLUMN @extschema@.account_status.cooperation_model IS 'Segment: direct, distributor, integrator or reseller.';
COMMENT ON COLUMN @extschema@.account_status.industry IS 'Segment: industry.';
COMMENT ON COLUMN @extschema@.account_status.region IS 'Segment: region.';
COMMENT ON COLUMN @extschema@.account_status.cohort IS 'pilot or control (NULL: not in the experiment).';
COMMENT ON COLUMN @extschema@.account_status.tier IS 'Current tier (NULL below the first threshold).';
COMMENT ON COLUMN @extschema@.account_status.tier_since IS 'When the current tier was reached.';
COMMENT ON COLUMN @extschema@.account_status.points IS 'Points available.';
COMMENT ON COLUMN @extschema@.account_status.qualifying IS 'Lifetime qualifying spend, program currency.';
COMMENT ON COLUMN @extschema@.account_status.rolling_qualifying IS 'Qualifying spend of the tier window (the program''s qualification window in whole months, the current one included).';
COMMENT ON COLUMN @extschema@.account_status.next_tier IS 'The tier above the rolling spend (NULL at the top).';
COMMENT ON COLUMN @extschema@.account_status.next_tier_threshold IS 'Its threshold.';
COMMENT ON COLUMN @extschema@.account_status.gap_to_next_tier IS 'Qualifying spend still to go to the next tier.';
COMMENT ON COLUMN @extschema@.account_status.rebate IS 'Rebate money in the wallet.';
COMMENT ON COLUMN @extschema@.account_status.mdf IS 'Market development funds in the wallet.';
COMMENT ON COLUMN @extschema@.account_status.potential_spend IS 'Estimated annual wallet (share of wallet''s denominator).';
COMMENT ON COLUMN @extschema@.account_status.last_invoice_date IS 'Date of the latest document accrued.';
COMMENT ON COLUMN @extschema@.account_status.days_since_last_invoice IS 'Days from the latest document to today (the program''s calendar).';
COMMENT ON COLUMN @extschema@.account_status.trainings_completed IS 'Approved actions of category training or certification (loyalty.action_rule.category), the account''s and its members'', all time; quantities summed.';
COMMENT ON COLUMN @extschema@.account_status.certifications IS 'Of trainings_completed, the certifications.';
GRANT SELECT ON @extschema@.account_status TO loyalty_reader, loyalty_operator, loyalty_admin;

-- The views read as their reader, so that the policies apply to it.
ALTER VIEW @extschema@.account_benefits SET (security_invoker = true);
ALTER VIEW @extschema@.member_balance SET (security_invoker = true);

GRANT SELECT ON @extschema@.settlement_account, @extschema@.award, @extschema@.member_points, @extschema@.mdf_accrual,
                @extschema@.mdf_claim, @extschema@.settlement_line, @extschema@.rebate_posting, @extschema@.tier_benefit,
                @extschema@.account_benefits, @extschema@.member_balance, @extschema@.leaderboard,
                @extschema@.account_status, @extschema@.account_private,
                @extschema@.action_rule  -- account_status counts its trainings by their category
TO loyalty_partner;
GRANT SELECT ON @extschema@.account_private TO loyalty_reader, loyalty_operator, loyalty_admin;
-- the leaderboard's filter calls them as its reader
GRANT EXECUTE ON FUNCTION @extschema@._caller() TO loyalty_reader, loyalty_operator, loyalty_admin, loyalty_partner;
