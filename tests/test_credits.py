"""Credits (usage-limited keys) with refill: spent exactly under concurrency (and finally: see
test_authority.py), refilled lazily, usable in READ ONLY transactions, written to the table
by the usage worker, topped up by administrators (audited), answered as 429 over HTTP."""

import concurrent.futures
import json
import threading
import time

import psycopg
import pytest

from conftest import own_cluster

PORT = "54352"


@pytest.fixture(scope="module")
def connect():
    with own_cluster("credits", PORT, "credits_db", 
                     "apikey.usage_flush_interval = 200",
                     setup=("ALTER DATABASE credits_db SET apikey.creation_limit = 0",)) as conn:
        yield conn


def new_key(c, credits, **kw):
    args = "".join(f", {k} => %({k})s" for k in kw)
    return c.execute(f"SELECT id, api_key::text FROM apikey.create('cr', 'k', credits => %(credits)s{args})",
                     dict(credits=credits, **kw)).fetchone()


def test_exactly_the_credits_succeed_under_sixteen_connections(connect):
    with connect() as c:
        kid, k = new_key(c, 50)
    barrier = threading.Barrier(16)

    def hammer(_):
        ok = 0
        with connect() as c:
            barrier.wait()
            for _ in range(10):
                try:
                    c.execute("SELECT apikey.authenticate(%s)", (k,))
                    ok += 1
                except psycopg.errors.ConfigurationLimitExceeded as e:
                    assert e.diag.message_primary == "API key has no credits left"
        return ok

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(hammer, range(16))) == 50
    with connect() as c:
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 0


def test_a_negative_cost_is_refused(connect):
    # A rolled-back request's spending is final: tests/test_authority.py.
    with connect() as c:
        _, k = new_key(c, 10)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SELECT apikey.authenticate(%s, cost => -1)", (k,))


def test_refills_and_retry_after(connect):
    with connect() as c:
        kid, k = new_key(c, 1, refill_amount=2, refill_interval="2 seconds")
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as e:
            c.execute("SELECT apikey.authenticate(%s)", (k,))
        assert 1 <= json.loads(e.value.diag.message_detail)["retry_after"] <= 2
        # Over HTTP: 429 with that Retry-After.
        c.execute("BEGIN")
        c.execute("SELECT set_config('request.headers', json_build_object('x-api-key', %s::text)::text, true)", (k,))
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT apikey.pre_request()")
        c.execute("ROLLBACK")
        assert e.value.sqlstate == "PGRST" and '"status" : 429' in e.value.diag.message_detail
        assert '"Retry-After"' in e.value.diag.message_detail
        time.sleep(2.1)
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 1


def test_a_refill_never_lowers_a_topped_up_balance(connect):
    """Unkey skips keys that are already full: a balance an administrator topped up above the
    refill amount keeps what it has when a refill falls due."""
    with connect() as c:
        kid, k = new_key(c, 2, refill_amount=2, refill_interval="1 second")
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        assert c.execute("SELECT apikey.add_credits(%s, 100)", (kid,)).fetchone()[0] == 101
        time.sleep(1.2)
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 100
        # Spent below the amount, the next refill fills it up to the amount again.
        c.execute("SELECT apikey.authenticate(%s, cost => 99)", (k,))
        time.sleep(1.2)
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 2


def test_spending_is_written_by_the_worker_and_admins_top_up(connect):
    with connect() as c:
        kid, k = new_key(c, 100)
        for _ in range(3):
            c.execute("SELECT apikey.authenticate(%s, cost => 10)", (k,))
        deadline = time.time() + 10
        while c.execute("SELECT credits FROM apikey.keys WHERE id = %s", (kid,)).fetchone()[0] != 70:
            assert time.time() < deadline, "the worker never wrote the balance"
            time.sleep(0.1)
        assert c.execute("SELECT apikey.add_credits(%s, 5)", (kid,)).fetchone()[0] == 75
        assert c.execute("SELECT credits FROM apikey.key_list WHERE id = %s", (kid,)).fetchone()[0] in (70, 75)
        assert c.execute("SELECT count(*) FROM apikey.audit_log WHERE key_id = %s AND action = 'add_credits'",
                         (kid,)).fetchone()[0] == 1


def test_a_usage_limited_key_mints_no_keys_and_rotation_moves_the_balance(connect):
    with connect() as c:
        kid, k = new_key(c, 20)
        c.execute("DO $$ BEGIN CREATE ROLE cr_holder LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    with connect(user="cr_holder", autocommit=False) as h:
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="credits"):
            h.execute("SELECT apikey.create('cr', 'fresh money')")
        h.rollback()
    with connect() as c:
        new_id = c.execute("SELECT id FROM apikey.rotate(%s, '1 hour')", (kid,)).fetchone()[0]
        # The holder's authenticate above stays spent although it rolled back (charges are final).
        assert c.execute("SELECT apikey.credits(%s)", (new_id,)).fetchone()[0] == 19
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 0
