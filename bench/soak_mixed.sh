#!/usr/bin/env bash
# The release soak: every kind of write loyalty 1.1 takes, at once, while
# settlement runs.
#
# pgbench runs SOAKMIX_CLIENTS clients (8) for SOAKMIX_SECONDS (60) over
# weighted scripts: invoice lines (line shape) and order headers with their
# lines (header shape), amount updates, credit notes (negative lines),
# header changes (customer or date of an order) racing changes of the same
# orders' lines, redemptions (some refused
# for lack of points or stock), awards by CRM reference (some references
# repeated, some awards pending approval), approvals and rejections of
# pending awards, MDF claims and their approvals.  Beside them one session
# settles the program's months one after another (and folds) for as long as
# the run lasts.
#
# The loyalty calls go through small wrappers (schema soak) that catch the
# answers a caller must expect (LY001 no points / wallet, LY002 no stock or
# over a limit, 55000 a decision already taken the other way) and count them
# by SQLSTATE; any other error is counted too and fails the soak.  Errors
# that reach pgbench (the ERP statements) are counted from the server log
# (log_line_prefix carries %e); 40001 and 40P01 are retried by pgbench
# (--max-tries) and counted as retries.
#
# Afterwards: loyalty.verify() empty, no deadlock (pg_stat_database), no
# negative balance, member balance, MDF wallet or reward stock, every
# redemption and award has its ledger entry, and every balance, wallet and
# member balance equals a plain-SQL recomputation from the ERP rows and the
# ledger's non-accrual entries.  Exit 0 only if all of that holds.
#
# Run as root:  bash bench/soak_mixed.sh     (about 2 minutes)
# Knobs: SOAKMIX_SECONDS (60), SOAKMIX_CLIENTS (8), SOAKMIX_ACCOUNTS (200),
# SOAKMIX_POOR (10: accounts with few points, where redemptions fail),
# SOAKMIX_SETTLE_EVERY (seconds between settlements; default SOAKMIX_SECONDS / 15,
# so that the 14 months of the history are settled within the run), SOAKMIX_BUILD (1; 0 uses
# the extension already installed), LOYALTY_PORT (from .env).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_KIND=soakmix  # a run directory of its own (.run-soakmix), see scripts/lib.sh
export LOYALTY_PORT=${LOYALTY_PORT:-54407}
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib.sh
. "$BENCH_DIR/../scripts/lib.sh"

DURATION=${SOAKMIX_SECONDS:-60}
CLIENTS=${SOAKMIX_CLIENTS:-8}
ACCOUNTS=${SOAKMIX_ACCOUNTS:-200}
POOR=${SOAKMIX_POOR:-10}
SETTLE_EVERY=${SOAKMIX_SETTLE_EVERY:-$(( DURATION / 15 > 0 ? DURATION / 15 : 1 ))}
BUILD=${SOAKMIX_BUILD:-1}
for v in DURATION CLIENTS ACCOUNTS POOR SETTLE_EVERY; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "$v must be a positive integer, got '${!v}'"; fi
done
[ "$ACCOUNTS" -gt "$((POOR + 2))" ] || die "SOAKMIX_ACCOUNTS must exceed SOAKMIX_POOR + 2"

JOBS=$(( CLIENTS < $(nproc) ? CLIENTS : $(nproc) ))
WORK=$RUN_DIR/work
LOG=$RUN_DIR/soak_mixed.log
OUT_DIR=$BENCH_DIR/out
SETTLER_PID=
FAILED=0
CLUSTER_CONF_EXTRA="max_connections = 50
deadlock_timeout = '100ms'
log_line_prefix = '%m [%p] %e '"

sql() { pg_sql -d soakmix "$@" >>"$LOG" 2>&1; }
sql_val() { pg_sql -d soakmix -qAt "$@" 2>>"$LOG"; }
lines_in() { if [ -f "$1" ]; then grep -c "${2:-.}" "$1" || true; else echo 0; fi; }
note() { printf '   %s\n' "$*"; }
fail() { printf '   FAILED: %s\n' "$*"; FAILED=1; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_settler
  cluster_stop
}

