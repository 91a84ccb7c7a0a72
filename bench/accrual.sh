#!/usr/bin/env bash
# Accrual benchmark: what does attaching loyalty to an ERP invoice-line table
# cost a bulk COPY and single-row INSERT transactions?  Every figure is a ratio
# to a baseline measured in the same run, on the same machine, from the same
# bytes: bare COPY for the COPY variants, bare INSERT TPS for pgbench.
#
#   a. COPY, no trigger                                  (baseline = 1.0)
#   b. COPY with loyalty.attach()                        (target <= 1.5x)
#   c. COPY with a hand-written PL/pgSQL statement trigger (the reference)
#   pgbench: one invoice line per transaction, bare / loyalty / PL/pgSQL
#            (target: loyalty >= 0.8x bare TPS)
#
# Run as root:  bash bench/accrual.sh
# Sizes and knobs come from the environment; see bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=bench  # a run directory of its own (.run-bench), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54403}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

LINES=${BENCH_LINES:-1000000}
CUSTOMERS=${BENCH_CUSTOMERS:-20000}
HOT=${BENCH_HOT_CUSTOMERS:-10}          # customers that carry ...
HOT_PCT=${BENCH_HOT_PCT:-50}            # ... this share (%) of the invoices
RUNS=${BENCH_RUNS:-3}                   # timed COPY runs per variant (bare: twice that)
CLIENTS=${BENCH_CLIENTS:-4}
SECONDS_PER_RUN=${BENCH_SECONDS:-30}
SYNC_MODES=${BENCH_SYNC_MODES:-off on}  # synchronous_commit values for pgbench
SEED=${BENCH_SEED:-0.42}
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
MAX_WAL_SIZE=${BENCH_MAX_WAL_SIZE:-8GB}
BUILD=${BENCH_BUILD:-1}                 # 0: use the extension already installed

for v in LINES CUSTOMERS HOT HOT_PCT RUNS CLIENTS SECONDS_PER_RUN; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done
[ "$HOT" -lt "$CUSTOMERS" ] || die "BENCH_HOT_CUSTOMERS ($HOT) must be below BENCH_CUSTOMERS ($CUSTOMERS)"
[ "$HOT_PCT" -le 100 ] || die "BENCH_HOT_PCT is a percentage"
for s in $SYNC_MODES; do [[ $s =~ ^(on|off)$ ]] || die "BENCH_SYNC_MODES takes on and/or off, got '$s'"; done

JOBS=$(( CLIENTS < $(nproc) ? CLIENTS : $(nproc) ))
DATA_DIR=$RUN_DIR/data
CSV=$DATA_DIR/invoice_line.csv
PGB_SCRIPT=$DATA_DIR/insert_line.pgbench
PGB_BARE_SCRIPT=$DATA_DIR/insert_line_bare.pgbench
LOG=$RUN_DIR/accrual.log
RESULTS=$RUN_DIR/accrual.results      # "kind variant value" lines, one per run
OUT_DIR=$BENCH_DIR/out

declare -A STATUS=()                    # variant -> "" | skipped: ... | failed: ...
PGB_RUN=0
TPS=
FAILED=0
PM_PID=
LOG_MARK=0

# ---------------------------------------------------------------- helpers

