# Crash recovery: a backend killed with SIGKILL in the middle of accrual.
#
# The accrual trigger writes loyalty.accrual_month, loyalty.balance and
# loyalty.ledger in the ERP's own transaction, so a crash must leave exactly
# what was committed: every committed invoice with its points, nothing of a
# statement or transaction that was cut off.  Killing one backend with
# SIGKILL makes the postmaster terminate every session and run crash
# recovery (WAL replay) for the whole cluster, as after a power cut.
#
# Three crashes on one node, each checked the same way afterwards:
#
#   1. a bulk INSERT ... SELECT of 400,001 invoices, killed while the
#      statement is running;
#   2. a bulk COPY of 200,000 invoices from a file, killed inside the accrual
#      trigger: another session holds a row lock on one account's balance,
#      so the trigger is stopped half-way through its writes (the balances
#      of the accounts before it in key order already written) when the
#      kill lands;
#   3. an explicit transaction that accrued through several statements
#      (INSERT, UPDATE of committed invoices, DELETE, a rejected row, COPY)
#      and was killed before COMMIT, while another session committed an
#      invoice in between.
#
# After each recovery: every loyalty table and the ERP table hold exactly
# what they held before the doomed work started (row by row), no invoice or
# account of the interrupted work exists, verify() is empty, every ledger
# entry is counted once in the balance, and a new insert accrues its points.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', 'restart_after_crash = on');
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION loyalty;
CREATE TABLE erp_inv (id int PRIMARY KEY, customer_id int, inv_date date, amount numeric(12,2));
SELECT loyalty.create_program('Club', ladder => 'Member:0, Silver:1000, Gold:5000');
SELECT loyalty.attach('erp_inv', 'Club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'inv_date');
});

# Committed history: accounts 0..499, updates, deletes, a rejected row.
$node->safe_psql('postgres', q{
INSERT INTO erp_inv
SELECT g, g % 500, current_date - g % 300, (g % 1000) + 0.25 FROM generate_series(1, 5000) g;
SELECT loyalty.fold();  -- books the upgrades; what follows stays unfolded
UPDATE erp_inv SET amount = amount + 10 WHERE id % 7 = 0;
DELETE FROM erp_inv WHERE id % 11 = 0;
INSERT INTO erp_inv VALUES (5001, NULL, current_date, 99.00);
});

my @tables = qw(
  public.erp_inv
  loyalty.program loyalty.rule loyalty.attachment loyalty.account
  loyalty.ledger loyalty.balance loyalty.accrual_month loyalty.tier_history
  loyalty.rejected_event loyalty.unenrolled_activity);

# Row count and a digest of every row, per table.
sub snapshot
{
	my %s;
	for my $t (@tables)
	{
		$s{$t} = $node->safe_psql('postgres',
			"SELECT count(*) || ' rows, md5 ' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '-') FROM $t x"
		);
	}
	return \%s;
}

sub verify_count
{
	return $node->safe_psql('postgres', q{SELECT count(*) FROM loyalty.verify('Club')});
}

is(verify_count(), '0', 'verify() is empty after the committed history');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM loyalty.tier_history'),
	'>', 0, 'the committed history includes tier upgrades');
is($node->safe_psql('postgres', 'SELECT count(*) FROM loyalty.rejected_event'),
	'1', 'the committed history includes a rejected row');

my $next_id = 3_000_000;

# Kill a backend with SIGKILL and wait until crash recovery has finished.
sub crash_backend
{
	my ($pid, $what) = @_;
	my $offset = -s $node->logfile;
	ok(kill('KILL', $pid), "$what: SIGKILL sent to backend $pid");
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	$node->wait_for_log(qr/database system is ready to accept connections/, $offset);
	$node->poll_query_until('postgres', 'SELECT 1', '1')
	  or die "node did not come back after $what";
	my $log = substr(slurp_file($node->logfile), $offset);
	like($log, qr/server process \(PID $pid\) was terminated by signal 9/,
		"$what: the postmaster saw backend $pid die of SIGKILL");
	like($log, qr/database system was not properly shut down; automatic recovery in progress/,
		"$what: crash recovery ran");
}

