# A settlement killed by a crash of the whole server (SIGKILL of the
# postmaster) in the middle of its run, then settled again.
#
# loyalty.settle() does everything in one transaction: the per-account
# rows, the tier changes, the run's row.  To stop it mid-run for certain,
# another session holds the row of the last account it must downgrade or
# upgrade, so the settlement waits there with 20,000 accounts counted and
# most tier changes written; then the postmaster is killed.
#
# After the restart: nothing of the run exists (no run, no per-account
# rows, no tier change); settling again completes it exactly once (one run,
# one row per account, one tier change per account that moves, every
# change numbered once); a third call is a no-op; verify() is empty.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('settle_crash');
$node->init;
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION loyalty;
CREATE TABLE erp_inv (id int PRIMARY KEY, customer_id int, inv_date date, amount numeric(12,2));
SELECT loyalty.create_program('Club', ladder => 'Silver:1000, Gold:5000', qualification_window => '3 months');
SELECT loyalty.attach('erp_inv', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date');
INSERT INTO erp_inv
SELECT g, g, date '2025-01-01' + g % 90, 500 + (g % 11) * 600 FROM generate_series(1, 20000) g;
SELECT loyalty.fold('Club');
});

# what the run must decide, from the invoices
my $expected_moves = $node->safe_psql('postgres',
	q{SELECT count(*) FROM erp_inv WHERE amount >= 1000});
cmp_ok($expected_moves, '>', 10000, 'most of the 20,000 accounts reach a tier');

# The row of account 20000 (which reaches Silver) is held: the settlement
# waits for it in its tier writes.
my $blocker = $node->background_psql('postgres', on_error_stop => 1);
$blocker->query_safe(q{BEGIN; SELECT 1 FROM loyalty.account WHERE account_key = '20000' FOR UPDATE;});

my $settle = $node->background_psql('postgres', on_error_stop => 1);
my $pid = $settle->query_safe('SELECT pg_backend_pid()');
$settle->query_until(qr/settling/, q{
\echo settling
SELECT period_end FROM loyalty.settle('Club', '2025-03-31');
\echo settled
});
$node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Lock' AND query LIKE '%loyalty.settle%' FROM pg_stat_activity WHERE pid = $pid")
  or die 'the settlement never reached its tier writes';
is($node->safe_psql('postgres', 'SELECT count(*) FROM loyalty.settlement_run'),
	'0', 'mid-run: no run is visible yet');

# The whole server dies, at once.
my $blocker_pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE pid <> $pid AND query LIKE '%FOR UPDATE%' AND backend_type = 'client backend'");
# Its backends die with it: a SIGKILL of the postmaster alone leaves them
# running until they notice, and closing the blocker's session first would
# release the row and let the settlement commit after the "crash".
$node->kill9;
kill('KILL', grep { $_ } ($pid, $blocker_pid));
for my $s ($settle, $blocker)
{
	eval { $s->quit; };
}
# its backends notice the postmaster's death and exit; then it can start
for (1 .. 120)
{
	last unless kill(0, $pid) || ($blocker_pid && kill(0, $blocker_pid));
	usleep(250_000);
}
ok(!kill(0, $pid), 'the settling backend is gone with the postmaster');
$node->start;

is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM loyalty.settlement_run) || ' runs, '
    || (SELECT count(*) FROM loyalty.settlement_account) || ' account rows, '
    || (SELECT count(*) FROM loyalty.tier_history) || ' tier changes, '
    || (SELECT count(*) FROM loyalty.account WHERE tier IS NOT NULL) || ' tiers'}),
	'0 runs, 0 account rows, 0 tier changes, 0 tiers', 'after the crash nothing of the run exists');

# Settling again completes the run, once.
is($node->safe_psql('postgres', q{SELECT status || ' ' || accounts || ' ' || tiers_up FROM loyalty.settle('Club', '2025-03-31')}),
	"done 20000 $expected_moves", 'settling again completes the run');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT accounts FROM loyalty.settle('Club', '2025-03-31')});
is($stdout, '20000', 'a third call returns the same run');
like($stderr, qr/already settled for the period ending 2025-03-31/, 'a third call says it is a no-op');

is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM loyalty.settlement_run) || ' runs, '
    || (SELECT count(*) FROM loyalty.settlement_account) || ' account rows, '
    || (SELECT count(*) FROM loyalty.tier_history) || ' tier changes, '
    || (SELECT count(DISTINCT account_key) FROM loyalty.tier_history) || ' accounts changed, '
    || (SELECT count(*) FROM loyalty.tier_history WHERE change_no <> 1) || ' not numbered 1'}),
	"1 runs, 20000 account rows, $expected_moves tier changes, $expected_moves accounts changed, 0 not numbered 1",
	'exactly one run: one row per account, one tier change per account that moved');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM loyalty.account a JOIN erp_inv i ON i.customer_id::text = a.account_key
WHERE a.tier IS DISTINCT FROM CASE WHEN i.amount >= 5000 THEN 'Gold' WHEN i.amount >= 1000 THEN 'Silver' END}),
	'0', 'every account has the tier its invoice qualifies for');
is($node->safe_psql('postgres', q{SELECT period_qualifying = (SELECT sum(amount) FROM erp_inv)
                                  FROM loyalty.settlement_run}), 't', 'the run counted every invoice once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'verify() is empty');

$node->stop;
done_testing();
