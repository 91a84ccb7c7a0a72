# Shared by the entry points in scripts/: where things are, the packages we
# need, and a throwaway cluster owned by the postgres OS user.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGVER=15
PGBIN=${LOYALTY_PGBIN:-/usr/lib/postgresql/$PGVER/bin}  # override: a private copy of the server tree
RUN_DIR=${LOYALTY_RUN_DIR:-$ROOT/.run}  # ignored by git; override to run two suites at once
CLUSTER_DIR=$RUN_DIR/cluster
SOCK_DIR=$RUN_DIR/sock
CLUSTER_PORT=${LOYALTY_PORT:-54329}

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
  make -C "$ROOT" -s PG_CONFIG=$PGBIN/../bin/pg_config all >/dev/null
  make -C "$ROOT" -s PG_CONFIG=$PGBIN/../bin/pg_config install >/dev/null
}

as_pg() { runuser -u postgres -- "$@"; }

# A private cluster: data directory and socket inside the project, a port of
# our own, stopped again by cluster_stop (callers trap EXIT).
cluster_start() {
  cluster_stop
  rm -rf "$CLUSTER_DIR" "$SOCK_DIR"
  mkdir -p "$RUN_DIR" "$SOCK_DIR"
  chown postgres: "$RUN_DIR" "$SOCK_DIR"
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
CONF
  as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -l "$RUN_DIR/cluster.log" -w -t 60 start >/dev/null \
    || { tail -20 "$RUN_DIR/cluster.log"; die "cluster did not start"; }
  export PGHOST=$SOCK_DIR PGPORT=$CLUSTER_PORT PGUSER=postgres
}

cluster_stop() {
  if [ -f "$CLUSTER_DIR/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

# psql against the throwaway cluster, as postgres.
pg_sql() { as_pg env PGHOST="$SOCK_DIR" PGPORT="$CLUSTER_PORT" "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -U postgres "$@"; }
