#!/usr/bin/env bash
# The memory-checking run: the pg_regress and isolation suites against a
# throwaway cluster whose server runs under valgrind memcheck, then every
# valgrind report is read.  A report with a frame in loyalty's code (or in
# loyalty.so) in any of its stacks counts as one more failed test; reports
# outside it are listed but not counted (false positives of a PostgreSQL
# build without USE_VALGRIND go into test/valgrind.supp).  Ends with
# "N passed, N failed".  The TAP tests start clusters of their own and do not
# run here.
# Extra arguments go to make, e.g. one file:
#   scripts/test-valgrind.sh REGRESS=accrual ISOLATION=
# VALGRIND_SKIP="name ..." leaves those tests out of the run.
# Output: .run-valgrind/test-output.txt, valgrind's logs in
# .run-valgrind/logs/ (one per server process), the summary of the reports in
# .run-valgrind/valgrind-reports.txt.
set -euo pipefail
RUN_KIND=valgrind  # read by lib.sh: a run directory of its own (.run-valgrind)
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

PACKAGES+=(valgrind)
ensure_packages
build_and_install
copy_test_tree

VG_LOGS=$RUN_DIR/logs
REPORTS=$RUN_DIR/valgrind-reports.txt
rm -rf "$VG_LOGS" "$REPORTS"
mkdir -p "$VG_LOGS"
chown postgres: "$VG_LOGS"

# pg_ctl starts this instead of postgres.  Without --trace-children valgrind
# would lose any exec'd program; the backends are forked and stay under it,
# each writing a log of its own (%p).  No leak check: a backend frees its
# memory contexts wholesale at exit.
cat >"$RUN_DIR/postgres-under-valgrind" <<SH
#!/bin/sh
exec valgrind --tool=memcheck --trace-children=yes --leak-check=no \\
  --read-var-info=no --num-callers=30 --fullpath-after= \\
  --error-markers=VALGRIND-ERROR-BEGIN,VALGRIND-ERROR-END --gen-suppressions=all \\
  --suppressions="$TEST_TREE/test/valgrind.supp" \\
  --log-file="$VG_LOGS/valgrind.%p.log" \\
  "$PGBIN/postgres" "\$@"
SH
chmod 0755 "$RUN_DIR/postgres-under-valgrind"
CLUSTER_POSTGRES=$RUN_DIR/postgres-under-valgrind
CLUSTER_TIMEOUT=600
# Small and quick, everything runs 20-50 times slower under valgrind; no JIT.
# The same background processes as the suite's cluster (pg_cron, autovacuum):
# they take backend numbers, which an expected output can show (pg_temp_N).
CLUSTER_CONF_EXTRA="
shared_buffers = 16MB
max_connections = 20
fsync = off
synchronous_commit = off
full_page_writes = off
jit = off
huge_pages = off"
# A step waits for another session for at most this long (default 360 s).
export PGISOLATIONTIMEOUT=${PGISOLATIONTIMEOUT:-1800}

PM_PID=
stop_and_wait() {
  cluster_stop
  # A backend's report can still be on its way when pg_ctl sees the server
  # gone: wait for the postmaster process itself to end.
  local i
  if [ -n "$PM_PID" ]; then
    for ((i = 0; i < 120; i++)); do kill -0 "$PM_PID" 2>/dev/null || break; sleep 1; done
  fi
}
trap stop_and_wait EXIT
cluster_start
PM_PID=$(head -1 "$CLUSTER_DIR/postmaster.pid")

