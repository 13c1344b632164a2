"""Fixtures for the client-side tests: a real PostgreSQL 15 cluster with pg_apikey preloaded,
started once per test session on a loopback port and stopped afterwards."""

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def server_log() -> str:
    return (cluster_dir() / "server.log").read_text(errors="replace")
