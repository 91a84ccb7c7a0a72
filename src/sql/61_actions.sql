
-- Non-purchase actions: training completed, certification, referral that
-- signs, lead registered or won, survey answered, product review, startup
-- onboarded.  Versioned rules per program and action (points per action,
-- cap per period, approval needed or not), awards keyed by the account and
-- its own counter, idempotent by the CRM's reference.  Only approved awards
-- post points and count for tier qualification (_action_counts).

CREATE TABLE @extschema@.action_rule (
    program_id     integer NOT NULL REFERENCES @extschema@.program,
    action         text NOT NULL CHECK (action OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,62}$'),
    valid_from     date NOT NULL CHECK (valid_from OPERATOR(pg_catalog.<>) 'infinity'::date),
    points         bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>=) 0 AND points OPERATOR(pg_catalog.<=) 1000000000),
    needs_approval boolean NOT NULL DEFAULT false,
    cap_points     bigint CHECK (cap_points OPERATOR(pg_catalog.>) 0),
    cap_period     text CHECK (cap_period IN ('month', 'quarter', 'year')),
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    category       text NOT NULL DEFAULT 'other'
                   CHECK (category IN ('training', 'certification', 'referral', 'review', 'survey', 'lead', 'onboarding', 'other')),
    PRIMARY KEY (program_id, action, valid_from),
    CONSTRAINT action_rule_cap_pair_check CHECK ((cap_points IS NULL) = (cap_period IS NULL))
);
COMMENT ON TABLE @extschema@.action_rule IS 'Versioned rules for non-purchase actions (loyalty.set_action_rule): an action earns by the version in force on the day it occurred.';
COMMENT ON COLUMN @extschema@.action_rule.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.action_rule.action IS 'The action''s code, e.g. training_completed, certification, referral_signed, lead_registered, lead_won, survey_answered, product_review, startup_onboarded.';
COMMENT ON COLUMN @extschema@.action_rule.valid_from IS 'First day of occurrence this version applies to (-infinity for the first version).';
COMMENT ON COLUMN @extschema@.action_rule.points IS 'Points per action (per unit of quantity).';
COMMENT ON COLUMN @extschema@.action_rule.needs_approval IS 'When true, an award waits as pending until an operator approves it (loyalty.approve_award) and posts nothing before.';
COMMENT ON COLUMN @extschema@.action_rule.cap_points IS 'Most points one account earns from this action per cap period (pending awards count, rejected ones do not); NULL = no cap.';
COMMENT ON COLUMN @extschema@.action_rule.cap_period IS 'Calendar period of the cap, by the day the action occurred: month, quarter or year.';
COMMENT ON COLUMN @extschema@.action_rule.created_at IS 'When the version was written.';
COMMENT ON COLUMN @extschema@.action_rule.category IS 'What kind of action it is, for the KPIs (loyalty.kpi): training or certification (training completion), referral, review, survey or lead (advocacy), onboarding, or other. A property of the action: every version of an action has the same.';

