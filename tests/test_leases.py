"""Credits across a primary and two real hot standbys: the primary is the ledger, each standby's
worker leases slices of a key's credits over its replication connection and its backends spend
them from shared memory. Exact totals under concurrency on all three servers, the primary stopped
mid-run (standbys spend what they hold, then refuse with 57P03), revocation ending leases, and a
promotion that mints nothing."""

import itertools
import json
import random
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import PG_MAJOR, PGBIN, ROOT, wait_for

PRIMARY, STANDBYS = ("lease_primary", "54361"), [("lease_standby_a", "54362"), ("lease_standby_b", "54363")]
CONNS_PER_SERVER = 8


def connect(server, **kw):
    name, port = server
    return psycopg.connect(f"host={ROOT / '.run' / name} port={port} user=postgres dbname=postgres",
                           autocommit=True, **kw)


def as_pg(*args, check=True):
    return subprocess.run(["runuser", "-u", "postgres", "--", "env", "RUST_BACKTRACE=0", *args],
                          check=check, capture_output=True)


def pg_ctl(server, *args, check=True):
    name, _ = server
    d = ROOT / ".run" / name
    return as_pg(f"{PGBIN}/pg_ctl", "-D", str(d / "data"), "-l", str(d / "startup.log"), "-w", *args, check=check)


def make_standby(server):
    name, port = server
    d = ROOT / ".run" / name
    subprocess.run(["rm", "-rf", str(d)], check=True)
    d.mkdir(parents=True)
    subprocess.run(["chown", "postgres:", str(d)], check=True)
    as_pg(f"{PGBIN}/pg_basebackup", "-h", str(ROOT / ".run" / PRIMARY[0]), "-p", PRIMARY[1], "-U", "postgres",
          "-D", str(d / "data"), "-R", "-X", "stream")
    with open(d / "data/postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nunix_socket_directories = '{d}'\nlog_directory = '{d}'\nhot_standby = on\n")
    pg_ctl(server, "start")


@pytest.fixture(scope="module")
def servers():
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", PRIMARY[0], PRIMARY[1]], check=True)
    try:
        with connect(PRIMARY) as c:
            c.execute("CREATE EXTENSION pg_apikey")
        for s in STANDBYS:
            make_standby(s)
        yield
    finally:
        for s in STANDBYS:
            pg_ctl(s, "-m", "fast", "stop", check=False)
        pg_ctl(PRIMARY, "-m", "fast", "stop", check=False)


OWNERS = itertools.count()


def new_key(credits):
    # An owner per key: the creation quota (5 an hour per owner) is not what these tests are about.
    with connect(PRIMARY) as p:
        key_id, key = p.execute("SELECT id, api_key::text FROM apikey.create(%s, 'k', credits => %s)",
                                (f"ledger-{next(OWNERS)}", credits)).fetchone()
        p.execute("SELECT pg_catalog.txid_current()")  # a commit after the key's, for replay below
    for s in STANDBYS:
        with connect(s) as c:
            wait_for(lambda: c.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone())
    return key_id, key


def spend(c, key, cost):
    """True when `cost` was spent; False when refused for credits; the error otherwise."""
    try:
        c.execute("SELECT apikey.authenticate(%s, cost => %s)", (key, cost))
        return True
    except psycopg.errors.ConfigurationLimitExceeded:
        return False


def spend_until_refused(server, key, totals, errors, stop=None):
    rng = random.Random()
    try:
        with connect(server) as c:
            while stop is None or not stop.is_set():
                cost = rng.randint(1, 5)
                if spend(c, key, cost):
                    totals.append(cost)
                elif cost > 1 and spend(c, key, 1):
                    totals.append(1)
                elif cost == 1 or not spend(c, key, 1):
                    return
    except psycopg.Error as e:
        errors.append(e)


def run_everywhere(key, servers_list, conns=CONNS_PER_SERVER, stop=None):
    totals, errors = [], []
    threads = [threading.Thread(target=spend_until_refused, args=(s, key, totals, errors, stop))
               for s in servers_list for _ in range(conns)]
    for t in threads:
        t.start()
    return threads, totals, errors


def sweep(key, servers_list, quiet=8.0):
    """Spend at cost 1 wherever anything is left, until no server has served one for `quiet`
    seconds (standbys give back idle leases meanwhile, which the others then lease)."""
    spent, last = 0, time.time()
    conns = [connect(s) for s in servers_list]
    try:
        while time.time() - last < quiet:
            for c in conns:
                try:
                    while spend(c, key, 1):
                        spent += 1
                        last = time.time()
                except psycopg.errors.CannotConnectNow:
                    pass
            time.sleep(0.2)
    finally:
        for c in conns:
            c.close()
    return spent


