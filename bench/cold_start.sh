#!/usr/bin/env bash
# Cold-start benchmark: what does the first accruing INSERT of a session
# cost when the program has many accounts, and the first one after an
# ANALYZE of the ERP table (a relcache invalidation, as autovacuum sends) or
# after an exception caught elsewhere (a subtransaction abort)?  Each is
# compared with the next INSERT of the same session (a warm one).
#
# A program with BENCH_ACCOUNTS accounts (300,000) is loaded once; then, in
# BENCH_RUNS new sessions (5), one line for an existing customer is inserted:
# first of the session, warm, after ANALYZE (with statistics that changed),
# after a caught exception.  Times are psql's \timing, median over the runs.
#
# Run as root:  bash bench/cold_start.sh
# BENCH_BUILD=0 uses the extension already installed.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=bench-cold  # a run directory of its own (.run-bench-cold), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54405}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

ACCOUNTS=${BENCH_ACCOUNTS:-300000}
RUNS=${BENCH_RUNS:-5}
BUILD=${BENCH_BUILD:-1}
for v in ACCOUNTS RUNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done

ensure_packages
if [ "$BUILD" = 1 ]; then build_and_install; fi
trap cluster_stop EXIT
cluster_start

log "a program with $ACCOUNTS accounts"
pg_sql -q -d postgres -c "CREATE DATABASE bench" >/dev/null
pg_sql -q -d bench >/dev/null <<SQL
CREATE EXTENSION loyalty;
CREATE TABLE inv (id bigint PRIMARY KEY, customer_id int NOT NULL, inv_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('Cold');
SELECT loyalty.attach('inv', 'Cold', key_column => 'id', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'inv_date');
INSERT INTO inv SELECT g, g, current_date - g % 300, 10 + g % 1000 FROM generate_series(1, $ACCOUNTS) g;
ANALYZE inv;
SQL

# One session: the four INSERTs, each followed by its \timing line.
session_sql() { # run number
  local base=$(( 10000000 * $1 ))
  cat <<SQL
\\timing on
INSERT INTO inv VALUES ($base + 1, 42, current_date, 10);
INSERT INTO inv VALUES ($base + 2, 43, current_date, 10);
\\timing off
INSERT INTO inv SELECT $base + 100 + g, g, current_date, 1 FROM generate_series(1, $(( ACCOUNTS / 10 ))) g;
ANALYZE inv;
\\timing on
INSERT INTO inv VALUES ($base + 3, 44, current_date, 10);
\\timing off
DO \$\$ BEGIN PERFORM 1 / 0; EXCEPTION WHEN division_by_zero THEN NULL; END \$\$;
\\timing on
INSERT INTO inv VALUES ($base + 4, 45, current_date, 10);
SQL
}

declare -a FIRST=() WARM=() ANALYZED=() CAUGHT=()
for run in $(seq 1 "$RUNS"); do
  mapfile -t t < <(session_sql "$run" | pg_sql -q -d bench 2>&1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
  [ "${#t[@]}" -eq 4 ] || die "run $run: expected 4 timings, got ${#t[@]}"
  FIRST+=("${t[0]}"); WARM+=("${t[1]}"); ANALYZED+=("${t[2]}"); CAUGHT+=("${t[3]}")
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
log "one INSERT of one line, $ACCOUNTS accounts, median of $RUNS sessions (ms)"
printf '   %-34s %10s\n' "first of a new session" "$(printf '%s\n' "${FIRST[@]}" | median)"
printf '   %-34s %10s\n' "warm (the session's second)" "$(printf '%s\n' "${WARM[@]}" | median)"
printf '   %-34s %10s\n' "first after ANALYZE of the table" "$(printf '%s\n' "${ANALYZED[@]}" | median)"
printf '   %-34s %10s\n' "first after a caught exception" "$(printf '%s\n' "${CAUGHT[@]}" | median)"
