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
-- The difference-in-differences aggregate and its t quantile: pure
-- functions of their arguments.  An aggregate has no SET clause; its support
-- functions run with the aggregate owner's EXECUTE right and stay the owner's.
('loyalty.did(boolean,numeric,numeric)', 'PUBLIC', false, false, 'aggregate of its arguments'),
('loyalty.t_quantile(double precision,double precision)', 'PUBLIC', false, false, 'pure function of a value'),
('loyalty._did_trans(internal,boolean,numeric,numeric)', '', false, false, 'internal: did() support, pure C'),
('loyalty._did_combine(internal,internal)', '', false, false, 'internal: did() support, pure C'),
('loyalty._did_serial(internal)', '', false, false, 'internal: did() support, pure C'),
('loyalty._did_deserial(bytea,internal)', '', false, false, 'internal: did() support, pure C'),
('loyalty._did_final(internal,boolean,numeric,numeric)', '', false, false, 'internal: did() support, pure C'),
-- Configuration: no user code runs in them, so they write as the owner.
('loyalty.create_program(text,text,loyalty.tier_ladder,numeric,text,text,interval,text,boolean,date,text,interval,loyalty.rebate_schedule)',
 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.add_rule(text,date,numeric,numeric,jsonb,jsonb,jsonb,numeric,bigint,text)',
 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.detach(regclass,text)', 'loyalty_admin', true, true, 'drops the owner''s triggers; no user code'),
('loyalty.distribute(regclass)', '', false, true, 'Citus layout: alters the extension''s tables on every node; superuser only'),
('loyalty.add_node(text,integer)', '', false, true, 'Citus layout of a new node: creates and alters the extension there, adds the node; superuser only'),
('loyalty.set_roi_economics(text,numeric,numeric,numeric)', 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.set_margin_rate(text,text,numeric)', 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.assign_cohorts(text,numeric,bigint,daterange,integer,boolean)', 'loyalty_admin', true, true,
 'reads loyalty''s tables only (qualifying spend), writes cohorts; no user code'),
-- Builds SQL text from loyalty.attachment and the catalog (readable by every
-- loyalty role anyway); evaluates nothing.
('loyalty.attachment_facts(text)', 'loyalty_admin,loyalty_operator,loyalty_reader', true, true,
 'returns the facts SQL of a program''s attachments, text only'),
-- The caller's own rights: they evaluate the attaching user's mapping
-- expressions, and switch to the owner only to read and write loyalty's
-- tables with values already computed.
('loyalty.enroll(text,text,text,text,text,numeric,text,date)', 'loyalty_admin,loyalty_operator', false, true,
 'writes through _enroll as the owner; a restatement recomputes as the caller'),
('loyalty.attach(regclass,text,text,text,text,text,text,text,text,text,text[],text,text,text,regclass,text,text,text,text,regclass,text,text)',
 'loyalty_admin', false, true, 'validates the mapping as the caller'),
('loyalty.backfill(regclass,text,date)', 'loyalty_admin', false, true, 'recomputes as the caller, posts as the owner'),
('loyalty.verify(text)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'recomputes as the caller'),
('loyalty.pending_caps(integer,text)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'reads loyalty tables as the caller (the view loyalty.balance calls it)'),
('loyalty.sales(text,daterange)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'runs the facts SQL as the caller'),
('loyalty.roi(text,daterange,daterange,numeric,date)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true,
 'reads ERP rows through sales() as the caller, loyalty''s tables as the caller'),
('loyalty.fold(text)', 'loyalty_admin,loyalty_operator', false, true, 'C; writes loyalty tables only, as the owner; no user code'),
('loyalty.verify(text,text)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'verify of one account, as the caller'),
('loyalty.verify(text,date)', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true, 'verify of recent months, as the caller'),
('loyalty.explain_points(regclass,text[])', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true,
 'reads the row as the caller'),
('loyalty.explain_points(regclass,"any")', 'loyalty_admin,loyalty_operator,loyalty_reader', false, true,
 'reads the row as the caller; the key in its own types'),
-- Reading loyalty's tables only, with internal helpers: as the owner.
('loyalty.balance(text,text)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'reads loyalty''s tables as the caller (row-level security), a partner its own account only'),
('loyalty.tier(text,text)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'checks its arguments, then calls balance()'),
-- Settlement and tiers: loyalty's own tables only, no user code (the
-- settlement steps are the extension's own functions): as the owner.
('loyalty.settle(text,date)', 'loyalty_admin,loyalty_operator', true, true, 'reads loyalty''s tables only, writes computed tiers and runs'),
('loyalty.settle_due(text)', 'loyalty_admin,loyalty_operator', true, true, 'calls settle() per ended period'),
('loyalty.set_tier_rules(text,text,text,text,numeric)', 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.set_tier_requirement(text,text,text,bigint)', 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.set_benefit(text,text,text,jsonb)', 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.grant_tier(text,text,text,text)', 'loyalty_admin', true, true, 'writes a tier by hand; no user code'),
('loyalty.revoke_tier(text,text)', 'loyalty_admin', true, true, 'writes a tier by hand; no user code'),
('loyalty.tier(text,text,date)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', true, true, 'reads loyalty''s tables only, after _may_read (a partner: its own account)'),
('loyalty.balance(text,text,date)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', true, true, 'reads loyalty''s tables only, after _may_read (a partner: its own account)'),
('loyalty.benefits(text,text)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', true, true, 'reads loyalty''s tables only, after _may_read (a partner: its own account)'),
('loyalty.statement(text,text,date)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', true, true, 'reads loyalty''s tables only, after _may_read (a partner: its own account)'),
-- pg_cron's functions check the caller's own rights: the job is the caller's
('loyalty.schedule_settlement(text,text)', 'loyalty_admin', false, true, 'calls pg_cron as the caller'),
('loyalty.unschedule_settlement(text)', 'loyalty_admin', false, true, 'calls pg_cron as the caller'),
('loyalty.expiring_points(text,text,date)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', true, true, 'reads loyalty''s tables only, after _may_read (a partner: its own account)'),
-- Rebates: loyalty's tables only, no user code (the volume is the
-- qualifying spend the accrual already summed).
('loyalty.create_rebate_agreement(text,text,loyalty.rebate_schedule,text,text,text,text,text[],text,date,date)',
 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.end_rebate_agreement(text,text,date)', 'loyalty_admin', true, true, 'configures programs; typed arguments, no dynamic SQL'),
('loyalty.accrue_rebates(text,date)', 'loyalty_admin,loyalty_operator', true, true, 'posts rebate estimates from loyalty''s tables only; no user code'),
-- Rewards, actions, MDF: typed arguments, no dynamic SQL, no caller-defined
-- name (everything qualified, search_path pinned), so they write as the
-- owner.  The catalogue and the action rules are configuration (admins);
-- redeeming, awarding, claiming and deciding are operations (operators).
('loyalty.set_reward(text,text,text,bigint,text,text,integer,integer,integer,text,date,date,text,boolean)',
 'loyalty_admin', true, true, 'configures the catalogue; typed arguments, no dynamic SQL'),
('loyalty.set_action_rule(text,text,bigint,boolean,bigint,text,date,text)',
 'loyalty_admin', true, true, 'configures action rules; typed arguments, no dynamic SQL'),
('loyalty.redeem(text,text,text,integer,text)', 'loyalty_operator,loyalty_partner', true, true, 'a debit; typed arguments, no dynamic SQL; _may_act first (a partner: for itself)'),
('loyalty.redeem(text,bigint,text,integer,text)', 'loyalty_operator,loyalty_partner', true, true, 'redeem with the key as a number (Citus routes it by an integer distribution column); the same C function'),
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
('loyalty._rolling_start(integer)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'internal, called by balance() as its caller: the program''s settings only'),
('loyalty._facts_sql(integer)', '', false, true, 'internal: builds the facts query the caller runs'),
('loyalty._equality_operator(regtype)', '', false, true, 'internal: a key type''s equality operator for the facts query'),
('loyalty._today(integer)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'internal: today in the program''s time zone, called by balance() as its caller'),
('loyalty._window_months(interval)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'internal: the rolling window in months, shared with the trigger; called by balance() as its caller'),
('loyalty._attach(regclass,text,text,text,text,text,text,text,text,text,text[],text,text,text,regclass,text,text,regclass,text,text)', '', false, true, 'internal: attach''s owner phase, called by the C attach()'),
('loyalty._check_mapped_columns()', '', false, true, 'event trigger: refuses ALTER TABLE breaking a mapping'),
('loyalty._citus_layout()', '', false, true, 'reads the catalog: how distribute() lays out each table'),
('loyalty._distributed()', '', false, true, 'reads the catalog: whether distribute() made the tables Citus tables'),
('loyalty._facts_sql(loyalty.attachment,regclass)', '', false, true, 'internal: the facts query of an attachment row over a table or one of its Citus shards'),
('loyalty._reconcile_shard(integer,text,text,boolean,date,text)', '', false, true, 'internal: verify or backfill of one Citus shard on its node, called by them as the owner; runs the facts query as the given caller'),
('loyalty._explain_shard(integer,text,text,text[],text)', '', false, true, 'internal: explain_points of one account''s rows on the node of its Citus shard, called as the owner; reads the rows as the given caller'),
('loyalty._citus_functions()', '', false, true, 'internal: distribute() registers redeem as a Citus distributed function'),
('loyalty._colocated_shard(regclass,regclass)', '', false, true, 'internal: the facts query of a Citus shard of lines reads the co-located shard of their header'),
('loyalty._citus_same_customer(regclass,regclass)', '', false, true, 'internal: the facts query joins lines and header distributed together on Citus by customer too'),
('loyalty._prepare_node(regtype)', '', false, true, 'internal: distribute() and add_node() drop the keys and policies Citus refuses and set the key type, on one node'),
('loyalty._unlink_detached()', '', false, true, 'internal: distribute() and add_node() clear the relations of detached attachments that not every node has'),
('loyalty._set_key_type(regtype)', '', false, true, 'internal: distribute() makes the account keys the type of the ERP''s distribution column, on each node'),
('loyalty._enroll(text,text,text,text,text,numeric,text,date)', '', false, true, 'internal: the writes of enroll()'),
('loyalty._verify_attachments(integer)', '', false, true, 'internal: verify''s trigger checks'),
('loyalty._verify_ledger(integer,text)', '', false, true, 'internal: verify''s per-month sums vs ledger check'),
('loyalty._verify_balance(integer,text)', '', false, true, 'internal: verify''s ledger vs balance check'),
('loyalty._post(integer,text,loyalty.ledger_kind,bigint,text,numeric,numeric,text,xid8,bigint)', '', false, true, 'internal: posts one ledger entry that no invoice row made'),
('loyalty._lock_for_debit(integer,text)', '', false, true, 'internal: serialises the debits of one account'),
('loyalty._settle_lock(integer)', '', false, true, 'internal: a program''s settlement lock'),
('loyalty._tier_lock(integer)', '', false, true, 'internal: a program''s tier lock (fold tries it)'),
('loyalty._period_length(text)', '', false, true, 'internal: length of a settlement period'),
('loyalty._period_start(integer,date)', '', false, true, 'internal: the first day of the period a date ends'),
('loyalty._program_problem(text)', '', false, true, 'internal: what is wrong with a program argument'),
('loyalty._period_end_problem(integer,date)', '', false, true, 'internal: what is wrong with a period_end argument'),
('loyalty._settle_accounts(integer,date,date)', '', false, true, 'internal: settlement''s pass over the accounts'),
('loyalty._settle_tiers(integer,date)', '', false, true, 'internal: settlement''s tier writes'),
('loyalty._cron_schema()', '', false, true, 'internal: pg_cron''s schema or how to install it'),
('loyalty._valid_benefit(text,jsonb)', '', false, true, 'CHECK of loyalty.tier_benefit'),
('loyalty._tier_at(integer,text,date)', '', false, true, 'internal: tier on a date'),
('loyalty._benefit(integer,text,text,date)', '', false, true, 'internal: a benefit of an account on a date (MDF rate)'),
('loyalty._measure(integer,text,date)', '', false, true, 'internal: the tier basis over the window'),
('loyalty._rank_meeting(numeric[],numeric,integer[],text[],bigint[],text[],bigint[])', '', false, true, 'internal: a tier rank meeting action requirements given as arrays (settlement on Citus)'),
('loyalty._set_tier(integer,text,text,text)', '', false, true, 'internal: tier change by hand'),
-- Settlement steps of the other wallets (52_expiry, 53_rebates, 61_actions,
-- 63_mdf): called by settle() as the owner.
('loyalty._expiry_due(integer,date,text)', '', false, true, 'internal: points due to expire at a cutoff (FIFO closed form)'),
('loyalty._expiry_due_in(integer,text,date,text,boolean,regclass,regclass,regclass)', '', false, true, 'internal: the same over given tables (loyalty''s, or a Citus shard group)'),
('loyalty._expiry_settings(integer,date,regclass,regclass)', '', false, true, 'internal: a program''s expiry threshold, time zone and caps at a cutoff'),
('loyalty._settle_expiry_in(integer,date,date,text,boolean,regclass,regclass,regclass,regclass)', '', false, true, 'internal: settlement''s expiry over given tables'),
('loyalty._settle_shards(text,integer,date,date)', '', false, true, 'internal: a settlement step that posts (expiry, rebates, MDF) on Citus, one routed call per shard'),
('loyalty._settle_shard(text,integer,date,date,text)', '', false, true, 'internal: a settlement step of one shard group, on its Citus node'),
('loyalty._settle_expiry(integer,date,date)', '', false, true, 'internal: settlement''s expiry, called by settle()'),
('loyalty._expiry_cutoffs(integer,date)', '', false, true, 'internal: settlement cutoffs of the next 90 days'),
('loyalty._expiring_soon(integer,text,date)', '', false, true, 'internal: points expiring in the next 90 days, for the statement'),
('loyalty._rebates_in(integer,date,boolean,regclass,regclass,regclass,regclass,regclass,regclass,regclass,regclass,regclass)', '', false, true, 'internal: the rebate pass (lines and true-ups, or estimates) over given tables'),
('loyalty._rebates(integer,date,boolean)', '', false, true, 'internal: the rebate pass on one server or on every Citus shard group'),
('loyalty._settle_rebates(integer,date,date)', '', false, true, 'internal: settlement''s rebate true-up and adjustments, called by settle()'),
('loyalty._verify_rebate_lines(integer,text)', '', false, true, 'internal: verify''s check of the product-line split for scoped rebates'),
('loyalty._await_postings(integer,text)', '', false, false, 'internal: a debit waits for postings in flight (C, reads balance_delta''s index)'),
('loyalty._decide_award(uuid,boolean,text)', '', false, true, 'internal: approval or rejection of an award'),
('loyalty._action_counts(integer,text,date,date)', '', false, true, 'internal: approved actions for tier qualification'),
('loyalty._post_member(integer,text,loyalty.ledger_kind,bigint,text,text,xid8,bigint)', '', false, true, 'internal: posts an entry and the member''s running total'),
('loyalty._verify_members(integer,text)', '', false, true, 'internal: verify''s member and redemption checks'),
('loyalty._settle_mdf(integer,date,date)', '', false, true, 'internal: MDF accrual at settlement'),
('loyalty._decide_mdf_claim(uuid,boolean,text)', '', false, true, 'internal: approval or rejection of an MDF claim'),
('loyalty._mdf_in(integer,date,date,regclass,regclass,regclass,regclass,regclass,regclass)', '', false, true, 'internal: settlement''s MDF credit over given tables (loyalty''s, or a Citus shard group)'),
('loyalty._refuse_shard_query(text)', '', false, true, 'internal: refuses an account step Citus sent into a query on a shard'),
('loyalty._table(text)', '', false, true, 'internal: a table of loyalty as the account steps address it (its shard on a Citus worker)'),
('loyalty._on_account_node(text,integer,text,text[])', '', false, true, 'internal: an account step here, or routed to the account''s Citus node'),
('loyalty._account_shard(text,integer,text,text[],text)', '', false, true, 'internal: an account step on a Citus worker, over the account''s shards'),
('loyalty._mdf_wallet(integer,text)', '', false, true, 'internal: the MDF money of an account'),
('loyalty._claim_mdf_in(integer,text,text[])', '', false, true, 'internal: claim_mdf''s account part, on the account''s node'),
('loyalty._decide_mdf_claim_in(integer,text,text[])', '', false, true, 'internal: an MDF claim''s decision, on the account''s node'),
('loyalty._cancel_redemption_in(integer,text,text[])', '', false, true, 'internal: cancel_redemption''s account part, on the account''s node'),
('loyalty._award_in(integer,text,text[])', '', false, true, 'internal: award''s account part, on the account''s node'),
('loyalty._decide_award_in(integer,text,text[])', '', false, true, 'internal: an award''s decision, on the account''s node'),
-- pure C, no SQL, no name resolved: no SET clause
('loyalty._ledger_number()', '', false, false, 'internal: the transaction''s next entry number'),
('loyalty._is_staff()', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'internal: is the caller a loyalty role (the partner check)'),
('loyalty._may_read(text,text)', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'internal: refuses a partner another account; runs as the caller'),
('loyalty._caller()', 'loyalty_admin,loyalty_operator,loyalty_partner,loyalty_reader', false, true, 'internal: the calling role, inside definer functions too; the filters of leaderboard and account_private call it as their reader'),
('loyalty._may_act(text,text,text)', '', false, true, 'internal: refuses a partner another account or member; called by redeem() as the owner'),
('loyalty.grant_partner(regrole,text,text,text)', 'loyalty_admin', true, true, 'maps a login to an account and grants loyalty_partner; no user code'),
('loyalty.revoke_partner(regrole,text)', 'loyalty_admin', true, true, 'removes the mapping; no user code'),
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
       p.prosecdef AS definer, p.prokind,
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
-- without search_path pinned, or with any other setting but one: redeem()
-- plans its kept statements with sequential scans off (see 60_rewards.sql).
-- (An aggregate cannot have a SET clause: its support functions are checked
-- instead.)
SELECT a.fn, a.language, a.definer, a.proconfig FROM actual a
WHERE ((a.language <> 'c' OR a.definer) AND NOT a.pinned AND a.prokind <> 'a')
   OR (a.proconfig IS NOT NULL AND a.proconfig <> ARRAY['search_path=pg_catalog, pg_temp']
       AND NOT (a.fn IN ('loyalty.redeem(text,text,text,integer,text)', 'loyalty.redeem(text,bigint,text,integer,text)')
                AND a.proconfig = ARRAY['search_path=pg_catalog, pg_temp', 'enable_seqscan=off']));

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
FROM pg_class c, (VALUES ('loyalty_reader'), ('loyalty_operator'), ('loyalty_admin'), ('loyalty_partner')) AS r(rolname)
WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind IN ('r', 'p', 'v')
  AND (has_any_column_privilege(r.rolname, c.oid, 'INSERT') OR has_any_column_privilege(r.rolname, c.oid, 'UPDATE')
       OR has_table_privilege(r.rolname, c.oid, 'DELETE') OR has_table_privilege(r.rolname, c.oid, 'TRUNCATE'))
ORDER BY 1, 2;

-- Every loyalty role reads every table and view.
SELECT c.relname, r.rolname FROM pg_class c, (VALUES ('loyalty_reader'), ('loyalty_operator'), ('loyalty_admin')) AS r(rolname)
WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind IN ('r', 'p', 'v')
  AND NOT has_table_privilege(r.rolname, c.oid, 'SELECT');

-- The partner role reads these (its own account's rows: sql/partner.sql) ...
SELECT c.relname, CASE WHEN has_table_privilege('loyalty_partner', c.oid, 'SELECT') THEN 'all'
                       ELSE (SELECT string_agg(t.attname, ', ' ORDER BY t.attnum) FROM pg_attribute t
                             WHERE t.attrelid = c.oid AND t.attnum > 0 AND NOT t.attisdropped
                               AND has_column_privilege('loyalty_partner', c.oid, t.attnum, 'SELECT')) END AS columns
FROM pg_class c
WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind IN ('r', 'p', 'v')
  AND has_any_column_privilege('loyalty_partner', c.oid, 'SELECT')
ORDER BY 1;
-- ... and every table of them with an account has row-level security on,
-- every view reads as its reader, or, running as the owner, filters on
-- loyalty._is_staff() (leaderboard, a security barrier; account_private, a
-- one-time filter: listed below): a new one granted without fails here.
SELECT c.relname, c.relkind, c.relrowsecurity, c.reloptions FROM pg_class c
WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind IN ('r', 'p', 'v')
  AND has_any_column_privilege('loyalty_partner', c.oid, 'SELECT')
  AND CASE WHEN c.relkind = 'v' THEN NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)
                                     AND pg_get_viewdef(c.oid) NOT LIKE '%loyalty._is_staff()%'
           ELSE NOT c.relrowsecurity AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'account_key') END;
SELECT c.relname, c.reloptions FROM pg_class c
WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind = 'v'
  AND has_any_column_privilege('loyalty_partner', c.oid, 'SELECT')
  AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)
ORDER BY 1;
