#!/usr/bin/env bash
# Key policies on the request path (part of `make bench`): authenticate with a key carrying a
# per-key limit, two named limits, an owner-wide limit and credits, as a ratio to authenticate
# with a plain key (median of RUNS paired runs, pgbench -M prepared, 2 clients); and credits
# spent by 16 connections at once, which must end exactly at zero with as many successes as
# there were credits. Limits are set high so nothing is refused during the ratio runs.
# Usage: bench/policies.sh PSQL_DIR PORT SECONDS   (called by bench/run.sh on its cluster)
set -euo pipefail
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=${PGBIN:-$("$PG_CONFIG" --bindir)}
dir=$1 port=$2 secs=$3
RUNS=${BENCH_RUNS:-3}
# This script's own sessions make keys faster than the creation quota allows; the measured
# sessions (pgbench) run with no pg_apikey setting.
PSQL=(env PGOPTIONS="-c apikey.creation_limit=0" psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d bench)
work=$(mktemp -d); chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

plain=$("${PSQL[@]}" -c "SELECT api_key FROM apikey.create('bench-plain', 'plain')")
"${PSQL[@]}" -c "SELECT apikey.set_owner_limit('bench-policy', 'requests', 2000000000, '1 second')" >/dev/null
policy=$("${PSQL[@]}" -c "SELECT api_key FROM apikey.create('bench-policy', 'policies',
    rate_limit => 2000000000, rate_period => '1 second', credits => 1000000000000,
    limits => '{\"requests\": {\"max\": 2000000000, \"per\": \"1 second\"},
                \"expensive\": {\"max\": 2000000000, \"per\": \"1 second\"}}')")
echo 'SELECT apikey.authenticate(:k);' > "$work/auth.sql"

tps() { # key
    "$PGBIN/pgbench" -n -M prepared -h "$dir" -p "$port" -U postgres -c 2 -j 2 -T "$secs" \
        -D k="$1" -f "$work/auth.sql" bench 2>/dev/null | awk '/^tps/ {print $3}'
}
ratio=$(for _ in $(seq "$RUNS"); do
    a=$(tps "$policy"); b=$(tps "$plain")
    awk -v a="$a" -v b="$b" 'BEGIN{printf "%.3f\n", a/b}'
done | sort -g | awk '{r[NR]=$1} END {print r[int((NR+1)/2)]}')
echo "== key policies on authenticate (pgbench -M prepared, 2 clients, ${secs}s, median of $RUNS)"
echo "authenticate with a per-key limit, two named limits, an owner limit and credits / plain: $ratio"

# Credits exactness: 16 connections, 2,000 attempts on 1,000 credits; a refusal is caught in SQL
# (pgbench would end a client on an error).
read -r cid ckey < <("${PSQL[@]}" -F ' ' -c "SELECT id, api_key FROM apikey.create('bench-credits', 'c', credits => 1000)")
"${PSQL[@]}" -c "CREATE OR REPLACE FUNCTION bench.try_auth(k text) RETURNS int LANGUAGE plpgsql AS
    \$\$ BEGIN PERFORM apikey.authenticate(k::apikey.api_key); RETURN 1;
       EXCEPTION WHEN configuration_limit_exceeded THEN RETURN 0; END \$\$" >/dev/null
echo 'SELECT bench.try_auth(:k);' > "$work/try.sql"
"$PGBIN/pgbench" -n -M prepared -h "$dir" -p "$port" -U postgres -c 16 -j 2 -t 125 -D k="$ckey" -f "$work/try.sql" bench >/dev/null 2>&1
sleep 1
left=$("${PSQL[@]}" -c "SELECT apikey.credits($cid)")
used=$("${PSQL[@]}" -c "SELECT coalesce((SELECT uses FROM apikey.usage_live WHERE key_id = $cid), 0)
                              + coalesce((SELECT sum(uses) FROM apikey.usage WHERE key_id = $cid), 0)")
echo "credits under 16 connections: 2000 attempts on 1000 credits -> $used succeeded, $left left"
