#!/usr/bin/env bash
# The scale-out suite: loyalty on a Citus cluster, a coordinator and two
# workers on loopback, each a throwaway cluster owned by the postgres OS
# user.  Runs the pg_regress files of test/citus/sql against the coordinator
# (database loyalty_citus, one after the other), then each file of
# test/citus/intkey/sql (invoice tables distributed by an integer or bigint
# customer key) in a database of its own, loyalty_<file>: distribute() fixes
# the type of loyalty's account keys once per database.  Ends with one
# "N passed, N failed" for all of them.
#
#   scripts/test-citus.sh [CITUS_SOURCE_TARBALL]
#
# A third worker is started but not registered: test/citus/intkey's
# citus_add_node adds it in its own database with loyalty.add_node().
# Uses the Citus installed in the server tree when there is one; otherwise
# builds and installs it from the tarball (default: the one in ../shared/vendor
# beside the clone; about two minutes on 2 cores).  Ports: LOYALTY_CITUS_PORT
# (default 54339) for the coordinator, the next two for the workers, the one after for the spare node.
# Output: .run-citus/citus-output.txt, diffs in .run-citus/out/regression.diffs
# and .run-citus/out-<file>/regression.diffs.
set -euo pipefail
RUN_KIND=citus
CITUS_SPARE=1  # a node for citus_add_node.sql to add (scripts/citus-lib.sh)
. "$(dirname "$0")/lib.sh"

CITUS_TARBALL=${1:-}
# shellcheck source-path=SCRIPTDIR source=scripts/citus-lib.sh
. "$(dirname "$0")/citus-lib.sh"

# regress_pass DATABASE INPUTDIR OUTDIR WHAT TEST...: pg_regress files of
# INPUTDIR/sql, in the order given, against DATABASE on the coordinator.
regress_pass() {
  local db=$1 dir=$2 outdir=$3 what=$4
  shift 4
  mkdir -p "$outdir"; chown postgres: "$outdir"
  echo "+++ regress ($what) in $dir +++"
  # PATH: citus_soak runs pgbench from psql
  as_pg env PATH="$PGBIN:$PATH" "$("$PGBIN/pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
    --use-existing --bindir="$PGBIN" --host="$SOCK_DIR" --port="$COORDINATOR_PORT" --user=postgres \
    --dbname="$db" --inputdir="$dir" --outputdir="$outdir" "$@"
}

# Every pass runs whatever the earlier ones gave; the suite fails if any does.
run_suite() {
  local rc=0 tests=() f name dir=$TEST_TREE/test/citus
  for f in "$dir"/sql/*.sql; do tests+=("$(basename "$f" .sql)"); done
  regress_pass "$DATABASE" "$dir" "$RUN_DIR/out" "Citus" "${tests[@]}" || rc=1
  for f in "$dir"/intkey/sql/*.sql; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .sql)
    cluster_database "loyalty_$name"
    regress_pass "loyalty_$name" "$dir/intkey" "$RUN_DIR/out-$name" "Citus, integer account keys" "$name" || rc=1
  done
  return "$rc"
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
for d in "$RUN_DIR"/out*/regression.diffs; do
  if [ -s "$d" ]; then echo "---- $d"; cat "$d"; fi
done
"$ROOT/scripts/summarize-tests.sh" "$OUT" "$rc"
