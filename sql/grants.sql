--
-- Who may do what, read from the catalog.  Every function of the extension
-- has an explicit decision below: who may execute it, whether it runs with
-- the owner's rights, whether it pins search_path, and why.  A function
-- added without a decision, or whose privileges differ from it, shows up in
-- the checks at the end.  The same for writes to the tables.
--
\pset null '(null)'

-- The decisions.  grantees: the roles granted EXECUTE besides the owner
-- ('' = the owner alone).  pinned: SET search_path = pg_catalog, pg_temp.
CREATE TEMP TABLE decision (fn text PRIMARY KEY, grantees text NOT NULL, definer boolean NOT NULL,
                            pinned boolean NOT NULL, why text NOT NULL);
INSERT INTO decision VALUES
-- The types: input, output, operators and pure functions of a value, for
-- anyone who holds one.  C that runs no SQL and resolves no name: no SET
-- clause, which would cost every call a GUC save and restore.
('loyalty.tier_ladder_in(cstring)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.tier_ladder_out(loyalty.tier_ladder)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.tier_ladder_recv(internal)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.tier_ladder_send(loyalty.tier_ladder)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.tier_ladder_eq(loyalty.tier_ladder,loyalty.tier_ladder)', 'PUBLIC', false, false, 'operator ='),
('loyalty.tier_ladder_ne(loyalty.tier_ladder,loyalty.tier_ladder)', 'PUBLIC', false, false, 'operator <>'),
('loyalty.tier_ladder_hash(loyalty.tier_ladder)', 'PUBLIC', false, false, 'hash opclass support'),
('loyalty.tier_of(loyalty.tier_ladder,numeric)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty.tier_rank(loyalty.tier_ladder,numeric)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty.next_tier(loyalty.tier_ladder,numeric)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty.tiers(loyalty.tier_ladder)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty.rebate_schedule_in(cstring)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.rebate_schedule_out(loyalty.rebate_schedule)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.rebate_schedule_recv(internal)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.rebate_schedule_send(loyalty.rebate_schedule)', 'PUBLIC', false, false, 'type I/O'),
('loyalty.rebate_schedule_eq(loyalty.rebate_schedule,loyalty.rebate_schedule)', 'PUBLIC', false, false, 'operator ='),
('loyalty.rebate_schedule_ne(loyalty.rebate_schedule,loyalty.rebate_schedule)', 'PUBLIC', false, false, 'operator <>'),
('loyalty.rebate_schedule_hash(loyalty.rebate_schedule)', 'PUBLIC', false, false, 'hash opclass support'),
('loyalty.rebate(loyalty.rebate_schedule,numeric)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty.rebate_rate(loyalty.rebate_schedule,numeric)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty.rebate_mode(loyalty.rebate_schedule)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty.brackets(loyalty.rebate_schedule)', 'PUBLIC', false, false, 'pure function of a value'),
-- Configuration: no user code runs in them, so they write as the owner.
('loyalty.create_program(text,text,loyalty.tier_ladder,numeric,text,text,interval,text,boolean,date,text,interval,loyalty.rebate_schedule)',
 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.add_rule(text,date,numeric,numeric,jsonb,jsonb,jsonb,numeric,bigint,text)',
 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.detach(regclass,text)', 'loyalty_admin', true, true, 'drops the owner''s triggers; no user code'),
-- The caller's own rights: they evaluate the attaching user's mapping
-- expressions, and switch to the owner only to read and write loyalty's
-- tables with values already computed.
('loyalty.enroll(text,text,text,text,text,numeric,text,date)', 'loyalty_admin,loyalty_operator', false, true,
 'writes through _enroll as the owner; a restatement recomputes as the caller'),
('loyalty.attach(regclass,text,text,text,text,text,text,text,text,text,text[],text,text,text,regclass,text,text,text,text,regclass,text,text)',
 'loyalty_admin', false, true, 'validates the mapping as the caller'),
('loyalty.backfill(regclass,text,date)', 'loyalty_admin', false, true, 'recomputes as the caller, posts as the owner'),
('loyalty.verify(text)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'recomputes as the caller'),
('loyalty.pending_caps(integer,text)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'reads loyalty tables as the caller (the view loyalty.balance calls it)'),
('loyalty.fold(text)', 'loyalty_admin,loyalty_operator', false, true, 'C; writes loyalty tables only, as the owner; no user code'),
('loyalty.verify(text,text)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'verify of one account, as the caller'),
('loyalty.verify(text,date)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'verify of recent months, as the caller'),
('loyalty.explain_points(regclass,text[])', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true,
 'reads the row as the caller'),
('loyalty.explain_points(regclass,"any")', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true,
 'reads the row as the caller; the key in its own types'),
-- Reading loyalty's tables only, with internal helpers: as the owner.
('loyalty.balance(text,text)', 'loyalty_admin,loyalty_operator,loyalty_reader', true, true, 'reads loyalty''s tables only'),
('loyalty.tier(text,text)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'checks its arguments, then calls balance()'),
-- Rewards, actions, MDF: typed arguments, no dynamic SQL, no caller-defined
-- name (everything qualified, search_path pinned), so they write as the
-- owner.  The catalogue and the action rules are configuration (admins);
-- redeeming, awarding, claiming and deciding are operations (operators).
('loyalty.set_reward(text,text,text,bigint,text,text,integer,integer,integer,text,date,date,text,boolean)',
 'loyalty_admin', true, true, 'configures the catalogue; typed arguments, no dynamic SQL'),
('loyalty.set_action_rule(text,text,bigint,boolean,bigint,text,date)',
 'loyalty_admin', true, true, 'configures action rules; typed arguments, no dynamic SQL'),
('loyalty.redeem(text,text,text,integer,text)', 'loyalty_operator', true, true, 'a debit; typed arguments, no dynamic SQL'),
('loyalty.cancel_redemption(uuid)', 'loyalty_operator', true, true, 'reverses a redemption; no dynamic SQL'),
('loyalty.award(text,text,text,date,text,text,integer)', 'loyalty_operator', true, true, 'posts awards; typed arguments, no dynamic SQL'),
('loyalty.approve_award(uuid,text)', 'loyalty_operator', true, true, 'decides an award; no dynamic SQL'),
('loyalty.reject_award(uuid,text)', 'loyalty_operator', true, true, 'decides an award; no dynamic SQL'),
('loyalty.claim_mdf(text,text,numeric,text,text)', 'loyalty_operator', true, true, 'a debit of the MDF wallet; no dynamic SQL'),
('loyalty.approve_mdf_claim(uuid,text)', 'loyalty_operator', true, true, 'a debit of the MDF wallet; no dynamic SQL'),
('loyalty.reject_mdf_claim(uuid,text)', 'loyalty_operator', true, true, 'decides a claim; no dynamic SQL'),
-- Triggers: they fire whatever their function's privileges; creating one
-- needs EXECUTE, which only the owner has.
('loyalty.accrue()', '', false, true, 'accrual trigger'),
('loyalty.accrue_header()', '', false, true, 'accrual trigger on header tables'),
('loyalty.stash_header()', '', false, true, 'accrual trigger on header tables'),
('loyalty.track_product()', '', false, true, 'trigger on product tables: keeps earlier product lines'),
('loyalty._refuse_truncate()', '', false, true, 'trigger on attached tables'),
('loyalty._invalidate()', '', false, true, 'trigger on configuration tables'),
('loyalty._ledger_append_only()', '', false, true, 'trigger on loyalty.ledger'),
('loyalty._account_keep()', '', false, true, 'trigger on loyalty.account'),
('loyalty._rule_immutable()', '', false, true, 'trigger on loyalty.rule'),
('loyalty._rejected_resolved_once()', '', false, true, 'trigger on loyalty.rejected_event'),
-- Internal helpers: called by the functions above as the owner.
('loyalty._valid_multipliers(jsonb,boolean)', '', false, true, 'CHECK of loyalty.rule'),
('loyalty._program_id(text)', '', false, true, 'internal'),
('loyalty._check_choice(text,text,text[])', '', false, true, 'internal'),
('loyalty._check_column(regclass,text,text,regtype[],text)', '', false, true, 'internal'),
('loyalty._as_local(regclass,text,text,text)', '', false, true, 'internal'),
('loyalty._attachment_of(regclass,text)', '', false, true, 'internal'),
('loyalty._rolling_start(integer)', '', false, true, 'internal'),
('loyalty._facts_sql(integer)', '', false, true, 'internal: builds the facts query the caller runs'),
('loyalty._equality_operator(regtype)', '', false, true, 'internal: a key type''s equality operator for the facts query'),
('loyalty._today(integer)', '', false, true, 'internal: today in the program''s time zone'),
('loyalty._window_months(interval)', '', false, true, 'internal: the rolling window in months, shared with the trigger'),
('loyalty._attach(regclass,text,text,text,text,text,text,text,text,text,text[],text,text,text,regclass,text,text,regclass,text,text)', '', false, true, 'internal: attach''s owner phase, called by the C attach()'),
('loyalty._check_mapped_columns()', '', false, true, 'event trigger: refuses ALTER TABLE breaking a mapping'),
('loyalty._enroll(text,text,text,text,text,numeric,text,date)', '', false, true, 'internal: the writes of enroll()'),
('loyalty._verify_attachments(integer)', '', false, true, 'internal: verify''s trigger checks'),
('loyalty._verify_ledger(integer,text)', '', false, true, 'internal: verify''s per-month sums vs ledger check'),
('loyalty._verify_balance(integer,text)', '', false, true, 'internal: verify''s ledger vs balance check'),
('loyalty._post(integer,text,loyalty.ledger_kind,bigint,text,numeric,numeric,text,xid8,bigint)', '', false, true, 'internal: posts one ledger entry that no invoice row made'),
('loyalty._lock_for_debit(integer,text)', '', false, true, 'internal: serialises the debits of one account'),
('loyalty._await_postings(integer,text)', '', false, false, 'internal: a debit waits for postings in flight (C, reads balance_delta''s index)'),
('loyalty._decide_award(uuid,boolean,text)', '', false, true, 'internal: approval or rejection of an award'),
('loyalty._action_counts(integer,text,date,date)', '', false, true, 'internal: approved actions for tier qualification'),
('loyalty._post_member(integer,text,loyalty.ledger_kind,bigint,text,text,xid8,bigint)', '', false, true, 'internal: posts an entry and the member''s running total'),
('loyalty._verify_members(integer,text)', '', false, true, 'internal: verify''s member and redemption checks'),
('loyalty._settle_mdf(integer,date,date)', '', false, true, 'internal: MDF accrual at settlement'),
('loyalty._decide_mdf_claim(uuid,boolean,text)', '', false, true, 'internal: approval or rejection of an MDF claim'),
('loyalty._mdf_rate(integer,text,date)', '', false, true, 'internal: MDF rate of a tier (placeholder until the tier benefits)'),
-- pure C, no SQL, no name resolved: no SET clause
('loyalty._ledger_number()', '', false, false, 'internal: the transaction''s next entry number'),
('loyalty._capped_points(integer,date[],bigint[])', '', false, true, 'internal: nested caps for verify, the trigger''s own computation'),
-- Called per balance row inside the posting statement, as the owner; pure
-- C, no SQL, no name resolved: no SET clause.
('loyalty._month_merge(date[],integer[],bigint[],numeric[],bigint[],date[],integer[],bigint[],numeric[],bigint[])',
 '', false, false, 'internal, per balance row');

CREATE TEMP VIEW actual AS
SELECT p.oid, p.oid::regprocedure::text AS fn, l.lanname AS language,
       p.prorettype = 'trigger'::regtype AS is_trigger,
       coalesce((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, ','
                                   ORDER BY CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END)
                 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                 WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), '') AS grantees,
       p.prosecdef AS definer,
       coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false) AS pinned,
       p.proconfig
FROM pg_depend d
JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
JOIN pg_language l ON l.oid = p.prolang
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'loyalty');

-- Every function of the extension: who may execute it, and how it runs.
SELECT a.fn, CASE a.grantees WHEN '' THEN '(owner)' ELSE a.grantees END AS execute,
       CASE WHEN a.definer THEN 'definer' ELSE 'invoker' END AS security,
       a.pinned AS search_path_pinned, a.language
FROM actual a ORDER BY a.fn COLLATE "C";

--
-- The checks: each query must return no row.
--

-- A function without a decision, or a decision without a function.
SELECT coalesce(a.fn, d.fn) AS fn, a.fn IS NULL AS decided_but_missing, d.fn IS NULL AS undecided
FROM actual a FULL JOIN decision d ON d.fn = a.fn
WHERE a.fn IS NULL OR d.fn IS NULL;

-- A function whose privileges, rights or search_path differ from its decision.
SELECT a.fn, d.grantees AS decided, a.grantees AS actual, d.definer, a.definer AS actual_definer,
       d.pinned, a.pinned AS actual_pinned
FROM actual a JOIN decision d ON d.fn = a.fn
WHERE (a.grantees, a.definer, a.pinned) IS DISTINCT FROM (d.grantees, d.definer, d.pinned);

-- An internal or trigger function that PUBLIC or a loyalty role may execute
-- (directly, or through membership in another role).
SELECT a.fn, r.rolname
FROM actual a, (VALUES ('loyalty_reader'), ('loyalty_operator'), ('loyalty_admin')) AS r(rolname)
WHERE (a.fn LIKE 'loyalty.\_%' OR a.is_trigger) AND has_function_privilege(r.rolname, a.oid, 'EXECUTE')
UNION ALL
SELECT a.fn, 'PUBLIC' FROM actual a
WHERE (a.fn LIKE 'loyalty.\_%' OR a.is_trigger) AND a.grantees ~ '(^|,)PUBLIC(,|$)';

-- A function that runs SQL (anything but C) or runs with the owner's rights
-- without search_path pinned, or with any other setting.
SELECT a.fn, a.language, a.definer, a.proconfig FROM actual a
WHERE ((a.language <> 'c' OR a.definer) AND NOT a.pinned)
   OR (a.proconfig IS NOT NULL AND a.proconfig <> ARRAY['search_path=pg_catalog, pg_temp']);

--
-- Tables: what each loyalty role may write, directly.  Nothing but
-- members and the resolved_at of a dead letter: every other
-- change goes through a function that checks it.
--
SELECT c.relname AS "table", r.rolname AS role,
       concat_ws(', ',
           CASE WHEN has_table_privilege(r.rolname, c.oid, 'INSERT') THEN 'INSERT'
                WHEN has_any_column_privilege(r.rolname, c.oid, 'INSERT') THEN 'INSERT (some columns)' END,
           CASE WHEN has_table_privilege(r.rolname, c.oid, 'UPDATE') THEN 'UPDATE'
                WHEN has_any_column_privilege(r.rolname, c.oid, 'UPDATE') THEN
                    'UPDATE (' || (SELECT string_agg(t.attname, ', ' ORDER BY t.attnum) FROM pg_attribute t
                                   WHERE t.attrelid = c.oid AND t.attnum > 0
                                     AND has_column_privilege(r.rolname, c.oid, t.attnum, 'UPDATE')) || ')' END,
           CASE WHEN has_table_privilege(r.rolname, c.oid, 'DELETE') THEN 'DELETE' END,
           CASE WHEN has_table_privilege(r.rolname, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END) AS writes
FROM pg_class c, (VALUES ('loyalty_reader'), ('loyalty_operator'), ('loyalty_admin')) AS r(rolname)
WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind IN ('r', 'p', 'v')
  AND (has_any_column_privilege(r.rolname, c.oid, 'INSERT') OR has_any_column_privilege(r.rolname, c.oid, 'UPDATE')
       OR has_table_privilege(r.rolname, c.oid, 'DELETE') OR has_table_privilege(r.rolname, c.oid, 'TRUNCATE'))
ORDER BY 1, 2;

-- Every loyalty role reads every table and view.
SELECT c.relname, r.rolname FROM pg_class c, (VALUES ('loyalty_reader'), ('loyalty_operator'), ('loyalty_admin')) AS r(rolname)
WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind IN ('r', 'p', 'v')
  AND NOT has_table_privilege(r.rolname, c.oid, 'SELECT');
