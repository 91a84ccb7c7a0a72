#!/usr/bin/env bash
# Concurrent soak: does attaching loyalty add lock waits, deadlocks,
# serialization failures or errors that the ERP alone would not have?
#
# K sessions run random multi-statement transactions against an ERP
# invoice-line table (or order headers and their lines, SOAK_SHAPE=header):
# 1-5 statements per transaction, each statement
# invoicing 1-3 customers of a small hot set, in random order, with a short
# random think time after each statement (an ERP client does work between
# its statements while its transaction is open).  The same generated
# transaction files run twice on a fresh schema: once bare (no trigger), once
# with loyalty attached.  Per run it reports deadlocks (pg_stat_database),
# serialization failures and other errors (from the sessions' output), and
# lock waits longer than deadlock_timeout (log_lock_waits: "still waiting"
# lines in the server log).  After the loyalty run, loyalty.verify() and a
# plain-SQL check of every balance and tier against the ERP rows.
#
# Exit status 0 when the loyalty run had no more deadlocks, lock waits or
# errors than the bare run and its checks passed; 1 otherwise (or when the
# soak could not run).
#
# Run as root:  bash bench/soak.sh       (under a minute on 2 cores)
# Knobs from the environment; see bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=soak  # a run directory of its own (.run-soak), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54405}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

SESSIONS=${SOAK_SESSIONS:-3}
STATEMENTS=${SOAK_STATEMENTS:-1500}     # in total, over all sessions
HOT=${SOAK_HOT_CUSTOMERS:-10}
THINK_MS=${SOAK_THINK_MS:-10}           # mean think time after a statement, 0 for none
DEADLOCK_TIMEOUT_MS=${SOAK_DEADLOCK_TIMEOUT_MS:-100}
ISOLATION=${SOAK_ISOLATION:-read committed}
SEED=${SOAK_SEED:-42}
CAP=${SOAK_MONTH_CAP:-20000}            # the program's monthly points cap
SHAPE=${SOAK_SHAPE:-lines}              # lines: customer on the line; header: on the order header
BUILD=${SOAK_BUILD:-1}                  # 0: use the extension already installed

for v in SESSIONS STATEMENTS HOT DEADLOCK_TIMEOUT_MS SEED CAP; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done
[[ $THINK_MS =~ ^[0-9]+$ ]] || die "SOAK_THINK_MS must be a whole number of milliseconds, got '$THINK_MS'"
[ "$HOT" -ge 3 ] || die "SOAK_HOT_CUSTOMERS must be at least 3 (a statement invoices up to 3 customers)"
[ "$STATEMENTS" -ge "$SESSIONS" ] || die "SOAK_STATEMENTS must be at least SOAK_SESSIONS"
[[ $SHAPE =~ ^(lines|header)$ ]] || die "SOAK_SHAPE is lines or header, got '$SHAPE'"
case ${ISOLATION,,} in
  "read committed" | "repeatable read" | serializable) ;;
  *) die "SOAK_ISOLATION is read committed, repeatable read or serializable, got '$ISOLATION'" ;;
esac

CLUSTER_CONF_EXTRA="log_lock_waits = on
deadlock_timeout = '${DEADLOCK_TIMEOUT_MS}ms'
log_line_prefix = '%m [%p] '"

WORK_DIR=$RUN_DIR/work
# The ERP rows that earn, whatever the shape: document, customer, date, amount.
if [ "$SHAPE" = lines ]; then
  FACTS='SELECT invoice_id AS doc_id, customer_id, invoice_date, amount FROM erp.invoice_line'
else
  FACTS='SELECT order_id AS doc_id, o.customer_id, o.order_date AS invoice_date, l.quantity * l.unit_price AS amount
           FROM erp.orders o JOIN erp.order_line l USING (order_id)'
fi
LOG=$RUN_DIR/soak.log
OUT_DIR=$BENCH_DIR/out
FAILED=0
declare -A R=()                         # "<run>.<metric>" -> value

