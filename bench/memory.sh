#!/usr/bin/env bash
# Memory and cold-start benchmark: how much backend memory does one big
# statement cost with loyalty attached, and what does the first insert of a
# backend cost?  Figures beside the same run's baselines:
#
#   a. one COPY of lines for BENCH_MEM_CUSTOMERS distinct customers (1M):
#      peak private memory of the backend, bare / no-op trigger / loyalty
#   b. one UPDATE of invoice headers that touches BENCH_MEM_HEADER_LINES lines
#      (1M): the same, bare / no-op trigger / loyalty      (target < 256 MB)
#   c. in a program with BENCH_COLD_ACCOUNTS accounts (300k), the first insert
#      of a fresh backend, the first after an ANALYZE of the invoice table by
#      another session, the first after a caught exception (a PL/pgSQL
#      EXCEPTION block that raised), each against the second insert of the
#      same backend, for loyalty and for the bare table     (target: a few ms)
#
# Run as root:  bash bench/memory.sh      (BENCH_QUICK=1 for a quick look)
# Sizes and knobs come from the environment; see bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=memory  # a run directory of its own (.run-memory), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54404}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  : "${BENCH_MEM_CUSTOMERS:=100000}" "${BENCH_MEM_HEADER_LINES:=100000}"
  : "${BENCH_COLD_ACCOUNTS:=30000}" "${BENCH_COLD_REPEATS:=3}"
fi
MEM_CUSTOMERS=${BENCH_MEM_CUSTOMERS:-1000000}
MEM_HLINES=${BENCH_MEM_HEADER_LINES:-1000000}
MEM_HCUSTOMERS=${BENCH_MEM_HEADER_CUSTOMERS:-150000}
MEM_HEADER_UPDATE=${BENCH_MEM_HEADER_UPDATE:-date}  # date | customer: what the header UPDATE changes
MEM_VARIANTS=${BENCH_MEM_VARIANTS:-bare floor loyalty}
MEM_MAX_MB=${BENCH_MEM_MAX_MB:-256}
COLD_ACCOUNTS=${BENCH_COLD_ACCOUNTS:-300000}
COLD_REPEATS=${BENCH_COLD_REPEATS:-5}
COLD_MAX_MS=${BENCH_COLD_MAX_MS:-5}     # "a few ms": first insert at most this much above the second
STEPS=${BENCH_MEM_STEPS:-copy header cold}
INTERVAL=${BENCH_MEM_INTERVAL:-0.02}    # seconds between two samples
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
MAX_WAL_SIZE=${BENCH_MAX_WAL_SIZE:-8GB}
BUILD=${BENCH_BUILD:-1}
LINES_PER_HEADER=5

for v in MEM_CUSTOMERS MEM_HLINES MEM_HCUSTOMERS MEM_MAX_MB COLD_ACCOUNTS COLD_REPEATS COLD_MAX_MS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done
for s in $MEM_VARIANTS; do [[ $s =~ ^(bare|floor|loyalty)$ ]] || die "BENCH_MEM_VARIANTS takes bare, floor and/or loyalty, got '$s'"; done
for s in $STEPS; do [[ $s =~ ^(copy|header|cold)$ ]] || die "BENCH_MEM_STEPS takes copy, header and/or cold, got '$s'"; done
[[ $MEM_HEADER_UPDATE =~ ^(date|customer)$ ]] || die "BENCH_MEM_HEADER_UPDATE is date or customer"
[[ $INTERVAL =~ ^0?\.[0-9]+$ ]] || die "BENCH_MEM_INTERVAL is a fraction of a second, got '$INTERVAL'"

DATA_DIR=$RUN_DIR/data
CSV=$DATA_DIR/distinct_customers.csv
HCSV=$DATA_DIR/header.csv
HLCSV=$DATA_DIR/header_lines.csv
LOG=$RUN_DIR/memory.log
RESULTS=$RUN_DIR/memory.results         # "kind variant value..." lines
OUT_DIR=$BENCH_DIR/out
FAILED=0
PM_PID=
NEXT_ID=900000000000                    # invoice ids of the cold-start inserts

