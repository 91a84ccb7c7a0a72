# In-server mutation fuzzer for the tier_ladder and rebate_schedule input
# functions (after pgvector's test/t/037_inputs.pl, scaled up).
#
# From a handful of valid seed literals per type, a fixed-seed generator
# derives 110,000 mutated literals per type: character flips, deletions,
# duplications, truncations, splices of another seed, and insertions of the
# characters and tokens the grammar cares about (':' ',' '%' '-' '"' 'e',
# NaN, Infinity, digit runs of every length, non-ASCII letters and spaces).
# A PL/pgSQL loop feeds each one to the type's input function and checks:
#
#   - a rejection is always SQLSTATE 22P02 (invalid_text_representation),
#     never another code: sizes (too many tiers, too many digits, names too
#     long) are syntax errors of the literal too, not 54000 or 22003; its
#     errmsg names the type, its errdetail gives a position inside the
#     literal (only an empty literal has none) and it has an errhint;
#   - an accepted literal round-trips: in(out(in(x))) = in(x) and its output
#     is already canonical;
#   - every accepted value also round-trips through binary COPY (send/recv),
#     and the lookups agree with the value (tier_of at each threshold is that
#     tier; rebate is symmetric at each threshold);
#   - the server is still up at the end, with no backend crash in the log.
#
# The generator is deterministic (fixed srand), so a failure reproduces.
use strict;
use warnings FATAL => 'all';
use utf8;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $PER_TYPE = 110_000;

my $node = PostgreSQL::Test::Cluster->new('type_fuzz');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION loyalty');

my %seeds = (
	tier_ladder => [
		'Member:0, Silver:50000, Gold:250000, Platinum:1000000',
		'"Gold, EU":0, "The ""Best""":99999999999999.99',
		'Élite:0.5, Золото:7, 日本:100',
		'A:0',
		'Bronze & Co.:0, Tier-2/EU:1000.25, X_1:1000000.000001',
		'  Member :0 ,Silver: 050000.00 ,"100%":999999999999999.999999 ',
		('N' x 63) . ':0, M:1',
		join(', ', map { "T$_:$_" } 1 .. 64),
	],
	rebate_schedule => [
		'retro: 0:0%, 100000:2%, 500000:3.5%',
		'marginal: 0:1%, 50000:2%, 200000:3%',
		'RETRO:0:0%,100000:2.50%',
		'marginal: 250000:1.125%',
		'retro: 0:0.000001%, 999999999999999.999999:100%',
		' Marginal : 0 : 0 % , 1 : 100 % ',
		'retro: ' . join(', ', map { ($_ * 1000) . ":$_%" } 1 .. 64),
	],
);

my @tokens = (
	':', ',', '%', '-', '+', '.', '"', '""', ' ', "\t", "\n", 'e', 'E',
	'1e5', 'NaN', 'nan', 'Infinity', '-Infinity', 'inf', '0', '9', '00000',
	'.5', '5.', '100', '101%', '0.0000001', 'retro', 'marginal', 'RETRO:',
	'é', '€', 'Ж', '日本', "\x{1F947}", "\x{00A0}", "\x{200B}", "\x{FEFF}",
	'\\', "'", ';', '&', '/', '_', ', ', ':0', ':1%');

srand(20240229);

sub digit_run
{
	my $len = rand() < 0.05 ? 1000 + int(rand(4000)) : 14 + int(rand(12));
	return join('', map { int(rand(10)) } 1 .. $len);
}

sub mutate
{
	my ($s, $others) = @_;
	my $n = 1 + int(rand(4));
	for (1 .. $n)
	{
		my $len = length($s);
		my $pos = int(rand($len + 1));
		my $op = int(rand(9));
		if ($op == 0 && $len > 0)
		{
			# flip one of the low 7 bits of a character
			$pos = $len - 1 if $pos >= $len;
			my $c = ord(substr($s, $pos, 1));
			my $f = $c ^ (1 << int(rand(7)));
			$f = 1 if $f == 0;
			$f = $c if $c >= 0x80 && ($f < 0x80 || ($f >= 0xD800 && $f <= 0xDFFF));
			substr($s, $pos, 1) = chr($f);
		}
		elsif ($op == 1 && $len > 0)
		{
			# delete 1 to 3 characters
			substr($s, $pos, 1 + int(rand(3))) = '';
		}
		elsif ($op == 2 && $len > 0)
		{
			# duplicate a chunk in place
			my $chunk = substr($s, $pos, 1 + int(rand(8)));
			substr($s, $pos, 0) = $chunk;
		}
		elsif ($op == 3 || $op == 4)
		{
			# insert a token the grammar cares about
			substr($s, $pos, 0) = $tokens[ int(rand(@tokens)) ];
		}
		elsif ($op == 5)
		{
			# replace a character with a token
			substr($s, $pos, 1) = $tokens[ int(rand(@tokens)) ];
		}
		elsif ($op == 6)
		{
			# a long digit run
			substr($s, $pos, 0) = digit_run();
		}
		elsif ($op == 7)
		{
			# truncate
			$s = substr($s, 0, $pos);
		}
		else
		{
			# splice in part of another seed
			my $o = $others->[ int(rand(@$others)) ];
			my $from = int(rand(length($o) + 1));
			substr($s, $pos, int(rand(6))) =
			  substr($o, $from, 1 + int(rand(20)));
		}
	}
	return $s;
}