# SQL against the bench database; output goes to the log.
sql() { pg_sql -d bench "$@" >>"$LOG" 2>&1; }
# One value, unaligned.
sql_val() { pg_sql -d bench -qAt "$@" 2>>"$LOG"; }
note() { printf '   %s\n' "$*"; }
fail() { # variant message
  local crash
  crash=$(tail -n +"$((LOG_MARK + 1))" "$RUN_DIR/cluster.log" 2>/dev/null | grep -m1 -o 'server process .* terminated by signal.*' || true)
  [ -z "$crash" ] || set -- "$1" "$2; the server crashed ($crash)"
  STATUS[$1]="failed: $2"; FAILED=1
  note "FAILED ($1): $2 -- see $LOG"
  tail -5 "$LOG" | sed 's/^/     | /'
  # The next variant needs the server back (crash recovery takes a moment).
  wait_ready || die "the server did not come back; see $RUN_DIR/cluster.log"
  mark_log
}
# Marks where a variant starts in the server log, to tell a crash from an error.
mark_log() { LOG_MARK=$(wc -l <"$RUN_DIR/cluster.log" 2>/dev/null || echo 0); }

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
  # A crash in the code under test can leave a postmaster that a fast
  # shutdown does not stop; it must not outlive the bench (it would remove
  # the socket of the next run's server when it finally exits).
  if [ -n "$PM_PID" ] && grep -qF "$CLUSTER_DIR" "/proc/$PM_PID/cmdline" 2>/dev/null; then
    as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -m immediate -w -t 20 stop >/dev/null 2>&1 || kill -QUIT "$PM_PID" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do kill -0 "$PM_PID" 2>/dev/null || break; sleep 1; done
  fi
  [ "$rc" -le 1 ] || printf '\nbench stopped (exit %s); the log is %s\n' "$rc" "$LOG" >&2
}

median() { # numbers on stdin -> median
  sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1;
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
values_of() { awk -v k="$1" -v v="$2" '$1 == k && $2 == v { print $3 }' "$RESULTS"; }
mean() { # numbers on stdin -> mean with $1 decimals (default 1), "" for none
  awk -v d="${1:-1}" '{ t += $1 } END { if (NR) printf("%." d "f", t / NR) }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
spread() { # numbers on stdin -> (max - min) / median in %, "" for fewer than 2
  sort -g | awk '{ v[NR] = $1 } END { if (NR < 2) exit;
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
    printf "%.0f", 100 * (v[NR] - v[1]) / m }'
}
# Warn when the baseline moved more than 15% within the run.
steady_note() { # what values...
  local what=$1 sp; shift
  sp=$(printf '%s\n' "$@" | grep . | spread || true)
  if [ -n "$sp" ] && [ "$sp" -gt 15 ]; then
    echo "  note: the bare $what runs differ by $sp% of their median: the machine was not steady (other load?); rerun, or raise BENCH_RUNS / BENCH_SECONDS"
  fi
}
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

# ---------------------------------------------------------------- schema per variant

# The ERP's table, as an ERP would have it: composite key, no loyalty columns.
# Every variant starts from nothing, so no run inherits another's bloat or state.
reset_sql() {
  cat <<'SQL'
DROP EXTENSION IF EXISTS loyalty CASCADE;
DROP SCHEMA IF EXISTS bench CASCADE;
DROP SCHEMA IF EXISTS bench_ref CASCADE;
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
SQL
}

# The reference a DBA would write by hand: a statement-level AFTER INSERT
# trigger with a transition table; versioned rules looked up by invoice date;
# per statement one ledger row per customer and one balance upsert per
# customer, in ascending customer order.  It computes points and qualifying
# spend only (no tier, no audit detail), so it does no more work than loyalty.
ref_sql() {
  cat <<'SQL'
CREATE SCHEMA bench_ref;
CREATE TABLE bench_ref.rule (
  valid_from               date    PRIMARY KEY,
  points_per_unit          numeric NOT NULL,
  product_line_multipliers jsonb   NOT NULL DEFAULT '{}'
);
INSERT INTO bench_ref.rule VALUES ('2000-01-01', 1, '{"SOLAR": 2}');
CREATE TABLE bench_ref.ledger (
  entry_id    bigint        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id int           NOT NULL,
  kind        text          NOT NULL DEFAULT 'earn',
  points      bigint        NOT NULL,
  qualifying  numeric(16,2) NOT NULL,
  lines       int           NOT NULL,
  posted_at   timestamptz   NOT NULL DEFAULT now(),
  xact        xid8          NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX ON bench_ref.ledger (customer_id);
CREATE TABLE bench_ref.balance (
  customer_id int           PRIMARY KEY,
  points      bigint        NOT NULL,
  qualifying  numeric(16,2) NOT NULL,
  updated_at  timestamptz   NOT NULL
);
CREATE FUNCTION bench_ref.accrue_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  WITH rule AS (
    SELECT valid_from,
           coalesce(lead(valid_from) OVER (ORDER BY valid_from), 'infinity') AS valid_until,
           points_per_unit, product_line_multipliers
      FROM bench_ref.rule
  ), per_customer AS (
    SELECT n.customer_id,
           sum(floor(n.amount * r.points_per_unit
                     * coalesce((r.product_line_multipliers ->> n.product_line)::numeric, 1)))::bigint AS points,
           sum(n.amount) AS qualifying,
           count(*)      AS lines
      FROM new_rows n
      JOIN rule r ON n.invoice_date >= r.valid_from AND n.invoice_date < r.valid_until
     GROUP BY n.customer_id
  ), posted AS (
    INSERT INTO bench_ref.ledger (customer_id, points, qualifying, lines)
    SELECT customer_id, points, qualifying, lines FROM per_customer ORDER BY customer_id
    RETURNING customer_id, points, qualifying
  )
  INSERT INTO bench_ref.balance AS b (customer_id, points, qualifying, updated_at)
  SELECT customer_id, points, qualifying, now() FROM posted ORDER BY customer_id
  ON CONFLICT (customer_id) DO UPDATE
     SET points     = b.points + excluded.points,
         qualifying = b.qualifying + excluded.qualifying,
         updated_at = excluded.updated_at;
  RETURN NULL;
END
$fn$;
CREATE TRIGGER bench_ref_accrue_insert
  AFTER INSERT ON bench.invoice_line
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION bench_ref.accrue_insert();
SQL
}

loyalty_sql() {
  cat <<'SQL'
CREATE EXTENSION loyalty;
SELECT loyalty.create_program('Bench', currency => 'EUR',
         ladder => 'Member:0, Silver:50000, Gold:250000, Platinum:1000000',
         points_per_unit => 1, rounding => 'toward_zero');
SELECT loyalty.add_rule('Bench', '2000-01-01', 1, product_line_multipliers => '{"SOLAR": 2}');
SELECT loyalty.attach('bench.invoice_line', 'Bench',
         account_column => 'customer_id', amount_column => 'amount',
         date_column => 'invoice_date', product_line_column => 'product_line');
SQL
}

setup_variant() { # bare | loyalty | plpgsql
  {
    reset_sql
    case $1 in
      plpgsql) ref_sql ;;
      loyalty) loyalty_sql ;;
    esac
  } | sql -q -1
}