sql() { pg_sql -d soak "$@" >>"$LOG" 2>&1; }
sql_val() { pg_sql -d soak -qAt "$@" 2>>"$LOG"; }
note() { printf '   %s\n' "$*"; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  cluster_stop
  [ "$rc" -le 1 ] || printf '\nsoak stopped (exit %s); the log is %s\n' "$rc" "$LOG" >&2
}

# ---------------------------------------------------------------- workload

# One file of transactions per session, the same bytes for both runs.  awk's
# srand() makes it reproducible; invoice ids are unique by construction
# (session, statement, row), so the ERP alone never waits on a key.
generate_sessions() {
  local s per extra n
  per=$((STATEMENTS / SESSIONS)); extra=$((STATEMENTS % SESSIONS))
  mkdir -p "$WORK_DIR"
  for ((s = 1; s <= SESSIONS; s++)); do
    n=$((per + (s <= extra ? 1 : 0)))
    awk -v s="$s" -v per="$n" -v hot="$HOT" -v seed="$SEED" -v think="$THINK_MS" -v iso="$ISOLATION" -v shape="$SHAPE" '
      BEGIN {
        srand(seed * 1000 + s)
        split("SOLAR INVERTER BATTERY MOUNTING CABLE SERVICE", pl, " ")
        j = 0
        while (j < per) {
          n = 1 + int(rand() * 5); if (n > per - j) n = per - j
          printf "BEGIN ISOLATION LEVEL %s;\n", toupper(iso)
          for (t = 0; t < n; t++) {
            j++
            k = 1 + int(rand() * 3)
            # k distinct customers of the hot set, in random order
            for (i = 1; i <= hot; i++) c[i] = i
            for (i = 1; i <= k; i++) { r = i + int(rand() * (hot - i + 1)); x = c[i]; c[i] = c[r]; c[r] = x }
            if (shape == "lines") {
              printf "INSERT INTO erp.invoice_line (invoice_id, line_no, customer_id, invoice_date, product_line, quantity, amount) VALUES"
              for (i = 1; i <= k; i++)
                printf "%s\n  (%d, 1, %d, current_date - %d, '\''%s'\'', %d, %.2f)", (i > 1 ? "," : ""),
                       s * 100000000 + j * 10 + i, c[i], int(rand() * 60), pl[1 + int(rand() * 6)],
                       1 + int(rand() * 20), 10 + rand() * 490
              print ";"
            } else {
              # one order per customer, then their lines: one ERP statement each
              printf "INSERT INTO erp.orders (order_id, customer_id, order_date) VALUES"
              for (i = 1; i <= k; i++)
                printf "%s\n  (%d, %d, current_date - %d)", (i > 1 ? "," : ""), s * 100000000 + j * 10 + i, c[i], int(rand() * 60)
              print ";"
              printf "INSERT INTO erp.order_line (order_id, line_no, product_line, quantity, unit_price) VALUES"
              sep = ""
              for (i = 1; i <= k; i++) {
                m = 1 + int(rand() * 3)
                for (l = 1; l <= m; l++) {
                  printf "%s\n  (%d, %d, '\''%s'\'', %d, %.2f)", sep, s * 100000000 + j * 10 + i, l,
                         pl[1 + int(rand() * 6)], 1 + int(rand() * 20), 1 + rand() * 99
                  sep = ","
                }
              }
              print ";"
            }
            if (think > 0) printf "SELECT pg_sleep(%.4f);\n", rand() * 2 * think / 1000
          }
          print "COMMIT;"
        }
      }' >"$WORK_DIR/session$s.sql"
  done
  chown -R postgres: "$WORK_DIR"
  TRANSACTIONS=$(cat "$WORK_DIR"/session*.sql | grep -c '^BEGIN')
  note "$SESSIONS session files, $STATEMENTS statements in $TRANSACTIONS transactions ($WORK_DIR)"
}

