#!/usr/bin/env bash
# The whole suite, in the order that keeps installs consistent:
#   1. style (rustfmt, clippy -D warnings)
#   2. Rust unit tests of the pure core (no server)
#   3. #[pg_test] tests (cargo pgrx test, which installs a test build)
#   4. release install, then the pg_regress suite on a throwaway cluster
#   5. client integration tests (pytest: concurrency, dump/restore, sessions)
# Each runner prints its own summary; the last lines here sum them up.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export RUST_BACKTRACE=0
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
results=()
run() {
    local name=$1; shift
    echo "==> $name"
    if "$@"; then results+=("ok      $name"); else results+=("FAILED  $name"); fi
}

run "rustfmt" cargo fmt --all -- --check
run "clippy" cargo clippy --all-targets --features "pg15 pg_test" --no-default-features -- -D warnings
run "core unit tests" cargo test -p pg_apikey_core
mkdir -p "$ROOT/.run/pgrx-test"; chown postgres: "$ROOT/.run" "$ROOT/.run/pgrx-test"
run "pg_test" cargo pgrx test pg15 --runas postgres --pgdata "$ROOT/.run/pgrx-test/data"
install_release() {
    cargo pgrx install --release --pg-config "$PG_CONFIG" &&
        # The 0.1.0 install script stays installable, for CREATE EXTENSION ... VERSION '0.1.0' and the upgrade test.
        install -m 644 sql/pg_apikey--0.1.0.sql "$("$PG_CONFIG" --sharedir)/extension/"
}
run "install" install_release
run "pg_regress" "$ROOT/tests/regress.sh"
run "integration" python3 -m pytest -q "$ROOT/tests"
# Last: installing the Debian package replaces the extension the other suites used.
run "package" bash "$ROOT/packaging/build.sh" package "$PG_CONFIG"
run "package smoke test" python3 -m pytest -q "$ROOT/tests/smoke_package.py"

echo
echo "==> summary"
printf '%s\n' "${results[@]}"
failed=$(printf '%s\n' "${results[@]}" | grep -c '^FAILED' || true)
echo "$(( ${#results[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
