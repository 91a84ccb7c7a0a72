--
-- rewards: the catalogue.  loyalty.set_reward writes a reward of a program
-- (discounts, goods and business services), and replaces it when called
-- again; who may write it, and who may not.
--
\set VERBOSITY terse
\pset null '(null)'
SET datestyle = 'ISO, YMD';

SELECT loyalty.create_program('rw_catalogue', ladder => 'Member:0, Silver:1000, Gold:5000') > 0 AS created;

-- A building-materials dealer's and an equipment distributor's catalogue:
-- business services beside a discount.
SELECT loyalty.set_reward('rw_catalogue', 'MKT-KIT', 'Marketing support kit', 2000, kind => 'marketing_support',
                          description => 'Co-branded brochures and a local ad campaign');
SELECT loyalty.set_reward('rw_catalogue', 'FAIR-2026', 'Trade-show place, spring fair', 8000, kind => 'trade_show',
                          stock => 12, valid_from => '2026-01-01', valid_until => '2026-04-01');
SELECT loyalty.set_reward('rw_catalogue', 'TRAIN-SEAT', 'Staff training seat, 2 days', 1500, kind => 'training',
                          stock => 40, per_account_limit => 6, period_limit => 2, limit_period => 'quarter');
SELECT loyalty.set_reward('rw_catalogue', 'SERVICE', 'Service visit', 3000, kind => 'service_visit', min_tier => 'Silver');
SELECT loyalty.set_reward('rw_catalogue', 'WARRANTY', 'Extended warranty, +1 year', 2500, kind => 'extended_warranty');
SELECT loyalty.set_reward('rw_catalogue', 'EXPERT', 'Session with an expert', 4000, kind => 'expert_session', min_tier => 'Gold');
SELECT loyalty.set_reward('rw_catalogue', 'CONSULT', 'Consultancy hour', 1200, kind => 'consultancy', period_limit => 4, limit_period => 'month');
SELECT loyalty.set_reward('rw_catalogue', 'DISC-5', '5 % off the next order', 1000, kind => 'discount');

SELECT reward_id, r.name, points_price, kind, min_tier, stock, per_account_limit, period_limit, limit_period,
       valid_from, valid_until, active
FROM loyalty.reward r JOIN loyalty.program p USING (program_id) WHERE p.name = 'rw_catalogue' ORDER BY reward_id;

-- Called again, set_reward replaces the reward: price, stock, and NULL for
-- what is no longer limited.  Deactivating is how a reward leaves the
-- catalogue.
SELECT loyalty.set_reward('rw_catalogue', 'TRAIN-SEAT', 'Staff training seat, 2 days', 1800, kind => 'training', stock => 20);
SELECT loyalty.set_reward('rw_catalogue', 'DISC-5', '5 % off the next order', 1000, kind => 'discount', active => false);
SELECT reward_id, points_price, stock, per_account_limit, period_limit, active
FROM loyalty.reward r JOIN loyalty.program p USING (program_id)
WHERE p.name = 'rw_catalogue' AND reward_id IN ('TRAIN-SEAT', 'DISC-5') ORDER BY reward_id;

-- What set_reward refuses (sql/errors.sql has every parameter).
SELECT loyalty.set_reward('rw_catalogue', 'X', 'X', 10, min_tier => 'Platinum');
SELECT loyalty.set_reward('rw_catalogue', 'X', 'X', 10, valid_from => '2026-05-01', valid_until => '2026-05-01');
SELECT loyalty.set_reward('rw_catalogue', 'X', 'X', 10, period_limit => 1);
SELECT loyalty.set_reward('rw_catalogue', 'X', 'X', 10, kind => 'holiday');
SELECT count(*) AS not_written FROM loyalty.reward WHERE reward_id = 'X';

--
-- Who may write the catalogue: admins.  Operators redeem; readers read.
--
CREATE ROLE rw_admin IN ROLE loyalty_admin;
CREATE ROLE rw_operator IN ROLE loyalty_operator;
CREATE ROLE rw_reader IN ROLE loyalty_reader;
CREATE ROLE rw_stranger;
GRANT USAGE ON SCHEMA loyalty TO rw_stranger;
SET ROLE rw_admin;
SELECT loyalty.set_reward('rw_catalogue', 'CAP', 'Cap with logo', 300, kind => 'goods');
SET ROLE rw_operator;
SELECT loyalty.set_reward('rw_catalogue', 'CAP', 'Cap with logo', 1, kind => 'goods');
SET ROLE rw_reader;
SELECT loyalty.set_reward('rw_catalogue', 'CAP', 'Cap with logo', 1, kind => 'goods');
SELECT count(*) > 0 AS reader_reads FROM loyalty.reward;
SET ROLE rw_stranger;
SELECT loyalty.set_reward('rw_catalogue', 'CAP', 'Cap with logo', 1, kind => 'goods');
SELECT count(*) FROM loyalty.reward;
RESET ROLE;
SELECT points_price AS cap_price FROM loyalty.reward WHERE reward_id = 'CAP';

-- The definer function takes no caller-defined name: a stranger's own
-- objects that shadow pg_catalog's (a schema first in their search_path with
-- a btrim() and an = of their own) are never called.
CREATE SCHEMA rw_trap AUTHORIZATION rw_admin;
SET ROLE rw_admin;
CREATE FUNCTION rw_trap.btrim(text) RETURNS text LANGUAGE sql AS $$ SELECT 'trapped' $$;
CREATE FUNCTION rw_trap.eq(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR rw_trap.= (FUNCTION = rw_trap.eq, LEFTARG = text, RIGHTARG = text);
SET search_path = rw_trap, pg_catalog;
SELECT loyalty.set_reward('rw_catalogue', 'CAP', 'Cap with logo', 350, kind => 'goods');
RESET search_path;
RESET ROLE;
SELECT reward_id, points_price FROM loyalty.reward r JOIN loyalty.program p USING (program_id)
WHERE p.name = 'rw_catalogue' AND reward_id = 'CAP';
DROP SCHEMA rw_trap CASCADE;

REVOKE USAGE ON SCHEMA loyalty FROM rw_stranger;
DROP ROLE rw_admin, rw_operator, rw_reader, rw_stranger;
