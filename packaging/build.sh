#!/usr/bin/env bash
# Release artifacts, built from the source archive (so the archive is known to build):
#   packaging/build.sh dist                  dist/pg_apikey-VERSION.tar.gz (git archive of HEAD)
#   packaging/build.sh package [PG_CONFIG]   dist/pg_apikey-VERSION-pgMAJOR.tar.gz, an installable
#                                            tree (cargo pgrx package), and for Debian's PostgreSQL
#                                            dist/postgresql-MAJOR-pg-apikey_VERSION_ARCH.deb
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
DIST="$ROOT/dist"
ARCHIVE="$DIST/pg_apikey-$VERSION.tar.gz"

dist() {
    mkdir -p "$DIST"
    git archive --format=tar.gz --prefix="pg_apikey-$VERSION/" -o "$ARCHIVE" HEAD
    echo "$ARCHIVE"
}

package() {
    local pg_config=${1:-/usr/lib/postgresql/15/bin/pg_config}
    local major
    major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    dist >/dev/null
    local work="$ROOT/target/dist-build"
    rm -rf "$work/pg_apikey-$VERSION"
    mkdir -p "$work"
    tar -xzf "$ARCHIVE" -C "$work"
    local src="$work/pg_apikey-$VERSION" tree="$work/pg$major"
    rm -rf "$tree"
    # A target directory of its own: the archive is built as a stranger would build it.
    (cd "$src" && CARGO_TARGET_DIR="$work/target" cargo pgrx package --pg-config "$pg_config" \
        --no-default-features --features "pg$major" --out-dir "$tree" >/dev/null)
    # Older install scripts stay installable (CREATE EXTENSION ... VERSION, upgrades from them).
    local extdir="$tree$("$pg_config" --sharedir)/extension"
    install -m 644 "$src"/sql/pg_apikey--*.sql "$extdir/"
    tar -czf "$DIST/pg_apikey-$VERSION-pg$major.tar.gz" -C "$tree" .
    echo "$DIST/pg_apikey-$VERSION-pg$major.tar.gz"
    # A Debian package where PostgreSQL itself is Debian's (paths under /usr/lib/postgresql/MAJOR).
    if [[ "$("$pg_config" --pkglibdir)" == "/usr/lib/postgresql/$major/lib" ]] && command -v dpkg-deb >/dev/null; then
        local arch deb="$work/deb-pg$major"
        arch=$(dpkg --print-architecture)
        rm -rf "$deb"
        cp -a "$tree" "$deb"
        mkdir -p "$deb/DEBIAN" "$deb/usr/share/doc/postgresql-$major-pg-apikey"
        cp "$src/README.md" "$deb/usr/share/doc/postgresql-$major-pg-apikey/"
        cat > "$deb/DEBIAN/control" <<CONTROL
Package: postgresql-$major-pg-apikey
Version: $VERSION
Architecture: $arch
Maintainer: pg_apikey maintainers <maintainers@pg-apikey.invalid>
Depends: postgresql-$major
Section: database
Priority: optional
Description: API-key authentication inside PostgreSQL $major
 Keys stored as SHA-256 and verified in constant time, expiry, rotation, revocation and audit;
 a transaction identity for row-level security; scopes and limits; key import, leak reports and
 events. Add pg_apikey to shared_preload_libraries, restart, then CREATE EXTENSION pg_apikey.
CONTROL
        local out="$DIST/postgresql-$major-pg-apikey_${VERSION}_$arch.deb"
        dpkg-deb --build --root-owner-group "$deb" "$out" >/dev/null
        echo "$out"
    fi
}

case "${1:-}" in
dist) dist ;;
package) shift; package "$@" ;;
*) echo "usage: $0 dist | package [PG_CONFIG]" >&2; exit 2 ;;
esac
