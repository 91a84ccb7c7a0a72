# pg_dump / pg_restore round trip of a database using loyalty.
#
# The loyalty tables belong to the extension; pg_dump keeps their contents
# only because they are registered with pg_extension_config_dump, and it
# recreates the extension with CREATE EXTENSION, which runs before any data
# is loaded.  The accrual triggers on the ERP table are not extension
# members: they come back from the dump as ordinary triggers whose argument
# is an attachment id, so the restored loyalty.attachment must keep the same
# ids and point at the restored ERP table.
#
# The source database has two programs on one ERP table (an auto-enrolment
# program with a tier ladder and a product-line multiplier in a second rule
# version, and an explicit-enrolment program), accruals by INSERT, UPDATE
# and DELETE, a document dated under the first rule version, unenrolled
# activity, tier upgrades, a rejected row, a member and a reward.  It is dumped in custom format
# and restored twice: into a new database of the same cluster, and into a
# fresh cluster where the loyalty roles do not exist yet.  Each restore is
# checked for:
#
#   - pg_dump and pg_restore finish without an error or a warning;
#   - every loyalty table (and the ERP table) has the same rows, row by row;
#   - the balances are the same, and verify() is empty for both programs;
#   - the accrual triggers came back and name the restored attachments;
#   - a new invoice accrues for both programs, an update and a delete of
#     a restored invoice reverse exactly, and verify() stays empty;
#   - identity sequences continue: a new program, attachment, rejected row
#     and tier change get the next ids, without conflicts.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE erp');

