# Redemptions, awards, approvals, cancellations and MDF claims cut by a
# crash of the whole server (SIGKILL of the postmaster).
#
# Before the crash: a burst of committed operations (redemptions of a
# stocked reward, a member's redemption, awards by reference, an approved
# and a rejected award, a cancelled redemption, an approved MDF claim after
# a settlement credited the wallets), then open transactions that did the
# same kinds of thing and had not committed (a redemption and an award in
# one, an approval of a pending award, a cancellation of a committed
# redemption, an MDF claim and an approval of a pending one, a member's
# redemption), one more redemption waiting for an account lock an open
# transaction holds, and more commits on other accounts while those are
# open.  Then the postmaster is killed.
#
# After the restart: every committed operation is there exactly once (by
# its id) with its ledger entry; nothing of the open ones exists (no
# redemption, award, claim or ledger entry; the pending award and claim are
# still pending, the redemption whose cancellation was cut still counts);
# reward stock and per-account limits equal what the committed redemptions
# took; every balance, member balance and MDF wallet equals a plain-SQL
# recomputation from the invoices and the committed operations; verify() is
# empty; and the program goes on: a redemption gets the account's next
# number, an award by a reference of a lost transaction is made anew, one
# by a committed reference is deduplicated.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('rewards_crash');
$node->init;
$node->start;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

