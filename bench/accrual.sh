#!/usr/bin/env bash
# Accrual benchmark: what does attaching loyalty to an ERP's invoice tables
# cost a bulk COPY and OLTP transactions?  Every figure is a ratio to a
# baseline measured in the same run, on the same machine, from the same bytes:
# bare COPY for the COPY variants, bare TPS for pgbench.
#
# Two shapes of ERP table, each with the same variants:
#   line shape:   bench.invoice_line carries customer and date itself
#   header shape: bench.invoice_line_h gets them from bench.invoice_header
#
#   a. COPY, no trigger                                  (baseline = 1.0)
#   f. COPY with a no-op statement trigger that only reads its transition
#      table (the floor: what any statement-level engine pays)
#   b. COPY with loyalty.attach()      (target <= 1.2x; header shape <= 1.3x)
#   c. COPY with a hand-written PL/pgSQL statement trigger (the reference)
#   pgbench, paired with bare runs, synchronous_commit on and off:
#     line shape:   one invoice line per transaction   (>= 0.8x on, >= 0.6x off)
#     header shape: one invoice, header + 5 lines      (>= 0.85x on, >= 0.7x off)
#
# Memory and cold-start figures are bench/memory.sh's.
# Run as root:  bash bench/accrual.sh
# Sizes and knobs come from the environment; see bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=bench  # a run directory of its own (.run-bench), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54403}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

# BENCH_QUICK=1: small sizes for a look in a few minutes (explicit BENCH_*
# variables still win).
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  : "${BENCH_LINES:=100000}" "${BENCH_CUSTOMERS:=5000}" "${BENCH_HEADER_LINES:=100000}"
  : "${BENCH_HEADER_CUSTOMERS:=20000}" "${BENCH_RUNS:=2}" "${BENCH_SECONDS:=5}"
fi
LINES=${BENCH_LINES:-1000000}
CUSTOMERS=${BENCH_CUSTOMERS:-20000}
HLINES=${BENCH_HEADER_LINES:-$LINES}    # lines of the header-shaped COPY
HCUSTOMERS=${BENCH_HEADER_CUSTOMERS:-150000}
HOT=${BENCH_HOT_CUSTOMERS:-10}          # customers that carry ...
HOT_PCT=${BENCH_HOT_PCT:-50}            # ... this share (%) of the invoices
RUNS=${BENCH_RUNS:-3}                   # timed COPY runs per variant (bare: twice that)
CLIENTS=${BENCH_CLIENTS:-4}
SECONDS_PER_RUN=${BENCH_SECONDS:-30}
SYNC_MODES=${BENCH_SYNC_MODES:-off on}  # synchronous_commit values for pgbench
SHAPES=${BENCH_SHAPES:-line header}     # which table shapes to run
PGB_VARIANTS=${BENCH_PGBENCH_VARIANTS:-floor loyalty plpgsql}  # variants with pgbench pairs
INVOICE_INSERT=${BENCH_INVOICE_INSERT:-rows}  # rows: 5 single-row INSERTs; multi: one 5-row INSERT
SEED=${BENCH_SEED:-0.42}
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
MAX_WAL_SIZE=${BENCH_MAX_WAL_SIZE:-8GB}
BUILD=${BENCH_BUILD:-1}                 # 0: use the extension already installed
SCOPED_REBATE=${BENCH_SCOPED_REBATE:-0} # 1: a rebate agreement scoped to two product lines
INVOICE_LINES=5                         # lines per pgbench invoice

for v in LINES CUSTOMERS HLINES HCUSTOMERS HOT HOT_PCT RUNS CLIENTS SECONDS_PER_RUN; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done
[ "$HOT" -lt "$CUSTOMERS" ] || die "BENCH_HOT_CUSTOMERS ($HOT) must be below BENCH_CUSTOMERS ($CUSTOMERS)"
[ "$HOT" -lt "$HCUSTOMERS" ] || die "BENCH_HOT_CUSTOMERS ($HOT) must be below BENCH_HEADER_CUSTOMERS ($HCUSTOMERS)"
[ "$HOT_PCT" -le 100 ] || die "BENCH_HOT_PCT is a percentage"
for s in $SYNC_MODES; do [[ $s =~ ^(on|off)$ ]] || die "BENCH_SYNC_MODES takes on and/or off, got '$s'"; done
for s in $SHAPES; do [[ $s =~ ^(line|header)$ ]] || die "BENCH_SHAPES takes line and/or header, got '$s'"; done
for s in $PGB_VARIANTS; do [[ $s =~ ^(floor|loyalty|plpgsql)$ ]] || die "BENCH_PGBENCH_VARIANTS takes floor, loyalty and/or plpgsql, got '$s'"; done
[[ $INVOICE_INSERT =~ ^(rows|multi)$ ]] || die "BENCH_INVOICE_INSERT is rows or multi, got '$INVOICE_INSERT'"

