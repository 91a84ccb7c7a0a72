
-- Retrospective volume rebates.  An agreement gives an account, or every
-- account of a segment, a rebate_schedule over the qualifying spend of each
-- of its periods (the program's settlement period, or its own month,
-- quarter or year; calendar periods).  While a period runs,
-- loyalty.accrue_rebates() posts the estimate (the schedule applied to the
-- volume so far) to the rebate wallet; at settlement _settle_rebates()
-- posts the true-up (final - already accrued, possibly negative) and
-- writes a settlement line the ERP turns into a credit note.  An invoice or
-- credit note dated in a period already settled changes its volume: the
-- next settlement posts an adjustment line for that period.  Every amount
-- is recomputed from the volumes each time and compared with what was
-- posted, so nothing is counted twice, whichever call comes when.
--
-- The volume of a period is the qualifying spend of the account's
-- documents dated in it (loyalty.accrual_month, by document month: the
-- same spend that qualifies for tiers, credit notes and corrections
-- included), within the agreement's validity, month by month.  A negative
-- volume earns no rebate.  Amounts are rounded to cents (half away from
-- zero) in the program's currency.

CREATE TABLE @extschema@.rebate_agreement (
    program_id        integer NOT NULL REFERENCES @extschema@.program,
    agreement_id      text NOT NULL CHECK (agreement_id OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.]{1,40}$'),
    account_key       text,
    cooperation_model text,
    region            text,
    industry          text,
    schedule          @extschema@.rebate_schedule NOT NULL,
    product_lines     text[],
    period            text NOT NULL CHECK (period IN ('month', 'quarter', 'year')),
    valid_from        date NOT NULL,
    valid_until       date,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    ended_at          timestamptz,
    PRIMARY KEY (program_id, agreement_id),
    CHECK (account_key IS NULL OR (cooperation_model IS NULL AND region IS NULL AND industry IS NULL)),
    CHECK (valid_until OPERATOR(pg_catalog.>) valid_from)
);
COMMENT ON TABLE @extschema@.rebate_agreement IS 'Volume rebate agreements: a rebate schedule over the qualifying spend of each period, for one account or every account of a segment. Created and ended with loyalty.create_rebate_agreement and loyalty.end_rebate_agreement.';
COMMENT ON COLUMN @extschema@.rebate_agreement.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rebate_agreement.agreement_id IS 'The agreement''s code (letters, digits, _ and .; it is part of the settlement lines'' document keys).';
COMMENT ON COLUMN @extschema@.rebate_agreement.account_key IS 'The one account it covers; NULL: every account of the segment.';
COMMENT ON COLUMN @extschema@.rebate_agreement.cooperation_model IS 'Segment: accounts with this cooperation model (NULL: any).';
COMMENT ON COLUMN @extschema@.rebate_agreement.region IS 'Segment: accounts of this region (NULL: any).';
COMMENT ON COLUMN @extschema@.rebate_agreement.industry IS 'Segment: accounts of this industry (NULL: any).';
COMMENT ON COLUMN @extschema@.rebate_agreement.schedule IS 'The rebate brackets (retro or marginal) applied to each period''s volume.';
COMMENT ON COLUMN @extschema@.rebate_agreement.product_lines IS 'Product lines whose spend counts (from loyalty.rebate_line_volume); NULL: all spend.';
COMMENT ON COLUMN @extschema@.rebate_agreement.period IS 'Rebate period: month, quarter or year (calendar periods).';
COMMENT ON COLUMN @extschema@.rebate_agreement.valid_from IS 'First day it applies to: documents of earlier months do not count.';
COMMENT ON COLUMN @extschema@.rebate_agreement.valid_until IS 'First day it no longer applies to (NULL: open-ended): documents of this month and later do not count.';
COMMENT ON COLUMN @extschema@.rebate_agreement.created_at IS 'When it was created.';
COMMENT ON COLUMN @extschema@.rebate_agreement.ended_at IS 'When loyalty.end_rebate_agreement ended it.';

-- Every rebate posted for an agreement, account and period: estimates,
-- true-ups and adjustments.  What is already accrued for a period is their
-- sum; each row names its ledger entry.
CREATE TABLE @extschema@.rebate_posting (
    program_id   integer NOT NULL,
    account_key  text NOT NULL,
    agreement_id text NOT NULL,
    period_end   date NOT NULL,
    posted_xid   xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no     bigint NOT NULL,
    period_start date NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('estimate', 'trueup', 'adjustment')),
    volume       numeric NOT NULL,
    amount       numeric NOT NULL,
    posted_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, agreement_id, period_end, posted_xid, entry_no),
    FOREIGN KEY (program_id, agreement_id) REFERENCES @extschema@.rebate_agreement
);
COMMENT ON TABLE @extschema@.rebate_posting IS 'Every rebate posted to the rebate wallet per agreement, account and period (estimate, true-up, adjustment), with its ledger entry (account, posted_xid, entry_no). What is accrued for a period is the sum of its amounts.';
COMMENT ON COLUMN @extschema@.rebate_posting.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rebate_posting.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.rebate_posting.agreement_id IS 'The agreement.';
COMMENT ON COLUMN @extschema@.rebate_posting.period_end IS 'Day after the period''s last day.';
COMMENT ON COLUMN @extschema@.rebate_posting.posted_xid IS 'Transaction of the ledger entry.';
COMMENT ON COLUMN @extschema@.rebate_posting.entry_no IS 'The ledger entry''s number within posted_xid.';
COMMENT ON COLUMN @extschema@.rebate_posting.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.rebate_posting.kind IS 'estimate (loyalty.accrue_rebates while the period runs), trueup (settlement) or adjustment (a later settlement, after late postings).';
COMMENT ON COLUMN @extschema@.rebate_posting.volume IS 'The period''s volume the amount was computed from.';
COMMENT ON COLUMN @extschema@.rebate_posting.amount IS 'Money posted to the rebate wallet (negative: taken back).';
COMMENT ON COLUMN @extschema@.rebate_posting.posted_at IS 'When.';