CREATE TABLE @extschema@.award (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    award_no      bigint NOT NULL,
    award_id      uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    action        text NOT NULL,
    member_id     text,
    occurred_on   date NOT NULL,
    quantity      integer NOT NULL CHECK (quantity OPERATOR(pg_catalog.>) 0),
    rule_from     date NOT NULL,
    points        bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>=) 0),
    capped        bigint NOT NULL DEFAULT 0 CHECK (capped OPERATOR(pg_catalog.>=) 0),
    reference     text,
    status        text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    awarded_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_at    timestamptz,
    decided_by    text,
    note          text,
    posted_xid    xid8,
    entry_no      bigint,
    PRIMARY KEY (program_id, account_key, award_no),
    CONSTRAINT award_reference_key UNIQUE (program_id, account_key, reference),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member,
    CONSTRAINT award_decision_check CHECK ((status OPERATOR(pg_catalog.=) 'pending') = (decided_at IS NULL)),
    CONSTRAINT award_entry_check CHECK ((posted_xid IS NULL) = (entry_no IS NULL)
                                        AND (entry_no IS NULL OR status OPERATOR(pg_catalog.=) 'approved'))
);
CREATE INDEX award_id_idx ON @extschema@.award (award_id);
CREATE INDEX award_action_idx ON @extschema@.award (program_id, action, occurred_on) WHERE status = 'approved';
COMMENT ON TABLE @extschema@.award IS 'Points for non-purchase actions (loyalty.award), one row per CRM event: pending, approved or rejected. An approved award with points has its ledger entry of kind award (posted_xid, entry_no).';
COMMENT ON COLUMN @extschema@.award.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.award.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.award.award_no IS 'The account''s debit number (loyalty.account.debit_no) the award took: a per-account counter.';
COMMENT ON COLUMN @extschema@.award.award_id IS 'The award''s identifier, returned by loyalty.award() and taken by approve_award() and reject_award().';
COMMENT ON COLUMN @extschema@.award.action IS 'The action (loyalty.action_rule).';
COMMENT ON COLUMN @extschema@.award.member_id IS 'The member who did it (their own points); NULL = the account.';
COMMENT ON COLUMN @extschema@.award.occurred_on IS 'When the action took place: decides the rule version and the cap period.';
COMMENT ON COLUMN @extschema@.award.quantity IS 'How many actions the event counts (e.g. seats of a training).';
COMMENT ON COLUMN @extschema@.award.rule_from IS 'valid_from of the rule version it earned by.';
COMMENT ON COLUMN @extschema@.award.points IS 'Points it earns (posted once approved), after the cap.';
COMMENT ON COLUMN @extschema@.award.capped IS 'Points the cap withheld.';
COMMENT ON COLUMN @extschema@.award.reference IS 'The CRM''s identifier of the event: the same reference for the same account awards once.';
COMMENT ON COLUMN @extschema@.award.status IS 'pending (waits for approval), approved (counts) or rejected (never counts).';
COMMENT ON COLUMN @extschema@.award.awarded_at IS 'When it was recorded.';
COMMENT ON COLUMN @extschema@.award.decided_at IS 'When it was approved or rejected (at once for actions that need no approval).';
COMMENT ON COLUMN @extschema@.award.decided_by IS 'Session user who approved or rejected it.';
COMMENT ON COLUMN @extschema@.award.note IS 'Why it was approved or rejected.';
COMMENT ON COLUMN @extschema@.award.posted_xid IS 'Transaction of its ledger entry (NULL: nothing posted).';
COMMENT ON COLUMN @extschema@.award.entry_no IS 'Entry number (within posted_xid) of its ledger entry.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.action_rule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.award', '');