def test_lease_exchange_is_for_standby_workers_only(servers):
    with connect(PRIMARY) as p:
        p.execute("CREATE ROLE lease_intruder LOGIN")
        with connect(PRIMARY) as c:
            c.execute("SET ROLE lease_intruder")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                c.execute("""SELECT apikey.lease_exchange('x', '{"asks": [], "returns": []}')""")
            assert "REPLICATION" in e.value.diag.message_primary
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT * FROM apikey.leases")
    with connect(STANDBYS[0]) as s:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            s.execute("""SELECT apikey.lease_exchange('x', '{"asks": [], "returns": []}')""")


def test_an_exchange_refuses_what_it_cannot_read(servers):
    with connect(PRIMARY) as p:
        for bad in ['not json', '{"asks": [[1, -1, 0, 0]], "returns": []}', '{"asks": []}',
                    '{"asks": [], "returns": [], "limits": [[1, "", 1, 1]]}',
                    '{"asks": [], "returns": [], "limits": [[1, "%s", 1, 1]]}' % ("78" * 65),
                    '{"asks": [], "returns": [], "limits": [[1, "requests", 1, 1]]}',
                    '{"asks": [], "returns": [], "limits": [[1, "ff", 1, 1]]}',
                    '{"asks": [], "returns": [], "limits": [[1, "%s", 1]]}' % "requests".encode().hex()]:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                p.execute("SELECT apikey.lease_exchange('x', %s)", (bad,))
        for bad in ['', 'x' * 65, 'a-b']:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                p.execute("""SELECT apikey.lease_exchange(%s, '{"asks": [], "returns": []}')""", (bad,))
        with pytest.raises(psycopg.errors.NullValueNotAllowed):
            p.execute("SELECT apikey.lease_exchange('x', NULL)")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            p.execute("SELECT apikey.lease_exchange('x', %s)", ('{"asks": [], "returns": []}' + " " * (1 << 20),))


def exchange(c, name, asks=(), returns=()):
    body = json.dumps({"asks": [list(a) for a in asks], "returns": [list(r) for r in returns]})
    return json.loads(c.execute("SELECT apikey.lease_exchange(%s, %s)", (name, body)).fetchone()[0])


def test_an_exchange_that_does_not_commit_changes_nothing(servers):
    """Shared memory does not roll back: a grant is put back when its exchange aborts, a return
    counts only once it commits, and an exchange cannot run in a transaction block."""
    key_id, _ = new_key(1000)
    with connect(PRIMARY) as p:
        credits = lambda: p.execute("SELECT apikey.credits(%s)", (key_id,)).fetchone()[0]
        held = lambda: p.execute("SELECT coalesce(sum(held), 0) FROM apikey.leases WHERE key_id = %s",
                                 (key_id,)).fetchone()[0]
        assert exchange(p, "mine", asks=[(key_id, 0, 100, 0)])["granted"] == [[key_id, 100]]
        assert (credits(), held()) == (900, 100)
        body = json.dumps({"asks": [[key_id, 0, 100, 0]], "returns": [[key_id, 100]]})
        with pytest.raises(psycopg.errors.DivisionByZero):
            p.execute("SELECT apikey.lease_exchange('mine', %s), 1/0", (body,))
        assert (credits(), held()) == (900, 100)
        with p.transaction():
            with pytest.raises(psycopg.errors.ActiveSqlTransaction):
                p.execute("SELECT apikey.lease_exchange('mine', %s)", (body,))
        assert (credits(), held()) == (900, 100)
        # Committed: the return counts, once.
        exchange(p, "mine", returns=[(key_id, 100)])
        exchange(p, "mine", returns=[(key_id, 100)])
        assert (credits(), held()) == (1000, 0)


def test_a_refilling_key_gets_no_slice_back(servers):
    """A refill since a grant sets the balance anew: a returned slice on top would carry an old
    interval's allowance over, so a key that refills gets nothing back."""
    with connect(PRIMARY) as p:
        key_id = p.execute("SELECT id FROM apikey.create('ledger-refill', 'r', credits => 100, refill_amount => 100,"
                           " refill_interval => '1 hour')").fetchone()[0]
        assert exchange(p, "refill", asks=[(key_id, 0, 50, 0)])["granted"] == [[key_id, 50]]
        exchange(p, "refill", returns=[(key_id, 50)])
        assert p.execute("SELECT apikey.credits(%s)", (key_id,)).fetchone()[0] == 50


