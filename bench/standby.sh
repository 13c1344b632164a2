#!/usr/bin/env bash
# Credits and global limits on a hot standby (part of `make bench`): authenticate on a real
# streaming standby with a random key of 1,000 that holds credits (spent from slices leased from
# the primary) as a ratio to a random key of 1,000 without credits; and with a random key of
# 1,000 whose owner (one of 100) has a global request limit (spent from tokens leased from the
# primary's bucket) as a ratio to a random key of 1,000 whose owner has the same limit kept by
# each server on its own; on the same standby, default settings; pgbench -M prepared, 2 clients,
# runs interleaved, median of RUNS.
# Usage: bench/standby.sh SECONDS
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=${PGBIN:-$("$PG_CONFIG" --bindir)}
secs=$1
RUNS=${BENCH_RUNS:-3}
PRIMARY_PORT=${BENCH_PRIMARY_PORT:-54364} STANDBY_PORT=${BENCH_STANDBY_PORT:-54365}
as_pg() { runuser -u postgres -- env RUST_BACKTRACE=0 "$@"; }
"$ROOT/tests/cluster.sh" start bench_primary "$PRIMARY_PORT" "fsync = on"
pdir=$("$ROOT/tests/cluster.sh" dir bench_primary)
sdir="$ROOT/.run/bench_standby"
work=$(mktemp -d); chmod 755 "$work"
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$sdir/data" -m fast -w stop >/dev/null 2>&1 || true
    "$ROOT/tests/cluster.sh" stop bench_primary
    rm -rf "$work"
}
[ -n "${BENCH_KEEP:-}" ] || trap cleanup EXIT
P=(env PGOPTIONS="-c apikey.creation_limit=0" psql -X -q -At -v ON_ERROR_STOP=1 -h "$pdir" -p "$PRIMARY_PORT" -U postgres -d postgres)
"${P[@]}" -c "CREATE EXTENSION pg_apikey"
# A limit that never refuses here: what is measured is the lease, not refusals.
"${P[@]}" -c "SELECT apikey.set_owner_limit('bench-g-*', 'requests', 2000000000, '1 second', global => true)"
"${P[@]}" -c "SELECT apikey.set_owner_limit('bench-l-*', 'requests', 2000000000, '1 second')"
"${P[@]}" -c "CREATE TABLE bench_keys AS
    SELECT n, (SELECT api_key::text FROM apikey.create('bench-metered', 'm' || n, credits => 1000000000000)) AS metered,
              (SELECT api_key::text FROM apikey.create('bench-plain', 'p' || n)) AS plain,
              (SELECT api_key::text FROM apikey.create('bench-g-' || n % 100, 'g' || n)) AS global,
              (SELECT api_key::text FROM apikey.create('bench-l-' || n % 100, 'l' || n)) AS local
      FROM generate_series(1, 1000) n;
    CREATE UNIQUE INDEX ON bench_keys (n)"
rm -rf "$sdir"; mkdir -p "$sdir"; chown postgres: "$sdir"
as_pg "$PGBIN/pg_basebackup" -h "$pdir" -p "$PRIMARY_PORT" -U postgres -D "$sdir/data" -R -X stream
printf "port = %s\nunix_socket_directories = '%s'\nlog_directory = '%s'\nhot_standby = on\n" \
    "$STANDBY_PORT" "$sdir" "$sdir" >> "$sdir/data/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$sdir/data" -l "$sdir/startup.log" -w start >/dev/null

for kind in metered plain global local; do
    printf '\\set n random(1, 1000)\nSELECT apikey.authenticate(%s) FROM bench_keys WHERE n = :n;\n' "$kind" > "$work/$kind.sql"
done
tps() { # script
    "$PGBIN/pgbench" -n -M prepared -h "$sdir" -p "$STANDBY_PORT" -U postgres -c 2 -j 2 -T "$secs" \
        -f "$work/$1.sql" postgres 2>"$work/err" | awk '/^tps/ {print $3}'
}
# Warm up: every key's first lease (the one request per key and server that waits for the
# primary), and the caches; then the steady state is measured.
S=(psql -X -q -At -h "$sdir" -p "$STANDBY_PORT" -U postgres -d postgres)
first=$( { /usr/bin/time -f %e "${S[@]}" -c "SELECT count(apikey.authenticate(metered)) FROM bench_keys" >/dev/null; } 2>&1 )
echo "first use of 1,000 keys with credits on the standby, one after another: ${first}s"
tps metered >/dev/null || true   # and the steady state: slices sized to each key's use
tps global >/dev/null || true
median() { sort -g | awk '{r[NR]=$1} END {print r[int((NR+1)/2)]}'; }
: > "$work/credits"; : > "$work/global"
for _ in $(seq "$RUNS"); do
    a=$(tps metered); b=$(tps plain); g=$(tps global); l=$(tps local)
    awk -v a="$a" -v b="$b" 'BEGIN{printf "%.3f\n", a/b}' >> "$work/credits"
    awk -v g="$g" -v l="$l" 'BEGIN{printf "%.3f\n", g/l}' >> "$work/global"
done
echo "== credits and global limits on a hot standby (pgbench -M prepared, 2 clients, ${secs}s, a random key of 1,000, median of $RUNS)"
echo "authenticate on the standby, key with leased credits / key without credits: $(median < "$work/credits")"
echo "authenticate on the standby, key under a global owner limit / under the same limit per server: $(median < "$work/global")"
held=$("${P[@]}" -c "SELECT count(*), coalesce(sum(held), 0) FROM apikey.leases" | tr '|' ' ')
echo "leases recorded on the primary (keys, credits held by the standby): $held"