-- What the ERP reads to issue its credit notes: one line per agreement,
-- account and settled period, and one more per later change of the
-- period's volume.  The document key is stable (the same line has the same
-- key however often it is read) and unique, so the ERP posts each once.
CREATE TABLE @extschema@.settlement_line (
    program_id      integer NOT NULL,
    account_key     text NOT NULL,
    agreement_id    text NOT NULL,
    period_end      date NOT NULL,
    adjustment_no   integer NOT NULL CHECK (adjustment_no OPERATOR(pg_catalog.>=) 0),
    document_key    text NOT NULL,
    period_start    date NOT NULL,
    volume          numeric NOT NULL,
    final           numeric NOT NULL,
    accrued         numeric NOT NULL,
    amount          numeric NOT NULL,
    credit_note     numeric NOT NULL,
    currency        text NOT NULL,
    settled_through date NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    posted_xid      xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no        bigint,
    PRIMARY KEY (program_id, account_key, agreement_id, period_end, adjustment_no),
    -- unique with the account key first, as every unique index of an
    -- account-scoped table (distributable by account on Citus)
    CONSTRAINT settlement_line_document_key UNIQUE (program_id, account_key, document_key),
    FOREIGN KEY (program_id, agreement_id) REFERENCES @extschema@.rebate_agreement
);
COMMENT ON TABLE @extschema@.settlement_line IS 'Rebate settlement lines for the ERP: per agreement, account and settled period, the final rebate and what was trued up; later lines (adjustment_no > 0) when invoices or credit notes dated in a settled period arrive. Issue a credit note of credit_note per line, keyed by document_key.';
COMMENT ON COLUMN @extschema@.settlement_line.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.settlement_line.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.settlement_line.agreement_id IS 'The rebate agreement.';
COMMENT ON COLUMN @extschema@.settlement_line.period_end IS 'Day after the rebate period''s last day.';
COMMENT ON COLUMN @extschema@.settlement_line.adjustment_no IS '0 for the period''s settlement; 1, 2, ... for each later adjustment.';
COMMENT ON COLUMN @extschema@.settlement_line.document_key IS 'Stable unique key for the ERP''s credit note: LOY-<program_id>-<agreement>-<account>-<period_end as YYYY-MM-DD>, with -ADJ-<n> for adjustments (a function of the primary key, and the primary key of it: agreement codes have no -).';
COMMENT ON COLUMN @extschema@.settlement_line.period_start IS 'First day of the rebate period.';
COMMENT ON COLUMN @extschema@.settlement_line.volume IS 'The period''s qualifying spend when the line was written.';
COMMENT ON COLUMN @extschema@.settlement_line.final IS 'The period''s rebate on that volume.';
COMMENT ON COLUMN @extschema@.settlement_line.accrued IS 'What the rebate wallet held for the period before this line (estimates, earlier lines).';
COMMENT ON COLUMN @extschema@.settlement_line.amount IS 'What this line posted to the rebate wallet: final - accrued (negative: taken back).';
COMMENT ON COLUMN @extschema@.settlement_line.credit_note IS 'The credit note the ERP issues for this line: the final rebate for adjustment 0, the change of the final rebate for later lines (negative: a debit note).';
COMMENT ON COLUMN @extschema@.settlement_line.currency IS 'The program''s currency.';
COMMENT ON COLUMN @extschema@.settlement_line.settled_through IS 'The period_end of the settlement that wrote the line.';
COMMENT ON COLUMN @extschema@.settlement_line.created_at IS 'When it was written.';
COMMENT ON COLUMN @extschema@.settlement_line.posted_xid IS 'Transaction that wrote it (and its ledger entry).';
COMMENT ON COLUMN @extschema@.settlement_line.entry_no IS 'Its ledger entry''s number within posted_xid (NULL: nothing to post, final = accrued).';

