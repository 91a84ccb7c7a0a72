#!/usr/bin/env bash
# Account steps benchmark: loyalty.award() and loyalty.claim_mdf()
# transactions per second with 8 pgbench clients, each for a random account
# of 10,000, against a baseline measured in the same run: a bare statement
# on plain tables making the same row writes (the UPDATE of the account's
# row that locks it, then for an award a ledger row, a balance delta and
# the award, for a claim the claim), no function call.  Both steps check
# their arguments, then run their account part through
# loyalty._on_account_node (on one server: right there, one SPI call).
#
# After each loyalty run it checks that nothing was lost: the awards or
# claims written equal the transactions pgbench counted, each account's
# points are its invoices' plus its awards, and loyalty.verify() is empty.
#
# Run as root:  bash bench/account_steps.sh        (about 2 minutes)
# Knobs: STEPS_SECONDS (20), STEPS_CLIENTS (8), STEPS_ACCOUNTS (10000),
# STEPS_BUILD (1; 0 uses the extension already installed), LOYALTY_PORT.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=steps  # a run directory of its own (.run-steps), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54407}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

SECONDS_PER_RUN=${STEPS_SECONDS:-20}
CLIENTS=${STEPS_CLIENTS:-8}
ACCOUNTS=${STEPS_ACCOUNTS:-10000}
BUILD=${STEPS_BUILD:-1}
for v in SECONDS_PER_RUN CLIENTS ACCOUNTS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done

JOBS=$(( CLIENTS < $(nproc) ? CLIENTS : $(nproc) ))
WORK=$RUN_DIR/work
LOG=$RUN_DIR/account_steps.log
CLUSTER_CONF_EXTRA="shared_buffers = 512MB
max_wal_size = 4GB
max_connections = 50"

sql() { pg_sql -d bench "$@" >>"$LOG" 2>&1; }
sql_val() { pg_sql -d bench -qAt "$@" 2>>"$LOG"; }