sql() { pg_sql -d bench "$@" >>"$LOG" 2>&1; }
sql_val() { pg_sql -d bench -qAt "$@" 2>>"$LOG"; }
note() { printf '   %s\n' "$*"; }
fail() { # what message
  FAILED=1
  echo "failed $1 $2" >>"$RESULTS"
  note "FAILED ($1): $2 -- see $LOG"
  tail -5 "$LOG" | sed 's/^/     | /'
  wait_ready || die "the server did not come back; see $RUN_DIR/cluster.log"
}
wait_ready() {
  local i
  for ((i = 0; i < 120; i++)); do
    as_pg "$PGBIN/pg_isready" -q -h "$SOCK_DIR" -p "$CLUSTER_PORT" && return 0
    sleep 1
  done
  return 1
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$? i
  cluster_stop
  if [ -n "$PM_PID" ] && grep -qF "$CLUSTER_DIR" "/proc/$PM_PID/cmdline" 2>/dev/null; then
    as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -m immediate -w -t 20 stop >/dev/null 2>&1 || kill -QUIT "$PM_PID" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do kill -0 "$PM_PID" 2>/dev/null || break; sleep 1; done
  fi
  [ "$rc" -le 1 ] || printf '\nbench stopped (exit %s); the log is %s\n' "$rc" "$LOG" >&2
}
median() {
  sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1;
    if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------------- schema

# The line shape of bench/accrual.sh, and its header shape.
reset_sql() {
  cat <<'SQL'
DROP EXTENSION IF EXISTS loyalty CASCADE;
DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;
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
CREATE TABLE bench.invoice_header (
  invoice_id   bigint        PRIMARY KEY,
  customer_id  int           NOT NULL,
  invoice_date date          NOT NULL
);
CREATE TABLE bench.invoice_line_h (
  invoice_id   bigint        NOT NULL,
  line_no      int           NOT NULL,
  product_line text          NOT NULL,
  quantity     numeric(12,3) NOT NULL,
  amount       numeric(14,2) NOT NULL,
  PRIMARY KEY (invoice_id, line_no)
);
SQL
}

program_sql() {
  cat <<'SQL'
CREATE EXTENSION loyalty;
SELECT loyalty.create_program('Bench', currency => 'EUR',
         ladder => 'Member:0, Silver:50000, Gold:250000, Platinum:1000000',
         points_per_unit => 1, rounding => 'toward_zero');
SELECT loyalty.add_rule('Bench', '2000-01-01', 1, product_line_multipliers => '{"SOLAR": 2}');
SQL
}

# The no-op trigger (it only counts its transition table, as accrual.sh's
# floor) on the statement that is measured: INSERT on the lines, or UPDATE
# on the header (old and new transition tables, as loyalty's header trigger).
floor_sql() { # table event
  local ref='NEW TABLE AS new_rows'
  [ "$2" = INSERT ] || ref='OLD TABLE AS old_rows NEW TABLE AS new_rows'
  cat <<SQL
CREATE FUNCTION bench.floor_trigger() RETURNS trigger
LANGUAGE plpgsql AS \$fn\$
BEGIN
  PERFORM count(*) FROM new_rows;
  RETURN NULL;
END
\$fn\$;
CREATE TRIGGER bench_floor AFTER $2 ON $1
  REFERENCING $ref
  FOR EACH STATEMENT EXECUTE FUNCTION bench.floor_trigger();
SQL
}

attach_lines_sql() {
  echo "SELECT loyalty.attach('bench.invoice_line', 'Bench', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', product_line_column => 'product_line');"
}
attach_header_sql() {
  cat <<'SQL'
SELECT loyalty.attach('bench.invoice_line_h', 'Bench',
         key_column => 'invoice_id, line_no',
         header => 'bench.invoice_header', line_header_column => 'invoice_id',
         account_column => 'customer_id', date_column => 'invoice_date',
         amount_column => 'amount', product_line_column => 'product_line');
SQL
}

# ---------------------------------------------------------------- data

# Deterministic, no random(): line i of the distinct-customer file belongs to
# customer i; the header file has one header per 5 lines.
generate_data() {
  mkdir -p "$DATA_DIR" && chown postgres: "$DATA_DIR"
  pg_sql -d bench -q >>"$LOG" 2>&1 <<SQL || die "generating the data failed; see $LOG"
COPY (SELECT i, 1, i, date '2024-01-01' + (i % 366)::int,
             (ARRAY['SOLAR', 'INVERTER', 'BATTERY', 'MOUNTING', 'CABLE', 'SERVICE'])[1 + i % 6],
             1 + i % 50, round((200 + (i::bigint * 7919) % 19800) / 100.0, 2)
        FROM generate_series(1, $MEM_CUSTOMERS) AS i)
  TO '$CSV' WITH (FORMAT csv);
COPY (SELECT h, 1 + h % $MEM_HCUSTOMERS, date '2024-01-01' + (h % 300)::int
        FROM generate_series(1, ceil($MEM_HLINES / $LINES_PER_HEADER.0)::bigint) AS h)
  TO '$HCSV' WITH (FORMAT csv);
COPY (SELECT 1 + (i - 1) / $LINES_PER_HEADER, 1 + (i - 1) % $LINES_PER_HEADER,
             (ARRAY['SOLAR', 'INVERTER', 'BATTERY', 'MOUNTING', 'CABLE', 'SERVICE'])[1 + i % 6],
             1 + i % 50, round((200 + (i::bigint * 7919) % 19800) / 100.0, 2)
        FROM generate_series(1, $MEM_HLINES) AS i)
  TO '$HLCSV' WITH (FORMAT csv);
SQL
  note "$CSV: $MEM_CUSTOMERS lines, one customer each ($(du -h "$CSV" | cut -f1))"
  note "$HCSV: $(wc -l <"$HCSV") headers over $MEM_HCUSTOMERS customers; $HLCSV: $MEM_HLINES lines"
}

# ---------------------------------------------------------------- sampling

# Runs the statements of file $2 in a new session and samples the backend's
# RssAnon every INTERVAL seconds until the session ends.  Sets IDLE_KB (the
# backend before the statement), PEAK_KB, SAMPLES and STMT_MS (psql's
# \timing of the last statement).
#
# RssAnon, not VmHWM: VmHWM is the high-water mark of the whole resident set,
# and that includes every page of shared memory the backend touched
# (RssShmem): a COPY of 100 MB of rows through a 1 GB shared_buffers shows
# hundreds of MB there whatever the trigger does.  RssAnon is the backend's
# private anonymous memory (palloc, malloc, its own mmaps): what a trigger's
# allocations cost the machine.  Memory spilled to temporary files is not in
# it, by design.
IDLE_KB=; PEAK_KB=; SAMPLES=; STMT_MS=
sample_statement() { # label file
  local script=$RUN_DIR/mem_stmt.sql out=$RUN_DIR/mem_stmt.out pidfile=$RUN_DIR/mem_backend.pid
  local bg pid rc i k v peak=0 idle='' n=0 status
  rm -f "$pidfile"
  {
    echo '\pset tuples_only on'
    echo "SELECT pg_backend_pid() \\g $pidfile"
    echo 'SELECT pg_sleep(0.3);'
    printf '%s\n' '\timing on'
    cat "$2"
  } >"$script"
  chown postgres: "$script"
  pg_sql -d bench -q -f "$script" >"$out" 2>&1 &
  bg=$!
  for ((i = 0; i < 3000; i++)); do
    [ -s "$pidfile" ] && break
    kill -0 "$bg" 2>/dev/null || break
    sleep 0.01
  done
  pid=$(tr -dc 0-9 <"$pidfile" 2>/dev/null || true)
  status=/proc/$pid/status
  while [ -n "$pid" ] && kill -0 "$bg" 2>/dev/null; do
    v=
    { while read -r k v _; do [ "$k" = RssAnon: ] && break; v=''; done <"$status"; } 2>/dev/null || break
    [ -n "$v" ] || break
    [ -n "$idle" ] || idle=$v
    [ "$v" -le "$peak" ] || peak=$v
    n=$((n + 1))
    sleep "$INTERVAL"
  done
  set +e; wait "$bg"; rc=$?; set -e
  cat "$out" >>"$LOG"
  if [ "$rc" != 0 ] || grep -qE '^(psql:.*)?(ERROR|FATAL)' "$out" || [ -z "$idle" ]; then
    fail "$1" "$(grep -m1 -E 'ERROR|FATAL|server closed' "$out" || echo "the statement or the sampling failed (exit $rc)")"
    return 1
  fi
  IDLE_KB=$idle PEAK_KB=$peak SAMPLES=$n
  STMT_MS=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' "$out" | tail -1)
}

# One sampled statement: set-up (untimed, own session), CHECKPOINT, then the
# statement in a fresh session.
measure() { # step variant setup-sql-file statement
  local step=$1 v=$2 stmt=$RUN_DIR/mem_one.sql
  sql -q -1 -f "$3" || { fail "$step-$v" "set-up failed"; return 1; }
  sql -q -c 'VACUUM (ANALYZE)' -c CHECKPOINT || { fail "$step-$v" "VACUUM failed"; return 1; }
  printf '%s\n' "$4" >"$stmt"
  sample_statement "$step-$v" "$stmt" || return 1
  echo "mem $step $v $IDLE_KB $PEAK_KB $SAMPLES ${STMT_MS:-?}" >>"$RESULTS"
  note "$(printf '%-8s peak RssAnon %8s MB (idle backend %s MB, %s samples), %s ms' \
          "$v" "$(mb "$PEAK_KB")" "$(mb "$IDLE_KB")" "$SAMPLES" "${STMT_MS:-?}")"
}

# ---------------------------------------------------------------- steps

# a. One COPY of MEM_CUSTOMERS lines, each for a customer of its own.
step_copy() {
  local v setup=$RUN_DIR/mem_setup.sql
  log "a. one COPY of $MEM_CUSTOMERS lines for $MEM_CUSTOMERS distinct customers"
  for v in $MEM_VARIANTS; do
    {
      reset_sql
      case $v in
        floor) floor_sql bench.invoice_line INSERT ;;
        loyalty) program_sql; attach_lines_sql ;;
      esac
    } >"$setup"
    chown postgres: "$setup"
    measure copy "$v" "$setup" "COPY bench.invoice_line FROM '$CSV' WITH (FORMAT csv);" || true
  done
}

