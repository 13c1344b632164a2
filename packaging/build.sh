#!/usr/bin/env bash
# Release artifacts, built from the source archive (so the archive is known to build):
#   packaging/build.sh dist                  dist/pg_apikey-VERSION.tar.gz: git archive of HEAD,
#                                            with META.json, ready for PGXN
#   packaging/build.sh package [PG_CONFIG]   for the major of PG_CONFIG (15 by default):
#     target/dist-build/pgMAJOR                the installed tree (cargo pgrx package), as it lands
#                                              under /
#     dist/pg_apikey-VERSION-pgMAJOR.tar.gz    the files and an install.sh that puts them where
#                                              any server's pg_config says (any layout)
#     dist/postgresql-MAJOR-pg-apikey_VERSION_ARCH.deb   Debian's layout (/usr/lib/postgresql/MAJOR)
#     dist/pg_apikey_MAJOR-VERSION-1.ARCH.rpm  the PostgreSQL RPM repositories' layout
#                                              (/usr/pgsql-MAJOR), by cargo generate-rpm
# The library is the same file in all three: a build is specific to a major, not to a layout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
DIST="$ROOT/dist"
ARCHIVE="$DIST/pg_apikey-$VERSION.tar.gz"
SUMMARY="API-key authentication inside PostgreSQL"

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
    local libdir="$tree$("$pg_config" --pkglibdir)" extdir="$tree$("$pg_config" --sharedir)/extension"
    install -m 644 "$src"/sql/pg_apikey--*.sql "$extdir/"

    # The files by kind, for the three artifacts below.
    local files="$work/files-pg$major"
    rm -rf "$files"
    mkdir -p "$files/lib" "$files/extension"
    install -m 755 "$libdir/pg_apikey.so" "$files/lib/"
    install -m 644 "$extdir"/pg_apikey* "$files/extension/"
    tarball "$src" "$files" "$major"
    deb "$src" "$files" "$major"
    rpm_package "$src" "$files" "$major"
}

tarball() {
    local src=$1 files=$2 major=$3
    local name="pg_apikey-$VERSION-pg$major" stage="$ROOT/target/dist-build/tar-pg$3"
    rm -rf "$stage"
    mkdir -p "$stage/$name"
    cp -a "$files/lib" "$files/extension" "$stage/$name/"
    cp "$src/LICENSE" "$src/README.md" "$stage/$name/"
    install -m 755 "$src/packaging/install.sh" "$stage/$name/install.sh"
    # install.sh refuses to install into any other major than this one.
    echo "$major" > "$stage/$name/PG_MAJOR"
    # Owned by root and writable by no one else, whoever built it: an administrator unpacks it
    # as root and installs what is in it.
    tar -czf "$DIST/$name.tar.gz" -C "$stage" --owner=0 --group=0 --numeric-owner \
        --mode='u+rwX,go=rX' --sort=name "$name"
    (cd "$DIST" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
    echo "$DIST/$name.tar.gz"
}

deb() {
    local src=$1 files=$2 major=$3
    command -v dpkg-deb >/dev/null || return 0
    local arch stage="$ROOT/target/dist-build/deb-pg$major" pkg="postgresql-$major-pg-apikey"
    arch=$(dpkg --print-architecture)
    rm -rf "$stage"
    mkdir -p "$stage/DEBIAN" "$stage/usr/lib/postgresql/$major/lib" \
        "$stage/usr/share/postgresql/$major/extension" "$stage/usr/share/doc/$pkg"
    cp -a "$files/lib/." "$stage/usr/lib/postgresql/$major/lib/"
    cp -a "$files/extension/." "$stage/usr/share/postgresql/$major/extension/"
    cp "$src/README.md" "$stage/usr/share/doc/$pkg/"
    # Debian's machine-readable copyright format, with the licence text.
    {
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo "Upstream-Name: pg_apikey"
        echo
        echo "Files: *"
        echo "Copyright: 2026, the pg_apikey maintainers"
        echo "License: PostgreSQL"
        sed -e 's/^$/./' -e 's/^/ /' "$src/LICENSE"
    } > "$stage/usr/share/doc/$pkg/copyright"
    cat > "$stage/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $VERSION
Architecture: $arch
Maintainer: pg_apikey maintainers <maintainers@pg-apikey.invalid>
Depends: postgresql-$major
Section: database
Priority: optional
Description: $SUMMARY $major
 Keys stored as SHA-256 and verified in constant time, expiry, rotation, revocation and audit;
 a transaction identity for row-level security; scopes and limits; key import, leak reports and
 events. Add pg_apikey to shared_preload_libraries, restart, then CREATE EXTENSION pg_apikey.
CONTROL
    local out="$DIST/${pkg}_${VERSION}_$arch.deb"
    dpkg-deb --build --root-owner-group "$stage" "$out" >/dev/null
    echo "$out"
}

rpm_package() {
    local src=$1 files=$2 major=$3
    command -v cargo-generate-rpm >/dev/null || { echo "build.sh: no cargo-generate-rpm, no .rpm" >&2; return 0; }
    local name="pg_apikey_$major" prefix="/usr/pgsql-$major"
    local overwrite="$ROOT/target/dist-build/rpm-pg$major.toml"
    # The name, files and requirement of this major; the rest is Cargo.toml's
    # [package.metadata.generate-rpm].
    cat > "$overwrite" <<TOML
name = "$name"
summary = "$SUMMARY $major"
requires = { postgresql$major-server = "*" }
assets = [
    { source = "$files/lib/pg_apikey.so", dest = "$prefix/lib/pg_apikey.so", mode = "755" },
    { source = "$files/extension/*", dest = "$prefix/share/extension/", mode = "644" },
    { source = "LICENSE", dest = "/usr/share/licenses/$name/LICENSE", mode = "644", doc = true },
    { source = "README.md", dest = "/usr/share/doc/$name/README.md", mode = "644", doc = true },
]
TOML
    (cd "$src" && cargo generate-rpm --auto-req disabled --metadata-overwrite "$overwrite" \
        --output "$DIST/" >/dev/null)
    ls -t "$DIST/$name-$VERSION"-*.rpm | head -n1
}

case "${1:-}" in
dist) dist ;;
package) shift; package "$@" ;;
*) echo "usage: $0 dist | package [PG_CONFIG]" >&2; exit 2 ;;
esac
