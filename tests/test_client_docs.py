"""docs/clients.md, run as it stands: every ```python, ```js, ```sh and ```psql block of the page,
against a server of this module's own, with DATABASE_URL and API_KEY in the environment (where the
page tells an application to take them from) and keys made for each test. README.md's event
listener runs the same way.

Each such block follows a line `<!-- snippet: NAME -->`; a block without one fails the page, so
none goes unrun. Keys never appear in a failure message: the snippets print no key (checked), the
messages are built from their redacted output, and the keys are Secrets, looked up inside helpers
rather than compared in an assert."""

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import PGBIN, ROOT, own_cluster
from demo_stack import Secret, check, redact

PORT = "54367"
CLUSTER = "clientdocs"
DB = "app"
PAGE = ROOT / "docs/clients.md"
NODE_MODULES = ROOT / "tests/clients/node_modules"
SNIPPET = re.compile(r"^<!-- snippet: ([a-z0-9-]+) -->$")
RUN = {"python", "js", "sh", "psql"}
# The page's own mapping, restated: each refusal must come out as this HTTP status.
HTTP = {"22P02": 401, "28000": 401, "42501": 403, "53400": 429}
# The snippets the tests below run; the page must have exactly these.
RUNS_SNIPPETS = ["verify-python", "verify-node", "verify-psql-15", "verify-psql-16", "verify-psql-run",
                 "authenticate-python", "authenticate-node", "listen-python", "listen-node"]

missing = [c for c in ("node", "psql") if not shutil.which(c)]
missing += [str(p) for p in [NODE_MODULES / "pg"] if not p.exists()]
# On CI a missing tool is a broken set-up, not a reason to skip.
pytestmark = pytest.mark.skipif(bool(missing) and not os.environ.get("CI"),
                                reason=f"not installed (run make setup): {missing}")


def read_snippets(text):
    """{name: (lang, body)} of the marked blocks, and what is wrong with the page's marking."""
    found, problems, lines, i, last = {}, [], text.splitlines(), 0, ""
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            last = lines[i].strip() or last
            i += 1
            continue
        start, lang, body = i + 1, m.group(1), []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        mark, last = SNIPPET.match(last), "```"
        if lang not in RUN:
            if mark:
                problems.append(f"line {start}: a snippet marker before a ```{lang} block")
        elif not mark:
            problems.append(f"line {start}: ```{lang} block without a `<!-- snippet: NAME -->` line")
        elif mark.group(1) in found:
            problems.append(f"line {start}: a second snippet named {mark.group(1)}")
        else:
            found[mark.group(1)] = (lang, "\n".join(body) + "\n")
    return found, problems


SNIPPETS, MARKING = read_snippets(PAGE.read_text())


def snippet(name):
    check(name in SNIPPETS, f"docs/clients.md has no snippet {name}")
    return SNIPPETS[name]


def test_every_runnable_block_is_a_snippet_and_every_snippet_is_run():
    assert MARKING == []
    assert sorted(SNIPPETS) == sorted(RUNS_SNIPPETS)


def psql_of_major(at_least):
    """A psql binary of major `at_least` or later: the server's own first, then the majors the
    suite installs (tests/run-all.sh). None if there is none."""
    for path in [Path(PGBIN) / "psql", Path("/usr/local/pgsql-18/bin/psql"), Path("/usr/local/pgsql-16/bin/psql")]:
        if not path.exists():
            continue
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout
        m = re.search(r"\) (\d+)", out)
        if m and int(m.group(1)) >= at_least:
            return path
    return None


@pytest.fixture(scope="module")
def server():
    # log_statement = all: every statement reaches the log, so the last test can see that the
    # snippets that bind the key kept it out.
    with own_cluster(CLUSTER, PORT, DB, "log_statement = 'all'",
                     setup=(f"ALTER DATABASE {DB} SET apikey.creation_limit = 0",
                            "CREATE ROLE app LOGIN",
                            "ALTER ROLE app SET log_parameter_max_length = 0",
                            "ALTER ROLE app SET log_parameter_max_length_on_error = 0",
                            "CREATE ROLE apikey_ops LOGIN",
                            "SELECT apikey.grant_admin('apikey_ops')")) as connect:
        yield connect