# Can variant b run?  Sets STATUS[loyalty] to a skip reason if not.
probe_loyalty() {
  local out
  if ! out=$(printf '%s\n' 'BEGIN;' 'CREATE EXTENSION loyalty;' \
        "SELECT count(DISTINCT proname) FROM pg_proc WHERE pronamespace = 'loyalty'::regnamespace AND proname IN ('create_program', 'add_rule', 'attach');" \
        'ROLLBACK;' | pg_sql -d bench -qAt 2>&1); then
    printf '%s\n' "$out" >>"$LOG"
    STATUS[loyalty]="skipped: CREATE EXTENSION loyalty fails in this build ($(grep -m1 -o 'ERROR: .*' <<<"$out" || echo 'see the log'))"
  elif [ "$out" != 3 ]; then
    STATUS[loyalty]="skipped: loyalty.create_program/add_rule/attach are not in this build yet"
  fi
}

# ---------------------------------------------------------------- data

# Invoices with 1-9 lines (mean 5) in invoice-number order, dates rising over
# 12 months with the invoice number; HOT customers get HOT_PCT% of the
# invoices, the rest are spread uniformly.  setseed() and a serial plan make
# the file identical from run to run (its md5 is printed).
generate_data() {
  log "generating $LINES invoice lines for $CUSTOMERS customers ($HOT of them with ~$HOT_PCT% of the lines)"
  mkdir -p "$DATA_DIR" && chown postgres: "$DATA_DIR" && rm -f "$CSV"
  pg_sql -d bench -q -v lines="$LINES" -v customers="$CUSTOMERS" -v hot="$HOT" \
      -v hot_share="$(awk -v p="$HOT_PCT" 'BEGIN { print p / 100 }')" -v seed="$SEED" \
      -v csv="$CSV" >>"$LOG" 2>&1 <<'SQL'
SET max_parallel_workers_per_gather = 0;
SELECT setseed(:seed);
CREATE UNLOGGED TABLE bench_staging AS
WITH inv AS MATERIALIZED (
  SELECT i::bigint AS invoice_id,
         CASE WHEN random() < :hot_share
              THEN 1 + floor(random() * :hot)::int
              ELSE :hot + 1 + floor(random() * (:customers - :hot))::int
         END AS customer_id,
         1 + floor(random() * 9)::int AS n_lines
    FROM generate_series(1, ceil(:lines / 5.0 * 1.2)::bigint + 20) AS i
)
SELECT inv.invoice_id, l.line_no, inv.customer_id,
       (ARRAY['SOLAR', 'INVERTER', 'BATTERY', 'MOUNTING', 'CABLE', 'SERVICE'])[1 + floor(random() * 6)::int] AS product_line,
       q.quantity,
       round(q.quantity * (2 + random() * 198)::numeric, 2)::numeric(14,2) AS amount
  FROM inv
 CROSS JOIN LATERAL generate_series(1, inv.n_lines) AS l(line_no)
 CROSS JOIN LATERAL (SELECT round((1 + random() * 99)::numeric, 3)::numeric(12,3) AS quantity) AS q
 ORDER BY inv.invoice_id, l.line_no
 LIMIT :lines;
SELECT format($$COPY (SELECT s.invoice_id, s.line_no, s.customer_id,
                             date '2024-01-01' + ((s.invoice_id - 1) * 366 / m.last_invoice)::int,
                             s.product_line, s.quantity, s.amount
                        FROM bench_staging s, (SELECT max(invoice_id) AS last_invoice FROM bench_staging) m
                       ORDER BY s.invoice_id, s.line_no)
                TO %L WITH (FORMAT csv)$$, :'csv') \gexec
DROP TABLE bench_staging;
SQL
  local n
  n=$(wc -l <"$CSV")
  [ "$n" = "$LINES" ] || die "generated $n lines, wanted $LINES"
  CSV_MD5=$(md5sum "$CSV" | cut -d' ' -f1)
  CSV_SIZE=$(du -h "$CSV" | cut -f1)
  note "$CSV: $CSV_SIZE, md5 $CSV_MD5"
}