-- The qualifying spend per product line of the programs with agreements
-- scoped to product lines, appended by the accrual trigger (rebate_lines.c)
-- as it reads the ERP rows with their writer's rights: settlement never
-- evaluates the attaching user's mapping.  One bucket per scoped line, and
-- one (product_line NULL) for the rest, so that an account's buckets of a
-- month add up to its accrual_month qualifying spend.
CREATE TABLE @extschema@.rebate_line_volume (
    program_id   integer NOT NULL,
    account_key  text NOT NULL,
    posted_xid   xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no     bigint NOT NULL,
    month        date NOT NULL,
    product_line text,
    qualifying   numeric NOT NULL,
    source_rows  bigint NOT NULL,
    PRIMARY KEY (program_id, account_key, posted_xid, entry_no)
);
COMMENT ON TABLE @extschema@.rebate_line_volume IS 'Qualifying spend per account, document month and product line, appended by the accrual trigger for the programs that have rebate agreements scoped to product lines (from the first such agreement''s creation on): the volumes of those agreements. Sum the rows of a key; removed and credited rows come as negative rows.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.posted_xid IS 'Transaction of the ERP statement.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.entry_no IS 'Number within posted_xid (the ledger''s numbering).';
COMMENT ON COLUMN @extschema@.rebate_line_volume.month IS 'Document month (first day).';
COMMENT ON COLUMN @extschema@.rebate_line_volume.product_line IS 'A product line some agreement of the program scopes; NULL: any other line, or none.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.qualifying IS 'Change of the qualifying spend.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.source_rows IS 'Change of the number of ERP rows counted.';

-- the trigger caches the set of scoped product lines with the program
CREATE TRIGGER rebate_agreement_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.rebate_agreement
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate('config');

SELECT pg_catalog.pg_extension_config_dump('@extschema@.rebate_line_volume', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rebate_agreement', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rebate_posting', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settlement_line', '');
GRANT SELECT ON @extschema@.rebate_agreement, @extschema@.rebate_posting, @extschema@.settlement_line
    TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT SELECT ON @extschema@.rebate_line_volume TO loyalty_reader, loyalty_operator, loyalty_admin;

-- The rebate pass over the given tables: loyalty's own on one server, or
-- on a Citus worker one shard group (settle_shards.c), with this node's
-- placements of the reference tables.  Settling (estimate false): every
-- agreement period that ends by to_end gets its settlement line when it has
-- none yet (final on the volume now; the true-up final - accrued posted),
-- and an adjustment line when its final rebate on the volume now differs
-- from its last line's.  Estimating (estimate true): every open period
-- (started by to_end, not settled) gets the rebate on its volume so far
-- minus what is already posted for it.  A period with no volume and
-- nothing posted needs nothing.  One statement, in the caller's snapshot
-- (taken after the caller's lock): one grouped pass over the volumes
-- (loyalty.accrual_month's query over folded and delta, and the
-- product-line buckets), the postings and the lines, no join between them
-- (each row of every source is a fact of its period); then each posting
-- with the exact shape of _post's (one ledger entry and one balance delta,
-- numbered in the transaction in key order), its rebate_posting row and,
-- when settling, its settlement line.  A segment's accounts are its
-- members now; an account that left the segment keeps the periods it
-- already has postings or lines for.  Returns the money posted.
CREATE FUNCTION @extschema@._rebates_in(program_id integer, to_end date, estimate boolean,
                                        agreement_table regclass, program_table regclass, account_table regclass,
                                        posting_table regclass, line_table regclass, folded regclass, delta regclass,
                                        line_volume_table regclass, ledger regclass)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total numeric;
BEGIN
    EXECUTE pg_catalog.format($q$
WITH ag AS (
    SELECT g.agreement_id, g.account_key, g.cooperation_model, g.region, g.industry, g.schedule, g.period,
           g.product_lines, pg_catalog.date_trunc('month', g.valid_from)::date AS first_month, g.valid_until,
           CASE g.period WHEN 'month' THEN interval '1 month' WHEN 'quarter' THEN interval '3 months'
                         ELSE interval '1 year' END AS step
    FROM %1$s g
    WHERE g.program_id OPERATOR(pg_catalog.=) $1),
known AS (
    SELECT r.agreement_id, r.account_key, r.period_start, r.amount AS accrued, NULL::numeric AS final, NULL::integer AS adj
    FROM %4$s r WHERE r.program_id OPERATOR(pg_catalog.=) $1
    UNION ALL
    SELECT s.agreement_id, s.account_key, s.period_start, 0, s.final, s.adjustment_no
    FROM %5$s s WHERE s.program_id OPERATOR(pg_catalog.=) $1),
pairs AS (
    SELECT u.agreement_id, u.account_key, pg_catalog.bool_or(u.member) AS member
    FROM (SELECT ag.agreement_id, a.account_key, true AS member
          FROM ag JOIN %3$s a
            ON a.program_id OPERATOR(pg_catalog.=) $1
           AND (ag.account_key IS NULL OR a.account_key OPERATOR(pg_catalog.=) ag.account_key)
           AND (ag.cooperation_model IS NULL OR a.cooperation_model OPERATOR(pg_catalog.=) ag.cooperation_model)
           AND (ag.region IS NULL OR a.region OPERATOR(pg_catalog.=) ag.region)
           AND (ag.industry IS NULL OR a.industry OPERATOR(pg_catalog.=) ag.industry)
          UNION ALL
          SELECT k.agreement_id, k.account_key, false FROM known k) u
    GROUP BY 1, 2),
-- loyalty.accrual_month's rows (per attachment), over folded and delta
months AS (
    SELECT u.account_key, u.month, pg_catalog.sum(u.qualifying) AS qualifying
    FROM (SELECT b.account_key, x.attachment_id, x.month, x.points, x.qualifying, x.source_rows
          FROM %6$s b,
               ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment), pg_catalog.unnest(b.m_points),
                          pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))
                   AS x(month, attachment_id, points, qualifying, source_rows)
          WHERE b.program_id OPERATOR(pg_catalog.=) $1
          UNION ALL
          SELECT d.account_key, x.attachment_id, x.month, x.points, x.qualifying, x.source_rows
          FROM %7$s d,
               ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_attachment), pg_catalog.unnest(d.m_points),
                          pg_catalog.unnest(d.m_qualifying), pg_catalog.unnest(d.m_source_rows))
                   AS x(month, attachment_id, points, qualifying, source_rows)
          WHERE d.program_id OPERATOR(pg_catalog.=) $1) u
    GROUP BY u.account_key, u.attachment_id, u.month
    HAVING pg_catalog.sum(u.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(u.qualifying) OPERATOR(pg_catalog.<>) 0
        OR pg_catalog.sum(u.source_rows) OPERATOR(pg_catalog.<>) 0),
