"""apikey.stat and the Prometheus query file: counts that follow what clients did, rows that
follow who asks, and the real prometheus-postgres-exporter serving them over HTTP."""

import os
import re
import shutil
import socket
import subprocess
import time

import psycopg
import pytest
import requests

from conftest import ROOT, new_role, own_cluster

PORT = "54374"
EXPORTER_PORT = 54375
EXPORTER = shutil.which("prometheus-postgres-exporter")
QUERIES = ROOT / "examples/monitoring/pg_apikey.yaml"
UNKNOWN = "cfk_" + "0" * 64


@pytest.fixture(scope="module")
def cluster():
    with own_cluster("metrics", PORT, "app", "apikey.usage_flush_interval = 1", "apikey.creation_limit = 0") as conn:
        with conn("postgres") as c:
            c.execute("CREATE DATABASE other")
        with conn("other") as c:
            c.execute("CREATE EXTENSION pg_apikey")
        yield conn


def stat(c, column, db="app"):
    return c.execute(f"SELECT {column} FROM apikey.stat WHERE datname = %s", (db,)).fetchone()[0]


def refuse(c, sql, *args):
    with pytest.raises(psycopg.Error) as e:
        c.execute(sql, args)
    return e.value.sqlstate


def test_counts_follow_what_clients_did(cluster):
    with cluster() as c:
        c.execute("SELECT apikey.stat_reset()")
        key = c.execute("SELECT api_key::text FROM apikey.create('m', 'ok', scopes => ARRAY['read'])").fetchone()[0]
        gone = c.execute("SELECT api_key::text FROM apikey.create('m', 'gone')").fetchone()[0]
        c.execute("SELECT apikey.revoke(id) FROM apikey.key_list WHERE name = 'gone'")
        old = c.execute("SELECT api_key::text FROM apikey.create('m', 'old', expires_in => '1 second')").fetchone()[0]
        for _ in range(3):
            c.execute("SELECT apikey.verify(%s)", (key,))
        time.sleep(1.2)
        assert refuse(c, "SELECT apikey.verify(%s)", UNKNOWN) == "28000"
        assert refuse(c, "SELECT apikey.verify(%s)", gone) == "28000"
        assert refuse(c, "SELECT apikey.verify(%s)", "cfk_short") == "22P02"
        assert refuse(c, "SELECT apikey.verify(%s)", old) == "28000"
        c.execute("BEGIN")
        c.execute("SELECT apikey.authenticate(%s)", (key,))
        assert refuse(c, "SELECT apikey.require_scope('admin')") == "42501"
        c.execute("ROLLBACK")
        row = c.execute("""SELECT verifications, refused_invalid, refused_malformed, refused_expired,
                                  refused_scope, refused_disabled + refused_address + refused_credits
                                  + refused_rate_limited + refused_other
                             FROM apikey.stat WHERE datname = 'app'""").fetchone()
        assert row == (8, 2, 1, 1, 1, 0)
        lookups = c.execute("""SELECT backend_cache_hits + shared_cache_hits + cache_misses, cache_misses
                                 FROM apikey.stat WHERE datname = 'app'""").fetchone()
        # Accepted keys only (three verifies, one authenticate): the refused ones count by reason.
        assert lookups[0] == 4 and lookups[1] >= 1
    # Another database counts its own: nothing of the above.
    with cluster("other") as c:
        assert stat(c, "verifications", "other") == 0


def test_the_worker_flush_shows_as_a_small_lag(cluster):
    with cluster() as c:
        key = c.execute("SELECT api_key::text FROM apikey.create('m', 'lag')").fetchone()[0]
        c.execute("SELECT apikey.verify(%s)", (key,))
        deadline = time.time() + 20
        while time.time() < deadline:
            pid, lag = c.execute("SELECT worker_pid, extract(epoch FROM flush_lag) FROM apikey.stat "
                                 "WHERE datname = 'app'").fetchone()
            if pid and lag is not None and lag < 5:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the worker never reported a flush")


