#!/usr/bin/env bash
# A throwaway PostgreSQL cluster (the major of $PG_CONFIG, 15 by default) under the repository, owned by the postgres OS user (initdb and
# postgres refuse to run as root). Usage:
#   tests/cluster.sh start NAME PORT [extra postgresql.conf lines...]
#   tests/cluster.sh stop NAME
#   tests/cluster.sh dir NAME        (prints the cluster directory: data/, socket, server.log)
set -euo pipefail
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=${PGBIN:-$("$PG_CONFIG" --bindir)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cmd=$1 name=$2
dir="$ROOT/.run/$name"

# CLUSTER_RUST_BACKTRACE=1 starts a server the way a careless environment would (tests that no
# backtrace reaches a client or the log whatever the environment says).
as_pg() { runuser -u postgres -- env RUST_BACKTRACE="${CLUSTER_RUST_BACKTRACE:-0}" "$@"; }

case "$cmd" in
dir) echo "$dir" ;;
start)
    port=$3; shift 3
    if [ -f "$dir/data/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$dir"; mkdir -p "$dir"
    chown postgres: "$ROOT/.run" "$dir"
    # postgres must be able to reach the directory through every parent.
    if ! runuser -u postgres -- test -w "$dir"; then
        echo "cluster.sh: the postgres user cannot reach $dir; make its parent directories searchable (chmod o+x)" >&2
        exit 1
    fi
    as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 --locale=C >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        # NO_PRELOAD=1 starts a cluster without the library preloaded (to test that path).
        [ -n "${NO_PRELOAD:-}" ] || echo "shared_preload_libraries = 'pg_apikey'"
        echo "logging_collector = on"
        echo "log_directory = '$dir'"
        echo "log_filename = 'server.log'"
        echo "log_file_mode = 0644"
        echo "max_connections = 120"
        echo "fsync = off"
        for line in "$@"; do echo "$line"; done
    } >> "$dir/data/postgresql.conf"
    # A client connection may hold the port for a moment (the test ports are in the ephemeral
    # range): retry a start that could not bind.
    for attempt in 1 2 3 4 5; do
        if as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/startup.log" -w -t 60 start >/dev/null; then
            break
        fi
        if [ "$attempt" = 5 ] || ! grep -qs "Address already in use" "$dir/server.log" "$dir/startup.log"; then
            exit 1
        fi
        sleep 2
    done
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; fi
    ;;
*) echo "usage: $0 start|stop|dir NAME [PORT]" >&2; exit 2 ;;
esac
