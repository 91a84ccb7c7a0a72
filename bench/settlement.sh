#!/usr/bin/env bash
# Settlement benchmark: what does settling a quarter cost next to the
# plainest scan of the same ledger?
#
#   a. SELECT account_key, sum(points) FROM loyalty.ledger GROUP BY 1
#                                                         (baseline = 1.0)
#   b. SELECT * FROM loyalty.settle('Bench', '2025-12-31') in a transaction
#      rolled back, so that every run settles the same quarter afresh
#                                                         (target <= 2x)
#
# The data: BENCH_ACCOUNTS (100,000) accounts and BENCH_STATEMENTS (100)
# INSERT statements into an attached invoice table, each with one invoice
# per account, dated over the twelve months of 2025.  The accrual trigger
# posts one ledger entry per account and statement, so the ledger holds
# ACCOUNTS x STATEMENTS entries (10,000,000), all written by the real
# accrual path, each statement folded (loyalty.fold) as pg_cron would every
# minute.
# Invoice amounts spread the accounts over every tier, so the run has real
# tier changes to write; the first three quarters are settled before (not
# timed), so the timed run is an ordinary quarter-end.  Both queries run alternately, BENCH_RUNS times
# each, after one untimed run of each; the figures are medians.
#
# Run as root:  bash bench/settlement.sh        (~15 minutes on 2 cores)
# Knobs: BENCH_ACCOUNTS, BENCH_STATEMENTS, BENCH_RUNS (3),
# BENCH_SHARED_BUFFERS (1GB), BENCH_BUILD (1; 0 uses the installed build),
# BENCH_KEEP (0; 1 leaves the cluster running).  The port is LOYALTY_PORT
# (.env).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=bench-settlement  # a run directory of its own (.run-bench-settlement)
export LOYALTY_PORT=${LOYALTY_PORT:-54423}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

ACCOUNTS=${BENCH_ACCOUNTS:-100000}
STATEMENTS=${BENCH_STATEMENTS:-100}
RUNS=${BENCH_RUNS:-3}
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
BUILD=${BENCH_BUILD:-1}
KEEP=${BENCH_KEEP:-0}
for v in ACCOUNTS STATEMENTS RUNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done

LOG=$RUN_DIR/settlement.log
RESULTS=$RUN_DIR/settlement.results   # "variant seconds" lines, one per run
OUT_DIR=$BENCH_DIR/out

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

