# pg_dump / pg_restore of a database that uses what loyalty 1.1 added:
# settlement runs (with their per-account rows, tier changes, rebate lines
# and postings, MDF accruals), a rebate agreement, a tier grant and
# benefits, rewards and redemptions (one cancelled), action rules and
# awards (approved, pending, rejected, one by a member), members and their
# points, MDF claims (approved, pending, rejected), a partner login, ROI
# economics, a margin rate and cohorts.
#
# The source is dumped in custom format and restored into a new database
# of the same cluster (the partner login names a role of the cluster).
# Checked:
#   - pg_dump and pg_restore finish without an error or a warning;
#   - every table of the loyalty schema (taken from the catalog, so a new
#     table is compared without editing this test) and the ERP table have
#     the same rows, row by row, and every loyalty sequence the same value;
#   - verify() is empty;
#   - the restored database keeps working: an invoice accrues, a redemption
#     takes the account's next redemption number and its points, the next
#     month settles (its qualifying spend is the month's invoices), an award
#     with a reference awarded before the dump returns the first award and
#     posts nothing, a pending award and a pending MDF claim can be
#     approved, the partner login still reads its own account only, and
#     verify() is empty at the end.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump_1_1');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE erp');

$node->safe_psql('erp', q{
CREATE EXTENSION loyalty;
CREATE ROLE dump_partner LOGIN;
CREATE TABLE erp_inv (id int PRIMARY KEY, customer_id int NOT NULL, inv_date date NOT NULL,
                      amount numeric(12,2) NOT NULL, product_line text);
SELECT loyalty.create_program('Club', ladder => 'Member:0, Silver:3000, Gold:9000', settlement_period => 'month');
SELECT loyalty.attach('erp_inv', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date', product_line_column => 'product_line');
SELECT loyalty.set_benefit('Club', 'Member', 'mdf_rate', '0.01');
SELECT loyalty.set_benefit('Club', 'Gold', 'mdf_rate', '0.05');
SELECT loyalty.set_benefit('Club', 'Gold', 'payment_terms_days', '60');
SELECT loyalty.create_rebate_agreement('Club', 'DIST', 'marginal: 0:1%, 5000:2%', valid_from => '2025-01-01');
-- 60 customers, invoices from January to April 2025 (credit notes among them)
INSERT INTO erp_inv
SELECT g, 1 + g % 60, date '2025-01-01' + (g * 7) % 120, CASE WHEN g % 23 = 0 THEN -40 ELSE 50 + (g * 37) % 900 END,
       (ARRAY['SOLAR', 'WIND'])[1 + g % 2]
FROM generate_series(1, 900) g;
SELECT loyalty.fold('Club');
SELECT loyalty.grant_tier('Club', '7', 'Gold', 'contract');
SELECT loyalty.settle('Club', '2025-01-31');
SELECT loyalty.settle('Club', '2025-02-28');
SELECT loyalty.settle('Club', '2025-03-31');

INSERT INTO loyalty.member (program_id, account_key, member_id, name, role)
SELECT program_id, k, 'm1', 'Member of ' || k, 'champion'
FROM loyalty.program, unnest(ARRAY['1', '2', '3']) k WHERE name = 'Club';
SELECT loyalty.set_reward('Club', 'CAP', 'Cap', 50);
SELECT loyalty.set_reward('Club', 'SEAT', 'Training seat', 100, stock => 5, per_account_limit => 1);
SELECT loyalty.set_action_rule('Club', 'webinar', 60, valid_from => '2020-01-01');
SELECT loyalty.set_action_rule('Club', 'certification', 200, needs_approval => true, valid_from => '2020-01-01');
SELECT loyalty.award('Club', '1', 'webinar', '2025-03-15', member => 'm1', reference => 'crm-1');
SELECT loyalty.award('Club', '2', 'certification', '2025-03-15', reference => 'crm-2');
SELECT loyalty.approve_award(loyalty.award('Club', '3', 'certification', '2025-03-15', reference => 'crm-3'));
SELECT loyalty.reject_award(loyalty.award('Club', '4', 'certification', '2025-03-15', reference => 'crm-4'));
SELECT loyalty.redeem('Club', '1', 'CAP', member => 'm1');
SELECT loyalty.redeem('Club', '1', 'CAP');
SELECT loyalty.redeem('Club', '2', 'SEAT');
SELECT loyalty.cancel_redemption(loyalty.redeem('Club', '3', 'SEAT'));
SELECT loyalty.approve_mdf_claim(loyalty.claim_mdf('Club', '5', 1.50, 'trade show', 'mdf-1'));
SELECT loyalty.claim_mdf('Club', '5', 2.00, 'brochures', 'mdf-2');
SELECT loyalty.reject_mdf_claim(loyalty.claim_mdf('Club', '6', 1.00, 'dinner', 'mdf-3'));
SELECT loyalty.grant_partner('dump_partner', 'Club', '1', member_id => 'm1');
SELECT loyalty.set_roi_economics('Club', cost_per_point => 0.01, benefit_cost_per_account_month => 5,
                                 default_margin_rate => 0.2);
SELECT loyalty.set_margin_rate('Club', 'SOLAR', 0.3);
SELECT count(*) FROM loyalty.assign_cohorts('Club', 0.5, 42, pre => daterange('2025-01-01', '2025-04-01'));
-- postings left unfolded, so that the dump carries deltas too
INSERT INTO erp_inv VALUES (901, 8, '2025-03-20', 120.00, 'WIND');
});

# Every table of the loyalty schema, from the catalog, and the ERP table.
my @tables = ('public.erp_inv',
	split /\n/, $node->safe_psql('erp', q{
SELECT 'loyalty.' || c.relname FROM pg_class c WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind = 'r'
ORDER BY 1}));
my @sequences = split /\n/, $node->safe_psql('erp', q{
SELECT 'loyalty.' || c.relname FROM pg_class c WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind = 'S'
ORDER BY 1});

sub q1 { my ($db, $sql) = @_; return $node->safe_psql($db, $sql); }

sub digest
{
	my ($db, $t) = @_;
	return q1($db, "SELECT count(*) || ' rows ' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '-') FROM $t x");
}

my %src = map { $_ => digest('erp', $_) } @tables;
my %src_seq = map { $_ => q1('erp', "SELECT last_value || '/' || is_called FROM $_") } @sequences;

# The source holds what the restore must carry.
is(q1('erp', q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'source: verify() is empty');
for my $t (qw(settlement_run settlement_account settlement_line rebate_agreement rebate_posting tier_history
	tier_grant tier_benefit mdf_accrual reward redemption action_rule award member member_points mdf_claim
	partner_login roi_settings margin_rate cohort_assignment balance_delta))
{
	unlike($src{"loyalty.$t"}, qr/^0 rows/, "source: loyalty.$t has rows ($src{\"loyalty.$t\"})");
}
is(q1('erp', q{SELECT string_agg(status || ':' || n, ' ' ORDER BY status) FROM
  (SELECT status, count(*) n FROM loyalty.award GROUP BY 1) x}), 'approved:2 pending:1 rejected:1',
	'source: awards approved, pending and rejected');
is(q1('erp', q{SELECT string_agg(status || ':' || n, ' ' ORDER BY status) FROM
  (SELECT status, count(*) n FROM loyalty.redemption GROUP BY 1) x}), 'cancelled:1 redeemed:3',
	'source: redemptions, one cancelled');
is(q1('erp', q{SELECT string_agg(status || ':' || n, ' ' ORDER BY status) FROM
  (SELECT status, count(*) n FROM loyalty.mdf_claim GROUP BY 1) x}), 'approved:1 pending:1 rejected:1',
	'source: MDF claims approved, pending and rejected');

my $dir = PostgreSQL::Test::Utils::tempdir;
my $dump = "$dir/erp.dump";
$node->command_checks_all([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('erp') ],
	0, [qr/^$/], [qr/^$/], 'pg_dump -Fc of the source, no error or warning');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_checks_all([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ],
	0, [qr/^$/], [qr/^$/], 'pg_restore into a new database, no error or warning');

# The same rows in every table, the same sequences.
is(q1('restored', q{SELECT count(*) FROM pg_class WHERE relnamespace = 'loyalty'::regnamespace AND relkind = 'r'}),
	scalar(@tables) - 1, 'restored: as many loyalty tables as the source');
is(digest('restored', $_), $src{$_}, "restored: $_ has the source's rows") for @tables;
is(q1('restored', "SELECT last_value || '/' || is_called FROM $_"), $src_seq{$_}, "restored: $_ continues where the source stopped")
  for @sequences;
is(q1('restored', q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'restored: verify() is empty');

# It keeps working.  An invoice accrues.
my $before = q1('restored', q{SELECT points FROM loyalty.balance WHERE account_key = '1'});
q1('restored', q{INSERT INTO erp_inv VALUES (1001, 1, '2025-04-10', 333.70, 'WIND')});
is(q1('restored', q{SELECT points FROM loyalty.balance WHERE account_key = '1'}), $before + 333,
	'restored: a new invoice accrues');

# A redemption takes the account's next number and its points.
my $next_no = q1('restored', q{SELECT max(redemption_no) + 1 FROM loyalty.redemption WHERE account_key = '1'});
q1('restored', q{SELECT loyalty.redeem('Club', '1', 'CAP')});
is(q1('restored', q{SELECT max(redemption_no) || ' ' || count(*) FROM loyalty.redemption WHERE account_key = '1'}),
	"$next_no 3", 'restored: a redemption gets the account\'s next redemption number');
is(q1('restored', q{SELECT points FROM loyalty.balance WHERE account_key = '1'}), $before + 333 - 50,
	'restored: and takes its points');
my ($ret, $out, $err) = $node->psql('restored', q{SELECT loyalty.redeem('Club', '2', 'SEAT')});
like($err, qr/may redeem 1 units of reward "SEAT" in all/, 'restored: the per-account limit counts the restored redemption');

# The next month settles, counting April's invoices.
is(q1('restored', q{SELECT status || ' ' || (period_qualifying = (SELECT sum(amount) FROM erp_inv
                                                                   WHERE inv_date BETWEEN '2025-04-01' AND '2025-04-30'))
                    FROM loyalty.settle('Club', '2025-04-30')}), 'done true',
	'restored: the next month settles and counts the month\'s invoices');
is(q1('restored', q{SELECT string_agg(period_end::text, ',' ORDER BY period_end) FROM loyalty.settlement_run}),
	'2025-01-31,2025-02-28,2025-03-31,2025-04-30', 'restored: four runs, one per month');

# An award by a reference awarded before the dump is the same award.
my $entries = q1('restored', q{SELECT count(*) FROM loyalty.ledger});
is(q1('restored', q{SELECT loyalty.award('Club', '1', 'webinar', '2025-03-15', member => 'm1', reference => 'crm-1')}),
	q1('erp', q{SELECT award_id FROM loyalty.award WHERE reference = 'crm-1'}),
	'restored: a repeated reference returns the award made before the dump');
is(q1('restored', q{SELECT count(*) FROM loyalty.ledger}), $entries, 'restored: and posts nothing');
is(q1('restored', q{SELECT count(*) FROM loyalty.award WHERE reference = 'crm-1'}), '1', 'restored: one award of crm-1');

# Pending decisions made after the restore post.
q1('restored', q{SELECT loyalty.approve_award(award_id) FROM loyalty.award WHERE reference = 'crm-2'});
q1('restored', q{SELECT loyalty.approve_mdf_claim(claim_id) FROM loyalty.mdf_claim WHERE reference = 'mdf-2'});
is(q1('restored', q{SELECT (SELECT status FROM loyalty.award WHERE reference = 'crm-2') || ' '
                       || (SELECT status FROM loyalty.mdf_claim WHERE reference = 'mdf-2')}),
	'approved approved', 'restored: a pending award and a pending MDF claim are approved');

# The partner login reads its own account, and only it.
is(q1('restored', q{SET ROLE dump_partner; SELECT string_agg(account_key, ',') FROM loyalty.balance}), '1',
	'restored: the partner login sees its own balance only');

is(q1('restored', q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'restored: verify() is empty at the end');
# the source did not change
is(digest('erp', $_), $src{$_}, "source: $_ unchanged") for grep { /ledger|redemption|award/ } @tables;

$node->stop;
done_testing();
