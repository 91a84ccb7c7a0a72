#!/usr/bin/env bash
# verify() benchmark: what does loyalty.verify(program) cost next to the
# plainest query over the same ERP rows?  Both read every row of the attached
# table; the baseline only sums amounts per customer and month:
#
#   a. SELECT customer_id, date_trunc('month', invoice_date), sum(amount)
#        FROM bench.invoice_line GROUP BY 1, 2                (baseline = 1.0)
#   b. SELECT * FROM loyalty.verify('Bench')                  (target <= 5x)
#   c. a. in one process (max_parallel_workers_per_gather = 0): the planner
#      runs a. in parallel, verify's scan is one process; on a machine shared
#      with other work a parallel query also gets a larger share of the CPUs
#
# They run alternately, RUNS times each, on a table the accrual trigger has
# accrued (so verify() reports nothing); the figures are medians and their
# ratios.  Also printed: verify(program, since) for the last month and
# verify(program, account) for the largest customer, the nightly checks.
#
# Run as root:  bash bench/verify.sh
# Knobs: BENCH_LINES (1000000), BENCH_CUSTOMERS (20000), BENCH_HOT_CUSTOMERS
# (10) with BENCH_HOT_PCT (50) % of the lines, BENCH_RUNS (3), BENCH_SEED,
# BENCH_SHARED_BUFFERS (1GB), BENCH_BUILD (1; 0 uses the installed build),
# BENCH_KEEP (0; 1 leaves the cluster running for EXPLAIN or perf).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=bench-verify  # a run directory of its own (.run-bench-verify)
export LOYALTY_PORT=${LOYALTY_PORT:-54413}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

LINES=${BENCH_LINES:-1000000}
CUSTOMERS=${BENCH_CUSTOMERS:-20000}
HOT=${BENCH_HOT_CUSTOMERS:-10}
HOT_PCT=${BENCH_HOT_PCT:-50}
RUNS=${BENCH_RUNS:-3}
SEED=${BENCH_SEED:-0.42}
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
BUILD=${BENCH_BUILD:-1}
KEEP=${BENCH_KEEP:-0}
SHAPE=${BENCH_SHAPE:-flat}
[[ $SHAPE =~ ^(flat|header)$ ]] || die "BENCH_SHAPE is flat or header, got '$SHAPE'"

for v in LINES CUSTOMERS HOT HOT_PCT RUNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done
[ "$HOT" -lt "$CUSTOMERS" ] || die "BENCH_HOT_CUSTOMERS ($HOT) must be below BENCH_CUSTOMERS ($CUSTOMERS)"
[ "$HOT_PCT" -le 100 ] || die "BENCH_HOT_PCT is a percentage"

LOG=$RUN_DIR/verify.log
RESULTS=$RUN_DIR/verify.results   # "variant seconds" lines, one per run
OUT_DIR=$BENCH_DIR/out

sql() { pg_sql -d bench "$@" >>"$LOG" 2>&1; }
sql_val() { pg_sql -d bench -qAt "$@" 2>>"$LOG"; }
note() { printf '   %s\n' "$*"; }
median() {
  sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1;
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  if [ "$KEEP" = 1 ]; then
    echo "cluster left running: PGHOST=$SOCK_DIR PGPORT=$CLUSTER_PORT psql -U postgres bench"
  else
    cluster_stop
  fi
  [ "$rc" -le 1 ] || printf '\nbench stopped (exit %s); the log is %s\n' "$rc" "$LOG" >&2
}

