#!/usr/bin/env bash
# Accrual on Citus: what does loyalty cost a COPY into an invoice table
# distributed by customer?  A coordinator and two workers on loopback (the
# cluster of scripts/test-citus.sh), 32 shards.  Same run, same CSV files:
#
#   bare:    COPY into bench.bare, distributed like bench.sales, no trigger
#   loyalty: COPY into bench.sales, attached after loyalty.distribute()
#
# Both tables receive the same files in the same order (alternating, so
# that both grow alike); the first loyalty COPY also enrols every customer
# and is reported apart.  Then pgbench, paired runs alternating bare and
# loyalty: one single-row INSERT per transaction, a random known customer.
# At the end the points are checked against the rows in plain SQL, so that
# a fast wrong answer cannot pass as a figure.
#
# Run as root:  bash bench/citus.sh [CITUS_SOURCE_TARBALL]
# Knobs: BENCH_LINES (200000 per COPY), BENCH_CUSTOMERS (20000), BENCH_RUNS (5),
# BENCH_CLIENTS (4), BENCH_SECONDS (10 per pgbench run), BENCH_PAIRS (3),
# BENCH_KEY (text: customers 'C000042'; bigint: customers 5000000042, and
# loyalty's account keys bigint after distribute()), BENCH_SHAPE (flat: the
# customer, date and amount on each row; header: invoice lines, four per
# invoice, whose customer and date are on a header table distributed with
# them: each run COPYs the headers, then the lines, into both pairs of
# tables, and pgbench writes one invoice, a header and four lines, per
# transaction).
set -euo pipefail
RUN_KIND=citus-bench
export LOYALTY_CITUS_PORT=${LOYALTY_CITUS_PORT:-54345}
. "$(dirname "$0")/../scripts/lib.sh"
CITUS_TARBALL=${1:-}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/citus-lib.sh
. "$ROOT/scripts/citus-lib.sh"

LINES=${BENCH_LINES:-200000}
CUSTOMERS=${BENCH_CUSTOMERS:-20000}
RUNS=${BENCH_RUNS:-5}
CLIENTS=${BENCH_CLIENTS:-4}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
PAIRS=${BENCH_PAIRS:-3}
KEY=${BENCH_KEY:-text}
case "$KEY" in
  text) KEY_TYPE=text; key_of() { echo "'C' || lpad(($1)::text, 6, '0')"; } ;;
  bigint) KEY_TYPE=bigint; key_of() { echo "5000000000 + ($1)"; } ;;
  *) die "BENCH_KEY must be text or bigint" ;;
esac
SHAPE=${BENCH_SHAPE:-flat}
case "$SHAPE" in flat|header) ;; *) die "BENCH_SHAPE must be flat or header" ;; esac

ensure_packages
prepare_run_dir
ensure_citus
build_and_install
trap stop_all EXIT
cluster_up

sql() { node_sql "$COORDINATOR_PORT" -d "$DATABASE" -At "$@"; }
DATA=$RUN_DIR/data
mkdir -p "$DATA"; chown postgres: "$DATA"

if [ "$SHAPE" = flat ]; then
sql >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION loyalty;
CREATE SCHEMA bench;
CREATE TABLE bench.sales (invoice_id bigint NOT NULL, customer $KEY_TYPE NOT NULL, amount numeric(12,2) NOT NULL,
                          invoice_date date NOT NULL, PRIMARY KEY (customer, invoice_id));
CREATE TABLE bench.bare (LIKE bench.sales INCLUDING ALL);
SELECT create_distributed_table('bench.sales', 'customer');
SELECT create_distributed_table('bench.bare', 'customer', colocate_with => 'bench.sales');
SELECT loyalty.create_program('Bench Club');
SELECT * FROM loyalty.distribute('bench.sales');
SELECT loyalty.attach('bench.sales', 'Bench Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'invoice_date');
SQL
for r in $(seq 1 "$RUNS"); do
  sql -c "COPY (SELECT $r * $LINES + g, $(key_of "(g * 7919) % $CUSTOMERS"),
                       (g % 997) / 10.0 + 1, DATE '2025-01-01' + g % 365
                  FROM generate_series(1, $LINES) g) TO '$DATA/run$r.csv' (FORMAT csv)" >/dev/null
done
else
# lines carry the customer (their distribution column) and reference their
# header by invoice_id, indexed as an ERP indexes a foreign key
sql >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION loyalty;
CREATE SCHEMA bench;
CREATE TABLE bench.header (customer $KEY_TYPE NOT NULL, invoice_id bigint NOT NULL, invoice_date date NOT NULL,
                           PRIMARY KEY (customer, invoice_id));
CREATE TABLE bench.sales (customer $KEY_TYPE NOT NULL, invoice_id bigint NOT NULL, line_no int NOT NULL,
                          amount numeric(12,2) NOT NULL, PRIMARY KEY (customer, invoice_id, line_no));
CREATE INDEX ON bench.sales (invoice_id);
CREATE TABLE bench.bare_header (LIKE bench.header INCLUDING ALL);
CREATE TABLE bench.bare (LIKE bench.sales INCLUDING ALL);
SELECT create_distributed_table('bench.header', 'customer');
SELECT create_distributed_table(t, 'customer', colocate_with => 'bench.header')
  FROM unnest(ARRAY['bench.sales', 'bench.bare_header', 'bench.bare']) t;
SELECT loyalty.create_program('Bench Club');
SELECT * FROM loyalty.distribute('bench.header');
SELECT loyalty.attach('bench.sales', 'Bench Club', key_column => 'customer, invoice_id, line_no',
                      header => 'bench.header', line_header_column => 'invoice_id', header_id_column => 'invoice_id',
                      account_column => 'customer', amount_column => 'amount', date_column => 'invoice_date');