JOBS=$(( CLIENTS < $(nproc) ? CLIENTS : $(nproc) ))
DATA_DIR=$RUN_DIR/data
CSV=$DATA_DIR/invoice_line.csv
HCSV=$DATA_DIR/invoice_header.csv       # header shape: the headers ...
HLCSV=$DATA_DIR/invoice_line_h.csv      # ... and their lines
LOG=$RUN_DIR/accrual.log
RESULTS=$RUN_DIR/accrual.results      # "kind variant value" lines, one per run
OUT_DIR=$BENCH_DIR/out

declare -A STATUS=()                    # variant -> "" | skipped: ... | failed: ...
PGB_RUN=0
TPS=
FAILED=0
PM_PID=
LOG_MARK=0
CSV_MD5=; CSV_SIZE=; HCSV_MD5=; HCSV_SIZE=; DATA_FACTS=; HDATA_FACTS=

# Variants of the header shape are the line shape's names with an h in
# front (hbare, hfloor, hloyalty, hplpgsql); every figure is keyed by them.
shape_of() { case $1 in h*) echo header ;; *) echo line ;; esac; }
base_of() { if [ "$(shape_of "$1")" = header ]; then echo "${1#h}"; else echo "$1"; fi; }
prefix_of() { if [ "$1" = header ]; then echo h; fi; }
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

# The ERP's tables, as an ERP would have them: composite key, no loyalty
# columns.  Line shape: the lines carry customer and date.  Header shape: the
# header carries them and the lines reference it by invoice_id (no foreign
# key: its per-row RI trigger would slow the bare baseline and flatter every
# ratio).  Every variant starts from nothing, so no run inherits another's
# bloat or state.
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

# The floor: a statement-level AFTER INSERT trigger with a transition table
# whose function only counts the transition table.  Counting rather than
# PERFORM 1: PostgreSQL fills the tuplestore either way, but any engine must
# also read it back once (from disk, once it outgrows work_mem), so the floor
# is "capture the rows and read them once", the least a statement-level
# engine can pay.  Its count query is far below jit_above_cost at any size
# measured here, so it is not JIT-compiled.
floor_sql() { # table
  cat <<SQL
CREATE FUNCTION bench.floor_trigger() RETURNS trigger
LANGUAGE plpgsql AS \$fn\$
BEGIN
  PERFORM count(*) FROM new_rows;
  RETURN NULL;
END
\$fn\$;
CREATE TRIGGER bench_floor AFTER INSERT ON $1
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION bench.floor_trigger();
SQL
}

# The reference a DBA would write by hand: a statement-level AFTER INSERT
# trigger with a transition table; versioned rules looked up by invoice date;
# per statement one ledger row per customer and one balance upsert per
# customer, in ascending customer order.  It computes points and qualifying
# spend only (no tier, no audit detail), so it does no more work than loyalty.
# Header shape: the same function, the lines joined to their header for
# customer and date (one hash or nested-loop join, as the planner likes).
ref_sql() { # shape
  local table=bench.invoice_line from='new_rows n' cust=n.customer_id date=n.invoice_date
  if [ "$1" = header ]; then
    table=bench.invoice_line_h cust=h.customer_id date=h.invoice_date
    from='new_rows n JOIN bench.invoice_header h ON h.invoice_id = n.invoice_id'
  fi
  sed -e "s|@TABLE@|$table|g" -e "s|@FROM@|$from|g" -e "s|@CUST@|$cust|g" -e "s|@DATE@|$date|g" <<'SQL'
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
    SELECT @CUST@ AS customer_id,
           sum(floor(n.amount * r.points_per_unit
                     * coalesce((r.product_line_multipliers ->> n.product_line)::numeric, 1)))::bigint AS points,
           sum(n.amount) AS qualifying,
           count(*)      AS lines
      FROM @FROM@
      JOIN rule r ON @DATE@ >= r.valid_from AND @DATE@ < r.valid_until
     GROUP BY @CUST@
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
  AFTER INSERT ON @TABLE@
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION bench_ref.accrue_insert();
SQL
}

# Header shape: the lines are attached with the header mapping (customer and
# date read from bench.invoice_header through the lines' invoice_id), as
# README's quick start does for an ERP's header and lines.
loyalty_sql() { # shape
  cat <<'SQL'
CREATE EXTENSION loyalty;
SELECT loyalty.create_program('Bench', currency => 'EUR',
         ladder => 'Member:0, Silver:50000, Gold:250000, Platinum:1000000',
         points_per_unit => 1, rounding => 'toward_zero');
SELECT loyalty.add_rule('Bench', '2000-01-01', 1, product_line_multipliers => '{"SOLAR": 2}');
SQL
  if [ "$1" = header ]; then
    cat <<'SQL'
SELECT loyalty.attach('bench.invoice_line_h', 'Bench',
         key_column => 'invoice_id, line_no',
         header => 'bench.invoice_header', line_header_column => 'invoice_id',
         account_column => 'customer_id', date_column => 'invoice_date',
         amount_column => 'amount', product_line_column => 'product_line');
SQL
  else
    cat <<'SQL'
SELECT loyalty.attach('bench.invoice_line', 'Bench',
         account_column => 'customer_id', amount_column => 'amount',
         date_column => 'invoice_date', product_line_column => 'product_line');
SQL
  fi
  # the trigger then splits the qualifying spend by SOLAR, BATTERY and the rest
  if [ "$SCOPED_REBATE" = 1 ]; then
    cat <<'SQL'
SELECT loyalty.create_rebate_agreement('Bench', 'SCOPED', 'retro: 0:1%', product_lines => '{SOLAR,BATTERY}',
                                       valid_from => '2000-01-01');
SQL
  fi
}

