
-- Member-level points and the leaderboard.
--
-- A member's points are the ledger entries that carry their member_id: what
-- they earned by actions (loyalty.award(..., member => ...)) less what they
-- redeemed (loyalty.redeem(..., member => ...)).  They are part of the
-- account's points as well: the account's balance (loyalty.balance) counts
-- every entry of the account, its members' included, and a member's
-- redemption needs both the member's and the account's points to cover it.
-- Accrual, expiry, rebates and adjustments are the account's (no member).
--
-- loyalty.member_points keeps each member's running total, written in the
-- same transaction as the entry, by loyalty._post_member only.  Every member
-- posting (award, approval, redemption, cancellation) holds the account's
-- debit lock, so the row is never contended beyond what the account lock
-- already serialises.  verify() compares it with the ledger
-- (loyalty._verify_members).  (An index on the ledger's member entries would
-- have spared the table, but the accrual path appends ledger index entries
-- itself and takes no partial or expression index.)
CREATE TABLE @extschema@.member_points (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    member_id   text NOT NULL,
    points      bigint NOT NULL DEFAULT 0,
    earned      bigint NOT NULL DEFAULT 0,
    spent       bigint NOT NULL DEFAULT 0,
    entry_count bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, member_id),
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member,
    CONSTRAINT member_points_sum_check CHECK (points OPERATOR(pg_catalog.=) (earned OPERATOR(pg_catalog.-) spent))
);
COMMENT ON TABLE @extschema@.member_points IS 'Running totals of the ledger entries that carry a member, one row per member with any; written with the entry, checked against the ledger by verify(). Read it through loyalty.member_balance.';
COMMENT ON COLUMN @extschema@.member_points.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member_points.account_key IS 'The account the member belongs to.';
COMMENT ON COLUMN @extschema@.member_points.member_id IS 'The member.';
COMMENT ON COLUMN @extschema@.member_points.points IS 'Points the member may redeem: earned less spent.';
COMMENT ON COLUMN @extschema@.member_points.earned IS 'Points of the member''s entries of kinds other than redeem (awards).';
COMMENT ON COLUMN @extschema@.member_points.spent IS 'Points of the member''s redemptions, net of cancellations.';
COMMENT ON COLUMN @extschema@.member_points.entry_count IS 'Ledger entries that carry the member.';
COMMENT ON COLUMN @extschema@.member_points.updated_at IS 'Last change.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.member_points', '');

-- _post for an entry of a member (or of the account, member NULL): the
-- ledger entry, the account's balance delta and the member's running total.
-- The caller holds the account's debit lock.
CREATE FUNCTION @extschema@._post_member(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    member_id    text,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._post($1, $2, $3, $4, $5, member_id => $6, corrects_xid => $7, corrects => $8);
BEGIN
    IF n IS NOT NULL AND $6 IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'INSERT INTO %s AS m (program_id, account_key, member_id, points, earned, spent, entry_count)'
            ' VALUES ($1, $2::@extschema@.account_key, $3, $4,'
            '         CASE WHEN $5 OPERATOR(pg_catalog.<>) ''redeem'' THEN $4 ELSE 0 END,'
            '         CASE WHEN $5 OPERATOR(pg_catalog.=) ''redeem'' THEN OPERATOR(pg_catalog.-) $4 ELSE 0 END, 1)'
            ' ON CONFLICT (program_id, account_key, member_id) DO UPDATE'
            ' SET points = m.points OPERATOR(pg_catalog.+) excluded.points,'
            '     earned = m.earned OPERATOR(pg_catalog.+) excluded.earned,'
            '     spent = m.spent OPERATOR(pg_catalog.+) excluded.spent,'
            '     entry_count = m.entry_count OPERATOR(pg_catalog.+) 1, updated_at = excluded.updated_at',
            @extschema@._table('member_points'))
        USING $1, $2, $6, $4, $3;
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._post_member(integer, text, @extschema@.ledger_kind, bigint, text, text, xid8, bigint) IS
'Internal: posts one ledger entry (loyalty._post) and, when it carries a member, adds it to the member''s running total in loyalty.member_points; the caller holds the account''s debit lock.';

CREATE VIEW @extschema@.member_balance AS
SELECT m.program_id, m.account_key, m.member_id, m.name, m.role,
       coalesce(t.points, 0) AS points, coalesce(t.earned, 0) AS earned, coalesce(t.spent, 0) AS spent,
       coalesce(t.entry_count, 0) AS entry_count
