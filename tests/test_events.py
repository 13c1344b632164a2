"""Key events on channel apikey_events, heard by a real listening connection (psycopg's
notifies()), and in apikey.events for those who poll. Payloads carry no owner, name or secret;
a rolled-back change sends nothing; the worker announces expiring keys, low credits and keys
refused by a limit once each."""

import json
import time

import psycopg
import pytest

from conftest import own_cluster

PORT = "54356"
DB = "events_db"


@pytest.fixture(scope="module")
def connect():
    with own_cluster("events", PORT, DB, "apikey.usage_flush_interval = 200",
                     "apikey.expiry_notice_days = '30, 7'", "apikey.credits_low_percent = 25",
                     "apikey.limit_event_window = 3600",
                     setup=(f"ALTER DATABASE {DB} SET apikey.creation_limit = 0",
                            "CREATE ROLE events_reader LOGIN")) as conn:
        yield conn


@pytest.fixture
def listener(connect):
    c = connect()
    c.execute("LISTEN apikey_events")
    yield c
    c.close()


def heard(listener, timeout=1.0, until=None):
    """Notifications until `timeout` passes without one (or `until` is satisfied)."""
    got = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        for n in listener.notifies(timeout=0.2, stop_after=1):
            assert n.channel == "apikey_events"
            got.append(json.loads(n.payload))
        if until and until(got):
            break
    return got


def test_every_change_is_announced_at_commit_without_owner_or_detail(connect, listener):
    with connect() as c:
        kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('evie', 'events')").fetchone()
        c.execute("SELECT apikey.disable(%s)", (kid,))
        c.execute("SELECT apikey.enable(%s)", (kid,))
        new_id = c.execute("SELECT id FROM apikey.rotate(%s)", (kid,)).fetchone()[0]
        c.execute("SELECT apikey.revoke(%s)", (new_id,))
        c.execute("SELECT apikey.delete(%s)", (new_id,))
    got = heard(listener, until=lambda g: len(g) >= 6)
    assert [(g["event"], g["key_id"]) for g in got] == [
        ("created", kid), ("disabled", kid), ("enabled", kid), ("rotated", kid), ("revoked", new_id),
        ("deleted", new_id)]
    for g in got:
        assert set(g) == {"id", "event", "key_id", "at"}
        assert "evie" not in json.dumps(g) and key not in json.dumps(g)
    with connect() as c:
        rows = c.execute("SELECT id, event, owner, key_name FROM apikey.events WHERE key_id IN (%s, %s) ORDER BY id",
                         (kid, new_id)).fetchall()
    assert [r[0] for r in rows] == [g["id"] for g in got]
    assert {(r[2], r[3]) for r in rows} == {("evie", "events")}


def test_a_rolled_back_change_sends_nothing(connect, listener):
    with connect(autocommit=False) as c:
        kid = c.execute("SELECT id FROM apikey.create('evie', 'never')").fetchone()[0]
        c.execute("SELECT apikey.revoke(%s)", (kid,))
        c.rollback()
    assert heard(listener, timeout=1.0) == []
    with connect() as c:
        assert c.execute("SELECT count(*) FROM apikey.events WHERE key_name = 'never'").fetchone()[0] == 0


def test_events_are_for_administrators(connect):
    with connect(user="events_reader") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM apikey.events")
    with connect() as c:
        c.execute("SELECT apikey.grant_admin('events_reader')")
    with connect(user="events_reader") as c:
        assert c.execute("SELECT count(*) > 0 FROM apikey.events").fetchone()[0]


def test_keys_about_to_expire_are_announced_once_per_threshold(connect, listener):
    with connect() as c:
        soon = c.execute("SELECT id FROM apikey.create('evie', 'soon', '3 days')").fetchone()[0]
        month = c.execute("SELECT id FROM apikey.create('evie', 'month', '20 days')").fetchone()[0]
        later = c.execute("SELECT id FROM apikey.create('evie', 'later', '90 days')").fetchone()[0]
    got = heard(listener, timeout=8, until=lambda g: len([x for x in g if x["event"] == "expiring"]) >= 3)
    expiring = sorted(g["key_id"] for g in got if g["event"] == "expiring")
    # 3 days is within both 30 and 7; 20 days within 30 only; 90 days within none.
    assert expiring == sorted([soon, soon, month])
    assert later not in expiring
    # Once: later sweeps announce nothing more.
    assert [g for g in heard(listener, timeout=5) if g["event"] == "expiring"] == []
    with connect() as c:
        details = c.execute("SELECT detail->>'within_days' FROM apikey.events WHERE event = 'expiring' AND key_id = %s"
                            " ORDER BY 1", (soon,)).fetchall()
    assert details == [("30",), ("7",)]


def test_low_credits_and_limits_are_announced_once(connect, listener):
    with connect() as c:
        kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('evie', 'metered', credits => 100,"
                             " rate_limit => 3, rate_period => '1 hour')").fetchone()
        c.execute("SELECT apikey.authenticate(%s, 80)", (key,))
        for _ in range(10):
            try:
                c.execute("SELECT apikey.authenticate(%s, 1)", (key,))
            except psycopg.errors.ConfigurationLimitExceeded:
                pass
    got = heard(listener, timeout=8,
                until=lambda g: {"credits_low", "limited"} <= {x["event"] for x in g if x["key_id"] == kid})
    mine = [g["event"] for g in got if g["key_id"] == kid]
    assert mine.count("credits_low") == 1 and mine.count("limited") == 1, mine
    # More refusals in the same window announce nothing more.
    with connect() as c:
        for _ in range(5):
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
                c.execute("SELECT apikey.authenticate(%s, 1)", (key,))
        detail = c.execute("SELECT detail FROM apikey.events WHERE event = 'credits_low' AND key_id = %s",
                           (kid,)).fetchone()[0]
    assert detail["of"] == 100 and detail["below_percent"] == 25 and detail["credits"] < 25
    assert [g for g in heard(listener, timeout=3) if g["key_id"] == kid] == []


def test_old_events_are_pruned(connect):
    with connect() as c:
        c.execute("INSERT INTO apikey.events (at, event) VALUES (now() - interval '30 days', 'ancient')")
        deadline = time.time() + 10
        while time.time() < deadline:
            if c.execute("SELECT count(*) FROM apikey.events WHERE event = 'ancient'").fetchone()[0] == 0:
                break
            time.sleep(0.2)
        assert c.execute("SELECT count(*) FROM apikey.events WHERE event = 'ancient'").fetchone()[0] == 0