# b. One UPDATE of every header, touching MEM_HLINES lines: the date moves a
# day (an ERP re-dating documents), or the customer changes to the next one
# (BENCH_MEM_HEADER_UPDATE=customer).  Headers and lines are loaded first,
# untimed, with the variant's triggers in place.
step_header() {
  local v setup=$RUN_DIR/mem_setup.sql set='invoice_date = invoice_date + 1'
  [ "$MEM_HEADER_UPDATE" = date ] || set='customer_id = customer_id + 1'
  log "b. one UPDATE of $(wc -l <"$HCSV") headers ($MEM_HLINES lines, $LINES_PER_HEADER per header): SET $set"
  for v in $MEM_VARIANTS; do
    {
      reset_sql
      case $v in
        floor) floor_sql bench.invoice_header UPDATE ;;
        loyalty) program_sql; attach_header_sql ;;
      esac
      echo "COPY bench.invoice_header FROM '$HCSV' WITH (FORMAT csv);"
      echo "COPY bench.invoice_line_h FROM '$HLCSV' WITH (FORMAT csv);"
    } >"$setup"
    chown postgres: "$setup"
    measure header "$v" "$setup" "UPDATE bench.invoice_header SET $set;" || true
  done
}

# c. Cold start.  A program with COLD_ACCOUNTS accounts (created through the
# trigger, 50,000 new customers per statement) on bench.invoice_line and a
# bare twin with the same rows.  Each measurement is one psql session:
# INSERT, INSERT (fresh backend); or two warm-up INSERTs, then an event, then
# INSERT, INSERT.  Each INSERT is one line for a random existing customer.
# The sessions run with synchronous_commit = off (set at connection, not by
# a statement that would warm the backend): the WAL flush at commit costs
# 1-4 ms of disk noise on a shared machine, enough to hide a few ms of cold
# start.
cold_insert() { # table invoice-id
  printf '%s\n' '\timing on' \
    "INSERT INTO $1 VALUES ($2, 1, 1 + floor(random() * $COLD_ACCOUNTS)::int, DATE '2024-12-31', 'SOLAR', 1, 100.00);" \
    '\timing off'
}

