"""Fixtures for the client-side tests: a real PostgreSQL cluster with pg_apikey preloaded,
started once per test session on a loopback port and stopped afterwards. The server is the major
of $PG_CONFIG (Debian's 15 by default; tests/run-all.sh runs the suite once per tested major)."""

import contextlib
import os
import random
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

# Failing tests' reports go through secret_redaction: no key, digest or secret in test output.
pytest_plugins = ("secret_redaction",)

ROOT = Path(__file__).resolve().parent.parent
PG_CONFIG = os.environ.setdefault("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")


def _pg_config(flag: str) -> str:
    return subprocess.run([PG_CONFIG, flag], check=True, capture_output=True, text=True).stdout.strip()


PGBIN = _pg_config("--bindir")
PG_MAJOR = int(_pg_config("--version").split()[1].split(".")[0])
HAS_PGCRYPTO = (Path(_pg_config("--sharedir")) / "extension" / "pgcrypto.control").exists()
# The PostgreSQL 18 build used here ships no contrib pgcrypto; what needs it says so and is skipped
# there only.
needs_pgcrypto = pytest.mark.skipif(not HAS_PGCRYPTO,
                                    reason=f"PostgreSQL {PG_MAJOR} here has no pgcrypto")
PORT = int(os.environ.get("ITEST_PORT", "54342"))
CLUSTER = "itest"


def cluster_dir() -> Path:
    return ROOT / ".run" / CLUSTER


def dsn(dbname: str, user: str = "postgres") -> str:
    return f"host={cluster_dir()} port={PORT} user={user} dbname={dbname}"


@pytest.fixture(scope="session")
def cluster():
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", CLUSTER, str(PORT)], check=True)
    try:
        yield cluster_dir()
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", CLUSTER], check=False)


@pytest.fixture
def db(cluster):
    """A fresh database with the extension; returns a connect(user=...) function."""
    name = "it_" + uuid.uuid4().hex[:10]
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(dsn(name), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_apikey")

    def connect(user: str = "postgres", autocommit: bool = True, dbname: str = name):
        return psycopg.connect(dsn(dbname, user), autocommit=autocommit)

    connect.name = name
    yield connect
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_role(conn, prefix: str = "r", login: bool = True) -> str:
    """A fresh role of a unique name (LOGIN unless `login` is False)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {name} {'LOGIN' if login else 'NOLOGIN'}")
    return name


def new_key(conn, owner, name="k", **kw):
    """apikey.create(owner, name, **kw) -> (id, key text)."""
    args = "".join(f", {k} => %({k})s" for k in kw)
    return conn.execute(f"SELECT id, api_key::text FROM apikey.create(%(o)s, %(n)s{args})",
                        dict(o=owner, n=name, **kw)).fetchone()


def server_log() -> str:
    return (cluster_dir() / "server.log").read_text(errors="replace")


@contextlib.contextmanager
def own_cluster(name: str, port: str, db: str, *conf: str, setup: tuple = ()):
    """A module's own throwaway cluster (`conf`: extra postgresql.conf lines) with database `db`,
    pg_apikey installed and `setup` run in it; yields connect(dbname=db, autocommit=True,
    user="postgres")."""
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", name, port, *conf], check=True)

    def conn(dbname=db, autocommit=True, user="postgres"):
        return psycopg.connect(f"host={ROOT / '.run' / name} port={port} user={user} dbname={dbname}",
                               autocommit=autocommit)
    try:
        with conn("postgres") as c:
            c.execute(f"CREATE DATABASE {db}")
        with conn() as c:
            c.execute("CREATE EXTENSION pg_apikey")
            for statement in setup:
                c.execute(statement)
        yield conn
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", name], check=False)


def race_revokes_against_readers(keys, open_reader, open_revoker):
    """Eight readers (open_reader(): a connection as each test wants its cache) verify random keys
    of `keys` [(id, key)] while four revokers (open_revoker()) revoke them one by one, 2 ms apart.
    Returns the ids of keys that verified in a verify that *started* after their revoke returned:
    each one a stale cache entry. Every key is revoked when it returns."""
    revoked_at, violations = {}, []
    stop, lock = threading.Event(), threading.Lock()

    def read(seed):
        rnd = random.Random(seed)
        with open_reader() as c:
            while not stop.is_set():
                kid, k = rnd.choice(keys)
                started = time.monotonic()
                try:
                    c.execute("SELECT apikey.verify(%s)", (k,))
                    ok = True
                except psycopg.errors.InvalidAuthorizationSpecification:
                    ok = False
                with lock:
                    done = revoked_at.get(kid)
                if ok and done is not None and started > done:
                    violations.append(kid)

    def revoke(part):
        with open_revoker() as c:
            for kid, _ in part:
                c.execute("SELECT apikey.revoke(%s)", (kid,))
                with lock:
                    revoked_at[kid] = time.monotonic()
                time.sleep(0.002)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in readers:
        t.start()
    time.sleep(0.5)
    revokers = [threading.Thread(target=revoke, args=(keys[i::4],)) for i in range(4)]
    for t in revokers:
        t.start()
    for t in revokers:
        t.join()
    time.sleep(0.3)
    stop.set()
    for t in readers:
        t.join()
    assert len(revoked_at) == len(keys)
    return violations


def wait_for(predicate, timeout=20.0):
    """The first true value of `predicate()` (errors from the server count as not yet), or an
    AssertionError after `timeout` seconds: for what replication or a worker does in its time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except psycopg.Error:
            pass
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")
