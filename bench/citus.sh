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
# loyalty's account keys bigint after distribute()).
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

ensure_packages
prepare_run_dir
ensure_citus
build_and_install
trap stop_all EXIT
cluster_up

sql() { node_sql "$COORDINATOR_PORT" -d "$DATABASE" -At "$@"; }
DATA=$RUN_DIR/data
mkdir -p "$DATA"; chown postgres: "$DATA"

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

copy_secs() {  # table, file
  local t0 t1
  t0=$(date +%s.%N)
  sql -c "COPY $1 FROM '$2' (FORMAT csv)" >/dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'
}

log "COPY of $LINES rows, $CUSTOMERS customers ($KEY_TYPE keys), 32 shards on 2 workers, $RUNS runs"
bare=(); loyalty=()
for r in $(seq 1 "$RUNS"); do
  b=$(copy_secs bench.bare "$DATA/run$r.csv")
  l=$(copy_secs bench.sales "$DATA/run$r.csv")
  printf 'run %d: bare %.3f s, loyalty %.3f s%s\n' "$r" "$b" "$l" "$([ "$r" = 1 ] && echo ' (enrols every customer)')"
  bare+=("$b"); [ "$r" = 1 ] && first=$l || loyalty+=("$l")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
mb=$(median "${bare[@]}"); ml=$(median "${loyalty[@]}")
printf '\nmedian bare COPY:                  %.3f s\n' "$mb"
printf 'median COPY with accrual (runs 2+): %.3f s  = %.2fx bare\n' "$ml" "$(awk -v a="$ml" -v b="$mb" 'BEGIN {print a / b}')"
printf 'first COPY with accrual (enrols):   %.3f s  = %.2fx bare\n' "$first" "$(awk -v a="$first" -v b="$mb" 'BEGIN {print a / b}')"

for t in bare sales; do
  cat >"$DATA/insert_$t.sql" <<PGB
\\set c random(0, $((CUSTOMERS - 1)))
\\set i random(1000000000, 9000000000)
INSERT INTO bench.$t VALUES (:i, $(key_of ":c"), 12.34, '2025-06-01') ON CONFLICT DO NOTHING;
PGB
done
chown -R postgres: "$DATA"
tps() {  # table
  as_pg "$PGBIN/pgbench" -n -h "$SOCK_DIR" -p "$COORDINATOR_PORT" -U postgres -c "$CLIENTS" -j "$CLIENTS" \
    -T "$SECONDS_PER_RUN" -f "$DATA/insert_$1.sql" "$DATABASE" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
log "pgbench: one single-row INSERT per transaction, $CLIENTS clients, ${SECONDS_PER_RUN} s per run, $PAIRS pairs"
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