def test_another_role_cannot_give_back_a_standbys_lease(servers):
    key_id, _ = new_key(1000)
    with connect(PRIMARY) as p:
        p.execute("CREATE ROLE lease_other REPLICATION LOGIN")
        exchange(p, "victim", asks=[(key_id, 0, 100, 0)])
        with connect(PRIMARY) as o:
            o.execute("SET ROLE lease_other")
            assert exchange(o, "victim", returns=[(key_id, 100)]) == {
                "granted": [], "ended": [], "busy": [], "scarce": [], "ttl": 60, "limits": []}
        assert p.execute("SELECT apikey.credits(%s)", (key_id,)).fetchone()[0] == 900


def test_database_settings_on_the_primary_do_not_stop_leasing(servers):
    """A database owner's ALTER DATABASE … SET reaches the standby worker's session on the primary;
    the worker sets what it relies on itself."""
    # From 17, a transaction timeout would abort an exchange after it took its grants.
    timeouts = ["statement_timeout"] + (["transaction_timeout"] if PG_MAJOR >= 17 else [])
    # What this test's own sessions undo (the settings replicate: the standbys' sessions have them too).
    ours = " ".join(f"-c {t}=0" for t in timeouts) + " -c role=none -c local_preload_libraries="
    with connect(PRIMARY) as p:
        p.execute("DROP ROLE IF EXISTS lease_dbo")
        p.execute("CREATE ROLE lease_dbo")
        p.execute("ALTER DATABASE postgres SET default_transaction_read_only = on")
        # A superuser ledger role would lease as this role: refused (no REPLICATION).
        p.execute("ALTER DATABASE postgres SET role = 'lease_dbo'")
        if PG_MAJOR >= 17:
            # Loaded as a session starts: on 15 and 16 it is in force before the worker can say otherwise.
            p.execute("ALTER DATABASE postgres SET local_preload_libraries = 'no_such_library'")
        for t in timeouts:
            p.execute(f"ALTER DATABASE postgres SET {t} = '1ms'")
        try:
            p.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg_apikey lease'")
            with connect(PRIMARY, options=ours) as w:
                w.execute("SET default_transaction_read_only = off")
                key_id, key = w.execute("SELECT id, api_key::text FROM apikey.create('ledger-settings', 'k', credits => 50)").fetchone()
            for s in STANDBYS:
                with connect(s, options=ours) as c:
                    wait_for(lambda: c.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone())
                    assert spend(c, key, 1)
        finally:
            p.execute("ALTER DATABASE postgres RESET default_transaction_read_only")
            p.execute("ALTER DATABASE postgres RESET role")
            p.execute("ALTER DATABASE postgres RESET local_preload_libraries")
            for t in timeouts:
                p.execute(f"ALTER DATABASE postgres RESET {t}")


def test_a_plain_replication_role_can_be_the_ledger_role(servers):
    """apikey.ledger_conninfo names a role with REPLICATION and nothing more, whose own settings
    would stop an exchange: the worker's session settings travel in the startup packet, all of
    them settable by any role, so leasing works."""
    standby = STANDBYS[1]
    conf = ROOT / ".run" / standby[0] / "data/postgresql.conf"
    timeouts = ["statement_timeout"] + (["transaction_timeout"] if PG_MAJOR >= 17 else [])
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg_apikey lease'"
    with connect(PRIMARY) as p:
        p.execute("DROP ROLE IF EXISTS lease_ledger")
        p.execute("CREATE ROLE lease_ledger LOGIN REPLICATION")
        for t in timeouts:
            p.execute(f"ALTER ROLE lease_ledger SET {t} = '1ms'")
        p.execute("ALTER ROLE lease_ledger SET default_transaction_read_only = on")
        ledger_oid = p.execute("SELECT oid FROM pg_roles WHERE rolname = 'lease_ledger'").fetchone()[0]
        original = conf.read_text()
        try:
            conf.write_text(original + f"apikey.ledger_conninfo = 'host={ROOT / '.run' / PRIMARY[0]} "
                                       f"port={PRIMARY[1]} user=lease_ledger'\n")
            pg_ctl(standby, "reload")
            with connect(standby) as c:
                wait_for(lambda: c.execute("SELECT current_setting('apikey.ledger_conninfo') <> ''").fetchone()[0])
            time.sleep(1)  # the worker reads the file at its next wake-up (every 200 ms)
            p.execute(kill)
            key_id, key = new_key(100)
            with connect(standby) as c:
                wait_for(lambda: c.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone())
                assert spend(c, key, 1)
            assert p.execute("SELECT standby FROM apikey.leases WHERE key_id = %s", (key_id,)).fetchone()[0] \
                .startswith(f"{ledger_oid}:")
            assert p.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_apikey lease'"
                             " AND usename = 'lease_ledger'").fetchone()[0] == 1
        finally:
            conf.write_text(original)
            pg_ctl(standby, "reload")
            p.execute(kill)