setup() {
  sql -c "DROP DATABASE IF EXISTS bench" -d postgres
  pg_sql -d postgres -qc "CREATE DATABASE bench" >>"$LOG" 2>&1
  sql -v ON_ERROR_STOP=1 -v accounts="$ACCOUNTS" <<'SQL'
CREATE EXTENSION loyalty;
CREATE SCHEMA erp;
CREATE TABLE erp.invoice (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('bench', 'EUR', ladder => 'Gold:1');
SELECT loyalty.attach('erp.invoice', 'bench', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date');
SELECT loyalty.set_benefit('bench', 'Gold', 'mdf_rate', '0.5');
SELECT loyalty.set_action_rule('bench', 'webinar', 10, valid_from => '2026-01-01');
-- every account earns 1,000,000 points and, once settled, 500,000 of MDF
INSERT INTO erp.invoice SELECT g, g, date '2026-01-15', 1000000 FROM generate_series(1, :accounts) g;
SELECT loyalty.fold('bench');
SELECT status FROM loyalty.settle('bench', '2026-03-31');
-- the baseline: the row writes of each step on plain tables, in one statement
CREATE SCHEMA bare;
CREATE TABLE bare.account (account_key text PRIMARY KEY, debit_no bigint NOT NULL DEFAULT 0);
CREATE TABLE bare.ledger (account_key text NOT NULL, posted_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), entry_no bigint NOT NULL,
                          points bigint NOT NULL, reason text, posted_at timestamptz NOT NULL DEFAULT now(),
                          PRIMARY KEY (account_key, posted_xid, entry_no));
CREATE TABLE bare.delta (account_key text NOT NULL, posted_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), delta_no bigint NOT NULL,
                         points bigint NOT NULL, PRIMARY KEY (account_key, posted_xid, delta_no));
CREATE TABLE bare.award (account_key text NOT NULL, award_no bigint NOT NULL, action text NOT NULL, points bigint NOT NULL,
                         award_id uuid NOT NULL DEFAULT gen_random_uuid(), PRIMARY KEY (account_key, award_no));
CREATE TABLE bare.claim (account_key text NOT NULL, claim_no bigint NOT NULL, amount numeric NOT NULL, purpose text NOT NULL,
                         claim_id uuid NOT NULL DEFAULT gen_random_uuid(), PRIMARY KEY (account_key, claim_no));
INSERT INTO bare.account SELECT g::text FROM generate_series(1, :accounts) g;
VACUUM ANALYZE;
SQL
  [ "$(sql_val -c "SELECT count(*) FROM loyalty.balance WHERE mdf = 500000")" = "$ACCOUNTS" ] \
    || die "setup: the settlement did not credit every MDF wallet; see $LOG"
  mkdir -p "$WORK"; chown postgres: "$WORK"
  printf '\\set a random(1, %s)\n%s\n' "$ACCOUNTS" "SELECT loyalty.award('bench', :a::text, 'webinar', '2026-02-01');" >"$WORK/award.pgbench"
  printf '\\set a random(1, %s)\n%s\n' "$ACCOUNTS" "SELECT loyalty.claim_mdf('bench', :a::text, 0.01, 'ads');" >"$WORK/claim.pgbench"
  cat >"$WORK/bare_award.pgbench" <<EOF
\\set a random(1, $ACCOUNTS)
WITH u AS (UPDATE bare.account a SET debit_no = a.debit_no + 1 WHERE a.account_key = :a::text RETURNING a.account_key, a.debit_no),
     l AS (INSERT INTO bare.ledger (account_key, entry_no, points, reason) SELECT u.account_key, 1, 10, '1 x webinar' FROM u),
     d AS (INSERT INTO bare.delta (account_key, delta_no, points) SELECT u.account_key, 1, 10 FROM u)
INSERT INTO bare.award (account_key, award_no, action, points) SELECT u.account_key, u.debit_no, 'webinar', 10 FROM u;
EOF
  cat >"$WORK/bare_claim.pgbench" <<EOF
\\set a random(1, $ACCOUNTS)
WITH u AS (UPDATE bare.account a SET debit_no = a.debit_no + 1 WHERE a.account_key = :a::text RETURNING a.account_key, a.debit_no)
INSERT INTO bare.claim (account_key, claim_no, amount, purpose) SELECT u.account_key, u.debit_no, 0.01, 'ads' FROM u;
EOF
  chown postgres: "$WORK"/*.pgbench
}

# one pgbench run; prints "tps transactions"
run() { # script
  local out
  sql -qc CHECKPOINT
  out=$(as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres \
          "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$JOBS" -T "$SECONDS_PER_RUN" -f "$WORK/$1.pgbench" bench 2>&1) \
    || { echo "$out" >>"$LOG"; die "pgbench $1 failed: $(grep -m1 -E 'ERROR|aborted' <<<"$out")"; }
  echo "$out" >>"$LOG"
  printf '%s %s\n' "$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")" \
                   "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
}

# nothing lost: the rows written are the transactions pgbench counted
check() { # awards claims
  local awards claims bad drift
  awards=$(sql_val -c "SELECT count(*) FROM loyalty.award")
  claims=$(sql_val -c "SELECT count(*) FROM loyalty.mdf_claim")
  bad=$(sql_val -c "WITH e AS (SELECT customer_id::text AS account_key, sum(amount)::bigint AS earned FROM erp.invoice GROUP BY 1),
                         w AS (SELECT account_key::text, 10 * count(*) AS awarded FROM loyalty.award GROUP BY 1)
                    SELECT count(*) FROM e FULL JOIN loyalty.balance b USING (account_key) LEFT JOIN w USING (account_key)
                    WHERE b.points IS DISTINCT FROM e.earned + coalesce(w.awarded, 0)")
  drift=$(sql_val -c "SELECT count(*) FROM loyalty.verify('bench')")
  [ "$awards" = "$1" ] && [ "$claims" = "$2" ] || die "lost writes: $awards awards and $claims claims written, pgbench counted $1 and $2"
  [ "$bad" = 0 ] || die "$bad balances differ from their invoices' points plus their awards"
  [ "$drift" = 0 ] || die "verify() reports $drift rows"
  printf '   check: %s awards, %s claims, every balance = its points + its awards, verify() empty\n' "$1" "$2"
}

trap cluster_stop EXIT
trap 'exit 130' INT TERM
[ "$BUILD" = 0 ] || { ensure_packages; build_and_install; }
cluster_start
: >"$LOG"
log "loading $ACCOUNTS accounts"
setup
declare -A N=([award]=0 [claim]=0)
for w in award claim; do
  log "$w"
  # run() dies in the process substitution's subshell: an empty figure is its failure
  read -r bt _ < <(run "bare_$w") || true
  read -r t n < <(run "$w") || true
  [ -n "${bt:-}" ] && [ -n "${t:-}" ] && [ -n "${n:-}" ] || die "a pgbench run failed; see $LOG"
  N[$w]=$n
  printf '   bare %-6s %10.1f TPS\n   loyalty %-6s %7.1f TPS  (%s transactions)  ratio %.2f\n' \
    "$w" "$bt" "$w" "$t" "$n" "$(awk -v a="$t" -v b="$bt" 'BEGIN { print a / b }')"
  check "${N[award]}" "${N[claim]}"
done