# Facts about the data, from a bare load (run a has just left one).
describe_data() {
  DATA_FACTS=$(sql_val <<'SQL' || echo "?"
WITH per AS (SELECT customer_id, count(*) AS n FROM bench.invoice_line GROUP BY customer_id),
     top AS (SELECT sum(n) AS n FROM (SELECT n FROM per ORDER BY n DESC LIMIT 10) t)
SELECT format('%s lines, %s invoices, %s customers with lines, top 10 customers hold %s%% of the lines, %s to %s, %s%% SOLAR lines',
              (SELECT count(*) FROM bench.invoice_line),
              (SELECT count(DISTINCT invoice_id) FROM bench.invoice_line),
              (SELECT count(*) FROM per),
              round(100.0 * (SELECT n FROM top) / (SELECT sum(n) FROM per), 1),
              (SELECT min(invoice_date) FROM bench.invoice_line),
              (SELECT max(invoice_date) FROM bench.invoice_line),
              (SELECT round(100.0 * count(*) FILTER (WHERE product_line = 'SOLAR') / count(*), 1) FROM bench.invoice_line));
SQL
)
  note "$DATA_FACTS"
}

# ---------------------------------------------------------------- COPY variants

# One timed COPY of the whole file into a fresh table.  psql's \timing is the
# client-side time of the COPY statement including its commit (the AFTER
# statement triggers run inside it), without connection set-up.
copy_run() { # variant run
  local v=$1 i=$2 out rows ms secs
  setup_variant "$v" || { fail "$v" "set-up failed"; return 1; }
  sql -q -c CHECKPOINT || { fail "$v" "CHECKPOINT failed"; return 1; }
  if ! out=$(pg_sql -d bench -c '\timing on' \
        -c "COPY bench.invoice_line FROM '$CSV' WITH (FORMAT csv)" 2>&1); then
    printf '%s\n' "$out" >>"$LOG"; fail "$v" "COPY failed: $(grep -m1 -E 'ERROR|FATAL|server closed|could not' <<<"$out" || echo 'see the log')"; return 1
  fi
  printf '%s\n' "$out" >>"$LOG"
  rows=$(sed -n 's/^COPY \([0-9]*\)$/\1/p' <<<"$out")
  ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out")
  if [ "$rows" != "$LINES" ] || [ -z "$ms" ]; then fail "$v" "unexpected COPY output: $out"; return 1; fi
  secs=$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }')
  echo "copy $v $secs" >>"$RESULTS"
  note "$(printf '%-8s run %d: %8.3f s  (%s lines/s)' "$v" "$i" "$secs" \
          "$(awk -v n="$LINES" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')")"
}

