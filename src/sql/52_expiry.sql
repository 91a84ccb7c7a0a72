
-- Point expiry.  A program's point_lifetime says how long points stay
-- spendable; settlement expires what is older.  No lot table: points are
-- consumed oldest first, so what must expire at a cutoff follows from sums
-- the engine keeps anyway (the FIFO closed form):
--
--   due = max(0, earned before the threshold month - consumed so far)
--
-- The age of a point is counted in whole months (expiry is month-granular):
--   * an accrued point is as old as its document's month (loyalty.accrual_month:
--     a backfilled or late-posted invoice is as old as its document date; a
--     credit note reduces its own document month; caps apply as the engine
--     applies them, to the months in order);
--   * any other credit (award, adjust or bonus > 0 posted through _post) is
--     as old as the month of its posting date in the program's time zone.
-- The points of month M expire at the first cutoff C (a settlement's
-- period_end, exclusive) at which every day of M is older than the lifetime:
-- M + 1 month + lifetime <= C, that is M < date_trunc('month', C - lifetime).
-- With a lifetime of 12 months, the points of March 2026 expire at the
-- cutoff 2027-04-01 (the end of the first quarter of 2027), those of April
-- 2026 at 2027-07-01.
--
-- Consumed so far: every redeem and expire entry (negative; a cancelled
-- redemption's positive entry gives its points back) and every other
-- non-accrual entry below zero (a negative adjustment spends like a
-- redemption).  A credit note that takes more than its month earned takes
-- the rest from the newest points before it: the points of the months
-- before the threshold are therefore the least running total from the
-- threshold on, not just the total at the threshold (so that expiry never
-- takes points a later credit note already took, and never more than the
-- balance).

-- What must expire at cutoff, per account with something to expire (account
-- NULL: every account of the program), from the given tables: loyalty's
-- own, or on a Citus worker their co-located shards (_settle_shard).  The
-- accrued months are loyalty.accrual_month's query over folded and delta.
-- Reads in the caller's snapshot.  $1 program, $2 account, $3 threshold,
-- $4 the program's time zone, $5 whether a rule caps points.
CREATE FUNCTION @extschema@._expiry_due_in(program_id integer, account text, threshold date, zone text, capped boolean,
                                           ledger regclass, folded regclass, delta regclass)
RETURNS TABLE (account_key text, points bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format($q$
    WITH other AS (
        -- the entries that are not accrual: credits by posting month, debits
        SELECT l.account_key,
               pg_catalog.date_trunc('month', l.posted_at AT TIME ZONE $4)::date AS month,
               l.kind OPERATOR(pg_catalog.=) ANY ('{redeem,expire}'::@extschema@.ledger_kind[])
                   OR l.points OPERATOR(pg_catalog.<) 0 AS debit,
               l.points
        FROM %1$s l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
          AND l.points OPERATOR(pg_catalog.<>) 0
          AND l.kind OPERATOR(pg_catalog.<>) ALL ('{earn,reverse,cap,backfill,restate}'::@extschema@.ledger_kind[])
          AND NOT (l.kind OPERATOR(pg_catalog.=) 'bonus' AND l.attachment_id IS NOT NULL)),
    accrued AS (
        -- loyalty.accrual_month: per account, table and document month
        SELECT a.account_key, a.month, pg_catalog.sum(a.points)::bigint AS points
        FROM (SELECT v.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows
              FROM %2$s v, ROWS FROM (pg_catalog.unnest(v.m_month), pg_catalog.unnest(v.m_attachment),
                                      pg_catalog.unnest(v.m_points), pg_catalog.unnest(v.m_qualifying),
                                      pg_catalog.unnest(v.m_source_rows)) AS x(month, attachment_id, points, qualifying, source_rows)
              WHERE v.program_id OPERATOR(pg_catalog.=) $1
                AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
              UNION ALL
              SELECT v.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows
              FROM %3$s v, ROWS FROM (pg_catalog.unnest(v.m_month), pg_catalog.unnest(v.m_attachment),
                                      pg_catalog.unnest(v.m_points), pg_catalog.unnest(v.m_qualifying),
                                      pg_catalog.unnest(v.m_source_rows)) AS x(month, attachment_id, points, qualifying, source_rows)
              WHERE v.program_id OPERATOR(pg_catalog.=) $1
                AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)) a
        GROUP BY a.account_key, a.attachment_id, a.month
        HAVING pg_catalog.sum(a.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(a.qualifying) OPERATOR(pg_catalog.<>) 0
            OR pg_catalog.sum(a.source_rows) OPERATOR(pg_catalog.<>) 0),
    series AS (
        SELECT u.account_key, u.month, pg_catalog.sum(u.acc)::bigint AS acc, pg_catalog.sum(u.cred)::bigint AS cred
        FROM (SELECT m.account_key, m.month, m.points AS acc, 0::bigint AS cred FROM accrued m
              UNION ALL
              SELECT o.account_key, o.month, 0, o.points FROM other o WHERE NOT o.debit) u
        GROUP BY 1, 2),
    running AS (
        -- points earned up to each month, caps applied as the engine applies them
        SELECT s.account_key, s.month,
               CASE WHEN $5
                    THEN (SELECT coalesce(@extschema@._capped_points($1, pg_catalog.array_agg(x.month), pg_catalog.array_agg(x.acc)), 0)
                          FROM series x
                          WHERE x.account_key OPERATOR(pg_catalog.=) s.account_key AND x.month OPERATOR(pg_catalog.<=) s.month)
                    ELSE pg_catalog.sum(s.acc) OVER w END
               OPERATOR(pg_catalog.+) pg_catalog.sum(s.cred) OVER w AS total
        FROM series s
        WINDOW w AS (PARTITION BY s.account_key ORDER BY s.month)),
    old AS (
        SELECT r.account_key,
               LEAST((pg_catalog.array_agg(r.total ORDER BY r.month DESC) FILTER (WHERE r.month OPERATOR(pg_catalog.<) $3))[1],
                                pg_catalog.min(r.total) FILTER (WHERE r.month OPERATOR(pg_catalog.>=) $3)) AS earned
        FROM running r
        GROUP BY 1
        HAVING pg_catalog.bool_or(r.month OPERATOR(pg_catalog.<) $3)),
    spent AS (
        SELECT o.account_key, OPERATOR(pg_catalog.-) pg_catalog.sum(o.points) AS consumed
        FROM other o WHERE o.debit GROUP BY 1)
    SELECT o.account_key::text, (o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0))::bigint
    FROM old o LEFT JOIN spent s ON s.account_key OPERATOR(pg_catalog.=) o.account_key
    WHERE o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0) OPERATOR(pg_catalog.>) 0$q$, ledger, folded, delta)
    USING program_id, account, threshold, zone, capped;
