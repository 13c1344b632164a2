#!/bin/sh
# Install pg_apikey from this archive into the PostgreSQL server that pg_config describes:
#   sudo ./install.sh                                   (pg_config on PATH)
#   sudo PG_CONFIG=/usr/pgsql-17/bin/pg_config ./install.sh
# The server's major must be the one in the archive's name. Then add pg_apikey to
# shared_preload_libraries, restart the server and CREATE EXTENSION pg_apikey.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PG_CONFIG=${PG_CONFIG:-pg_config}
built=$(basename "$here" | sed -n 's/.*-pg\([0-9][0-9]*\)$/\1/p')
major=$("$PG_CONFIG" --version | sed 's/^PostgreSQL \([0-9][0-9]*\).*/\1/')
if [ -n "$built" ] && [ "$built" != "$major" ]; then
    echo "install.sh: this archive is built for PostgreSQL $built, $PG_CONFIG is PostgreSQL $major" >&2
    exit 1
fi
libdir=$("$PG_CONFIG" --pkglibdir)
extdir="$("$PG_CONFIG" --sharedir)/extension"
install -m 755 "$here/lib/pg_apikey.so" "$libdir/"
for f in "$here"/extension/*; do
    install -m 644 "$f" "$extdir/"
done
echo "installed into $libdir and $extdir"