OUT=$RUN_DIR/test-output.txt
: >"$OUT"
# Left out by default: tests that run PL/pgSQL and SQL over thousands of
# accounts (settlement, expiry, rebates, cohorts, KPIs, redemptions, awards,
# backfill's tier replay) or tens of thousands of headers.  Under valgrind
# each takes minutes (expiry 154 s, cohorts 86 s, backfill_tiers 532 s on 2
# cores) and adds nothing the memory check looks for: the C code they reach
# (accrual, fold, verify, did(), the debit wait, redeem(), the replay, the
# header-race check) runs under valgrind in the smaller tests and specs
# (postings, rewards, mdf, members, statement, did, redeem_session,
# security_api, redeem_*, header_race_*).  VALGRIND_SKIP= (empty) runs
# everything.
VALGRIND_SKIP=${VALGRIND_SKIP-expiry cohorts kpi redemption settlement settlement_steps rebates awards tier_requalification roi header_race_many backfill_tiers}
# VALGRIND_SKIP: tests (pg_regress files or isolation specs, by name) left
# out of this run, e.g. one too slow under valgrind; the suites still run
# them.  Every other test of the tree runs, new ones included.
tests_but_skipped() {  # directory suffix
  local f t
  for f in "$ROOT/$1"/*"$2"; do
    t=$(basename "$f" "$2")
    [[ " ${VALGRIND_SKIP:-} " == *" $t "* ]] || printf '%s ' "$t"
  done
}
regress=$(tests_but_skipped sql .sql)
isolation=$(tests_but_skipped test/isolation/specs .spec)
[ -z "${VALGRIND_SKIP:-}" ] || log "left out of the valgrind run (VALGRIND_SKIP): $VALGRIND_SKIP"
set +e
rc=0
if [ $# -gt 0 ]; then
  installcheck "$OUT" TAP_TESTS= "$@" || rc=$?
else
  installcheck "$OUT" REGRESS="$regress" ISOLATION= TAP_TESTS= || rc=$?
  installcheck "$OUT" REGRESS= ISOLATION="$isolation" TAP_TESTS= || rc=$?
fi
# A sample of the parser fuzzer (test/fuzz/fuzz.sql; full scale in
# test/t/015_fuzz.pl) under valgrind, counted as one more regression test:
# it fails when the script does not finish (a crash ends its session) or
# reports an unclean rejection.
fuzz_sample() {
  local scale=${FUZZ_VALGRIND_SCALE:-0.01} line status=FAILED
  echo "+++ regress fuzz sample (test/fuzz/fuzz.sql, scale $scale, server under valgrind)"
  pg_sql -q -d postgres -c 'CREATE DATABASE fuzz' && pg_sql -q -d fuzz -c 'CREATE EXTENSION loyalty' &&
    line=$(pg_sql -d fuzz -v scale="$scale" -f "$TEST_TREE/test/fuzz/fuzz.sql" 2>&1 | tee "$RUN_DIR/fuzz-output.txt" |
           grep -oE 'fuzz: [0-9]+ inputs, 0 unclean') && status=ok
  echo "${line:-fuzz: see $RUN_DIR/fuzz-output.txt}"
  echo "test fuzz_sample                  ... $status"
  [ "$status" = ok ]
}
[ $# -gt 0 ] || fuzz_sample 2>&1 | tee -a "$OUT" || rc=$?
set -e
stop_and_wait
trap - EXIT
show_diffs

# Each report is what valgrind wrote between its markers.  A report is ours
# when a frame of any of its stacks is in our sources or in loyalty.so.
# Reports are grouped by their text without addresses and offsets, so the
# same error in many backends shows once, with its count, in full in
# $REPORTS; here one line per kind (for ours: the first frame of ours in each
# of its stacks; for others: the first two named frames).
logs=("$VG_LOGS"/valgrind.*.log)
[ -e "${logs[0]}" ] || die "valgrind wrote no log: the server did not run under it (see $RUN_DIR/cluster.log)"
echo
awk -v src="$ROOT/src/" -v out="$REPORTS" -v countfile="$RUN_DIR/valgrind-count" '
  function frame(l) {  # "at|by FN (where)" -> "FN (where)", our paths relative
    sub(/^ *(at|by) /, "", l); i = index(l, src)
    return i ? substr(l, 1, i - 1) "src/" substr(l, i + length(src)) : l
  }
  /VALGRIND-ERROR-BEGIN$/ { inside = 1; text = ""; ours = 0; head = ""; short = ""; oshort = ""; label = "at"; taken = 0; named = 0; next }
  /VALGRIND-ERROR-END$/ {
    inside = 0
    kind = ours ? "ours" : "other"
    key = kind SUBSEP text
    if (!(key in count)) { order[++n] = key; where[key] = FILENAME; brief[key] = head (ours ? short : oshort) }
    count[key]++; total[kind]++
    next
  }
  inside {
    line = $0
    sub(/^==[0-9]+== ?/, "", line)
    if (line == "") next
    gsub(/0x[0-9A-Fa-f]+:? ?/, "", line)
    if (line ~ /^ *Address /) gsub(/[0-9][0-9,]*/, "N", line)  # where in which block
    text = text "    " line "\n"
    mine = index(line, src) || line ~ /loyalty\.so/
    if (mine) ours = 1
    if (head == "") { head = line; next }
    if (line !~ /^ *(at|by) /) {  # a further stack begins
      label = line ~ /free.d$/ ? "freed at" : line ~ /alloc.d( at)?$/ ? "allocated at" : \
              line ~ /created by/ ? "created at" : "then at"
      taken = 0; next
    }
    if (mine && !taken) { short = short "; " label " " frame(line); taken = 1 }
    if (label == "at" && named < 2 && line !~ /\?\?\?/) { oshort = oshort (named++ ? " < " : "; at ") frame(line) }
  }
  END {
    for (pass = 1; pass <= 2; pass++) {
      kind = pass == 1 ? "ours" : "other"
      if (pass == 1)
        hdr = sprintf("valgrind: %d report(s) in loyalty'\''s code, each counted as a failed test", total[kind])
      else
        hdr = sprintf("valgrind: %d report(s) outside loyalty'\''s code, not counted (a false positive of PostgreSQL goes into test/valgrind.supp)", total[kind])
      print hdr; print hdr > out
      nb = 0; delete bcount
      for (i = 1; i <= n; i++) {
        split(order[i], k, SUBSEP)
        if (k[1] != kind) continue
        if (!(brief[order[i]] in bcount)) border[++nb] = brief[order[i]]
        bcount[brief[order[i]]] += count[order[i]]
        printf "  ---- %dx, first in %s\n%s", count[order[i]], where[order[i]], k[2] > out
      }
      for (i = 1; i <= nb; i++) printf "  %3dx %s\n", bcount[border[i]], border[i]
    }
    print total["ours"] + 0 > countfile
  }' "${logs[@]}"
vg_failed=$(cat "$RUN_DIR/valgrind-count")
echo "each report in full: $REPORTS; valgrind's logs: $VG_LOGS (${#logs[@]} server processes)"

"$ROOT/scripts/summarize-tests.sh" "$OUT" "$rc" "$vg_failed" "valgrind reports in loyalty's code"
