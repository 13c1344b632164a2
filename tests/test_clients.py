"""The seeds' own client snippets, kept as files in tests/clients/ and changed here only in base URL
and key (and the survey seed's <ID> placeholder), run against the demo's HTTP stack: each must get
the answer its seed documents. Then direct SQL verification from psycopg and node-postgres, with
the key as a bind parameter.

Keys never appear in a failure message: outputs pass through redact() first."""

import ast
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT
from demo_stack import POSTGREST, Secret, check, demo_stack, redact

PG_PORT, PGRST_PORT, NGINX_PORT = "54354", "54388", "54389"
CLIENTS = ROOT / "tests/clients"
NODE_MODULES = CLIENTS / "node_modules"

# What the seeds' pages wrote where the base URL and keys go.
COLDFLOW_BASE = "https://api.coldflow.com"
COLDFLOW_KEY = "cfk_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6a7b8c9d0e1f2"
SURVEY_BASE = "https://localhost:8000"
SURVEY_KEY = "ct_live_<your_key>"
CFT_USER_KEY = "kS9UayP3WU7cLQHi5XUW9GylaToRcUtCuY12MPCyyb0"
CFT_APP_KEY = "OWyHsuoAk74FLDGIGqrgWVBsffG32ndAhsyO1jeuU34"

missing = [p for p in (POSTGREST, NODE_MODULES / "axios", NODE_MODULES / "pg") if not p.exists()]
missing += [c for c in ("node", "curl") if not shutil.which(c)]
# On CI a missing tool is a broken set-up, not a reason to skip.
pytestmark = pytest.mark.skipif(bool(missing) and not os.environ.get("CI"),
                                reason=f"not installed (run make setup): {missing}")


@pytest.fixture(scope="module")
def stack():
    # log_statement = all: every statement reaches the log, so the test can see that the direct
    # SQL examples keep the key out of it.
    with demo_stack("clients", PG_PORT, PGRST_PORT, NGINX_PORT, "log_statement = 'all'") as s:
        yield s


@pytest.fixture(scope="module")
def keys(stack):
    k = {}
    _, k["coldflow"] = stack.create_key("alice", "coldflow")
    _, k["marketing"] = stack.create_key("alice", "marketing only", resource="marketing")
    expired_id, k["expired"] = stack.create_key("alice", "old", expires_in="30 days")
    _, k["survey"] = stack.create_key("alice", "surveys", format="ct_live")
    _, k["farmer"] = stack.create_key("alice", "farmer", format="cft")
    _, k["farm_app"] = stack.create_key("farm-app", "app", format="cft", kind="app")
    with stack.connect() as c:
        c.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 day' WHERE id = %s", (expired_id,))
    return k


def snippet(name, *replacements):
    """A snippet file with (seed text, our text) pairs replaced; each seed text must be there."""
    text = (CLIENTS / name).read_text()
    for old, new in replacements:
        check(old in text, f"{name} no longer contains {old!r}")
        text = text.replace(old, new)
    return Secret(text)


def run(cmd, source, env=None, secrets=()):
    """Run a snippet given on standard input; returns (exit code, stdout, stderr), redacted."""
    p = subprocess.run(cmd, input=source, capture_output=True, text=True, timeout=60, cwd=CLIENTS,
                       env={**os.environ, **(env or {})})
    return p.returncode, p.stdout, redact(p.stderr, *secrets)


def node_rendering(value):
    """How console.log prints a JSON value in this Node.js: the Node snippets print that way."""
    out = subprocess.run(["node", "-e", "console.log(JSON.parse(process.argv[1]))", json.dumps(value)],
                         capture_output=True, text=True, check=True)
    return out.stdout


# Each Coldflow snippet: how to run it, and how to read what it printed.
COLDFLOW = {
    "curl": ("coldflow_curl.sh", ["bash", "-s"], json.loads),
    "fetch": ("coldflow_fetch.mjs", ["node", "--input-type=module"], None),
    "axios": ("coldflow_axios.js", ["node", str(CLIENTS / "run_snippet.js")], None),
    "requests": ("coldflow_requests.py", ["python3", "-"], ast.literal_eval),
}
ALL_SUB_AGENCIES = [{"slug": "marketing", "name": "Marketing Agency"}, {"slug": "sales", "name": "Sales Agency"}]