CREATE FUNCTION @extschema@.set_action_rule(
    program        text,
    action         text,
    points         bigint,
    needs_approval boolean DEFAULT false,
    cap_points     bigint DEFAULT NULL,
    cap_period     text DEFAULT NULL,
    valid_from     date DEFAULT NULL,
    category       text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    since date := valid_from;
    last_award date;
    kind text := category;
BEGIN
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
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF action IS NULL OR action !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'action must be a code of lower-case letters, digits and _ (1 to 63, starting with a letter)'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('action %s was given.', coalesce(pg_catalog.quote_literal(action), 'NULL')),
                  HINT = 'For example action => ''certification''.';
    END IF;
    IF points IS NULL OR points < 0 OR points > 1000000000 THEN
        RAISE EXCEPTION 'points of action "%" must be between 0 and 1000000000', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('points %s was given.', coalesce(points::text, 'NULL')),
                  HINT = 'Give the points one action earns.';
    END IF;
    IF needs_approval IS NULL THEN
        RAISE EXCEPTION 'needs_approval of action "%" must not be NULL', action
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'needs_approval says whether an operator must approve each award.',
                  HINT = 'Give true or false.';
    END IF;
    IF (cap_points IS NULL) <> (cap_period IS NULL) OR cap_points <= 0
       OR cap_period <> ALL (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'cap_points and cap_period of action "%" go together: a positive cap per month, quarter or year', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('cap_points %s, cap_period %s were given.', coalesce(cap_points::text, 'NULL'),
                                             coalesce(pg_catalog.quote_literal(cap_period), 'NULL')),
                  HINT = 'For example cap_points => 500, cap_period => ''quarter''; both NULL for no cap.';
    END IF;
    IF since = 'infinity' THEN
        RAISE EXCEPTION 'valid_from of action "%" must not be infinity', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first day of occurrence the version applies to.',
                  HINT = 'Give a date, or NULL: the first version then applies to every day, a later one from today.';
    END IF;
    IF kind <> ALL (ARRAY['training', 'certification', 'referral', 'review', 'survey', 'lead', 'onboarding', 'other']) THEN
        RAISE EXCEPTION 'category of action "%" must be training, certification, referral, review, survey, lead, onboarding or other', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('category %s was given.', pg_catalog.quote_literal(kind)),
                  HINT = 'For example category => ''training''; NULL keeps the action''s category (a new action''s follows its code).';
    END IF;
    -- The category belongs to the action: NULL keeps the one it has; a new
    -- action's follows its code (the codes loyalty.action_rule.action lists).
    IF kind IS NULL THEN
        SELECT r.category INTO kind FROM @extschema@.action_rule r
        WHERE r.program_id = pid AND r.action = action ORDER BY r.valid_from DESC LIMIT 1;
        kind := coalesce(kind, CASE WHEN action ~ '(^|_)(training|course|learning)' THEN 'training'
                                    WHEN action ~ '(^|_)certifi' THEN 'certification'
                                    WHEN action ~ '(^|_)referral' THEN 'referral'
                                    WHEN action ~ '(^|_)review' THEN 'review'
                                    WHEN action ~ '(^|_)survey' THEN 'survey'
                                    WHEN action ~ '(^|_)lead(_|$)' THEN 'lead'
                                    WHEN action ~ '(^|_)onboard' THEN 'onboarding'
                                    ELSE 'other' END);
    END IF;
    IF since IS NULL THEN
        since := CASE WHEN EXISTS (SELECT FROM @extschema@.action_rule r WHERE r.program_id = pid AND r.action = action)
                      THEN @extschema@._today(pid) ELSE '-infinity' END;
    END IF;
    -- What an award earned never changes: a version may start only after
    -- the last action already awarded.
    SELECT pg_catalog.max(w.occurred_on) INTO last_award FROM @extschema@.award w
    WHERE w.program_id = pid AND w.action = action;
    IF last_award >= since THEN
        RAISE EXCEPTION 'valid_from % of action "%" is not after the last action awarded (%)', since, action, last_award
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Awards already made keep the version they earned by.',
                  HINT = pg_catalog.format('Give valid_from => ''%s'' or later.', last_award + 1);
    END IF;
    INSERT INTO @extschema@.action_rule AS r (program_id, action, valid_from, points, needs_approval, cap_points, cap_period,
                                              category)
    VALUES (pid, action, since, points, needs_approval, cap_points, cap_period, kind)
    ON CONFLICT ON CONSTRAINT action_rule_pkey DO UPDATE
    SET points = excluded.points, needs_approval = excluded.needs_approval, cap_points = excluded.cap_points,
        cap_period = excluded.cap_period, created_at = excluded.created_at, category = excluded.category;
    -- every version of the action: the KPIs count its past awards by it too
    UPDATE @extschema@.action_rule r SET category = kind
    WHERE r.program_id = pid AND r.action = action AND r.category <> kind;
END
$$;
COMMENT ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date, text) IS
'Writes a version of a non-purchase action''s rule: points per action, approval needed or not, cap per period, and the action''s category for the KPIs (training, certification, referral, review, survey, lead, onboarding, other; it applies to every version of the action; NULL keeps it, and a new action''s follows its code, e.g. training_completed is training, lead_won lead). valid_from NULL: the first version applies to every day, a later one from today. A version can start only after the last action already awarded.';

CREATE FUNCTION @extschema@.award(
    program     text,
    account_key text,
    action      text,
    occurred_on date DEFAULT NULL,
    member      text DEFAULT NULL,
    reference   text DEFAULT NULL,
    quantity    integer DEFAULT 1)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    today date;
    day date;
    rule @extschema@.action_rule;
BEGIN
    PERFORM @extschema@._refuse_shard_query('loyalty.award()');
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id, (pg_catalog.now() AT TIME ZONE p.time_zone)::date INTO pid, today
    FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts earn points for actions.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m WHERE m.program_id = pid
                                          AND m.account_key = account_key::@extschema@.account_key AND m.member_id = member) THEN
        RAISE EXCEPTION 'member "%" is not a member of account "%"', member, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'A member earns for the account they belong to.',
                  HINT = 'Add the person to loyalty.member first, or award the account (member => NULL).';
    END IF;
    day := coalesce(occurred_on, today);
    IF NOT pg_catalog.isfinite(day) OR day > today THEN
        RAISE EXCEPTION 'occurred_on % is not a day that has happened', day
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Today is %s in the program''s calendar.', today),
                  HINT = 'Give the day the action took place, or NULL for today.';
    END IF;
    IF quantity IS NULL OR quantity <= 0 THEN
        RAISE EXCEPTION 'quantity must be a positive number of actions'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('quantity %s was given.', coalesce(quantity::text, 'NULL')),
                  HINT = 'Give 1 for one action.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the CRM''s identifier of the event.',
                  HINT = 'Give the event''s identifier, or NULL when there is none.';
    END IF;
    SELECT * INTO rule FROM @extschema@.action_rule r
    WHERE r.program_id = pid AND r.action = action AND r.valid_from <= day
    ORDER BY r.valid_from DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" has no rule in program "%" on %', action, program, day
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'action is an action of loyalty.action_rule in force on the day it occurred.',
                  HINT = 'Define it with loyalty.set_action_rule().';
    END IF;

    -- the reference, the cap and the posting: on the account's node
    RETURN @extschema@._on_account_node('award', pid, account_key,
               ARRAY[action, member, day::text, quantity::text, reference, rule.valid_from::text, rule.points::text,
                     rule.cap_points::text, rule.cap_period, rule.needs_approval::text])::uuid;
