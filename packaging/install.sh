#!/bin/sh
# Install pg_apikey from this archive into the PostgreSQL server that pg_config describes:
#   sudo ./install.sh                                   (pg_config on PATH)
#   sudo PG_CONFIG=/usr/pgsql-17/bin/pg_config ./install.sh
# The server's major must be the one this archive was built for (PG_MAJOR). Then add pg_apikey
# to shared_preload_libraries, restart the server and CREATE EXTENSION pg_apikey.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PG_CONFIG=${PG_CONFIG:-pg_config}
built=$(cat "$here/PG_MAJOR")
major=$("$PG_CONFIG" --version | sed 's/^PostgreSQL \([0-9][0-9]*\).*/\1/')
if [ "$built" != "$major" ]; then
    echo "install.sh: this archive is built for PostgreSQL $built, $PG_CONFIG is PostgreSQL $major" >&2
    exit 1
fi
# What goes into the server runs as its superuser: only regular files of the archive's own
# names, owned by root or the user running this, writable by nobody else.
me=$(id -u)
check() {
    if [ -L "$1" ] || [ ! -f "$1" ]; then
        echo "install.sh: $1 is not a regular file" >&2; exit 1
    fi
    owner=$(stat -c %u "$1")
    if [ "$owner" != 0 ] && [ "$owner" != "$me" ]; then
        echo "install.sh: $1 belongs to another user" >&2; exit 1
    fi
    if [ -n "$(find "$1" -perm /022)" ]; then
        echo "install.sh: $1 is writable by others" >&2; exit 1
    fi
}
libdir=$("$PG_CONFIG" --pkglibdir)
extdir="$("$PG_CONFIG" --sharedir)/extension"
check "$here/lib/pg_apikey.so"
for f in "$here"/extension/pg_apikey.control "$here"/extension/pg_apikey--*.sql; do
    check "$f"
done
install -m 755 "$here/lib/pg_apikey.so" "$libdir/"
for f in "$here"/extension/pg_apikey.control "$here"/extension/pg_apikey--*.sql; do
    install -m 644 "$f" "$extdir/"
done
echo "installed into $libdir and $extdir"