$node->safe_psql('erp', q{
CREATE EXTENSION loyalty;
CREATE TABLE erp_inv (id int PRIMARY KEY, customer_id int, inv_date date,
                      amount numeric(12,2), product_line text);

SELECT loyalty.create_program('Club', ladder => 'Member:0, Silver:1000, Gold:5000');
SELECT loyalty.add_rule('Club', '2020-01-01', 1, product_line_multipliers => '{"SOLAR": 2}');
SELECT loyalty.attach('erp_inv', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date', product_line_column => 'product_line');

SELECT loyalty.create_program('Partners', enrollment => 'explicit', points_per_unit => 0.5,
                              rounding => 'half_up');
SELECT loyalty.enroll('Partners', '3', cooperation_model => 'distributor', region => 'North',
                      enrolled_from => '2019-01-01');
SELECT loyalty.enroll('Partners', '5', enrolled_from => '2019-01-01');
SELECT loyalty.attach('erp_inv', 'Partners', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date');
});

$node->safe_psql('erp', q{
INSERT INTO erp_inv
SELECT g, g % 40, current_date - (g * 7) % 400, (g % 90) * 10 + 0.99,
       (ARRAY['SOLAR', 'WIND', NULL])[1 + g % 3]
FROM generate_series(1, 600) g;
INSERT INTO erp_inv VALUES (601, 3, '2019-06-30', 250.00, 'SOLAR');
UPDATE erp_inv SET amount = amount + 100 WHERE id % 10 = 0;
UPDATE erp_inv SET product_line = 'SOLAR' WHERE id % 13 = 0;
DELETE FROM erp_inv WHERE id % 17 = 0;
SELECT loyalty.fold();  -- folded balances and tier upgrades; the rest stays unfolded
INSERT INTO erp_inv VALUES (603, 3, current_date, 75.00, 'WIND');
INSERT INTO erp_inv VALUES (602, NULL, current_date, 50.00, 'SOLAR');
INSERT INTO loyalty.member (program_id, account_key, member_id, name, email, role)
SELECT program_id, '3', 'c-17', 'Ana Silva', 'ana@example.com', 'economic_buyer'
FROM loyalty.program WHERE name = 'Club';
INSERT INTO loyalty.reward (program_id, reward_id, name, points_price, min_tier, stock)
SELECT program_id, 'SLA-GOLD', 'Priority SLA upgrade', 5000, 'Gold', 10
FROM loyalty.program WHERE name = 'Club';
});

# What the source holds.
my @tables = qw(
  public.erp_inv
  loyalty.program loyalty.rule loyalty.attachment loyalty.account loyalty.member
  loyalty.ledger loyalty.balance loyalty.balance_delta loyalty.balance_folded loyalty.accrual_month loyalty.unenrolled_activity
  loyalty.tier_history loyalty.rejected_event loyalty.reward loyalty.redemption
  loyalty.settlement_run);

sub count_and_digest
{
	my ($n, $db, $t) = @_;
	return split /\|/, $n->safe_psql($db,
		"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '-') FROM $t x");
}

sub one_row
{
	my ($n, $db, $sql) = @_;
	return $n->safe_psql($db, $sql);
}

my %src;
for my $t (@tables)
{
	my ($count, $digest) = count_and_digest($node, 'erp', $t);
	$src{$t} = { count => $count, digest => $digest };
}

my $balances_sql = q{
SELECT string_agg(p.name || '/' || b.account_key || '=' || b.points || '/' || b.qualifying,
                  ', ' ORDER BY p.name, b.account_key)
FROM loyalty.balance b JOIN loyalty.program p USING (program_id)};
my $triggers_sql = q{
SELECT string_agg(pg_get_triggerdef(t.oid), E'\n' ORDER BY t.tgname)
FROM pg_trigger t WHERE t.tgrelid = 'erp_inv'::regclass AND NOT t.tgisinternal};
my $src_balances = one_row($node, 'erp', $balances_sql);
my $src_triggers = one_row($node, 'erp', $triggers_sql);
my %src_max;
for (['program_id', 'program'], ['attachment_id', 'attachment'])
{
	my ($col, $table) = @$_;
	$src_max{$col} = one_row($node, 'erp', "SELECT coalesce(max($col), 0) FROM loyalty.$table");
}

# The source is worth dumping: everything the restore must carry is there.
is(one_row($node, 'erp', q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'source: verify(Club) is empty');
is(one_row($node, 'erp', q{SELECT count(*) FROM loyalty.verify('Partners')}), '0', 'source: verify(Partners) is empty');
cmp_ok($src{$_}{count}, '>', 0, "source: $_ has rows ($src{$_}{count})")
  for qw(loyalty.program loyalty.rule loyalty.attachment loyalty.account loyalty.member
  loyalty.ledger loyalty.balance loyalty.accrual_month loyalty.tier_history
  loyalty.rejected_event loyalty.unenrolled_activity loyalty.reward);
is($src{'loyalty.rule'}{count}, 3, 'source: Club has two rule versions, Partners one');
is(one_row($node, 'erp', q{SELECT count(*) FROM loyalty.ledger WHERE kind = 'reverse'}) > 0 ? 1 : 0,
	1, 'source: updates and deletes posted reversals');
is(one_row($node, 'erp', q{
SELECT r.rule_valid_from || '/' || r.points FROM loyalty.explain_points('erp_inv', '601') r
WHERE r.program = 'Club'}),
	'-infinity/250', 'source: the 2019 SOLAR invoice earns by the first rule version, without the multiplier');

# Dump, then restore into a new database of the same cluster.
my $dir = PostgreSQL::Test::Utils::tempdir;
my $dump = "$dir/erp.dump";
$node->command_checks_all(
	[ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('erp') ],
	0, [qr/^$/], [qr/^$/], 'pg_dump -Fc of the source database, no error or warning');

# Everything a restored database must satisfy.
sub check_restored
{
	my ($n, $db, $where) = @_;

	is(one_row($n, $db, q{SELECT extversion FROM pg_extension WHERE extname = 'loyalty'}),
		one_row($n, $db, q{SELECT default_version FROM pg_available_extensions WHERE name = 'loyalty'}),
		"$where: the extension was created by the restore");
	for my $t (@tables)
	{
		my ($count, $digest) = count_and_digest($n, $db, $t);
		is($count, $src{$t}{count}, "$where: $t has $src{$t}{count} rows, as the source");
		is($digest, $src{$t}{digest}, "$where: $t rows are identical to the source");
	}
	is(one_row($n, $db, $balances_sql), $src_balances, "$where: balances equal the source's");
	is(one_row($n, $db, q{SELECT count(*) FROM loyalty.verify('Club')}), '0', "$where: verify(Club) is empty");
	is(one_row($n, $db, q{SELECT count(*) FROM loyalty.verify('Partners')}), '0', "$where: verify(Partners) is empty");

	# The accrual triggers are back and name the restored attachments.
	is(one_row($n, $db, $triggers_sql), $src_triggers, "$where: the triggers on erp_inv are the source's");
	is(one_row($n, $db, q{
SELECT count(*) FROM loyalty.attachment a
WHERE a.detached_at IS NULL AND a.source = 'public.erp_inv'::regclass
  AND (SELECT count(*) FROM pg_trigger t
       WHERE t.tgrelid = a.source AND t.tgfoid = 'loyalty.accrue'::regproc
         AND pg_get_triggerdef(t.oid) LIKE '%loyalty.accrue(''' || a.attachment_id || ''')') = 3}),
		'2', "$where: both attachments resolve to the restored erp_inv and each has its three accrual triggers");

	# A new invoice accrues for both programs (SOLAR doubles in Club).
	my ($club0, $partners0) = split /\|/, one_row($n, $db, q{
SELECT (SELECT points FROM loyalty.balance('Club', '3')), (SELECT points FROM loyalty.balance('Partners', '3'))});
	$n->safe_psql($db, q{INSERT INTO erp_inv VALUES (1001, 3, current_date, 100.00, 'SOLAR')});
	is(one_row($n, $db, q{SELECT points FROM loyalty.balance('Club', '3')}), $club0 + 200,
		"$where: a new SOLAR invoice earns 2 points per unit in Club");
	is(one_row($n, $db, q{SELECT points FROM loyalty.balance('Partners', '3')}), $partners0 + 50,
		"$where: and 0.5 points per unit in Partners");
	is(one_row($n, $db, q{
SELECT r.product_line_multiplier || '/' || r.points FROM loyalty.explain_points('erp_inv', '1001') r
WHERE r.program = 'Club'}), '2/200', "$where: explain_points shows the multiplier of the restored rule");

	# Update and delete invoices accrued before the dump: exact reversals.
	$n->safe_psql($db, q{
UPDATE erp_inv SET amount = amount + 1000 WHERE id IN (3, 83);
DELETE FROM erp_inv WHERE id IN (5, 45);
});
	is(one_row($n, $db, q{SELECT count(*) FROM loyalty.verify('Club')}), '0',
		"$where: verify(Club) is empty after an update and a delete of restored invoices");
	is(one_row($n, $db, q{SELECT count(*) FROM loyalty.verify('Partners')}), '0',
		"$where: verify(Partners) is empty after them");

	# Identity sequences continue where the source stopped.
	is(one_row($n, $db, q{SELECT loyalty.create_program('After restore')}), $src_max{program_id} + 1,
		"$where: a new program gets the next program id");
	$n->safe_psql($db, q{CREATE TABLE erp_inv2 (id int PRIMARY KEY, customer_id int, inv_date date, amount numeric)});
	is(one_row($n, $db, q{
SELECT loyalty.attach('erp_inv2', 'After restore', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'inv_date')}),
		$src_max{attachment_id} + 1, "$where: a new attachment gets the next attachment id");
	$n->safe_psql($db, q{
INSERT INTO erp_inv VALUES (1002, NULL, current_date, 10.00, 'WIND');
INSERT INTO erp_inv VALUES (1003, 77, current_date, 2000.00, 'WIND');
SELECT loyalty.fold();
});
	# dead letters are numbered per transaction (no sequence): the new one,
	# without an account, is filed under '' beside the restored letters
	is(one_row($n, $db, q{
SELECT count(*) FROM loyalty.rejected_event WHERE row_key = '1002' AND account_key = '' AND event_no > 0}),
		one_row($n, $db, q{SELECT count(*) FROM loyalty.attachment WHERE source = 'erp_inv'::regclass AND detached_at IS NULL}),
		"$where: a new rejected row is parked once per program, filed under ''");
	is(one_row($n, $db, q{SELECT count(*) FROM loyalty.rejected_event}), $src{'loyalty.rejected_event'}{count} +
		one_row($n, $db, q{SELECT count(*) FROM loyalty.rejected_event WHERE row_key = '1002'}),
		"$where: the restored letters are all there beside it");
	# tier changes are numbered per account (no sequence): the new account's first is 1
	is(one_row($n, $db, q{SELECT string_agg(change_no::text, ',') FROM loyalty.tier_history WHERE account_key = '77'}),
		'1', "$where: a new tier upgrade gets the account's first change number");
	is(one_row($n, $db, q{SELECT count(*) FROM loyalty.verify('Club')}), '0',
		"$where: verify(Club) is empty at the end");
}

$node->safe_psql('postgres', 'CREATE DATABASE erp_restored');
$node->command_checks_all(
	[ 'pg_restore', '--exit-on-error', '-d', $node->connstr('erp_restored'), $dump ],
	0, [qr/^$/], [qr/^$/], 'pg_restore into a new database, no error or warning');
check_restored($node, 'erp_restored', 'same cluster');

# The source is untouched by what was done to the copy.
for my $t (@tables)
{
	my ($count, $digest) = count_and_digest($node, 'erp', $t);
	is($digest, $src{$t}{digest}, "source: $t unchanged by the work on the restored copy");
}

# A fresh cluster: CREATE EXTENSION from the dump creates the roles too.
my $fresh = PostgreSQL::Test::Cluster->new('fresh');
$fresh->init;
$fresh->start;
is($fresh->safe_psql('postgres', q{SELECT count(*) FROM pg_roles WHERE rolname LIKE 'loyalty\_%'}),
	'0', 'fresh cluster: no loyalty roles yet');
$fresh->safe_psql('postgres', 'CREATE DATABASE erp');
$fresh->command_checks_all(
	[ 'pg_restore', '--exit-on-error', '-d', $fresh->connstr('erp'), $dump ],
	0, [qr/^$/], [qr/^$/], 'pg_restore into a fresh cluster, no error or warning');
check_restored($fresh, 'erp', 'fresh cluster');

$fresh->stop;
$node->stop;
done_testing();
