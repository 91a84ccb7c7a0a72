#!/usr/bin/env bash
# Runs the whole test suite: pg_regress, isolation and TAP, against a
# throwaway cluster, and ends with "N passed, N failed".
# Extra arguments go to make, e.g. a subset while developing:
#   scripts/test.sh REGRESS=tier_ladder ISOLATION= PROVE_TESTS=
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ensure_packages
"$ROOT/scripts/check-version.sh"
build_and_install

# make installcheck writes into the tree and the TAP tests run initdb, so the
# suite runs as postgres in a copy of the tree that postgres owns.
WORK=$RUN_DIR/tests
mkdir -p "$RUN_DIR"
rsync -a --delete --exclude .git --exclude /.run --exclude /.run-\* "$ROOT/" "$WORK/"
chown -R postgres: "$RUN_DIR"

trap cluster_stop EXIT
cluster_start

OUT=$RUN_DIR/test-output.txt
: >"$OUT"
installcheck() {
  as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres \
    make -C "$WORK" PG_CONFIG=$PGBIN/pg_config installcheck "$@" 2>&1 | tee -a "$OUT"
  return "${PIPESTATUS[0]}"
}
set +e
rc=0
if [ $# -gt 0 ]; then
  installcheck "$@" || rc=$?
else
  # each suite on its own, so that a failure in one does not hide the others
  installcheck ISOLATION= TAP_TESTS= || rc=$?
  installcheck REGRESS= TAP_TESTS= || rc=$?
  installcheck REGRESS= ISOLATION= || rc=$?
fi
set -e

# Collect every diff for the reader.
for d in "$WORK/regression.diffs" "$WORK/output_iso/regression.diffs"; do
  [ -s "$d" ] && { echo "---- $d"; cat "$d"; }
done

"$ROOT/scripts/summarize-tests.sh" "$OUT" "$rc"
