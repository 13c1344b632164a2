"""Limiter state across a backend crash and a restart: the postmaster's crash restart reinitialises
shared memory (limits restart fresh, as documented), keys survive, and nothing is left locked."""

import os
import signal
import subprocess
import time

import psycopg
import pytest

from conftest import PGBIN, ROOT

PORT = "54345"


def connect():
    return psycopg.connect(f"host={ROOT / '.run/crash'} port={PORT} user=postgres dbname=postgres", autocommit=True)


def wait_for_server():
    for _ in range(100):
        try:
            with connect() as c:
                c.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise AssertionError("server did not come back")


@pytest.fixture
def crash_cluster():
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", "crash", PORT], check=True)
    try:
        yield
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", "crash"], check=False)


def test_a_killed_backend_resets_limits_and_keeps_keys(crash_cluster):
    with connect() as c:
        c.execute("CREATE EXTENSION pg_apikey")
        key = c.execute(
            "SELECT api_key::text FROM apikey.create('crash', 'k', rate_limit => 1, rate_period => '1 hour')"
        ).fetchone()[0]
        c.execute("SELECT apikey.authenticate(%s)", (key,))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT apikey.authenticate(%s)", (key,))
        victim = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        # SIGKILL while it is idle: the postmaster must reinitialise shared memory.
        os.kill(victim, signal.SIGKILL)
    time.sleep(0.5)
    wait_for_server()
    with connect() as c:
        # Limits restart fresh (shared memory is rebuilt); the key itself is durable.
        assert c.execute("SELECT apikey.authenticate(%s)", (key,)).fetchone()[0] == "crash"
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT apikey.authenticate(%s)", (key,))
        # No limiter lock was left held: every partition still answers.
        c.execute("SELECT count(apikey.rate_limit('p' || g, 5, '1 minute')) FROM generate_series(1, 200) g")


def test_a_clean_restart_also_starts_limits_fresh(crash_cluster):
    with connect() as c:
        c.execute("CREATE EXTENSION pg_apikey")
        c.execute("SELECT apikey.rate_limit('r', 1, '1 hour')")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT apikey.rate_limit('r', 1, '1 hour')")
    data = ROOT / ".run/crash/data"
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_ctl", "-D", str(data),
                    "-m", "fast", "-w", "restart", "-l", str(ROOT / ".run/crash/startup.log")],
                   check=True, capture_output=True)
    wait_for_server()
    with connect() as c:
        assert c.execute("SELECT apikey.rate_limit('r', 1, '1 hour')").fetchone()[0] == 0