# ---------------------------------------------------------------- set-up

# Line shape (erp.invoice_line) and header shape (erp.orders + order_line),
# both attached to one monthly-settled program with tiers, MDF rates,
# rewards, action rules and one member per account.  Every account starts
# with invoices spread over the last 13 months; the first POOR accounts with
# a few points only.  Ids come from the ERP's own sequences.
setup() {
  sql -c "DROP DATABASE IF EXISTS soakmix" -d postgres
  pg_sql -d postgres -qc "CREATE DATABASE soakmix" >>"$LOG" 2>&1
  sql -v ON_ERROR_STOP=1 -v accounts="$ACCOUNTS" -v poor="$POOR" <<'SQL'
CREATE EXTENSION loyalty;
CREATE SCHEMA erp;
CREATE TABLE erp.customer (customer_id int PRIMARY KEY, name text NOT NULL);
INSERT INTO erp.customer SELECT g, 'Customer ' || g FROM generate_series(1, :accounts) g;
CREATE SEQUENCE erp.invoice_seq;
CREATE TABLE erp.invoice_line (
  invoice_id   bigint        NOT NULL,
  line_no      int           NOT NULL,
  customer_id  int           NOT NULL REFERENCES erp.customer,
  invoice_date date          NOT NULL,
  amount       numeric(14,2) NOT NULL,
  PRIMARY KEY (invoice_id, line_no));
CREATE SEQUENCE erp.order_seq;
CREATE TABLE erp.orders (
  order_id     bigint PRIMARY KEY,
  customer_id  int    NOT NULL REFERENCES erp.customer,
  order_date   date   NOT NULL);
CREATE TABLE erp.order_line (
  order_id     bigint        NOT NULL REFERENCES erp.orders,
  line_no      int           NOT NULL,
  quantity     numeric(12,3) NOT NULL,
  unit_price   numeric(12,2) NOT NULL,
  PRIMARY KEY (order_id, line_no));

SELECT loyalty.create_program('Soak', ladder => 'Member:0, Silver:20000, Gold:60000', settlement_period => 'month',
                              point_lifetime => '6 months');
SELECT loyalty.attach('erp.invoice_line', 'Soak', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', key_column => 'invoice_id, line_no');
SELECT loyalty.attach('erp.order_line', 'Soak', key_column => 'order_id, line_no', header => 'erp.orders',
                      line_header_column => 'order_id', account_column => 'customer_id', date_column => 'order_date',
                      amount_expression => 'quantity * unit_price');
SELECT loyalty.set_benefit('Soak', 'Member', 'mdf_rate', '0.01');
SELECT loyalty.set_benefit('Soak', 'Silver', 'mdf_rate', '0.02');
SELECT loyalty.set_benefit('Soak', 'Gold', 'mdf_rate', '0.03');
SELECT loyalty.create_rebate_agreement('Soak', 'ALL', 'marginal: 0:1%, 5000:2%', valid_from => current_date - 400);
SELECT loyalty.set_reward('Soak', 'CHEAP', 'Cap', 50);
SELECT loyalty.set_reward('Soak', 'STOCKED', 'Jacket', 200, stock => 150);
SELECT loyalty.set_reward('Soak', 'LIMITED', 'Training seat', 100, per_account_limit => 3);
SELECT loyalty.set_action_rule('Soak', 'webinar', 20);
SELECT loyalty.set_action_rule('Soak', 'certification', 150, needs_approval => true);

-- the history: 13 months of invoices and orders; the poor accounts earn ~100 points
INSERT INTO erp.invoice_line
SELECT nextval('erp.invoice_seq'), 1, c, current_date - (c * 7 + k * 31) % 395,
       CASE WHEN c <= :poor THEN 25 ELSE 200 + (c * k) % 900 END
FROM generate_series(1, :accounts) c, generate_series(1, 4) k;
INSERT INTO erp.orders SELECT nextval('erp.order_seq'), c, current_date - (c * 11 + k * 29) % 395
FROM generate_series(:poor + 1, :accounts) c, generate_series(1, 3) k;
INSERT INTO erp.order_line SELECT o.order_id, n, 1 + n, 10 + (o.order_id * n) % 90
FROM erp.orders o, generate_series(1, 3) n;
INSERT INTO loyalty.member (program_id, account_key, member_id, name, role)
SELECT p.program_id, a.account_key, 'm1', 'Member of ' || a.account_key, 'end_user'
FROM loyalty.program p JOIN loyalty.account a USING (program_id);
SELECT loyalty.fold('Soak');

-- The wrappers: the answers a caller must expect are counted, not raised;
-- anything else is counted as well (and fails the soak).
CREATE SCHEMA soak;
CREATE TABLE soak.outcome (op text NOT NULL, sqlstate text NOT NULL, message text);
CREATE FUNCTION soak.run(op text, call text, VARIADIC args text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
BEGIN
    EXECUTE call USING args[1], args[2], args[3], args[4];
    INSERT INTO soak.outcome VALUES (op, '00000', NULL);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    INSERT INTO soak.outcome VALUES (op, st, msg);
END
$$;
VACUUM ANALYZE;
SQL
  mkdir -p "$WORK"; chown postgres: "$WORK"
  local rich=$((POOR + 1))
  # ERP writes
  cat >"$WORK/lines.pgbench" <<EOF
\set c random($rich, $ACCOUNTS)
\set n random(1, 3)
\set d random(0, 395)
INSERT INTO erp.invoice_line
SELECT i.id, g, :c, current_date - :d, 20 + (i.id * g) % 480 FROM (SELECT nextval('erp.invoice_seq') AS id) i, generate_series(1, :n) g;
EOF
  cat >"$WORK/header.pgbench" <<EOF
\set c random($rich, $ACCOUNTS)
\set n random(1, 3)
\set d random(0, 395)
BEGIN;
INSERT INTO erp.orders VALUES (nextval('erp.order_seq'), :c, current_date - :d);
INSERT INTO erp.order_line SELECT currval('erp.order_seq'), g, g, 5 + random() * 95 FROM generate_series(1, :n) g;
COMMIT;
EOF
  cat >"$WORK/update.pgbench" <<EOF
\set i random(1, $((ACCOUNTS * 4)))
\set delta random(-20, 50)
UPDATE erp.invoice_line SET amount = greatest(1, amount + :delta) WHERE invoice_id = :i AND customer_id > $POOR;
EOF
  cat >"$WORK/credit_note.pgbench" <<EOF
\set c random($rich, $ACCOUNTS)
\set d random(0, 395)
INSERT INTO erp.invoice_line VALUES (nextval('erp.invoice_seq'), 1, :c, current_date - :d, -(5 + random() * 95)::numeric(14,2));
EOF
  cat >"$WORK/header_change.pgbench" <<EOF
\set o random(1, $(((ACCOUNTS - POOR) * 3)))
\set c random($rich, $ACCOUNTS)
\set d random(0, 395)
\set which random(0, 1)
BEGIN;
UPDATE erp.orders SET customer_id = CASE WHEN :which = 0 THEN :c ELSE customer_id END,
                      order_date = CASE WHEN :which = 1 THEN current_date - :d ELSE order_date END
WHERE order_id = :o;
SELECT pg_sleep(0.005);
COMMIT;
EOF
  # lines of the same history orders, so that header changes race them
  cat >"$WORK/order_update.pgbench" <<EOF
\set o random(1, $(((ACCOUNTS - POOR) * 3)))
\set q random(1, 5)
BEGIN;
UPDATE erp.order_line SET quantity = :q WHERE order_id = :o AND line_no = 1;
SELECT pg_sleep(0.005);
COMMIT;
EOF
  # loyalty operations
  cat >"$WORK/redeem.pgbench" <<EOF
\set poor random(0, 4)
\set c random($rich, $ACCOUNTS)
\set p random(1, $POOR)
\set r random(0, 5)
\set m random(0, 3)
SELECT soak.run('redeem', 'SELECT loyalty.redeem(''Soak'', \$1, \$2, 1, \$3)',
                CASE WHEN :poor = 0 THEN :p ELSE :c END::text,
                (ARRAY['CHEAP', 'CHEAP', 'STOCKED', 'STOCKED', 'LIMITED', 'CHEAP'])[:r + 1],
                CASE WHEN :m = 0 THEN 'm1' END);
EOF
  cat >"$WORK/award.pgbench" <<EOF
\set k random(1, 4000)
SELECT soak.run('award', 'SELECT loyalty.award(''Soak'', \$1, \$2, current_date - \$3::int, \$4, ''crm-'' || \$3 || ''-'' || \$1)',
                (1 + :k % $ACCOUNTS)::text, CASE WHEN :k % 4 = 0 THEN 'certification' ELSE 'webinar' END,
                (:k / $ACCOUNTS)::text, CASE WHEN :k % 3 = 0 THEN 'm1' END);
EOF
  cat >"$WORK/decide_award.pgbench" <<'EOF'
\set r random(0, 2)
\set skip random(0, 20)
SELECT soak.run(CASE WHEN :r = 0 THEN 'reject_award' ELSE 'approve_award' END,
                CASE WHEN :r = 0 THEN 'SELECT loyalty.reject_award($1::uuid)' ELSE 'SELECT loyalty.approve_award($1::uuid)' END,
                (SELECT award_id::text FROM loyalty.award WHERE status = 'pending' ORDER BY award_id OFFSET :skip LIMIT 1))
WHERE EXISTS (SELECT FROM loyalty.award WHERE status = 'pending' OFFSET :skip);
EOF
  cat >"$WORK/mdf.pgbench" <<EOF
\set c random(1, $ACCOUNTS)
\set k random(1, 3000)
\set amount random(1, 40)
SELECT soak.run('claim_mdf', 'SELECT loyalty.claim_mdf(''Soak'', \$1, \$2::numeric, ''trade show'', \$3)',
                :c::text, :amount::text, 'mdf-' || :k);
EOF
  cat >"$WORK/decide_mdf.pgbench" <<'EOF'
\set r random(0, 3)
\set skip random(0, 10)
SELECT soak.run(CASE WHEN :r = 0 THEN 'reject_mdf_claim' ELSE 'approve_mdf_claim' END,
                CASE WHEN :r = 0 THEN 'SELECT loyalty.reject_mdf_claim($1::uuid)' ELSE 'SELECT loyalty.approve_mdf_claim($1::uuid)' END,
                (SELECT claim_id::text FROM loyalty.mdf_claim WHERE status = 'pending' ORDER BY claim_id OFFSET :skip LIMIT 1))
WHERE EXISTS (SELECT FROM loyalty.mdf_claim WHERE status = 'pending' OFFSET :skip);
EOF
  chown postgres: "$WORK"/*.pgbench
}

# script@weight, in the order of the report
SCRIPTS=(lines@25 header@15 update@10 credit_note@6 header_change@8 order_update@6 redeem@14 award@10 decide_award@5 mdf@4 decide_mdf@3)

# ---------------------------------------------------------------- settlement

# The months of the history, oldest first, settled one by one while pgbench
# runs (each followed by a fold); stops at the last month that has ended.
start_settler() {
  ( m=0
    while [ "$m" -le 13 ]; do
      sleep "$SETTLE_EVERY"
      pg_sql -d soakmix -qAt -c "SET client_min_messages = warning" -c "
        SELECT 'settled ' || period_end || ': ' || accounts || ' accounts, MDF ' || mdf_total
        FROM loyalty.settle('Soak', (date_trunc('month', current_date) - interval '$((13 - m)) months' - interval '1 day')::date)" \
        -c "SELECT 'folded ' || loyalty.fold('Soak')" >>"$WORK/settler.out" 2>>"$WORK/settler.err" \
        || echo "settle error" >>"$WORK/settler.err"
      m=$((m + 1))
    done ) &
  SETTLER_PID=$!
}
stop_settler() { [ -z "$SETTLER_PID" ] || { kill "$SETTLER_PID" 2>/dev/null || true; wait "$SETTLER_PID" 2>/dev/null || true; SETTLER_PID=; }; }

# ---------------------------------------------------------------- checks

check() { # name expected sql
  local got
  got=$(sql_val -c "$3") || got="error"
  if [ "$got" = "$2" ]; then note "ok: $1"; else fail "$1: got '$got', want '$2'"; fi
}

checks() {
  log "checks"
  check "loyalty.verify('Soak') is empty" 0 "SELECT count(*) FROM loyalty.verify('Soak')"
  check "no deadlock during the run (pg_stat_database)" 0 \
    "SELECT deadlocks - $DEADLOCKS0 FROM pg_stat_database WHERE datname = 'soakmix'"
  check "no negative balance, MDF wallet, member balance or reward stock" "0 0 0 0" "
    SELECT (SELECT count(*) FROM loyalty.balance WHERE points < 0) || ' ' ||
           (SELECT count(*) FROM loyalty.balance WHERE mdf < 0) || ' ' ||
           (SELECT count(*) FROM loyalty.member_balance WHERE points < 0) || ' ' ||
           (SELECT count(*) FROM loyalty.reward WHERE stock < 0)"
  check "every redemption and approved award or MDF claim has its ledger entry" "0 0 0" "
    SELECT (SELECT count(*) FROM loyalty.redemption r WHERE NOT EXISTS (
              SELECT FROM loyalty.ledger l WHERE (l.program_id, l.account_key, l.posted_xid, l.entry_no)
                = (r.program_id, r.account_key, r.posted_xid, r.entry_no) AND l.kind = 'redeem' AND l.points = -r.points))
        || ' ' ||
           (SELECT count(*) FROM loyalty.award w WHERE (w.status = 'approved' AND w.points > 0) AND NOT EXISTS (
              SELECT FROM loyalty.ledger l WHERE (l.program_id, l.account_key, l.posted_xid, l.entry_no)
                = (w.program_id, w.account_key, w.posted_xid, w.entry_no) AND l.kind = 'award' AND l.points = w.points))
        || ' ' ||
           (SELECT count(*) FROM loyalty.mdf_claim c WHERE c.status = 'approved' AND NOT EXISTS (
              SELECT FROM loyalty.ledger l WHERE (l.program_id, l.account_key, l.posted_xid, l.entry_no)
                = (c.program_id, c.account_key, c.posted_xid, c.entry_no) AND l.kind = 'mdf' AND l.mdf = -c.amount))"
  check "reward stock = initial stock less the units redeemed" 0 "
    SELECT count(*) FROM loyalty.reward x WHERE x.stock IS NOT NULL AND x.stock <> 150 - (
      SELECT coalesce(sum(r.quantity), 0) FROM loyalty.redemption r WHERE r.reward_id = x.reward_id AND r.status = 'redeemed')"
  check "no account over the per-account limit of LIMITED" 0 "
    SELECT count(*) FROM (SELECT 1 FROM loyalty.redemption WHERE reward_id = 'LIMITED' AND status = 'redeemed'
                          GROUP BY account_key HAVING sum(quantity) > 3) x"
  check "no CRM reference awarded twice" 0 "
    SELECT count(*) FROM (SELECT 1 FROM loyalty.award GROUP BY program_id, account_key, reference HAVING count(*) > 1) x"
  # Points: 1 per currency unit, toward zero, per ERP line, for the customer
  # on the line or on its order; plus the ledger's non-accrual entries.
  # MDF wallet: the MDF the settlements credited less the approved claims.
  # Member points: approved member awards less member redemptions.
  check "balances, MDF wallets and member balances equal a plain-SQL recomputation" "0 0 0" "
    WITH erp AS (
      SELECT customer_id::text AS account_key, trunc(amount) AS points FROM erp.invoice_line
      UNION ALL
      SELECT o.customer_id::text, trunc(l.quantity * l.unit_price) FROM erp.orders o JOIN erp.order_line l USING (order_id)),
    other AS (
      SELECT account_key, points FROM loyalty.ledger
      WHERE kind NOT IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate')),
    expected AS (
      SELECT account_key, sum(points) AS points FROM (SELECT * FROM erp UNION ALL SELECT * FROM other) x GROUP BY 1),
    wallet AS (
      SELECT account_key, sum(amount) AS mdf FROM (
        SELECT account_key, amount FROM loyalty.mdf_accrual
        UNION ALL SELECT account_key, -amount FROM loyalty.mdf_claim WHERE status = 'approved') x GROUP BY 1),
    member AS (
      SELECT account_key, member_id, sum(points) AS points FROM (
        SELECT account_key, member_id, points FROM loyalty.award WHERE status = 'approved' AND member_id IS NOT NULL
        UNION ALL SELECT account_key, member_id, -points FROM loyalty.redemption
                  WHERE status = 'redeemed' AND member_id IS NOT NULL) x GROUP BY 1, 2)
    SELECT (SELECT count(*) FROM expected e FULL JOIN loyalty.balance b USING (account_key)
            WHERE coalesce(b.points, 0) <> coalesce(e.points, 0)) || ' ' ||
           (SELECT count(*) FROM wallet w FULL JOIN loyalty.balance b USING (account_key)
            WHERE coalesce(b.mdf, 0) <> coalesce(w.mdf, 0)) || ' ' ||
           (SELECT count(*) FROM member m FULL JOIN loyalty.member_balance b USING (account_key, member_id)
            WHERE coalesce(b.points, 0) <> coalesce(m.points, 0))"
  check "the settler's settlements all succeeded" 0 "SELECT $(lines_in "$WORK/settler.err")"
}

# ---------------------------------------------------------------- the run

trap cleanup EXIT
trap 'exit 130' INT TERM
[ "$BUILD" = 0 ] || { ensure_packages; build_and_install; }
cluster_start
: >"$LOG"
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
log "setting up $ACCOUNTS accounts ($POOR poor) with 13 months of history"
setup
rm -f "$WORK/settler.out" "$WORK/settler.err"
DEADLOCKS0=$(sql_val -c "SELECT deadlocks FROM pg_stat_database WHERE datname = 'soakmix'")
MARK=$(wc -l <"$RUN_DIR/cluster.log")
T0=$(sql_val -c "SELECT now()")
args=()
for s in "${SCRIPTS[@]}"; do args+=(-f "$WORK/${s%@*}.pgbench@${s#*@}"); done
log "pgbench: $CLIENTS clients, $DURATION s, ${SCRIPTS[*]}; settling a month every $SETTLE_EVERY s"
start_settler
set +e
as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres \
  "$PGBIN/pgbench" -n -c "$CLIENTS" -j "$JOBS" -T "$DURATION" --max-tries=10 --failures-detailed "${args[@]}" soakmix \
  >"$WORK/pgbench.out" 2>"$WORK/pgbench.err"
PGBENCH_RC=$?
set -e
stop_settler
cat "$WORK/pgbench.out" "$WORK/pgbench.err" >>"$LOG"
sleep 1  # let the backends that just exited report their statistics
[ "$PGBENCH_RC" = 0 ] || fail "pgbench exited with $PGBENCH_RC (a client aborted: $(grep -m1 'aborted' "$WORK/pgbench.err" || true))"

# per-script throughput, from pgbench's own per-script lines
REPORT=$WORK/report.txt
{
  printf 'soak_mixed.sh %s, %s clients, %s s, %s accounts (%s poor), settle every %s s, %s cores, load %s -> %s\n' \
    "$(date -u +%F\ %H:%M)" "$CLIENTS" "$DURATION" "$ACCOUNTS" "$POOR" "$SETTLE_EVERY" "$(nproc)" "$LOAD_START" \
    "$(cut -d' ' -f1 /proc/loadavg)"
  sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/all scripts: \1 TPS/p' "$WORK/pgbench.out"
  sed -n 's/^number of failed transactions: /failed transactions (pgbench): /p; s/^number of transactions retried: /retried transactions (pgbench): /p' "$WORK/pgbench.out"
  printf '%-14s %8s %9s %9s %8s\n' script weight "transacts" TPS retried
  awk '
    /^SQL script [0-9]+: / { f = $4; sub(/.*\//, "", f); sub(/\.pgbench$/, "", f) }
    / - weight: / { w = $3 }
    / - [0-9]+ transactions \(/ { n = $2; t = $0; sub(/.*tps = /, "", t); sub(/\).*/, "", t) }
    / - number of transactions retried: / { r = $6; printf "%-14s %8s %9s %9.1f %8s\n", f, w, n, t, r }
  ' "$WORK/pgbench.out"
  echo "answers of the loyalty calls (op sqlstate count):"
  sql_val -F ' ' -c "SELECT op, sqlstate, count(*) FROM soak.outcome GROUP BY 1, 2 ORDER BY 1, 2" | sed 's/^/  /'
  echo "errors in the server log by SQLSTATE (statements pgbench ran; 40001/40P01 retried):"
  tail -n +"$((MARK + 1))" "$RUN_DIR/cluster.log" | sed -n 's/^.* \([0-9A-Z]\{5\}\) ERROR:  .*/\1/p' | sort | uniq -c \
    | sed 's/^ */  /' || true
  echo "settlements during the run: $(lines_in "$WORK/settler.out" '^settled'), $(lines_in "$WORK/settler.err") errors"
  echo "ledger entries written during the run, by kind: $(sql_val -c "SELECT string_agg(kind || ' ' || n, ', ' ORDER BY kind)
    FROM (SELECT kind, count(*) n FROM loyalty.ledger WHERE posted_at >= '$T0' GROUP BY 1) x")"
} | tee "$REPORT"

