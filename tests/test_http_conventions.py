"""HTTP conventions at the edge (nginx + PostgREST 12.0.2 + the pre-request), as clients rely on
them: WWW-Authenticate challenges, the bearer scheme in any case, a malformed key of any shape
answered by pg_apikey, whitespace around keys, the Cool Farm Tool's key parameters, keys hidden
from endpoint code, CORS closed unless configured, Coldflow's "error" field and the expiry hint,
validation in the API's own words, and nginx's own refusals in JSON."""

import http.client
import os
import time

import pytest
import requests

from conftest import ROOT
from demo_stack import POSTGREST, check, demo_stack

PG_PORT, PGRST_PORT, NGINX_PORT = "54379", "54394", "54395"
ALLOWED_ORIGIN = "https://app.example"
ERROR_LOG = ROOT / ".run/http-api/nginx-error.log"

pytestmark = pytest.mark.skipif(not POSTGREST.exists(), reason="PostgREST not installed (run make setup)")


@pytest.fixture(scope="module")
def stack():
    os.environ["CORS_ORIGINS"] = ALLOWED_ORIGIN
    try:
        with demo_stack("http", PG_PORT, PGRST_PORT, NGINX_PORT) as s:
            with s.connect() as c:
                # An endpoint that shows what endpoint code can read of the request's headers.
                c.execute("""CREATE FUNCTION api.echo_headers() RETURNS json LANGUAGE sql STABLE
                             AS $$ SELECT current_setting('request.headers', true)::json $$""")
                c.execute("GRANT EXECUTE ON FUNCTION api.echo_headers() TO PUBLIC")
                c.execute("NOTIFY pgrst, 'reload schema'")
            deadline = time.time() + 20
            while requests.get(f"{s.base}/rpc/echo_headers").status_code == 404:
                assert time.time() < deadline, "PostgREST never saw the new endpoint"
                time.sleep(0.2)
            # nginx appends to its error log across starts: this module reads its own lines only.
            s.error_log_start = ERROR_LOG.stat().st_size if ERROR_LOG.exists() else 0
            yield s
    finally:
        os.environ.pop("CORS_ORIGINS", None)


@pytest.fixture(scope="module")
def keys(stack):
    return {
        "alice": stack.create_key("alice", "conventions", format="ct_live")[1],
        "expired": stack.create_key("alice", "old", expires_in="1 second", format="ct_live")[1],
        "app": stack.create_key("farm", "app", kind="app", format="cft")[1],
        "user": stack.create_key("alice", "farmer", format="cft")[1],
        "other_user": stack.create_key("bob", "farmer", format="cft")[1],
    }


def error_log(stack):
    """What nginx wrote to its error log since this module's stack started."""
    with open(ERROR_LOG, errors="replace") as f:
        f.seek(stack.error_log_start)
        return f.read()


def get(stack, path, **kw):
    return requests.get(f"{stack.base}{path}", timeout=10, **kw)


def test_every_401_carries_a_bearer_challenge(stack, keys):
    none = get(stack, "/api/surveys/")
    assert none.status_code == 401
    assert none.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    bad = get(stack, "/api/surveys/", headers={"Authorization": "Bearer ct_live_" + "A" * 43})
    assert bad.status_code == 401
    assert bad.headers["WWW-Authenticate"] == 'Bearer realm="api", error="invalid_token"'
    # The same through X-Api-Key: the challenge names the scheme a client can use.
    bad = get(stack, "/api/surveys/", headers={"X-Api-Key": "ct_live_" + "A" * 43})
    assert bad.headers["WWW-Authenticate"] == 'Bearer realm="api", error="invalid_token"'
    # A 403 (a valid key without the right) challenges nothing.
    ok = get(stack, "/api/surveys/", headers={"Authorization": f"Bearer {keys['alice']}"})
    assert ok.status_code == 200 and "WWW-Authenticate" not in ok.headers


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(stack, keys, scheme):
    r = get(stack, "/api/surveys/", headers={"Authorization": f"{scheme} {keys['alice']}"})
    check(r.status_code == 200, f"{scheme}: {r.status_code}")


