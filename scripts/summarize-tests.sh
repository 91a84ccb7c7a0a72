#!/usr/bin/env bash
# Counts what pg_regress, pg_isolation_regress and prove printed and ends with
# the plain "N passed, N failed" line.  Exits non-zero when anything failed or
# when no test ran at all.
#   summarize-tests.sh OUTPUT [MAKE_EXIT_STATUS [EXTRA_FAILED WHAT]]
# EXTRA_FAILED failures found by other means (WHAT says which) are added.
set -u
out=$1 rc=${2:-0} extra_failed=${3:-0} extra_what=${4:-}

# pg_regress and pg_isolation_regress (PostgreSQL 15) print one
# "test name ... ok|FAILED" line per test, each suite after its "+++" banner.
count() {  # section, result
  awk -v sec="$1" -v res="$2" '
    /^\+\+\+ regress /   { s = "regress" }
    /^\+\+\+ isolation / { s = "isolation" }
    /^\+\+\+ tap /       { s = "tap" }
    s == sec && /^test [^ ]+ +\.\.\. / && $0 ~ ("\\.\\.\\. " res) { n++ }
    END { print n + 0 }' "$out"
}
sql_ok=$(count regress ok); sql_fail=$(count regress FAILED)
iso_ok=$(count isolation ok); iso_fail=$(count isolation FAILED)
# prove: its closing "Files=N, Tests=M" line counts the assertions run;
# failed ones are listed as "Failed tests: ..." / "Failed X/Y subtests".
tap_total=$(grep -oE '^Files=[0-9]+, Tests=[0-9]+' "$out" | grep -oE '[0-9]+$' | awk '{s+=$1} END {print s+0}')
tap_fail=$(grep -oE 'Failed [0-9]+/[0-9]+ subtests' "$out" | awk '{split($2, a, "/"); s+=a[1]} END {print s+0}')
tap_ok=$((tap_total - tap_fail))
tap_files_fail=$(grep -cE 'Dubious, test returned|No plan found in TAP output|Parse errors:' "$out")

echo
echo "pg_regress:  $sql_ok passed, $sql_fail failed"
echo "isolation:   $iso_ok passed, $iso_fail failed"
echo "TAP:         $tap_ok passed, $tap_fail failed (scripts that died: $tap_files_fail)"
[ -z "$extra_what" ] || echo "$extra_what: $extra_failed"
passed=$((sql_ok + iso_ok + tap_ok))
failed=$((sql_fail + iso_fail + tap_fail + tap_files_fail + extra_failed))
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
  echo "make installcheck exited with $rc although no test reported a failure"
  failed=1
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