# The finished psql session of a killed backend: it must have lost its
# connection instead of finishing its work.
sub collect_session
{
	my ($session, $what, $done_marker) = @_;
	# An idle session notices the lost connection at its next query.
	eval {
		$session->{run}->pump_nb;
		$session->{stdin} .= "SELECT 1;\n" if $session->{run}->pumpable;
		$session->{run}->finish;
	};
	like($session->{stderr},
		qr/server closed the connection unexpectedly|terminating connection because of crash|connection to server was lost/,
		"$what: the session lost its connection");
	unlike($session->{stdout}, qr/$done_marker/, "$what: the work never completed")
	  if defined $done_marker;
}

# Everything that must hold after a crash.
sub check_after_crash
{
	my ($what, $before, $doomed_ids, $doomed_accounts) = @_;

	my $after = snapshot();
	for my $t (@tables)
	{
		is($after->{$t}, $before->{$t}, "$what: $t is exactly as committed ($before->{$t})");
	}
	is($node->safe_psql('postgres', "SELECT count(*) FROM erp_inv WHERE $doomed_ids"),
		'0', "$what: no invoice of the interrupted work exists");
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM loyalty.account WHERE account_key IN ($doomed_accounts)"),
		'0', "$what: no account enrolled by the interrupted work exists");
	is(verify_count(), '0', "$what: verify() is empty");
	is($node->safe_psql('postgres', q{
SELECT count(*) FROM (
  SELECT l.account_key, count(*) AS n, count(DISTINCT (l.posted_xid, l.entry_no)) AS distinct_numbers, b.entry_count
  FROM loyalty.ledger l JOIN loyalty.balance b USING (program_id, account_key)
  GROUP BY l.account_key, b.entry_count) x
WHERE n <> distinct_numbers OR n <> entry_count}),
		'0', "$what: every ledger entry is counted once in balance.entry_count");

	# A new insert still accrues, for a known and for a brand-new account.
	my $old = $node->safe_psql('postgres', q{SELECT points FROM loyalty.balance('Club', '7')});
	my $new_acct = 900 + $next_id % 100;
	$node->safe_psql('postgres', sprintf(
		"INSERT INTO erp_inv VALUES (%d, 7, current_date, 123.45), (%d, %d, current_date, 77.99)",
		$next_id, $next_id + 1, $new_acct));
	$next_id += 2;
	is($node->safe_psql('postgres', q{SELECT points FROM loyalty.balance('Club', '7')}),
		$old + 123, "$what: a new invoice accrues its points after recovery");
	is($node->safe_psql('postgres', "SELECT points FROM loyalty.balance('Club', '$new_acct')"),
		'77', "$what: a new customer is enrolled and accrues after recovery");
	is(verify_count(), '0', "$what: verify() is empty after the new invoices");
}

sub backend_state
{
	my ($pid) = @_;
	return $node->safe_psql('postgres',
		"SELECT state || ':' || coalesce(wait_event_type, '-') || ':' || left(query, 30) FROM pg_stat_activity WHERE pid = $pid"
	);
}

# The accounts the interrupted work would enrol: 500..699 never invoiced.
my $doomed_accounts = join(', ', map { "'$_'" } 500 .. 699);

# ---------------------------------------------------------------------
# 1. A bulk INSERT ... SELECT killed while running.
# ---------------------------------------------------------------------
{
	my $what = 'bulk INSERT killed mid-statement';
	my $before = snapshot();

	my $load = $node->background_psql('postgres', on_error_stop => 1);
	my $pid = $load->query_safe('SELECT pg_backend_pid()');
	$load->query_until(qr/loading/, q{
\echo loading
INSERT INTO erp_inv
SELECT g, g % 700, date '2026-01-01' + g % 300, (g % 1000) + 0.5 FROM generate_series(1000000, 1400000) g;
\echo load finished
});
	$node->poll_query_until('postgres',
		"SELECT query LIKE 'INSERT INTO erp_inv%' FROM pg_stat_activity WHERE pid = $pid")
	  or die "the bulk load never started";
	usleep(300_000);
	like(backend_state($pid), qr/^active:.*:INSERT INTO erp_inv/,
		"$what: the load is still running when it is killed");

	crash_backend($pid, $what);
	collect_session($load, $what, 'load finished');
	check_after_crash($what, $before, 'id BETWEEN 1000000 AND 1400000', $doomed_accounts);
}