@pytest.mark.parametrize("token", ["abc", "a.b", "a.b.c.d", "ct_live_!!!", "x y", "ct_live_" + "A" * 42 + ".",
                                   "%00", "é", "\vabc", "\fabc", "\xa0abc"])
def test_a_malformed_key_of_any_shape_is_pg_apikeys_401(stack, token):
    r = get(stack, "/api/surveys/", headers={"Authorization": ("Bearer " + token).encode("latin-1")})
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["code"] == "APIKEY401" and body["message"] == "invalid API key", body
    assert "PGRST" not in r.text and "JWS" not in r.text


def raw_get(stack, path, headers):
    """A GET with header lines exactly as given, repeated names included (requests refuses padded
    values and merges repeated names). `headers`: a dict or a list of (name, value)."""
    conn = http.client.HTTPConnection("127.0.0.1", int(NGINX_PORT), timeout=10)
    try:
        conn.putrequest("GET", path)
        for name, value in (headers.items() if isinstance(headers, dict) else headers):
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_spaces_and_tabs_around_a_key_are_ignored(stack, keys):
    for value in [f"  {keys['alice']}", f"{keys['alice']}\t", f"\t {keys['alice']} \t"]:
        check(raw_get(stack, "/api/surveys/", {"X-Api-Key": value}) == 200, "padded X-Api-Key refused")
    check(raw_get(stack, "/api/surveys/", {"Authorization": f"Bearer \t  {keys['alice']} \t"}) == 200,
          "padded bearer token refused")
    # Straight to the pre-request (as PostgREST shows them, unstripped): the key itself is trimmed.
    with stack.connect() as c:
        c.execute("BEGIN")
        c.execute("SELECT set_config('request.headers', json_build_object('x-api-key', %s::text)::text, true)",
                  (f" \t{keys['alice']}\t ",))
        c.execute("SELECT apikey.pre_request()")
        assert c.execute("SELECT apikey.current_owner()").fetchone()[0] == "alice"
        c.execute("ROLLBACK")


def test_a_key_sent_twice_with_different_values_is_refused(stack, keys):
    alice, bob = keys["alice"], keys["user"]
    check(raw_get(stack, "/api/surveys/", [("X-Api-Key", alice), ("X-Api-Key", alice)]) == 200,
          "the same key twice was refused")
    check(raw_get(stack, "/api/surveys/", [("X-Api-Key", alice), ("X-Api-Key", bob)]) == 401,
          "two different X-Api-Key lines were accepted")
    check(raw_get(stack, "/api/surveys/", [("X-Api-Key", bob), ("X-Api-Key", alice)]) == 401,
          "two different X-Api-Key lines were accepted (valid one last)")
    check(raw_get(stack, "/api/surveys/", [("Authorization", f"Bearer {alice}"), ("X-Api-Key", bob)]) == 401,
          "a bearer key and a different X-Api-Key were accepted")
    check(raw_get(stack, "/api/surveys/", [("Authorization", f"Bearer {alice}"), ("X-Api-Key", alice)]) == 200,
          "the same key as bearer and X-Api-Key was refused")