copy_variant() { # variant label
  local v=$1 i
  log "COPY $2: $RUNS runs of $LINES lines"
  mark_log
  for ((i = 1; i <= RUNS; i++)); do
    copy_run "$v" "$i" || return 1
  done
}

# Variant c must post exactly what a direct computation over the loaded rows gives.
check_plpgsql() {
  local r
  r=$(sql_val <<'SQL'
SELECT CASE WHEN (SELECT sum(points) FROM bench_ref.balance)
               = (SELECT sum(floor(amount * CASE product_line WHEN 'SOLAR' THEN 2 ELSE 1 END))
                    FROM bench.invoice_line)
             AND (SELECT count(*) FROM bench_ref.ledger)
               = (SELECT count(DISTINCT customer_id) FROM bench.invoice_line)
            THEN 'ok' ELSE 'MISMATCH' END;
SQL
) || r="error"
  note "check: PL/pgSQL reference balances equal a direct computation: $r"
  [ "$r" = ok ] || fail plpgsql "its balances do not match the loaded rows"
}

# loyalty.verify() is the design's own reconciliation; used when present.
check_loyalty() {
  local n
  if [ "$(sql_val -c "SELECT count(*) FROM pg_proc WHERE pronamespace = 'loyalty'::regnamespace AND proname = 'verify'")" = 0 ]; then
    note "check: loyalty.verify() not in this build yet; accrued totals not checked"
  elif n=$(sql_val -c "SELECT count(*) FROM loyalty.verify('Bench')"); then
    note "check: loyalty.verify('Bench') reports $n drift row(s)"
    [ "$n" = 0 ] || fail loyalty "loyalty.verify('Bench') reports $n drift rows"
  else
    note "check: loyalty.verify('Bench') raised an error (see $LOG)"
  fi
}

# ---------------------------------------------------------------- pgbench

# One invoice line per transaction.  The key is unique by construction: a
# per-run base, the client id and a per-client counter (pgbench variables live
# as long as the client), so nothing conflicts and no sequence is shared.
# Customers are skewed like the data.  One script per target table.
write_pgbench_script() { # table file
  cat >"$2" <<PGB
\set customer_id CASE WHEN random(1, 100) <= :hot_pct THEN random(1, :hot) ELSE random(:hot + 1, :customers) END
\set n :n + 1
\set invoice_id :base + :client_id * 1000000000 + :n
\set pl random(1, 6)
\set milli random(1000, 100000)
\set cents random(200, 20000)
INSERT INTO $1 (invoice_id, line_no, customer_id, invoice_date, product_line, quantity, amount)
VALUES (:invoice_id, 1, :customer_id, DATE '2024-12-31',
        (ARRAY['SOLAR', 'INVERTER', 'BATTERY', 'MOUNTING', 'CABLE', 'SERVICE'])[CAST(:pl AS int)],
        CAST(:milli AS numeric) / 1000,
        round(CAST(:milli AS numeric) / 1000 * CAST(:cents AS numeric) / 100, 2));
PGB
  chown postgres: "$2"
}