def test_an_unreachable_ledger_is_a_503_with_retry_after_over_http(servers):
    """PostgREST's answer for 57P03 (through apikey.raise_http, as apikey.pre_request uses it)."""
    with connect(PRIMARY) as p:
        with pytest.raises(psycopg.Error) as e:
            p.execute("""SELECT apikey.raise_http('57P03', 'API key credits are unavailable', '{"retry_after": 1}')""")
    assert e.value.sqlstate == "PGRST"
    detail = json.loads(e.value.diag.message_detail)
    assert detail["status"] == 503 and detail["headers"]["Retry-After"] == "1"


def test_three_servers_spend_exactly_the_balance(servers):
    """8 connections per server spend a 300-credit key at random costs until every server
    refuses: exactly 300 credits are spent in total, never more."""
    key_id, key = new_key(300)
    everywhere = [PRIMARY, *STANDBYS]
    threads, totals, errors = run_everywhere(key, everywhere)
    for t in threads:
        t.join(120)
    assert errors == []
    spent = sum(totals) + sweep(key, everywhere)
    assert spent == 300
    with connect(PRIMARY) as p:
        assert wait_for(lambda: p.execute("SELECT apikey.credits(%s) = 0", (key_id,)).fetchone()[0])
        # Each standby leased some of it (the servers shared the key), and gave back what it did not spend.
        assert p.execute("SELECT count(DISTINCT standby) FROM apikey.leases WHERE key_id = %s",
                         (key_id,)).fetchone()[0] >= 2
        assert wait_for(lambda: p.execute("SELECT coalesce(sum(held), 0) = 0 FROM apikey.leases WHERE key_id = %s",
                                          (key_id,)).fetchone()[0])


def test_a_revoked_key_stops_and_its_leases_end(servers):
    key_id, key = new_key(1000)
    with connect(STANDBYS[0]) as s, connect(PRIMARY) as p:
        for _ in range(20):
            assert spend(s, key, 1)
        assert p.execute("SELECT sum(held) FROM apikey.leases WHERE key_id = %s", (key_id,)).fetchone()[0] > 0
        p.execute("SELECT apikey.revoke(%s)", (key_id,))
        wait_for(lambda: _refused(s, key))
        # What the standby held goes back at its next exchanges: no lease of a revoked key remains.
        assert wait_for(lambda: p.execute("SELECT coalesce(sum(held), 0) = 0 FROM apikey.leases WHERE key_id = %s",
                                          (key_id,)).fetchone()[0])


def plain_key(owner):
    with connect(PRIMARY) as p:
        key = p.execute("SELECT api_key::text FROM apikey.create(%s, 'k')", (owner,)).fetchone()[0]
        p.execute("SELECT pg_catalog.txid_current()")
    for s in STANDBYS:
        with connect(s) as c:
            wait_for(lambda: c.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone(), timeout=60)
    return key


def hammer(server, key, seconds, counts, errors):
    """Authenticate in a loop for `seconds`: count successes and 53400 refusals."""
    ok = refused = 0
    try:
        with connect(server) as c:
            deadline = time.time() + seconds
            while time.time() < deadline:
                try:
                    c.execute("SELECT apikey.authenticate(%s)", (key,))
                    ok += 1
                except psycopg.errors.ConfigurationLimitExceeded:
                    refused += 1
                    time.sleep(0.01)
    except psycopg.Error as e:
        errors.append(e)
    counts.append((server[1], ok, refused))


