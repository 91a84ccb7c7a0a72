#!/usr/bin/env bash
# The scale-out suite: loyalty on a Citus cluster, a coordinator and two
# workers on loopback, each a throwaway cluster owned by the postgres OS
# user.  Runs the pg_regress files of test/citus/ against the coordinator
# and ends with "N passed, N failed".
#
#   scripts/test-citus.sh [CITUS_SOURCE_TARBALL]
#
# Uses the Citus installed in the server tree when there is one; otherwise
# builds and installs it from the tarball (default: the one in ../shared/vendor
# beside the clone; about two minutes on 2 cores).  Ports: LOYALTY_CITUS_PORT
# (default 54339) for the coordinator, the next two for the workers.
# Output: .run-citus/citus-output.txt, diffs in .run-citus/out/regression.diffs.
set -euo pipefail
RUN_KIND=citus
. "$(dirname "$0")/lib.sh"

CITUS_TARBALL=${1:-}
# shellcheck source-path=SCRIPTDIR source=scripts/citus-lib.sh
. "$(dirname "$0")/citus-lib.sh"

run_suite() {
  local tests=() f
  for f in "$TEST_TREE"/test/citus/sql/*.sql; do tests+=("$(basename "$f" .sql)"); done
  echo "+++ regress (Citus) in $TEST_TREE/test/citus +++"
  # PATH: citus_soak runs pgbench from psql
  as_pg env PATH="$PGBIN:$PATH" "$("$PGBIN/pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
    --use-existing --bindir="$PGBIN" --host="$SOCK_DIR" --port="$COORDINATOR_PORT" --user=postgres \
    --dbname="$DATABASE" --inputdir="$TEST_TREE/test/citus" --outputdir="$RUN_DIR/out" "${tests[@]}"
}

ensure_packages
"$ROOT/scripts/check-version.sh"
prepare_run_dir
ensure_citus
build_and_install
copy_test_tree

trap stop_all EXIT
cluster_up

OUT=$RUN_DIR/citus-output.txt
set +e
run_suite 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
set -e
[ -s "$RUN_DIR/out/regression.diffs" ] && { echo "---- $RUN_DIR/out/regression.diffs"; cat "$RUN_DIR/out/regression.diffs"; }
"$ROOT/scripts/summarize-tests.sh" "$OUT" "$rc"