q1(q{
CREATE EXTENSION loyalty;
CREATE TABLE erp_inv (id int PRIMARY KEY, customer_id int NOT NULL, inv_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('Club', ladder => 'Member:0, Gold:5000', settlement_period => 'month');
SELECT loyalty.attach('erp_inv', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date');
SELECT loyalty.set_benefit('Club', 'Member', 'mdf_rate', '0.02');
-- 20 accounts, 1,000 points each, earned in January 2025
INSERT INTO erp_inv SELECT g, g, date '2025-01-10', 1000 FROM generate_series(1, 20) g;
SELECT loyalty.fold('Club');
SELECT loyalty.settle('Club', '2025-01-31');    -- MDF wallets: 20.00 each
INSERT INTO loyalty.member (program_id, account_key, member_id, name, role)
SELECT program_id, '1', 'm1', 'Ana', 'champion' FROM loyalty.program WHERE name = 'Club';
SELECT loyalty.set_reward('Club', 'SEAT', 'Training seat', 100, stock => 10);
SELECT loyalty.set_reward('Club', 'CAP', 'Cap', 10, per_account_limit => 2);
SELECT loyalty.set_action_rule('Club', 'webinar', 30, valid_from => '2020-01-01');
SELECT loyalty.set_action_rule('Club', 'certification', 200, needs_approval => true, valid_from => '2020-01-01');
});

# The committed burst.  Every id is kept.
q1(q{
CREATE TABLE committed (what text, id uuid);
INSERT INTO committed SELECT 'redeem', loyalty.redeem('Club', g::text, 'SEAT') FROM generate_series(1, 6) g;
INSERT INTO committed SELECT 'redeem', loyalty.redeem('Club', '2', 'CAP');
INSERT INTO committed SELECT 'award', loyalty.award('Club', '1', 'webinar', '2025-02-01', member => 'm1', reference => 'c-1');
INSERT INTO committed SELECT 'award', loyalty.award('Club', g::text, 'webinar', '2025-02-01', reference => 'c-' || g)
  FROM generate_series(2, 8) g;
INSERT INTO committed SELECT 'award', loyalty.award('Club', g::text, 'certification', '2025-02-02', reference => 'p-' || g)
  FROM generate_series(9, 12) g;
SELECT loyalty.approve_award(id) FROM committed WHERE id = (SELECT award_id FROM loyalty.award WHERE reference = 'p-9');
SELECT loyalty.reject_award(id) FROM committed WHERE id = (SELECT award_id FROM loyalty.award WHERE reference = 'p-10');
INSERT INTO committed SELECT 'redeem', loyalty.redeem('Club', '1', 'CAP', member => 'm1');
SELECT loyalty.cancel_redemption(loyalty.redeem('Club', '7', 'SEAT'));
INSERT INTO committed SELECT 'redeem', redemption_id FROM loyalty.redemption WHERE account_key = '7';
INSERT INTO committed SELECT 'claim', loyalty.claim_mdf('Club', '3', 5, 'trade show', 'mdf-3');
SELECT loyalty.approve_mdf_claim(id) FROM committed WHERE what = 'claim';
INSERT INTO committed SELECT 'claim', loyalty.claim_mdf('Club', '4', 6, 'brochures', 'mdf-4');
});

# The open transactions: each holds what it did, uncommitted.
my @open;
my @open_pids;
for my $sql (
	q{SELECT loyalty.redeem('Club', '8', 'SEAT'); SELECT loyalty.award('Club', '8', 'webinar', '2025-02-03', reference => 'lost-8');},
	q{SELECT loyalty.approve_award(award_id) FROM loyalty.award WHERE reference = 'p-11';},
	q{SELECT loyalty.cancel_redemption(redemption_id) FROM loyalty.redemption WHERE account_key = '2' AND reward_id = 'CAP';},
	q{SELECT loyalty.approve_mdf_claim(claim_id) FROM loyalty.mdf_claim WHERE reference = 'mdf-4';
	  SELECT loyalty.claim_mdf('Club', '6', 7, 'dinner', 'lost-mdf');},
	q{SELECT loyalty.redeem('Club', '1', 'CAP', member => 'm1'); SELECT loyalty.redeem('Club', '9', 'CAP', 2);},
	q{SELECT loyalty.award('Club', '13', 'webinar', '2025-02-03', reference => 'lost-13');
	  SELECT loyalty.award('Club', '5', 'webinar', '2025-02-01', reference => 'c-5');})
{
	my $s = $node->background_psql('postgres', on_error_stop => 1);
	push @open_pids, $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe("BEGIN; $sql");
	push @open, $s;
}
# one more waits for account 8, which the first open transaction locked
my $waiter = $node->background_psql('postgres', on_error_stop => 1);
my $waiter_pid = $waiter->query_safe('SELECT pg_backend_pid()');
push @open_pids, $waiter_pid;
$waiter->query_until(qr/redeeming/, q{
\echo redeeming
SELECT loyalty.redeem('Club', '8', 'CAP');
});
$node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $waiter_pid")
  or die 'the waiting redemption never waited';
push @open, $waiter;

# commits on other accounts while those are open
q1(q{
INSERT INTO committed SELECT 'redeem', loyalty.redeem('Club', g::text, 'CAP') FROM generate_series(14, 15) g;
INSERT INTO committed SELECT 'award', loyalty.award('Club', '14', 'webinar', '2025-02-04', reference => 'c-14');
});
my $committed = q1(q{SELECT string_agg(what || ' ' || id, ',' ORDER BY what, id) FROM committed});
is(q1(q{SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'}), scalar(@open) - 1,
	'six transactions are open, one more waits');

# The whole server dies, at once: the postmaster and every backend.  (A
# SIGKILL of the postmaster alone leaves its backends running until they
# notice: closing a session would then roll its transaction back and let the
# waiting redemption take the lock and commit after the "crash".)
my $pm = $node->{_pid};
sub parent_of
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return 0;
	my $stat = <$fh>;
	close $fh;
	return $stat =~ /\) \S+ (\d+) / ? $1 : 0;
}
my @backends = grep { parent_of($_) == $pm } map { m{/proc/(\d+)$} ? $1 : () } glob('/proc/[0-9]*');
cmp_ok(scalar(@backends), '>=', scalar(@open), 'the open sessions\' backends are children of the postmaster');
$node->kill9;
kill('KILL', @backends);
eval { $_->quit; } for @open;
for (1 .. 120)
{
	last unless grep { kill(0, $_) } @open_pids;
	usleep(250_000);
}
ok(!(grep { kill(0, $_) } @open_pids), 'the open sessions\' backends are gone with the postmaster');
$node->start;

# Every committed operation exactly once, nothing of the open ones.
is(q1(q{SELECT string_agg(what || ' ' || id, ',' ORDER BY what, id) FROM committed}), $committed,
	'after the restart: the list of committed ids survived');
is(q1(q{SELECT count(*) FROM committed c WHERE (SELECT count(*) FROM loyalty.redemption r WHERE r.redemption_id = c.id)
                                            + (SELECT count(*) FROM loyalty.award w WHERE w.award_id = c.id)
                                            + (SELECT count(*) FROM loyalty.mdf_claim m WHERE m.claim_id = c.id) <> 1}),
	'0', 'every committed redemption, award and claim exists exactly once');
is(q1(q{SELECT (SELECT count(*) FROM loyalty.redemption) || ' ' || (SELECT count(*) FROM loyalty.award) || ' '
            || (SELECT count(*) FROM loyalty.mdf_claim)}),
	q1(q{SELECT count(*) FILTER (WHERE what = 'redeem') || ' ' || count(*) FILTER (WHERE what = 'award') || ' '
            || count(*) FILTER (WHERE what = 'claim') FROM committed}),
	'no redemption, award or claim beyond the committed ones');
is(q1(q{SELECT count(*) FROM loyalty.award WHERE reference LIKE 'lost-%'})
	 . q1(q{SELECT count(*) FROM loyalty.mdf_claim WHERE reference LIKE 'lost-%'})
	 . q1(q{SELECT count(*) FROM loyalty.redemption WHERE account_key IN ('8', '9')}),
	'000', 'the open transactions\' awards, claim and redemptions left nothing');
is(q1(q{SELECT string_agg(reference || ':' || status, ' ' ORDER BY reference) FROM loyalty.award WHERE reference LIKE 'p-%'}),
	'p-10:rejected p-11:pending p-12:pending p-9:approved', 'the approval cut by the crash left its award pending');
is(q1(q{SELECT string_agg(reference || ':' || status, ' ' ORDER BY reference) FROM loyalty.mdf_claim}),
	'mdf-3:approved mdf-4:pending', 'the approval of an MDF claim cut by the crash left it pending');
is(q1(q{SELECT string_agg(account_key || ':' || status, ' ' ORDER BY account_key) FROM loyalty.redemption
        WHERE reward_id = 'CAP' AND account_key = '2' OR account_key = '7'}), '2:redeemed 7:cancelled', 'the cancellation cut by the crash did not happen');

# Ledger entries: one per committed posting, none of the open ones.
is(q1(q{SELECT count(*) FROM loyalty.redemption r WHERE NOT EXISTS (
          SELECT FROM loyalty.ledger l WHERE (l.account_key, l.posted_xid, l.entry_no, l.kind, l.points)
                                           = (r.account_key, r.posted_xid, r.entry_no, 'redeem', -r.points))}),
	'0', 'every redemption has its ledger entry');
is(q1(q{SELECT (SELECT count(*) FROM loyalty.ledger WHERE kind = 'redeem') || ' '
            || (SELECT count(*) FROM loyalty.ledger WHERE kind = 'award') || ' '
            || (SELECT count(*) FROM loyalty.ledger WHERE kind = 'mdf' AND mdf < 0)}),
	q1(q{SELECT (SELECT count(*) + count(*) FILTER (WHERE status = 'cancelled') FROM loyalty.redemption) || ' '
            || (SELECT count(*) FROM loyalty.award WHERE status = 'approved') || ' '
            || (SELECT count(*) FROM loyalty.mdf_claim WHERE status = 'approved')}),
	'one redeem entry per redemption and one per cancellation, one award entry per approved award, one MDF debit per approved claim');

# Stock, limits, balances: from the invoices and the committed operations.
is(q1(q{SELECT stock FROM loyalty.reward WHERE reward_id = 'SEAT'}),
	q1(q{SELECT 10 - sum(quantity) FROM loyalty.redemption WHERE reward_id = 'SEAT' AND status = 'redeemed'}),
	'the stock is 10 less the seats of the committed redemptions');
is(q1(q{SELECT stock FROM loyalty.reward WHERE reward_id = 'SEAT'}), '4', 'that is 4 seats (6 redeemed, 1 redeemed and cancelled, 1 lost)');
is(q1(q{
WITH expected AS (
  SELECT customer_id::text AS account_key, sum(trunc(amount)) AS points FROM erp_inv GROUP BY 1
  UNION ALL SELECT account_key, -points FROM loyalty.redemption WHERE status = 'redeemed'
  UNION ALL SELECT account_key, points FROM loyalty.award WHERE status = 'approved')
SELECT count(*) FROM (SELECT account_key, sum(points) AS points FROM expected GROUP BY 1) e
FULL JOIN loyalty.balance b USING (account_key) WHERE b.points IS DISTINCT FROM e.points}),
	'0', 'every balance is its invoices less its redemptions plus its approved awards');
is(q1(q{SELECT points FROM loyalty.member_balance WHERE member_id = 'm1'}), '20',
	'the member has 30 points of the award less 10 of the committed redemption');
is(q1(q{SELECT string_agg(account_key || ':' || mdf, ' ' ORDER BY account_key) FROM loyalty.balance
        WHERE account_key IN ('3', '4', '6')}), '3:15.00 4:20.00 6:20.00',
	'MDF wallets: 20.00 credited, the approved claim paid, nothing else');
is(q1(q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'verify() is empty after the restart');

# The program goes on.
my $next = q1(q{SELECT max(redemption_no) + 1 FROM loyalty.redemption WHERE account_key = '1'});
q1(q{SELECT loyalty.redeem('Club', '1', 'CAP', member => 'm1')});
is(q1(q{SELECT max(redemption_no) FROM loyalty.redemption WHERE account_key = '1'}), $next,
	'a new redemption takes the account\'s next number');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT loyalty.redeem('Club', '2', 'CAP', 2)});
like($err, qr/may redeem 2 units of reward "CAP" in all and has redeemed 1/, 'the per-account limit counts the committed redemptions only');
q1(q{SELECT loyalty.redeem('Club', '8', 'SEAT')});
is(q1(q{SELECT count(*) FROM loyalty.redemption WHERE account_key = '8'}), '1', 'account 8, locked by a lost transaction, redeems');
isnt(q1(q{SELECT loyalty.award('Club', '8', 'webinar', '2025-02-03', reference => 'lost-8')}), '',
	'a reference of a lost transaction is awarded anew');
is(q1(q{SELECT loyalty.award('Club', '2', 'webinar', '2025-02-01', reference => 'c-2')}),
	q1(q{SELECT award_id FROM loyalty.award WHERE reference = 'c-2'}), 'a committed reference is deduplicated');
is(q1(q{SELECT count(*) FROM loyalty.award WHERE reference IN ('lost-8', 'c-2')}), '2', 'one award each');
is(q1(q{SELECT loyalty.approve_mdf_claim(claim_id) FROM loyalty.mdf_claim WHERE reference = 'mdf-4'}), 'approved',
	'the pending MDF claim is approved');
is(q1(q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'verify() is empty at the end');

$node->stop;
done_testing();