SQL
for r in $(seq 1 "$RUNS"); do
  sql -c "COPY (SELECT $(key_of "(g * 7919) % $CUSTOMERS"), $r * $LINES + g, DATE '2025-01-01' + g % 365
                  FROM generate_series(1, $LINES / 4) g) TO '$DATA/head$r.csv' (FORMAT csv)" >/dev/null
  sql -c "COPY (SELECT $(key_of "(g * 7919) % $CUSTOMERS"), $r * $LINES + g, n, ((g * n) % 997) / 10.0 + 1
                  FROM generate_series(1, $LINES / 4) g, generate_series(1, 4) n) TO '$DATA/run$r.csv' (FORMAT csv)" >/dev/null
done
fi

copy_secs() {  # table, file
  local t0 t1
  t0=$(date +%s.%N)
  sql -c "COPY $1 FROM '$2' (FORMAT csv)" >/dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'
}

log "COPY of $LINES rows ($SHAPE), $CUSTOMERS customers ($KEY_TYPE keys), 32 shards on 2 workers, $RUNS runs"
bare=(); loyalty=(); hbare=(); hloyalty=()
for r in $(seq 1 "$RUNS"); do
  hb=0; hl=0
  if [ "$SHAPE" = header ]; then
    hb=$(copy_secs bench.bare_header "$DATA/head$r.csv")
    hl=$(copy_secs bench.header "$DATA/head$r.csv")
  fi
  b=$(copy_secs bench.bare "$DATA/run$r.csv")
  l=$(copy_secs bench.sales "$DATA/run$r.csv")
  printf 'run %d: bare %.3f s, loyalty %.3f s%s%s\n' "$r" "$b" "$l" \
    "$([ "$SHAPE" = header ] && printf '; headers first: bare %.3f s, loyalty %.3f s' "$hb" "$hl")" \
    "$([ "$r" = 1 ] && echo ' (enrols every customer)')"
  bare+=("$b"); hbare+=("$hb"); hloyalty+=("$hl"); [ "$r" = 1 ] && first=$l || loyalty+=("$l")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
mb=$(median "${bare[@]}"); ml=$(median "${loyalty[@]}")
printf '\nmedian bare COPY:                  %.3f s\n' "$mb"
printf 'median COPY with accrual (runs 2+): %.3f s  = %.2fx bare\n' "$ml" "$(awk -v a="$ml" -v b="$mb" 'BEGIN {print a / b}')"
printf 'first COPY with accrual (enrols):   %.3f s  = %.2fx bare\n' "$first" "$(awk -v a="$first" -v b="$mb" 'BEGIN {print a / b}')"
if [ "$SHAPE" = header ]; then
  mhb=$(median "${hbare[@]}"); mhl=$(median "${hloyalty[@]}")
  printf 'median header COPY: bare %.3f s, with its trigger %.3f s  = %.2fx bare\n' "$mhb" "$mhl" \
    "$(awk -v a="$mhl" -v b="$mhb" 'BEGIN {print a / b}')"
fi

for t in bare sales; do
  if [ "$SHAPE" = flat ]; then
    cat >"$DATA/insert_$t.sql" <<PGB
\\set c random(0, $((CUSTOMERS - 1)))
\\set i random(1000000000, 9000000000)
INSERT INTO bench.$t VALUES (:i, $(key_of ":c"), 12.34, '2025-06-01') ON CONFLICT DO NOTHING;
PGB
  else
    h=$([ "$t" = bare ] && echo bare_header || echo header)
    cat >"$DATA/insert_$t.sql" <<PGB
\\set c random(0, $((CUSTOMERS - 1)))
\\set i random(1000000000, 9000000000)
BEGIN;
INSERT INTO bench.$h VALUES ($(key_of ":c"), :i, '2025-06-01') ON CONFLICT DO NOTHING;
INSERT INTO bench.$t SELECT $(key_of ":c"), :i, n, 3.25 * n FROM generate_series(1, 4) n ON CONFLICT DO NOTHING;
COMMIT;
PGB
  fi
done
chown -R postgres: "$DATA"
tps() {  # table
  as_pg "$PGBIN/pgbench" -n -h "$SOCK_DIR" -p "$COORDINATOR_PORT" -U postgres -c "$CLIENTS" -j "$CLIENTS" \
    -T "$SECONDS_PER_RUN" -f "$DATA/insert_$1.sql" "$DATABASE" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
log "pgbench: $([ "$SHAPE" = flat ] && echo 'one single-row INSERT' || echo 'one invoice (header + 4 lines)') per transaction, $CLIENTS clients, ${SECONDS_PER_RUN} s per run, $PAIRS pairs"
tb=(); tl=()
for r in $(seq 1 "$PAIRS"); do
  b=$(tps bare); l=$(tps sales)
  printf 'pair %d: bare %.0f TPS, loyalty %.0f TPS\n' "$r" "$b" "$l"
  tb+=("$b"); tl+=("$l")
done
mtb=$(median "${tb[@]}"); mtl=$(median "${tl[@]}")
printf '\nmedian TPS: bare %.0f, with accrual %.0f  = %.2fx bare\n' "$mtb" "$mtl" "$(awk -v a="$mtl" -v b="$mtb" 'BEGIN {print a / b}')"

exact=$(sql -c "SELECT count(*) FROM (SELECT customer, sum(trunc(amount))::bigint AS p FROM bench.sales GROUP BY 1) e
                 FULL JOIN (SELECT account_key, points FROM loyalty.balance) b ON b.account_key = e.customer
                WHERE e.p IS DISTINCT FROM b.points")
[ "$exact" = 0 ] || die "$exact accounts differ from their rows: the figures above measure a wrong accrual"
echo "every account's points equal its rows (plain SQL): checked"
