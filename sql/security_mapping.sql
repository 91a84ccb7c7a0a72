--
-- security_mapping: nothing an ERP role or a loyalty role defines ever runs
-- with the extension owner's rights.
--
-- A mapping expression is SQL the trigger turns into an executor
-- expression.  Parse analysis runs type input functions, the planner folds
-- immutable functions with constant arguments and inlines SQL functions and
-- casts, the header look-up runs the key type's equality: all of it is code
-- the ERP's roles or loyalty_admin can define.  Every route below plants
-- such code; each trap records who ran it (current_user, session_user,
-- superuser or not) into a table the attacker owns, and tries to make its
-- author a superuser.  The suite runs as the bootstrap superuser, who owns
-- the extension: no trap may ever have run as that role.
--
-- (Writes into an attached table are made by the ERP's roles, never by the
-- superuser: like any trigger, the accrual runs the table's mapping as the
-- role that writes the rows.)
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';

-- The cast: an ERP table owner in no loyalty role, a loyalty_admin member,
-- a loyalty_operator member, and the ERP's writer who owns nothing.
CREATE ROLE sec_erp_owner NOLOGIN;
CREATE ROLE sec_admin NOLOGIN IN ROLE loyalty_admin;
CREATE ROLE sec_operator NOLOGIN IN ROLE loyalty_operator;
CREATE ROLE sec_writer NOLOGIN;
CREATE ROLE sec_writer2 NOLOGIN;

-- The attackers' schema and their log.
CREATE SCHEMA sec_mal AUTHORIZATION sec_erp_owner;
GRANT USAGE ON SCHEMA sec_mal TO PUBLIC;
GRANT CREATE ON SCHEMA sec_mal TO sec_admin;
SET ROLE sec_erp_owner;
CREATE TABLE sec_mal.log (route text, ran_as name, session_as name, ran_as_superuser boolean,
                          could_read_server_files boolean);
GRANT INSERT, SELECT ON sec_mal.log TO PUBLIC;
-- The payload: note who runs it, then try to make the attacker superuser.
CREATE FUNCTION sec_mal.payload(route text, attacker name) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO sec_mal.log
    SELECT route, current_user, session_user, r.rolsuper,
           pg_has_role(current_user, 'pg_read_server_files', 'MEMBER')
    FROM pg_roles r WHERE r.rolname = current_user;
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', attacker);
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
END
$$;
-- Traps that planning runs: immutable, so that a call with constant
-- arguments is folded while the expression is planned.
CREATE FUNCTION sec_mal.trap(route text, attacker name) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM sec_mal.payload(route, attacker);
    RETURN 1;
END
$$;
CREATE FUNCTION sec_mal.trap_bool(route text, attacker name) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM sec_mal.payload(route, attacker);
    RETURN true;
END
$$;
RESET ROLE;

--
-- 1. The ERP table's owner, in no loyalty role
--

-- The ERP owner's invoices; the DBA attaches them, the ERP's writer writes.
CREATE SCHEMA sec_erp AUTHORIZATION sec_erp_owner;
GRANT USAGE ON SCHEMA sec_erp TO sec_writer, sec_writer2, sec_admin;
SET ROLE sec_erp_owner;
CREATE TABLE sec_erp.invoice (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                              invoice_date date NOT NULL);
GRANT INSERT, UPDATE, DELETE, SELECT ON sec_erp.invoice TO sec_writer, sec_writer2;
-- A type with I/O functions of its own (an enum) and a cast to text,
-- written in SQL so that the planner inlines it and folds the trap.
CREATE TYPE sec_mal.customer AS ENUM ('7', '8', '9');
CREATE FUNCTION sec_mal.customer_text(c sec_mal.customer) RETURNS text
LANGUAGE sql STABLE
RETURN CASE WHEN sec_mal.trap('cast to text', 'sec_erp_owner') > 0 THEN pg_catalog.textin(pg_catalog.enum_out(c)) END;
CREATE CAST (sec_mal.customer AS text) WITH FUNCTION sec_mal.customer_text(sec_mal.customer);
RESET ROLE;
SELECT loyalty.create_program('security_club') > 0 AS created;

-- attach refuses such a type as an account key ...
CREATE TABLE sec_erp.typed_invoice (id int PRIMARY KEY, customer sec_mal.customer, amount numeric,
                                    invoice_date date);