setup_variant() { # variant: [h]bare | [h]floor | [h]loyalty | [h]plpgsql
  local shape table=bench.invoice_line
  shape=$(shape_of "$1")
  [ "$shape" = line ] || table=bench.invoice_line_h
  {
    reset_sql
    case $(base_of "$1") in
      floor) floor_sql "$table" ;;
      plpgsql) ref_sql "$shape" ;;
      loyalty) loyalty_sql "$shape" ;;
    esac
  } | sql -q -1
}

# Can variant b run?  Sets STATUS[loyalty] and STATUS[hloyalty] to a skip
# reason if not.
probe_loyalty() {
  local out reason=
  if ! out=$(printf '%s\n' 'BEGIN;' 'CREATE EXTENSION loyalty;' \
        "SELECT count(DISTINCT proname) FROM pg_proc WHERE pronamespace = 'loyalty'::regnamespace AND proname IN ('create_program', 'add_rule', 'attach');" \
        'ROLLBACK;' | pg_sql -d bench -qAt 2>&1); then
    printf '%s\n' "$out" >>"$LOG"
    reason="skipped: CREATE EXTENSION loyalty fails in this build ($(grep -m1 -o 'ERROR: .*' <<<"$out" || echo 'see the log'))"
  elif [ "$out" != 3 ]; then
    reason="skipped: loyalty.create_program/add_rule/attach are not in this build yet"
  fi
  if [ -n "$reason" ]; then STATUS[loyalty]=$reason; STATUS[hloyalty]=$reason; fi
}

# ---------------------------------------------------------------- data

# Invoices with 1-9 lines (mean 5) in invoice-number order, dates rising over
# 12 months with the invoice number; HOT customers get HOT_PCT% of the
# invoices, the rest are spread uniformly.  setseed() and a serial plan make
# the files identical from run to run (their md5 is printed).  The staging
# table holds one row per line, with the invoice's customer.
staging_sql() { # lines customers
  cat <<SQL
SET max_parallel_workers_per_gather = 0;
SELECT setseed($SEED);
CREATE UNLOGGED TABLE bench_staging AS
WITH inv AS MATERIALIZED (
  SELECT i::bigint AS invoice_id,
         CASE WHEN random() < $(awk -v p="$HOT_PCT" 'BEGIN { print p / 100 }')
              THEN 1 + floor(random() * $HOT)::int
              ELSE $HOT + 1 + floor(random() * ($2 - $HOT))::int
         END AS customer_id,
         1 + floor(random() * 9)::int AS n_lines
    FROM generate_series(1, ceil($1 / 5.0 * 1.2)::bigint + 20) AS i
)
SELECT inv.invoice_id, l.line_no, inv.customer_id,
       (ARRAY['SOLAR', 'INVERTER', 'BATTERY', 'MOUNTING', 'CABLE', 'SERVICE'])[1 + floor(random() * 6)::int] AS product_line,
       q.quantity,
       round(q.quantity * (2 + random() * 198)::numeric, 2)::numeric(14,2) AS amount
  FROM inv
 CROSS JOIN LATERAL generate_series(1, inv.n_lines) AS l(line_no)
 CROSS JOIN LATERAL (SELECT round((1 + random() * 99)::numeric, 3)::numeric(12,3) AS quantity) AS q
 ORDER BY inv.invoice_id, l.line_no
 LIMIT $1;
CREATE TEMP VIEW bench_dated AS
SELECT s.*, date '2024-01-01' + ((s.invoice_id - 1) * 366 / m.last_invoice)::int AS invoice_date
  FROM bench_staging s, (SELECT max(invoice_id) AS last_invoice FROM bench_staging) m;
SQL
}

generate_data() {
  log "generating $LINES invoice lines for $CUSTOMERS customers ($HOT of them with ~$HOT_PCT% of the lines)"
  mkdir -p "$DATA_DIR" && chown postgres: "$DATA_DIR" && rm -f "$CSV"
  {
    staging_sql "$LINES" "$CUSTOMERS"
    cat <<SQL
COPY (SELECT invoice_id, line_no, customer_id, invoice_date, product_line, quantity, amount
        FROM bench_dated ORDER BY invoice_id, line_no)
  TO '$CSV' WITH (FORMAT csv);
DROP TABLE bench_staging CASCADE;
SQL
  } | pg_sql -d bench -q >>"$LOG" 2>&1
  local n
  n=$(wc -l <"$CSV")
  [ "$n" = "$LINES" ] || die "generated $n lines, wanted $LINES"
  CSV_MD5=$(md5sum "$CSV" | cut -d' ' -f1)
  CSV_SIZE=$(du -h "$CSV" | cut -f1)
  note "$CSV: $CSV_SIZE, md5 $CSV_MD5"
}