END
$$;
COMMENT ON FUNCTION @extschema@.award(text, text, text, date, text, text, integer) IS
'Awards points for a non-purchase action to an account (or one of its members) by the rule version in force on occurred_on (default today), capped per period; returns the award''s id. Idempotent by reference: the same CRM event again returns the first award and posts nothing. An action that needs approval waits as pending and posts nothing until loyalty.approve_award().';

-- award's account part (args: action, member, occurred_on, quantity,
-- reference, and the rule's valid_from, points, cap_points, cap_period,
-- needs_approval), on the account's node.  One award of the account at a
-- time: the cap and the reference are checked on everything committed
-- before.
CREATE FUNCTION @extschema@._award_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    action text := args[1];
    member text := args[2];
    day date := args[3]::date;
    quantity integer := args[4]::integer;
    reference text := args[5];
    rule_from date := args[6]::date;
    cap_points bigint := args[8]::bigint;
    cap_period text := args[9];
    awards text := @extschema@._table('award');
    prior record;
    no bigint;
    earned numeric := args[7]::numeric * quantity;
    granted bigint := LEAST(earned, 9223372036854775807);
    used bigint;
    period_start date;
    st text := CASE WHEN args[10]::boolean THEN 'pending' ELSE 'approved' END;
    entry bigint;
    id uuid;
