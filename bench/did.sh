#!/usr/bin/env bash
# did() benchmark: what does the difference-in-differences aggregate cost
# next to avg() over the same rows, in the same run?
#
#   a. SELECT avg(post - pre) FROM bench.did_rows         (baseline = 1.0)
#   b. SELECT loyalty.did(pilot, pre, post) FROM bench.did_rows  (target <= 1.2x)
#   c. SELECT avg(pre) FROM bench.did_rows   (avg() of one column: the floor)
#
# a. reads the same two numeric columns per row as b. and aggregates one
# number per row (numeric's own accumulation); b. also reads the group
# column, keeps two groups' Welford states and finishes with the t quantile.
# All three get the planner's parallel plan (max_parallel_workers_per_gather
# 2, the default; the plan of b. is printed).  They run alternately, RUNS
# times each, on a warm cache; the figures are medians and their ratios.
#
# Run as root:  bash bench/did.sh
# Knobs: BENCH_ROWS (10000000), BENCH_RUNS (5), BENCH_SHARED_BUFFERS (1GB),
# BENCH_BUILD (1; 0 uses the installed build), BENCH_KEEP (0; 1 leaves the
# cluster running).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=bench-did  # a run directory of its own (.run-bench-did)
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

ROWS=${BENCH_ROWS:-10000000}
RUNS=${BENCH_RUNS:-5}
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
BUILD=${BENCH_BUILD:-1}
KEEP=${BENCH_KEEP:-0}
for v in ROWS RUNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done

LOG=$RUN_DIR/did.log
RESULTS=$RUN_DIR/did.results   # "variant seconds" lines, one per run

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

# Accounts' spend before and after, as an ROI query would feed did(): pre
# between 100 and 10,100 with two decimals, post = pre + a change, half of
# the rows pilot.  Hash-based, so every run has the same rows.
load() {
  log "loading $ROWS rows"
  pg_sql -d bench -q >>"$LOG" 2>&1 <<SQL || die "loading failed; see $LOG"
CREATE EXTENSION loyalty;
CREATE SCHEMA bench;
CREATE TABLE bench.did_rows (pilot boolean NOT NULL, pre numeric(14,2) NOT NULL, post numeric(14,2) NOT NULL);
INSERT INTO bench.did_rows
SELECT (h & 1) = 1, round(100 + (h >> 8 & 1048575) / 104.8575, 2),
       round(100 + (h >> 8 & 1048575) / 104.8575 + ((h >> 30 & 65535) - 32768) / 65.536 + (h & 1) * 25, 2)
  FROM (SELECT hashint8extended(i, 0) AS h FROM generate_series(1, $ROWS) i) g;
VACUUM (ANALYZE) bench.did_rows;
CHECKPOINT;
SQL
  DATA_FACTS=$(sql_val -c "SELECT format('%s rows, table %s', count(*), pg_size_pretty(pg_table_size('bench.did_rows'))) FROM bench.did_rows")
  note "$DATA_FACTS"
}

# One timed query (psql's \timing); records "variant seconds".
timed() { # variant query
  local out ms secs
  out=$(pg_sql -d bench -qAt -c '\timing on' -c "$2" 2>&1) \
    || { printf '%s\n' "$out" >>"$LOG"; die "$1 failed: $(grep -m1 ERROR <<<"$out" || echo 'see the log')"; }
  printf '%s\n' "$out" >>"$LOG"
  ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out")
  secs=$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }')
  echo "$1 $secs" >>"$RESULTS"
  note "$(printf '%-8s %8.3f s' "$1" "$secs")"
}
values_of() { awk -v k="$1" '$1 == k { print $2 }' "$RESULTS"; }

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

AVG="SELECT avg(post - pre) FROM bench.did_rows"
DID="SELECT loyalty.did(pilot, pre, post) FROM bench.did_rows"
FLOOR="SELECT avg(pre) FROM bench.did_rows"

log "plan of did()"
PLAN=$(sql_val -c "EXPLAIN (COSTS OFF) $DID")
sed 's/^/   /' <<<"$PLAN"
log "result"
sql_val -c "SELECT (d).* FROM ($DID) x(d)" -P format=aligned -P tuples_only=off | sed 's/^/   /'

log "warm-up"
timed warm "$AVG"
timed warm "$DID"

log "avg(post - pre), did() and avg(pre), alternately, $RUNS runs each"
for ((i = 1; i <= RUNS; i++)); do
  timed avg "$AVG"
  timed did "$DID"
  timed floor "$FLOOR"
done

avg=$(values_of avg | median)
did=$(values_of did | median)
flr=$(values_of floor | median)
r=$(ratio "$did" "$avg")
if awk -v r="$r" 'BEGIN { exit !(r <= 1.2) }'; then target="<= 1.2x: met"; else target="<= 1.2x: NOT met"; fi

log "summary"
cat <<EOF
machine:    $(nproc) CPUs, 1-minute load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end
postgres:   $(sql_val -c 'SELECT version()')
data:       $DATA_FACTS
avg(post - pre)   $avg s   1.00x (baseline)
did()             $did s   ${r}x   target $target
avg(pre)          $flr s   $(ratio "$flr" "$avg")x
EOF