# The header shape: the same generator for HLINES lines and HCUSTOMERS
# customers, split into a header file (one row per invoice: key, customer,
# date) and a lines file (key, line_no, product line, quantity, amount).
generate_header_data() {
  log "generating $HLINES invoice lines with their headers for $HCUSTOMERS customers ($HOT of them with ~$HOT_PCT% of the invoices)"
  mkdir -p "$DATA_DIR" && chown postgres: "$DATA_DIR" && rm -f "$HCSV" "$HLCSV"
  {
    staging_sql "$HLINES" "$HCUSTOMERS"
    cat <<SQL
COPY (SELECT DISTINCT ON (invoice_id) invoice_id, customer_id, invoice_date
        FROM bench_dated ORDER BY invoice_id)
  TO '$HCSV' WITH (FORMAT csv);
COPY (SELECT invoice_id, line_no, product_line, quantity, amount
        FROM bench_staging ORDER BY invoice_id, line_no)
  TO '$HLCSV' WITH (FORMAT csv);
DROP TABLE bench_staging CASCADE;
SQL
  } | pg_sql -d bench -q >>"$LOG" 2>&1
  local n
  n=$(wc -l <"$HLCSV")
  [ "$n" = "$HLINES" ] || die "generated $n header-shaped lines, wanted $HLINES"
  HCSV_MD5=$(cat "$HCSV" "$HLCSV" | md5sum | cut -d' ' -f1)
  HCSV_SIZE=$(du -ch "$HCSV" "$HLCSV" | tail -1 | cut -f1)
  note "$HCSV + $HLCSV: $HCSV_SIZE, $(wc -l <"$HCSV") headers, md5 of both $HCSV_MD5"
}