SELECT loyalty.attach('sec_erp.typed_invoice', 'security_club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'invoice_date');
-- ... so the owner changes the column's type after the table was attached.
SELECT loyalty.attach('sec_erp.invoice', 'security_club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
SET ROLE sec_erp_owner;
ALTER TABLE sec_erp.invoice ALTER COLUMN customer_id TYPE sec_mal.customer
    USING customer_id::text::sec_mal.customer;
-- A default and an index expression of the owner's, and a trigger of the
-- owner's that fires in the same statement as ours.
CREATE FUNCTION sec_mal.default_amount() RETURNS numeric LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM sec_mal.payload('default', 'sec_erp_owner');
    RETURN 0;
END
$$;
ALTER TABLE sec_erp.invoice ALTER COLUMN amount SET DEFAULT sec_mal.default_amount();
CREATE INDEX ON sec_erp.invoice ((id::numeric + sec_mal.trap('index expression', 'sec_erp_owner')));
CREATE FUNCTION sec_mal.on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sec_mal.payload('trigger of the table owner', 'sec_erp_owner');
    RETURN NULL;
END
$$;
CREATE TRIGGER sec_on_insert AFTER INSERT ON sec_erp.invoice FOR EACH STATEMENT EXECUTE FUNCTION sec_mal.on_insert();
RESET ROLE;

-- The ERP's writer invoices: the accrual builds the mapping for it, and the
-- cast runs as the writer.
SET ROLE sec_writer;
INSERT INTO sec_erp.invoice (id, customer_id, amount, invoice_date) VALUES (1, '7', 100.00, '2024-03-01');
INSERT INTO sec_erp.invoice (id, customer_id, invoice_date) VALUES (2, '8', '2024-03-02');
RESET ROLE;
SELECT account_key, points FROM loyalty.balance
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'security_club') ORDER BY 1;

-- Lines whose customer is on the header.  The header look-up is prepared and
-- run as the writer: the owner's row-level security policy (with a trap)
-- and its index expressions apply to, and run as, the writer, who needs
-- SELECT on the header as for a query of its own.
SET ROLE sec_erp_owner;
CREATE TABLE sec_erp.order_header (id int PRIMARY KEY, customer_id int NOT NULL, order_date date NOT NULL);
CREATE INDEX ON sec_erp.order_header ((id::numeric * sec_mal.trap('header index expression', 'sec_erp_owner')));
CREATE TABLE sec_erp.order_line (order_id int, line_no int, amount numeric(12,2), PRIMARY KEY (order_id, line_no));
GRANT INSERT, SELECT ON sec_erp.order_header, sec_erp.order_line TO sec_writer;
GRANT INSERT ON sec_erp.order_header, sec_erp.order_line TO sec_writer2;
ALTER TABLE sec_erp.order_header ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible ON sec_erp.order_header FOR SELECT
    USING (sec_mal.trap_bool('row-level security policy', 'sec_erp_owner') AND customer_id <> 8);
CREATE POLICY writable ON sec_erp.order_header FOR INSERT WITH CHECK (true);
RESET ROLE;
SELECT loyalty.attach('sec_erp.order_line', 'security_club', header => 'sec_erp.order_header',
                      line_header_column => 'order_id', account_column => 'customer_id',
                      date_column => 'order_date', amount_column => 'amount') > 0 AS attached;
SET ROLE sec_writer;
INSERT INTO sec_erp.order_header VALUES (1, 7, '2024-04-01'), (2, 8, '2024-04-01');
INSERT INTO sec_erp.order_line VALUES (1, 1, 10.00), (2, 1, 30.00);
RESET ROLE;
-- Customer 7 earns 10 more; the line of the header the writer may not see
-- is parked, as its own query would not find the header either.
SELECT account_key, points FROM loyalty.balance
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'security_club') ORDER BY 1;
SELECT row_key, reason FROM loyalty.rejected_event
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'security_club') ORDER BY 1;
-- A writer without SELECT on the header is told what to grant.
SET ROLE sec_writer2;
INSERT INTO sec_erp.order_line VALUES (1, 2, 5.00);
RESET ROLE;

--
-- 2. A member of loyalty_admin, through attach()
--