def test_the_cool_farm_tools_keys_as_request_parameters(stack, keys):
    app, user = keys["app"], keys["user"]
    r = get(stack, "/cft/user/", params={"api_app_key": app, "api_key": user})
    assert r.status_code == 200 and r.json() == {"user": "alice", "application": "farm"}
    # Mixed: the application key as a header, the user key as a parameter.
    r = get(stack, "/cft/user/", params={"api_key": user}, headers={"X-Api-App-Authorization": app})
    assert r.status_code == 200
    # The same key in a header and a parameter is one key.
    r = get(stack, "/cft/user/", params={"api_key": user, "api_app_key": app},
            headers={"X-Api-Authorization": user})
    assert r.status_code == 200
    # Two different user keys: refused, whichever would have worked.
    r = get(stack, "/cft/user/", params={"api_key": keys["other_user"], "api_app_key": app},
            headers={"X-Api-Authorization": user})
    assert r.status_code == 403 and r.json()["message"] == "invalid API key"
    # The parameters never reach the endpoint as arguments (PostgREST would answer 404 PGRST202).
    r = get(stack, "/cft/user/", params={"api_app_key": app, "api_key": user, "other": "1"})
    assert r.status_code == 200
    # In a form body too; the same rules.
    post = lambda data, **kw: requests.post(f"{stack.base}/cft/user/", data=data, timeout=10, **kw)
    r = post({"api_app_key": app, "api_key": user})
    assert r.status_code == 200 and r.json() == {"user": "alice", "application": "farm"}
    r = post({"api_key": user}, headers={"X-Api-App-Authorization": app, "X-Api-Authorization": user})
    assert r.status_code == 200
    r = post({"api_key": keys["other_user"]}, headers={"X-Api-App-Authorization": app, "X-Api-Authorization": user})
    assert r.status_code == 403 and r.json()["message"] == "invalid API key"
    r = post({"api_app_key": app}, params={"api_key": user})
    assert r.status_code == 200


def test_a_parameter_cannot_add_headers_or_requests_upstream(stack, keys):
    """A decoded parameter is put into a header nginx sends PostgREST: a CR or LF in it would
    start a header (an X-Forwarded-For past an allow-list) or a whole request of the client's
    making on a pooled connection. Anything but printable ASCII is refused as a malformed key."""
    app, user = keys["app"], keys["user"]
    for sep in ["%0d%0a", "%0a", "%0d", "%00"]:
        query = f"api_app_key={app}&api_key={user}{sep}X-Forwarded-For:%20203.0.113.7"
        r = get(stack, f"/cft/user/?{query}")
        check(r.status_code == 403 and r.json()["message"] == "invalid API key", f"{sep}: {r.status_code}")
        r = requests.post(f"{stack.base}/cft/user/", data=query, timeout=10,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        check(r.status_code == 403, f"form {sep}: {r.status_code}")
    smuggled = ("x\r\n\r\nPOST /rpc/create_key HTTP/1.1\r\nHost: x\r\nContent-Length: 120\r\n\r\nname=")
    r = get(stack, "/cft/user/", params={"api_app_key": app, "api_key": smuggled})
    assert r.status_code == 403
    # The next request on the pool is answered as itself.
    r = get(stack, "/api/surveys/", headers={"X-Api-Key": keys["alice"]})
    assert r.status_code == 200 and isinstance(r.json(), list)


def test_every_parameter_counts_and_forms_stay_in_memory(stack, keys):
    app, user = keys["app"], keys["user"]
    # Past the 1,000 parameters a parser stops at by default, a second key is still seen.
    filler = "&".join(f"a{i}=1" for i in range(1000))
    r = get(stack, f"/cft/user/?{filler}&api_key=garbage",
            headers={"X-Api-App-Authorization": app, "X-Api-Authorization": user})
    assert r.status_code == 403
    r = requests.post(f"{stack.base}/cft/user/", data=f"{filler}&api_key=garbage", timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded",
                               "X-Api-App-Authorization": app, "X-Api-Authorization": user})
    assert r.status_code == 403
    # A chunked form near the size limit is still read in memory (a body written to a file
    # could not be read, and would leave the key on disk).
    def chunks():
        body = f"api_key=garbage&pad={'x' * 60000}".encode()
        for i in range(0, len(body), 16384):
            yield body[i:i + 16384]
    r = requests.post(f"{stack.base}/cft/user/", data=chunks(), timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded",
                               "X-Api-App-Authorization": app, "X-Api-Authorization": user})
    assert r.status_code == 403
    assert not any((ROOT / ".run/http-api/nginx-tmp/body").glob("*"))


