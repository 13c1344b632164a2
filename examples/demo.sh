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

# The seeds' HTTP API: the RLS example schema, PostgREST and nginx in front of it.
"${PSQL[@]}" -q -d apikey_demo -v ON_ERROR_STOP=1 -f "$ROOT/examples/surveys_rls.sql" -f "$ROOT/examples/surveys_data.sql" \
    -f "$ROOT/examples/postgrest_api.sql" >/dev/null
"$ROOT/examples/api.sh" start demo "$PORT" apikey_demo 54390 54391
key=$("${PSQL[@]}" -d apikey_demo -Atc "SELECT api_key FROM apikey.create('alice', 'demo', '90 days', format => 'ct_live')")
cfk=$("${PSQL[@]}" -d apikey_demo -Atc "SELECT api_key FROM apikey.create('alice', 'marketing', resource => 'marketing')")
BASE=http://127.0.0.1:54391
cat <<MSG

== The HTTP API is up at $BASE (PostgREST 12.0.2 behind nginx). Try the seeds' requests:

API_KEY=$key
curl -s -H "Authorization: Bearer \$API_KEY" $BASE/api/surveys/
curl -s -H "Authorization: Bearer \$API_KEY" $BASE/api/surveys/1/
curl -s -H "Authorization: Bearer \$API_KEY" $BASE/api/surveys/1/metrics/responses/
curl -s -i -H "Authorization: Bearer \$API_KEY" $BASE/api/surveys/2/          # 403: bob's survey
curl -s -i $BASE/api/surveys/                                                  # 401: no key
curl -s -H "Authorization: Bearer $cfk" $BASE/api/sub-agencies               # scoped to marketing
curl -s -i -H "Authorization: Bearer $cfk" $BASE/api/sub-agencies/sales/users  # 403
curl -s -H "Authorization: Bearer \$API_KEY" -H 'Content-Type: application/json' \
     -d '{"name": "CI pipeline", "expires_in_days": 90}' $BASE/api/keys       # shown once; 5 per hour
curl -s -H "Authorization: Bearer \$API_KEY" $BASE/api/keys                   # masked
curl -s -d username=alice -d password=alice-password $BASE/user/key/           # Cool Farm Tool

The API Keys page (sign in by pasting \$API_KEY): $BASE/keys/

The demo cluster is still running:  psql -h $dir -p $PORT -U postgres apikey_demo
Stop everything with: make demo-stop
MSG