-- the spend of every product line for unscoped agreements, the scoped
-- lines' buckets (rebate_line_volume) for the others
volumes AS (
    SELECT m.account_key, m.month, m.qualifying, NULL::text AS product_line FROM months m
    UNION ALL
    SELECT v.account_key, v.month, v.qualifying, v.product_line
    FROM %8$s v
    WHERE v.program_id OPERATOR(pg_catalog.=) $1 AND v.product_line IS NOT NULL),
facts AS (
    SELECT ag.agreement_id, x.account_key, pg_catalog.date_trunc(ag.period, x.month)::date AS period_start,
           x.qualifying AS volume, 0 AS accrued, NULL::numeric AS final, NULL::integer AS adj, p.member, false AS known
    FROM volumes x
    JOIN pairs p ON p.account_key OPERATOR(pg_catalog.=) x.account_key
    JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) p.agreement_id
    WHERE x.month OPERATOR(pg_catalog.>=) ag.first_month
      AND CASE WHEN ag.product_lines IS NULL THEN x.product_line IS NULL
               ELSE x.product_line OPERATOR(pg_catalog.=) ANY (ag.product_lines) END
      AND (ag.valid_until IS NULL OR x.month OPERATOR(pg_catalog.<) ag.valid_until)
      -- an estimate counts the months up to to_end's (the volume so far)
      AND (NOT $3 OR x.month OPERATOR(pg_catalog.<=) $2)
    UNION ALL
    SELECT k.agreement_id, k.account_key, k.period_start, 0, k.accrued, k.final, k.adj, false, true FROM known k),
-- per agreement, account and period that has a volume, a posting or a
-- line (and starts by to_end when estimating, else ends by it)
periods AS (
    SELECT t.agreement_id, t.account_key, t.period_start, t.period_end, t.volume,
           pg_catalog.round(@extschema@.rebate(ag.schedule, GREATEST(t.volume, 0)), 2) AS final,
           t.accrued, t.last_final, t.adjustments
    FROM (SELECT f.agreement_id, f.account_key, f.period_start, (f.period_start OPERATOR(pg_catalog.+) ag.step)::date AS period_end,
                 pg_catalog.sum(f.volume) AS volume, pg_catalog.sum(f.accrued) AS accrued,
                 (pg_catalog.array_agg(f.final ORDER BY f.adj DESC) FILTER (WHERE f.adj IS NOT NULL))[1] AS last_final,
                 pg_catalog.max(f.adj) AS adjustments
          FROM facts f JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) f.agreement_id
          WHERE CASE WHEN $3 THEN f.period_start OPERATOR(pg_catalog.<=) $2
                     ELSE (f.period_start OPERATOR(pg_catalog.+) ag.step)::date OPERATOR(pg_catalog.<=) $2 END
          GROUP BY f.agreement_id, f.account_key, f.period_start, ag.step
          -- a member's periods with a volume, and every period already posted or settled
          HAVING pg_catalog.bool_or(f.member) OR pg_catalog.bool_or(f.known)) t
    JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) t.agreement_id),
-- what to post: the open periods' estimates; the settled periods' first
-- lines and the changed finals' adjustment lines
due AS (
    SELECT p.*, p.final OPERATOR(pg_catalog.-) p.accrued AS amount,
           coalesce(p.adjustments OPERATOR(pg_catalog.+) 1, 0) AS adjustment_no
    FROM periods p
    WHERE CASE WHEN $3 THEN p.adjustments IS NULL AND p.final OPERATOR(pg_catalog.<>) p.accrued
               WHEN p.adjustments IS NULL THEN p.final OPERATOR(pg_catalog.<>) 0 OR p.accrued OPERATOR(pg_catalog.<>) 0
               ELSE p.final OPERATOR(pg_catalog.<>) p.last_final END),
-- the document key is stable: the date in ISO form whatever the DateStyle
keyed AS (
    SELECT d.*, pg_catalog.format('LOY-%%s-%%s-%%s-%%s', $1, d.agreement_id, d.account_key, pg_catalog.to_char(d.period_end, 'YYYY-MM-DD'))
                OPERATOR(pg_catalog.||) CASE WHEN d.adjustment_no OPERATOR(pg_catalog.>) 0
                                             THEN '-ADJ-' OPERATOR(pg_catalog.||) d.adjustment_no ELSE '' END AS document_key
    FROM due d),