# The ERP's tables as an ERP has them: a customer master and invoice lines
# that reference it.  Every run starts from nothing.
reset_sql() {
  cat <<SQL
DROP EXTENSION IF EXISTS loyalty CASCADE;
DROP SCHEMA IF EXISTS erp CASCADE;
CREATE SCHEMA erp;
CREATE TABLE erp.customer (customer_id int PRIMARY KEY, name text NOT NULL);
INSERT INTO erp.customer SELECT g, 'Customer ' || g FROM generate_series(1, $HOT) g;
SQL
  if [ "$SHAPE" = lines ]; then
    cat <<'SQL'
CREATE TABLE erp.invoice_line (
  invoice_id   bigint        NOT NULL,
  line_no      int           NOT NULL,
  customer_id  int           NOT NULL REFERENCES erp.customer,
  invoice_date date          NOT NULL,
  product_line text          NOT NULL,
  quantity     numeric(12,3) NOT NULL,
  amount       numeric(14,2) NOT NULL,
  PRIMARY KEY (invoice_id, line_no)
);
SQL
  else
    cat <<'SQL'
CREATE TABLE erp.orders (
  order_id     bigint        PRIMARY KEY,
  customer_id  int           NOT NULL REFERENCES erp.customer,
  order_date   date          NOT NULL
);
CREATE TABLE erp.order_line (
  order_id     bigint        NOT NULL REFERENCES erp.orders,
  line_no      int           NOT NULL,
  product_line text          NOT NULL,
  quantity     numeric(12,3) NOT NULL,
  unit_price   numeric(12,2) NOT NULL,
  PRIMARY KEY (order_id, line_no)
);
SQL
  fi
}

# Tiers and a monthly cap, so that the concurrent path reads and writes what
# a real program does, not only points.
loyalty_sql() {
  cat <<SQL
CREATE EXTENSION loyalty;
SELECT loyalty.create_program('Soak', ladder => 'Member:0, Silver:20000, Gold:60000');
SELECT loyalty.add_rule('Soak', '2000-01-01', 1, cap_points => $CAP, cap_period => 'month');
SQL
  if [ "$SHAPE" = lines ]; then
    cat <<'SQL'
SELECT loyalty.attach('erp.invoice_line', 'Soak', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date',
                      key_column => 'invoice_id, line_no');
SQL
  else
    cat <<'SQL'
SELECT loyalty.attach('erp.order_line', 'Soak', key_column => 'order_id, line_no',
                      header => 'erp.orders', line_header_column => 'order_id',
                      account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'quantity * unit_price');
SQL
  fi
}

# ---------------------------------------------------------------- one run

log_lines() { wc -l <"$RUN_DIR/cluster.log"; }

