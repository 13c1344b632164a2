"""Per-key request limits and apikey.rate_limit under real concurrency, and after the wait."""

import concurrent.futures
import json
import threading
import time

import psycopg
import pytest


def test_sixteen_sessions_never_get_more_than_the_burst(db):
    conn = db()
    key = conn.execute(
        "SELECT api_key::text FROM apikey.create('busy', 'k', rate_limit => 10, rate_period => '1 hour')"
    ).fetchone()[0]
    barrier = threading.Barrier(16)

    def hammer(_):
        admitted = 0
        with db() as c:
            barrier.wait()
            for _ in range(20):
                try:
                    c.execute("BEGIN READ ONLY")
                    c.execute("SELECT apikey.authenticate(%s)", (key,))
                    admitted += 1
                except psycopg.errors.ConfigurationLimitExceeded as e:
                    assert json.loads(e.diag.message_detail)["retry_after"] >= 1
                finally:
                    c.execute("ROLLBACK")
        return admitted

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        total = sum(pool.map(hammer, range(16)))
    assert total == 10


def test_a_limited_key_works_again_after_retry_after(db):
    conn = db()
    key = conn.execute(
        "SELECT api_key::text FROM apikey.create('again', 'k', rate_limit => 1, rate_period => '2 seconds')"
    ).fetchone()[0]
    conn.execute("SELECT apikey.authenticate(%s)", (key,))
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as e:
        conn.execute("SELECT apikey.authenticate(%s)", (key,))
    wait = json.loads(e.value.diag.message_detail)["retry_after"]
    assert 1 <= wait <= 2
    assert f"try again in {wait} seconds" in e.value.diag.message_primary
    time.sleep(wait + 0.05)
    conn.execute("SELECT apikey.authenticate(%s)", (key,))


def test_rate_limit_buckets_are_exact_under_concurrency(db):
    barrier = threading.Barrier(8)

    def hammer(_):
        ok = 0
        with db() as c:
            barrier.wait()
            for _ in range(50):
                try:
                    c.execute("SELECT apikey.rate_limit('login:bob', 25, '1 hour')")
                    ok += 1
                except psycopg.errors.ConfigurationLimitExceeded:
                    pass
        return ok

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(hammer, range(8))) == 25


def test_buckets_are_per_database(db, cluster):
    a = db()
    other = db.name + "_b"
    a.execute(f'CREATE DATABASE "{other}"')
    try:
        with db(dbname=other) as b:
            b.execute("CREATE EXTENSION pg_apikey")
            a.execute("SELECT apikey.rate_limit('shared-name', 1, '1 hour')")
            b.execute("SELECT apikey.rate_limit('shared-name', 1, '1 hour')")
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
                a.execute("SELECT apikey.rate_limit('shared-name', 1, '1 hour')")
    finally:
        a.execute(f'DROP DATABASE "{other}" WITH (FORCE)')


def test_a_full_table_fails_closed_and_never_evicts_a_live_bucket(db):
    conn = db()
    key_id, key = conn.execute(
        "SELECT id, api_key::text FROM apikey.create('victim', 'k', rate_limit => 1, rate_period => '1 hour')"
    ).fetchone()
    conn.execute("SELECT apikey.authenticate(%s)", (key,))
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
        conn.execute("SELECT apikey.authenticate(%s)", (key,))
    # The rate_limit buckets (8 partitions x 1024 slots, a quarter per role) fill up; past that a new bucket is refused
    # (53400, retry after 1 s) rather than taking a slot that still holds a limit.
    filled = 0
    for start in range(0, 6000, 500):
        try:
            conn.execute(
                "SELECT count(apikey.rate_limit('fill:' || g, 1, '1 hour')) FROM generate_series(%s::int, %s::int) g",
                (start, start + 499),
            )
            filled += 500
        except psycopg.errors.ConfigurationLimitExceeded as e:
            assert "rate limiter is full" in str(e) and e.diag.message_detail == '{"retry_after": 1}'
            break
    else:
        pytest.fail("the limiter never filled up")
    assert 0 < filled <= 8 * 1024 // 4  # one role holds at most a quarter of each partition
    # Every bucket that was admitted is still there and still limits.
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="Request rate limit exceeded"):
        conn.execute("SELECT apikey.rate_limit('fill:0', 1, '1 hour')")
    # The victim's per-key limit lives in the other half and was not reset.
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="API key rate limit exceeded"):
        conn.execute("SELECT apikey.authenticate(%s)", (key,))


def test_without_preload_limits_fail_with_the_fix_and_keys_still_verify(tmp_path):
    """Without shared_preload_libraries keys verify; what needs shared memory (rate_limit, keys
    with request limits or credits, recoverable keys) is refused when asked for, with the fix."""
    import os
    import subprocess

    from conftest import ROOT

    port = "54344"
    env = dict(os.environ, NO_PRELOAD="1")
    # A server key in postgresql.conf without preload would be a placeholder any role can read.
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", "nopreload", port,
                    "apikey.encryption_key = '" + "cd" * 32 + "'"], check=True, env=env)
    try:
        dsn = f"host={ROOT / '.run/nopreload'} port={port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_apikey")
            key = c.execute("SELECT api_key::text FROM apikey.create('np', 'k')").fetchone()[0]
            assert c.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone()[0] == "np"
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                c.execute("SELECT apikey.rate_limit('b', 1, '1 hour')")
            assert "shared_preload_libraries" in e.value.diag.message_primary
            assert "restart" in e.value.diag.message_hint
            # A key that could never be used is refused when it is asked for, not at its first use.
            for options in ("rate_limit => 5, rate_period => '1 minute'", "limits => '{\"reads\": {\"max\": 5, \"per\": \"1 minute\"}}'",
                            "credits => 10"):
                with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="shared_preload_libraries"):
                    c.execute(f"SELECT api_key::text FROM apikey.create('np', 'limited', {options})")
            # Recoverable keys are refused without preload: the server key is not protected then.
            c.execute("SELECT apikey.alter_format('ct_live', true)")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="recoverable keys"):
                c.execute("SELECT * FROM apikey.create('np', 'sealed', format => 'ct_live')")
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", "nopreload"], check=False)


def test_limit_scale_gives_this_server_its_share(db):
    su = db()
    su.execute("ALTER SYSTEM SET apikey.limit_scale = 0.5")
    su.execute("SELECT pg_reload_conf()")
    try:
        import time
        time.sleep(0.3)
        with db() as c:
            assert c.execute("SHOW apikey.limit_scale").fetchone()[0] == "0.5"
            # A per-key limit: earlier tests may have filled the rate_limit half on purpose.
            c.execute("SET apikey.creation_limit = 0")
            key = c.execute("SELECT api_key::text FROM apikey.create('scale', 'k', rate_limit => 10, "
                            "rate_period => '1 hour')").fetchone()[0]
            admitted = 0
            for _ in range(12):
                try:
                    c.execute("SELECT apikey.authenticate(%s)", (key,))
                    admitted += 1
                except psycopg.errors.ConfigurationLimitExceeded as e:
                    assert "API key rate limit exceeded" in str(e)
            assert admitted == 5
    finally:
        su.execute("ALTER SYSTEM RESET apikey.limit_scale")
        su.execute("SELECT pg_reload_conf()")
