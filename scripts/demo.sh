#!/usr/bin/env bash
# Builds and installs the extension, starts a throwaway cluster, loads the
# demo ERP, runs the program scenarios and prints the results.
# DEMO_CUSTOMERS / DEMO_LINES change the size of the generated ERP.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ensure_packages
build_and_install
trap cluster_stop EXIT
cluster_start

pg_sql -q -c "CREATE DATABASE demo"
log "loading the demo ERP (${DEMO_CUSTOMERS:-2000} customers, ${DEMO_LINES:-200000} invoice lines)"
pg_sql -q -d demo -f "$ROOT/demo/erp_schema.sql"
pg_sql -q -d demo -v customers="${DEMO_CUSTOMERS:-2000}" -v lines="${DEMO_LINES:-200000}" -f "$ROOT/demo/generate.sql"
log "running the program scenarios"
pg_sql -d demo -P pager=off -f "$ROOT/demo/scenarios.sql"