run_variant() { # bare | loyalty
  local v=$1 s mark d0 d1 t0 t1 pids=() errs broken
  log "run: $v"
  { reset_sql; if [ "$v" = loyalty ]; then loyalty_sql; fi; } | sql -q -1 || die "set-up of the $v run failed; see $LOG"
  sql -q -c 'VACUUM ANALYZE' -c CHECKPOINT
  d0=$(sql_val -c "SELECT deadlocks FROM pg_stat_database WHERE datname = 'soak'")
  mark=$(log_lines)
  t0=$(date +%s.%N)
  for ((s = 1; s <= SESSIONS; s++)); do
    as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" "$PGBIN/psql" -X -q -U postgres -d soak \
        -o /dev/null -f "$WORK_DIR/session$s.sql" 2>"$WORK_DIR/$v.session$s.err" >/dev/null &
    pids+=($!)
  done
  # psql goes on after an SQL error (exit 0); it exits non-zero when it
  # cannot go on at all (connection lost: a crashed server)
  broken=0
  for s in "${pids[@]}"; do wait "$s" || broken=$((broken + 1)); done
  t1=$(date +%s.%N)
  sleep 1  # let the backends that just exited report their statistics
  d1=$(sql_val -c "SELECT pg_stat_clear_snapshot(); SELECT deadlocks FROM pg_stat_database WHERE datname = 'soak'" | tail -1)
  errs=$(cat "$WORK_DIR/$v".session*.err)
  R[$v.seconds]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  R[$v.deadlocks]=$((d1 - d0))
  R[$v.deadlock_errors]=$(grep -c 'ERROR:  deadlock detected' <<<"$errs" || true)
  R[$v.serialization]=$(grep -c 'ERROR:  could not serialize access' <<<"$errs" || true)
  R[$v.other]=$(grep 'ERROR:' <<<"$errs" | grep -v -c -e 'deadlock detected' -e 'could not serialize access' \
                  -e 'current transaction is aborted' || true)
  R[$v.other]=$((R[$v.other] + broken))
  [ "$broken" = 0 ] || note "$broken session(s) of the $v run stopped early: $(grep -m1 -E 'FATAL|server closed|connection' <<<"$errs" || echo 'see their .err files')"
  R[$v.waits]=$(tail -n +"$((mark + 1))" "$RUN_DIR/cluster.log" | grep -c 'still waiting for' || true)
  R[$v.committed]=$(sql_val -c "SELECT count(DISTINCT doc_id / 10) FROM ($FACTS) f")
  note "$(printf '%s: %s s, deadlocks %s, serialization failures %s, other errors %s, lock waits > %s ms: %s' \
          "$v" "${R[$v.seconds]}" "${R[$v.deadlocks]}" "${R[$v.serialization]}" "${R[$v.other]}" \
          "$DEADLOCK_TIMEOUT_MS" "${R[$v.waits]}")"
  grep 'ERROR:' <<<"$errs" | grep -v 'current transaction is aborted' | sed 's/^.*ERROR:  //' \
    | sort | uniq -c | sort -rn | head -5 | sed 's/^/     | /' || true
}

# The balances and tiers loyalty reports, against the ERP rows in plain SQL:
# 1 point per EUR rounded toward zero per line, at most CAP points per
# customer and calendar month; tier by the qualifying spend of the rolling
# 12 months (every invoice is dated within the last 60 days).
check_loyalty() { # label
  local n m
  if n=$(sql_val -c "SELECT count(*) FROM loyalty.verify('Soak')"); then
    R[verify.$1]=$n
  else
    R[verify.$1]=error; FAILED=1
  fi
  m=$(sql_val <<SQL
WITH month AS (
  SELECT customer_id, date_trunc('month', invoice_date) AS month,
         sum(trunc(amount)) AS points, sum(amount) AS qualifying
    FROM ($FACTS) f GROUP BY 1, 2),
expected AS (
  SELECT customer_id::text AS account_key, sum(least(points, $CAP))::bigint AS points,
         sum(qualifying) AS qualifying,
         CASE WHEN sum(qualifying) >= 60000 THEN 'Gold' WHEN sum(qualifying) >= 20000 THEN 'Silver'
              ELSE 'Member' END AS tier
    FROM month GROUP BY customer_id)
SELECT count(*) FILTER (WHERE (b.points, b.qualifying, b.tier) IS DISTINCT FROM (e.points, e.qualifying, e.tier))
       || ' of ' || count(*)
  FROM expected e CROSS JOIN LATERAL loyalty.balance('Soak', e.account_key) b;
SQL
) || m=error
  R[balances.$1]=$m
  note "check ($1): loyalty.verify('Soak') ${R[verify.$1]} drift rows; balances and tiers against the ERP rows: $m accounts differ"
  [ "${R[verify.$1]}" = 0 ] && [ "${m%% *}" = 0 ] || FAILED=1
}

# ---------------------------------------------------------------- report

