"""Last-used times and usage counts: recorded in shared memory on the request path (no write,
so READ ONLY works), flushed by a background worker per database, exact, by reason, surviving a
clean restart and a killed worker connection."""

import subprocess
import time

import psycopg
import pytest

from conftest import PGBIN, ROOT

PORT = "54347"
DATA = ROOT / ".run/usage/data"


def connect(db):
    return psycopg.connect(f"host={ROOT / '.run/usage'} port={PORT} user=postgres dbname={db}", autocommit=True)


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def workers():
    with connect("postgres") as c:
        return c.execute(
            "SELECT pid, datname FROM pg_stat_activity WHERE backend_type = 'pg_apikey worker' ORDER BY datname"
        ).fetchall()


@pytest.fixture(scope="module")
def cluster():
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", "usage", PORT,
                    "apikey.usage_flush_interval = 300"], check=True)
    try:
        with connect("postgres") as c:
            for db in ("usage_a", "usage_b"):
                c.execute(f"CREATE DATABASE {db}")
        for db in ("usage_a", "usage_b"):
            with connect(db) as c:
                c.execute("CREATE EXTENSION pg_apikey")
                c.execute("ALTER DATABASE %s SET apikey.creation_limit = 0" % db)
        wait_for(lambda: len(workers()) == 2)
        yield
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", "usage"], check=False)


def new_key(c, **kw):
    args = "".join(f", {k} => %({k})s" for k in kw)
    return c.execute(f"SELECT id, api_key::text FROM apikey.create('u', 'k'{args})", kw).fetchone()


def flushed(c, key_id):
    return c.execute(
        "SELECT coalesce(sum(uses), 0), coalesce(sum(expired), 0), coalesce(sum(revoked), 0),"
        " coalesce(sum(rate_limited), 0), coalesce(sum(denied), 0) FROM apikey.usage WHERE key_id = %s",
        (key_id,)).fetchone()


def test_workers_are_visible_with_a_clear_name(cluster):
    assert [db for _, db in workers()] == ["usage_a", "usage_b"]


def test_last_used_after_a_use_in_a_read_only_transaction(cluster):
    with connect("usage_a") as c:
        key_id, key = new_key(c)
        with c.transaction():
            c.execute("SET TRANSACTION READ ONLY")
            c.execute("SELECT apikey.authenticate(%s)", (key,))
        live = c.execute("SELECT last_used_at FROM apikey.key_list WHERE id = %s", (key_id,)).fetchone()[0]
        assert live is not None
        stored = wait_for(lambda: c.execute("SELECT last_used_at FROM apikey.keys WHERE id = %s", (key_id,)).fetchone()[0])
        assert abs((stored - live).total_seconds()) < 0.001


def test_ten_thousand_uses_are_exact_and_cost_one_row_write(cluster):
    with connect("usage_a") as c:
        key_id, key = new_key(c)
        c.execute("SELECT pg_stat_force_next_flush()")
        before = c.execute("SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relid = 'apikey.usage'::regclass").fetchone()[0]
        c.execute("SELECT count(apikey.authenticate(%s)) FROM generate_series(1, 10000)", (key,))
        wait_for(lambda: flushed(c, key_id)[0] == 10000)
        time.sleep(0.7)  # two more flush intervals: nothing more may be written
        assert flushed(c, key_id) == (10000, 0, 0, 0, 0)
        c.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(0.6)
        after = c.execute("SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relid = 'apikey.usage'::regclass").fetchone()[0]
        assert after - before <= 3  # this key's row, maybe once more for a minute boundary, plus others


def test_refusals_are_counted_by_reason(cluster):
    with connect("usage_a") as c:
        exp_id, exp = new_key(c, expires_in="1 day")
        c.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 minute' WHERE id = %s", (exp_id,))
        rev_id, rev = new_key(c)
        c.execute("SELECT apikey.revoke(%s)", (rev_id,))
        lim_id, lim = new_key(c, rate_limit=1, rate_period="1 hour")
        den_id, den = new_key(c, scopes=["surveys:read"])
        for key, n in ((exp, 2), (rev, 3)):
            for _ in range(n):
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                    c.execute("SELECT apikey.verify(%s)", (key,))
        c.execute("SELECT apikey.authenticate(%s)", (lim,))
        for _ in range(4):
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
                c.execute("SELECT apikey.authenticate(%s)", (lim,))
        with c.transaction():
            c.execute("SELECT apikey.authenticate(%s)", (den,))
            for _ in range(2):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    with c.transaction():
                        c.execute("SELECT apikey.require_scope('surveys:write')")
        wait_for(lambda: flushed(c, den_id)[4] == 2)
        assert flushed(c, exp_id) == (0, 2, 0, 0, 0)
        assert flushed(c, rev_id) == (0, 0, 3, 0, 0)
        assert flushed(c, lim_id) == (1, 0, 0, 4, 0)
        assert flushed(c, den_id) == (1, 0, 0, 0, 2)


def test_each_database_flushes_its_own_keys(cluster):
    with connect("usage_a") as a, connect("usage_b") as b:
        a_id, a_key = new_key(a)
        b_id, b_key = new_key(b)
        a.execute("SELECT count(apikey.verify(%s)) FROM generate_series(1, 7)", (a_key,))
        b.execute("SELECT count(apikey.verify(%s)) FROM generate_series(1, 11)", (b_key,))
        wait_for(lambda: flushed(a, a_id)[0] == 7 and flushed(b, b_id)[0] == 11)


def test_the_worker_keeps_going_after_its_connection_is_killed(cluster):
    old = dict((db, pid) for pid, db in workers())
    with connect("postgres") as c:
        c.execute("SELECT pg_terminate_backend(%s)", (old["usage_a"],))
    new = wait_for(lambda: dict((db, pid) for pid, db in workers()).get("usage_a") not in (None, old["usage_a"])
                   and dict((db, pid) for pid, db in workers()))
    assert new["usage_a"] != old["usage_a"]
    with connect("usage_a") as c:
        key_id, key = new_key(c)
        c.execute("SELECT apikey.verify(%s)", (key,))
        wait_for(lambda: flushed(c, key_id)[0] == 1)


def test_a_clean_restart_loses_nothing(cluster):
    with connect("postgres") as c:
        c.execute("ALTER SYSTEM SET apikey.usage_flush_interval = '1h'")
        c.execute("SELECT pg_reload_conf()")
    time.sleep(0.8)  # let the workers pick up the long interval
    with connect("usage_b") as c:
        key_id, key = new_key(c)
        c.execute("SELECT count(apikey.verify(%s)) FROM generate_series(1, 123)", (key,))
        assert c.execute("SELECT uses FROM apikey.usage_live WHERE key_id = %s", (key_id,)).fetchone()[0] == 123
        assert flushed(c, key_id)[0] == 0
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_ctl", "-D", str(DATA),
                    "-m", "fast", "-w", "restart", "-l", str(ROOT / ".run/usage/startup.log")],
                   check=True, capture_output=True)
    with connect("usage_b") as c:
        assert flushed(c, key_id)[0] == 123
    with connect("postgres") as c:
        c.execute("ALTER SYSTEM RESET apikey.usage_flush_interval")
        c.execute("SELECT pg_reload_conf()")