END
$$;
COMMENT ON FUNCTION @extschema@._expiry_due_in(integer, text, date, text, boolean, regclass, regclass, regclass) IS
    'Internal: the points that must expire before the threshold month, per account of a program (or of one account), by the FIFO closed form, from the given ledger and balance tables (loyalty''s, or their co-located shards on a Citus worker).';

-- The program's expiry settings as of a cutoff: the threshold month (NULL:
-- points never expire), its time zone, whether a rule caps points; from
-- the given program and rule tables (on a Citus worker, their placements).
CREATE FUNCTION @extschema@._expiry_settings(program_id integer, cutoff date, program_table regclass, rule_table regclass,
                                             OUT threshold date, OUT zone text, OUT capped boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE pg_catalog.format('SELECT pg_catalog.date_trunc(''month'', ($2 OPERATOR(pg_catalog.-) p.point_lifetime))::date,'
                              ' p.time_zone, EXISTS (SELECT FROM %2$s r WHERE r.program_id OPERATOR(pg_catalog.=) $1'
                              '                      AND r.cap_points IS NOT NULL)'
                              ' FROM %1$s p WHERE p.program_id OPERATOR(pg_catalog.=) $1', program_table, rule_table)
        INTO threshold, zone, capped USING program_id, cutoff;
END
$$;
COMMENT ON FUNCTION @extschema@._expiry_settings(integer, date, regclass, regclass) IS
    'Internal: a program''s expiry threshold at a cutoff (NULL: its points never expire), its time zone and whether a rule caps points, from the given program and rule tables.';

-- What must expire at cutoff, per account with something to expire (account
-- NULL: every account of the program).  Reads loyalty's tables only, in the
-- caller's snapshot.
CREATE FUNCTION @extschema@._expiry_due(program_id integer, cutoff date, account text)
RETURNS TABLE (account_key text, points bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    e record := @extschema@._expiry_settings($1, $2, '@extschema@.program', '@extschema@.rule');
BEGIN
    IF e.threshold IS NULL THEN
        RETURN;                 -- points of this program never expire
    END IF;
    RETURN QUERY SELECT * FROM @extschema@._expiry_due_in($1, $3, e.threshold, e.zone, e.capped,
                                                          '@extschema@.ledger', '@extschema@.balance_folded',
                                                          '@extschema@.balance_delta');
END
$$;
COMMENT ON FUNCTION @extschema@._expiry_due(integer, date, text) IS
    'Internal: the points that must expire at cutoff (a period end, exclusive), per account of a program (or of one account), by the FIFO closed form; accounts with nothing to expire are left out.';

-- Settlement's expiry: one expire entry per account with points older than
-- the lifetime at cutoff, in the given tables (loyalty's, or on a Citus
-- worker one shard group: _settle_shard).  Idempotent by construction: the
-- entries it posts count as consumed, so a second call at the same cutoff
-- finds nothing due.  Each account is locked as a debit is (its next debit
-- number, in ascending key order, in one statement), and what is due is
-- computed in the next statement: a redemption committed meanwhile is seen,
-- one that comes later waits and then sees the expiry, so neither can spend
-- the points of the other.  The entries have the exact shape of _post's,
-- written in one statement per table.
CREATE FUNCTION @extschema@._settle_expiry_in(program_id integer, cutoff date, threshold date, zone text, capped boolean,
                                              account_table regclass, ledger regclass, folded regclass, delta regclass)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked text[];
    total bigint;
BEGIN
    EXECUTE pg_catalog.format($q$
    WITH due AS (SELECT d.account_key FROM @extschema@._expiry_due_in($1, NULL, $2, $3, $4, $5, $6, $7) d),
    lock AS (
        SELECT a.account_key FROM %1$s a
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key IN (SELECT due.account_key::@extschema@.account_key FROM due)
        ORDER BY a.account_key
        FOR NO KEY UPDATE OF a),
    numbered AS (
        UPDATE %1$s a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
        FROM lock k
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) k.account_key
        RETURNING a.account_key)
    SELECT pg_catalog.array_agg(n.account_key::text) FROM numbered n$q$, account_table)
    INTO locked USING program_id, threshold, zone, capped, ledger, folded, delta;
    IF locked IS NULL THEN
        RETURN 0;
    END IF;
    -- a new statement, a new snapshot: every debit of these accounts that
    -- committed before the lock is counted
    EXECUTE pg_catalog.format($q$
    WITH due AS (
        SELECT d.account_key, d.points, @extschema@._ledger_number() AS n
        FROM @extschema@._expiry_due_in($1, NULL, $2, $3, $4, $5, $6, $7) d
        JOIN pg_catalog.unnest($8) k(account_key) ON k.account_key OPERATOR(pg_catalog.=) d.account_key),
    entries AS (
        INSERT INTO %1$s AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                               member_id, corrects, corrects_xid, reason)
        SELECT $1, d.account_key::@extschema@.account_key, d.n, 'expire', OPERATOR(pg_catalog.-) d.points, 0, 0, NULL, NULL, NULL,
               pg_catalog.format('expiry at %%s: points of months before %%s', $9, $2)
        FROM due d
        RETURNING l.points),
    deltas AS (
        INSERT INTO %2$s AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
        SELECT $1, d.account_key::@extschema@.account_key, d.n, OPERATOR(pg_catalog.-) d.points, 0, 0, 1
        FROM due d
        RETURNING b.points)
    SELECT coalesce(OPERATOR(pg_catalog.-) pg_catalog.sum(e.points), 0)::bigint FROM entries e$q$, ledger, delta)
    INTO total USING program_id, threshold, zone, capped, ledger, folded, delta, locked, cutoff;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_expiry_in(integer, date, date, text, boolean, regclass, regclass, regclass, regclass) IS
    'Internal: settlement''s expiry at cutoff over the given tables (loyalty''s, or one shard group on a Citus worker): posts one expire entry per account whose points are older than the threshold month, oldest points consumed first; returns the points expired.';