# Facts about the data, from a bare load (run a has just left one).
describe_data() { # shape
  local facts
  if [ "$1" = header ]; then
    facts=$(sql_val <<'SQL' || echo "?"
WITH l AS (SELECT h.customer_id, h.invoice_date, l.product_line
             FROM bench.invoice_line_h l JOIN bench.invoice_header h USING (invoice_id)),
     per AS (SELECT customer_id, count(*) AS n FROM l GROUP BY customer_id),
     top AS (SELECT sum(n) AS n FROM (SELECT n FROM per ORDER BY n DESC LIMIT 10) t)
SELECT format('%s lines, %s headers, %s customers with lines, top 10 customers hold %s%% of the lines, %s to %s, %s%% SOLAR lines',
              (SELECT count(*) FROM l), (SELECT count(*) FROM bench.invoice_header),
              (SELECT count(*) FROM per),
              round(100.0 * (SELECT n FROM top) / (SELECT sum(n) FROM per), 1),
              (SELECT min(invoice_date) FROM l), (SELECT max(invoice_date) FROM l),
              (SELECT round(100.0 * count(*) FILTER (WHERE product_line = 'SOLAR') / count(*), 1) FROM l));
SQL
)
    HDATA_FACTS=$facts
  else
    facts=$(sql_val <<'SQL' || echo "?"
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
    DATA_FACTS=$facts
  fi
  note "$facts"
}

# ---------------------------------------------------------------- COPY variants

# One timed COPY of the whole file into a fresh table.  psql's \timing is the
# client-side time of the COPY statement including its commit (the AFTER
# statement triggers run inside it), without connection set-up.  Header
# shape: the headers are loaded first, untimed (with the variant's triggers
# in place, as an ERP would have them) and analysed, as autovacuum would
# have done on an ERP's header table; then the timed COPY of the lines.
copy_run() { # variant run
  local v=$1 i=$2 out rows ms secs table=bench.invoice_line file=$CSV want=$LINES
  if [ "$(shape_of "$v")" = header ]; then table=bench.invoice_line_h file=$HLCSV want=$HLINES; fi
  setup_variant "$v" || { fail "$v" "set-up failed"; return 1; }
  if [ "$(shape_of "$v")" = header ]; then
    sql -q -c "COPY bench.invoice_header FROM '$HCSV' WITH (FORMAT csv)" \
        -c 'VACUUM (ANALYZE) bench.invoice_header' \
      || { fail "$v" "COPY of the headers failed"; return 1; }
  fi
  sql -q -c CHECKPOINT || { fail "$v" "CHECKPOINT failed"; return 1; }
  if ! out=$(pg_sql -d bench -c '\timing on' \
        -c "COPY $table FROM '$file' WITH (FORMAT csv)" 2>&1); then
    printf '%s\n' "$out" >>"$LOG"; fail "$v" "COPY failed: $(grep -m1 -E 'ERROR|FATAL|server closed|could not' <<<"$out" || echo 'see the log')"; return 1
  fi
  printf '%s\n' "$out" >>"$LOG"
  rows=$(sed -n 's/^COPY \([0-9]*\)$/\1/p' <<<"$out")
  ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out")
  if [ "$rows" != "$want" ] || [ -z "$ms" ]; then fail "$v" "unexpected COPY output: $out"; return 1; fi
  secs=$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }')
  echo "copy $v $secs" >>"$RESULTS"
  note "$(printf '%-8s run %d: %8.3f s  (%s lines/s)' "$v" "$i" "$secs" \
          "$(awk -v n="$want" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')")"
}

copy_variant() { # variant label
  local v=$1 i want=$LINES
  [ "$(shape_of "$v")" = line ] || want=$HLINES
  log "COPY $2: $RUNS runs of $want lines"
  mark_log
  for ((i = 1; i <= RUNS; i++)); do
    copy_run "$v" "$i" || return 1
  done
}

# Variant c must post exactly what a direct computation over the loaded rows gives.
check_plpgsql() { # variant
  local r src='bench.invoice_line'
  [ "$(shape_of "$1")" = line ] || src='bench.invoice_line_h JOIN bench.invoice_header USING (invoice_id)'
  r=$(sql_val <<SQL
SELECT CASE WHEN (SELECT sum(points) FROM bench_ref.balance)
               = (SELECT sum(floor(amount * CASE product_line WHEN 'SOLAR' THEN 2 ELSE 1 END))
                    FROM $src)
             AND (SELECT count(*) FROM bench_ref.ledger)
               = (SELECT count(DISTINCT customer_id) FROM $src)
            THEN 'ok' ELSE 'MISMATCH' END;
SQL
) || r="error"
  note "check: PL/pgSQL reference balances equal a direct computation: $r"
  [ "$r" = ok ] || fail "$1" "its balances do not match the loaded rows"
}

# loyalty.verify() is the design's own reconciliation; used when present.
check_loyalty() { # variant
  local n
  if [ "$(sql_val -c "SELECT count(*) FROM pg_proc WHERE pronamespace = 'loyalty'::regnamespace AND proname = 'verify'")" = 0 ]; then
    note "check: loyalty.verify() not in this build yet; accrued totals not checked"
  elif n=$(sql_val -c "SELECT count(*) FROM loyalty.verify('Bench')"); then
    note "check: loyalty.verify('Bench') reports $n drift row(s)"
    echo "verify $1 $n" >>"$RESULTS"
    [ "$n" = 0 ] || fail "$1" "loyalty.verify('Bench') reports $n drift rows"
  else
    note "check: loyalty.verify('Bench') raised an error (see $LOG)"
  fi
}

# ---------------------------------------------------------------- pgbench

# The key is unique by construction: a per-run base, the client id and a
# per-client counter (pgbench variables live as long as the client), so
# nothing conflicts and no sequence is shared.  Customers are skewed like
# the data.  One script per target table.
pgbench_script_file() { # variant
  local b=line t=
  [ "$(shape_of "$1")" = line ] || b=invoice
  [ "$(base_of "$1")" != bare ] || t=_bare
  echo "$DATA_DIR/insert_$b$t.pgbench"
}

# Line shape: one invoice line per transaction.
write_line_script() { # table file
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

# Header shape: one invoice per transaction, as an ERP posts it: the header,
# then its 5 lines, then COMMIT.  By default each line is its own INSERT
# (BENCH_INVOICE_INSERT=rows), which is what ORM-based ERPs send (a document's
# child rows are written one by one) and the harder case for a
# statement-level trigger: it fires once per line.  BENCH_INVOICE_INSERT=multi
# sends the 5 lines as one multi-row INSERT instead.
write_invoice_script() { # header-table lines-table file
  local i values=()
  {
    echo '\set customer_id CASE WHEN random(1, 100) <= :hot_pct THEN random(1, :hot) ELSE random(:hot + 1, :customers) END'
    echo '\set n :n + 1'
    echo '\set invoice_id :base + :client_id * 1000000000 + :n'
    for ((i = 1; i <= INVOICE_LINES; i++)); do
      echo "\\set pl$i random(1, 6)"
      echo "\\set milli$i random(1000, 100000)"
      echo "\\set cents$i random(200, 20000)"
      values+=("(:invoice_id, $i, (ARRAY['SOLAR', 'INVERTER', 'BATTERY', 'MOUNTING', 'CABLE', 'SERVICE'])[CAST(:pl$i AS int)], CAST(:milli$i AS numeric) / 1000, round(CAST(:milli$i AS numeric) / 1000 * CAST(:cents$i AS numeric) / 100, 2))")
    done
    echo 'BEGIN;'
    echo "INSERT INTO $1 (invoice_id, customer_id, invoice_date) VALUES (:invoice_id, :customer_id, DATE '2024-12-31');"
    if [ "$INVOICE_INSERT" = multi ]; then
      printf 'INSERT INTO %s (invoice_id, line_no, product_line, quantity, amount) VALUES %s' "$2" "${values[0]}"
      for ((i = 1; i < INVOICE_LINES; i++)); do printf ', %s' "${values[i]}"; done
      echo ';'
    else
      for ((i = 0; i < INVOICE_LINES; i++)); do
        echo "INSERT INTO $2 (invoice_id, line_no, product_line, quantity, amount) VALUES ${values[i]};"
      done
    fi
    echo 'COMMIT;'
  } >"$3"
  chown postgres: "$3"
}

write_pgbench_scripts() {
  write_line_script bench.invoice_line "$(pgbench_script_file loyalty)"
  write_line_script bench.invoice_line_bare "$(pgbench_script_file bare)"
  write_invoice_script bench.invoice_header bench.invoice_line_h "$(pgbench_script_file hloyalty)"
  write_invoice_script bench.invoice_header_bare bench.invoice_line_h_bare "$(pgbench_script_file hbare)"
}

# The bare side of the pgbench pairs: twins of the ERP tables with the same
# rows and keys but no trigger, next to the variant's tables in the same
# database.
load_twin() { # shape
  if [ "$1" = header ]; then
    sql -q -1 <<SQL
DROP TABLE IF EXISTS bench.invoice_header_bare, bench.invoice_line_h_bare;
CREATE TABLE bench.invoice_header_bare (LIKE bench.invoice_header INCLUDING ALL);
CREATE TABLE bench.invoice_line_h_bare (LIKE bench.invoice_line_h INCLUDING ALL);
COPY bench.invoice_header_bare FROM '$HCSV' WITH (FORMAT csv);
COPY bench.invoice_line_h_bare FROM '$HLCSV' WITH (FORMAT csv);
SQL
  else
    sql -q -1 <<SQL
DROP TABLE IF EXISTS bench.invoice_line_bare;
CREATE TABLE bench.invoice_line_bare (LIKE bench.invoice_line INCLUDING ALL);
COPY bench.invoice_line_bare FROM '$CSV' WITH (FORMAT csv);
SQL
  fi
}

# One pgbench run after a VACUUM ANALYZE and a CHECKPOINT; sets TPS
# (transactions per second: lines on the line shape, invoices on the
# header shape).
pgbench_run() { # variant sync
  local v=$1 sync=$2 script out rc lat tx inserted base check customers=$CUSTOMERS
  local range
  script=$(pgbench_script_file "$v")
  TPS=
  PGB_RUN=$((PGB_RUN + 1))
  mark_log
  base=$((PGB_RUN * 10000000000000))
  range="invoice_id >= $base AND invoice_id < $base + 10000000000000"
  case $v in
    bare) check="SELECT count(*) FROM bench.invoice_line_bare WHERE $range" ;;
    hbare) check="SELECT (SELECT count(*) FROM bench.invoice_header_bare WHERE $range) || ' ' || (SELECT count(*) FROM bench.invoice_line_h_bare WHERE $range)" ;;
    h*) check="SELECT (SELECT count(*) FROM bench.invoice_header WHERE $range) || ' ' || (SELECT count(*) FROM bench.invoice_line_h WHERE $range)" ;;
    *) check="SELECT count(*) FROM bench.invoice_line WHERE $range" ;;
  esac
  [ "$(shape_of "$v")" = line ] || customers=$HCUSTOMERS
  sql -q -c 'VACUUM (ANALYZE)' -c CHECKPOINT || { fail "$v" "VACUUM before pgbench failed"; return 1; }
  set +e
  out=$(as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres \
          PGOPTIONS="-c synchronous_commit=$sync" \
          "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$JOBS" -T "$SECONDS_PER_RUN" \
          -D base="$base" -D n=0 -D hot="$HOT" -D hot_pct="$HOT_PCT" -D customers="$customers" \
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
  inserted=$(sql_val -c "$check")
  local want=$tx
  [ "$(shape_of "$v")" = line ] || want="$tx $((tx * INVOICE_LINES))"
  if [ "$inserted" != "$want" ]; then
    TPS=; fail "$v" "pgbench reports $tx transactions but the tables gained $inserted rows (want $want)"; return 1
  fi
  echo "tps-$sync $v $TPS" >>"$RESULTS"
  note "$(printf 'pgbench %-8s synchronous_commit=%-3s: %10.1f TPS, latency %s ms, %s transactions' "$v" "$sync" "$TPS" "$lat" "$tx")"
}

