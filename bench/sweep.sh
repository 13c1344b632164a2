#!/usr/bin/env bash
# The scale sweep of `make bench`: verify of a *random* key out of N stored keys, as a ratio to the
# same lookup without verify, for N = 10^3, 10^5, 10^6, and 10^6 while another connection creates
# and revokes a key every 50 ms. Then usage tracking's cost on the same random-key authenticate.
#
# Keys are bulk-loaded straight into apikey.keys by a superuser (digest = SHA-256 of the key text,
# computed in SQL; keys of format cfk) instead of a million apikey.create calls through the quota:
# the documented bulk path for benchmarks and imports. The plaintext goes to bench.plain so a
# pgbench script can pick one at random; the baseline script runs that same lookup alone.
#
# Usage: bench/sweep.sh PSQL_DIR PORT SECONDS  (called by bench/run.sh on its cluster)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=${PGBIN:-$("$PG_CONFIG" --bindir)}
dir=$1 port=$2 secs=$3
RUNS=${BENCH_RUNS:-3}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d bench)
work=$(mktemp -d); chmod 755 "$work"
churn_pid=
trap 'if [ -n "$churn_pid" ]; then kill "$churn_pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

"${PSQL[@]}" <<'SQL'
CREATE TABLE IF NOT EXISTS bench.plain (n integer PRIMARY KEY, k text NOT NULL);
CREATE OR REPLACE FUNCTION bench.load_keys(upto integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE have integer := (SELECT coalesce(max(n), 0) FROM bench.plain);
BEGIN
    IF have >= upto THEN RETURN; END IF;
    INSERT INTO bench.plain (n, k)
    SELECT g, 'cfk_' || md5(g::text || random()::text) || md5(random()::text || g::text)
      FROM generate_series(have + 1, upto) g;
    -- The bulk path: rows as apikey.create would write them (masked parts, digest of the key).
    INSERT INTO apikey.keys (owner, name, format, display_prefix, last4, digest, created_by)
    SELECT 'bulk-' || (p.n % 1000), 'bulk key ' || p.n, 'cfk', left(p.k, 8), right(p.k, 4),
           sha256(convert_to(p.k, 'UTF8')), 'bench'
      FROM bench.plain p WHERE p.n > have;
END $$;
SQL

echo 'SELECT 1;' > "$work/noop.sql"
printf '\\set i random(1, :n)\nSELECT k FROM bench.plain WHERE n = :i;\n' > "$work/lookup.sql"
printf '\\set i random(1, :n)\nSELECT (apikey.verify(k)).owner FROM bench.plain WHERE n = :i;\n' > "$work/verify.sql"
printf '\\set i random(1, :n)\nSELECT apikey.authenticate(k) FROM bench.plain WHERE n = :i;\n' > "$work/authenticate.sql"
# Real key use is skewed (a few busy clients, a long tail): the same pair under a Zipf law.
printf '\\set i random_zipfian(1, :n, 1.1)\nSELECT k FROM bench.plain WHERE n = :i;\n' > "$work/lookup_zipf.sql"
printf '\\set i random_zipfian(1, :n, 1.1)\nSELECT (apikey.verify(k)).owner FROM bench.plain WHERE n = :i;\n' > "$work/verify_zipf.sql"

tps() { # script n [pgoptions]
    PGOPTIONS="${3:-}" "$PGBIN/pgbench" -n -M prepared -h "$dir" -p "$port" -U postgres -c 2 -j 2 -T "$secs" \
        -D n="$2" -f "$work/$1.sql" bench 2>/dev/null | awk '/^tps/ {print $3}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The ratio of script A to script B, as the median of RUNS paired runs (each pair back to back).
ratio() { # a b n [pgoptions]
    for _ in $(seq "$RUNS"); do
        a=$(tps "$1" "$3" "${4:-}"); b=$(tps "$2" "$3" "${4:-}")
        awk -v a="$a" -v b="$b" 'BEGIN{printf "%.3f\n", a/b}'
    done | median
}

start_churn() { # seconds
    # One persistent connection (pgbench, one client) so the churn costs what it would in
    # production, not a process start per change. It alone may create keys past the quota; the
    # measured sessions run with no pg_apikey setting.
    printf "SELECT apikey.revoke(id) FROM apikey.create('churn', 'churn key');\n\\sleep 50 ms\n" > "$work/churn.sql"
    PGOPTIONS="-c apikey.creation_limit=0" "$PGBIN/pgbench" -n -h "$dir" -p "$port" -U postgres -c 1 -T "$1" -f "$work/churn.sql" bench >/dev/null 2>&1 &
    churn_pid=$!
}

# The shared key cache loads itself: the database's worker notices a bulk load (the keys table
# grew past twice what it last loaded) at its next flush and loads every live key. Wait for it.
wait_for_load() { # n
    local start=$SECONDS last=-1 now
    while [ $((SECONDS - start)) -lt 300 ]; do
        now=$("${PSQL[@]}" -At -c "SELECT entries FROM apikey.shared_key_cache_stats()")
        if [ "$now" -ge $(( $1 * 7 / 10 )) ] && [ "$now" = "$last" ]; then break; fi
        last=$now; sleep 2
    done
    echo "$now keys in the shared cache after $((SECONDS - start)) s"
}

echo "== verify of a random key out of N (pgbench -M prepared, 2 clients, ${secs}s, median of $RUNS)"
echo "   ratio = (lookup + apikey.verify) / (the same lookup alone), measured back to back;"
echo "   no pg_apikey setting: the shared key cache is sized from shared_buffers and loaded by the worker"
printf '%-28s %10s %10s   %s\n' "stored keys" "ratio" "vs 10^3" "shared cache"
declare -A r
for n in 1000 100000 1000000; do
    "${PSQL[@]}" -c "SELECT bench.load_keys($n)" -c "VACUUM ANALYZE apikey.keys, bench.plain" >/dev/null
    loaded=$(wait_for_load "$n")
    r[$n]=$(ratio verify lookup "$n")
    printf '%-28s %10s %10s   %s\n' "$n" "${r[$n]}" "$(awk -v a="${r[$n]}" -v b="${r[1000]}" 'BEGIN{printf "%.3f", a/b}')" "$loaded"
done
start_churn $(( RUNS * 2 * secs + 30 ))
churned=$(ratio verify lookup 1000000)
kill "$churn_pid" 2>/dev/null || true; wait "$churn_pid" 2>/dev/null || true; churn_pid=
printf '%-28s %10s %10s\n' "1000000, create+revoke/50ms" "$churned" "$(awk -v a="$churned" -v b="${r[1000]}" 'BEGIN{printf "%.3f", a/b}')"
zipf=$(ratio verify_zipf lookup_zipf 1000000)
printf '%-28s %10s %10s\n' "1000000, Zipf s=1.1" "$zipf" "$(awk -v a="$zipf" -v b="${r[1000]}" 'BEGIN{printf "%.3f", a/b}')"

echo
echo "== one verify, per call, in one statement over 20,000 random keys of 10^6 (median of $RUNS)"
# A backend-cache hit; a shared-cache hit (no backend cache); a miss of both, which probes the
# digest index and fetches the row. Two passes first: a key enters the backend cache on its
# second miss. Per call, including the loop's own cost, which all pay alike.
per_call() { # backend cache size, shared cache on/off
    for _ in $(seq "$RUNS"); do
        "${PSQL[@]}" -At <<SQL | awk '/^Time:/ {printf "%.2f\n", $2 * 1000 / 20000}'
SET jit = off;
SET apikey.key_cache_size = '$1';
SET apikey.shared_key_cache = $2;
CREATE TEMP TABLE sample AS SELECT k FROM bench.plain ORDER BY random() LIMIT 20000;
SELECT count((apikey.verify(k)).id) FROM sample;
SELECT count((apikey.verify(k)).id) FROM sample;
\\timing on
SELECT count((apikey.verify(k)).id) FROM sample;
SQL
    done | median
}
hit=$(per_call 16MB off) shared=$(per_call 0 on) miss=$(per_call 0 off)
echo "backend-cache hit ${hit} µs, shared-cache hit ${shared} µs, miss ${miss} µs per verify"
echo "(a shared hit costs $(awk -v h="$hit" -v m="$shared" 'BEGIN{printf "%.2f", m-h}') µs more than a backend hit, a miss $(awk -v h="$hit" -v m="$miss" 'BEGIN{printf "%.2f", m-h}') µs more)"

echo
echo "== usage tracking on authenticate of a random key out of 10^6 (median of $RUNS)"
on_off=$(for _ in $(seq "$RUNS"); do
    a=$(tps authenticate 1000000); b=$(tps authenticate 1000000 "-c apikey.track_usage=off")
    awk -v a="$a" -v b="$b" 'BEGIN{printf "%.4f\n", a/b}'
done | median)
echo "authenticate with usage tracking / without: $on_off (cost $(awk -v r="$on_off" 'BEGIN{printf "%.1f", (1-r)*100}')%)"