def run_coldflow(stack, client, key):
    name, cmd, _ = COLDFLOW[client]
    return run(cmd, snippet(name, (COLDFLOW_BASE, stack.base), (COLDFLOW_KEY, key)), secrets=[key])


@pytest.mark.parametrize("client", list(COLDFLOW))
def test_coldflow_snippet_lists_sub_agencies(stack, keys, client):
    """"Unscoped Key: Has access to all sub-agencies you own"; a key scoped to one sees that one."""
    _, _, parse = COLDFLOW[client]
    for key, expected in [(keys["coldflow"], ALL_SUB_AGENCIES), (keys["marketing"], ALL_SUB_AGENCIES[:1])]:
        code, out, err = run_coldflow(stack, client, key)
        check(code == 0, f"{client} snippet failed ({code}): {err}")
        if parse:
            check(parse(out) == expected, f"{client} printed {redact(out)!r}, expected {expected!r}")
        else:
            check(out == node_rendering(expected), f"{client} printed {redact(out)!r}")


@pytest.mark.parametrize("client", list(COLDFLOW))
def test_coldflow_snippet_with_an_expired_key_gets_the_documented_401(stack, keys, client):
    """"Expired keys are automatically rejected with a 401 Unauthorized error. The API will return:
    'API key has expired'"."""
    code, out, err = run_coldflow(stack, client, keys["expired"])
    if client == "axios":  # axios rejects on a 4xx: the answer is in the error
        check(code == 1 and "status code 401" in err and "API key has expired" in err, f"axios: {err}")
    elif client == "fetch":
        check(code == 0 and "message: 'API key has expired'" in out, f"fetch printed {redact(out)!r}")
    else:
        body = COLDFLOW[client][2](out)
        check(code == 0 and body["message"] == "API key has expired", f"{client} printed {redact(out)!r}")


def survey_docs(out):
    """The survey seed's curl lines print JSON bodies back to back (curl -s adds no newline)."""
    docs, pos, dec = [], 0, json.JSONDecoder()
    out = out.strip()
    while pos < len(out):
        doc, pos = dec.raw_decode(out, pos)
        docs.append(doc)
        while pos < len(out) and out[pos].isspace():
            pos += 1
    return docs


SURVEY_1 = {"id": 1, "title": "Customer satisfaction", "owner": "alice", "org_id": 1}
SURVEY_1_METRICS = {"survey_id": 1, "responses": 3, "average_score": 4.00}


def run_survey(stack, name, cmd, key, survey_id):
    source = snippet(name, (SURVEY_BASE, stack.base), (SURVEY_KEY, key), ("<ID>", survey_id))
    return run(cmd, source, secrets=[key])


def test_survey_curl_examples(stack, keys):
    """List, one survey, its aggregate metrics (no PII); then the seed's troubleshooting answers:
    403 for a survey without rights, 404 for none, 401 for an invalid key."""
    code, out, err = run_survey(stack, "survey_curl.sh", ["bash", "-s"], keys["survey"], "1")
    check(code == 0, f"curl examples failed: {err}")
    listed, one, metrics = survey_docs(out)
    assert [s["id"] for s in listed] == [1, 3]
    assert one == SURVEY_1
    assert metrics == SURVEY_1_METRICS and "@" not in out

    _, out, _ = run_survey(stack, "survey_curl.sh", ["bash", "-s"], keys["survey"], "2")
    assert [d["code"] for d in survey_docs(out)[1:]] == ["APIKEY403", "APIKEY403"]
    _, out, _ = run_survey(stack, "survey_curl.sh", ["bash", "-s"], keys["survey"], "99")
    assert [d["code"] for d in survey_docs(out)[1:]] == ["APIKEY404", "APIKEY404"]
    _, out, _ = run_survey(stack, "survey_curl.sh", ["bash", "-s"], "ct_live_" + "A" * 43, "1")  # no such key
    assert [d["message"] for d in survey_docs(out)] == ["invalid API key"] * 3


