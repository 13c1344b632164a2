"""The key-creation quota: 5 per owner per hour by default, race-free under concurrency, with the
Coldflow seed's message and the seconds to wait machine-readable in DETAIL."""

import concurrent.futures
import json
import re
import threading

import psycopg
import pytest


def test_twenty_concurrent_creators_get_exactly_five_keys(db):
    barrier = threading.Barrier(20)

    def attempt(i):
        with db() as c:
            barrier.wait()
            try:
                c.execute("SELECT id FROM apikey.create('race-owner', %s)", (f"k{i}",))
                return "ok"
            except psycopg.errors.ConfigurationLimitExceeded as e:
                return e.diag

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    assert outcomes.count("ok") == 5
    refusals = [o for o in outcomes if o != "ok"]
    assert len(refusals) == 15
    for diag in refusals:
        assert re.fullmatch(
            r"Too many API key creation requests\. Please try again in \d+ seconds\.", diag.message_primary
        )
        retry_after = json.loads(diag.message_detail)["retry_after"]
        assert 3500 < retry_after <= 3600
        assert str(retry_after) in diag.message_primary
    count = db().execute("SELECT count(*) FROM apikey.keys WHERE owner = 'race-owner'").fetchone()[0]
    assert count == 5


def test_a_refused_attempt_charges_nothing_and_other_owners_are_unaffected(db):
    conn = db()
    conn.execute("SET apikey.creation_limit = 2")
    for i in range(2):
        conn.execute("SELECT apikey.create('q', %s)", (f"k{i}",))
    for _ in range(3):
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            conn.execute("SELECT apikey.create('q', 'over')")
    hits = conn.execute("SELECT cardinality(hits) FROM apikey.rate_limits WHERE bucket = 'admin-create:q'").fetchone()[0]
    assert hits == 2
    conn.execute("SELECT apikey.create('someone-else', 'k')")


def test_the_window_slides(db):
    conn = db()
    conn.execute("SET apikey.creation_limit = 1")
    conn.execute("SET apikey.creation_period = 1")
    conn.execute("SELECT apikey.create('slide', 'a')")
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as e:
        conn.execute("SELECT apikey.create('slide', 'b')")
    assert json.loads(e.value.diag.message_detail)["retry_after"] == 1
    conn.execute("SELECT pg_sleep(1.1)")
    conn.execute("SELECT apikey.create('slide', 'c')")


def test_deleting_keys_does_not_refund_the_quota(db):
    conn = db()
    conn.execute("SET apikey.creation_limit = 1")
    key_id = conn.execute("SELECT id FROM apikey.create('del', 'a')").fetchone()[0]
    conn.execute("SELECT apikey.delete(%s)", (key_id,))
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
        conn.execute("SELECT apikey.create('del', 'b')")