sub copy_escape
{
	my ($s) = @_;
	$s =~ s/\\/\\\\/g;
	$s =~ s/\t/\\t/g;
	$s =~ s/\n/\\n/g;
	$s =~ s/\r/\\r/g;
	return $s;
}

# Generate and load the literals.
my $dir = PostgreSQL::Test::Utils::tempdir;
my $file = "$dir/literals.tsv";
open(my $fh, '>:encoding(UTF-8)', $file) or die "could not open $file: $!";
my $id = 0;
my %generated;
for my $type (sort keys %seeds)
{
	my @s = @{ $seeds{$type} };
	my %distinct;
	for my $i (1 .. $PER_TYPE)
	{
		my $lit = mutate($s[ $i % @s ], \@s);
		$distinct{$lit} = 1;
		print $fh join("\t", ++$id, $type, copy_escape($lit)), "\n";
	}
	$generated{$type} = scalar(keys %distinct);
}
close($fh);

$node->safe_psql('postgres', qq{
CREATE TABLE fuzz (id int PRIMARY KEY, typ text NOT NULL, lit text NOT NULL);
COPY fuzz FROM '$file';
CREATE TABLE fuzz_bad (id int, typ text, problem text, sqlstate text, message text, detail text);
CREATE TABLE ok_tier_ladder (id int, v loyalty.tier_ladder);
CREATE TABLE ok_rebate_schedule (id int, v loyalty.rebate_schedule);
});

# One loop per type, with static casts so no statement is re-planned per
# literal.  Each literal runs in its own subtransaction (BEGIN ... EXCEPTION).
for my $type (sort keys %seeds)
{
	$node->safe_psql('postgres', qq{
CREATE FUNCTION fuzz_$type(OUT total int, OUT accepted int, OUT rejected int)
LANGUAGE plpgsql AS \$fn\$
DECLARE
  r record;
  v loyalty.$type;
  v2 loyalty.$type;
  out1 text;
  st text;
  msg text;
  det text;
  hnt text;
  positions_ok bool;
BEGIN
  total := 0; accepted := 0; rejected := 0;
  FOR r IN SELECT id, lit FROM fuzz WHERE typ = '$type' ORDER BY id LOOP
    total := total + 1;
    BEGIN
      v := r.lit::loyalty.$type;
    EXCEPTION WHEN others THEN
      GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                              det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
      rejected := rejected + 1;
      SELECT coalesce(bool_and(m[1]::int BETWEEN 1 AND char_length(r.lit) + 1), true)
        INTO positions_ok
        FROM regexp_matches(det, 'position ([0-9]+)', 'g') m;
      IF st <> '22P02'
         OR left(msg, length('invalid input syntax for type $type: "')) <> 'invalid input syntax for type $type: "'
         OR coalesce(det, '') = '' OR coalesce(hnt, '') = ''
         OR NOT positions_ok
         OR (det !~ ' at position [0-9]+' AND btrim(r.lit, E' \\t\\n\\r\\f') <> '')
      THEN
        INSERT INTO fuzz_bad VALUES (r.id, '$type', 'rejection', st, msg, det);
      END IF;
      CONTINUE;
    END;
    accepted := accepted + 1;
    BEGIN
      out1 := v::text;
      v2 := out1::loyalty.$type;
      IF NOT (v2 OPERATOR(loyalty.=) v) OR v2::text <> out1 THEN
        INSERT INTO fuzz_bad VALUES (r.id, '$type', 'round trip', NULL, out1, v2::text);
      END IF;
    EXCEPTION WHEN others THEN
      GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
      INSERT INTO fuzz_bad VALUES (r.id, '$type', 'output does not parse', st, msg, out1);
    END;
    INSERT INTO ok_$type VALUES (r.id, v);
  END LOOP;
END
\$fn\$;
});
}

