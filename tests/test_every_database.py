"""Every feature in every database, with nothing to configure: a server whose postgresql.conf has
only shared_preload_libraries, three databases created after it started, the extension installed
in each. In each: credits spent exactly by 16 connections, last-used times and usage counts
flushed by that database's own worker, a worker's event heard, shared key cache hits. A dropped
database gives its region back and the next new database takes it. Then what a holder idling on a
key row can do to the crash bound (nothing), and how often a blocked worker complains (once)."""

import json
import os
import random
import signal
import threading
import time

import psycopg
import pytest

from conftest import ROOT, new_key, new_role

PORT = "54373"
NAME = "everydb"
DBS = ("app_one", "app_two", "app_three")


def connect(dbname, autocommit=True, user="postgres"):
    return psycopg.connect(f"host={ROOT / '.run' / NAME} port={PORT} user={user} dbname={dbname}",
                           autocommit=autocommit)


def wait_for(what, predicate, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, what
        time.sleep(0.1)


def workers():
    with connect("postgres") as c:
        return {db for (db,) in c.execute(
            "SELECT datname FROM pg_stat_activity WHERE backend_type = 'pg_apikey worker'")}


def region(c):
    return c.execute("SELECT region FROM apikey.shared_memory_stats()").fetchone()[0]


@pytest.fixture(scope="module")
def cluster():
    import subprocess
    # tests/cluster.sh writes shared_preload_libraries and the cluster's own port, socket and
    # log lines; not one apikey.* setting.
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", NAME, PORT], check=True)
    try:
        conf = (ROOT / ".run" / NAME / "data/postgresql.conf").read_text()
        assert "apikey." not in conf
        with connect("postgres") as c:
            for db in DBS:
                c.execute(f"CREATE DATABASE {db}")
        for db in DBS:
            with connect(db) as c:
                c.execute("CREATE EXTENSION pg_apikey")
                c.execute(f"ALTER DATABASE {db} SET apikey.creation_limit = 0")
        yield
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", NAME], check=False)


def spend_exactly(db, key, credits):
    """16 connections spend `key` at random costs until every one is refused; returns the sum of
    the costs that succeeded."""
    spent, lock = [0], threading.Lock()

    def spender(seed):
        rng = random.Random(seed)
        with connect(db) as c:
            while True:
                cost = rng.randint(1, 7)
                try:
                    c.execute("SELECT apikey.authenticate(%s, %s)", (key, cost))
                except psycopg.errors.ConfigurationLimitExceeded:
                    # No credits left for this cost; cost 1 tells whether any are left at all.
                    try:
                        c.execute("SELECT apikey.authenticate(%s, 1)", (key,))
                    except psycopg.errors.ConfigurationLimitExceeded:
                        return
                    cost = 1
                with lock:
                    spent[0] += cost

    threads = [threading.Thread(target=spender, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return spent[0]


def test_every_database_gets_its_worker_without_a_restart(cluster):
    wait_for("a worker in every database", lambda: workers() >= set(DBS))


@pytest.mark.parametrize("db", DBS)
def test_every_feature_works_in_a_database_created_after_the_start(cluster, db):
    with connect(db) as listener:
        listener.execute("LISTEN apikey_events")
        with connect(db) as c:
            kid, key = new_key(c, "tenant", "metered", credits=300)
        assert spend_exactly(db, key, 300) == 300
        with connect(db) as c:
            assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 0
            # The worker writes the balance, last use and counts, and announces low credits.
            wait_for("credits and usage flushed", lambda: c.execute(
                "SELECT credits = 0 AND last_used_at IS NOT NULL FROM apikey.keys WHERE id = %s",
                (kid,)).fetchone()[0])
            wait_for("uses counted", lambda: c.execute(
                "SELECT sum(uses) > 0 FROM apikey.usage WHERE key_id = %s", (kid,)).fetchone()[0])
        heard = []
        deadline = time.time() + 30
        while time.time() < deadline and not any(e["event"] == "credits_low" for e in heard):
            for n in listener.notifies(timeout=1.0, stop_after=1):
                heard.append(json.loads(n.payload))
        assert any(e["event"] == "credits_low" and e["key_id"] == kid for e in heard), heard
    with connect(db) as c:
        _, other = new_key(c, "tenant", "cached")
        with connect(db) as first:
            first.execute("SELECT apikey.verify(%s)", (other,))
        with connect(db) as second:
            second.execute("SET apikey.key_cache_size = 0")
            second.execute("SELECT apikey.verify(%s)", (other,))
            entries, capacity, hits, misses = second.execute(
                "SELECT * FROM apikey.shared_key_cache_stats()").fetchone()
            assert (hits, misses) == (1, 0) and capacity > 0


def test_a_dropped_database_gives_its_region_to_the_next_one(cluster):
    with connect(DBS[1]) as c:
        freed = region(c)
    with connect("postgres") as c:
        # Its worker is connected: DROP DATABASE still works (the worker makes way).
        c.execute(f"DROP DATABASE {DBS[1]}")
        c.execute("CREATE DATABASE app_four")
    wait_for("the worker of the dropped database gone", lambda: DBS[1] not in workers())
    with connect("app_four") as c:
        c.execute("CREATE EXTENSION pg_apikey")
        c.execute("SET apikey.creation_limit = 0")
        assert wait_for("the freed region", lambda: region(c) is not None) == freed
        kid, key = new_key(c, "tenant", "reused", credits=5)
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 5
        c.execute("SELECT apikey.authenticate(%s, 2)", (key,))
        wait_for("the new database's worker", lambda: "app_four" in workers())
        wait_for("its spending written", lambda: c.execute(
            "SELECT credits FROM apikey.keys WHERE id = %s", (kid,)).fetchone()[0] == 3)


def test_a_holder_idling_on_a_key_row_does_not_stretch_the_crash_bound(cluster):
    """A key holder touches a sibling key's row (disable) and idles for more than three flush
    intervals while the sibling and another key keep spending; then a backend is killed with
    SIGKILL, so the server restarts from its tables. All spending older than one flush interval
    survives: the sibling's balance was written aside while its row was held."""
    db = DBS[0]
    with connect(db) as su:
        su.execute("ALTER SYSTEM SET apikey.usage_flush_interval = 300")
        su.execute("SELECT pg_reload_conf()")
        holder_role = new_role(su, "holder")
        owner = "crash-" + holder_role
        _, holder_key = new_key(su, owner, "holder")
        sibling, sibling_key = new_key(su, owner, "sibling", credits=1000)
        other, other_key = new_key(su, "crash-other", "other", credits=1000)
    try:
        holder = connect(db, autocommit=False, user=holder_role)
        holder.execute("SELECT apikey.authenticate(%s)", (holder_key,))
        holder.execute("SELECT apikey.disable(%s)", (sibling,))  # the sibling's row is now held
        spent = {sibling: 0, other: 0}
        with connect(db) as c:
            end = time.time() + 1.5  # five flush intervals
            while time.time() < end:
                for kid, k in ((sibling, sibling_key), (other, other_key)):
                    c.execute("SELECT apikey.authenticate(%s, 3)", (k,))
                    spent[kid] += 3
                time.sleep(0.02)
            time.sleep(0.9)  # three more intervals with nothing spent: all of it is durable now
            log = ROOT / ".run" / NAME / "server.log"
            ready = log.read_text(errors="replace").count("ready to accept connections")
            # A backend that is still there (this connection is open) dies: the postmaster
            # restarts every process and rebuilds shared memory from the tables.
            os.kill(c.execute("SELECT pg_backend_pid()").fetchone()[0], signal.SIGKILL)
        try:
            holder.close()
        except psycopg.Error:
            pass
        wait_for("the crash restart", lambda: log.read_text(errors="replace").count(
            "ready to accept connections") > ready, timeout=60)
        su = wait_for("the server back after the crash", lambda: _try_connect(db), timeout=60)
        with su:
            for kid in (sibling, other):
                left = su.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0]
                assert left == 1000 - spent[kid], (kid, left, spent[kid])
            # The holder's disable never committed.
            assert su.execute("SELECT disabled_at FROM apikey.keys WHERE id = %s", (sibling,)).fetchone()[0] is None
    finally:
        with _try_connect(db) or connect(db) as su:
            su.execute("ALTER SYSTEM RESET apikey.usage_flush_interval")
            su.execute("SELECT pg_reload_conf()")


def _try_connect(db):
    try:
        return connect(db)
    except psycopg.OperationalError:
        return None


def test_a_blocked_worker_complains_once_a_minute_and_writes_credits_meanwhile(cluster):
    """An administrator holds apikey.usage locked: the worker's usage step times out at every flush
    (it never waits long) and says so in the log once, not once a flush; credits are written in a
    step of their own meanwhile."""
    db = DBS[2]
    log = ROOT / ".run" / NAME / "server.log"
    with connect(db) as su:
        su.execute("ALTER SYSTEM SET apikey.usage_flush_interval = 200")
        su.execute("SELECT pg_reload_conf()")
        # The database's owner would have a failed step end the worker: it keeps that off.
        su.execute(f"ALTER DATABASE {db} SET exit_on_error = on")
        su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE backend_type = 'pg_apikey worker' AND datname = %s", (db,))
        kid, key = new_key(su, "blocked", "k", credits=50)
    pid = wait_for("the worker back", lambda: _worker_pid(db))
    try:
        before = log.read_text(errors="replace").count("the usage flush failed")
        with connect(db, autocommit=False) as locker, connect(db) as c:
            locker.execute("LOCK TABLE apikey.usage IN ACCESS EXCLUSIVE MODE")
            c.execute("SELECT apikey.authenticate(%s, 4)", (key,))
            wait_for("credits written while usage is blocked", lambda: c.execute(
                "SELECT credits FROM apikey.keys WHERE id = %s", (kid,)).fetchone()[0] == 46)
            time.sleep(4)  # several flushes, each failing after lock_timeout
            locker.rollback()
        wait_for("the usage written once the lock went", lambda: _uses(db, kid) == 1)
        complaints = log.read_text(errors="replace").count("the usage flush failed") - before
        assert complaints == 1, complaints
        assert _worker_pid(db) == pid, "a failed step ended the worker"
    finally:
        with connect(db) as su:
            su.execute(f"ALTER DATABASE {db} RESET exit_on_error")
            su.execute("ALTER SYSTEM RESET apikey.usage_flush_interval")
            su.execute("SELECT pg_reload_conf()")


def _uses(db, kid):
    with connect(db) as c:
        return c.execute("SELECT coalesce(sum(uses), 0) FROM apikey.usage WHERE key_id = %s", (kid,)).fetchone()[0]


def _worker_pid(db):
    with connect("postgres") as c:
        row = c.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_apikey worker' AND datname = %s",
                        (db,)).fetchone()
        return row and row[0]


def test_nobody_but_the_owner_can_send_a_database_worker_away(cluster):
    """DROP DATABASE, CREATE DATABASE … TEMPLATE and RENAME hold the database's worker off, but
    only for a role Postgres would let run them: anyone else's attempt (refused, or cancelled
    while waiting) leaves the worker where it is."""
    db = DBS[0]
    pid = wait_for("a worker", lambda: _worker_pid(db))
    with connect(db) as su:
        nobody = new_role(su, "nobody")
    with connect("postgres", user=nobody) as c:
        for statement in (f"DROP DATABASE {db}", f"CREATE DATABASE copy_of_it TEMPLATE {db}",
                          f"ALTER DATABASE {db} RENAME TO stolen"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)
    time.sleep(1)
    assert _worker_pid(db) == pid, "a refused statement sent the worker away"


def test_a_database_closed_to_connections_for_a_while_keeps_its_region_and_worker(cluster):
    """ALLOW_CONNECTIONS false is not a dropped database: its region (unflushed usage, balances)
    and its worker stay, and flushing goes on."""
    db = DBS[2]
    wait_for("a worker", lambda: _worker_pid(db))
    with connect(db) as c:
        before = region(c)
        kid, key = new_key(c, "closed", "k")
    with connect("postgres") as p:
        p.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        try:
            time.sleep(6)  # more than one launcher round
        finally:
            p.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
    with connect(db) as c:
        assert region(c) == before
        c.execute("SELECT apikey.verify(%s)", (key,))
        wait_for("the use flushed", lambda: c.execute(
            "SELECT last_used_at IS NOT NULL FROM apikey.keys WHERE id = %s", (kid,)).fetchone()[0])


def test_a_rotation_followed_by_a_crash_mints_no_credits(cluster):
    """Rotation moves a balance to the successor; the old key's durable balance goes to zero in
    the same transaction, so a crash before the next flush cannot give it back beside the
    successor's."""
    db = DBS[0]
    with connect(db) as c:
        kid, key = new_key(c, "rot-crash", "k", credits=100)
        c.execute("SELECT apikey.authenticate(%s, 10)", (key,))
        wait_for("spending written", lambda: c.execute(
            "SELECT credits FROM apikey.keys WHERE id = %s", (kid,)).fetchone()[0] == 90)
        new_id = c.execute("SELECT id FROM apikey.rotate(%s, grace => interval '1 hour')", (kid,)).fetchone()[0]
        log = ROOT / ".run" / NAME / "server.log"
        ready = log.read_text(errors="replace").count("ready to accept connections")
        os.kill(c.execute("SELECT pg_backend_pid()").fetchone()[0], signal.SIGKILL)
    wait_for("the crash restart", lambda: log.read_text(errors="replace").count(
        "ready to accept connections") > ready, timeout=60)
    c = wait_for("the server back", lambda: _try_connect(db), timeout=60)
    with c:
        old, new = (c.execute("SELECT apikey.credits(%s)", (i,)).fetchone()[0] for i in (kid, new_id))
        assert (old, new) == (0, 90)


def test_more_databases_than_worker_slots_are_all_flushed(cluster):
    """Ten more databases than this server has worker slots for (max_worker_processes = 8, the
    default): idle workers make way in turn, and every database's usage is written."""
    names = [f"many_{i}" for i in range(10)]
    with connect("postgres") as c:
        c.execute("ALTER SYSTEM SET apikey.usage_flush_interval = 200")
        c.execute("SELECT pg_reload_conf()")
        for n in names:
            c.execute(f"CREATE DATABASE {n}")
    try:
        keys = {}
        for n in names:
            with connect(n) as c:
                c.execute("CREATE EXTENSION pg_apikey")
                keys[n] = new_key(c, "many", "k")
                c.execute("SELECT apikey.verify(%s)", (keys[n][1],))

        def flushed():
            done = 0
            for n in names:
                with connect(n) as c:
                    done += c.execute("SELECT last_used_at IS NOT NULL FROM apikey.keys WHERE id = %s",
                                      (keys[n][0],)).fetchone()[0]
            return done == len(names)
        wait_for("every database flushed", flushed, timeout=120)
    finally:
        with connect("postgres") as c:
            c.execute("ALTER SYSTEM RESET apikey.usage_flush_interval")
            c.execute("SELECT pg_reload_conf()")
            for n in names:
                c.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


def test_drop_extension_stops_the_worker_and_create_extension_brings_it_back(cluster):
    with connect("postgres") as c:
        c.execute("CREATE DATABASE come_and_go")
    try:
        with connect("come_and_go") as c:
            c.execute("CREATE EXTENSION pg_apikey")
        wait_for("a worker within seconds of CREATE EXTENSION", lambda: _worker_pid("come_and_go"))
        with connect("come_and_go") as c:
            c.execute("DROP EXTENSION pg_apikey")
        wait_for("the worker gone after DROP EXTENSION", lambda: not _worker_pid("come_and_go"))
        with connect("come_and_go") as c:
            c.execute("CREATE EXTENSION pg_apikey")
            wait_for("a worker again", lambda: _worker_pid("come_and_go"))
            assert c.execute("SELECT region FROM apikey.shared_memory_stats()").fetchone()[0] is not None
    finally:
        with connect("postgres") as c:
            c.execute("DROP DATABASE IF EXISTS come_and_go WITH (FORCE)")
