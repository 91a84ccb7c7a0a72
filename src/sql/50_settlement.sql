-- Settlement: one run per program and period, in one transaction.  Tier
-- re-qualification over the rolling window, then the steps of the other
-- wallets (rebates, MDF, expiry: 52_expiry.sql, 53_rebates.sql, 63_mdf.sql),
-- then the run's row.  A crash leaves nothing; a second call finds the row.
--
-- The amounts a run counts are per account "to date": everything dated up
-- to the period's last day as the run saw it.  The next run counts what was
-- added since, split into the documents dated in its own period and those
-- dated before it (late invoices, credit notes for a settled period): the
-- carried adjustment.  Summed over the runs, every document counts once.

-- What one run saw and decided for each account: the carried amounts of the
-- next run are computed against it, and the "periods below" grace counts on it.
CREATE TABLE @extschema@.settlement_account (
    program_id         integer NOT NULL,
    account_key        text NOT NULL,
    period_end         date NOT NULL,
    qualifying_to_date numeric NOT NULL DEFAULT 0,
    points_to_date     bigint NOT NULL DEFAULT 0,
    period_qualifying  numeric NOT NULL DEFAULT 0,
    carried_qualifying numeric NOT NULL DEFAULT 0,
    period_points      bigint NOT NULL DEFAULT 0,
    carried_points     bigint NOT NULL DEFAULT 0,
    measure            numeric,
    old_tier           text,
    qualified_tier     text,
    new_tier           text,
    periods_below      integer NOT NULL DEFAULT 0 CHECK (periods_below OPERATOR(pg_catalog.>=) 0),
    outcome            text NOT NULL CHECK (outcome IN ('up', 'down', 'grace', 'held', 'kept', 'same', 'manual')),
    PRIMARY KEY (program_id, account_key, period_end)
);
-- a run reads the rows of its own and of the previous period
CREATE INDEX settlement_account_period ON @extschema@.settlement_account (program_id, period_end);
COMMENT ON TABLE @extschema@.settlement_account IS 'One row per account and settlement run: the amounts the run counted and its tier decision. The next run counts what was posted since against it (the carried adjustment), so a late document is counted once, by the first run after it.';
COMMENT ON COLUMN @extschema@.settlement_account.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.settlement_account.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.settlement_account.period_end IS 'Last day of the settled period (loyalty.settlement_run).';
COMMENT ON COLUMN @extschema@.settlement_account.qualifying_to_date IS 'Qualifying spend of every document dated up to period_end, as the run saw it.';
COMMENT ON COLUMN @extschema@.settlement_account.points_to_date IS 'Points (before caps) of every document dated up to period_end, as the run saw it.';
COMMENT ON COLUMN @extschema@.settlement_account.period_qualifying IS 'Qualifying spend of the documents dated in the period.';
COMMENT ON COLUMN @extschema@.settlement_account.carried_qualifying IS 'Qualifying spend of documents dated before the period that no earlier run counted (late invoices, credit notes).';
COMMENT ON COLUMN @extschema@.settlement_account.period_points IS 'Points of the documents dated in the period (before caps).';
COMMENT ON COLUMN @extschema@.settlement_account.carried_points IS 'Points of documents dated before the period that no earlier run counted.';
COMMENT ON COLUMN @extschema@.settlement_account.measure IS 'What the tier qualification measured over the rolling window ending with the period (spend, points or action count, by program.tier_basis).';
COMMENT ON COLUMN @extschema@.settlement_account.old_tier IS 'Tier before the run.';
COMMENT ON COLUMN @extschema@.settlement_account.qualified_tier IS 'Tier the measure (and the tier requirements) reach.';
COMMENT ON COLUMN @extschema@.settlement_account.new_tier IS 'Tier after the run.';
COMMENT ON COLUMN @extschema@.settlement_account.periods_below IS 'Settled periods in a row the account qualified below its tier and kept it (grace periods).';
COMMENT ON COLUMN @extschema@.settlement_account.outcome IS 'up, down (to the qualified tier), grace (down less far, by the grace rule), held (below, kept by grace), kept (below, kept: tier reached in this period), same, manual (tier granted by an admin, not re-qualified).';

-- Lock classes (advisory, transaction-scoped; the second key is the
-- program): settlements of a program one at a time; tier writes (fold's
-- upgrades, settlement, grants) one at a time.  fold.c tries the tier lock
-- and skips when it is taken; the others wait.
CREATE FUNCTION @extschema@._settle_lock(program_id integer) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_advisory_xact_lock(1280267078, program_id) $$;
COMMENT ON FUNCTION @extschema@._settle_lock(integer) IS 'Internal: waits for the program''s settlement lock (held until commit).';

CREATE FUNCTION @extschema@._tier_lock(program_id integer) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_advisory_xact_lock(1280268614, program_id) $$;
COMMENT ON FUNCTION @extschema@._tier_lock(integer) IS 'Internal: waits for the program''s tier lock (the lock loyalty.fold() tries), held until commit: tier changes of a program are written one transaction at a time.';