cold_session() { # kind table first-invoice-id -> "first second" in ms
  local kind=$1 table=$2 id=$3 script=$RUN_DIR/cold.sql out
  {
    if [ "$kind" != fresh ]; then cold_insert "$table" "$id"; cold_insert "$table" $((id + 1)); fi
    case $kind in
      analyze) echo "\\! $PGBIN/psql -X -q -d bench -c 'ANALYZE $table' || echo 'ANALYZE failed'" ;;
      exception) cat <<'SQL'
DO $$
BEGIN
  PERFORM 1 / 0;
EXCEPTION WHEN division_by_zero THEN
  NULL;
END
$$;
SQL
      ;;
    esac
    cold_insert "$table" $((id + 2)); cold_insert "$table" $((id + 3))
  } >"$script"
  chown postgres: "$script"
  out=$(PGOPTIONS='-c synchronous_commit=off' pg_sql -d bench -q -f "$script" 2>&1) || { printf '%s\n' "$out" >>"$LOG"; return 1; }
  printf '%s\n' "$out" >>"$LOG"
  ! grep -q 'ANALYZE failed' <<<"$out" || return 1
  sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | tail -2 | paste -sd' ' -
}

step_cold() {
  local setup=$RUN_DIR/mem_setup.sql lo kind table v r t
  log "c. cold start: a program with $COLD_ACCOUNTS accounts, $COLD_REPEATS sessions per figure"
  {
    reset_sql
    program_sql
    attach_lines_sql
    for ((lo = 1; lo <= COLD_ACCOUNTS; lo += 50000)); do
      echo "INSERT INTO bench.invoice_line SELECT i, 1, i, DATE '2024-06-01', 'CABLE', 1, 10.00 FROM generate_series($lo, $(( lo + 49999 < COLD_ACCOUNTS ? lo + 49999 : COLD_ACCOUNTS ))) AS i;"
    done
    echo "CREATE TABLE bench.invoice_line_bare (LIKE bench.invoice_line INCLUDING ALL);"
    echo "INSERT INTO bench.invoice_line_bare SELECT * FROM bench.invoice_line;"
  } >"$setup"
  chown postgres: "$setup"
  # Not in one transaction: each INSERT commits its accounts.
  sql -q -f "$setup" || { fail cold "set-up failed"; return 1; }
  sql -q -c 'VACUUM (ANALYZE)' -c CHECKPOINT || { fail cold "VACUUM failed"; return 1; }
  note "accounts in the program: $(sql_val -c "SELECT count(DISTINCT customer_id) FROM bench.invoice_line")"
  for kind in fresh analyze exception; do
    for v in loyalty bare; do
      table=bench.invoice_line; [ "$v" = loyalty ] || table=bench.invoice_line_bare
      for ((r = 1; r <= COLD_REPEATS; r++)); do
        NEXT_ID=$((NEXT_ID + 4))
        if ! t=$(cold_session "$kind" "$table" "$NEXT_ID") || [ "$(wc -w <<<"$t")" != 2 ]; then
          fail "cold-$kind-$v" "the session failed"; break
        fi
        echo "cold $kind $v $t" >>"$RESULTS"
      done
      note "$(printf '%-9s %-8s first insert (ms): %-28s second: %s' "$kind" "$v" \
              "$(awk -v k="$kind" -v v="$v" '$1 == "cold" && $2 == k && $3 == v { print $4 }' "$RESULTS" | paste -sd' ' -)" \
              "$(awk -v k="$kind" -v v="$v" '$1 == "cold" && $2 == k && $3 == v { print $5 }' "$RESULTS" | paste -sd' ' -)")"
    done
  done
}

