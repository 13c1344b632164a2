#!/usr/bin/env bash
# Run the pg_regress suite in pg_test/ against the installed extension on a throwaway cluster.
# Prints pg_regress's own summary and a final "N passed, N failed" line.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=${PGBIN:-$("$PG_CONFIG" --bindir)}
PG_REGRESS=${PG_REGRESS:-$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress}
PORT=${REGRESS_PORT:-54341}
TESTS=$(grep -v '^#' "$ROOT/pg_test/schedule" | xargs)
# Tests that need pgcrypto run only where the server has it (the PostgreSQL 18 build used here
# has no contrib pgcrypto).
if [ ! -f "$("$PG_CONFIG" --sharedir)/extension/pgcrypto.control" ]; then
    for t in $(grep -l 'pgcrypto' "$ROOT"/pg_test/sql/*.sql | xargs -n1 basename | sed 's/\.sql$//'); do
        echo "pg_regress: skipping $t on this server: it needs pgcrypto"
        TESTS=$(echo " $TESTS " | sed "s/ $t / /" | xargs)
    done
fi

# A throwaway server key for the sealed (recoverable) key tests.
"$ROOT/tests/cluster.sh" start regress "$PORT" \
    "apikey.encryption_key = '4f1c2a9d8e7b6a5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c'"
export PG_APIKEY_EXAMPLES="$ROOT/examples"
dir=$("$ROOT/tests/cluster.sh" dir regress)
out="$ROOT/.run/regress-out"
rm -rf "$out"; mkdir -p "$out"; chown postgres: "$out"
runuser -u postgres -- env RUST_BACKTRACE=0 "$PG_REGRESS" --host="$dir" --port="$PORT" --user=postgres \
    --bindir="$PGBIN" --inputdir="$ROOT/pg_test" --outputdir="$out" --dbname=apikey_regress $TESTS \
    | tee "$out/summary.txt"
status=${PIPESTATUS[0]}
"$ROOT/tests/cluster.sh" stop regress
if [ -f "$out/regression.diffs" ]; then cat "$out/regression.diffs"; fi
# Both report styles: "test x ... ok" / "... FAILED" (15) and TAP's "ok N - x" / "not ok N - x" (18).
passed=$(grep -cE '^(ok|test) .* ok( |$)|^ok ' "$out/summary.txt" || true)
failed=$(grep -cE 'FAILED|failed \(ignored\)|^not ok ' "$out/summary.txt" || true)
echo "pg_regress: $passed passed, $failed failed"
exit "$status"
