#!/usr/bin/env bash
# Expiry and rebate settlement at scale: what do loyalty._settle_expiry and
# loyalty._settle_rebates cost for ACCOUNTS accounts, against one bare
# GROUP BY account scan of the same ledger in the same run?
#
#   a. SELECT account_key, sum(points) FROM loyalty.ledger GROUP BY 1   (baseline = 1.0)
#   b. _settle_expiry at a cutoff where every account has points to expire
#   c. accrue_rebates (estimates) for a segment agreement covering every account
#   d. _settle_rebates (true-up and settlement lines) for the same agreement
# Each of b-d runs in a transaction rolled back, RUNS times; medians.
# Run as root:  bash bench/wallet.sh   (BENCH_ACCOUNTS, BENCH_ROWS, BENCH_STATEMENTS, BENCH_RUNS)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=bench
export LOYALTY_PORT=${LOYALTY_PORT:-54403}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

ACCOUNTS=${BENCH_ACCOUNTS:-100000}
ROWS=${BENCH_ROWS:-2000000}
RUNS=${BENCH_RUNS:-3}
STATEMENTS=${BENCH_STATEMENTS:-4}   # INSERT statements the rows come in (one ledger entry per account and statement)

ensure_packages
build_and_install
trap cluster_stop EXIT
cluster_start
LOG=$RUN_DIR/wallet.log
: >"$LOG"
sql() { pg_sql -d bench -qAt "$@" 2>>"$LOG" || { tail -5 "$LOG" >&2; return 1; }; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# seconds of one statement, from psql's \timing, inside BEGIN ... ROLLBACK
timed() {
  sql -c '\timing on' -c 'BEGIN' -c "$1" -c 'ROLLBACK' | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sed -n 2p \
    | awk '{ printf "%.3f\n", $1 / 1000 }'
}

pg_sql -d postgres -qc 'CREATE DATABASE bench' >>"$LOG"
log "loading $ROWS invoice rows over 24 months for $ACCOUNTS accounts through the accrual trigger"
sql <<SQL >>"$LOG"
CREATE EXTENSION loyalty;
SELECT loyalty.create_program('Bench', point_lifetime => '12 months', settlement_period => 'quarter');
CREATE TABLE invoice (id bigint PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.attach('invoice', 'Bench', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date');
SELECT setseed(0.5);
-- STATEMENTS statements: one ledger entry per account and statement
DO \$\$
BEGIN
  FOR s IN 0 .. $STATEMENTS - 1 LOOP
    INSERT INTO invoice
    SELECT i, 1 + (i::bigint * 7919 % $ACCOUNTS), date '2024-01-01' + (random() * 730)::int, round((random() * 500 + 1)::numeric, 2)
    FROM generate_series(s::bigint * ($ROWS / $STATEMENTS) + 1, (s + 1)::bigint * ($ROWS / $STATEMENTS)) i;
  END LOOP;
END
\$\$;
SELECT loyalty.fold('Bench');
-- one redemption in three accounts
SELECT count(loyalty._post(1, a.account_key, 'redeem', -(b.points / 3), 'bench'))
FROM loyalty.account a JOIN loyalty.balance b USING (program_id, account_key)
WHERE a.account_key::int % 3 = 0 AND b.points > 3;
SELECT loyalty.fold('Bench');
SELECT loyalty.create_rebate_agreement('Bench', 'ALL', 'retro: 0:1%, 2000:2%, 5000:3%', valid_from => '2024-01-01');
VACUUM ANALYZE;
SQL
ENTRIES=$(sql -c 'SELECT count(*) FROM loyalty.ledger')
MONTHS=$(sql -c 'SELECT count(*) FROM loyalty.accrual_month')
log "ledger: $ENTRIES entries; accrual_month: $MONTHS rows"

declare -A T
for r in $(seq "$RUNS"); do
  T[scan]+="$(timed 'SELECT count(*) FROM (SELECT account_key, sum(points) FROM loyalty.ledger GROUP BY 1) x')"$'\n'
  T[expiry]+="$(timed "SELECT loyalty._settle_expiry(1, '2025-10-01', '2026-01-01')")"$'\n'
  T[estimate]+="$(timed "SELECT loyalty.accrue_rebates('Bench', '2025-12-15')")"$'\n'
  T[trueup]+="$(timed "SELECT loyalty._settle_rebates(1, '2025-10-01', '2026-01-01')")"$'\n'
done
EXPIRED=$(sql -c "SELECT count(*) FROM loyalty._expiry_due(1, '2026-01-01', NULL)")
scan=$(printf '%s' "${T[scan]}" | median)
printf '\n%-58s %8s %6s\n' "what ($ACCOUNTS accounts, $ENTRIES ledger entries)" seconds ratio
printf '%-58s %8s %6s\n' "a. GROUP BY account scan of the ledger (baseline)" "$scan" 1.00
for k in expiry estimate trueup; do
  m=$(printf '%s' "${T[$k]}" | median)
  case $k in
    expiry) what="b. _settle_expiry ($EXPIRED accounts expire)";;
    estimate) what="c. accrue_rebates, one agreement over every account";;
    trueup) what="d. _settle_rebates, 8 quarters of lines";;
  esac
  printf '%-58s %8s %6s\n' "$what" "$m" "$(ratio "$m" "$scan")"
done