def test_a_global_limit_holds_across_three_servers(servers):
    """600 per minute (bursts of 600), global: 8 connections per server authenticate for a whole
    minute on all three servers at once. Successes stay within the documented bound, burst +
    rate × (minute + 2 s token lifetime) = 600 + 10 × 62 = 1220, where per-server buckets would
    have let each server alone take 1200; and the limit is served, not just refused."""
    owner = "global-owner"
    with connect(PRIMARY) as p:
        p.execute("SELECT apikey.set_owner_limit(%s, 'requests', 600, '1 minute', global => true)", (owner,))
    key = plain_key(owner)
    counts, errors = [], []
    seconds = 60
    threads = [threading.Thread(target=hammer, args=(s, key, seconds, counts, errors))
               for s in [PRIMARY, *STANDBYS] for _ in range(CONNS_PER_SERVER)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    assert errors == []
    served = sum(ok for _, ok, _ in counts)
    by_server = {port: sum(ok for p, ok, _ in counts if p == port) for port, _, _ in counts}
    print(f"global limit 600/min over {seconds} s on 3 servers: {served} served {by_server}")
    assert served <= 600 + 10 * (seconds + 2)
    assert served >= 600 + 10 * seconds * 0.6
    assert all(n > 0 for n in by_server.values()), by_server


def test_global_limits_are_declared_by_administrators_with_short_names(servers):
    with connect(PRIMARY) as p:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            p.execute("SELECT apikey.set_owner_limit('o', %s, 1, '1 minute', global => true)", ("n" * 65,))
        assert p.execute("SELECT apikey.set_owner_limit('o', %s, 1, '1 minute')", ("n" * 65,)).fetchone()[0]
        assert p.execute("SELECT global FROM apikey.owner_limits WHERE owner = 'o'").fetchone()[0] is False


def _refused(c, key):
    try:
        c.execute("SELECT apikey.authenticate(%s)", (key,))
        return False
    except psycopg.errors.InvalidAuthorizationSpecification:
        return True


def spend_until_unreachable(c, key, timeout=30.0):
    """Spend at cost 1 until the server answers 57P03; how many it served."""
    served, deadline = 0, time.time() + timeout
    while time.time() < deadline:
        try:
            c.execute("SELECT apikey.authenticate(%s)", (key,))
            served += 1
        except psycopg.errors.CannotConnectNow as e:
            assert e.diag.message_primary.startswith("API key credits are unavailable")
            assert e.diag.message_detail == '{"retry_after": 1}'
            return served
    raise AssertionError("the standby never refused while the primary was down")


def psql(server, dbname, sql):
    """psql, for database names psycopg cannot spell (bytes that are not UTF-8)."""
    name, port = server
    return subprocess.run([f"{PGBIN}/psql", "-X", "-At", "-v", "VERBOSITY=verbose", "-h", str(ROOT / ".run" / name),
                           "-p", port, "-U", "postgres", "-d", dbname, "-c", sql], capture_output=True)


def test_a_name_that_is_not_utf8_never_reaches_another_database(servers):
    """A database owner with CREATEDB can name a database with bytes that are not UTF-8 (from a
    SQL_ASCII database) and create the database whose name a lossy copy of it would give, with an
    apikey.lease_exchange of their own: the standby's worker never asks that one (it refuses the
    name, and checks the primary's database by OID), and the standby refuses credits, closed."""
    real, lossy = b"lease_\xff", "lease_\ufffd"
    with connect(PRIMARY) as p:
        p.execute("CREATE DATABASE lease_ascii TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
        assert psql(PRIMARY, "lease_ascii", b'CREATE DATABASE "' + real + b'"').returncode == 0
        assert psql(PRIMARY, real, "CREATE EXTENSION pg_apikey").returncode == 0
        key = psql(PRIMARY, real, "SELECT api_key FROM apikey.create('ascii', 'k', credits => 10)").stdout.strip()
        p.execute(f'CREATE DATABASE "{lossy}"')
        with psycopg.connect(f"host={ROOT / '.run' / PRIMARY[0]} port={PRIMARY[1]} user=postgres dbname={lossy}",
                             autocommit=True) as t:
            t.execute("CREATE SCHEMA apikey")
            t.execute("CREATE TABLE apikey.called (at timestamptz)")
            t.execute("CREATE FUNCTION apikey.lease_exchange(text, text) RETURNS text LANGUAGE sql"
                      " AS $$ INSERT INTO apikey.called VALUES (now()) RETURNING '{}'::text $$")
            p.execute("SELECT pg_catalog.txid_current()")
            standby = STANDBYS[0]
            wait_for(lambda: psql(standby, real, "SELECT 1 FROM apikey.keys LIMIT 1").stdout.strip() == b"1")
            refused = psql(standby, real, b"SELECT apikey.authenticate('" + key + b"', cost => 1)")
            assert b"57P03" in refused.stderr, refused.stderr[:300]
            assert t.execute("SELECT count(*) FROM apikey.called").fetchone()[0] == 0
        log = (ROOT / ".run" / standby[0] / "server.log").read_bytes()
        assert b"name is not valid UTF-8" in log


def test_the_primary_stopped_mid_run(servers):
    """Standbys keep serving what they hold, then refuse with 57P03; after the primary returns
    they lease again, and what was spent everywhere plus the ledger's balance never exceeds what
    the key had. A global limit's tokens run out too (they live 2 s): 57P03 as well."""
    initial = 100_000
    key_id, key = new_key(initial)
    with connect(PRIMARY) as p:
        p.execute("SELECT apikey.set_owner_limit('global-down', 'requests', 100000, '1 minute', global => true)")
    limited = plain_key("global-down")
    with connect(STANDBYS[1]) as c:
        c.execute("SELECT apikey.authenticate(%s)", (limited,))
    stop = threading.Event()
    threads, totals, errors = run_everywhere(key, STANDBYS, conns=4, stop=stop)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert errors == []
    pg_ctl(PRIMARY, "-m", "fast", "stop")
    try:
        served_after = 0
        for s in STANDBYS:
            with connect(s) as c:
                served_after += spend_until_unreachable(c, key)
        with connect(STANDBYS[1]) as c:
            deadline = time.time() + 10
            with pytest.raises(psycopg.errors.CannotConnectNow) as e:
                while time.time() < deadline:
                    c.execute("SELECT apikey.authenticate(%s)", (limited,))
            assert e.value.diag.message_primary.startswith("Global rate limit unavailable")
    finally:
        pg_ctl(PRIMARY, "start")
    assert served_after > 0, "the standbys served nothing of what they held"
    # The standbys may have held (and spent) everything the key had left: a top-up on the primary
    # gives them something to lease again.
    topup = 1000
    with connect(PRIMARY) as p:
        wait_for(lambda: p.execute("SELECT apikey.add_credits(%s, %s)", (key_id, topup)).fetchone())
    with connect(STANDBYS[0]) as s:
        outcomes = []

        def spent_again():
            try:
                outcomes.append(spend(s, key, 1))
            except psycopg.Error as e:
                outcomes.append(f"{e.sqlstate} {e.diag.message_primary}")
            return outcomes[-1] is True
        try:
            wait_for(spent_again, timeout=60)
        except AssertionError:
            raise AssertionError(f"standby A never spent again: last outcomes {outcomes[-3:]}")
    time.sleep(7.0)  # idle leases go back
    with connect(PRIMARY) as p:
        balance = p.execute("SELECT apikey.credits(%s)", (key_id,)).fetchone()[0]
    assert sum(totals) + served_after + 1 + balance <= initial + topup


def test_a_promotion_mints_nothing(servers):
    """The primary stops and standby A is promoted: its balance is the ledger's (what A held
    under lease is forfeited, never added), and what was spent anywhere plus that balance never
    exceeds what the key had; standby B, whose primary is gone, spends only what it holds."""
    initial = 10_000_000  # more than the standbys' slices take, so the ledger keeps some
    key_id, key = new_key(initial)
    stop = threading.Event()
    threads, totals, errors = run_everywhere(key, [PRIMARY, *STANDBYS], conns=3, stop=stop)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert errors == []
    with connect(PRIMARY) as p:
        ledger = p.execute("SELECT apikey.credits(%s)", (key_id,)).fetchone()[0]
        leased = p.execute("SELECT sum(held) FROM apikey.leases WHERE key_id = %s", (key_id,)).fetchone()[0]
    assert leased > 0
    pg_ctl(PRIMARY, "-m", "fast", "stop")
    pg_ctl(STANDBYS[0], "promote")
    with connect(STANDBYS[0]) as a:
        wait_for(lambda: not a.execute("SELECT pg_is_in_recovery()").fetchone()[0])
        balance = a.execute("SELECT apikey.credits(%s)", (key_id,)).fetchone()[0]
        assert balance <= ledger
        assert spend(a, key, 1)
    # B, whose primary is gone, spends from what it holds (for a few seconds here: its slice may
    # be large); whatever it serves stays within what the ledger had already taken out for it.
    served_b, deadline = 0, time.time() + 3
    with connect(STANDBYS[1]) as b:
        while time.time() < deadline:
            try:
                if not spend(b, key, 1):
                    break
                served_b += 1
            except psycopg.errors.CannotConnectNow:
                break
    assert sum(totals) + balance + served_b <= initial
