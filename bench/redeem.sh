#!/usr/bin/env bash
# Redemption benchmark: how many loyalty.redeem() transactions per second,
# with 8 pgbench clients
#   spread:  each transaction redeems for a random account of 10,000
#            (target >= 5,000/s)
#   hot:     all 8 clients redeem for one account
# each against a baseline measured in the same run: a bare debit on plain
# tables making the same row writes as a redemption in one statement (the
# UPDATE of the account's row that locks it, checks and lowers its balance,
# and three INSERTs: a ledger row, a balance delta, the redemption), no
# function call, the least the machine takes for that work.
#
# After every loyalty run it checks that nothing was lost or overdrawn: the
# redemptions written equal the transactions pgbench counted, each account's
# balance equals its points less the price of its redemptions and is never
# below zero, and loyalty.verify() is empty.  A last run ("exhaust") lets
# the 8 clients drain one account of 1,000 points with a reward of 7: exactly
# 142 redemptions may pass, the balance must end at 6.
#
# Run as root:  bash bench/redeem.sh        (about 3 minutes)
# Knobs: REDEEM_SECONDS (20), REDEEM_CLIENTS (8), REDEEM_ACCOUNTS (10000),
# REDEEM_SYNC_MODES ("off on"), REDEEM_FOLD_EVERY (seconds between
# loyalty.fold() calls during a run, 0 = no fold; default 10), REDEEM_BUILD
# (1; 0 uses the extension already installed), LOYALTY_PORT (from .env).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=redeem  # a run directory of its own (.run-redeem), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54406}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

SECONDS_PER_RUN=${REDEEM_SECONDS:-20}
CLIENTS=${REDEEM_CLIENTS:-8}
ACCOUNTS=${REDEEM_ACCOUNTS:-10000}
SYNC_MODES=${REDEEM_SYNC_MODES:-off on}
FOLD_EVERY=${REDEEM_FOLD_EVERY:-10}
BUILD=${REDEEM_BUILD:-1}
for v in SECONDS_PER_RUN CLIENTS ACCOUNTS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done
[[ $FOLD_EVERY =~ ^[0-9]+$ ]] || die "REDEEM_FOLD_EVERY must be a whole number of seconds"
for s in $SYNC_MODES; do [[ $s =~ ^(on|off)$ ]] || die "REDEEM_SYNC_MODES takes on and/or off, got '$s'"; done

JOBS=$(( CLIENTS < $(nproc) ? CLIENTS : $(nproc) ))
WORK=$RUN_DIR/work
LOG=$RUN_DIR/redeem.log
OUT_DIR=$BENCH_DIR/out
FOLDER_PID=
CLUSTER_CONF_EXTRA="shared_buffers = 512MB
max_wal_size = 4GB
max_connections = 50"

sql() { pg_sql -d bench "$@" >>"$LOG" 2>&1; }
sql_val() { pg_sql -d bench -qAt "$@" 2>>"$LOG"; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  [ -z "$FOLDER_PID" ] || kill "$FOLDER_PID" 2>/dev/null || true
  cluster_stop
}

# loyalty.fold() every FOLD_EVERY seconds while a run lasts, as a pg_cron
# job would; the balance a redemption reads stays a short sum.
start_folder() {
  [ "$FOLD_EVERY" -gt 0 ] || return 0
  ( while sleep "$FOLD_EVERY"; do pg_sql -d bench -qAt -c "SELECT loyalty.fold('bench')" >/dev/null 2>&1 || true; done ) &
  FOLDER_PID=$!
}
stop_folder() { [ -z "$FOLDER_PID" ] || { kill "$FOLDER_PID" 2>/dev/null || true; wait "$FOLDER_PID" 2>/dev/null || true; FOLDER_PID=; }; }