-- numbered in key order (a volatile target is computed after the sort)
numbered AS (
    SELECT k.*, CASE WHEN k.amount OPERATOR(pg_catalog.<>) 0 THEN @extschema@._ledger_number() END AS entry_no
    FROM keyed k
    ORDER BY k.account_key, k.agreement_id, k.period_end),
entries AS (
    INSERT INTO %9$s AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                           member_id, corrects, corrects_xid, reason)
    SELECT $1, n.account_key, n.entry_no, 'rebate', 0, n.amount, 0, NULL, NULL, NULL,
           CASE WHEN $3 THEN pg_catalog.format('rebate estimate %%s %%s %%s..%%s', n.agreement_id, n.account_key,
                                               pg_catalog.to_char(n.period_start, 'YYYY-MM-DD'), pg_catalog.to_char(n.period_end, 'YYYY-MM-DD'))
                WHEN n.adjustment_no OPERATOR(pg_catalog.>) 0 THEN 'rebate adjustment ' OPERATOR(pg_catalog.||) n.document_key
                ELSE 'rebate true-up ' OPERATOR(pg_catalog.||) n.document_key END
    FROM numbered n WHERE n.entry_no IS NOT NULL
    RETURNING l.entry_no),
deltas AS (
    INSERT INTO %7$s AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    SELECT $1, n.account_key, n.entry_no, 0, n.amount, 0, 1 FROM numbered n WHERE n.entry_no IS NOT NULL
    RETURNING b.delta_no),
postings AS (
    INSERT INTO %4$s AS r (program_id, account_key, agreement_id, period_end, entry_no, period_start, kind, volume, amount)
    SELECT $1, n.account_key, n.agreement_id, n.period_end, n.entry_no, n.period_start,
           CASE WHEN $3 THEN 'estimate' WHEN n.adjustment_no OPERATOR(pg_catalog.>) 0 THEN 'adjustment' ELSE 'trueup' END,
           n.volume, n.amount
    FROM numbered n WHERE n.entry_no IS NOT NULL
    RETURNING r.entry_no),
written AS (
    INSERT INTO %5$s AS x (program_id, account_key, agreement_id, period_end, adjustment_no, document_key, period_start,
                           volume, final, accrued, amount, credit_note, currency, settled_through, entry_no)
    SELECT $1, n.account_key, n.agreement_id, n.period_end, n.adjustment_no, n.document_key, n.period_start,
           n.volume, n.final, n.accrued, n.amount, n.final OPERATOR(pg_catalog.-) coalesce(n.last_final, 0),
           (SELECT p.currency FROM %2$s p WHERE p.program_id OPERATOR(pg_catalog.=) $1), $2, n.entry_no
    FROM numbered n WHERE NOT $3
    RETURNING x.entry_no)
SELECT coalesce(pg_catalog.sum(n.amount), 0) FROM numbered n$q$,
        agreement_table, program_table, account_table, posting_table, line_table, folded, delta, line_volume_table, ledger)
    INTO total USING program_id, to_end, estimate;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._rebates_in(integer, date, boolean, regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass) IS
    'Internal: the rebate pass over the given tables (loyalty''s, or one shard group on a Citus worker): settling, the settlement line (and true-up) of every agreement period ending by to_end that has none and an adjustment line for every settled period whose final rebate changed; estimating, the estimate of every open period started by to_end. Returns the money posted.';

-- The rebate pass of a program, on one server or on every shard group of
-- a Citus cluster (each on its node: _settle_shards).  The caller holds
-- the program's rebate lock.
CREATE FUNCTION @extschema@._rebates(program_id integer, to_end date, estimate boolean) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._distributed() THEN
        RETURN @extschema@._settle_shards(CASE WHEN estimate THEN 'rebate_estimates' ELSE 'rebates' END, $1, NULL, $2);
    END IF;
    RETURN @extschema@._rebates_in($1, $2, $3, '@extschema@.rebate_agreement', '@extschema@.program', '@extschema@.account',
                                   '@extschema@.rebate_posting', '@extschema@.settlement_line', '@extschema@.balance_folded',
                                   '@extschema@.balance_delta', '@extschema@.rebate_line_volume', '@extschema@.ledger');
END
$$;
COMMENT ON FUNCTION @extschema@._rebates(integer, date, boolean) IS
    'Internal: the rebate pass of a program (_rebates_in) over loyalty''s tables, or on Citus over every shard group on its node; returns the money posted.';

-- Settlement's rebates at period_end (exclusive): lines and true-ups of
-- every period ending by then (_rebates_in).  Serialised with
-- accrue_rebates per program.  Idempotent: a second call finds every
-- period settled and every final unchanged.  (period_start is not needed:
-- every period ending by period_end is settled, earlier ones included.)
CREATE FUNCTION @extschema@._settle_rebates(program_id integer, period_start date, period_end date) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), $1);
    -- no agreement, no rebate
    IF NOT EXISTS (SELECT FROM @extschema@.rebate_agreement g WHERE g.program_id OPERATOR(pg_catalog.=) $1) THEN
        RETURN 0;
    END IF;
    -- a new statement, a new snapshot: after the lock
    RETURN @extschema@._rebates($1, $3, false);
