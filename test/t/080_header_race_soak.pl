# Header changes racing line statements, at random: a differential soak.
#
# pgbench runs 4 clients over 30 invoices of 5 customers.  Each transaction
# changes an invoice header's customer or date, or inserts, updates or
# deletes a line, or does both (a line and a header, of the same or another
# invoice), and stays open a moment before COMMIT so that transactions
# overlap.  Each transaction writes at most one ERP row that another one
# could lock (a header, or a line), so the ERP alone never deadlocks:
# under READ COMMITTED every transaction must succeed (pgbench stops a
# client at its first error), i.e. loyalty adds no deadlock and no error.
# Under REPEATABLE READ the ERP's own serialization failures are retried.
#
# After each run the points per customer and document month, and every
# balance, are recomputed from the ERP's rows in plain SQL and compared with
# loyalty's, and loyalty.verify() must be empty.  How many races happened
# depends on the timing and is only reported, never asserted.
use strict;
use warnings FATAL => 'all';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('header_race');
$node->init;
$node->append_conf('postgresql.conf', "max_connections = 20\ndeadlock_timeout = '100ms'");
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION loyalty;
CREATE TABLE hdr (id int PRIMARY KEY, customer_id int NOT NULL, inv_date date NOT NULL);
CREATE TABLE line (hid int NOT NULL REFERENCES hdr, line_no int NOT NULL, amount numeric(12,2) NOT NULL,
                   PRIMARY KEY (hid, line_no));
SELECT loyalty.create_program('Club');
SELECT loyalty.attach('line', 'Club', account_column => 'customer_id', date_column => 'inv_date',
                      amount_column => 'amount', header => 'hdr', line_header_column => 'hid');
INSERT INTO hdr SELECT i, 1 + i % 5, date '2024-03-01' + i FROM generate_series(1, 30) i;
INSERT INTO line SELECT i, n, 10 * n FROM generate_series(1, 30) i, generate_series(1, 3) n;
});

my $pause = "SELECT pg_catalog.pg_sleep(0.002);\n";
my %scripts = (
	'hdr_customer' => "\\set inv random(1, 30)\n\\set cust random(1, 5)\n"
	  . "BEGIN;\nUPDATE hdr SET customer_id = :cust WHERE id = :inv;\n${pause}COMMIT;\n",
	'hdr_date' => "\\set inv random(1, 30)\n\\set d random(0, 60)\n"
	  . "BEGIN;\nUPDATE hdr SET inv_date = date '2024-03-01' + :d WHERE id = :inv;\n${pause}COMMIT;\n",
	'line_insert' => "\\set inv random(1, 30)\n\\set ln random(100, 1000000000)\n\\set amt random(1, 90)\n"
	  . "BEGIN;\nINSERT INTO line VALUES (:inv, :ln, :amt) ON CONFLICT DO NOTHING;\n${pause}COMMIT;\n",
	'line_update' => "\\set inv random(1, 30)\n\\set amt random(1, 90)\n"
	  . "BEGIN;\nUPDATE line SET amount = :amt WHERE hid = :inv AND line_no = 1;\n${pause}COMMIT;\n",
	'line_delete' => "\\set inv random(1, 30)\n"
	  . "BEGIN;\nDELETE FROM line WHERE hid = :inv AND line_no = (SELECT max(line_no) FROM line WHERE hid = :inv AND line_no > 3);\n${pause}COMMIT;\n",
	'both' => "\\set inv random(1, 30)\n\\set inv2 random(1, 30)\n\\set cust random(1, 5)\n"
	  . "\\set ln random(100, 1000000000)\n\\set amt random(1, 90)\n"
	  . "BEGIN;\nINSERT INTO line VALUES (:inv2, :ln, :amt) ON CONFLICT DO NOTHING;\n$pause"
	  . "UPDATE hdr SET customer_id = :cust WHERE id = :inv;\n${pause}COMMIT;\n");

# The ERP's rows against loyalty's sums: mismatching (customer, month)s,
# mismatching balances, verify() rows.
my $check = q{
WITH expected AS (
  SELECT h.customer_id::text AS account_key, date_trunc('month', h.inv_date)::date AS month,
         sum(trunc(l.amount))::bigint AS points
    FROM line l JOIN hdr h ON h.id = l.hid GROUP BY 1, 2),
actual AS (
  SELECT account_key, month, sum(points)::bigint AS points
    FROM loyalty.accrual_month GROUP BY 1, 2 HAVING sum(points) <> 0)
SELECT (SELECT count(*) FROM expected e FULL JOIN actual a USING (account_key, month)
         WHERE e.points IS DISTINCT FROM a.points)
       || ' ' ||
       (SELECT count(*)
          FROM (SELECT account_key, sum(points) AS points FROM expected GROUP BY 1) e
          FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE points <> 0) b USING (account_key)
         WHERE e.points IS DISTINCT FROM b.points)
       || ' ' ||
       (SELECT count(*) FROM loyalty.verify('Club'));
};

foreach my $run (
	[ 'read committed', '' ],
	[ 'repeatable read', '--max-tries=1000' ])
{
	my ($level, $retry) = @$run;
	$node->safe_psql('postgres',
		"ALTER DATABASE postgres SET default_transaction_isolation = '$level'");
	$node->pgbench(
		"--no-vacuum --client=4 --jobs=2 --transactions=150 $retry",
		0,
		[qr{processed: 600/600}],
		[qr{^$}],
		"concurrent header changes and line statements, $level: no error",
		{ map { ("${_}_" . ($level =~ s/ /_/r)) => $scripts{$_} } keys %scripts });
	is($node->safe_psql('postgres', $check), '0 0 0',
		"$level: points per customer and month, balances and verify() agree with the ERP's rows");
	diag("$level: "
		  . $node->safe_psql('postgres',
			"SELECT count(*) FROM loyalty.ledger WHERE kind = 'restate'")
		  . " restate entries");
}

$node->stop;
done_testing();
