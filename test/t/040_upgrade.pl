# The upgrade chain: 1.0 and 1.1 as released, each with data, then ALTER
# EXTENSION loyalty UPDATE, must give the same catalog as a fresh install of
# the current version, and the data accrued under the old version must go on
# accruing, settling, redeeming and verifying.  From 1.0, PostgreSQL chains
# loyalty--1.0--1.1.sql and loyalty--1.1--1.2.sql in the one ALTER
# EXTENSION; from 1.1 it runs the second alone.
#
# The catalog is compared as text: every object that belongs to the
# extension, with its definition, owner-independent privileges, comment,
# configuration (search_path, SECURITY DEFINER) and, for tables, columns,
# constraints, indexes and triggers.  A change to src/sql/ without its
# counterpart in the upgrade script (or the reverse) shows up as a diff.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->start;

my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'loyalty'});
# A new version adds its predecessor to the versions installed below.
is($current, '1.2', "the current version is 1.2");

# the update from 1.0 is the chain through 1.1, not a script of its own
is($node->safe_psql('postgres', qq{
	SELECT string_agg(source || ': ' || path, ', ' ORDER BY source) FROM pg_extension_update_paths('loyalty')
	WHERE target = '$current' AND path IS NOT NULL}),
	"1.0: 1.0--1.1--$current, 1.1: 1.1--$current",
	"1.0 and 1.1 update to $current, 1.0 through 1.1");

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION loyalty');

# Everything that describes the extension's objects, one line each.
my $catalog = q{
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'loyalty'),
members AS (
    SELECT d.classid, d.objid, d.objsubid
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e')
SELECT line FROM (
    SELECT 'object ' || pg_describe_object(classid, objid, objsubid) AS line FROM members
  UNION ALL
    SELECT 'function ' || p.oid::regprocedure || ' ' || pg_get_functiondef(p.oid)
           || ' acl=' || coalesce(p.proacl::text, '-') || ' definer=' || p.prosecdef
           || ' config=' || coalesce(p.proconfig::text, '-')
           || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    WHERE p.prokind IN ('f', 'p')
  UNION ALL
    SELECT 'aggregate ' || p.oid::regprocedure || ' acl=' || coalesce(p.proacl::text, '-')
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    WHERE p.prokind = 'a'
  UNION ALL
    SELECT 'relation ' || c.oid::regclass || ' kind=' || c.relkind::text || ' acl=' || coalesce(c.relacl::text, '-')
           || ' rls=' || c.relrowsecurity || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
           || CASE WHEN c.relkind = 'v' THEN ' ' || pg_get_viewdef(c.oid) ELSE '' END
    FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
  UNION ALL
    SELECT 'column ' || c.oid::regclass || '.' || a.attname || ' #' || a.attnum || ' '
           || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
           || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
           || ' identity=' || a.attidentity::text || ' acl=' || coalesce(a.attacl::text, '-')
           || ' comment=' || coalesce(col_description(c.oid, a.attnum), '-')
    FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
  UNION ALL
    SELECT 'constraint ' || co.conrelid::regclass || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
    FROM pg_constraint co JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = co.conrelid
  UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = i.indrelid
  UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = t.tgrelid
    WHERE NOT t.tgisinternal
  UNION ALL
    SELECT 'policy ' || pol.polrelid::regclass || ' ' || pol.polname || ' ' || pol.polcmd::text
           || ' ' || coalesce(pg_get_expr(pol.polqual, pol.polrelid), '-')
           || ' ' || coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid), '-')
    FROM pg_policy pol JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = pol.polrelid
  UNION ALL
    SELECT 'type ' || t.oid::regtype || ' comment=' || coalesce(obj_description(t.oid, 'pg_type'), '-')
    FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
  UNION ALL
    SELECT 'enum ' || e.enumtypid::regtype || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
    FROM pg_enum e JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = e.enumtypid
    GROUP BY e.enumtypid
  UNION ALL
    -- one line per table registered for pg_dump, with its condition (the
    -- order of registration is that of the scripts, and means nothing)
    SELECT 'config_dump ' || c.tab::regclass::text || ' ' || coalesce(quote_literal(c.cond), '-')
    FROM pg_extension x, unnest(x.extconfig, x.extcondition) AS c(tab, cond) WHERE x.extname = 'loyalty'
) s ORDER BY line COLLATE "C"
};

my $fresh = $node->safe_psql('fresh', $catalog);
cmp_ok(length($fresh), '>', 1000, 'the catalog description is not empty');

my %old_letters;