# ---------------------------------------------------------------------
# 2. A bulk COPY killed inside the accrual trigger, half-way through its
#    writes: a lock on loyalty.balance_delta (taken by hand; nothing of
#    loyalty's takes one) stops it there.
# ---------------------------------------------------------------------
{
	my $what = 'bulk COPY killed inside the accrual trigger';
	my $dir = PostgreSQL::Test::Utils::tempdir;
	my $file = "$dir/invoices.tsv";
	open(my $fh, '>', $file) or die "could not open $file: $!";
	for my $g (1_500_000 .. 1_699_999)
	{
		my $day = $g % 300;
		my ($y, $m, $d) = (2026, 1 + int($day / 28) % 12, 1 + $day % 28);
		printf $fh "%d\t%d\t%04d-%02d-%02d\t%d.75\n", $g, $g % 700, $y, $m, $d, $g % 1000;
	}
	close($fh);
	chmod(0644, $file);

	my $before = snapshot();

	my $blocker = $node->background_psql('postgres', on_error_stop => 1);
	$blocker->query_safe(q{BEGIN; LOCK TABLE loyalty.balance_delta IN SHARE MODE});

	my $load = $node->background_psql('postgres', on_error_stop => 1);
	my $pid = $load->query_safe('SELECT pg_backend_pid()');
	$load->query_until(qr/loading/, qq{
\\echo loading
COPY erp_inv FROM '$file';
\\echo load finished
});
	# Stop polling too if the COPY ends without waiting; the test below fails then.
	$node->poll_query_until('postgres', qq{
SELECT query LIKE 'COPY erp_inv%' AND (wait_event_type = 'Lock' OR state <> 'active')
FROM pg_stat_activity WHERE pid = $pid})
	  or die "the COPY never started";
	like(backend_state($pid), qr/^active:Lock:COPY erp_inv/,
		"$what: the COPY is waiting for the locked table");
	is($node->safe_psql('postgres', qq{
SELECT count(*) FROM pg_locks l
WHERE l.pid = $pid AND l.relation = 'loyalty.balance_delta'::regclass
  AND l.mode = 'RowExclusiveLock' AND NOT l.granted}),
		'1', "$what: the COPY is inside the accrual trigger, about to write its balance deltas");

	crash_backend($pid, $what);
	collect_session($load, $what, 'load finished');
	collect_session($blocker, "$what (lock holder)");
	check_after_crash($what, $before, 'id BETWEEN 1500000 AND 1699999', $doomed_accounts);
}

