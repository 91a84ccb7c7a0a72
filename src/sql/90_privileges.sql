-- Who may execute what.  Deny by default: no function of the extension is
-- executable by PUBLIC unless it is granted here.  Internal functions (the
-- ones whose name starts with _) and trigger functions are the owner's
-- alone (a trigger fires whatever its function's privileges; creating one
-- needs EXECUTE, which no role but the owner has, so nobody can add an
-- accrual trigger of their own).  The documented API is granted to the
-- loyalty role that needs it, next to each function's definition, and the
-- reading functions below.  sql/grants.sql checks every function against an
-- explicit list of these decisions.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;

-- The types: input, output, operators and the pure functions over a value
-- (no SQL, no table, nothing but their arguments), for anyone who holds one.
GRANT EXECUTE ON FUNCTION
    @extschema@.tier_ladder_in(pg_catalog.cstring), @extschema@.tier_ladder_out(@extschema@.tier_ladder),
    @extschema@.tier_ladder_recv(pg_catalog.internal), @extschema@.tier_ladder_send(@extschema@.tier_ladder),
    @extschema@.tier_ladder_eq(@extschema@.tier_ladder, @extschema@.tier_ladder),
    @extschema@.tier_ladder_ne(@extschema@.tier_ladder, @extschema@.tier_ladder),
    @extschema@.tier_ladder_hash(@extschema@.tier_ladder),
    @extschema@.tier_of(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.tier_rank(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.next_tier(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.tiers(@extschema@.tier_ladder),
    @extschema@.rebate_schedule_in(pg_catalog.cstring), @extschema@.rebate_schedule_out(@extschema@.rebate_schedule),
    @extschema@.rebate_schedule_recv(pg_catalog.internal), @extschema@.rebate_schedule_send(@extschema@.rebate_schedule),
    @extschema@.rebate_schedule_eq(@extschema@.rebate_schedule, @extschema@.rebate_schedule),
    @extschema@.rebate_schedule_ne(@extschema@.rebate_schedule, @extschema@.rebate_schedule),
    @extschema@.rebate_schedule_hash(@extschema@.rebate_schedule),
    @extschema@.rebate(@extschema@.rebate_schedule, pg_catalog.numeric),
    @extschema@.rebate_rate(@extschema@.rebate_schedule, pg_catalog.numeric),
    @extschema@.rebate_mode(@extschema@.rebate_schedule),
    @extschema@.brackets(@extschema@.rebate_schedule),
    -- the difference-in-differences aggregate and its t quantile: pure
    -- functions of their arguments (the aggregate's support functions run
    -- with its owner's EXECUTE right and stay the owner's)
    @extschema@.did(boolean, numeric, numeric),
    @extschema@.t_quantile(double precision, double precision)
TO PUBLIC;

-- Reading and checking: every loyalty role (they read the tables anyway).
GRANT EXECUTE ON FUNCTION
    @extschema@.balance(text, text), @extschema@.tier(text, text),
    @extschema@.explain_points(regclass, text[]), @extschema@.explain_points(regclass, "any"),
    @extschema@.verify(text),
    -- the caps of unfolded postings, for the view loyalty.balance (run as its reader)
    @extschema@.pending_caps(integer, text)
TO loyalty_reader, loyalty_operator, loyalty_admin;
-- a partner's login reads its own account through them (src/sql/80_partner.sql)
GRANT EXECUTE ON FUNCTION @extschema@.balance(text, text), @extschema@.tier(text, text),
                          @extschema@.pending_caps(integer, text)
TO loyalty_partner;
-- and its statement, benefits, expiring points, tier and balance as of a
-- date, and redeems for itself: each of them checks the partner's account
-- first (loyalty._may_read, loyalty._may_act).  Not cancel_redemption (a
-- return, decided by the operator).
GRANT EXECUTE ON FUNCTION @extschema@.tier(text, text, date), @extschema@.balance(text, text, date),
                          @extschema@.benefits(text, text), @extschema@.statement(text, text, date),
                          @extschema@.expiring_points(text, text, date),
                          @extschema@.redeem(text, text, text, integer, text),
                          @extschema@.redeem(text, bigint, text, integer, text)
TO loyalty_partner;