# an unexpected answer of a loyalty call fails the soak
bad=$(sql_val -c "SELECT count(*) FROM soak.outcome
                  WHERE sqlstate NOT IN ('00000', 'LY001', 'LY002')
                    AND NOT (op LIKE '%award' AND sqlstate = '55000')
                    AND NOT (op LIKE '%mdf_claim' AND sqlstate = '55000')")
if [ "$bad" != 0 ]; then
  fail "$bad loyalty calls ended with an unexpected error:"
  sql_val -c "SELECT op, sqlstate, min(message), count(*) FROM soak.outcome WHERE sqlstate NOT IN ('00000', 'LY001', 'LY002') GROUP BY 1, 2" | sed 's/^/     | /'
fi
others=$(tail -n +"$((MARK + 1))" "$RUN_DIR/cluster.log" | grep ' ERROR:  ' | grep -v -c -e ' 40001 ERROR' -e ' 40P01 ERROR' || true)
[ "$others" = 0 ] || fail "$others ERP statements failed with an error pgbench does not retry (see $RUN_DIR/cluster.log)"

checks
mkdir -p "$OUT_DIR"
{ cat "$REPORT"; [ "$FAILED" = 0 ] && echo "all checks passed" || echo "CHECKS FAILED"; } \
  >"$OUT_DIR/soak_mixed-$(date -u +%Y%m%d-%H%M).txt"
[ "$FAILED" = 0 ] || { echo "soak_mixed: FAILED (log: $LOG)"; exit 1; }
echo "soak_mixed: all checks passed"