# The bare side of the pgbench pairs: a twin of the ERP table with the same
# rows and key but no trigger, next to the variant's table in the same database.
load_twin() {
  sql -q -1 <<SQL
DROP TABLE IF EXISTS bench.invoice_line_bare;
CREATE TABLE bench.invoice_line_bare (LIKE bench.invoice_line INCLUDING ALL);
COPY bench.invoice_line_bare FROM '$CSV' WITH (FORMAT csv);
SQL
}

# One pgbench run after a VACUUM ANALYZE and a CHECKPOINT; sets TPS.
pgbench_run() { # variant sync
  local v=$1 sync=$2 table=bench.invoice_line script=$PGB_SCRIPT out rc lat tx inserted base
  [ "$v" != bare ] || { table=bench.invoice_line_bare; script=$PGB_BARE_SCRIPT; }
  TPS=
  PGB_RUN=$((PGB_RUN + 1))
  mark_log
  base=$((PGB_RUN * 10000000000000))
  sql -q -c 'VACUUM (ANALYZE)' -c CHECKPOINT || { fail "$v" "VACUUM before pgbench failed"; return 1; }
  set +e
  out=$(as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres \
          PGOPTIONS="-c synchronous_commit=$sync" \
          "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$JOBS" -T "$SECONDS_PER_RUN" \
          -D base="$base" -D n=0 -D hot="$HOT" -D hot_pct="$HOT_PCT" -D customers="$CUSTOMERS" \
          -f "$script" bench 2>&1)
  rc=$?
  set -e
  printf '%s\n' "$out" >>"$LOG"
  TPS=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$out")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' <<<"$out")
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  if [ "$rc" != 0 ] || [ -z "$TPS" ]; then
    TPS=; fail "$v" "pgbench exited $rc: $(grep -m1 -E 'ERROR|FATAL|aborted|server closed' <<<"$out" || echo 'see the log')"; return 1
  fi
  inserted=$(sql_val -c "SELECT count(*) FROM $table WHERE invoice_id >= $base AND invoice_id < $base + 10000000000000")
  if [ "$inserted" != "$tx" ]; then
    TPS=; fail "$v" "pgbench reports $tx transactions but $inserted rows were inserted"; return 1
  fi
  echo "tps-$sync $v $TPS" >>"$RESULTS"
  note "$(printf 'pgbench %-8s synchronous_commit=%-3s: %10.1f TPS, latency %s ms, %s rows' "$v" "$sync" "$TPS" "$lat" "$tx")"
}

# Paired runs on one machine state: bare, the variant, bare again.  The
# variant's ratio is over the mean of the two bare runs around it, so a
# machine whose speed drifts (other load, a noisy neighbour) moves both.
# The variant's table is the one its last COPY run left behind (LINES rows,
# and the balances of that load); the bare twin holds the same rows.
pgbench_pairs() { # variant
  local v=$1 s b1 t b2
  load_twin || { fail bare "could not load the bare twin table"; return 1; }
  for s in $SYNC_MODES; do
    pgbench_run bare "$s" || return 1; b1=$TPS
    pgbench_run "$v" "$s" || return 1; t=$TPS
    pgbench_run bare "$s" || return 1; b2=$TPS
    echo "ratio-$s $v $(awk -v t="$t" -v a="$b1" -v b="$b2" 'BEGIN { printf "%.4f", 2 * t / (a + b) }')" >>"$RESULTS"
  done
}

# When no variant with a trigger could run, the bare figure alone.
pgbench_bare_only() {
  local s
  load_twin || { fail bare "could not load the bare twin table"; return 1; }
  for s in $SYNC_MODES; do pgbench_run bare "$s" || return 1; done
}

# ---------------------------------------------------------------- report