FROM @extschema@.member m
LEFT JOIN @extschema@.member_points t
  ON t.program_id OPERATOR(pg_catalog.=) m.program_id AND t.account_key OPERATOR(pg_catalog.=) m.account_key
     AND t.member_id OPERATOR(pg_catalog.=) m.member_id;
COMMENT ON VIEW @extschema@.member_balance IS 'Points of each member of an account: the sums of the ledger entries that carry the member (awards for their actions, their redemptions and cancellations). Part of the account''s points in loyalty.balance.';
COMMENT ON COLUMN @extschema@.member_balance.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member_balance.account_key IS 'The account the member belongs to.';
COMMENT ON COLUMN @extschema@.member_balance.member_id IS 'The member.';
COMMENT ON COLUMN @extschema@.member_balance.name IS 'Display name.';
COMMENT ON COLUMN @extschema@.member_balance.role IS 'economic_buyer, technical_buyer, end_user or champion.';
COMMENT ON COLUMN @extschema@.member_balance.points IS 'Points the member may redeem (earned less spent).';
COMMENT ON COLUMN @extschema@.member_balance.earned IS 'Points earned (awards).';
COMMENT ON COLUMN @extschema@.member_balance.spent IS 'Points spent on redemptions, net of cancellations.';
COMMENT ON COLUMN @extschema@.member_balance.entry_count IS 'Ledger entries that carry the member.';

-- verify()'s checks of the member wallets and of the rows that posted
-- (redemptions, awards): same columns as loyalty._verify_balance, one row
-- per drift.
CREATE FUNCTION @extschema@._verify_members(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
-- a ledger entry whose member is not a member of its account
SELECT l.account_key::text, NULL::date, NULL::integer, 'member_unknown:' OPERATOR(pg_catalog.||) l.member_id,
       0::numeric, pg_catalog.count(*)::numeric
FROM @extschema@.ledger l
WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
  AND l.member_id IS NOT NULL
  AND NOT EXISTS (SELECT FROM @extschema@.member m
                  WHERE m.program_id OPERATOR(pg_catalog.=) l.program_id AND m.account_key OPERATOR(pg_catalog.=) l.account_key::@extschema@.account_key
                    AND m.member_id OPERATOR(pg_catalog.=) l.member_id)
GROUP BY l.account_key, l.member_id
UNION ALL
-- a member's running total that differs from the sums of their entries,
-- or that is below zero (redemptions check it; nothing else debits it)
SELECT coalesce(t.account_key, l.account_key)::text, NULL, NULL, v.item, v.e, v.a
FROM (SELECT x.account_key, x.member_id, pg_catalog.sum(x.points) AS points, pg_catalog.count(*) AS n
      FROM @extschema@.ledger x
      WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
        AND x.member_id IS NOT NULL
      GROUP BY 1, 2) l
FULL JOIN (SELECT x.account_key, x.member_id, x.points, x.entry_count
           FROM @extschema@.member_points x
           WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)) t
  ON t.account_key OPERATOR(pg_catalog.=) l.account_key::@extschema@.account_key AND t.member_id OPERATOR(pg_catalog.=) l.member_id,