# Paired runs on one machine state: bare, the variant, bare again.  The
# variant's ratio is over the mean of the two bare runs around it, so a
# machine whose speed drifts (other load, a noisy neighbour) moves both.
# The variant's tables are the ones its last COPY run left behind (the
# loaded rows, and the balances of that load); the bare twins hold the same
# rows.
pgbench_pairs() { # variant
  local v=$1 s b1 t b2 shape bare
  shape=$(shape_of "$v"); bare=$(prefix_of "$shape")bare
  load_twin "$shape" || { fail "$bare" "could not load the bare twin tables"; return 1; }
  for s in $SYNC_MODES; do
    pgbench_run "$bare" "$s" || return 1; b1=$TPS
    pgbench_run "$v" "$s" || return 1; t=$TPS
    pgbench_run "$bare" "$s" || return 1; b2=$TPS
    echo "ratio-$s $v $(awk -v t="$t" -v a="$b1" -v b="$b2" 'BEGIN { printf "%.4f", 2 * t / (a + b) }')" >>"$RESULTS"
  done
}

# When no variant with a trigger could run, the bare figure alone.
pgbench_bare_only() { # shape
  local s bare
  bare=$(prefix_of "$1")bare
  load_twin "$1" || { fail "$bare" "could not load the bare twin tables"; return 1; }
  for s in $SYNC_MODES; do pgbench_run "$bare" "$s" || return 1; done
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
  echo "loyalty:    $(sql_val -c "SELECT default_version FROM pg_available_extensions WHERE name = 'loyalty'" || echo '?'), $(built_from)"
  echo "settings:   $settings"
  echo "            (pgbench sessions set synchronous_commit as shown per row)"
  if [[ " $SHAPES " == *" line "* ]]; then
    echo "data:       line shape: ${DATA_FACTS:-?}"
    echo "            $CSV ($CSV_SIZE, md5 $CSV_MD5), seed $SEED"
  fi
  if [[ " $SHAPES " == *" header "* ]]; then
    echo "data:       header shape: ${HDATA_FACTS:-?}"
    echo "            $HCSV + $HLCSV ($HCSV_SIZE, md5 of both $HCSV_MD5), seed $SEED"
  fi
}

