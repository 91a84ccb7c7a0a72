#!/usr/bin/env bash
# fresh-root-check.sh BRANCH_OR_DIR
#
# The README's Quick start as a newcomer meets it: a fresh Debian 12 root
# (debootstrap --variant=minbase bookworm, plus git), the project cloned into
# /root/loyalty (/root is mode 700), and as root, from there,
#   bash scripts/demo.sh   then   bash scripts/test.sh
# in a chroot.  Both install what they need with apt-get themselves.
#
# BRANCH_OR_DIR: a git repository or worktree directory (its checked-out
# branch is cloned: commits only, not uncommitted changes), or the name of a
# branch of $REPO (default: the repository this script is in).
#
# The base root is built once and cached in $WORK/fresh-root-base; every run
# copies it into a throwaway root, removed afterwards (KEEP_ROOT=1 keeps it).
# Everything runs in a mount and PID namespace of its own: the mounts (proc,
# sys, dev, dev/pts, dev/shm) and any process left behind vanish with it, even
# when the run fails or is interrupted; they are also unmounted explicitly.
# The log is $WORK/fresh-root-<timestamp>.log; the tail and both exit codes
# are printed at the end; the exit status is non-zero when either failed.
#
#   PORT       the scripts' cluster port (LOYALTY_PORT), default 54499
#   REPO       repository for a branch name, default this script's repository
#   WORK       where the base root, the throwaway roots and the logs go, default /var/tmp
#   MIRROR     Debian mirror, default http://deb.debian.org/debian
#   KEEP_ROOT  1 keeps the throwaway root for inspection
#   VALGRIND   1 also runs bash scripts/test-valgrind.sh, after the two
set -euo pipefail

[ $# = 1 ] || { echo "usage: $0 BRANCH_OR_DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, mount, chroot)" >&2; exit 2; }
SRC=$1
PORT=${PORT:-54499}
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=${WORK:-/var/tmp}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=$WORK/fresh-root-base
STAMP=$(date +%Y%m%d-%H%M%S)
LOG=$WORK/fresh-root-$STAMP.log
ROOTFS=$WORK/fresh-root-run-$STAMP-$$

say() { printf '== %s\n' "$*" | tee -a "$LOG"; }
: >"$LOG"

# ---------------------------------------------------------------- base root
build_base() {
  command -v debootstrap >/dev/null || {
    say "installing debootstrap on the host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >>"$LOG" 2>&1
  }
  say "building the base root $BASE (debootstrap --variant=minbase bookworm, git)"
  rm -rf "$BASE.tmp"
  debootstrap --variant=minbase --include=git bookworm "$BASE.tmp" "$MIRROR" >>"$LOG" 2>&1 \
    || { tail -20 "$LOG"; echo "debootstrap failed; see $LOG" >&2; exit 1; }
  # what a fresh Debian 12 machine has: the release, its updates, security
  cat >"$BASE.tmp/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  rm -rf "$BASE.tmp/var/cache/apt/archives/"*.deb
  mv "$BASE.tmp" "$BASE"
}
(
  flock 9
  [ -d "$BASE" ] || build_base
) 9>"$BASE.lock"

# ---------------------------------------------------------------- throwaway root
cleanup() {
  local rc=$?
  # the namespace's mounts are not visible here; refuse to delete anything
  # that is still mounted all the same
  if grep -q " ${ROOTFS}[/ ]" /proc/mounts; then
    echo "still mounted under $ROOTFS, not removing it:" >&2
    grep " ${ROOTFS}[/ ]" /proc/mounts >&2
  elif [ "${KEEP_ROOT:-0}" = 1 ]; then
    echo "throwaway root kept: $ROOTFS"
  else
    rm -rf --one-file-system "$ROOTFS"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say "copying the base into $ROOTFS"
cp -a "$BASE" "$ROOTFS"

cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# Service start-up during package installation is refused, as in any chroot:
# Debian's postgresql package would otherwise start its main cluster on 5432
# inside the chroot, on the host's network.  The scripts never use it.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
chmod 0700 "$ROOTFS/root"

if [ -d "$SRC" ]; then
  say "cloning $SRC ($(git -C "$SRC" rev-parse --abbrev-ref HEAD) at $(git -C "$SRC" rev-parse --short HEAD)) into /root/loyalty"
  git clone -q --no-hardlinks "$SRC" "$ROOTFS/root/loyalty"
else
  say "cloning branch $SRC of $REPO ($(git -C "$REPO" rev-parse --short "$SRC")) into /root/loyalty"
  git clone -q --no-hardlinks -b "$SRC" "$REPO" "$ROOTFS/root/loyalty"
fi

# ---------------------------------------------------------------- the run
# In a new mount and PID namespace: mount, chroot, run both commands as a
# newcomer would (a clean root environment), unmount.
say "running bash scripts/demo.sh, then bash scripts/test.sh, in the chroot (port $PORT); log: $LOG"
set +e
unshare --mount --propagation private --pid --fork bash -s "$ROOTFS" "$PORT" "${VALGRIND:-0}" >>"$LOG" 2>&1 <<'INNER'
set -u
R=$1 PORT=$2 VALGRIND=$3
mounted=()
mnt() { mount "$@" && mounted=("${@: -1}" "${mounted[@]}"); }
umount_all() { local m; for m in "${mounted[@]}"; do umount "$m" || umount -l "$m"; done; }
trap umount_all EXIT
mnt -t proc proc "$R/proc" &&
mnt -t sysfs sysfs "$R/sys" &&
mnt --bind /dev "$R/dev" &&
mnt --bind /dev/pts "$R/dev/pts" &&
mnt -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm" || { echo "mount failed"; exit 1; }
run() {  # name command: runs it in the chroot from /root/loyalty as root
  local rc
  echo "==== $1: $2"
  chroot "$R" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LOYALTY_PORT="$PORT" \
    /bin/bash -c "cd /root/loyalty && $2"
  rc=$?
  echo "==== $1 exit code: $rc"
  echo "$1 $rc" >>"$R/root/fresh-root-check.rc"
}
run demo "bash scripts/demo.sh"
run test "bash scripts/test.sh"
[ "$VALGRIND" != 1 ] || run valgrind "bash scripts/test-valgrind.sh"
INNER
ns_rc=$?
set -e

echo
echo "---- tail of $LOG"
tail -n 25 "$LOG"
echo "----"
demo_rc=$(awk '$1 == "demo" { print $2 }' "$ROOTFS/root/fresh-root-check.rc" 2>/dev/null)
test_rc=$(awk '$1 == "test" { print $2 }' "$ROOTFS/root/fresh-root-check.rc" 2>/dev/null)
echo "bash scripts/demo.sh exit code: ${demo_rc:-did not run (namespace exit $ns_rc)}"
echo "bash scripts/test.sh exit code: ${test_rc:-did not run (namespace exit $ns_rc)}"
ok=1
[ "${demo_rc:-1}" = 0 ] && [ "${test_rc:-1}" = 0 ] || ok=0
if [ "${VALGRIND:-0}" = 1 ]; then
  vg_rc=$(awk '$1 == "valgrind" { print $2 }' "$ROOTFS/root/fresh-root-check.rc" 2>/dev/null)
  echo "bash scripts/test-valgrind.sh exit code: ${vg_rc:-did not run (namespace exit $ns_rc)}"
  [ "${vg_rc:-1}" = 0 ] || ok=0
fi
echo "log: $LOG"
[ "$ok" = 1 ]