# Installs $version in a new database $db with configuration and ERP data.
# Only the current version's library is installed, and it refuses to run
# against an older version's SQL objects, so the invoices of the old days
# are written with the triggers off and accrued by backfill() after the
# update.
sub install_old
{
	my ($db, $version) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, qq{
CREATE EXTENSION loyalty VERSION '$version';
CREATE TABLE inv (id int PRIMARY KEY, customer_id int, inv_date date, amount numeric(12,2));
SELECT loyalty.create_program('Club', ladder => 'Member:0, Silver:1000');
SELECT loyalty.attach('inv', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date');
-- a program without tiers on the same invoices (settled after the update)
SELECT loyalty.create_program('Plain');
SELECT loyalty.attach('inv', 'Plain', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date');
CREATE TABLE hdr (id int PRIMARY KEY, customer_id int, inv_date date);
CREATE TABLE line (hdr_id int, line_no int, amount numeric(12,2), PRIMARY KEY (hdr_id, line_no));
SELECT loyalty.attach('line', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date', header => 'hdr', header_key_column => 'hdr_id');
SET session_replication_role = replica;
INSERT INTO inv SELECT g, g % 7, date '2026-01-01' + g, 100 + g FROM generate_series(1, 50) g;
INSERT INTO inv VALUES (51, 3, date '2026-03-01', -75);
INSERT INTO hdr SELECT g, g % 5, date '2026-02-01' + g FROM generate_series(1, 10) g;
INSERT INTO line SELECT g, l, 10 * l FROM generate_series(1, 10) g, generate_series(1, 3) l;
-- dead letters as the old version's trigger parked them: invoice 90 (no
-- amount) in both programs, one without an account that a DBA marked
-- handled, one under an account key too long to index
INSERT INTO inv VALUES (90, 2, date '2026-01-15', NULL);
INSERT INTO loyalty.rejected_event (program_id, attachment_id, row_key, account_key, reason, row_data)
SELECT a.program_id, a.attachment_id, '90', '2', 'amount is NULL', row_to_json(i)::jsonb
  FROM loyalty.attachment a, inv i WHERE a.source = 'inv'::regclass AND i.id = 90 ORDER BY a.attachment_id;
INSERT INTO loyalty.rejected_event (program_id, attachment_id, row_key, account_key, reason, resolved_at)
SELECT a.program_id, a.attachment_id, '95', NULL, 'account is NULL', '2026-02-01 12:00+00'
  FROM loyalty.attachment a WHERE a.source = 'inv'::regclass ORDER BY a.attachment_id LIMIT 1;
INSERT INTO loyalty.rejected_event (program_id, attachment_id, row_key, account_key, reason)
SELECT a.program_id, a.attachment_id, '96', repeat('x', 1500), 'account key is longer than 1024 bytes'
  FROM loyalty.attachment a WHERE a.source = 'inv'::regclass ORDER BY a.attachment_id LIMIT 1;
});
	$old_letters{$db} = $node->safe_psql($db, q{
SELECT string_agg(event_id || ':' || program_id || ':' || row_key || ':' || coalesce(resolved_at::text, '-'), ',' ORDER BY event_id)
  FROM loyalty.rejected_event});
	is($node->safe_psql($db,
		q{SELECT extversion FROM pg_extension WHERE extname = 'loyalty'}), $version, "$db: installed $version");

	my ($rc, $out, $err) = $node->psql($db, q{INSERT INTO inv VALUES (99, 1, '2026-01-02', 10)});
	like($err, qr/loyalty's library is version \Q$current\E, but this database has loyalty \Q$version\E.*\n.*\n?HINT:\s+Run ALTER EXTENSION loyalty UPDATE/s,
		"$db: before the update, the $current library refuses the $version objects with a clear error");
}

# Updates $db, compares its catalog with the fresh install's, and checks
# that its data accrues, settles, redeems and verifies.
sub update_and_check
{
	my ($db, $version) = @_;
	$node->safe_psql($db, 'ALTER EXTENSION loyalty UPDATE');
	is($node->safe_psql($db,
		q{SELECT extversion FROM pg_extension WHERE extname = 'loyalty'}), $current, "$db: updated to $current");

	my $upgraded = $node->safe_psql($db, $catalog);
	if ($fresh eq $upgraded)
	{
		pass("$db: $version + upgrade gives the same catalog as a fresh $current install");
	}
	else
	{
		my %f = map { $_ => 1 } split /\n/, $fresh;
		my %u = map { $_ => 1 } split /\n/, $upgraded;
		diag("only in the fresh install:\n  " . join("\n  ", grep { !$u{$_} } sort keys %f));
		diag("only after the upgrade:\n  " . join("\n  ", grep { !$f{$_} } sort keys %u));
		fail("$db: $version + upgrade gives the same catalog as a fresh $current install");
	}

	# the old version's dead letters survive the update, each filed under
	# its account ('' for none, a key too long to index shortened as the
	# accrual shortens it), numbered by its former event_id under
	# rejected_xid 0; the new accrual settles them by their rows and files
	# new ones beside them
	is($node->safe_psql($db, q{
SELECT string_agg(event_no || ':' || program_id || ':' || row_key || ':' || coalesce(resolved_at::text, '-'), ',' ORDER BY event_no)
  FROM loyalty.rejected_event WHERE rejected_xid = '0'}), $old_letters{$db},
		"$db: the dead letters keep their rows, numbers and resolution");
	is($node->safe_psql($db, q{
SELECT string_agg(row_key || '=' || CASE WHEN row_key = '96'
                                         THEN (account_key = repeat('x', 960) || '... (md5 ' || md5(repeat('x', 1500)) || ')')::text
                                         ELSE quote_literal(account_key) END, ',' ORDER BY event_no)
  FROM loyalty.rejected_event}), "90='2',90='2',95='',96=true",
		"$db: each is filed under its account, '' for none, a long key shortened");
	$node->safe_psql($db, q{
DELETE FROM inv WHERE id = 90;
INSERT INTO inv VALUES (91, NULL, date '2026-01-16', 5);
});
	is($node->safe_psql($db, q{
SELECT string_agg(row_key || ':' || account_key || ':' || (rejected_xid = '0') || ':' || (resolved_at IS NOT NULL), ','
                  ORDER BY row_key, program_id)
  FROM loyalty.rejected_event WHERE row_key IN ('90', '91')}), '90:2:true:true,90:2:true:true,91::false:false,91::false:false',
		"$db: deleting the parked invoice settles its old letters; a new rejection is filed beside them");
	$node->safe_psql($db, q{DELETE FROM inv WHERE id = 91});
	is($node->safe_psql($db, q{SELECT count(*) FROM loyalty.rejected_event WHERE resolved_at IS NULL}), '1',
		"$db: only the letter of the long key is still open");

	# the data of the old version accrues (backfill), and accrues and verifies on
	$node->safe_psql($db, q{
SELECT loyalty.backfill('inv', 'Club', '-infinity');
SELECT loyalty.backfill('line', 'Club', '-infinity');
SELECT loyalty.backfill('inv', 'Plain', '-infinity');
INSERT INTO inv SELECT g, g % 7, date '2026-04-01' + g, 10 + g FROM generate_series(52, 80) g;
UPDATE inv SET amount = amount * 2 WHERE id % 5 = 0;
DELETE FROM inv WHERE id % 11 = 0;
UPDATE hdr SET customer_id = 9 WHERE id <= 3;
INSERT INTO line VALUES (11, 1, 500);
INSERT INTO hdr VALUES (11, 4, '2026-05-01');
});
	is($node->safe_psql($db, q{SELECT count(*) FROM loyalty.verify('Club')}), '0',
		"$db: verify() is empty after accruing on upgraded data");
	is($node->safe_psql($db, q{
		SELECT (SELECT sum(b.points) FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'Club')
		     = (SELECT sum(trunc(amount)) FROM inv) + (SELECT sum(trunc(amount)) FROM line)}), 't',
		"$db: balances equal the invoices and lines, summed independently");
	is($node->safe_psql($db, q{
		SELECT count(*) FROM pg_trigger WHERE tgrelid = 'hdr'::regclass AND tgname LIKE 'loyalty_accrual_%_header_ins'}),
		'1', "$db: the header attachment has the header-insert trigger (1.0's gains it in the update)");

	# the upgraded program without tiers settles a period, and redeems (the
	# tiered one cannot settle the periods its backfill replayed)
	$node->safe_psql($db, q{
SELECT loyalty.settle('Plain', '2026-03-31');
SELECT loyalty.set_reward('Plain', 'MUG', 'Mug', 50, kind => 'goods');
SELECT loyalty.redeem('Plain', '3', 'MUG');
});
	is($node->safe_psql($db, q{
		SELECT (SELECT count(*) FROM loyalty.settlement_run) || ' run, '
		    || (SELECT count(*) FROM loyalty.settlement_account s
		         WHERE s.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Plain')
		           AND s.account_key IN (SELECT DISTINCT customer_id::text FROM inv WHERE inv_date <= '2026-03-31'))
		    || ' accounts with invoices settled, ' || (SELECT count(*) FROM loyalty.redemption) || ' redemption'}),
		'1 run, ' . $node->safe_psql($db, q{SELECT count(DISTINCT customer_id) FROM inv WHERE inv_date <= '2026-03-31'})
		  . ' accounts with invoices settled, 1 redemption',
		"$db: the upgraded program settles a period and redeems");
	is($node->safe_psql($db, q{SELECT count(*) FROM loyalty.verify('Plain')}) . ' '
		 . $node->safe_psql($db, q{SELECT count(*) FROM loyalty.verify('Club')}), '0 0',
		"$db: verify() is empty after the settlement and the redemption");
	is($node->safe_psql($db, q{
		SELECT (SELECT sum(b.points) FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'Plain')
		     = (SELECT sum(trunc(amount)) FROM inv) - 50}), 't',
		"$db: its balances equal the invoices less the redemption, summed independently");

	# 1.0 called rounding toward zero 'floor': the update renames the stored
	# mode, and explain_points shows the new name (1.1 stored the new name).
	is($node->safe_psql($db, q{SELECT string_agg(DISTINCT rounding, ',') FROM loyalty.program}),
		'toward_zero', "$db: the program's rounding is 'toward_zero' after the update");
	is($node->safe_psql($db, q{SELECT string_agg(DISTINCT rounding, ',') FROM loyalty.explain_points('inv', 1)}),
		'toward_zero', "$db: explain_points names the rounding toward_zero");
}

install_old('from_1_0', '1.0');
install_old('from_1_1', '1.1');
update_and_check('from_1_0', '1.0');
update_and_check('from_1_1', '1.1');
done_testing();