rule() { printf '%-50s-+-%16s-+-%18s-+-%s\n' "$(printf -- '-%.0s' {1..50})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..18})" "------------------------"; }
row() { printf '%-50s | %16s | %18s | %s\n' "$@"; }

# "ahead of / behind the PL/pgSQL reference" for a lower-is-better (COPY) or
# higher-is-better (pgbench) ratio; "" when either is missing.
versus_ref() { # loyalty-ratio ref-ratio lower|higher
  [ -n "$1" ] && [ -n "$2" ] || return 0
  if { [ "$3" = lower ] && le "$1" "$2"; } || { [ "$3" = higher ] && le "$2" "$1"; }; then
    echo "; ahead of PL/pgSQL ($2x)"
  else
    echo "; BEHIND PL/pgSQL ($2x)"
  fi
}

copy_table() { # shape
  local p bare bare_n med r target v label lines=$LINES max=1.20 name="line shape" ref=
  p=$(prefix_of "$1")
  if [ "$1" = header ]; then lines=$HLINES max=1.30 name="header shape, lines through the header"; fi
  bare=$(values_of copy "${p}bare" | median || true)
  bare_n=$(values_of copy "${p}bare" | wc -l)
  med=$(values_of copy "${p}plpgsql" | median || true)
  [ -z "$med" ] || [ -z "$bare" ] || ref=$(ratio "$med" "$bare")
  echo
  echo "COPY, $name ($lines lines from a file)"
  row "variant" "seconds (median)" "ratio to bare COPY" "target"; rule
  for v in bare floor loyalty plpgsql; do
    case $v in
      bare) label="a. bare COPY, no trigger"; target="baseline, median of $bare_n runs" ;;
      floor) label="f. COPY + no-op transition-table trigger"; target="floor" ;;
      loyalty) label="b. COPY + loyalty accrual (C)"; target="<= ${max}x" ;;
      plpgsql) label="c. COPY + PL/pgSQL statement trigger"; target="reference" ;;
    esac
    v=$p$v
    if [ -n "${STATUS[$v]:-}" ] && [ -z "$(values_of copy "$v")" ]; then
      row "$label" "-" "-" "${STATUS[$v]}"; continue
    fi
    med=$(values_of copy "$v" | median || true)
    if [ -z "$med" ] || [ -z "$bare" ]; then
      row "$label" "-" "-" "${STATUS[$v]:-no result}"; continue
    fi
    r=$(ratio "$med" "$bare")
    if [ "$(base_of "$v")" = loyalty ]; then
      if le "$r" "$max"; then target="$target: met"; else target="$target: NOT met"; fi
      target="$target$(versus_ref "$r" "$ref" lower)"
    fi
    [ -n "${STATUS[$v]:-}" ] && target="$target (${STATUS[$v]})"
    row "$label" "$med" "${r}x" "$target"
  done
  printf '  each run (s):'
  for v in bare floor loyalty plpgsql; do printf ' %s: %s;' "$v" "$(values_of copy "$p$v" | paste -sd' ' - | grep . || echo -)"; done
  echo
  # shellcheck disable=SC2046  # one value per word
  steady_note COPY $(values_of copy "${p}bare")
}