machine_facts() {
  local cpu mem fs settings
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  fs=$(df -PT "$CLUSTER_DIR" | awk 'NR == 2 { print $2 " on " $1 }')
  settings=$(sql_val 2>/dev/null <<'SQL'
SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)
  FROM pg_settings
 WHERE name IN ('shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'wal_level', 'fsync',
                'synchronous_commit', 'full_page_writes', 'wal_compression', 'work_mem',
                'maintenance_work_mem', 'wal_buffers', 'autovacuum', 'jit');
SQL
) || settings="? (server not reachable)"
  echo "machine:    $(nproc) CPUs ($cpu), $mem RAM, kernel $(uname -r)"
  echo "storage:    $fs (cluster in $CLUSTER_DIR)"
  echo "load:       1-minute load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end (other work on the machine skews the figures)"
  echo "postgres:   $(sql_val -c 'SELECT version()' || "$PGBIN/postgres" --version)"
  echo "settings:   $settings"
  echo "            (pgbench sessions set synchronous_commit as shown per row)"
  echo "data:       ${DATA_FACTS:-?}"
  echo "            $CSV ($CSV_SIZE, md5 $CSV_MD5), seed $SEED"
}

summary() {
  local bare bare_n med r target row v label s tb
  echo
  echo "==================== accrual benchmark ===================="
  machine_facts
  echo
  bare=$(values_of copy bare | median || true)
  bare_n=$(values_of copy bare | wc -l)
  printf '%-44s | %16s | %18s | %s\n' "variant ($LINES lines, COPY FROM file)" "seconds (median)" "ratio to bare COPY" "target"
  printf '%-44s-+-%16s-+-%18s-+-%s\n' "$(printf -- '-%.0s' {1..44})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..18})" "------------------------"
  for row in "bare|a. bare COPY, no trigger" "loyalty|b. COPY + loyalty accrual (C)" "plpgsql|c. COPY + PL/pgSQL statement trigger"; do
    v=${row%%|*}; label=${row#*|}
    if [ "$v" = bare ]; then
      target="baseline, median of $bare_n runs"
    elif [ "$v" = loyalty ]; then target="<= 1.50x"
    else target="reference (design doc: 5.9x)"; fi
    if [ -n "${STATUS[$v]:-}" ] && [ -z "$(values_of copy "$v")" ]; then
      printf '%-44s | %16s | %18s | %s\n' "$label" "-" "-" "${STATUS[$v]}"; continue
    fi
    med=$(values_of copy "$v" | median || true)
    if [ -z "$med" ] || [ -z "$bare" ]; then
      printf '%-44s | %16s | %18s | %s\n' "$label" "-" "-" "${STATUS[$v]:-no result}"; continue
    fi
    r=$(ratio "$med" "$bare")
    if [ "$v" = loyalty ]; then
      if le "$r" 1.5; then target="<= 1.50x: met"; else target="<= 1.50x: NOT met"; fi
    fi
    [ -n "${STATUS[$v]:-}" ] && target="$target (${STATUS[$v]})"
    printf '%-44s | %16s | %17sx | %s\n' "$label" "$med" "$r" "$target"
  done
  printf '  each run (s):'
  for v in bare loyalty plpgsql; do printf ' %s: %s;' "$v" "$(values_of copy "$v" | paste -sd' ' - | grep . || echo -)"; done
  echo
  # shellcheck disable=SC2046  # one value per word
  steady_note COPY $(values_of copy bare)

  for s in $SYNC_MODES; do
    echo
    printf '%-44s | %16s | %18s | %s\n' "pgbench, synchronous_commit=$s" "TPS" "ratio to bare TPS" "target"
    printf '%-44s-+-%16s-+-%18s-+-%s\n' "$(printf -- '-%.0s' {1..44})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..18})" "------------------------"
    for row in "bare|bare INSERT, 1 line/transaction" "loyalty|INSERT + loyalty accrual (C)" "plpgsql|INSERT + PL/pgSQL statement trigger"; do
      v=${row%%|*}; label=${row#*|}
      tb=$(values_of "tps-$s" "$v" | mean)
      if [ -z "$tb" ]; then
        printf '%-44s | %16s | %18s | %s\n' "$label" "-" "-" "${STATUS[$v]:-no result}"; continue
      fi
      if [ "$v" = bare ]; then
        printf '%-44s | %16s | %17sx | %s\n' "$label" "$tb" "1.00" "baseline, mean of $(values_of "tps-$s" bare | wc -l) runs"; continue
      fi
      r=$(values_of "ratio-$s" "$v" | mean 2)
      case $v in
        loyalty) if le 0.8 "$r"; then target=">= 0.80x: met"; else target=">= 0.80x: NOT met"; fi ;;
        plpgsql) target="reference" ;;
      esac
      printf '%-44s | %16s | %17sx | %s\n' "$label" "$tb" "$r" "$target"
    done
    printf '  each run (TPS):'
    for v in bare loyalty plpgsql; do printf ' %s: %s;' "$v" "$(values_of "tps-$s" "$v" | awk '{ printf "%.0f\n", $1 }' | paste -sd' ' - | grep . || echo -)"; done
    echo
    # shellcheck disable=SC2046
    steady_note pgbench $(values_of "tps-$s" bare)
  done
  echo
  echo "pgbench: $CLIENTS clients, $JOBS threads, ${SECONDS_PER_RUN} s per run, prepared statements, one invoice"
  echo "line per transaction, customers skewed like the data, on the table its variant's last COPY left"
  echo "($LINES lines) or its bare twin. A variant's ratio is paired: its TPS over the mean of the bare"
  echo "runs just before and after it. synchronous_commit=off shows the CPU cost of the trigger rather"
  echo "than the WAL flush at commit; =on is what an ERP with default settings sees."
}