CREATE SCHEMA sec_adm AUTHORIZATION sec_admin;
GRANT USAGE ON SCHEMA sec_adm TO sec_writer, sec_writer2, sec_operator;
SET ROLE sec_admin;
CREATE TABLE sec_adm.invoice (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                              invoice_date date NOT NULL);
GRANT INSERT, SELECT ON sec_adm.invoice TO sec_writer, sec_writer2;
-- The routes attach refuses, tried on a table of their own.
CREATE TABLE sec_adm.scratch (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                              invoice_date date NOT NULL);
GRANT INSERT, SELECT ON sec_adm.scratch TO sec_writer;
-- A function in the session's temporary schema, immutable so that it is
-- folded: refused, temporary objects vanish with the session.
CREATE FUNCTION pg_temp.f() RETURNS numeric LANGUAGE sql IMMUTABLE
RETURN sec_mal.trap('pg_temp function', 'sec_admin');
SELECT loyalty.attach('sec_adm.scratch', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_expression => 'amount * pg_temp.f()');
-- The payload itself: volatile, refused.
SELECT loyalty.attach('sec_adm.scratch', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date',
                      amount_expression => 'amount + (sec_mal.payload(''volatile'', ''sec_admin'') IS NULL)::int');
-- A second statement, and a sub-select: refused, and neither ran.
SELECT loyalty.attach('sec_adm.scratch', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date',
                      amount_expression => 'amount; SELECT sec_mal.payload(''second statement'', ''sec_admin'')');
SELECT loyalty.attach('sec_adm.scratch', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date',
                      amount_expression => '(SELECT 1 FROM sec_mal.log WHERE sec_mal.trap_bool(''sub-select'', ''sec_admin''))');
SELECT loyalty.attach('sec_adm.scratch', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date',
                      amount_expression => 'amount) FROM sec_adm.invoice s; SELECT sec_mal.payload(''injection'', ''sec_admin''); SELECT (1');
-- Nothing was attached: the writer's insert runs nothing of the admin's.
RESET ROLE;
SET ROLE sec_writer;
INSERT INTO sec_adm.scratch VALUES (1, 7, 50.00, '2024-03-03');
RESET ROLE;
SET ROLE sec_admin;

-- An operator, an immutable function with constant arguments, an inlinable
-- SQL function and a domain with a CHECK: deterministic, so attach accepts
-- them, and at every insert they run as the role that inserts.
CREATE FUNCTION sec_mal.plus(a numeric, b numeric) RETURNS numeric LANGUAGE sql IMMUTABLE
RETURN a + b * 0 * sec_mal.trap('operator', 'sec_admin');
CREATE OPERATOR sec_mal.#*# (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = sec_mal.plus);
CREATE FUNCTION sec_mal.inline(x numeric) RETURNS numeric LANGUAGE sql IMMUTABLE
RETURN x * sec_mal.trap('inlined SQL function', 'sec_admin');
CREATE DOMAIN sec_mal.factor AS numeric CHECK (sec_mal.trap_bool('domain check', 'sec_admin'));
SELECT loyalty.attach('sec_adm.invoice', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date',
                      amount_expression => 'sec_mal.inline(amount) * (1 OPERATOR(sec_mal.#*#) 0)'
                                           ' * sec_mal.trap(''constant folding'', ''sec_admin'')'
                                           ' * ''1''::sec_mal.factor') > 0 AS attached;
-- Stored canonical, every name qualified.
SELECT amount_expr FROM loyalty.attachment a JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'security_club' AND a.source = 'sec_adm.invoice'::regclass AND a.detached_at IS NULL;
RESET ROLE;
SET ROLE sec_writer;
INSERT INTO sec_adm.invoice VALUES (1, 7, 50.00, '2024-03-03');
RESET ROLE;

-- The stored text changed behind attach's back (loyalty_admin may not be
-- able to UPDATE loyalty.attachment; any text is parsed and run as the
-- role that writes, all the same).
UPDATE loyalty.attachment SET amount_expr = '(s.amount * sec_mal.trap(''stored text changed'', ''sec_admin''))'
 WHERE source = 'sec_adm.invoice'::regclass AND detached_at IS NULL;