END
$$;
COMMENT ON FUNCTION @extschema@._settle_rebates(integer, date, date) IS
    'Internal: settlement''s rebates at period_end (exclusive): the settlement line and true-up (final - accrued) of every agreement period ending by then that has none, and an adjustment line for every settled period whose volume changed since; returns the money posted (the sum of the lines'' amounts).';

-- The estimate while periods run: per agreement, covered account and open
-- period (started by as_of, not settled), the rebate on the volume so far
-- minus what is already posted for the period.
CREATE FUNCTION @extschema@.accrue_rebates(program text, as_of date DEFAULT NULL) RETURNS numeric
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    day date;
BEGIN
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
                  DETAIL = 'as_of is the day the estimate is made for: the periods open on it are estimated.',
                  HINT = 'Leave it out for today in the program''s time zone.';
    END IF;
    day := coalesce(as_of, (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
                            FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) pid));
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), pid);
    IF NOT EXISTS (SELECT FROM @extschema@.rebate_agreement g WHERE g.program_id OPERATOR(pg_catalog.=) pid) THEN
        RETURN 0;
    END IF;
    RETURN @extschema@._rebates(pid, day, true);
END
$$;
COMMENT ON FUNCTION @extschema@.accrue_rebates(text, date) IS
    'Posts the rebate estimate of every open rebate period (started by as_of, default today in the program''s time zone, and not settled yet): per agreement and covered account, the rebate on the period''s volume so far (documents of the months up to as_of''s) minus what is already posted for it (kind rebate, reason naming agreement and period). Returns the money posted. Idempotent: a second call posts nothing until volumes change. Schedule it with pg_cron, like loyalty.fold().';
GRANT EXECUTE ON FUNCTION @extschema@.accrue_rebates(text, date) TO loyalty_operator, loyalty_admin;

