# Scheduled settlement with pg_cron, on a cluster that preloads it.
#
# Without the pg_cron extension created, schedule_settlement() fails with a
# hint that says how to install it.  With it, schedule_settlement()
# registers one job named loyalty-settle-<program> (registering again
# replaces its schedule: still one job), the job runs loyalty.settle_due()
# and the settlement runs appear (bounded wait, no timing asserted);
# unschedule_settlement() removes it.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cron');
$node->init;
# jobs run in background workers: the node listens on a socket only
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
});
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION loyalty;
CREATE TABLE erp_inv (id int PRIMARY KEY, customer_id int, inv_date date, amount numeric(12,2));
SELECT loyalty.create_program('Club', ladder => 'Silver:1000, Gold:5000', qualification_window => '3 months');
SELECT loyalty.attach('erp_inv', 'Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'inv_date');
INSERT INTO erp_inv SELECT g, g % 50, date '2025-01-01' + g % 60, 300 FROM generate_series(1, 500) g;
});

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT loyalty.schedule_settlement('Club', '* * * * *')}, extra_params => ['-v', 'VERBOSITY=verbose']);
isnt($ret, 0, 'without pg_cron, schedule_settlement fails');
like($stderr, qr/pg_cron is not installed in database "postgres"/, '... saying pg_cron is missing');
like($stderr, qr/HINT:.*postgresql-15-cron.*shared_preload_libraries = 'pg_cron'.*CREATE EXTENSION pg_cron/s,
	'... with a hint that says how to install and preload it');

$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron');
my $job = $node->safe_psql('postgres', q{SELECT loyalty.schedule_settlement('Club', '0 3 * * *')});
my $again = $node->safe_psql('postgres', q{SELECT loyalty.schedule_settlement('Club', '* * * * *')});
is($again, $job, 'registering again keeps the job');
is($node->safe_psql('postgres', q{SELECT jobname || ' ' || schedule || ' ' || command FROM cron.job}),
	q{loyalty-settle-Club * * * * * SELECT count(*) FROM loyalty.settle_due('Club')},
	'one job, named after the program, with the new schedule');

# The job runs within a minute or so; wait for its runs (bounded).
ok($node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM loyalty.settlement_run}),
	'the scheduled job settled the program');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM cron.job_run_details WHERE status = 'succeeded'}),
	'pg_cron recorded the job as succeeded');
is($node->safe_psql('postgres', q{
SELECT min(period_end) || ' ' || bool_and(status = 'done')
       || ' ' || (sum(period_qualifying + carried_qualifying) = (SELECT sum(amount) FROM erp_inv))
FROM loyalty.settlement_run}),
	'2025-03-31 true true', 'the runs start with the first quarter and count every invoice once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM loyalty.verify('Club')}), '0', 'verify() is empty');

is($node->safe_psql('postgres', q{SELECT loyalty.unschedule_settlement('Club')}), 't', 'unschedule removes the job');
is($node->safe_psql('postgres', q{SELECT count(*) FROM cron.job}), '0', 'no job is left');
is($node->safe_psql('postgres', q{SELECT loyalty.unschedule_settlement('Club')}), 'f',
	'unscheduling again says there was nothing to remove');

$node->stop;
done_testing();