# ---------------------------------------------------------------- report

# Which code the figures are of.
built_from() {
  local rev
  rev=$(git -C "$ROOT" log -1 --format=%h -- src sql loyalty.control Makefile 2>/dev/null || echo '?')
  if [ "$BUILD" = 1 ]; then
    printf 'built from %s (last commit of src/)' "$rev"
    git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || printf ' plus uncommitted changes in src/'
  else
    printf 'as installed (BENCH_BUILD=0; this tree: %s)' "$rev"
  fi
}

machine_facts() {
  local cpu mem settings
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  settings=$(sql_val 2>/dev/null <<'SQL'
SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)
  FROM pg_settings
 WHERE name IN ('shared_buffers', 'work_mem', 'maintenance_work_mem', 'autovacuum', 'jit');
SQL
) || settings="?"
  echo "machine:    $(nproc) CPUs ($cpu), $mem RAM, kernel $(uname -r)"
  echo "load:       1-minute load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end"
  echo "postgres:   $(sql_val -c 'SELECT version()' || "$PGBIN/postgres" --version)"
  echo "loyalty:    $(sql_val -c "SELECT default_version FROM pg_available_extensions WHERE name = 'loyalty'" || echo '?'), $(built_from)"
  echo "settings:   $settings"
}

mem_table() { # step title
  local v line peak idle n ms target
  echo
  printf '%-50s | %13s | %13s | %10s | %s\n' "$2" "peak RssAnon" "idle backend" "time" "target"
  printf '%-50s-+-%13s-+-%13s-+-%10s-+-%s\n' "$(printf -- '-%.0s' {1..50})" "-------------" "-------------" "----------" "----------------"
  for v in $MEM_VARIANTS; do
    line=$(awk -v s="$1" -v v="$v" '$1 == "mem" && $2 == s && $3 == v' "$RESULTS" | tail -1)
    if [ -z "$line" ]; then
      printf '%-50s | %13s | %13s | %10s | %s\n' "$v" - - - \
        "$(awk -v w="$1-$v" '$1 == "failed" && $2 == w { $1 = ""; $2 = ""; print "failed:" $0 }' "$RESULTS" | head -1 | grep . || echo 'no result')"
      continue
    fi
    read -r _ _ _ idle peak n ms <<<"$line"
    target=
    if [ "$v" = loyalty ]; then
      if le "$(mb "$peak")" "$MEM_MAX_MB"; then target="< $MEM_MAX_MB MB: met"; else target="< $MEM_MAX_MB MB: NOT met"; fi
    fi
    printf '%-50s | %10s MB | %10s MB | %7.0f ms | %s\n' "$v" "$(mb "$peak")" "$(mb "$idle")" "$ms" "$target"
  done
}