SET ROLE sec_writer;
INSERT INTO sec_adm.invoice VALUES (2, 7, 20.00, '2024-03-04');
RESET ROLE;
-- A text that is not one expression fails the ERP write with what to do,
-- and runs nothing.
UPDATE loyalty.attachment
   SET amount_expr = 's.amount FROM pg_catalog.pg_authid a WHERE sec_mal.trap_bool(''stored injection'', ''sec_admin'')'
 WHERE source = 'sec_adm.invoice'::regclass AND detached_at IS NULL;
SET ROLE sec_writer;
INSERT INTO sec_adm.invoice VALUES (3, 7, 20.00, '2024-03-05');
RESET ROLE;
UPDATE loyalty.attachment SET amount_expr = 's.amount'
 WHERE source = 'sec_adm.invoice'::regclass AND detached_at IS NULL;

--
-- 3. A member of loyalty_operator
--

SET ROLE sec_operator;
SELECT loyalty.attach('sec_adm.invoice', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_column => 'amount');
UPDATE loyalty.attachment SET amount_expr = 's.amount * 2';
RESET ROLE;

--
-- 4. attach() needs TRIGGER and SELECT on the tables, as its caller
--

-- sec_admin may not attach a table it cannot put a trigger on.
SET ROLE sec_admin;
SELECT loyalty.detach('sec_adm.invoice', 'security_club');
SELECT loyalty.attach('sec_erp.invoice', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_column => 'amount');
RESET ROLE;
SET ROLE sec_erp_owner;
GRANT TRIGGER ON sec_erp.invoice TO sec_admin;
RESET ROLE;
SET ROLE sec_admin;
SELECT loyalty.attach('sec_erp.invoice', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_column => 'amount');
RESET ROLE;

--
-- 5. Expressions are built for the role that writes, per role
--

-- A price function only sec_writer may execute.  The mapping built for
-- sec_writer is not used for sec_writer2: its insert is refused.
CREATE FUNCTION sec_adm.net(amount numeric) RETURNS numeric LANGUAGE sql IMMUTABLE RETURN amount * 0.5;
REVOKE EXECUTE ON FUNCTION sec_adm.net(numeric) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sec_adm.net(numeric) TO sec_writer;
ALTER FUNCTION sec_adm.net(numeric) OWNER TO sec_admin;
SET ROLE sec_admin;
SELECT loyalty.attach('sec_adm.invoice', 'security_club', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_expression => 'sec_adm.net(amount)') > 0 AS attached;
RESET ROLE;
SET ROLE sec_writer;
INSERT INTO sec_adm.invoice VALUES (10, 9, 40.00, '2024-03-06');
RESET ROLE;
SET ROLE sec_writer2;
INSERT INTO sec_adm.invoice VALUES (11, 9, 40.00, '2024-03-06');
RESET ROLE;
SET ROLE sec_writer;
INSERT INTO sec_adm.invoice VALUES (12, 9, 40.00, '2024-03-07');
RESET ROLE;
-- 20 + 20 points: sec_writer's two invoices at half their amount.
SELECT points FROM loyalty.balance('security_club', '9');

--
-- The verdict
--

-- Every trap that ran, and as whom: never the extension owner, never a
-- superuser, never a role that may read the server's files.
SELECT DISTINCT route, ran_as, ran_as_superuser, could_read_server_files
  FROM sec_mal.log ORDER BY 1, 2;
SELECT count(*) AS ran_as_owner FROM sec_mal.log l, pg_extension e
 WHERE e.extname = 'loyalty' AND l.ran_as = e.extowner::regrole::name;
-- No attacker became superuser.
SELECT rolname, rolsuper FROM pg_roles WHERE rolname LIKE 'sec\_%' ORDER BY 1;

-- Cleanup.
SELECT loyalty.detach('sec_erp.invoice', 'security_club');
SELECT loyalty.detach('sec_erp.order_line', 'security_club');
SELECT loyalty.detach('sec_adm.invoice', 'security_club');
DROP SCHEMA sec_adm CASCADE;
DROP SCHEMA sec_erp CASCADE;
DROP SCHEMA sec_mal CASCADE;
DROP OWNED BY sec_erp_owner, sec_admin, sec_operator, sec_writer, sec_writer2;
DROP ROLE sec_erp_owner, sec_admin, sec_operator, sec_writer, sec_writer2;
