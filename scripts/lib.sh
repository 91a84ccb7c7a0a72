# Shared by the entry points in scripts/ and bench/: where things are, the
# packages we need, the build, and a throwaway cluster owned by the postgres
# OS user.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGVER=15
PGBIN=${LOYALTY_PGBIN:-/usr/lib/postgresql/$PGVER/bin}  # override: a private copy of the server tree
CLUSTER_PORT=${LOYALTY_PORT:-54329}

# Everything the postgres OS user reads or writes (the cluster, its socket,
# the copy of the tree the suites run in, the demo's SQL) lives outside the
# clone: a clone in /root (mode 700) is out of postgres's reach.  Each clone
# gets a directory of its own in /var/tmp, named after its path, and in it one
# run directory per kind of run, so that the test suite, the memory-checking
# run and the bench never clobber each other's output.  The clone keeps a
# symbolic link to it (.run, .run-valgrind, .run-bench).  LOYALTY_RUN_DIR
# overrides the run directory (postgres must be able to reach it).
RUN_KIND=${RUN_KIND:-run}  # set by an entry point before sourcing this file
RUN_BASE=${ROOT##*/}; RUN_BASE=${RUN_BASE//[^A-Za-z0-9._-]/_}
RUN_BASE=/var/tmp/loyalty-${RUN_BASE:0:24}-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
RUN_DIR=${LOYALTY_RUN_DIR:-$RUN_BASE/$RUN_KIND}
RUN_LINK=$ROOT/.run; [ "$RUN_KIND" = run ] || RUN_LINK=$ROOT/.run-$RUN_KIND
CLUSTER_DIR=$RUN_DIR/cluster
SOCK_DIR=$RUN_DIR/sock
TEST_TREE=$RUN_DIR/tests

# An entry point may change these before cluster_start: more postgresql.conf
# lines (later lines win), the program pg_ctl starts as the server (a
# wrapper such as valgrind's), and how long pg_ctl waits for it.
CLUSTER_CONF_EXTRA=
CLUSTER_POSTGRES=$PGBIN/postgres
CLUSTER_TIMEOUT=60

# Our own runs fail on compiler warnings; the Makefile leaves -Werror out so
# that a packager's build with another compiler does not.
MAKE_FLAGS=(PG_CONFIG="$PGBIN/pg_config" COPT=-Werror)

log() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages the build, the demo and the tests need.
PACKAGES=(
  build-essential make gcc
  postgresql-$PGVER postgresql-server-dev-$PGVER postgresql-client-$PGVER
  postgresql-$PGVER-cron
  libipc-run-perl libtest-simple-perl
  rsync
)

ensure_packages() {
  [ "$(id -u)" = 0 ] || die "run as root: packages are installed with apt-get and the cluster runs as the postgres OS user"
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's postgresql package creates and starts a main cluster on 5432; we
  # never use it and leave it as it is.
  command -v pg_config >/dev/null || die "pg_config not found after installing packages"
}

build_and_install() {
  log "building and installing the extension"
  make -C "$ROOT" -s "${MAKE_FLAGS[@]}" all >/dev/null
  make -C "$ROOT" -s "${MAKE_FLAGS[@]}" install >/dev/null
}

# As the postgres OS user, from a directory it can enter (the caller's may be
# in /root).
as_pg() { (cd / && runuser -u postgres -- "$@"); }

# Creates the run directory (postgres owns it, everyone may traverse it) and
# points the clone's link at it.  Needs the postgres user, so it runs after
# ensure_packages; cluster_start calls it too.
prepare_run_dir() {
  if [ -z "${LOYALTY_RUN_DIR:-}" ]; then
    # /var/tmp is world-writable: use the per-clone directory only if it is
    # root's own and not a link somebody else planted.
    mkdir -p "$RUN_BASE"
    if [ -L "$RUN_BASE" ] || [ "$(stat -c %u "$RUN_BASE")" != 0 ]; then
      die "$RUN_BASE is not a directory of root's; remove it or set LOYALTY_RUN_DIR"
    fi
    chmod 0755 "$RUN_BASE"
    printf '%s\n' "$ROOT" >"$RUN_BASE/clone"
  fi
  mkdir -p "$RUN_DIR"
  chown postgres: "$RUN_DIR"
  chmod 0755 "$RUN_DIR"
  as_pg test -w "$RUN_DIR" -a -x "$RUN_DIR" \
    || die "the postgres OS user cannot write $RUN_DIR (is a parent directory closed to it?); set LOYALTY_RUN_DIR to a directory it can reach"
  link_run_dir
}

# .run in the clone leads to the run directory.  Before the run directory
# moved out of the clone, .run was a directory holding the cluster: stop that
# cluster and remove it.
link_run_dir() {
  [ "$RUN_LINK" -ef "$RUN_DIR" ] && return 0
  if [ -d "$RUN_LINK" ] && [ ! -L "$RUN_LINK" ]; then
    if [ -f "$RUN_LINK/cluster/postmaster.pid" ]; then
      as_pg "$PGBIN/pg_ctl" -D "$RUN_LINK/cluster" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$RUN_LINK"
  fi
  ln -sfn "$RUN_DIR" "$RUN_LINK"
}

# A private cluster: data directory and socket in the run directory, a port of
# our own, stopped again by cluster_stop (callers trap EXIT).
cluster_start() {
  local pid
  prepare_run_dir
  cluster_stop
  if pid=$(cluster_leftover); then
    die "a server of an earlier run still runs on $CLUSTER_DIR (pid $pid) and does not stop; stop it first"
  fi
  rm -rf "$CLUSTER_DIR" "$SOCK_DIR" "$RUN_DIR/cluster.log"
  mkdir -p "$SOCK_DIR"
  chown postgres: "$SOCK_DIR"
  log "starting a throwaway cluster on port $CLUSTER_PORT ($CLUSTER_DIR)"
  as_pg "$PGBIN/initdb" -D "$CLUSTER_DIR" -A trust -U postgres --no-sync -E UTF8 --locale=C >/dev/null
  cat >>"$CLUSTER_DIR/postgresql.conf" <<CONF
port = $CLUSTER_PORT
listen_addresses = ''
unix_socket_directories = '$SOCK_DIR'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
max_prepared_transactions = 10
fsync = on
$CLUSTER_CONF_EXTRA
CONF
  as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -l "$RUN_DIR/cluster.log" -p "$CLUSTER_POSTGRES" \
      -w -t "$CLUSTER_TIMEOUT" start >/dev/null \
    || { tail -20 "$RUN_DIR/cluster.log"; die "cluster did not start"; }
  export PGHOST=$SOCK_DIR PGPORT=$CLUSTER_PORT PGUSER=postgres
}

# A server busy restarting after a crash may ignore a fast shutdown: then an
# immediate one.
cluster_stop() {
  [ -f "$CLUSTER_DIR/postmaster.pid" ] || return 0
  as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -m fast -w -t "$CLUSTER_TIMEOUT" stop >/dev/null 2>&1 \
    || as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -m immediate -w -t "$CLUSTER_TIMEOUT" stop >/dev/null 2>&1 \
    || true
}

# The postmaster of an earlier run that is still alive (its pid file names a
# process started on this data directory).
cluster_leftover() {
  local pid
  pid=$(head -1 "$CLUSTER_DIR/postmaster.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-D $CLUSTER_DIR" && echo "$pid"
}

# psql against the throwaway cluster, as postgres.
pg_sql() { as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -U postgres "$@"; }

# make installcheck writes into the tree and the TAP tests run initdb, so the
# suites run as postgres in a copy of the tree that postgres owns.
copy_test_tree() {
  prepare_run_dir
  rsync -a --delete --exclude .git --exclude /.run --exclude '/.run-*' "$ROOT/" "$TEST_TREE/"
  chown -R postgres: "$TEST_TREE"
}

# make installcheck in the copy, against the throwaway cluster, as postgres;
# the output is shown and appended to $1, the rest are make arguments.
installcheck() {
  local out=$1; shift
  as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres \
    make -C "$TEST_TREE" PG_CONFIG="$PGBIN/pg_config" installcheck "$@" 2>&1 | tee -a "$out"
  return "${PIPESTATUS[0]}"
}

# Every diff the suites left, for the reader.
show_diffs() {
  local d
  for d in "$TEST_TREE/regression.diffs" "$TEST_TREE/output_iso/regression.diffs"; do
    if [ -s "$d" ]; then echo "---- $d"; cat "$d"; fi
  done
}