# ---------------------------------------------------------------- main

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
ensure_packages
if [ "$BUILD" = 1 ]; then build_and_install; else log "BENCH_BUILD=0: using the installed extension"; fi
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_start
mkdir -p "$RUN_DIR" && : >"$LOG" && : >"$RESULTS"

log "bench settings: shared_buffers=$SHARED_BUFFERS, max_wal_size=$MAX_WAL_SIZE (no checkpoint inside a timed COPY)"
pg_sql -q >>"$LOG" 2>&1 <<SQL
ALTER SYSTEM SET shared_buffers = '$SHARED_BUFFERS';
ALTER SYSTEM SET max_wal_size = '$MAX_WAL_SIZE';
ALTER SYSTEM SET checkpoint_timeout = '30min';
SQL
as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -l "$RUN_DIR/cluster.log" -w -t 60 restart >/dev/null \
  || { tail -20 "$RUN_DIR/cluster.log"; die "cluster did not restart with the bench settings"; }
PM_PID=$(head -1 "$CLUSTER_DIR/postmaster.pid")
pg_sql -q -c "CREATE DATABASE bench" >>"$LOG" 2>&1

generate_data
write_pgbench_script bench.invoice_line "$PGB_SCRIPT"
write_pgbench_script bench.invoice_line_bare "$PGB_BARE_SCRIPT"
probe_loyalty
[ -z "${STATUS[loyalty]:-}" ] || note "variant b (loyalty) ${STATUS[loyalty]}"

# Bare first and last, so a drift of the machine during the run shows up in
# the bare figures rather than in a ratio.
copy_variant bare "a (bare, first set)" && describe_data
if copy_variant plpgsql "c (PL/pgSQL statement trigger)"; then
  check_plpgsql
  pgbench_pairs plpgsql || true
fi
if [ -z "${STATUS[loyalty]:-}" ]; then
  if copy_variant loyalty "b (loyalty accrual)"; then
    check_loyalty
    pgbench_pairs loyalty || true
  fi
fi
copy_variant bare "a (bare, last set)" || true
if [ -z "$(values_of "tps-${SYNC_MODES%% *}" bare)" ] && [ -z "${STATUS[bare]:-}" ]; then
  log "pgbench: bare only (no variant with a trigger ran)"
  pgbench_bare_only || true
fi

mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/accrual-$(date +%Y%m%d-%H%M%S).txt
summary | tee "$REPORT"
echo
echo "report saved to $REPORT; psql and pgbench output in $LOG"
exit "$FAILED"