cold_table() {
  local kind v first second extra target label
  echo
  printf '%-50s | %13s | %13s | %10s | %s\n' "cold start, $COLD_ACCOUNTS accounts (median)" "first insert" "second insert" "extra" "target"
  printf '%-50s-+-%13s-+-%13s-+-%10s-+-%s\n' "$(printf -- '-%.0s' {1..50})" "-------------" "-------------" "----------" "----------------"
  for kind in fresh analyze exception; do
    case $kind in
      fresh) label="first insert of a fresh backend" ;;
      analyze) label="first insert after ANALYZE of the table" ;;
      exception) label="first insert after a caught exception" ;;
    esac
    for v in loyalty bare; do
      first=$(awk -v k="$kind" -v v="$v" '$1 == "cold" && $2 == k && $3 == v { print $4 }' "$RESULTS" | median || true)
      second=$(awk -v k="$kind" -v v="$v" '$1 == "cold" && $2 == k && $3 == v { print $5 }' "$RESULTS" | median || true)
      if [ -z "$first" ]; then
        printf '%-50s | %13s | %13s | %10s | %s\n' "$label, $v" - - - "no result"; continue
      fi
      extra=$(awk -v a="$first" -v b="$second" 'BEGIN { printf "%.2f", a - b }')
      target=
      if [ "$v" = loyalty ]; then
        if le "$extra" "$COLD_MAX_MS"; then target="extra <= $COLD_MAX_MS ms: met"; else target="extra <= $COLD_MAX_MS ms: NOT met"; fi
      fi
      printf '%-50s | %10s ms | %10s ms | %7s ms | %s\n' "$label, $v" "$first" "$second" "$extra" "$target"
    done
  done
  echo "  extra = first - second insert of the same backend; each figure the median of $COLD_REPEATS sessions."
}

