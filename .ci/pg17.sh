#!/usr/bin/env bash
# PostgreSQL 17 with server headers under /usr/local/pgsql-17, for building and testing only.
# Debian 12 packages only 15. Debian 13's postgresql-17 binary packages are reachable through the
# machine's own Debian mirror (its source package is not), but they are built against Debian 13's
# C library. So: a private apt list for trixie (the machine's apt setup stays Debian 12's),
# `apt-get download` of the server, client, headers and the few libraries whose Debian 13
# versions they need, unpacked (never installed) into the prefix; then every program and module
# gets that private C library's loader and a run path into it (patchelf). The tree keeps Debian's
# layout, which PostgreSQL relocates as a whole: pg_config answers
# /usr/local/pgsql-17/lib/postgresql/17/lib and .../share/postgresql/17.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PREFIX=/usr/local/pgsql-17
BIN="$PREFIX/lib/postgresql/17/bin"
if [ -x "$BIN/pg_config" ] && "$BIN/pg_config" --version >/dev/null 2>&1 &&
   [ ! -e "$PREFIX/lib/postgresql/17/lib/llvmjit.so" ]; then
    exit 0
fi

if ! command -v patchelf >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends patchelf >/dev/null
fi
work=$(mktemp -d /var/tmp/pg17.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The Debian mirrors this machine already uses (no host name is written here).
uris=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
       sed -n -e 's/^URIs: *//p' -e 's/^deb \(\[[^]]*\] \)\?\(http[^ ]*\) .*/\2/p' || true)
main=$(echo "$uris" | grep -E '/debian/?$' | head -n1)
security=$(echo "$uris" | grep -E '/debian-security/?$' | head -n1)
[ -n "$main" ] || { echo "pg17: no Debian mirror in the apt sources" >&2; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
    echo "deb [signed-by=$keyring] ${main%/} trixie main"
    [ -z "$security" ] || echo "deb [signed-by=$keyring] ${security%/} trixie-security main"
} > "$work/sources.list"
mkdir -p "$work/lists/partial" "$work/debs" "$work/root"
touch "$work/status"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$work/lists" -o "Dir::State::status=$work/status"
          -o "Dir::Cache::archives=$work/debs" -o "APT::Sandbox::User=root")
apt-get "${apt_opts[@]}" update -qq
# The server (with pgcrypto), psql and pg_regress, the headers, and the Debian 13 libraries the
# programs need beyond what Debian 12 has (the C library, ICU 76, OpenLDAP 2.6, OpenSSL 3.5, libpq).
debs=(postgresql-17 postgresql-client-17 postgresql-server-dev-17 libpq5 libc6 libicu76 libldap2
      libssl3t64 libstdc++6 libgcc-s1 libsasl2-2)
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq "${debs[@]}")
for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$work/root"; done

rm -rf "$PREFIX"
mkdir -p "$PREFIX"
mkdir -p "$PREFIX/lib" "$PREFIX/share" "$PREFIX/include"
cp -a "$work/root/usr/lib/postgresql" "$PREFIX/lib/"
cp -a "$work/root/usr/share/postgresql" "$PREFIX/share/"
cp -a "$work/root/usr/include/postgresql" "$PREFIX/include/"
# No JIT: its provider needs Debian 13's LLVM; without the provider's file PostgreSQL runs
# every query without JIT (with the file but not its LLVM, a costly query would fail).
rm -f "$PREFIX"/lib/postgresql/17/lib/llvmjit*.so
rm -rf "$PREFIX"/lib/postgresql/17/lib/bitcode
libs="$PREFIX/lib/postgresql/17/debian13-libs"
mkdir -p "$libs"
for dir in "$work/root/usr/lib/x86_64-linux-gnu" "$work/root/lib/x86_64-linux-gnu"; do
    [ -d "$dir" ] && find "$dir" -maxdepth 1 -name '*.so*' -exec cp -aL {} "$libs/" \;
done
for f in "$PREFIX"/lib/postgresql/17/bin/* "$PREFIX"/lib/postgresql/17/lib/*.so \
         "$PREFIX"/lib/postgresql/17/lib/pgxs/src/test/regress/pg_regress; do
    [ -f "$f" ] && head -c4 "$f" | grep -q ELF || continue
    if patchelf --print-interpreter "$f" >/dev/null 2>&1; then
        patchelf --set-interpreter "$libs/ld-linux-x86-64.so.2" "$f"
    fi
    # DT_RPATH, not RUNPATH: it also serves the libraries' own dependencies (libldap -> liblber).
    patchelf --force-rpath --set-rpath "$libs" "$f"
done
chmod -R a+rX "$PREFIX"
"$BIN/pg_config" --version