def test_a_revoked_key_reads_like_one_never_issued(cluster):
    """Refused keys are counted by reason only: where their row was found (a revoked key is
    still cached) would tell a revoked key from one that never existed."""
    with cluster() as c:
        revoked = c.execute("SELECT api_key::text FROM apikey.create('m', 'revoked')").fetchone()[0]
        c.execute("SELECT apikey.verify(%s)", (revoked,))
        c.execute("SELECT apikey.revoke(id) FROM apikey.key_list WHERE name = 'revoked'")
    lookups = "SELECT backend_cache_hits + shared_cache_hits + cache_misses, refused_invalid FROM apikey.stat " \
              "WHERE datname = 'app'"
    for key in (revoked, UNKNOWN):
        for _ in range(2):
            with cluster() as c:
                before = c.execute(lookups).fetchone()
                refuse(c, "SELECT apikey.verify(%s)", key)
                after = c.execute(lookups).fetchone()
            assert (after[0] - before[0], after[1] - before[1]) == (0, 1)


def test_rows_follow_who_asks(cluster):
    with cluster() as c:
        nobody, monitor, admin = new_role(c), new_role(c), new_role(c)
        c.execute(f"GRANT pg_read_all_stats TO {monitor}")
        c.execute("SELECT apikey.grant_admin(%s)", (admin,))
        key = c.execute("SELECT api_key::text FROM apikey.create('m', 'rows')").fetchone()[0]
        c.execute("SELECT apikey.verify(%s)", (key,))
    with cluster(user=nobody) as c:
        assert c.execute("SELECT count(*) FROM apikey.stat").fetchone()[0] == 0
        assert refuse(c, "SELECT apikey.stat_reset()") == "42501"
    with cluster(user=admin) as c:
        assert [r[0] for r in c.execute("SELECT datname FROM apikey.stat")] == ["app"]
    # An administrator of this database is nobody in the other one.
    with cluster("other", user=admin) as c:
        assert c.execute("SELECT count(*) FROM apikey.stat").fetchone()[0] == 0
        assert refuse(c, "SELECT apikey.stat_reset()") == "42501"
    with cluster(user=monitor) as c:
        assert {r[0] for r in c.execute("SELECT datname FROM apikey.stat")} >= {"app", "other"}
        assert refuse(c, "SELECT apikey.stat_reset()") == "42501"


def wait_for_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail("the exporter did not start")


def metric(text, name, **labels):
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.skipif(EXPORTER is None, reason="prometheus-postgres-exporter is not installed")
def test_the_exporter_serves_the_metrics(cluster):
    with cluster() as c:
        monitor = new_role(c)
        c.execute(f"GRANT pg_read_all_stats TO {monitor}")
        c.execute("SELECT apikey.stat_reset()")
        key = c.execute("SELECT api_key::text FROM apikey.create('m', 'scraped')").fetchone()[0]
        for _ in range(5):
            c.execute("SELECT apikey.verify(%s)", (key,))
        for _ in range(2):
            refuse(c, "SELECT apikey.verify(%s)", UNKNOWN)
    env = dict(os.environ,
               DATA_SOURCE_NAME=f"host={ROOT / '.run/metrics'} port={PORT} user={monitor} dbname=app sslmode=disable")
    # The exporter's own bgwriter collector predates PostgreSQL 17's pg_stat_checkpointer: off.
    exporter = subprocess.Popen([EXPORTER, f"--extend.query-path={QUERIES}", "--no-collector.bgwriter",
                                 f"--web.listen-address=127.0.0.1:{EXPORTER_PORT}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(EXPORTER_PORT)
        text = requests.get(f"http://127.0.0.1:{EXPORTER_PORT}/metrics", timeout=30).text
        assert metric(text, "pg_apikey_verifications", datname="app") == 7
        assert metric(text, "pg_apikey_refusals_count", datname="app", reason="invalid") == 2
        assert metric(text, "pg_apikey_refusals_count", datname="app", reason="expired") == 0
        assert metric(text, "pg_apikey_lookups_count", datname="app", answered_by="table") >= 1
        assert metric(text, "pg_apikey_usage_slots", datname="app") == 1024
        # Every database's row reaches the role with pg_read_all_stats, from one connection.
        assert metric(text, "pg_apikey_verifications", datname="other") is not None
        assert "# TYPE pg_apikey_verifications counter" in text
    finally:
        exporter.terminate()
        _, err = exporter.communicate(timeout=10)
    # The exporter logged no failed query of ours (a wrong column, a missing privilege).
    failed = [line for line in err.decode(errors="replace").splitlines()
              if "level=error" in line or "Error running query" in line]
    assert failed == [], failed