summary() {
  echo
  echo "==================== memory and cold-start benchmark ===================="
  machine_facts
  [[ " $STEPS " != *" copy "* ]] || mem_table copy "a. one COPY, $MEM_CUSTOMERS distinct customers"
  [[ " $STEPS " != *" header "* ]] || mem_table header "b. header UPDATE touching $MEM_HLINES lines"
  [[ " $STEPS " != *" cold "* ]] || cold_table
  echo
  echo "Peak RssAnon: the backend's private memory, sampled every $INTERVAL s from /proc/<pid>/status while"
  echo "the statement ran (shared buffers are not in it); idle backend: the same session just before."
  echo "bare: no trigger; floor: a no-op statement trigger that counts its transition table."
}

# ---------------------------------------------------------------- main

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
ensure_packages
if [ "$BUILD" = 1 ]; then build_and_install; else log "BENCH_BUILD=0: using the installed extension"; fi
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_start
mkdir -p "$RUN_DIR" && : >"$LOG" && : >"$RESULTS"
pg_sql -q >>"$LOG" 2>&1 <<SQL
ALTER SYSTEM SET shared_buffers = '$SHARED_BUFFERS';
ALTER SYSTEM SET max_wal_size = '$MAX_WAL_SIZE';
ALTER SYSTEM SET checkpoint_timeout = '30min';
SQL
as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -l "$RUN_DIR/cluster.log" -w -t 60 restart >/dev/null \
  || { tail -20 "$RUN_DIR/cluster.log"; die "cluster did not restart with the bench settings"; }
PM_PID=$(head -1 "$CLUSTER_DIR/postmaster.pid")
pg_sql -q -c "CREATE DATABASE bench" >>"$LOG" 2>&1

log "generating the data"
generate_data
[[ " $STEPS " != *" copy "* ]] || step_copy
[[ " $STEPS " != *" header "* ]] || step_header
[[ " $STEPS " != *" cold "* ]] || step_cold || true

mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/memory-$(date +%Y%m%d-%H%M%S).txt
summary | tee "$REPORT"
echo
echo "report saved to $REPORT; psql output in $LOG"
exit "$FAILED"
