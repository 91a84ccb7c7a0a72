#!/usr/bin/env bash
# Settlement on Citus: does settling a quarter get faster with a second
# worker?  The same data (BENCH_ACCOUNTS accounts, BENCH_LINES ERP rows
# accrued through loyalty's shard triggers, folded) is settled on a cluster
# with one worker and on one with two workers, same run, 32 shards each.
# Only loyalty.settle() is timed.  At the end of each, every account's
# settled amounts are checked against the ERP rows in plain SQL, so that a
# fast wrong answer cannot pass as a figure.
#
# On a machine with 2 cores, the coordinator and both workers share them:
# the two-worker figure measures the split of the work, not added hardware.
#
# Run as root:  bash bench/citus_settlement.sh [CITUS_SOURCE_TARBALL]
# Knobs: BENCH_ACCOUNTS (50000), BENCH_LINES (1000000), BENCH_RUNS (3: settles
# of consecutive quarters, median reported), BENCH_REBATES (0; 1: a quarterly
# marginal rebate agreement covers every account, so each settlement also
# writes a settlement line and a true-up per account, on each shard group's
# node; the lines are checked against the rows too).
set -euo pipefail
RUN_KIND=citus-bench
export LOYALTY_CITUS_PORT=${LOYALTY_CITUS_PORT:-54345}
. "$(dirname "$0")/../scripts/lib.sh"
CITUS_TARBALL=${1:-}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/citus-lib.sh
. "$ROOT/scripts/citus-lib.sh"

ACCOUNTS=${BENCH_ACCOUNTS:-50000}
LINES=${BENCH_LINES:-1000000}
RUNS=${BENCH_RUNS:-3}
REBATES=${BENCH_REBATES:-0}

ensure_packages
prepare_run_dir
ensure_citus
build_and_install
trap stop_all EXIT

sql() { node_sql "$COORDINATOR_PORT" -d "$DATABASE" -At "$@"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# one cluster of $1 workers: load, fold, settle RUNS quarters; prints the median seconds
settle_on() {
  local workers=$1 r t0 t1 times=() bad
  CITUS_WORKERS=$workers
  WORKER_PORTS=("$((COORDINATOR_PORT + 1))"); [ "$workers" = 1 ] || WORKER_PORTS+=("$((COORDINATOR_PORT + 2))")
  stop_all
  cluster_up >&2
  sql >/dev/null <<SQL
SET client_min_messages = warning;
SET citus.shard_count = 32;
CREATE EXTENSION loyalty;
CREATE SCHEMA bench;
CREATE TABLE bench.sales (invoice_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                          invoice_date date NOT NULL, PRIMARY KEY (customer, invoice_id));
SELECT create_distributed_table('bench.sales', 'customer');
SELECT loyalty.create_program('Bench Club', ladder => 'Silver:2000, Gold:6000', qualification_window => '3 months');
SELECT * FROM loyalty.distribute('bench.sales');
SELECT loyalty.attach('bench.sales', 'Bench Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'invoice_date');
INSERT INTO bench.sales SELECT g, 'C' || lpad((g % $ACCOUNTS)::text, 6, '0'), (g % 997) / 10.0 + 1,
                               DATE '2025-01-01' + g % 365
  FROM generate_series(1, $LINES) g;
SELECT loyalty.fold('Bench Club');
SELECT loyalty.create_rebate_agreement('Bench Club', 'ALL', 'marginal: 0:1%, 500:2%', period => 'quarter',
                                       valid_from => '2025-01-01')
 WHERE $REBATES = 1;
VACUUM ANALYZE;
SQL
  for r in $(seq 1 "$RUNS"); do
    local pend
    pend=$(sql -c "SELECT (DATE '2025-01-01' + make_interval(months => 3 * $r))::date - 1")
    t0=$(date +%s.%N)
    sql -c "SELECT accounts FROM loyalty.settle('Bench Club', '$pend')" >/dev/null
    t1=$(date +%s.%N)
    times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
    bad=$(sql -c "SELECT count(*) FROM (SELECT customer AS account_key, sum(amount) AS q FROM bench.sales
                   WHERE invoice_date BETWEEN DATE '$pend' + 1 - interval '3 months' AND '$pend' GROUP BY 1) e
                  FULL JOIN (SELECT account_key, period_qualifying FROM loyalty.settlement_account
                              WHERE period_end = '$pend') s USING (account_key)
                  WHERE coalesce(e.q, 0) IS DISTINCT FROM s.period_qualifying")
    [ "$bad" = 0 ] || die "$bad accounts' settled amounts differ from their rows ($workers workers, $pend)"
    if [ "$REBATES" = 1 ]; then
      bad=$(sql -c "SELECT count(*) FROM (SELECT customer AS account_key,
                            round(least(sum(amount), 500) * 0.01 + greatest(sum(amount) - 500, 0) * 0.02, 2) AS f
                       FROM bench.sales WHERE invoice_date BETWEEN DATE '$pend' + 1 - interval '3 months' AND '$pend'
                      GROUP BY 1) e
                    FULL JOIN (SELECT account_key, final FROM loyalty.settlement_line
                                WHERE period_end = DATE '$pend' + 1) l USING (account_key)
                    WHERE e.f IS DISTINCT FROM l.final")
      [ "$bad" = 0 ] || die "$bad accounts' rebate lines differ from their rows ($workers workers, $pend)"
    fi
    printf '%d worker(s), settle %s: %.3f s, every account equal to its rows\n' "$workers" "$pend" "${times[-1]}" >&2
  done
  median "${times[@]}"
}

log "settling $ACCOUNTS accounts, $LINES ERP rows (one ledger entry each), 32 shards, $RUNS quarters$([ "$REBATES" = 1 ] && echo ', a rebate agreement for every account')"
one=$(settle_on 1)
two=$(settle_on 2)
printf '\nmedian settle, 1 worker:  %.3f s\n' "$one"
printf 'median settle, 2 workers: %.3f s  = %.2fx the one-worker time\n' "$two" "$(awk -v a="$two" -v b="$one" 'BEGIN {print a / b}')"
echo "(all nodes share the same $(nproc) cores: the ratio shows how the work splits, not what added hardware would give)"