load() {
  log "loading $STATEMENTS statements x $ACCOUNTS accounts through the accrual trigger"
  pg_sql -d bench -q >>"$LOG" 2>&1 <<SQL || die "loading failed; see $LOG"
CREATE EXTENSION loyalty;
CREATE SCHEMA bench;
CREATE TABLE bench.invoice (id bigint PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL,
                            amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('Bench', ladder => 'Silver:50000, Gold:250000, Platinum:1000000',
                              qualification_window => '12 months');
SELECT loyalty.attach('bench.invoice', 'Bench', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date');
SQL
  local s
  for ((s = 0; s < STATEMENTS; s++)); do
    # one invoice per account; the statement's month cycles through 2025;
    # an account's yearly spend is about STATEMENTS x (its key mod 25) x 400
    pg_sql -d bench -q -c "INSERT INTO bench.invoice
      SELECT $s::bigint * $ACCOUNTS + g, g, date '2025-01-01' + ($s % 12) * 30 + g % 28,
             (g % 25) * 400 + (g % 7)
      FROM generate_series(1, $ACCOUNTS) g" >>"$LOG" 2>&1 || die "statement $s failed; see $LOG"
    # folded after every statement, as pg_cron's fold every minute would:
    # a fold's rounds each read the program's deltas in key order, so one
    # fold of a million deltas costs far more than ten of 100,000
    # (statistics first: fold prepares its plans in each new backend, and
    # plans made while the tables look empty turn a fold of 50,000 new
    # accounts from half a second into minutes)
    pg_sql -d bench -q -c "ANALYZE loyalty.balance_delta, loyalty.balance_folded, loyalty.account" \
      -c "SELECT loyalty.fold('Bench')" >>"$LOG" 2>&1 || die "fold failed; see $LOG"
    if (( (s + 1) % 10 == 0 )); then note "$((s + 1)) of $STATEMENTS statements"; fi
  done
  pg_sql -d bench -q -c "SELECT loyalty.fold('Bench')" -c 'VACUUM (ANALYZE)' -c 'CHECKPOINT' >>"$LOG" 2>&1 \
    || die "fold failed; see $LOG"
  DATA_FACTS=$(sql_val <<'SQL'
SELECT format('%s ledger entries, %s accounts, %s invoices, ledger %s',
              (SELECT count(*) FROM loyalty.ledger), (SELECT count(*) FROM loyalty.account),
              (SELECT count(*) FROM bench.invoice), pg_size_pretty(pg_table_size('loyalty.ledger')));
SQL
)
  note "$DATA_FACTS"
}

PLAIN="SELECT account_key, sum(points) FROM loyalty.ledger GROUP BY 1"
SETTLE="SELECT * FROM loyalty.settle('Bench', '2025-12-31')"

# One timed query (psql's \timing; the plain scan's rows counted on the
# server so that printing them costs nothing); records "variant seconds".
timed() { # variant query
  local out ms secs
  if [ "$1" = settle ] || [ "$1" = warm-settle ]; then
    out=$(pg_sql -d bench -qAt -c "SET client_min_messages = warning" -c 'BEGIN' -c '\timing on' -c "$2" \
            -c '\timing off' -c 'ROLLBACK' 2>&1) \
      || { printf '%s\n' "$out" >>"$LOG"; die "$1 failed: $(grep -m1 ERROR <<<"$out" || echo 'see the log')"; }
  else
    out=$(pg_sql -d bench -qAt -c '\timing on' -c "SELECT count(*) FROM ($2) q" 2>&1) \
      || { printf '%s\n' "$out" >>"$LOG"; die "$1 failed: $(grep -m1 ERROR <<<"$out" || echo 'see the log')"; }
  fi
  printf '%s\n' "$out" >>"$LOG"
  ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -1)
  secs=$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }')
  echo "$1 $secs" >>"$RESULTS"
  note "$(printf '%-12s %8.3f s  %s' "$1" "$secs" "$(head -1 <<<"$out" | cut -c1-90)")"
}
values_of() { awk -v k="$1" '$1 == k { print $2 }' "$RESULTS"; }

machine_facts() {
  echo "machine:    $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
  echo "load:       1-minute load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end"
  echo "postgres:   $(sql_val -c 'SELECT version()')"
  echo "settings:   shared_buffers=$SHARED_BUFFERS, work_mem=$(sql_val -c 'SHOW work_mem'), max_parallel_workers_per_gather=$(sql_val -c 'SHOW max_parallel_workers_per_gather')"
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

# the quarters before are settled, as they would have been: the timed run
# is a program's ordinary quarter-end, not its first settlement ever
log "settling 2025's first three quarters (untimed)"
pg_sql -d bench -q -c "SET client_min_messages = warning" \
  -c "SELECT count(*) FROM loyalty.settle('Bench', '2025-03-31')" \
  -c "SELECT count(*) FROM loyalty.settle('Bench', '2025-06-30')" \
  -c "SELECT count(*) FROM loyalty.settle('Bench', '2025-09-30')" >>"$LOG" 2>&1 || die "settling failed; see $LOG"

log "warm-up"
timed warm-plain "$PLAIN"
timed warm-settle "$SETTLE"

log "plain scan and settle, alternately, $RUNS runs each"
for ((i = 1; i <= RUNS; i++)); do
  timed plain "$PLAIN"
  timed settle "$SETTLE"
done

plain=$(values_of plain | median)
settle=$(values_of settle | median)
r=$(ratio "$settle" "$plain")
if awk -v r="$r" 'BEGIN { exit !(r <= 2) }'; then target="<= 2x: met"; else target="<= 2x: NOT met"; fi

mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/settlement-$(date +%Y%m%d-%H%M%S).txt
{
  echo
  echo "==================== settlement benchmark ===================="
  machine_facts
  echo
  printf '%-58s | %16s | %10s | %s\n' "query" "seconds (median)" "ratio" "target"
  printf '%-58s | %16s | %9sx | %s\n' "a. SELECT account_key, sum(points) FROM ledger GROUP BY 1" "$plain" "1.00" "baseline, $RUNS runs: $(values_of plain | paste -sd' ' -)"
  printf '%-58s | %16s | %9sx | %s\n' "b. loyalty.settle('Bench', '2025-12-31'), rolled back" "$settle" "$r" "$target; runs: $(values_of settle | paste -sd' ' -)"
} | tee "$REPORT"
echo
echo "report saved to $REPORT; psql output in $LOG"
