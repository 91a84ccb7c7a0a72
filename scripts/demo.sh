#!/usr/bin/env bash
# Builds and installs the extension, starts a throwaway cluster, loads the
# demo ERP, runs the program scenarios and prints the results (a copy goes
# to demo/out/demo.txt).
#
#   DEMO_CUSTOMERS  customers to generate     (default 2000)
#   DEMO_LINES      invoice lines to generate (default 200000)
#   DEMO_ACCRUAL    0 skips the accrual part  (default: run it when the
#                   build has loyalty.attach)
#
# Steps: demo/erp_schema.sql (the ERP's tables), demo/generate.sql (customers,
# products, and two years of documents staged for posting), then
#   - with the accrual engine installed: demo/accrual.sql creates the
#     Distributor Club program, attaches it to the ERP's invoice lines and
#     posts the documents (demo/load.sql), so points accrue inside the ERP's
#     own inserts and updates; then it reports balances, tiers,
#     explain_points, rejected rows and verify();
#   - without it: demo/load.sql posts the documents;
# and finally demo/scenarios.sql: tiers and rebates with loyalty's types.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CUSTOMERS=${DEMO_CUSTOMERS:-2000}
LINES=${DEMO_LINES:-200000}
[[ $CUSTOMERS =~ ^[1-9][0-9]*$ ]] || die "DEMO_CUSTOMERS must be a positive integer, got '$CUSTOMERS'"
[[ $LINES =~ ^[1-9][0-9]*$ ]] || die "DEMO_LINES must be a positive integer, got '$LINES'"

OUT_DIR=$ROOT/demo/out
OUT=$OUT_DIR/demo.txt

ensure_packages
build_and_install
trap cluster_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cluster_start

# psql runs as postgres, which may not be able to read the clone (in /root,
# say): it reads a copy of the demo's SQL in the run directory.
DEMO_SQL=$RUN_DIR/demo
rm -rf "$DEMO_SQL"
mkdir -p "$DEMO_SQL"
cp "$ROOT"/demo/*.sql "$DEMO_SQL/"
chown -R postgres: "$DEMO_SQL"

mkdir -p "$OUT_DIR"
: >"$OUT"
# psql against the demo database, its output shown and kept in $OUT.
demo_sql() { pg_sql -d demo -P pager=off "$@" 2>&1 | tee -a "$OUT"; }
has_function() {
  [ "$(pg_sql -d demo -tAc "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                             WHERE n.nspname = 'loyalty' AND p.proname = '$1'")" != 0 ]
}

pg_sql -q -c "CREATE DATABASE demo"
pg_sql -q -d demo -c "CREATE EXTENSION loyalty"

log "creating the demo ERP ($CUSTOMERS customers, $LINES invoice lines)"
pg_sql -q -d demo -f "$DEMO_SQL/erp_schema.sql"
demo_sql -q -v customers="$CUSTOMERS" -v lines="$LINES" -f "$DEMO_SQL/generate.sql"

if [ "${DEMO_ACCRUAL:-1}" = 0 ]; then
  log "accrual part skipped (DEMO_ACCRUAL=0); posting the ERP documents without a program"
  demo_sql -f "$DEMO_SQL/load.sql"
elif has_function attach; then
  log "Distributor Club: program, attach, load with accrual, results (demo/accrual.sql)"
  demo_sql -f "$DEMO_SQL/accrual.sql"
  accrued=1
else
  log "accrual part skipped: this build has no loyalty.attach yet; posting the ERP documents without a program"
  demo_sql -f "$DEMO_SQL/load.sql"
fi

# The program's life after accrual, on the same data: each part works on the
# Distributor Club that demo/accrual.sql created.
if [ "${accrued:-0}" = 1 ]; then
  log "quarter-end settlement: tiers, benefits, statement (demo/settlement.sql)"
  demo_sql -f "$DEMO_SQL/settlement.sql"
  log "point expiry and retrospective rebates: estimates, true-up, credit-note lines (demo/wallet.sql)"
  demo_sql -f "$DEMO_SQL/wallet.sql"
  log "rewards: catalogue, redemptions, awards with approval, MDF, leaderboard (demo/rewards.sql)"
  demo_sql -f "$DEMO_SQL/rewards.sql"
  log "incremental ROI: cohorts, a simulated lift, the report and the KPIs (demo/roi.sql)"
  demo_sql -v svg="$DEMO_SQL/roi.svg" -f "$DEMO_SQL/roi.sql"
  cp "$DEMO_SQL/roi.svg" "$OUT_DIR/roi.svg"
fi

if has_function tier_of && has_function rebate; then
  log "tiers and rebates with loyalty's types (demo/scenarios.sql)"
  demo_sql -f "$DEMO_SQL/scenarios.sql"
else
  log "types part skipped: this build has no loyalty.tier_of / loyalty.rebate yet"
fi

log "demo finished in ${SECONDS}s; output kept in ${OUT#"$ROOT"/}"