pgbench_table() { # shape sync
  local p s=$2 tb r target v label min what ref
  p=$(prefix_of "$1")
  if [ "$1" = header ]; then
    what="invoice (header + $INVOICE_LINES lines)"
    if [ "$s" = on ]; then min=0.85; else min=0.70; fi
  else
    what="1 line"
    if [ "$s" = on ]; then min=0.80; else min=0.60; fi
  fi
  ref=$(values_of "ratio-$s" "${p}plpgsql" | mean 2)
  echo
  row "pgbench, $1 shape, synchronous_commit=$s" "TPS" "ratio to bare TPS" "target"; rule
  for v in bare floor loyalty plpgsql; do
    case $v in
      bare) label="bare, $what/transaction" ;;
      floor) label="+ no-op transition-table trigger" ;;
      loyalty) label="+ loyalty accrual (C)" ;;
      plpgsql) label="+ PL/pgSQL statement trigger" ;;
    esac
    v=$p$v
    tb=$(values_of "tps-$s" "$v" | mean)
    if [ -z "$tb" ]; then
      if [ "$(base_of "$v")" != bare ] && [[ " $PGB_VARIANTS " != *" $(base_of "$v") "* ]] && [ -z "${STATUS[$v]:-}" ]; then
        row "$label" "-" "-" "not run (BENCH_PGBENCH_VARIANTS)"
      else
        row "$label" "-" "-" "${STATUS[$v]:-no result}"
      fi
      continue
    fi
    if [ "$(base_of "$v")" = bare ]; then
      row "$label" "$tb" "1.00x" "baseline, mean of $(values_of "tps-$s" "$v" | wc -l) runs"; continue
    fi
    r=$(values_of "ratio-$s" "$v" | mean 2)
    case $(base_of "$v") in
      loyalty) if le "$min" "$r"; then target=">= ${min}x: met"; else target=">= ${min}x: NOT met"; fi
               target="$target$(versus_ref "$r" "$ref" higher)" ;;
      plpgsql) target="reference" ;;
      floor) target="floor" ;;
    esac
    row "$label" "$tb" "${r}x" "$target"
  done
  printf '  each run (TPS):'
  for v in bare floor loyalty plpgsql; do printf ' %s: %s;' "$v" "$(values_of "tps-$s" "$p$v" | awk '{ printf "%.0f\n", $1 }' | paste -sd' ' - | grep . || echo -)"; done
  echo
  # shellcheck disable=SC2046
  steady_note pgbench $(values_of "tps-$s" "${p}bare")
}

summary() {
  local shape s
  echo
  echo "==================== accrual benchmark ===================="
  machine_facts
  for shape in $SHAPES; do copy_table "$shape"; done
  for shape in $SHAPES; do
    for s in $SYNC_MODES; do pgbench_table "$shape" "$s"; done
  done
  echo
  echo "pgbench: $CLIENTS clients, $JOBS threads, ${SECONDS_PER_RUN} s per run, prepared statements,"
  echo "customers skewed like the data. Line shape: one invoice line per transaction. Header shape: one"
  if [ "$INVOICE_INSERT" = multi ]; then
    echo "invoice per transaction (the header, then its $INVOICE_LINES lines in one multi-row INSERT, COMMIT);"
  else
    echo "invoice per transaction (the header, then $INVOICE_LINES single-row INSERTs of its lines, COMMIT);"
  fi
  echo "TPS counts invoices there. Each runs on the tables its variant's last COPY left, or their bare"
  echo "twins. A variant's ratio is paired: its TPS over the mean of the bare runs just before and after"
  echo "it. synchronous_commit=off shows the CPU cost of the triggers rather than the WAL flush at"
  echo "commit; =on is what an ERP with default settings sees. The figures need an otherwise idle machine."
}

# ---------------------------------------------------------------- main

# One shape: bare first and last, so a drift of the machine during the run
# shows up in the bare figures rather than in a ratio; each variant with a
# trigger is followed by its pgbench pairs on the tables it loaded.
run_shape() { # shape
  local shape=$1 p v
  p=$(prefix_of "$shape")
  copy_variant "${p}bare" "a (bare, first set, $shape shape)" && describe_data "$shape"
  for v in floor plpgsql loyalty; do
    [ -z "${STATUS[$p$v]:-}" ] || continue
    case $v in
      floor) copy_variant "$p$v" "f (no-op transition-table trigger, $shape shape)" || continue ;;
      plpgsql) copy_variant "$p$v" "c (PL/pgSQL statement trigger, $shape shape)" || continue
               check_plpgsql "$p$v" ;;
      loyalty) copy_variant "$p$v" "b (loyalty accrual, $shape shape)" || continue
               check_loyalty "$p$v" ;;
    esac
    if [[ " $PGB_VARIANTS " == *" $v "* ]]; then pgbench_pairs "$p$v" || true; fi
  done
  copy_variant "${p}bare" "a (bare, last set, $shape shape)" || true
  if [ -z "$(values_of "tps-${SYNC_MODES%% *}" "${p}bare")" ] && [ -z "${STATUS[${p}bare]:-}" ]; then
    log "pgbench, $shape shape: bare only (no variant with a trigger ran)"
    pgbench_bare_only "$shape" || true
  fi
}

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

[[ " $SHAPES " != *" line "* ]] || generate_data
[[ " $SHAPES " != *" header "* ]] || generate_header_data
write_pgbench_scripts
probe_loyalty
[ -z "${STATUS[loyalty]:-}" ] || note "variant b (loyalty) ${STATUS[loyalty]}"

for shape in $SHAPES; do run_shape "$shape"; done

mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/accrual-$(date +%Y%m%d-%H%M%S).txt
summary | tee "$REPORT"
echo
echo "report saved to $REPORT; psql and pgbench output in $LOG"
exit "$FAILED"