def test_key_parameters_are_read_only_where_they_are_keys(stack, keys):
    """Elsewhere than /cft/user/ a query string or a form body belongs to the endpoint: a field
    named api_key is not a key, and a large body is no refusal."""
    alice = {"X-Api-Key": keys["alice"]}
    r = requests.get(f"{stack.base}/api/surveys/", data={"api_key": "x"}, headers=alice, timeout=10)
    assert r.status_code == 200
    r = requests.get(f"{stack.base}/api/surveys/", data={"pad": "x" * 20000}, headers=alice, timeout=10)
    assert r.status_code == 200
    # In a query string it is the endpoint's argument (this one takes none: PostgREST's 404),
    # not a second key, and the answer does not repeat it.
    r = get(stack, f"/api/surveys/?api_key={keys['user']}", headers=alice)
    assert r.status_code == 404 and "PGRST202" in r.text
    check(keys["user"] not in r.text, "the answer repeats the parameter")
    # Nor does nginx write a line (with the request line, keys included) for each request.
    log = error_log(stack)
    assert "uninitialized" not in log
    check(keys["user"] not in log, "a key is in nginx's error log")
    # DELETE's query string is not PostgREST's to read either.
    r = requests.delete(f"{stack.base}/api/keys/999999?select=nope", headers=alice, timeout=10)
    assert r.status_code == 404, r.text


def test_a_single_key_and_a_pair_together_are_refused(stack, keys):
    r = get(stack, "/cft/user/", headers={"X-Api-Key": keys["alice"], "X-Api-App-Authorization": keys["app"],
                                          "X-Api-Authorization": keys["user"]})
    assert r.status_code == 403 and r.json()["message"] == "invalid API key"
    # Outside /cft/user/ too: the pair's headers pass the same checks everywhere.
    r = get(stack, "/api/surveys/", headers={"X-Api-Key": keys["alice"], "X-Api-Authorization": keys["user"]})
    assert r.status_code == 403


def test_ids_are_digits_without_leading_zeros(stack, keys):
    r = requests.post(f"{stack.base}/api/keys/02/revoke", timeout=10, headers={"X-Api-Key": keys["alice"]})
    assert r.status_code == 404 and r.json()["error"] == "Not Found"
    r = requests.post(f"{stack.base}/api/keys/2/rotate?grace_seconds=007", timeout=10,
                      headers={"X-Api-Key": keys["alice"]})
    assert r.status_code == 400 and r.json()["code"] == "APIKEY400"


def test_no_key_reaches_nginxs_error_log(stack, keys):
    app, user = keys["app"], keys["user"]
    requests.post(f"{stack.base}/cft/user/?api_app_key={app}&api_key={user}", data="x" * 100_000, timeout=10)
    r = raw_get(stack, "/cft/user/", {"Authorization": "Bearer x\xff"})
    log = error_log(stack)
    check(app not in log and user not in log and keys["alice"] not in log, "a key is in nginx's error log")


def test_endpoint_code_cannot_read_the_key(stack, keys):
    for headers in [{"X-Api-Key": keys["alice"]}, {"Authorization": f"Bearer {keys['alice']}"}]:
        r = get(stack, "/rpc/echo_headers", headers=headers)
        check(r.status_code == 200, f"echo_headers: {r.status_code}")
        check(keys["alice"] not in r.text and keys["alice"][8:20] not in r.text,
              "an endpoint read the caller's key from request.headers")
        shown = {k.lower() for k in r.json()}
        assert not shown & {"x-api-key", "authorization", "x-api-authorization", "x-api-app-authorization"}
        assert "user-agent" in shown  # the other headers are still there


