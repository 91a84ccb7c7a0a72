# Citus clusters for the scale-out suite and bench: a coordinator and two
# workers on loopback, each a throwaway cluster owned by the postgres OS
# user.  Sourced after scripts/lib.sh (PGBIN, RUN_DIR, SOCK_DIR, as_pg);
# the caller sets CITUS_TARBALL or takes the default.
# shellcheck shell=bash

CITUS_TARBALL=$(realpath -m "${CITUS_TARBALL:-$ROOT/../shared/vendor/citus-12.1.12.tar.gz}")
COORDINATOR_PORT=${LOYALTY_CITUS_PORT:-54339}
# CITUS_WORKERS (1 or 2, default 2): how many workers cluster_up registers
CITUS_WORKERS=${CITUS_WORKERS:-2}
WORKER_PORTS=("$((COORDINATOR_PORT + 1))")
[ "$CITUS_WORKERS" = 1 ] || WORKER_PORTS+=("$((COORDINATOR_PORT + 2))")
# CITUS_SPARE=1: one more node (the port after the workers'), started with
# the others and given each database and Citus, but not registered: the
# suite adds it with loyalty.add_node()
SPARE_PORTS=()
[ "${CITUS_SPARE:-0}" = 1 ] && SPARE_PORTS=("$((COORDINATOR_PORT + 3))")
DATABASE=loyalty_citus
# What Citus's configure needs besides the server's development files.
CITUS_BUILD_PACKAGES=(liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libpam0g-dev
                      libssl-dev libxslt1-dev libreadline-dev zlib1g-dev)

citus_installed() { [ -f "$("$PGBIN/pg_config" --pkglibdir)/citus.so" ]; }

ensure_citus() {
  citus_installed && return 0
  [ -f "$CITUS_TARBALL" ] || die "Citus is not installed and there is no source tarball at $CITUS_TARBALL"
  PACKAGES=("${CITUS_BUILD_PACKAGES[@]}")
  ensure_packages
  local src=$RUN_DIR/citus-src
  log "building Citus from $CITUS_TARBALL (log: $RUN_DIR/citus-build.log)"
  rm -rf "$src"; mkdir -p "$src"
  tar -xzf "$CITUS_TARBALL" -C "$src" --strip-components=1
  if ! (cd "$src" && ./configure --without-libcurl PG_CONFIG="$PGBIN/pg_config" \
        && make -j"$(nproc)" && make install) >"$RUN_DIR/citus-build.log" 2>&1; then
    tail -30 "$RUN_DIR/citus-build.log"
    die "Citus did not build"
  fi
  citus_installed || die "Citus built but citus.so is not in $("$PGBIN/pg_config" --pkglibdir)"
}

node_dir() { echo "$RUN_DIR/node$1"; }

node_start() {
  local port=$1 dir; dir=$(node_dir "$1")
  as_pg "$PGBIN/initdb" -D "$dir" -A trust -U postgres --no-sync -E UTF8 --locale=C >/dev/null
  cat >>"$dir/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCK_DIR'
shared_preload_libraries = 'citus'
wal_level = logical
max_prepared_transactions = 100
max_connections = 100
fsync = off
CONF
  as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir.log" -w -t 60 start >/dev/null \
    || { tail -20 "$dir.log"; die "node on port $port did not start"; }
}

node_stop() {
  local dir; dir=$(node_dir "$1")
  [ -f "$dir/postmaster.pid" ] || return 0
  as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null 2>&1 \
    || as_pg "$PGBIN/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
}

all_ports() { echo "$COORDINATOR_PORT" "${WORKER_PORTS[@]}" "${SPARE_PORTS[@]}"; }
stop_all() { local p; for p in $(all_ports); do node_stop "$p"; done; }

node_sql() {  # port, psql arguments
  local port=$1; shift
  as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$port" -U postgres "$@"
}

# The nodes started and the database on every node (Citus connects to the
# workers' database of the coordinator's name), Citus in each, the workers
# registered.
cluster_up() {
  local p
  prepare_run_dir
  stop_all
  rm -rf "$SOCK_DIR" "$RUN_DIR"/node* "$RUN_DIR"/out*
  mkdir -p "$SOCK_DIR" "$RUN_DIR/out"
  chown postgres: "$SOCK_DIR" "$RUN_DIR/out"
  log "starting a coordinator on port $COORDINATOR_PORT and workers on ${WORKER_PORTS[*]}${SPARE_PORTS:+ (and a spare node on ${SPARE_PORTS[*]})}"
  for p in $(all_ports); do node_start "$p"; done
  cluster_database "$DATABASE"
}

# One more database of the cluster, laid out as cluster_up lays out the first
# (a Citus database has its own metadata: nodes are registered per database).
cluster_database() {
  local db=$1 p
  for p in $(all_ports); do
    node_sql "$p" -d postgres -c "CREATE DATABASE $db"
    node_sql "$p" -d "$db" -c "CREATE EXTENSION citus"
  done
  node_sql "$COORDINATOR_PORT" -d "$db" \
    -c "SELECT pg_catalog.citus_set_coordinator_host('127.0.0.1', $COORDINATOR_PORT)" >/dev/null
  for p in "${WORKER_PORTS[@]}"; do
    node_sql "$COORDINATOR_PORT" -d "$db" -c "SELECT pg_catalog.citus_add_node('127.0.0.1', $p)" >/dev/null
  done
}
