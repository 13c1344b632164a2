#!/usr/bin/env bash
# `make demo`: a throwaway cluster under .run/demo (port 54329, pg_apikey preloaded), a database
# with the extension, and a psql walk through the key lifecycle. The cluster keeps running;
# `make demo-stop` stops it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${DEMO_PORT:-54329}
"$ROOT/tests/cluster.sh" start demo "$PORT"
dir=$("$ROOT/tests/cluster.sh" dir demo)
PSQL=(psql -X -h "$dir" -p "$PORT" -U postgres)
"${PSQL[@]}" -q -d postgres -c "CREATE DATABASE apikey_demo"
"${PSQL[@]}" -q -d apikey_demo -c "CREATE EXTENSION pg_apikey"
"${PSQL[@]}" -d apikey_demo -f "$ROOT/examples/demo.sql"
cat <<MSG

The demo cluster is still running. Try it yourself:
  psql -h $dir -p $PORT -U postgres apikey_demo
Stop it with: make demo-stop
MSG