def test_cors_is_closed_unless_the_origin_is_allowed(stack, keys):
    stranger = get(stack, "/api/surveys/", headers={"X-Api-Key": keys["alice"], "Origin": "https://evil.example"})
    assert stranger.status_code == 200
    assert "Access-Control-Allow-Origin" not in stranger.headers
    allowed = get(stack, "/api/surveys/", headers={"X-Api-Key": keys["alice"], "Origin": ALLOWED_ORIGIN})
    assert allowed.headers.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN
    exposed = ",".join(allowed.headers.get_all("Access-Control-Expose-Headers")
                       if hasattr(allowed.headers, "get_all") else [allowed.headers["Access-Control-Expose-Headers"]])
    assert "Retry-After" in exposed and "WWW-Authenticate" in exposed
    preflight = requests.options(f"{stack.base}/api/surveys/", timeout=10, headers={
        "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-api-key"})
    assert preflight.headers.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN
    assert "x-api-key" in preflight.headers.get("Access-Control-Allow-Headers", "").lower()


def test_cors_is_closed_by_default(stack):
    """examples/api.sh without CORS_ORIGINS: no origin is allowed (PostgREST alone would say *)."""
    conf = (ROOT / ".run/http-api/postgrest.conf").read_text()
    assert f'server-cors-allowed-origins = "{ALLOWED_ORIGIN}"' in conf
    env = {k: v for k, v in os.environ.items() if k != "CORS_ORIGINS"}
    import subprocess
    subprocess.run([str(ROOT / "examples/api.sh"), "start", "http", PG_PORT, "apikey_demo", PGRST_PORT,
                    NGINX_PORT], check=True, capture_output=True, env=env)
    try:
        r = get(stack, "/api/surveys/", headers={"Origin": "https://anyone.example"})
        assert r.status_code == 401 and "Access-Control-Allow-Origin" not in r.headers
    finally:
        subprocess.run([str(ROOT / "examples/api.sh"), "start", "http", PG_PORT, "apikey_demo", PGRST_PORT,
                        NGINX_PORT], check=True, capture_output=True, env={**env, "CORS_ORIGINS": ALLOWED_ORIGIN})


def test_error_bodies_carry_coldflows_error_field_and_the_hint(stack, keys):
    time.sleep(1.1)  # the "expired" key's second has passed
    r = get(stack, "/api/surveys/", headers={"Authorization": f"Bearer {keys['expired']}"})
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "Unauthorized" and body["message"] == "API key has expired"
    assert body["hint"] == "Create a new key to restore access."
    assert set(body) >= {"code", "message", "details", "hint", "error"}


def test_validation_errors_are_400_in_the_apis_words(stack, keys):
    post = lambda body: requests.post(f"{stack.base}/api/keys", json=body, timeout=10,
                                      headers={"X-Api-Key": keys["alice"]})
    r = post({})
    assert r.status_code == 400 and r.json()["message"] == "name is required", r.text
    r = post({"name": "x", "expires_in_days": 30.5})
    assert r.status_code == 400 and "expires_in_days must be" in r.json()["message"], r.text
    r = post({"name": "x", "expires_in_days": "soon"})
    assert r.status_code == 400 and r.json()["error"] == "Bad Request", r.text


def test_nginx_answers_its_own_refusals_in_json(stack, keys):
    r = get(stack, "/user/key/")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.headers["Content-Type"].startswith("application/json") and r.json()["code"] == "APIKEY405"
    r = requests.put(f"{stack.base}/api/keys/1", timeout=10, headers={"X-Api-Key": keys["alice"]})
    assert r.status_code == 405 and r.headers["Allow"] == "DELETE" and r.json()["error"] == "Method Not Allowed"
    r = requests.post(f"{stack.base}/api/keys", data="x" * 100_000, timeout=10,
                      headers={"X-Api-Key": keys["alice"], "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "APIKEY413"
    r = get(stack, "/nowhere")
    assert r.status_code == 404 and r.json()["code"] == "APIKEY404"