# The table and the program of bench/accrual.sh, and the same kind of data
# (invoices of 1-9 lines, dates over 12 months, HOT customers holding HOT_PCT%
# of the lines), inserted in one statement through the accrual trigger.
# BENCH_SHAPE=header: TPC-H's shape instead, lines keyed by (order, line
# number) whose customer and date live on the orders header, the amount an
# expression (extended price less discount).
load_sql() {
  cat <<'SQL'
SET max_parallel_workers_per_gather = 0;
CREATE EXTENSION loyalty;
CREATE SCHEMA bench;
SELECT loyalty.create_program('Bench', currency => 'EUR',
         ladder => 'Member:0, Silver:50000, Gold:250000, Platinum:1000000',
         points_per_unit => 1, rounding => 'toward_zero');
SELECT loyalty.add_rule('Bench', '2000-01-01', 1, product_line_multipliers => '{"SOLAR": 2}');
SELECT setseed(:seed);
CREATE TEMP TABLE inv AS
  SELECT i::bigint AS invoice_id,
         CASE WHEN random() < :hot_share
              THEN 1 + floor(random() * :hot)::int
              ELSE :hot + 1 + floor(random() * (:customers - :hot))::int
         END AS customer_id,
         1 + floor(random() * 9)::int AS n_lines
    FROM generate_series(1, ceil(:lines / 5.0 * 1.2)::bigint + 20) AS i;
CREATE TEMP TABLE line AS
SELECT inv.invoice_id, l.line_no, inv.customer_id,
       (ARRAY['SOLAR', 'INVERTER', 'BATTERY', 'MOUNTING', 'CABLE', 'SERVICE'])[1 + floor(random() * 6)::int] AS product_line,
       q.quantity,
       round(q.quantity * (2 + random() * 198)::numeric, 2)::numeric(14,2) AS amount,
       round((random() * 0.1)::numeric, 2)::numeric(4,2) AS discount
  FROM inv
 CROSS JOIN LATERAL generate_series(1, inv.n_lines) AS l(line_no)
 CROSS JOIN LATERAL (SELECT round((1 + random() * 99)::numeric, 3)::numeric(12,3) AS quantity) AS q
 ORDER BY inv.invoice_id, l.line_no
 LIMIT :lines;
CREATE TEMP TABLE last AS SELECT max(invoice_id) AS last_invoice FROM line;
SQL
  if [ "$SHAPE" = flat ]; then
    cat <<'SQL'
CREATE TABLE bench.invoice_line (
  invoice_id   bigint        NOT NULL,
  line_no      int           NOT NULL,
  customer_id  int           NOT NULL,
  invoice_date date          NOT NULL,
  product_line text          NOT NULL,
  quantity     numeric(12,3) NOT NULL,
  amount       numeric(14,2) NOT NULL,
  PRIMARY KEY (invoice_id, line_no)
);
SELECT loyalty.attach('bench.invoice_line', 'Bench',
         account_column => 'customer_id', amount_column => 'amount',
         date_column => 'invoice_date', product_line_column => 'product_line');
INSERT INTO bench.invoice_line
SELECT l.invoice_id, l.line_no, l.customer_id, date '2024-01-01' + ((l.invoice_id - 1) * 366 / m.last_invoice)::int,
       l.product_line, l.quantity, l.amount
  FROM line l, last m ORDER BY 1, 2;
SQL
  else
    cat <<'SQL'
CREATE TABLE bench.orders (
  o_orderkey   bigint PRIMARY KEY,
  o_custkey    int    NOT NULL,
  o_orderdate  date   NOT NULL
);
CREATE TABLE bench.lineitem (
  l_orderkey      bigint        NOT NULL,
  l_linenumber    int           NOT NULL,
  l_quantity      numeric(12,3) NOT NULL,
  l_extendedprice numeric(14,2) NOT NULL,
  l_discount      numeric(4,2)  NOT NULL,
  l_productline   text          NOT NULL,
  PRIMARY KEY (l_orderkey, l_linenumber)
);
SELECT loyalty.attach('bench.lineitem', 'Bench',
         key_column => 'l_orderkey, l_linenumber',
         header => 'bench.orders', line_header_column => 'l_orderkey', header_id_column => 'o_orderkey',
         account_column => 'o_custkey', date_column => 'o_orderdate',
         amount_expression => 'l_extendedprice * (1 - l_discount)',
         product_line_column => 'l_productline');
INSERT INTO bench.orders
SELECT DISTINCT l.invoice_id, l.customer_id, date '2024-01-01' + ((l.invoice_id - 1) * 366 / m.last_invoice)::int
  FROM line l, last m ORDER BY 1;
INSERT INTO bench.lineitem
SELECT l.invoice_id, l.line_no, l.quantity, l.amount, l.discount, l.product_line FROM line l ORDER BY 1, 2;
SQL
  fi
  echo 'VACUUM (ANALYZE);'
  echo 'CHECKPOINT;'
}

load() {
  log "loading $LINES invoice lines ($SHAPE) for $CUSTOMERS customers through the accrual trigger"
  load_sql | pg_sql -d bench -q -v lines="$LINES" -v customers="$CUSTOMERS" -v hot="$HOT" \
      -v hot_share="$(awk -v p="$HOT_PCT" 'BEGIN { print p / 100 }')" -v seed="$SEED" >>"$LOG" 2>&1 \
    || die "loading failed; see $LOG"
  DATA_FACTS=$(sql_val <<SQL
SELECT format('%s lines (%s), %s customers, %s to %s, table %s',
              count(*), '$SHAPE', count(DISTINCT c), min(d), max(d),
              pg_size_pretty(pg_table_size('$TABLE')))
  FROM ($SOURCE) s;
SQL
)
  note "$DATA_FACTS"
}

if [ "$SHAPE" = flat ]; then
  TABLE=bench.invoice_line
  SOURCE="SELECT customer_id AS c, invoice_date AS d, amount AS a FROM bench.invoice_line"
else
  TABLE=bench.lineitem
  SOURCE="SELECT o.o_custkey AS c, o.o_orderdate AS d, l.l_extendedprice * (1 - l.l_discount) AS a
            FROM bench.lineitem l JOIN bench.orders o ON o.o_orderkey = l.l_orderkey"
fi
PLAIN="SELECT c, date_trunc('month', d), sum(a) FROM ($SOURCE) s GROUP BY 1, 2"
VERIFY="SELECT * FROM loyalty.verify('Bench')"