-- verify()'s check of the product-line buckets: from the first month a
-- scoped agreement counts on, an account's buckets of a month add up to its
-- accrual_month qualifying spend and rows (both written by the same trigger
-- statement; a restatement by enroll() or backfill() that reaches those
-- months is not split by product line, and shows here).
CREATE FUNCTION @extschema@._verify_rebate_lines(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
WITH since AS (
    SELECT pg_catalog.min(pg_catalog.date_trunc('month', g.valid_from))::date AS month
    FROM @extschema@.rebate_agreement g
    WHERE g.program_id OPERATOR(pg_catalog.=) $1 AND g.product_lines IS NOT NULL),
accrued AS (
    SELECT m.account_key, m.month, pg_catalog.sum(m.qualifying) AS qualifying, pg_catalog.sum(m.source_rows) AS n
    FROM @extschema@.accrual_month m, since
    WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND m.month OPERATOR(pg_catalog.>=) since.month
      AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
    GROUP BY 1, 2),
split AS (
    SELECT v.account_key, v.month, pg_catalog.sum(v.qualifying) AS qualifying, pg_catalog.sum(v.source_rows) AS n
    FROM @extschema@.rebate_line_volume v
    WHERE v.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
    GROUP BY 1, 2)
SELECT coalesce(a.account_key, s.account_key)::text, coalesce(a.month, s.month), NULL::integer, v.item, v.e, v.a
FROM accrued a
     FULL JOIN (SELECT s.* FROM split s, since WHERE s.month OPERATOR(pg_catalog.>=) since.month) s
       ON s.account_key OPERATOR(pg_catalog.=) a.account_key::@extschema@.account_key AND s.month OPERATOR(pg_catalog.=) a.month,
     LATERAL (VALUES ('rebate_line_qualifying', coalesce(a.qualifying, 0), coalesce(s.qualifying, 0)),
                     ('rebate_line_rows', coalesce(a.n, 0)::numeric, coalesce(s.n, 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a;
END
$$;
COMMENT ON FUNCTION @extschema@._verify_rebate_lines(integer, text) IS
    'Internal: verify''s check of loyalty.rebate_line_volume: from the first month an agreement scoped to product lines counts on, the product-line buckets of each account and month add up to its accrual_month qualifying spend and source rows.';
REVOKE ALL ON FUNCTION @extschema@._verify_rebate_lines(integer, text) FROM PUBLIC;

-- Agreements are configured by admins.  Every argument is checked here,
-- before anything is written, and each error names its parameter.
CREATE FUNCTION @extschema@.create_rebate_agreement(
    program           text,
    agreement_id      text,
    schedule          @extschema@.rebate_schedule,
    account_key       text DEFAULT NULL,
    cooperation_model text DEFAULT NULL,
    region            text DEFAULT NULL,
    industry          text DEFAULT NULL,
    product_lines     text[] DEFAULT NULL,
    period            text DEFAULT NULL,
    valid_from        date DEFAULT NULL,
    valid_until       date DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    prog @extschema@.program;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO prog FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF prog.program_id IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    pid := prog.program_id;
    IF agreement_id IS NULL OR NOT agreement_id OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.]{1,40}$' THEN
        RAISE EXCEPTION 'invalid agreement_id: %', coalesce(pg_catalog.quote_literal(agreement_id), 'NULL')
            USING ERRCODE = CASE WHEN agreement_id IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'agreement_id is the agreement''s code: 1 to 40 letters, digits, _ or . (it is part of the document keys of its settlement lines).',
                  HINT = 'For example agreement_id => ''DIST2026''.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.rebate_agreement g
               WHERE g.program_id OPERATOR(pg_catalog.=) pid AND g.agreement_id OPERATOR(pg_catalog.=) create_rebate_agreement.agreement_id) THEN
        RAISE EXCEPTION 'agreement_id "%" is already used in program "%"', agreement_id, program
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Agreement codes are unique within a program, and never reused: settlement lines carry them.',
                  HINT = 'Choose another agreement_id, or end the existing one with loyalty.end_rebate_agreement().';
    END IF;
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'schedule must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'schedule is the rebate brackets applied to each period''s volume.',
                  HINT = 'For example schedule => ''retro: 0:0%, 100000:2%, 500000:3.5%''.';
    END IF;
    IF account_key IS NOT NULL AND (cooperation_model IS NOT NULL OR region IS NOT NULL OR industry IS NOT NULL) THEN
        RAISE EXCEPTION 'account_key and a segment cannot be given together'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An agreement covers one account (account_key) or every account of a segment (cooperation_model, region, industry).',
                  HINT = 'Give account_key alone, or the segment attributes alone.';
    END IF;
    IF account_key IS NOT NULL AND NOT EXISTS (
            SELECT FROM @extschema@.account a
            WHERE a.program_id OPERATOR(pg_catalog.=) pid AND a.account_key OPERATOR(pg_catalog.=) create_rebate_agreement.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'account_key must name an account of the program.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF cooperation_model IS NOT NULL AND NOT cooperation_model OPERATOR(pg_catalog.=) ANY (ARRAY['direct', 'distributor', 'integrator', 'reseller']) THEN
        RAISE EXCEPTION 'invalid value for cooperation_model: %', pg_catalog.quote_literal(cooperation_model)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cooperation_model must be one of direct, distributor, integrator, reseller.',
                  HINT = 'For example cooperation_model => ''distributor''; leave it out to match any.';
    END IF;
    IF region OPERATOR(pg_catalog.=) '' OR industry OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION '% must not be empty', CASE WHEN region OPERATOR(pg_catalog.=) '' THEN 'region' ELSE 'industry' END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An empty segment attribute matches no account.',
                  HINT = 'Leave it out to match any value.';
    END IF;
    IF period IS NOT NULL AND NOT period OPERATOR(pg_catalog.=) ANY (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'invalid value for period: %', pg_catalog.quote_literal(period)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period must be one of month, quarter, year (calendar periods).',
                  HINT = 'For example period => ''quarter''; leave it out for the program''s settlement period.';
    END IF;
    IF valid_from IN ('infinity', '-infinity') OR valid_until IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION '% must be a finite date', CASE WHEN valid_from IN ('infinity', '-infinity') THEN 'valid_from' ELSE 'valid_until' END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first day the agreement applies to, valid_until the first day it no longer does.',
                  HINT = 'Leave valid_from out for today, valid_until for an open-ended agreement.';
    END IF;
    valid_from := coalesce(valid_from, (pg_catalog.now() AT TIME ZONE prog.time_zone)::date);
    IF valid_until IS NOT NULL AND valid_until OPERATOR(pg_catalog.<=) valid_from THEN
        RAISE EXCEPTION 'valid_until (%) must be after valid_from (%)', valid_until, valid_from
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_until is the first day the agreement no longer applies to.',
                  HINT = 'Give a later valid_until, or leave it out for an open-ended agreement.';
    END IF;
    IF product_lines IS NOT NULL THEN
        product_lines := ARRAY(SELECT DISTINCT l FROM pg_catalog.unnest(product_lines) l ORDER BY 1);
        IF pg_catalog.cardinality(product_lines) OPERATOR(pg_catalog.=) 0
           OR EXISTS (SELECT FROM pg_catalog.unnest(product_lines) l WHERE l IS NULL OR l OPERATOR(pg_catalog.=) '') THEN
            RAISE EXCEPTION 'product_lines must list product lines, none NULL or empty'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'product_lines are the product lines (as the attachments map them) whose qualifying spend counts.',
                      HINT = 'For example product_lines => ''{networking,storage}''; leave it out to count all spend.';
        END IF;
        IF NOT EXISTS (SELECT FROM @extschema@.attachment x
                       WHERE x.program_id OPERATOR(pg_catalog.=) pid AND x.detached_at IS NULL
                         AND (x.product IS NOT NULL OR x.product_line_expr IS NOT NULL)) THEN
            RAISE EXCEPTION 'product_lines cannot be given: program "%" maps no product line', program
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'A product-line scope needs an attachment that maps each row''s product line.',
                      HINT = 'Attach the ERP table with product_line_column (or product => ...), or leave product_lines out.';
        END IF;
        -- The trigger splits the spend by these lines from now on: the
        -- documents the agreement counts must all be accrued after it.
        -- (Serialised with other agreements of the program.)
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), pid);
        IF EXISTS (SELECT FROM @extschema@.accrual_month m
                   WHERE m.program_id OPERATOR(pg_catalog.=) pid
                     AND m.month OPERATOR(pg_catalog.>=) pg_catalog.date_trunc('month', valid_from)::date) THEN
            RAISE EXCEPTION 'valid_from % is too early for product_lines: program "%" has documents dated in % or later',
                            valid_from, program, pg_catalog.to_char(valid_from, 'YYYY-MM')
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The spend of a product line is recorded as documents are accrued, from the first agreement scoping it on; documents accrued before cannot be split by product line.',
                      HINT = 'Give a valid_from whose month has no accrued documents yet (usually the first day of the next month).';
        END IF;
    END IF;
    INSERT INTO @extschema@.rebate_agreement (program_id, agreement_id, account_key, cooperation_model, region, industry,
                                              schedule, product_lines, period, valid_from, valid_until)
    VALUES (pid, agreement_id, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, cooperation_model, region, industry,
            schedule, product_lines, coalesce(period, prog.settlement_period), valid_from, valid_until);
END
$$;
COMMENT ON FUNCTION @extschema@.create_rebate_agreement(text, text, @extschema@.rebate_schedule, text, text, text, text, text[], text, date, date) IS
    'Creates a volume rebate agreement: a rebate schedule over each period''s qualifying spend, of every product line or of product_lines only (valid_from must then be in a month with no accrued documents yet) (period: month, quarter or year; default the program''s settlement period), for one account (account_key) or every account of a segment (cooperation_model, region, industry; none: every account), valid from valid_from (default today) until valid_until (exclusive; default open-ended). Estimates are posted by loyalty.accrue_rebates, true-ups at settlement.';

CREATE FUNCTION @extschema@.end_rebate_agreement(program text, agreement_id text, valid_until date DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    g @extschema@.rebate_agreement;
    settled date;
BEGIN
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
    IF agreement_id IS NULL THEN
        RAISE EXCEPTION 'agreement_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'agreement_id is the code the agreement was created with.',
                  HINT = 'List them with SELECT agreement_id FROM loyalty.rebate_agreement.';
    END IF;
    SELECT * INTO g FROM @extschema@.rebate_agreement x
    WHERE x.program_id OPERATOR(pg_catalog.=) pid AND x.agreement_id OPERATOR(pg_catalog.=) end_rebate_agreement.agreement_id
    FOR UPDATE;
    IF g.agreement_id IS NULL THEN
        RAISE EXCEPTION 'rebate agreement "%" of program "%" does not exist', agreement_id, program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'agreement_id names no agreement of the program (codes are case-sensitive).',
                  HINT = 'List them with SELECT agreement_id FROM loyalty.rebate_agreement.';
    END IF;
    IF valid_until IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'valid_until must be a finite date'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_until is the first day the agreement no longer applies to.',
                  HINT = 'Leave it out to end the agreement with the current period.';
    END IF;
    -- by default the agreement ends with its current period
    valid_until := coalesce(valid_until,
                            (SELECT (pg_catalog.date_trunc(g.period, (pg_catalog.now() AT TIME ZONE p.time_zone)::date::timestamp)
                                     OPERATOR(pg_catalog.+) CASE g.period WHEN 'month' THEN interval '1 month'
                                                                          WHEN 'quarter' THEN interval '3 months'
                                                                          ELSE interval '1 year' END)::date
                             FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) pid));
    IF g.valid_until IS NOT NULL AND g.valid_until OPERATOR(pg_catalog.<=) valid_until THEN
        RAISE EXCEPTION 'rebate agreement "%" already ends on %', agreement_id, g.valid_until
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'An agreement can be ended earlier, not extended.',
                  HINT = 'Create a new agreement for the time after it.';
    END IF;
    IF valid_until OPERATOR(pg_catalog.<=) g.valid_from THEN
        RAISE EXCEPTION 'valid_until (%) must be after the agreement''s valid_from (%)', valid_until, g.valid_from
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_until is the first day the agreement no longer applies to.',
                  HINT = 'Give a later date.';
    END IF;
    SELECT pg_catalog.max(s.period_end) INTO settled FROM @extschema@.settlement_line s
    WHERE s.program_id OPERATOR(pg_catalog.=) pid AND s.agreement_id OPERATOR(pg_catalog.=) g.agreement_id;
    IF settled IS NOT NULL AND valid_until OPERATOR(pg_catalog.<) settled THEN
        RAISE EXCEPTION 'rebate agreement "%" is settled up to %', agreement_id, settled
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('valid_until %s would change periods already settled.', valid_until),
                  HINT = pg_catalog.format('Give valid_until => ''%s'' or later.', settled);
    END IF;
    UPDATE @extschema@.rebate_agreement x SET valid_until = end_rebate_agreement.valid_until, ended_at = pg_catalog.now()
    WHERE x.program_id OPERATOR(pg_catalog.=) pid AND x.agreement_id OPERATOR(pg_catalog.=) g.agreement_id;
END
$$;
COMMENT ON FUNCTION @extschema@.end_rebate_agreement(text, text, date) IS
    'Ends a rebate agreement: documents dated from valid_until on (default: the end of its current period) no longer count. An agreement can be ended earlier, never extended, and not before a period it was settled for.';

REVOKE ALL ON FUNCTION @extschema@.create_rebate_agreement(text, text, @extschema@.rebate_schedule, text, text, text, text, text[], text, date, date),
                      @extschema@.end_rebate_agreement(text, text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.create_rebate_agreement(text, text, @extschema@.rebate_schedule, text, text, text, text, text[], text, date, date),
                          @extschema@.end_rebate_agreement(text, text, date) TO loyalty_admin;
