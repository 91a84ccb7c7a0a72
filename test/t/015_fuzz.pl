# The parser fuzzer (test/fuzz/fuzz.sql) at full scale: 1,120,000 generated
# inputs to every parser of the SQL surface (type literals, multiplier maps,
# mapping expressions, text parameters).  Every input must be accepted (and a
# literal round-trip) or rejected with a clean error; the server must stay up
# with no backend crash in its log.  FUZZ_SCALE scales the input counts.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $scale = $ENV{FUZZ_SCALE} // 1;
my $node = PostgreSQL::Test::Cluster->new('fuzz');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE fuzz');
$node->safe_psql('fuzz', 'CREATE EXTENSION loyalty');

my $script = slurp_file('test/fuzz/fuzz.sql');
my ($rc, $out, $err) = $node->psql('fuzz', $script, extra_params => [ '-v', "scale=$scale" ]);
is($rc, 0, 'the fuzz script ran to its end') or diag($err);
note($out);

my ($inputs, $unclean) = $out =~ /fuzz: (\d+) inputs, (\d+) unclean/;
ok(defined $inputs && $inputs >= 1_000_000 * $scale, "at least ${\ (1_000_000 * $scale)} inputs were tried ("
	  . ($inputs // 'none') . ')');
is($unclean, 0, 'every rejection was a clean error and every accepted literal round-tripped')
  or diag($out);

ok($node->safe_psql('fuzz', 'SELECT 1') eq '1', 'the server is still up');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|server process .* was terminated|PANIC/, 'no backend crashed');

$node->stop;
done_testing();