BEGIN
    no := @extschema@._lock_for_debit(program_id, account_key);
    IF reference IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT w.award_id, w.action, w.member_id, w.occurred_on, w.quantity FROM %s w'
                                  ' WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                                  ' AND w.reference OPERATOR(pg_catalog.=) $3', awards)
        INTO prior USING program_id, account_key, reference;
        IF prior.award_id IS NOT NULL THEN
            IF (prior.action, prior.member_id, prior.occurred_on, prior.quantity)
               IS DISTINCT FROM (action, member, day, quantity) THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already awarded for another event', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It was awarded for %s x %s on %s%s.', prior.quantity, prior.action,
                                                     prior.occurred_on, coalesce(' by member ' || prior.member_id, '')),
                          HINT = 'A reference names one CRM event; give the new event its own reference.';
            END IF;
            RETURN prior.award_id;      -- the same event again: awarded once
        END IF;
    END IF;
    IF cap_points IS NOT NULL THEN
        period_start := pg_catalog.date_trunc(cap_period, day::timestamp)::date;
        EXECUTE pg_catalog.format('SELECT coalesce(pg_catalog.sum(w.points), 0) FROM %s w'
                                  ' WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                                  ' AND w.action OPERATOR(pg_catalog.=) $3 AND w.status OPERATOR(pg_catalog.<>) ''rejected'''
                                  ' AND w.occurred_on OPERATOR(pg_catalog.>=) $4 AND w.occurred_on OPERATOR(pg_catalog.<) $5', awards)
        INTO used USING program_id, account_key, action, period_start,
                        (period_start + CASE cap_period WHEN 'month' THEN interval '1 month'
                                                        WHEN 'quarter' THEN interval '3 months'
                                                        ELSE interval '1 year' END)::date;
        granted := GREATEST(0, LEAST(granted, cap_points - used));
    END IF;
    IF st = 'approved' THEN
        entry := @extschema@._post_member(program_id, account_key, 'award', granted,
                                          pg_catalog.format('%s x %s', quantity, action) || coalesce(' ref ' || reference, ''),
                                          member);
    END IF;
    EXECUTE pg_catalog.format('INSERT INTO %s AS w (program_id, account_key, award_no, action, member_id, occurred_on, quantity, rule_from,'
                              ' points, capped, reference, status, decided_at, posted_xid, entry_no)'
                              ' VALUES ($1, $2::@extschema@.account_key, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,'
                              ' CASE WHEN $12 OPERATOR(pg_catalog.=) ''approved'' THEN pg_catalog.now() END,'
                              ' CASE WHEN $13 IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, $13)'
                              ' RETURNING w.award_id', awards)
    INTO id USING program_id, account_key, no, action, member, day, quantity, rule_from, granted,
                  LEAST(earned - granted, 9223372036854775807), reference, st, entry;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@._award_in(integer, text, text[]) IS
'Internal: loyalty.award''s account part on the node holding the account, under its lock (args: action, member, occurred_on, quantity, reference, and the rule''s valid_from, points, cap_points, cap_period, needs_approval): the award of the same reference again, or a new one capped by what the period already granted, posted unless it waits for approval.';

-- Approval and rejection: one decision per award.  The award's account is
-- found where the call is made (on Citus a query over every shard); the
-- decision is made on the account's node (_decide_award_in).
CREATE FUNCTION @extschema@._decide_award(award_id uuid, approve boolean, note text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    w record;
BEGIN
    PERFORM @extschema@._refuse_shard_query(CASE WHEN approve THEN 'loyalty.approve_award()' ELSE 'loyalty.reject_award()' END);
    IF award_id IS NULL THEN
        RAISE EXCEPTION 'award_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'award_id is what loyalty.award() returned.',
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    SELECT x.program_id, x.account_key::text AS account_key, x.award_no INTO w
    FROM @extschema@.award x WHERE x.award_id = award_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'award_id names no award'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No award has id %s; award_id is what loyalty.award() returned.', award_id),
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    RETURN @extschema@._on_account_node('decide_award', w.program_id, w.account_key,
                                        ARRAY[w.award_no::text, award_id::text, approve::text, note, SESSION_USER::text]);
END
$$;
COMMENT ON FUNCTION @extschema@._decide_award(uuid, boolean, text) IS
'Internal: finds an award by its id and decides it on the node holding its account (loyalty._decide_award_in); returns the status.';

-- A decision on an award (args: award_no, award_id, approve, note, the
-- deciding session user), on the account's node, under the account's lock:
-- an approval posts the points; a decision is final, the same one again
-- changes nothing.  Returns the award's status.
CREATE FUNCTION @extschema@._decide_award_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    award_no bigint := args[1]::bigint;
    approve boolean := args[3]::boolean;
    awards text := @extschema@._table('award');
    w record;
    st text;
    entry bigint;
BEGIN
    PERFORM @extschema@._lock_for_debit(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT x.status, x.points, x.quantity, x.action, x.reference, x.member_id FROM %s x'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.award_no OPERATOR(pg_catalog.=) $3', awards)
    INTO w USING program_id, account_key, award_no;
    IF approve AND w.status = 'rejected' THEN
        RAISE EXCEPTION 'the award was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was rejected; a decision on an award is final.', args[2]),
                  HINT = 'Record the event again with a new reference if it is genuine.';
    ELSIF NOT approve AND w.status = 'approved' THEN
        RAISE EXCEPTION 'the award was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was approved and its points posted; a decision on an award is final.', args[2]),
                  HINT = 'Take the points back with an adjustment if the approval was a mistake.';
    ELSIF w.status IS DISTINCT FROM 'pending' THEN
        RETURN w.status;        -- the same decision again
    END IF;
    IF approve THEN
        entry := @extschema@._post_member(program_id, account_key, 'award', w.points,
                                          pg_catalog.format('%s x %s', w.quantity, w.action) || coalesce(' ref ' || w.reference, ''),
                                          w.member_id);
    END IF;
    st := CASE WHEN approve THEN 'approved' ELSE 'rejected' END;
    EXECUTE pg_catalog.format('UPDATE %s x SET status = $4, decided_at = pg_catalog.now(), decided_by = $5, note = $6,'
                              ' posted_xid = CASE WHEN $7 IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = $7'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.award_no OPERATOR(pg_catalog.=) $3', awards)
    USING program_id, account_key, award_no, st, args[5], args[4], entry;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@._decide_award_in(integer, text, text[]) IS
'Internal: approves (posts the points) or rejects a pending award (args: award_no, award_id, approve, note, decided_by) on the node holding the account, under its lock; a decision is final (the other one is refused, the same one changes nothing). Returns the status.';

CREATE FUNCTION @extschema@.approve_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_award(award_id, true, note);
END
$$;
COMMENT ON FUNCTION @extschema@.approve_award(uuid, text) IS
'Approves a pending award: posts its points (ledger kind award) and makes it count for tier qualification. Approving an approved award again changes nothing; returns the status.';

CREATE FUNCTION @extschema@.reject_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_award(award_id, false, note);
END
$$;
COMMENT ON FUNCTION @extschema@.reject_award(uuid, text) IS
'Rejects a pending award: it posts nothing, never counts, and frees its share of the cap. Rejecting a rejected award again changes nothing; returns the status.';

-- Read by settlement for tier qualification on counted actions.
CREATE FUNCTION @extschema@._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- PL/pgSQL, not SQL: on Citus, award is distributed, and Citus plans a
    -- query with parameters on it only as PL/pgSQL's custom plan
    RETURN QUERY
    SELECT w.account_key::text, pg_catalog.sum(w.quantity)::bigint
    FROM @extschema@.award w
    WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.action OPERATOR(pg_catalog.=) $2
      AND w.status OPERATOR(pg_catalog.=) 'approved'
      AND w.occurred_on OPERATOR(pg_catalog.>=) $3 AND w.occurred_on OPERATOR(pg_catalog.<) $4
    GROUP BY w.account_key;
END
$$;
COMMENT ON FUNCTION @extschema@._action_counts(integer, text, date, date) IS
'Internal: approved actions per account that occurred in [from_date, to_date) (their quantities summed), for tier qualification at settlement.';

REVOKE ALL ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date, text),
                      @extschema@.award(text, text, text, date, text, text, integer),
                      @extschema@._decide_award(uuid, boolean, text),
                      @extschema@._award_in(integer, text, text[]), @extschema@._decide_award_in(integer, text, text[]),
                      @extschema@.approve_award(uuid, text), @extschema@.reject_award(uuid, text),
                      @extschema@._action_counts(integer, text, date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date, text) TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.award(text, text, text, date, text, text, integer),
                          @extschema@.approve_award(uuid, text), @extschema@.reject_award(uuid, text) TO loyalty_operator;
GRANT SELECT ON @extschema@.action_rule, @extschema@.award TO loyalty_reader, loyalty_operator, loyalty_admin;