CREATE FUNCTION @extschema@._period_length(period text) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT pg_catalog.make_interval(months => CASE period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
$$;
COMMENT ON FUNCTION @extschema@._period_length(text) IS 'Internal: the length of a settlement period (month, quarter, year).';

-- The first day of the period that period_end ends (NULL when it ends
-- none), and the problems of the arguments the public functions report
-- themselves (so that their errors name no internal helper): NULL when
-- fine, else {SQLSTATE, message, detail, hint}.
CREATE FUNCTION @extschema@._period_start(program_id integer, period_end date) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT CASE WHEN pg_catalog.isfinite(period_end)
                         AND pg_catalog.date_trunc('month', (period_end OPERATOR(pg_catalog.+) 1)::timestamp)
                             OPERATOR(pg_catalog.=) (period_end OPERATOR(pg_catalog.+) 1)::timestamp
                         AND (pg_catalog.date_part('month', period_end OPERATOR(pg_catalog.+) 1)::integer
                              OPERATOR(pg_catalog.%) CASE p.settlement_period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
                             OPERATOR(pg_catalog.=) (1 OPERATOR(pg_catalog.%) CASE p.settlement_period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
                    THEN ((period_end OPERATOR(pg_catalog.+) 1)::timestamp
                          OPERATOR(pg_catalog.-) @extschema@._period_length(p.settlement_period))::date END
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _period_start.program_id)
$$;
COMMENT ON FUNCTION @extschema@._period_start(integer, date) IS 'Internal: the first day of the settlement period ending on period_end; NULL when period_end is not the last day of one of the program''s periods.';

CREATE FUNCTION @extschema@._program_problem(program text) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN program IS NULL
            THEN ARRAY['22004', 'program must not be NULL',
                       'program is the name of a loyalty program, as given to loyalty.create_program().',
                       'List programs with SELECT name FROM loyalty.program.']
            WHEN NOT EXISTS (SELECT FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program)
            THEN ARRAY['42704', pg_catalog.format('loyalty program "%s" does not exist', program),
                       'program names no program of this database (names are case-sensitive).',
                       'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.'] END
$$;
COMMENT ON FUNCTION @extschema@._program_problem(text) IS 'Internal: what is wrong with a program argument (NULL, unknown) as {SQLSTATE, message, detail, hint}; NULL when it names a program.';

CREATE FUNCTION @extschema@._period_end_problem(program_id integer, period_end date) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT CASE WHEN period_end IS NULL OR NOT pg_catalog.isfinite(period_end)
                    THEN ARRAY[CASE WHEN period_end IS NULL THEN '22004' ELSE '22023' END,
                               'period_end must be a date, not ' || coalesce(period_end::text, 'NULL'),
                               'period_end is the last day of a settlement period of the program.',
                               'For example period_end => ''2025-03-31''.']
                    WHEN @extschema@._period_start(program_id, period_end) IS NULL
                    THEN ARRAY['22023', pg_catalog.format('period_end %s is not the last day of a %s', period_end, p.settlement_period),
                               pg_catalog.format('Program "%s" settles by %s; period_end is the last day of one.', p.name, p.settlement_period),
                               pg_catalog.format('The %s around it ends on %s; the one before ended on %s.', p.settlement_period,
                                   (pg_catalog.date_trunc(p.settlement_period, period_end::timestamp)
                                    OPERATOR(pg_catalog.+) @extschema@._period_length(p.settlement_period)
                                    OPERATOR(pg_catalog.-) '1 day'::interval)::date,
                                   (pg_catalog.date_trunc(p.settlement_period, period_end::timestamp)
                                    OPERATOR(pg_catalog.-) '1 day'::interval)::date)] END
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _period_end_problem.program_id)
$$;
COMMENT ON FUNCTION @extschema@._period_end_problem(integer, date) IS 'Internal: what is wrong with a period_end argument (NULL, not finite, not the last day of one of the program''s periods) as {SQLSTATE, message, detail, hint}; NULL when fine.';

-- The highest tier (its rank, 0: none) whose threshold a measure reaches
-- and all of whose action requirements an account meets, from arguments
-- alone: the requirements (rank, action, minimum count) and the account's
-- approved actions with their counts.  Citus runs it inside the pushed-down
-- settlement, where a function may not read tables.
CREATE FUNCTION @extschema@._rank_meeting(thresholds numeric[], measure numeric, req_ranks integer[], req_actions text[],
                                          req_mins bigint[], actions text[], counts bigint[])
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT coalesce(max(l.rank), 0)::integer
FROM unnest(thresholds) WITH ORDINALITY AS l(threshold, rank)
WHERE l.threshold <= measure
  AND NOT EXISTS (SELECT FROM unnest(req_ranks, req_actions, req_mins) AS r(rank, action, min_count)
                  WHERE r.rank = l.rank AND coalesce(counts[array_position(actions, r.action)], 0) < r.min_count)
$$;
COMMENT ON FUNCTION @extschema@._rank_meeting(numeric[], numeric, integer[], text[], bigint[], text[], bigint[]) IS
    'Internal: the highest tier rank whose threshold the measure reaches and whose action requirements (given as arrays) the account''s action counts meet; 0 if none.';

-- The tier decision of every account, one statement (one snapshot): what
-- the run counted and what each account qualifies for, into
-- settlement_account.  Returns the number of accounts.
CREATE FUNCTION @extschema@._settle_accounts(pid integer, period_start date, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prog @extschema@.program;
    prev_end date;
    cutoff timestamptz;
    win_start date;
    names text[];
    thresholds numeric[];
    has_req boolean;
    n bigint;
BEGIN
    SELECT * INTO prog FROM @extschema@.program p WHERE p.program_id = pid;
    SELECT max(r.period_end) INTO prev_end FROM @extschema@.settlement_run r
    WHERE r.program_id = pid AND r.period_end < _settle_accounts.period_end;
    cutoff := period_start::timestamp AT TIME ZONE prog.time_zone;
    win_start := (date_trunc('month', period_end::timestamp)
                  - make_interval(months => @extschema@._window_months(prog.qualification_window) - 1))::date;
    -- the ladder by rank (1 = lowest), for array look-ups instead of joins
    SELECT array_agg(t.name ORDER BY t.rank), array_agg(t.threshold ORDER BY t.rank)
    INTO names, thresholds FROM @extschema@.tiers(prog.ladder) t;
    has_req := EXISTS (SELECT FROM @extschema@.tier_requirement r WHERE r.program_id = pid);
    IF @extschema@._distributed() THEN
        -- On Citus (loyalty.distribute()), the same decision as below in a
        -- form Citus pushes down whole: every table it reads is distributed
        -- by account_key with settlement_account and joined on it, so the
        -- INSERT runs as one task per shard, on the node holding it.  The
        -- accounts are the union of the three sources (a FULL JOIN on a
        -- coalesce is not a join on the distribution column), each CTE
        -- read twice is inlined, and the margin grace counts the scaled
        -- thresholds with width_bucket instead of a correlated subquery.
        -- Action counts (tier_basis action, tier requirements) come from
        -- the co-located award shard, grouped by account; the requirements
        -- (a reference table) are passed as arrays and checked by
        -- _rank_meeting, a function of its arguments alone.
        EXECUTE $q$
    INSERT INTO @extschema@.settlement_account AS s
        (program_id, account_key, period_end, qualifying_to_date, points_to_date, period_qualifying, carried_qualifying,
         period_points, carried_points, measure, old_tier, qualified_tier, new_tier, periods_below, outcome)
    WITH m AS NOT MATERIALIZED (
        SELECT b.account_key,
               sum(b.q) FILTER (WHERE b.month <= $4) AS q_to_date,
               sum(b.p) FILTER (WHERE b.month <= $4) AS p_to_date,
               sum(b.q) FILTER (WHERE b.month >= $3 AND b.month <= $4) AS q_period,
               sum(b.p) FILTER (WHERE b.month >= $3 AND b.month <= $4) AS p_period,
               sum(b.q) FILTER (WHERE b.month >= $6 AND b.month <= $4) AS q_window,
               sum(b.p) FILTER (WHERE b.month >= $6 AND b.month <= $4) AS p_window
        FROM (SELECT f.account_key, x.month, x.q, x.p
              FROM @extschema@.balance_folded f, unnest(f.m_month, f.m_qualifying, f.m_points) AS x(month, q, p)
              WHERE f.program_id = $1
              UNION ALL
              SELECT d.account_key, x.month, x.q, x.p
              FROM @extschema@.balance_delta d, unnest(d.m_month, d.m_qualifying, d.m_points) AS x(month, q, p)
              WHERE d.program_id = $1) b
        GROUP BY b.account_key),
    prev AS NOT MATERIALIZED (
        SELECT x.account_key, x.qualifying_to_date, x.points_to_date, x.periods_below
        FROM @extschema@.settlement_account x
        WHERE x.program_id = $1 AND x.period_end = $2),
    -- approved actions in the window, per account: the actions and their counts
    acts AS NOT MATERIALIZED (
        SELECT c.account_key, array_agg(c.action) AS actions, array_agg(c.n) AS counts
        FROM (SELECT w.account_key, w.action, sum(w.quantity)::bigint AS n
              FROM @extschema@.award w
              WHERE w.program_id = $1 AND w.status = 'approved' AND w.action = ANY ($14)
                AND w.occurred_on >= $6 AND w.occurred_on <= $4
              GROUP BY w.account_key, w.action) c
        GROUP BY c.account_key),
    keys AS (
        SELECT x.account_key FROM @extschema@.account x WHERE x.program_id = $1
        UNION SELECT m.account_key FROM m
        UNION SELECT prev.account_key FROM prev),
    base AS (
        SELECT k.account_key, a.account_key IS NOT NULL AS enrolled, a.tier,
               coalesce(m.q_to_date, 0) AS q_to_date, coalesce(m.p_to_date, 0) AS p_to_date,
               coalesce(m.q_period, 0) AS q_period, coalesce(m.p_period, 0) AS p_period,
               CASE $9 WHEN 'points' THEN coalesce(m.p_window, 0)
                       WHEN 'action' THEN coalesce(ac.counts[array_position(ac.actions, $15)], 0)
                       ELSE coalesce(m.q_window, 0) END AS measure,
               ac.actions, ac.counts,
               coalesce(pv.qualifying_to_date, 0) AS q_prev, coalesce(pv.points_to_date, 0) AS p_prev,
               coalesce(pv.periods_below, 0) AS below_prev,
               g.account_key IS NOT NULL AS granted,
               x.account_key IS NOT NULL AS reached
        FROM keys k
             LEFT JOIN @extschema@.account a ON a.program_id = $1 AND a.account_key = k.account_key
             LEFT JOIN m ON m.account_key = k.account_key
             LEFT JOIN prev pv ON pv.account_key = k.account_key
             LEFT JOIN acts ac ON ac.account_key = k.account_key
             LEFT JOIN @extschema@.tier_grant g ON g.program_id = $1 AND g.account_key = a.account_key
             LEFT JOIN (SELECT h.account_key, h.new_tier FROM @extschema@.tier_history h
                         WHERE h.program_id = $1 AND h.reason = 'upgrade_on_accrual' AND h.changed_at >= $5
                         GROUP BY h.account_key, h.new_tier) x
                    ON x.account_key = k.account_key AND x.new_tier = a.tier),
    ranked AS (
        SELECT b.*, array_position($7, b.tier) AS cur_rank,
               CASE WHEN $19 THEN @extschema@._rank_meeting($8, b.measure, $16, $17, $18, b.actions, b.counts)
                    ELSE coalesce(@extschema@.tier_rank($10, b.measure), 0) END AS q_rank,
               CASE WHEN $11 = 'margin' THEN width_bucket(b.measure, $13) ELSE 0 END AS margin_rank,
               b.reached AS reached_in_period
        FROM base b),
    decided AS (
        SELECT r.*,
               CASE WHEN NOT r.enrolled OR $10 IS NULL THEN r.cur_rank
                    WHEN r.granted THEN r.cur_rank
                    WHEN r.tier IS NOT NULL AND r.cur_rank IS NULL THEN NULL
                    WHEN r.q_rank >= coalesce(r.cur_rank, 0) THEN r.q_rank
                    WHEN r.reached_in_period THEN r.cur_rank
                    WHEN $11 = 'one_level' THEN greatest(r.q_rank, r.cur_rank - 1)
                    WHEN $11 = 'margin' THEN greatest(r.q_rank, least(r.margin_rank, r.cur_rank))
                    WHEN $11 = 'periods' AND r.below_prev + 1 < $12 THEN r.cur_rank
                    ELSE r.q_rank END AS new_rank
        FROM ranked r)
    SELECT $1, d.account_key, $4, d.q_to_date, d.p_to_date, d.q_period,
           d.q_to_date - d.q_period - d.q_prev, d.p_period, d.p_to_date - d.p_period - d.p_prev,
           d.measure, d.tier, $7[d.q_rank],
           CASE WHEN d.new_rank IS NULL THEN d.tier ELSE $7[d.new_rank] END,
           CASE WHEN d.enrolled AND NOT d.granted AND d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                     AND d.new_rank = d.cur_rank AND NOT d.reached_in_period
                THEN d.below_prev + 1 ELSE 0 END,
           CASE WHEN d.granted THEN 'manual'
                WHEN d.new_rank IS NULL OR d.new_rank = coalesce(d.cur_rank, 0) THEN
                     CASE WHEN d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                          THEN CASE WHEN d.reached_in_period THEN 'kept' ELSE 'held' END
                          ELSE 'same' END
                WHEN d.new_rank > coalesce(d.cur_rank, 0) THEN 'up'
                WHEN d.new_rank > d.q_rank THEN 'grace'
                ELSE 'down' END
    FROM decided d
        $q$ USING pid, prev_end, period_start, period_end, cutoff, win_start, names, thresholds, prog.tier_basis,
                  prog.ladder, prog.tier_grace, prog.tier_grace_value,
                  (SELECT array_agg(t OPERATOR(pg_catalog.*) (1 OPERATOR(pg_catalog.-) prog.tier_grace_value) ORDER BY i)
                   FROM unnest(thresholds) WITH ORDINALITY AS l(t, i)),
                  ARRAY(SELECT r.action FROM @extschema@.tier_requirement r WHERE r.program_id = pid
                        UNION SELECT prog.tier_action WHERE prog.tier_action IS NOT NULL),
                  prog.tier_action,
                  ARRAY(SELECT array_position(names, r.tier) FROM @extschema@.tier_requirement r
                        WHERE r.program_id = pid ORDER BY r.tier, r.action),
                  ARRAY(SELECT r.action FROM @extschema@.tier_requirement r WHERE r.program_id = pid ORDER BY r.tier, r.action),
                  ARRAY(SELECT r.min_count FROM @extschema@.tier_requirement r WHERE r.program_id = pid ORDER BY r.tier, r.action),
                  has_req;
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;

    INSERT INTO @extschema@.settlement_account AS s
        (program_id, account_key, period_end, qualifying_to_date, points_to_date, period_qualifying, carried_qualifying,
         period_points, carried_points, measure, old_tier, qualified_tier, new_tier, periods_below, outcome)
    -- The month sums of every account, summed over the three ranges the run
    -- needs.  These are the per-month arrays loyalty.accrual_month unnests
    -- (folded rows and deltas not folded yet), summed row by row: grouping
    -- them by month first, as the view does, costs ten times more and is
    -- not needed for sums over ranges.
    WITH m AS (
        SELECT u.account_key, sum(u.q_to_date) AS q_to_date, sum(u.p_to_date) AS p_to_date,
               sum(u.q_period) AS q_period, sum(u.p_period) AS p_period,
               sum(u.q_window) AS q_window, sum(u.p_window) AS p_window
        FROM (SELECT f.account_key, f.m_month, f.m_qualifying, f.m_points
              FROM @extschema@.balance_folded f WHERE f.program_id = pid
              UNION ALL
              SELECT d.account_key, d.m_month, d.m_qualifying, d.m_points
              FROM @extschema@.balance_delta d WHERE d.program_id = pid) b,
             LATERAL (SELECT b.account_key,
                             sum(x.q) FILTER (WHERE x.month <= period_end) AS q_to_date,
                             sum(x.p) FILTER (WHERE x.month <= period_end) AS p_to_date,
                             sum(x.q) FILTER (WHERE x.month >= period_start AND x.month <= period_end) AS q_period,
                             sum(x.p) FILTER (WHERE x.month >= period_start AND x.month <= period_end) AS p_period,
                             sum(x.q) FILTER (WHERE x.month >= win_start AND x.month <= period_end) AS q_window,
                             sum(x.p) FILTER (WHERE x.month >= win_start AND x.month <= period_end) AS p_window
                      FROM unnest(b.m_month, b.m_qualifying, b.m_points) AS x(month, q, p)) u
        GROUP BY u.account_key),
    -- upgrades on accrual recorded in the period or after it (a run late
    -- after the period's end): they stand until the next period's end
    recent AS (
        SELECT DISTINCT h.account_key, h.new_tier
        FROM @extschema@.tier_history h
        WHERE h.program_id = pid AND h.reason = 'upgrade_on_accrual' AND h.changed_at >= cutoff),
    granted AS (
        SELECT g.account_key FROM @extschema@.tier_grant g WHERE g.program_id = pid),
    prev AS (
        SELECT x.account_key, x.qualifying_to_date, x.points_to_date, x.periods_below
        FROM @extschema@.settlement_account x
        WHERE x.program_id = pid AND x.period_end = prev_end),
    acts AS (
        SELECT c.account_key, c.action, c.actions
        FROM (SELECT DISTINCT r.action FROM @extschema@.tier_requirement r WHERE r.program_id = pid
              UNION SELECT prog.tier_action WHERE prog.tier_action IS NOT NULL) a,
             LATERAL (SELECT x.account_key, a.action, x.actions
                      FROM @extschema@._action_counts(pid, a.action, win_start, period_end + 1) x) c),
    base AS (
        SELECT coalesce(a.account_key, m.account_key, pv.account_key) AS account_key,
               a.account_key IS NOT NULL AS enrolled, a.tier,
               coalesce(m.q_to_date, 0) AS q_to_date, coalesce(m.p_to_date, 0) AS p_to_date,
               coalesce(m.q_period, 0) AS q_period, coalesce(m.p_period, 0) AS p_period,
               CASE prog.tier_basis WHEN 'qualifying' THEN coalesce(m.q_window, 0)
                                    WHEN 'points' THEN coalesce(m.p_window, 0)
                                    ELSE coalesce((SELECT c.actions FROM acts c
                                                   WHERE c.account_key = coalesce(a.account_key, m.account_key, pv.account_key)::text
                                                     AND c.action = prog.tier_action), 0) END AS measure,
               coalesce(pv.qualifying_to_date, 0) AS q_prev, coalesce(pv.points_to_date, 0) AS p_prev,
               coalesce(pv.periods_below, 0) AS below_prev,
               g.account_key IS NOT NULL AS granted
        FROM (SELECT * FROM @extschema@.account x WHERE x.program_id = pid) a
             FULL JOIN m ON m.account_key = a.account_key
             FULL JOIN prev pv ON pv.account_key = coalesce(a.account_key, m.account_key)
             LEFT JOIN granted g ON g.account_key = a.account_key),
    ranked AS (
        SELECT b.*,
               array_position(names, b.tier) AS cur_rank,
               -- the highest tier whose threshold the measure reaches (and,
               -- when the program has any, whose extra requirements the
               -- account meets)
               CASE WHEN NOT has_req THEN coalesce(@extschema@.tier_rank(prog.ladder, b.measure), 0)
                    ELSE coalesce((SELECT max(l.rank) FROM unnest(names, thresholds) WITH ORDINALITY AS l(name, threshold, rank)
                                   WHERE l.threshold <= b.measure
                                     AND NOT EXISTS (SELECT FROM @extschema@.tier_requirement r
                                                     WHERE r.program_id = pid AND r.tier = l.name
                                                       AND coalesce((SELECT c.actions FROM acts c
                                                                     WHERE c.account_key = b.account_key::text AND c.action = r.action), 0)
                                                           < r.min_count)), 0) END AS q_rank,
               -- the margin grace: the highest tier kept within the margin
               CASE WHEN prog.tier_grace = 'margin'
                    THEN coalesce((SELECT max(l.rank) FROM unnest(thresholds) WITH ORDINALITY AS l(threshold, rank)
                                   WHERE l.threshold * (1 - prog.tier_grace_value) <= b.measure), 0)
                    ELSE 0 END AS margin_rank,
               x.account_key IS NOT NULL AS reached_in_period
        FROM base b LEFT JOIN recent x ON x.account_key = b.account_key AND x.new_tier = b.tier),
    decided AS (
        SELECT r.*,
               CASE WHEN NOT r.enrolled OR prog.ladder IS NULL THEN r.cur_rank
                    WHEN r.granted THEN r.cur_rank
                    WHEN r.tier IS NOT NULL AND r.cur_rank IS NULL THEN NULL   -- a tier off the ladder: kept
                    WHEN r.q_rank >= coalesce(r.cur_rank, 0) THEN r.q_rank
                    WHEN r.reached_in_period THEN r.cur_rank
                    WHEN prog.tier_grace = 'one_level' THEN greatest(r.q_rank, r.cur_rank - 1)
                    WHEN prog.tier_grace = 'margin' THEN greatest(r.q_rank, least(r.margin_rank, r.cur_rank))
                    WHEN prog.tier_grace = 'periods' AND r.below_prev + 1 < prog.tier_grace_value THEN r.cur_rank
                    ELSE r.q_rank END AS new_rank
        FROM ranked r)
    SELECT pid, d.account_key, period_end, d.q_to_date, d.p_to_date, d.q_period,
           d.q_to_date - d.q_period - d.q_prev, d.p_period, d.p_to_date - d.p_period - d.p_prev,
           d.measure, d.tier, names[d.q_rank],
           CASE WHEN d.new_rank IS NULL THEN d.tier ELSE names[d.new_rank] END,
           CASE WHEN d.enrolled AND NOT d.granted AND d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                     AND d.new_rank = d.cur_rank AND NOT d.reached_in_period
                THEN d.below_prev + 1 ELSE 0 END,
           CASE WHEN d.granted THEN 'manual'
                WHEN d.new_rank IS NULL OR d.new_rank = coalesce(d.cur_rank, 0) THEN
                     CASE WHEN d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                          THEN CASE WHEN d.reached_in_period THEN 'kept' ELSE 'held' END
                          ELSE 'same' END
                WHEN d.new_rank > coalesce(d.cur_rank, 0) THEN 'up'
                WHEN d.new_rank > d.q_rank THEN 'grace'
                ELSE 'down' END
    FROM decided d;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_accounts(integer, date, date) IS 'Internal: settlement''s one pass over the accounts of a program: amounts counted (of the period, carried from earlier periods) and the tier decision of each, into loyalty.settlement_account.';

-- The tier changes a run decided: account rows and tier history, set-based.
-- An upgrade or downgrade counts for documents dated from tomorrow in the
-- program's calendar, and never for a document already accrued (as fold's
-- upgrades): what a document earned never changes after the fact.
CREATE FUNCTION @extschema@._settle_tiers(pid integer, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    tomorrow date := @extschema@._today(pid) + 1;
BEGIN
    IF @extschema@._distributed() THEN
        -- On Citus, two statements Citus pushes down (one task per shard):
        -- a data-modifying CTE feeding a distributed INSERT is planned on
        -- the coordinator, and correlated subqueries are not pushed down.
        -- The history first, for the accounts whose tier is still the one
        -- the run read, then the accounts themselves: the same rows as
        -- below, where the UPDATE's RETURNING feeds the history.
        EXECUTE $q$
    INSERT INTO @extschema@.tier_history
        (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)
    SELECT $1, s.account_key, coalesce(h.last_no, 0) + 1,
           greatest($3, f.last_doc_date + 1, d.last_doc_date + 1),
           s.old_tier, s.new_tier,
           CASE WHEN s.outcome = 'up' THEN 'requalification' WHEN s.outcome = 'grace' THEN 'grace' ELSE 'downgrade' END,
           s.measure
    FROM @extschema@.settlement_account s
    JOIN @extschema@.account a ON a.program_id = $1 AND a.account_key = s.account_key
                              AND a.tier IS NOT DISTINCT FROM s.old_tier
    LEFT JOIN (SELECT x.account_key, max(x.change_no) AS last_no FROM @extschema@.tier_history x
                WHERE x.program_id = $1 GROUP BY x.account_key) h ON h.account_key = s.account_key
    LEFT JOIN @extschema@.balance_folded f ON f.program_id = $1 AND f.account_key = s.account_key
    LEFT JOIN (SELECT x.account_key, max(x.last_doc_date) AS last_doc_date FROM @extschema@.balance_delta x
                WHERE x.program_id = $1 GROUP BY x.account_key) d ON d.account_key = s.account_key
    WHERE s.program_id = $1 AND s.period_end = $2 AND s.outcome IN ('up', 'down', 'grace')
        $q$ USING pid, period_end, tomorrow;
        GET DIAGNOSTICS n = ROW_COUNT;
        EXECUTE $q$
    UPDATE @extschema@.account a SET tier = s.new_tier,
           tier_since = CASE WHEN s.new_tier IS NULL THEN NULL ELSE $3 END
    FROM @extschema@.settlement_account s
    WHERE a.program_id = $1 AND a.account_key = s.account_key AND a.tier IS NOT DISTINCT FROM s.old_tier
      AND s.program_id = $1 AND s.period_end = $2 AND s.outcome IN ('up', 'down', 'grace')
        $q$ USING pid, period_end, pg_catalog.now();
        RETURN n;
    END IF;
    -- the latest document date of each account that moves (what
    -- loyalty.balance's last_doc_date says) and its last change number:
    -- index probes per moving account (the run's rows are too fresh for
    -- the planner to size a join with them)
    WITH c AS (
        SELECT s.account_key, s.old_tier, s.new_tier, s.outcome, s.measure,
               coalesce((SELECT max(h.change_no) FROM @extschema@.tier_history h
                         WHERE h.program_id = pid AND h.account_key = s.account_key), 0) + 1 AS change_no,
               greatest(tomorrow,
                        (SELECT f.last_doc_date FROM @extschema@.balance_folded f
                         WHERE f.program_id = pid AND f.account_key = s.account_key) + 1,
                        (SELECT max(d.last_doc_date) FROM @extschema@.balance_delta d
                         WHERE d.program_id = pid AND d.account_key = s.account_key) + 1) AS effective_from
        FROM @extschema@.settlement_account s
        WHERE s.program_id = pid AND s.period_end = _settle_tiers.period_end
          AND s.outcome IN ('up', 'down', 'grace')),
    upd AS (
        UPDATE @extschema@.account a SET tier = c.new_tier,
               tier_since = CASE WHEN c.new_tier IS NULL THEN NULL ELSE pg_catalog.now() END
        FROM c
        WHERE a.program_id = pid AND a.account_key = c.account_key AND a.tier IS NOT DISTINCT FROM c.old_tier
        RETURNING c.*)
    INSERT INTO @extschema@.tier_history
        (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)
    SELECT pid, u.account_key, u.change_no, u.effective_from, u.old_tier, u.new_tier,
           CASE u.outcome WHEN 'up' THEN 'requalification' WHEN 'grace' THEN 'grace' ELSE 'downgrade' END,
           u.measure
    FROM upd u ORDER BY u.account_key;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_tiers(integer, date) IS 'Internal: writes the tier changes a settlement run decided (loyalty.account and loyalty.tier_history).';

-- As the owner: settlement reads loyalty's own tables only (accrual_month,
-- account, tier rules, the earlier runs) and evaluates nothing a user
-- defined; the steps it calls are the extension's own.
CREATE FUNCTION @extschema@.settle(program text, period_end date) RETURNS @extschema@.settlement_run
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    pstart date;
    e text[];
    run @extschema@.settlement_run;
    later date;
    n bigint;
    changed bigint;
    expired bigint;
    rebates numeric;
    mdf numeric;
    jit_was text;
BEGIN
    e := coalesce(@extschema@._program_problem(program),
                  @extschema@._period_end_problem((SELECT p.program_id FROM @extschema@.program p WHERE p.name = settle.program),
                                                  period_end));
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = settle.program;
    pstart := @extschema@._period_start(pid, period_end);
    IF period_end >= @extschema@._today(pid) THEN
        RAISE EXCEPTION 'the % ending on period_end % has not ended yet', (SELECT p.settlement_period FROM @extschema@.program p WHERE p.program_id = pid), period_end
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Invoices dated in the period may still arrive until its last day has passed in the program''s time zone (%s).',
                                             (SELECT p.time_zone FROM @extschema@.program p WHERE p.program_id = pid)),
                  HINT = 'Settle it on the day after its last day or later; loyalty.settle_due() settles every period that has ended.';
    END IF;
    -- one settlement of the program at a time: a second call waits here,
    -- then (a new snapshot per statement) finds the run the first committed
    PERFORM @extschema@._settle_lock(pid);
    SELECT * INTO run FROM @extschema@.settlement_run r WHERE r.program_id = pid AND r.period_end = settle.period_end;
    IF FOUND THEN
        RAISE NOTICE 'program "%" is already settled for the period ending %', program, period_end
            USING DETAIL = 'A period is settled once; its run is in loyalty.settlement_run.';
        RETURN run;
    END IF;
    SELECT max(r.period_end) INTO later FROM @extschema@.settlement_run r WHERE r.program_id = pid AND r.period_end > settle.period_end;
    IF later IS NOT NULL THEN
        RAISE EXCEPTION 'program "%" is already settled for a later period (ending %)', program, later
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Periods are settled in order; what a skipped period would count was carried into the later run.',
                  HINT = 'Nothing to do: late documents of earlier periods are carried into the next run.';
    END IF;
    PERFORM @extschema@._tier_lock(pid);
    -- backfill replayed the tiers of this period as settlement would have
    SELECT max(t.through) INTO later FROM @extschema@.tier_replay t WHERE t.program_id = pid;
    IF later >= settle.period_end THEN
        RAISE EXCEPTION 'the tiers of program "%" for the period ending % were replayed by loyalty.backfill()', program, period_end
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('backfill re-qualified the tiers of every period up to %s as settlement would have (loyalty.tier_replay); settling one again would re-qualify it twice.', later),
                  HINT = 'Settle the periods after it: loyalty.settle_due() starts there.';
    END IF;
    -- the pass is one cheap scan, but its plan is costed high enough to be
    -- JIT-compiled, which costs more than the pass: off for this run
    -- (restored below; an error rolls the setting back with the run)
    jit_was := pg_catalog.current_setting('jit');
    PERFORM pg_catalog.set_config('jit', 'off', true);

    n := @extschema@._settle_accounts(pid, pstart, period_end);
    RAISE NOTICE 'settle "%" %..%: % accounts counted', program, pstart, period_end, n;
    changed := @extschema@._settle_tiers(pid, period_end);
    RAISE NOTICE 'settle "%" %..%: % tier changes', program, pstart, period_end, changed;
    -- the rebate and expiry steps take the day after the period as their
    -- cutoff (the period's documents are those dated before it).  Expiry
    -- runs first: it locks the accounts it debits before this transaction
    -- posts anything to them.  A redemption holds its account's lock while
    -- it waits for the postings in flight on the account (_await_postings);
    -- had the rebates or MDF been posted first, a redemption arriving
    -- between them and the expiry lock would deadlock with the settlement.
    -- (Rebates and MDF carry no points: the order changes no figure.)
    expired := @extschema@._settle_expiry(pid, pstart, period_end OPERATOR(pg_catalog.+) 1);
    rebates := @extschema@._settle_rebates(pid, pstart, period_end OPERATOR(pg_catalog.+) 1);
    RAISE NOTICE 'settle "%" %..%: rebates trued up %', program, pstart, period_end, rebates;
    mdf := @extschema@._settle_mdf(pid, pstart, period_end);
    RAISE NOTICE 'settle "%" %..%: MDF accrued %', program, pstart, period_end, mdf;
    RAISE NOTICE 'settle "%" %..%: % points expired', program, pstart, period_end, expired;

    INSERT INTO @extschema@.settlement_run AS r
        (program_id, period_start, period_end, status, started_at, finished_at, accounts, points_expired, rebate_total,
         mdf_total, period_qualifying, carried_qualifying, period_points, carried_points, tiers_up, tiers_down,
         tiers_held, settled_by)
    SELECT pid, pstart, settle.period_end, 'done', pg_catalog.now(), pg_catalog.clock_timestamp(), n, expired, rebates, mdf,
           coalesce(sum(s.period_qualifying), 0), coalesce(sum(s.carried_qualifying), 0),
           coalesce(sum(s.period_points), 0), coalesce(sum(s.carried_points), 0),
           count(*) FILTER (WHERE s.outcome = 'up'), count(*) FILTER (WHERE s.outcome IN ('down', 'grace')),
           count(*) FILTER (WHERE s.outcome IN ('held', 'kept')), session_user
    FROM @extschema@.settlement_account s
    WHERE s.program_id = pid AND s.period_end = settle.period_end
    RETURNING * INTO run;
    PERFORM pg_catalog.set_config('jit', jit_was, true);
    RETURN run;
END
$$;
COMMENT ON FUNCTION @extschema@.settle(text, date) IS
    'Settles a program for the period ending on period_end (the last day of a month, quarter or year, by program.settlement_period): tier re-qualification over the rolling window, rebate true-up, MDF, point expiry, in one transaction. Once per period: a second call returns the existing run with a NOTICE; concurrent calls wait for each other. Documents dated in a settled period that arrive later are counted by the next run (carried_qualifying).';

-- Every period that has ended and is not settled, oldest first, program by
-- program.  Periods before the program's first document month or creation
-- are not settled (nothing to count).
CREATE FUNCTION @extschema@.settle_due(program text DEFAULT NULL) RETURNS SETOF @extschema@.settlement_run
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
    d date;
    last_end date;
    first_start date;
    cur_start date;
    step interval;
    e text[];
BEGIN
    IF program IS NOT NULL AND @extschema@._program_problem(program) IS NOT NULL THEN
        e := @extschema@._program_problem(program);
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3] || ' NULL settles every program.', HINT = e[4];
    END IF;
    FOR p IN SELECT x.program_id, x.name, x.settlement_period, x.created_at, x.time_zone FROM @extschema@.program x
             WHERE settle_due.program IS NULL OR x.name = settle_due.program ORDER BY x.program_id LOOP
        step := @extschema@._period_length(p.settlement_period);
        SELECT max(r.period_end) INTO last_end FROM @extschema@.settlement_run r WHERE r.program_id = p.program_id;
        IF last_end IS NOT NULL THEN
            first_start := last_end + 1;
        ELSE
            -- the period holding the program's start or its first document
            SELECT date_trunc(p.settlement_period,
                              least((p.created_at AT TIME ZONE p.time_zone)::date,
                                    (SELECT min(m.month) FROM @extschema@.accrual_month m WHERE m.program_id = p.program_id))::timestamp)::date
            INTO first_start;
        END IF;
        -- periods whose tiers backfill replayed are not settled again
        SELECT greatest(first_start, max(t.through) + 1) INTO first_start
        FROM @extschema@.tier_replay t WHERE t.program_id = p.program_id;
        -- the current period has not ended: the last to settle ends before it
        cur_start := date_trunc(p.settlement_period, @extschema@._today(p.program_id)::timestamp)::date;
        d := first_start;
        WHILE d < cur_start LOOP
            RETURN NEXT @extschema@.settle(p.name, (d + step - interval '1 day')::date);
            d := (d + step)::date;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.settle_due(text) IS
    'Settles every period that has ended (in each program''s time zone) and is not settled yet, oldest first, of every program or of one; returns the runs it made. What a pg_cron job calls (loyalty.schedule_settlement).';

-- pg_cron: one named job per program, as the caller (the job then runs as
-- the caller: a role that may settle).
CREATE FUNCTION @extschema@._cron_schema() RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT n.nspname FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_depend d ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                                   AND d.refobjid OPERATOR(pg_catalog.=) e.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
                                   AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) d.objid
        WHERE e.extname OPERATOR(pg_catalog.=) 'pg_cron' LIMIT 1)