# One timed query (psql's \timing, the rows counted on the server so that
# printing them costs nothing), after an untimed setting; records "variant
# seconds", sets ROWS.
timed() { # variant query [setting]
  local out ms secs
  out=$(pg_sql -d bench -qAt -c "${3:-SET application_name = bench_verify}" -c '\timing on' -c "SELECT count(*) FROM ($2) q" 2>&1) \
    || { printf '%s\n' "$out" >>"$LOG"; die "$1 failed: $(grep -m1 ERROR <<<"$out" || echo 'see the log')"; }
  printf '%s\n' "$out" >>"$LOG"
  ROWS=$(head -1 <<<"$out")
  ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out")
  secs=$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }')
  echo "$1 $secs" >>"$RESULTS"
  note "$(printf '%-8s %8.3f s  (%s rows)' "$1" "$secs" "$ROWS")"
}
values_of() { awk -v k="$1" '$1 == k { print $2 }' "$RESULTS"; }

machine_facts() {
  echo "machine:    $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
  echo "load:       1-minute load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end"
  echo "postgres:   $(sql_val -c 'SELECT version()')"
  echo "settings:   shared_buffers=$SHARED_BUFFERS, work_mem=$(sql_val -c 'SHOW work_mem'), jit=$(sql_val -c 'SHOW jit')"
  echo "data:       $DATA_FACTS"
}

# ---------------------------------------------------------------- main

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
ensure_packages
if [ "$BUILD" = 1 ]; then build_and_install; else log "BENCH_BUILD=0: using the installed extension"; fi
trap cleanup EXIT
trap 'exit 130' INT TERM
CLUSTER_CONF_EXTRA="shared_buffers = '$SHARED_BUFFERS'
max_wal_size = '8GB'"
cluster_start
mkdir -p "$RUN_DIR" && : >"$LOG" && : >"$RESULTS"
pg_sql -q -c "CREATE DATABASE bench" >>"$LOG" 2>&1
load

# one untimed run of each warms the cache
log "warm-up"
timed warm-plain "$PLAIN"
timed warm-verify "$VERIFY"
[ "$ROWS" = 0 ] || die "verify('Bench') reports $ROWS differences on freshly accrued data"

SERIAL="SET max_parallel_workers_per_gather = 0"
log "plain aggregate, verify(program) and the serial plain aggregate, alternately, $RUNS runs each"
for ((i = 1; i <= RUNS; i++)); do
  timed plain "$PLAIN"
  timed verify "$VERIFY"
  timed serial "$PLAIN" "$SERIAL"
done

log "the nightly checks"
HOT_KEY=$(sql_val -c "SELECT c FROM ($SOURCE) s GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")
LAST_MONTH=$(sql_val -c "SELECT date_trunc('month', max(d))::date FROM ($SOURCE) s")
SCOPED=1
if [ "$(sql_val -c "SELECT count(*) FROM pg_proc WHERE oid::regprocedure::text IN ('loyalty.verify(text,date)', 'loyalty.verify(text,text)')")" = 2 ]; then
  timed since "SELECT * FROM loyalty.verify('Bench', since => date '$LAST_MONTH')"
  timed account "SELECT * FROM loyalty.verify('Bench', account => '$HOT_KEY')"
else
  SCOPED=0
  note "verify(program, since) and verify(program, account) are not in this build"
fi

plain=$(values_of plain | median)
verify=$(values_of verify | median)
serial=$(values_of serial | median)
r=$(ratio "$verify" "$plain")
if awk -v r="$r" 'BEGIN { exit !(r <= 5) }'; then target="<= 5x: met"; else target="<= 5x: NOT met"; fi

mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/verify-$(date +%Y%m%d-%H%M%S).txt
{
  echo
  echo "==================== verify benchmark ===================="
  machine_facts
  echo
  printf '%-52s | %16s | %10s | %s\n' "query" "seconds (median)" "ratio" "target"
  printf '%-52s | %16s | %9sx | %s\n' "a. plain aggregate per customer and month" "$plain" "1.00" "baseline, $RUNS runs: $(values_of plain | paste -sd' ' -)"
  printf '%-52s | %16s | %9sx | %s\n' "b. loyalty.verify('Bench')" "$verify" "$r" "$target; runs: $(values_of verify | paste -sd' ' -)"
  printf '%-52s | %16s | %9sx | %s\n' "c. a. in one process" "$serial" "$(ratio "$serial" "$plain")" "verify / c. = $(ratio "$verify" "$serial")x; runs: $(values_of serial | paste -sd' ' -)"
  if [ "$SCOPED" = 1 ]; then
    printf '%-52s | %16s | %9sx | %s\n' "   verify('Bench', since => '$LAST_MONTH')" "$(values_of since)" "$(ratio "$(values_of since)" "$plain")" "one run"
    printf '%-52s | %16s | %9sx | %s\n' "   verify('Bench', account => '$HOT_KEY') (largest)" "$(values_of account)" "$(ratio "$(values_of account)" "$plain")" "one run"
  fi
} | tee "$REPORT"
echo
echo "report saved to $REPORT; psql output in $LOG"