def url(user):
    return f"postgresql://{user}@127.0.0.1:{PORT}/{DB}"


def make_key(server, owner, name, **options):
    """(id, key) of a key made by the superuser."""
    args = "".join(f", {k} => %({k})s" for k in options)
    with server() as c:
        key_id, key = c.execute(f"SELECT id, api_key::text FROM apikey.create(%(owner)s, %(name)s{args})",
                                {"owner": owner, "name": name, **options}).fetchone()
    return key_id, Secret(key)


# Keys that went to the server only as bind parameters: the server log must not hold them.
BOUND_KEYS = []


def env_for(user, key=None, **extra):
    env = {**os.environ, "DATABASE_URL": url(user), "NODE_PATH": str(NODE_MODULES),
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("API_KEY", None)
    if key is not None:
        env["API_KEY"] = key
    return env


def command(name, workdir):
    """The snippet written to a file in `workdir`, and the command that runs it."""
    lang, body = snippet(name)
    suffix, runner = {"python": (".py", "python3"), "js": (".js", "node"), "sh": (".sh", "bash")}[lang]
    path = workdir / (name + suffix)
    path.write_text(body)
    return [runner, str(path)]


def run(name, workdir, env, key):
    """Run a snippet to its end; (exit code, stdout, redacted stderr). Whatever it printed must
    hold no part of the key."""
    p = subprocess.run(command(name, workdir), capture_output=True, text=True, timeout=60,
                       cwd=workdir, env=env)
    for stream in (p.stdout, p.stderr):
        check(len(key) < 24 or key[-24:] not in stream, f"{name} printed the key it was given")
    return p.returncode, p.stdout, redact(p.stderr, key)


# What each verify snippet must say for each kind of key: the SQLSTATE, and the message (None: a
# key that verifies).
VERIFY_CASES = {
    "good": (None, None),
    "expired": ("28000", "API key has expired"),
    "revoked": ("28000", "invalid API key"),
    "disabled": ("28000", "API key is disabled"),
    "unknown": ("28000", "invalid API key"),
    "elsewhere": ("42501", "API key is not allowed from this address"),
    "malformed": ("22P02", 'API key has the wrong length for format "cfk": expected 68 characters, got 8'),
}


# The cases whose key exists: the others' keys are no secret, and the same in every test.
MADE = ["good", "expired", "revoked", "disabled", "elsewhere"]


@pytest.fixture
def verify_keys(server):
    """One key of each case of VERIFY_CASES, all of owner alice; "good" is as the page shows it."""
    keys = {}
    good_id, keys["good"] = make_key(server, "alice", "CI pipeline", scopes=["surveys:read"])
    expired_id, keys["expired"] = make_key(server, "alice", "old")
    revoked_id, keys["revoked"] = make_key(server, "alice", "revoked")
    disabled_id, keys["disabled"] = make_key(server, "alice", "paused")
    _, keys["elsewhere"] = make_key(server, "alice", "office only", allowed_ips=["10.0.0.0/8"])
    keys["unknown"] = Secret("cfk_" + "0" * 64)
    keys["malformed"] = Secret("cfk_0123")
    with server() as c:
        c.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 day' WHERE id = %s", (expired_id,))
        c.execute("SELECT apikey.revoke(%s)", (revoked_id,))
        c.execute("SELECT apikey.disable(%s)", (disabled_id,))
    return good_id, keys


def parse_http_line(name, out):
    """`STATUS JSON` (what the Python and Node snippets print) -> (status, value)."""
    m = re.fullmatch(r"(\d{3}) (.+)\n", out)
    check(m is not None, f"{name} printed {redact(out)!r}")
    return int(m.group(1)), json.loads(m.group(2))


@pytest.mark.parametrize("name", ["verify-python", "verify-node"])
def test_verify_from_a_driver(server, verify_keys, tmp_path, name):
    good_id, keys = verify_keys
    for case, (sqlstate, message) in VERIFY_CASES.items():
        code, out, err = run(name, tmp_path, env_for("app", keys[case]), keys[case])
        check(code == 0, f"{name} with the {case} key failed ({code}): {err}")
        status, value = parse_http_line(name, out)
        if sqlstate is None:
            check(status == 200, f"{name}: the {case} key got {status} {value!r}")
            check({**value, "id": int(value["id"])} ==
                  {"id": good_id, "owner": "alice", "name": "CI pipeline", "scopes": ["surveys:read"]},
                  f"{name}: the {case} key's record is {value!r}")
        else:
            check((status, value) == (HTTP[sqlstate], message),
                  f"{name}: the {case} key got {status} {value!r}, expected {HTTP[sqlstate]} {message!r}")
    BOUND_KEYS.extend(keys[case] for case in MADE)


@pytest.mark.parametrize("form", ["verify-psql-15", "verify-psql-16"])
def test_verify_from_psql(server, verify_keys, tmp_path, form):
    """The page's shell line runs the page's script, with a psql that can run it first on PATH:
    the server's own for the :'key' form, one of 16 or later for the \\bind form."""
    psql = psql_of_major(15 if form == "verify-psql-15" else 16)
    if psql is None:
        check(not os.environ.get("CI"), f"no psql for {form}")
        pytest.skip(f"no psql for {form} here")
    script = re.search(r"-f (\S+\.psql)", snippet("verify-psql-run")[1])
    check(script is not None, "the shell line of docs/clients.md runs no .psql file")
    (tmp_path / script.group(1)).write_text(snippet(form)[1])
    good_id, keys = verify_keys
    for case, (sqlstate, message) in VERIFY_CASES.items():
        env = env_for("app", keys[case], PATH=f"{psql.parent}{os.pathsep}{os.environ['PATH']}")
        code, out, err = run("verify-psql-run", tmp_path, env, keys[case])
        check(code == 0, f"{form} with the {case} key failed ({code}): {err}")
        want = f"ok {good_id} alice CI pipeline\n" if sqlstate is None else f"refused {sqlstate} {message}\n"
        check(out == want, f"{form}: the {case} key printed {redact(out)!r}, expected {want!r}")
    if form == "verify-psql-16":  # the psql 15 form puts the key in the statement text
        BOUND_KEYS.extend(keys[case] for case in MADE)


@pytest.mark.parametrize("name", ["authenticate-python", "authenticate-node"])
def test_authenticate_a_request(server, tmp_path, name):
    """Two requests an hour: the third is 429 with the seconds to wait; each 200 ran its query
    in the authenticated transaction (key_list shows the owner's keys to a non-administrator)."""
    owner = f"erin-{name}"
    _, key = make_key(server, owner, "reports", rate_limit=2, rate_period="1 hour")
    results = []
    for _ in range(3):
        code, out, err = run(name, tmp_path, env_for("app", key), key)
        check(code == 0, f"{name} failed ({code}): {err}")
        results.append(parse_http_line(name, out))
    listed = {"owner": owner, "keys": [{"name": "reports", "status": "active"}]}
    check(results[:2] == [(200, listed)] * 2, f"{name} printed {redact(str(results[:2]))}")
    status, body = results[2]
    check(status == 429 and set(body) == {"message", "retry_after"}
          and isinstance(body["retry_after"], int) and 0 < body["retry_after"] <= 1800
          and body["message"] == f"API key rate limit exceeded. Please try again in {body['retry_after']} seconds.",
          f"{name}: the third request got {status} {body!r}")

    _, expired = make_key(server, owner, "old")
    with server() as c:
        c.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 day' WHERE owner = %s AND name = 'old'",
                  (owner,))
    for case, key_, want in [("expired", expired, (401, {"message": "API key has expired"})),
                             ("malformed", Secret("cfk_0123"), (401, {"message": VERIFY_CASES["malformed"][1]}))]:
        code, out, err = run(name, tmp_path, env_for("app", key_), key_)
        check(code == 0, f"{name} with the {case} key failed ({code}): {err}")
        got = parse_http_line(name, out)
        check(got == want, f"{name}: the {case} key got {got!r}")
    BOUND_KEYS.extend([key, expired])