-- Settlement's expiry at period_end (exclusive).  On Citus each shard group
-- expires its own accounts on its node (_settle_shards): an account's
-- ledger, balance rows and account row are all in its shard group, and the
-- locks, the wait for redemptions and the entries' transaction ids are that
-- node's, as for a redemption there.
CREATE FUNCTION @extschema@._settle_expiry(program_id integer, period_start date, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record := @extschema@._expiry_settings($1, $3, '@extschema@.program', '@extschema@.rule');
BEGIN
    IF e.threshold IS NULL THEN
        RETURN 0;               -- no lifetime: points never expire
    END IF;
    IF @extschema@._distributed() THEN
        RETURN @extschema@._settle_shards('expiry', $1, NULL, $3)::bigint;
    END IF;
    RETURN @extschema@._settle_expiry_in($1, $3, e.threshold, e.zone, e.capped, '@extschema@.account',
                                         '@extschema@.ledger', '@extschema@.balance_folded', '@extschema@.balance_delta');
END
$$;
COMMENT ON FUNCTION @extschema@._settle_expiry(integer, date, date) IS
    'Internal: settlement''s expiry at period_end (exclusive): posts one expire entry per account whose points are older than the program''s point_lifetime, oldest points consumed first; returns the points expired. Idempotent: a second call at the same cutoff posts nothing. On Citus, each shard group on its node.';

-- On Citus: a settlement step that posts to accounts (expiry, rebates,
-- rebate_estimates, mdf) on every shard group, each on its node; period_end
-- as the step takes it (exclusive for expiry and rebates, the estimate's
-- day, inclusive for mdf), period_start for mdf (NULL for the others).
CREATE FUNCTION @extschema@._settle_shards(step text, program_id integer, period_start date, period_end date) RETURNS numeric
AS 'MODULE_PATHNAME', 'loyalty_settle_shards' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._settle_shards(text, integer, date, date) IS
    'Internal: a settlement step that posts to accounts (expiry, rebates, rebate_estimates, mdf) on a Citus cluster: one routed call of _settle_shard per shard of loyalty.account; returns what they posted, summed.';
CREATE FUNCTION @extschema@._settle_shard(step text, program_id integer, period_start date, period_end date, shard text) RETURNS numeric
AS 'MODULE_PATHNAME', 'loyalty_settle_shard' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._settle_shard(text, integer, date, date, text) IS
    'Internal: a settlement step for the accounts of one shard of loyalty.account, on its Citus node, over the co-located shards.';

-- The settlement cutoffs (period ends) after as_of up to 90 days on.
CREATE FUNCTION @extschema@._expiry_cutoffs(program_id integer, as_of date) RETURNS SETOF date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT c::date
FROM @extschema@.program p,
     LATERAL (SELECT CASE p.settlement_period WHEN 'month' THEN interval '1 month'
                                              WHEN 'quarter' THEN interval '3 months' ELSE interval '1 year' END AS step) s,
     pg_catalog.generate_series(pg_catalog.date_trunc(p.settlement_period, as_of::timestamp) OPERATOR(pg_catalog.+) s.step,
                                (as_of OPERATOR(pg_catalog.+) 90)::timestamp, s.step) AS c
WHERE p.program_id OPERATOR(pg_catalog.=) _expiry_cutoffs.program_id AND p.point_lifetime IS NOT NULL
$$;
COMMENT ON FUNCTION @extschema@._expiry_cutoffs(integer, date) IS
    'Internal: the program''s settlement cutoffs (first days of its month, quarter or year periods) after as_of and at most 90 days after it.';

-- Expiring soon: what the settlements of the next 90 days expire if the
-- account spends nothing meanwhile, points overdue from a cutoff whose
-- settlement has not run yet included.  0 when no cutoff falls in the
-- next 90 days (a yearly settlement period far away) or points never expire.
CREATE FUNCTION @extschema@._expiring_soon(program_id integer, account_key text, as_of date) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT coalesce((SELECT d.points
                 FROM @extschema@._expiry_due(program_id, (SELECT pg_catalog.max(c) FROM @extschema@._expiry_cutoffs(program_id, as_of) c),
                                              account_key) d), 0)
$$;
COMMENT ON FUNCTION @extschema@._expiring_soon(integer, text, date) IS
    'Internal: the points of an account that the settlement cutoffs of the next 90 days after as_of expire if it spends nothing meanwhile (overdue points included).';

-- The reader's view of it, per cutoff.
CREATE FUNCTION @extschema@.expiring_points(program text, account text DEFAULT NULL, as_of date DEFAULT NULL)
RETURNS TABLE (account_key text, cutoff date, points bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    pid integer;
    day date;
BEGIN
    -- a partner's login reads its own account only, and not every account
    -- (account NULL) (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account);
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF as_of IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'as_of must be a finite date, not %', as_of
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'as_of is the day from which the next 90 days of settlement cutoffs are looked at.',
                  HINT = 'Leave it out for today in the program''s time zone.';
    END IF;
    day := coalesce(as_of, @extschema@._today(pid));
    -- what is due at a cutoff includes what is due at the ones before it
    RETURN QUERY
    SELECT y.account_key, y.cutoff, y.points
    FROM (SELECT x.account_key, x.cutoff,
                 (x.due OPERATOR(pg_catalog.-)
                  coalesce(pg_catalog.lag(x.due) OVER (PARTITION BY x.account_key ORDER BY x.cutoff), 0))::bigint AS points
          FROM (SELECT d.account_key, c AS cutoff, d.points AS due
                FROM @extschema@._expiry_cutoffs(pid, day) c,
                     LATERAL @extschema@._expiry_due(pid, c, expiring_points.account) d) x) y
    WHERE y.points OPERATOR(pg_catalog.>) 0
    ORDER BY 1, 2;
END
$$;
COMMENT ON FUNCTION @extschema@.expiring_points(text, text, date) IS
    'Points that expire at each settlement cutoff of the next 90 days after as_of (default: today in the program''s time zone) if the account spends nothing meanwhile, per account (account NULL: every account with points to expire). Points of a month expire at the first cutoff at which the whole month is older than the program''s point_lifetime; the oldest points are spent first.';
GRANT EXECUTE ON FUNCTION @extschema@.expiring_points(text, text, date) TO loyalty_reader, loyalty_operator, loyalty_admin;