$$;
COMMENT ON FUNCTION @extschema@._cron_schema() IS 'Internal: the schema pg_cron created in this database (cron), as the extension''s own member; NULL when pg_cron is not created here.';

CREATE FUNCTION @extschema@.schedule_settlement(program text, cron text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name;
    job bigint;
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF cron IS NULL THEN
        RAISE EXCEPTION 'cron must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'cron is a pg_cron schedule, e.g. ''0 2 * * *'' (every day at 02:00).',
                  HINT = 'settle_due() settles only periods that have ended, so a daily schedule settles each period once, the night after it ends.';
    END IF;
    nsp := @extschema@._cron_schema();
    IF nsp IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('The settlement of program "%s" would run as a pg_cron job; the extension pg_cron is not created in this database.', program),
                  HINT = pg_catalog.format('Install the package postgresql-15-cron, set shared_preload_libraries = ''pg_cron'' and cron.database_name = %L in postgresql.conf, restart the server, then run CREATE EXTENSION pg_cron in this database. Without pg_cron, call SELECT * FROM loyalty.settle_due() from any scheduler.', current_database());
    END IF;
    -- pg_cron replaces the schedule of a job of the same name: idempotent
    EXECUTE pg_catalog.format('SELECT %I.schedule($1, $2, $3)', nsp)
    INTO job
    USING 'loyalty-settle-' || program, cron,
          pg_catalog.format('SELECT count(*) FROM %I.settle_due(%L)', '@extschema@', program);
    RETURN job;
END
$$;
COMMENT ON FUNCTION @extschema@.schedule_settlement(text, text) IS
    'Registers (or re-registers with a new schedule) the pg_cron job loyalty-settle-<program> that runs loyalty.settle_due(program) as the calling role; returns the job id. Needs pg_cron created in this database.';

CREATE FUNCTION @extschema@.unschedule_settlement(program text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name;
    done boolean;
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    nsp := @extschema@._cron_schema();
    IF nsp IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('No job loyalty-settle-%s can exist without pg_cron.', program),
                  HINT = 'Nothing to unschedule.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = nsp AND c.relname = 'job') THEN
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %I.job j WHERE j.jobname = $1)', nsp)
    INTO done USING 'loyalty-settle-' || program;
    IF NOT done THEN
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('SELECT %I.unschedule($1)', nsp) INTO done USING 'loyalty-settle-' || program;
    RETURN done;
END
$$;
COMMENT ON FUNCTION @extschema@.unschedule_settlement(text) IS
    'Removes the pg_cron job loyalty-settle-<program>; false when there is none.';

GRANT SELECT ON @extschema@.settlement_account TO loyalty_reader, loyalty_operator, loyalty_admin;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settlement_account', '');
REVOKE ALL ON FUNCTION @extschema@.settle(text, date), @extschema@.settle_due(text),
                      @extschema@.schedule_settlement(text, text), @extschema@.unschedule_settlement(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.settle(text, date), @extschema@.settle_due(text) TO loyalty_operator, loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.schedule_settlement(text, text), @extschema@.unschedule_settlement(text) TO loyalty_admin;
REVOKE ALL ON FUNCTION @extschema@._settle_lock(integer), @extschema@._tier_lock(integer), @extschema@._period_length(text),
                      @extschema@._program_problem(text), @extschema@._period_end_problem(integer, date),
                      @extschema@._period_start(integer, date), @extschema@._settle_accounts(integer, date, date),
                      @extschema@._settle_tiers(integer, date), @extschema@._cron_schema() FROM PUBLIC;
