# The upgrade chain: 1.0 as released, then ALTER EXTENSION loyalty UPDATE,
# must give the same catalog as a fresh install of the current version, and
# the data accrued under 1.0 must go on accruing and verifying.
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
isnt($current, '1.0', "the current version ($current) is not the frozen 1.0");

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('fresh', 'CREATE EXTENSION loyalty');

# 1.0 with data: a program, an attachment, accruals, a credit note
$node->safe_psql('upgraded', q{
CREATE EXTENSION loyalty VERSION '1.0';
CREATE TABLE inv (id int PRIMARY KEY, customer_id int, inv_date date, amount numeric(12,2));
SELECT loyalty.create_program('Club', ladder => 'Member:0, Silver:1000');
SELECT loyalty.attach('inv', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date');
INSERT INTO inv SELECT g, g % 7, date '2026-01-01' + g, 100 + g FROM generate_series(1, 50) g;
INSERT INTO inv VALUES (51, 3, date '2026-03-01', -75);
});
is($node->safe_psql('upgraded',
	q{SELECT extversion FROM pg_extension WHERE extname = 'loyalty'}), '1.0', 'installed 1.0');

$node->safe_psql('upgraded', 'ALTER EXTENSION loyalty UPDATE');
is($node->safe_psql('upgraded',
	q{SELECT extversion FROM pg_extension WHERE extname = 'loyalty'}), $current, "updated to $current");

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
    SELECT 'config_dump ' || x.extconfig::regclass[]::text || ' ' || coalesce(x.extcondition::text, '-')
    FROM pg_extension x WHERE x.extname = 'loyalty'
) s ORDER BY line COLLATE "C"
};

my $fresh = $node->safe_psql('fresh', $catalog);
my $upgraded = $node->safe_psql('upgraded', $catalog);
cmp_ok(length($fresh), '>', 1000, 'the catalog description is not empty');
if ($fresh eq $upgraded)
{
	pass('1.0 + upgrade script gives the same catalog as a fresh install');
}
else
{
	my %f = map { $_ => 1 } split /\n/, $fresh;
	my %u = map { $_ => 1 } split /\n/, $upgraded;
	diag("only in the fresh install:\n  " . join("\n  ", grep { !$u{$_} } sort keys %f));
	diag("only after the upgrade:\n  " . join("\n  ", grep { !$f{$_} } sort keys %u));
	fail('1.0 + upgrade script gives the same catalog as a fresh install');
}

# the data of 1.0 accrues and verifies on
$node->safe_psql('upgraded', q{
INSERT INTO inv SELECT g, g % 7, date '2026-04-01' + g, 10 + g FROM generate_series(52, 80) g;
UPDATE inv SET amount = amount * 2 WHERE id % 5 = 0;
DELETE FROM inv WHERE id % 11 = 0;
});
is($node->safe_psql('upgraded', q{SELECT count(*) FROM loyalty.verify('Club')}), '0',
	'verify() is empty after accruing on upgraded data');
is($node->safe_psql('upgraded', q{
	SELECT sum(b.points) = (SELECT sum(floor(amount)) FROM inv)
	FROM loyalty.balance b}), 't', 'balances equal the invoices, summed independently');

done_testing();