my $started = time();
for my $type (sort keys %seeds)
{
	my $t0 = time();
	my ($total, $accepted, $rejected) = split /\|/,
	  $node->safe_psql('postgres', "SELECT * FROM fuzz_$type()");
	my $secs = time() - $t0;

	my $bad_rej = $node->safe_psql('postgres',
		"SELECT count(*) FROM fuzz_bad WHERE typ = '$type' AND problem = 'rejection'");
	my $bad_rt = $node->safe_psql('postgres',
		"SELECT count(*) FROM fuzz_bad WHERE typ = '$type' AND problem <> 'rejection'");

	note sprintf('%s: %d literals in %.1fs', $type, $total, $secs);
	is($total, $PER_TYPE,
		"$type: $total mutated literals ($generated{$type} distinct) through the input function");
	cmp_ok($accepted, '>', 1000, "$type: $accepted accepted (fuzzing reaches the valid side)");
	cmp_ok($rejected, '>', 1000, "$type: $rejected rejected (fuzzing reaches the error paths)");
	is($bad_rej, 0,
		"$type: all $rejected rejections are SQLSTATE 22P02 with a position inside the literal and a hint");
	is($bad_rt, 0,
		"$type: all $accepted accepted literals round-trip: in(out(in(x))) = in(x), output canonical");

	if ($bad_rej + $bad_rt > 0)
	{
		diag $node->safe_psql('postgres',
			"SELECT b.problem, b.sqlstate, b.message, b.detail, f.lit
			   FROM fuzz_bad b JOIN fuzz f USING (id)
			  WHERE b.typ = '$type' ORDER BY b.id LIMIT 10");
	}

	# Binary COPY of every accepted value, read back through recv.
	my $bin = "$dir/$type.bin";
	$node->safe_psql('postgres', qq{
COPY ok_$type TO '$bin' (FORMAT binary);
CREATE TABLE back_$type (LIKE ok_$type);
COPY back_$type FROM '$bin' (FORMAT binary);
});
	my $bin_bad = $node->safe_psql('postgres', qq{
SELECT count(*) FROM ok_$type a FULL JOIN back_$type b USING (id)
 WHERE a.v IS NULL OR b.v IS NULL OR NOT (a.v OPERATOR(loyalty.=) b.v)
    OR a.v::text <> b.v::text});
	is($bin_bad, 0, "$type: all $accepted accepted values round-trip through binary COPY");
}

# The lookups agree with every accepted value.
my ($ladders, $bad_tier) = split /\|/, $node->safe_psql('postgres', q{
SELECT count(DISTINCT o.id),
       count(*) FILTER (WHERE loyalty.tier_of(o.v, t.threshold) IS DISTINCT FROM t.name
                           OR loyalty.tier_rank(o.v, t.threshold) IS DISTINCT FROM t.rank
                           OR (loyalty.next_tier(o.v, t.threshold)).gap IS DISTINCT FROM
                              (SELECT n.threshold - t.threshold FROM loyalty.tiers(o.v) n
                                WHERE n.rank = t.rank + 1))
  FROM ok_tier_ladder o, LATERAL loyalty.tiers(o.v) t});
is($bad_tier, 0,
	"tier_ladder: tier_of, tier_rank and next_tier agree with tiers() at every threshold of $ladders ladders");

my ($schedules, $bad_rebate) = split /\|/, $node->safe_psql('postgres', q{
SELECT count(DISTINCT o.id),
       count(*) FILTER (WHERE loyalty.rebate(o.v, -b.threshold) <> -loyalty.rebate(o.v, b.threshold)
                           OR loyalty.rebate_rate(o.v, b.threshold) <> b.rate
                           OR loyalty.rebate(o.v, b.threshold) < 0)
  FROM ok_rebate_schedule o, LATERAL loyalty.brackets(o.v) b});
is($bad_rebate, 0,
	"rebate_schedule: rebate is symmetric and rebate_rate matches brackets() at every threshold of $schedules schedules");

note sprintf('fuzz loops took %.1fs in all', time() - $started);

# Still up, and no backend died along the way.
is($node->safe_psql('postgres', 'SELECT 1'), '1',
	'server alive after ' . (2 * $PER_TYPE) . ' mutated literals');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|server process .* was terminated/,
	'no backend crashed');

$node->stop;
done_testing();
