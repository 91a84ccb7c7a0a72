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
# Small and quiet: everything runs 20-50 times slower under valgrind.  No
# pg_cron (nothing of ours uses it; its worker would only add noise), no JIT.
CLUSTER_CONF_EXTRA="
shared_preload_libraries = ''
shared_buffers = 16MB
max_connections = 20
fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off
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
set +e
rc=0
if [ $# -gt 0 ]; then
  installcheck "$OUT" TAP_TESTS= "$@" || rc=$?
else
  installcheck "$OUT" ISOLATION= TAP_TESTS= || rc=$?
  installcheck "$OUT" REGRESS= TAP_TESTS= || rc=$?
fi
set -e
stop_and_wait
trap - EXIT
show_diffs

# Each report is what valgrind wrote between its markers.  A report is ours
# when a frame of any of its stacks is in our sources or in loyalty.so.
# Reports are grouped by their text without addresses, so the same error in
# many backends shows once, with its count.
logs=("$VG_LOGS"/valgrind.*.log)
[ -e "${logs[0]}" ] || die "valgrind wrote no log: the server did not run under it (see $RUN_DIR/cluster.log)"
awk -v src="$ROOT/src/" -v out="$REPORTS" '
  /VALGRIND-ERROR-BEGIN$/ { inside = 1; text = ""; ours = 0; next }
  /VALGRIND-ERROR-END$/ {
    inside = 0
    key = (ours ? "ours" : "other") SUBSEP text
    if (!(key in count)) { order[++n] = key; where[key] = FILENAME }
    count[key]++; total[ours ? "ours" : "other"]++
    next
  }
  inside {
    line = $0
    sub(/^==[0-9]+== ?/, "", line)
    if (line == "") next
    gsub(/0x[0-9A-Fa-f]+:? ?/, "", line)
    if (index(line, src) || line ~ /loyalty\.so/) ours = 1
    text = text "    " line "\n"
  }
  END {
    for (pass = 1; pass <= 2; pass++) {
      kind = pass == 1 ? "ours" : "other"
      if (pass == 1)
        printf "valgrind: %d report(s) in loyalty'\''s code, each counted as a failed test\n", total[kind] > out
      else
        printf "valgrind: %d report(s) outside loyalty'\''s code, not counted (a false positive of PostgreSQL goes into test/valgrind.supp)\n", total[kind] > out
      for (i = 1; i <= n; i++) {
        split(order[i], k, SUBSEP)
        if (k[1] != kind) continue
        printf "  ---- %dx, first in %s\n%s", count[order[i]], where[order[i]], k[2] > out
      }
    }
    print total["ours"] + 0
  }' "${logs[@]}" >"$RUN_DIR/valgrind-count"
vg_failed=$(cat "$RUN_DIR/valgrind-count")
echo
cat "$REPORTS"
echo "valgrind logs: $VG_LOGS (${#logs[@]} server processes)"

"$ROOT/scripts/summarize-tests.sh" "$OUT" "$rc" "$vg_failed" "valgrind reports in loyalty's code"