# the bare debit of account $1 (a pgbench expression): lock, check and
# lower the balance, then the ledger row, the delta and the redemption
bare_debit() {
  printf '\\set a %s\n' "$1"
  cat <<'EOF'
WITH u AS (UPDATE bare.account a SET points = a.points - 1, debit_no = a.debit_no + 1
           WHERE a.account_key = :a::text AND a.points >= 1 RETURNING a.account_key, a.debit_no),
     l AS (INSERT INTO bare.ledger (account_key, entry_no, points, reason) SELECT u.account_key, 1, -1, 'redeem 1 x CAP' FROM u),
     d AS (INSERT INTO bare.delta (account_key, delta_no, points) SELECT u.account_key, 1, -1 FROM u)
INSERT INTO bare.redemption (account_key, redemption_no, reward_id, points) SELECT u.account_key, u.debit_no, 'CAP', 1 FROM u;
EOF
}

setup() {
  sql -c "DROP DATABASE IF EXISTS bench" -d postgres
  pg_sql -d postgres -qc "CREATE DATABASE bench" >>"$LOG" 2>&1
  sql -v ON_ERROR_STOP=1 -v accounts="$ACCOUNTS" <<'SQL'
CREATE EXTENSION loyalty;
CREATE SCHEMA erp;
CREATE TABLE erp.invoice (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('bench', 'EUR');
SELECT loyalty.attach('erp.invoice', 'bench', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date');
-- every account earns 1,000,000 points; account 0 (exhaust) 1,000
INSERT INTO erp.invoice SELECT g, g, date '2026-01-15', 1000000 FROM generate_series(1, :accounts) g;
INSERT INTO erp.invoice VALUES (0, 0, date '2026-01-15', 1000);
SELECT loyalty.fold('bench');
SELECT loyalty.set_reward('bench', 'CAP', 'Cap', 1, kind => 'goods');
SELECT loyalty.set_reward('bench', 'SEVEN', 'Seven', 7, kind => 'goods');
-- the baseline: the row writes of a redemption on plain tables, in one statement
CREATE SCHEMA bare;
CREATE TABLE bare.account (account_key text PRIMARY KEY, points bigint NOT NULL, debit_no bigint NOT NULL DEFAULT 0);
CREATE TABLE bare.ledger (account_key text NOT NULL, posted_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), entry_no bigint NOT NULL,
                          points bigint NOT NULL, reason text, posted_at timestamptz NOT NULL DEFAULT now(),
                          PRIMARY KEY (account_key, posted_xid, entry_no));
CREATE TABLE bare.delta (account_key text NOT NULL, posted_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), delta_no bigint NOT NULL,
                         points bigint NOT NULL, PRIMARY KEY (account_key, posted_xid, delta_no));
CREATE TABLE bare.redemption (account_key text NOT NULL, redemption_no bigint NOT NULL, reward_id text NOT NULL,
                              points bigint NOT NULL, redeemed_at timestamptz NOT NULL DEFAULT now(),
                              PRIMARY KEY (account_key, redemption_no));
INSERT INTO bare.account SELECT g::text, 1000000 FROM generate_series(1, :accounts) g;
-- the exhaust run: a refusal is an expected answer, not an error of pgbench's
CREATE FUNCTION bare.try_redeem(acct text, reward text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM loyalty.redeem('bench', acct, reward);
    RETURN true;
EXCEPTION WHEN SQLSTATE 'LY001' THEN
    RETURN false;
END
$$;
VACUUM ANALYZE;
SQL
  mkdir -p "$WORK"; chown postgres: "$WORK"
  cat >"$WORK/spread.pgbench" <<EOF
\set a random(1, $ACCOUNTS)
SELECT loyalty.redeem('bench', :a::text, 'CAP');
EOF
  cat >"$WORK/hot.pgbench" <<'EOF'
SELECT loyalty.redeem('bench', '1', 'CAP');
EOF
  bare_debit "random(1, $ACCOUNTS)" >"$WORK/bare_spread.pgbench"
  bare_debit 1 >"$WORK/bare_hot.pgbench"
  cat >"$WORK/exhaust.pgbench" <<'EOF'
SELECT bare.try_redeem('0', 'SEVEN');
EOF
  chown postgres: "$WORK"/*.pgbench
}

# one pgbench run; prints "tps transactions"
run() { # script sync
  local out
  sql -qc CHECKPOINT
  [[ $1 == bare_* ]] || start_folder
  out=$(as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres PGOPTIONS="-c synchronous_commit=$2" \
          "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$JOBS" -T "$SECONDS_PER_RUN" -f "$WORK/$1.pgbench" bench 2>&1) \
    || { stop_folder; echo "$out" >>"$LOG"; die "pgbench $1 failed: $(grep -m1 -E 'ERROR|aborted' <<<"$out")"; }
  stop_folder
  echo "$out" >>"$LOG"
  printf '%s %s\n' "$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")" \
                   "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
}

# nothing lost, nothing overdrawn, verify() empty
check() { # expected redemptions in all
  local got bad drift
  got=$(sql_val -c "SELECT count(*) FROM loyalty.redemption")
  bad=$(sql_val -c "WITH e AS (SELECT customer_id::text AS account_key, sum(amount)::bigint AS earned FROM erp.invoice GROUP BY 1),
                         r AS (SELECT account_key, sum(points) AS spent FROM loyalty.redemption GROUP BY 1)
                    SELECT count(*) FROM e FULL JOIN loyalty.balance b USING (account_key) LEFT JOIN r USING (account_key)
                    WHERE b.points IS DISTINCT FROM e.earned - coalesce(r.spent, 0) OR b.points < 0")
  drift=$(sql_val -c "SELECT count(*) FROM loyalty.verify('bench')")
  [ "$got" = "$1" ] || die "lost updates: $got redemptions written, pgbench counted $1"
  [ "$bad" = 0 ] || die "$bad balances differ from their points less their redemptions, or are negative"
  [ "$drift" = 0 ] || die "verify() reports $drift rows"
  printf '   check: %s redemptions, every balance = its points - its redemptions >= 0, verify() empty\n' "$got"
}

trap cleanup EXIT
trap 'exit 130' INT TERM
[ "$BUILD" = 0 ] || { ensure_packages; build_and_install; }
cluster_start
: >"$LOG"
log "loading $ACCOUNTS accounts"
setup
total=0
declare -A R=()
for s in $SYNC_MODES; do
  for w in spread hot; do
    log "synchronous_commit=$s: $w"
    # run() dies in the process substitution's subshell: an empty figure is its failure
    read -r bt _ < <(run "bare_$w" "$s") || true
    read -r t n < <(run "$w" "$s") || true
    [ -n "${bt:-}" ] && [ -n "${t:-}" ] && [ -n "${n:-}" ] || die "a pgbench run failed; see $LOG"
    total=$((total + n))
    printf '   bare %-6s %10.1f TPS\n   loyalty %-6s %7.1f TPS  (%s transactions)  ratio %.2f\n' \
      "$w" "$bt" "$w" "$t" "$n" "$(awk -v a="$t" -v b="$bt" 'BEGIN { print a / b }')"
    check "$total"
    R[$s.$w]="$t $bt"
  done
done
log "exhaust: $CLIENTS clients drain account 0 (1,000 points, reward of 7)"
SECONDS_PER_RUN=5 run exhaust on >/dev/null
n=$(sql_val -c "SELECT count(*) FROM loyalty.redemption WHERE account_key = '0'")
left=$(sql_val -c "SELECT points FROM loyalty.balance WHERE account_key = '0'")
[ "$n" = 142 ] && [ "$left" = 6 ] || die "exhaust: $n redemptions and $left points left (want 142 and 6)"
check "$((total + n))"
echo "   exhaust: 142 redemptions passed, 6 points left, the others refused with LY001"

mkdir -p "$OUT_DIR"
{
  printf 'redeem.sh %s, %s clients, %s accounts, %s s per run, fold every %s s, %s cores, load %s\n' \
    "$(date -u +%F\ %H:%M)" "$CLIENTS" "$ACCOUNTS" "$SECONDS_PER_RUN" "$FOLD_EVERY" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"
  printf '%-22s %12s %12s %7s\n' run "loyalty TPS" "bare TPS" ratio
  for s in $SYNC_MODES; do for w in spread hot; do
    read -r t bt <<<"${R[$s.$w]}"
    printf '%-22s %12.1f %12.1f %7.2f\n' "$w sync=$s" "$t" "$bt" "$(awk -v a="$t" -v b="$bt" 'BEGIN { print a / b }')"
  done; done
} | tee "$OUT_DIR/redeem-$(date -u +%Y%m%d-%H%M).txt"