# Payloads anyone may send on the channel; a listener must outlive every one of them.
FORGED = ["x", "", "null", "[]", '"7"', "{}", '{"id": "nope"}', '{"id": 1e400}', '{"id": 1e30}',
          '{"id": -1}', '{"id": 99999999}', '{"id": [1]}', '{"id": {"id": 1}}']


class Listener:
    """A listener snippet running in the background; its output lines, as they come."""

    def __init__(self, cmd, cwd, env):
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def check_running(self):
        if self.proc.poll() is not None:
            check(False, f"the listener exited with {self.proc.returncode}: {redact(self.proc.stderr.read())}")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def listening(server, app_name, listener, timeout=30):
    """Wait until the listener's connection has run LISTEN."""
    deadline = time.time() + timeout
    with server() as c:
        while time.time() < deadline:
            listener.check_running()
            n, = c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                           " AND query = 'LISTEN apikey_events' AND state = 'idle'", (app_name,)).fetchone()
            if n:
                return
            time.sleep(0.1)
    check(False, "the listener never ran LISTEN")


def hear_forgeries_then_a_key(server, cmd, cwd, env, pattern):
    """Start the listener, send every FORGED payload, then create and revoke a key; the listener
    must print the two events (each line matching `pattern` % (event, key id)) and still run."""
    app_name = f"listener-{uuid.uuid4().hex[:8]}"
    listener = Listener(cmd, cwd, {**env, "PGAPPNAME": app_name})
    try:
        listening(server, app_name, listener)
        with server() as c:
            for payload in FORGED:
                c.execute("SELECT pg_notify('apikey_events', %s)", (payload,))
        key_id, _ = make_key(server, "dana", "nightly export")
        with server() as c:
            c.execute("SELECT apikey.revoke(%s)", (key_id,))
        heard, deadline = [], time.time() + 30
        while len(heard) < 2 and time.time() < deadline:
            listener.check_running()
            try:
                line = listener.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if " dana " in line:  # the worker may announce other keys' events meanwhile
                heard.append(line)
        expected = [pattern % ("created", key_id), pattern % ("revoked", key_id)]
        check(len(heard) == 2 and all(re.fullmatch(p, line) for p, line in zip(expected, heard)),
              f"the listener printed {[redact(line) for line in heard]!r}")
        listener.check_running()
    finally:
        listener.stop()