summary() {
  local v row
  echo
  echo "==================== concurrent soak ===================="
  echo "machine:    $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), kernel $(uname -r)"
  echo "postgres:   $(sql_val -c 'SELECT version()')"
  echo "load:       1-minute load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end"
  echo "workload:   $SESSIONS sessions, $STATEMENTS statements in $TRANSACTIONS transactions (1-5 statements each),"
  echo "            each statement invoicing 1-3 of $HOT hot customers in random order, think time 0-$((2 * THINK_MS)) ms"
  echo "            after each statement, ${ISOLATION^^}, deadlock_timeout ${DEADLOCK_TIMEOUT_MS} ms, seed $SEED"
  if [ "$SHAPE" = header ]; then
    echo "            header shape: a statement is one INSERT of 1-3 order headers (customer and date on the"
    echo "            header) and one INSERT of their 1-3 lines each"
  fi
  echo
  printf '%-8s | %7s | %11s | %9s | %13s | %12s | %s\n' run seconds "statements" deadlocks serialization "other errors" "lock waits > ${DEADLOCK_TIMEOUT_MS} ms"
  printf '%-8s-+-%7s-+-%11s-+-%9s-+-%13s-+-%12s-+-%s\n' -------- ------- ----------- --------- ------------- ------------ --------------------
  for v in bare loyalty; do
    [ -n "${R[$v.seconds]:-}" ] || continue
    printf '%-8s | %7s | %11s | %9s | %13s | %12s | %s\n' "$v" "${R[$v.seconds]}" \
      "${R[$v.committed]}/$STATEMENTS" "${R[$v.deadlocks]}" "${R[$v.serialization]}" "${R[$v.other]}" "${R[$v.waits]}"
  done
  echo "  statements: committed / run (a deadlock, serialization failure or other error rolls its"
  echo "  whole transaction back; the soak does not retry). deadlocks: pg_stat_database's count."
  for row in after-run after-fold; do
    [ -n "${R[verify.$row]:-}" ] || continue
    echo "check ($row): loyalty.verify('Soak') ${R[verify.$row]} drift rows; balances and tiers against the ERP rows in plain SQL: ${R[balances.$row]} accounts differ"
  done
  echo
  for row in "deadlocks|deadlocks" "waits|lock waits" "serialization|serialization failures" "other|other errors"; do
    v=${row%%|*}
    if [ "${R[loyalty.$v]}" -gt "${R[bare.$v]}" ]; then
      echo "verdict: loyalty adds ${row#*|}: ${R[loyalty.$v]} against ${R[bare.$v]} bare"
    fi
  done
  [ "$FAILED" = 1 ] && echo "verdict: FAILED" || echo "verdict: loyalty adds no deadlocks, lock waits or errors to this workload"
}

# ---------------------------------------------------------------- main

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
ensure_packages
if [ "$BUILD" = 1 ]; then build_and_install; else log "SOAK_BUILD=0: using the installed extension"; fi
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_start
mkdir -p "$RUN_DIR" && : >"$LOG"
pg_sql -q -c "CREATE DATABASE soak" >>"$LOG" 2>&1

generate_sessions
run_variant bare
run_variant loyalty
check_loyalty after-run
if [ "$(sql_val -c "SELECT to_regprocedure('loyalty.fold(text)') IS NOT NULL")" = t ]; then
  sql -q -c 'SELECT loyalty.fold()' || { note "loyalty.fold() failed; see $LOG"; FAILED=1; }
  check_loyalty after-fold
fi
for m in deadlocks waits serialization other; do
  [ "${R[loyalty.$m]}" -le "${R[bare.$m]}" ] || FAILED=1
done

mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/soak-$(date +%Y%m%d-%H%M%S).txt
summary | tee "$REPORT"
echo
echo "report saved to $REPORT; session files and their errors in $WORK_DIR, server log $RUN_DIR/cluster.log"
exit "$FAILED"