LATERAL (VALUES ('member_points:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.points, 0)::numeric,
                 coalesce(t.points, 0)::numeric),
                ('member_entries:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.n, 0)::numeric,
                 coalesce(t.entry_count, 0)::numeric),
                ('member_overdrawn:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), 0::numeric,
                 LEAST(coalesce(t.points, 0), 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
UNION ALL
-- a redemption whose spending entry (or, cancelled, whose giving back) is
-- missing from the ledger or differs from it
SELECT d.account_key::text, NULL, NULL, v.item, v.e, v.a
FROM @extschema@.redemption d
LEFT JOIN @extschema@.ledger s
  ON s.program_id OPERATOR(pg_catalog.=) d.program_id AND s.account_key OPERATOR(pg_catalog.=) d.account_key::@extschema@.account_key
     AND s.posted_xid OPERATOR(pg_catalog.=) d.posted_xid AND s.entry_no OPERATOR(pg_catalog.=) d.entry_no
     AND s.kind OPERATOR(pg_catalog.=) 'redeem' AND s.member_id IS NOT DISTINCT FROM d.member_id
LEFT JOIN @extschema@.ledger c
  ON c.program_id OPERATOR(pg_catalog.=) d.program_id AND c.account_key OPERATOR(pg_catalog.=) d.account_key::@extschema@.account_key
     AND c.posted_xid OPERATOR(pg_catalog.=) d.cancel_xid AND c.entry_no OPERATOR(pg_catalog.=) d.cancel_entry_no
     AND c.kind OPERATOR(pg_catalog.=) 'redeem' AND c.member_id IS NOT DISTINCT FROM d.member_id
     AND c.corrects_xid OPERATOR(pg_catalog.=) d.posted_xid AND c.corrects OPERATOR(pg_catalog.=) d.entry_no,
LATERAL (VALUES ('redemption_spent:' OPERATOR(pg_catalog.||) d.redemption_id::text, d.points::numeric,
                 (OPERATOR(pg_catalog.-) s.points)::numeric),
                ('redemption_given_back:' OPERATOR(pg_catalog.||) d.redemption_id::text,
                 CASE WHEN d.status OPERATOR(pg_catalog.=) 'cancelled' THEN d.points ELSE 0 END::numeric,
                 coalesce(c.points, 0)::numeric)) AS v(item, e, a)
WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR d.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
  AND v.e IS DISTINCT FROM v.a
UNION ALL
-- an approved award whose entry is missing or differs, or any other award
-- that posted
SELECT w.account_key::text, NULL, NULL, 'award_points:' OPERATOR(pg_catalog.||) w.award_id::text,
       CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END::numeric,
       coalesce(l.points, 0)::numeric
FROM @extschema@.award w
LEFT JOIN @extschema@.ledger l
  ON l.program_id OPERATOR(pg_catalog.=) w.program_id AND l.account_key OPERATOR(pg_catalog.=) w.account_key::@extschema@.account_key
     AND l.posted_xid OPERATOR(pg_catalog.=) w.posted_xid AND l.entry_no OPERATOR(pg_catalog.=) w.entry_no
     AND l.kind OPERATOR(pg_catalog.=) 'award' AND l.member_id IS NOT DISTINCT FROM w.member_id
WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR w.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
  AND CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END IS DISTINCT FROM coalesce(l.points, 0);
END
$$;
COMMENT ON FUNCTION @extschema@._verify_members(integer, text) IS
'Internal: verify''s checks of member wallets (entries of unknown members, running totals that differ from the ledger or are below zero) and of the rows that posted (each redemption''s spending and giving-back entries, each approved award''s entry), for a program or one account; one row per drift.';

-- The leaderboard of gamified programs: points earned per calendar period
-- (month, quarter, year of the posting, in the program's calendar), ranked
-- among the program's accounts, and among its members.  Earned: accrual and
-- awards; redemptions, expiry and adjustments do not move a rank.  (Replaced
-- in src/sql/80_partner.sql by the same view with a partner's filter.)
CREATE VIEW @extschema@.leaderboard AS
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
SELECT r.program_id, r.program, r.period, r.period_start, r.scope,
       pg_catalog.rank() OVER (PARTITION BY r.program_id, r.period, r.period_start, r.scope ORDER BY r.points DESC) AS rank,
       r.account_key, r.member_id, r.points
FROM per r;
COMMENT ON VIEW @extschema@.leaderboard IS 'Points earned (accrual and awards) per program and calendar period of posting, ranked among accounts (scope account) and among members (scope member): the visible leaderboard of gamified programs. Filter by program, period and period_start.';
COMMENT ON COLUMN @extschema@.leaderboard.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.leaderboard.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.leaderboard.period IS 'month, quarter or year.';
COMMENT ON COLUMN @extschema@.leaderboard.period_start IS 'First day of the period (program calendar).';
COMMENT ON COLUMN @extschema@.leaderboard.scope IS 'account: accounts ranked by all points they earned; member: members ranked by the points they earned themselves.';
COMMENT ON COLUMN @extschema@.leaderboard.rank IS 'Rank within program, period and scope (1 = most points; ties share a rank).';
COMMENT ON COLUMN @extschema@.leaderboard.account_key IS 'The account (of the member, for scope member).';
COMMENT ON COLUMN @extschema@.leaderboard.member_id IS 'The member (scope member); NULL for scope account.';
COMMENT ON COLUMN @extschema@.leaderboard.points IS 'Points earned in the period.';

GRANT SELECT ON @extschema@.member_points, @extschema@.member_balance, @extschema@.leaderboard
TO loyalty_reader, loyalty_operator, loyalty_admin;
REVOKE ALL ON FUNCTION @extschema@._verify_members(integer, text),
                      @extschema@._post_member(integer, text, @extschema@.ledger_kind, bigint, text, text, xid8, bigint) FROM PUBLIC;