# ---------------------------------------------------------------------
# 3. A multi-statement accrual killed before COMMIT, with a transaction
#    committed by another session in between.
# ---------------------------------------------------------------------
{
	my $what = 'open multi-statement transaction killed before COMMIT';
	my $dir = PostgreSQL::Test::Utils::tempdir;
	my $file = "$dir/more.tsv";
	open(my $fh, '>', $file) or die "could not open $file: $!";
	printf $fh "%d\t%d\t2026-03-%02d\t%d.10\n", $_, 500 + $_ % 200, 1 + $_ % 28, $_ % 500
	  for 2_100_000 .. 2_100_999;
	close($fh);
	chmod(0644, $file);

	my $points_before = $node->safe_psql('postgres', 'SELECT sum(points) FROM loyalty.balance');

	my $txn = $node->background_psql('postgres', on_error_stop => 1);
	my $pid = $txn->query_safe('SELECT pg_backend_pid()');
	$txn->query_safe(qq{
BEGIN;
INSERT INTO erp_inv
SELECT g, g % 250, current_date - g % 200, (g % 700) + 0.5 FROM generate_series(2000000, 2019999) g;
UPDATE erp_inv SET amount = amount * 2 WHERE id <= 2000 AND customer_id < 250;
DELETE FROM erp_inv WHERE id BETWEEN 2001 AND 3000 AND customer_id < 250;
INSERT INTO erp_inv VALUES (2050000, NULL, current_date, 10.00);
COPY erp_inv FROM '$file';
});
	my ($in_txn_verify, $in_txn_points) = split /\|/, $txn->query_safe(
		q{SELECT (SELECT count(*) FROM loyalty.verify('Club')), (SELECT sum(points) FROM loyalty.balance)});
	is($in_txn_verify, '0', "$what: inside the transaction, verify() is empty");
	cmp_ok($in_txn_points, '!=', $points_before,
		"$what: inside the transaction, the statements have accrued");

	# Committed while the doomed transaction is open: accounts it does not touch.
	$node->safe_psql('postgres', q{
SET lock_timeout = '10s';
INSERT INTO erp_inv VALUES (2500000, 300, current_date, 500.00), (2500001, 301, current_date, 40.00);
});
	my $before = snapshot();

	like(backend_state($pid), qr/^idle in transaction:/, "$what: the transaction is open when killed");
	crash_backend($pid, $what);
	collect_session($txn, $what);
	check_after_crash($what, $before, 'id BETWEEN 2000000 AND 2100999', $doomed_accounts);
	is($node->safe_psql('postgres',
		'SELECT count(*) FROM erp_inv WHERE id IN (2500000, 2500001)'),
		'2', "$what: the invoices committed by the other session survived");
}

# ---------------------------------------------------------------------
# 4. A fold killed half-way: its deltas read, the folded balances about to
#    be written (a lock on loyalty.balance_folded stops it there).  Nothing
#    of it may remain, and the next fold folds everything exactly once.
# ---------------------------------------------------------------------
{
	my $what = 'fold killed half-way';
	$node->safe_psql('postgres', q{
INSERT INTO erp_inv
SELECT g, g % 600, current_date - g % 100, (g % 300) + 0.5 FROM generate_series(4000000, 4030000) g;
});
	my $before = snapshot();
	cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM loyalty.balance_delta'), '>', 0,
		"$what: there are deltas to fold");

	my $blocker = $node->background_psql('postgres', on_error_stop => 1);
	$blocker->query_safe(q{BEGIN; LOCK TABLE loyalty.balance_folded IN SHARE MODE});
	my $fold = $node->background_psql('postgres', on_error_stop => 1);
	my $pid = $fold->query_safe('SELECT pg_backend_pid()');
	$fold->query_until(qr/folding/, q{
\echo folding
SELECT loyalty.fold();
\echo fold finished
});
	$node->poll_query_until('postgres', qq{
SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid})
	  or die "the fold never waited";
	crash_backend($pid, $what);
	collect_session($fold, $what, 'fold finished');
	collect_session($blocker, "$what (lock holder)");
	my $after = snapshot();
	for my $t (@tables)
	{
		is($after->{$t}, $before->{$t}, "$what: $t is exactly as before the fold");
	}
	is(verify_count(), '0', "$what: verify() is empty");
	my $points = $node->safe_psql('postgres', 'SELECT sum(points) FROM loyalty.balance');
	cmp_ok($node->safe_psql('postgres', 'SELECT loyalty.fold()'), '>', 0, "$what: the next fold folds");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM loyalty.balance_delta'), '0',
		"$what: no delta is left");
	is($node->safe_psql('postgres', 'SELECT sum(points) FROM loyalty.balance'), $points,
		"$what: the balances read the same folded");
	is(verify_count(), '0', "$what: verify() is empty after the fold");
}

$node->stop;
done_testing();