@pytest.mark.parametrize("name", ["listen-python", "listen-node"])
def test_listener_ignores_forged_payloads(server, tmp_path, name):
    hear_forgeries_then_a_key(server, command(name, tmp_path), tmp_path, env_for("apikey_ops"),
                              r"%s %d dana nightly export")


def test_readme_listener_ignores_forged_payloads(server, tmp_path):
    """README.md's listener connects with a DSN of its own (database app, role apikey_ops) and
    libpq's environment for the rest."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)
    listeners = [b for b in blocks if "LISTEN apikey_events" in b]
    check(len(listeners) == 1, f"README.md has {len(listeners)} Python listeners")
    script = tmp_path / "readme_listener.py"
    script.write_text(listeners[0])
    env = env_for("apikey_ops", PGHOST="127.0.0.1", PGPORT=PORT)
    # It prints the event's time first, and its detail last.
    hear_forgeries_then_a_key(server, ["python3", str(script)], tmp_path, env,
                              r"\S+ \S+ %s %d dana nightly export \{.*\}")


def test_no_bound_key_reached_the_server_log(server):
    """Every statement was logged (log_statement = all); none held a key passed as a parameter."""
    if not BOUND_KEYS:
        pytest.skip("no snippet ran in this session")
    log = (ROOT / ".run" / CLUSTER / "server.log").read_text(errors="replace")
    check("apikey.verify($1)" in log and "apikey.authenticate($1)" in log,
          "the snippets' statements were not logged")
    leaked = sum(1 for key in BOUND_KEYS if len(key) >= 24 and key[-24:] in log)
    check(leaked == 0, f"{leaked} key(s) passed as bind parameters reached the server log")