def test_survey_python_example(stack, keys):
    code, out, err = run_survey(stack, "survey_requests.py", ["python3", "-"], keys["survey"], "1")
    check(code == 0, f"python example failed: {err}")
    listed, one, metrics = [ast.literal_eval(line) for line in out.splitlines()]
    assert [s["id"] for s in listed] == [1, 3]
    assert one == SURVEY_1
    assert metrics == SURVEY_1_METRICS


def test_cool_farm_tool_curl_lines(stack, keys):
    """Without keys: 403 forbidden. With the user key and the application key: 200 OK."""
    source = snippet("cft_curl.sh", ('""', f'"{stack.base}/cft/user/"'),
                     (CFT_USER_KEY, keys["farmer"]), (CFT_APP_KEY, keys["farm_app"]))
    code, out, err = run(["bash", "-s"], source, secrets=[keys["farmer"], keys["farm_app"]])
    check(code == 0, f"curl lines failed: {err}")
    # Status lines; the 403's body ends without a newline, so the next one follows it directly.
    assert re.findall(r"HTTP/[\d.]+ (\d{3})", out) == ["403", "200"]
    # The same lines with the two keys swapped: an application key is no user key.
    swapped = snippet("cft_curl.sh", ('""', f'"{stack.base}/cft/user/"'),
                      (CFT_USER_KEY, keys["farm_app"]), (CFT_APP_KEY, keys["farmer"]))
    _, out, _ = run(["bash", "-s"], swapped)
    assert re.findall(r"HTTP/[\d.]+ (\d{3})", out) == ["403", "403"]


# The direct SQL examples connect as an ordinary login role that carries keys, set up as the README
# advises for such roles: statements are logged (log_statement = all), parameters are not.
VERIFY = {
    "psycopg": ["python3", str(CLIENTS / "verify_psycopg.py")],
    "node-postgres": ["node", str(CLIENTS / "verify_pg.js")],
}


@pytest.fixture(scope="module")
def sql_env(stack):
    with stack.connect() as c:
        c.execute("CREATE ROLE key_checker LOGIN")
        c.execute("ALTER ROLE key_checker SET log_parameter_max_length = 0")
        c.execute("ALTER ROLE key_checker SET log_parameter_max_length_on_error = 0")
    return {"PGHOST": str(stack.socket_dir), "PGPORT": stack.pg_port, "PGUSER": "key_checker",
            "PGDATABASE": "apikey_demo"}


@pytest.mark.parametrize("client", list(VERIFY))
def test_direct_sql_verify_with_a_bind_parameter(stack, keys, sql_env, client):
    def verify(key):
        code, out, err = run(VERIFY[client], "", env={**sql_env, "API_KEY": key}, secrets=[key])
        check(bool(out.strip()), f"{client} printed nothing: {err}")
        return code, json.loads(out)

    # Results are taken apart outside the asserts: pytest would print a call's arguments, the key.
    code, info = verify(keys["coldflow"])
    assert code == 0
    assert (info["owner"], info["name"], info["format"], info["resource"]) == ("alice", "coldflow", "cfk", None)
    code, info = verify(keys["marketing"])
    assert code == 0 and info["resource"] == "marketing"
    expired = verify(keys["expired"])
    assert expired == (1, {"sqlstate": "28000", "message": "API key has expired"})
    unknown = verify("cfk_" + "0" * 64)
    assert unknown == (1, {"sqlstate": "28000", "message": "invalid API key"})
    code, info = verify("cfk_0123")
    assert code == 1 and info["sqlstate"] == "22P02" and "expected 68 characters" in info["message"]


def test_no_key_reached_the_server_log(stack, keys, sql_env):
    """Every statement was logged; none of them, nor any parameter, held a key."""
    log = stack.server_log()
    assert "apikey.verify($1)" in log  # the direct SQL examples' statements were logged
    leaked = [name for name, key in keys.items() if key[-24:] in log]
    assert leaked == [], "these keys reached the server log"
