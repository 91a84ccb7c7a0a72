#!/usr/bin/env bash
# Runs the whole test suite: pg_regress, isolation and TAP, against a
# throwaway cluster, and ends with "N passed, N failed".
# Extra arguments go to make, e.g. a subset while developing:
#   scripts/test.sh REGRESS=tier_ladder ISOLATION= TAP_TESTS=
# Output: .run/test-output.txt, diffs in .run/tests/regression.diffs and
# .run/tests/output_iso/regression.diffs (.run leads to the run directory).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ensure_packages
"$ROOT/scripts/check-version.sh"
build_and_install
copy_test_tree

trap cluster_stop EXIT
cluster_start

OUT=$RUN_DIR/test-output.txt
: >"$OUT"
set +e
rc=0
if [ $# -gt 0 ]; then
  installcheck "$OUT" "$@" || rc=$?
else
  # each suite on its own, so that a failure in one does not hide the others
  installcheck "$OUT" ISOLATION= TAP_TESTS= || rc=$?
  installcheck "$OUT" REGRESS= TAP_TESTS= || rc=$?
  installcheck "$OUT" REGRESS= ISOLATION= || rc=$?
fi
set -e

show_diffs
"$ROOT/scripts/summarize-tests.sh" "$OUT" "$rc"
