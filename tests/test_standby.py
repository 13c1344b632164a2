"""A real hot standby (pg_basebackup, streaming replication): keys verify and authenticate there,
rate limits and usage tracking work from shared memory, a revoke on the primary reaches the
standby's key caches through WAL replay, and writes fail with the standby's own error."""

import subprocess

import psycopg
import pytest

import conftest
from conftest import PGBIN, ROOT

PRIMARY_PORT, STANDBY_PORT = "54348", "54349"


def connect(name, port):
    return psycopg.connect(f"host={ROOT / '.run' / name} port={port} user=postgres dbname=postgres", autocommit=True)


def wait_for(predicate, timeout=15.0):
    return conftest.wait_for(predicate, timeout)


@pytest.fixture(scope="module")
def pair():
    standby = ROOT / ".run/standby"
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", "primary", PRIMARY_PORT], check=True)
    try:
        with connect("primary", PRIMARY_PORT) as c:
            c.execute("CREATE EXTENSION pg_apikey")
        subprocess.run(["rm", "-rf", str(standby)], check=True)
        standby.mkdir(parents=True)
        subprocess.run(["chown", "postgres:", str(standby)], check=True)
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_basebackup", "-h", str(ROOT / ".run/primary"),
                        "-p", PRIMARY_PORT, "-U", "postgres", "-D", str(standby / "data"), "-R", "-X", "stream"],
                       check=True, capture_output=True)
        with open(standby / "data/postgresql.conf", "a") as conf:
            conf.write(f"port = {STANDBY_PORT}\nunix_socket_directories = '{standby}'\nlog_directory = '{standby}'\n"
                       "hot_standby = on\n")
        subprocess.run(["runuser", "-u", "postgres", "--", "env", "RUST_BACKTRACE=0", f"{PGBIN}/pg_ctl", "-D",
                        str(standby / "data"), "-l", str(standby / "startup.log"), "-w", "start"],
                       check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_ctl", "-D", str(standby / "data"),
                        "-m", "fast", "-w", "stop"], check=False, capture_output=True)
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", "primary"], check=False)


def test_keys_work_on_the_standby_and_revokes_reach_it(pair):
    with connect("primary", PRIMARY_PORT) as p, connect("standby", STANDBY_PORT) as s:
        assert s.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        key_id, key = p.execute(
            "SELECT id, api_key::text FROM apikey.create('replica', 'k', rate_limit => 2, rate_period => '1 hour')"
        ).fetchone()
        owner = wait_for(lambda: s.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone()[0])
        assert owner == "replica"
        # Rate limits and usage live in the standby's own shared memory.
        s.execute("SELECT apikey.authenticate(%s)", (key,))
        s.execute("SELECT apikey.authenticate(%s)", (key,))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            s.execute("SELECT apikey.authenticate(%s)", (key,))
        assert s.execute("SELECT apikey.rate_limit('standby-bucket', 1, '1 minute')").fetchone()[0] == 0
        uses = s.execute("SELECT uses FROM apikey.usage_live WHERE key_id = %s", (key_id,)).fetchone()[0]
        assert uses == 3  # one verify, two authenticates
        # Writes are the standby's to refuse.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as e:
            s.execute("SELECT apikey.create('replica', 'on standby')")
        assert e.value.diag.message_primary == "cannot create API keys on a hot standby"
        assert "primary" in e.value.diag.message_hint
        for change in ("revoke", "delete", "rotate"):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                s.execute(f"SELECT apikey.{change}(%s)", (key_id,))
        # A revoke on the primary invalidates the standby's cached key through WAL replay.
        assert s.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone()[0] == "replica"
        p.execute("SELECT apikey.revoke(%s)", (key_id,))

        def revoked():
            try:
                s.execute("SELECT apikey.verify(%s)", (key,))
                return False
            except psycopg.errors.InvalidAuthorizationSpecification:
                return True

        wait_for(revoked)


def test_postgrest_on_primary_and_standby_and_remote_apply_makes_revokes_immediate(pair):
    """The read-replica deployment: the seeds' API served by PostgREST on the primary and on the
    standby, keys verified on both; a revoke committed with synchronous_commit = remote_apply is
    refused by the standby at once (without it, after the replay lag)."""
    import requests

    from conftest import ROOT as root
    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(root / ".run/primary"), "-p", PRIMARY_PORT,
            "-U", "postgres", "-d", "postgres"]
    for f in ("surveys_rls.sql", "surveys_data.sql", "postgrest_api.sql"):
        subprocess.run([*psql, "-f", str(root / "examples" / f)], check=True, capture_output=True)
    apis = {"primary": (PRIMARY_PORT, "54382", "54383"), "standby": (STANDBY_PORT, "54384", "54385")}
    try:
        with connect("primary", PRIMARY_PORT) as p:
            p.execute("SET apikey.creation_limit = 0")
            key_id, key = p.execute("SELECT id, api_key::text FROM apikey.create('alice', 'replicated', format => 'ct_live')").fetchone()
            lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        with connect("standby", STANDBY_PORT) as s:
            wait_for(lambda: s.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0])
        for name, (pg, pgrst, nginx) in apis.items():
            subprocess.run([str(root / "examples/api.sh"), "start", name, pg, "postgres", pgrst, nginx], check=True)
        for name, (_, _, nginx) in apis.items():
            r = requests.get(f"http://127.0.0.1:{nginx}/api/surveys/", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, (name, r.text)
        # Make the standby synchronous, then revoke with remote_apply: when the revoke returns,
        # the standby has replayed it (and its per-key invalidation).
        with connect("primary", PRIMARY_PORT) as p:
            p.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            p.execute("SELECT pg_reload_conf()")
            wait_for(lambda: p.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()[0])
            p.execute("SET synchronous_commit = remote_apply")
            p.execute("SELECT apikey.revoke(%s)", (key_id,))
        r = requests.get(f"http://127.0.0.1:{apis['standby'][2]}/api/surveys/", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401 and r.json()["message"] == "invalid API key"
    finally:
        for name in apis:
            subprocess.run([str(root / "examples/api.sh"), "stop", name], check=False)
        with connect("primary", PRIMARY_PORT) as p:
            p.execute("ALTER SYSTEM RESET synchronous_standby_names")
            p.execute("SELECT pg_reload_conf()")


def test_credits_are_spent_on_the_standby_from_its_own_memory(pair):
    with connect("primary", PRIMARY_PORT) as p:
        p.execute("SET apikey.creation_limit = 0")
        _, key = p.execute("SELECT id, api_key::text FROM apikey.create('replica', 'paid', credits => 3)").fetchone()
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with connect("standby", STANDBY_PORT) as s:
        wait_for(lambda: s.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0])
        s.execute("BEGIN READ ONLY")
        for _ in range(3):
            s.execute("SELECT apikey.authenticate(%s)", (key,))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="no credits left"):
            s.execute("SELECT apikey.authenticate(%s)", (key,))
        s.execute("ROLLBACK")


def test_an_allow_listed_key_and_a_balance_are_read_without_a_transaction_id(pair):
    """The request path writes nothing: a key with an address allow-list verifies in a READ ONLY
    transaction on the primary without being given a transaction id, and on the standby (where
    assigning one is an error); apikey.credits(id) reads a balance there too."""
    with connect("primary", PRIMARY_PORT) as p:
        p.execute("SET apikey.creation_limit = 0")
        kid, key = p.execute("SELECT id, api_key::text FROM apikey.create('replica', 'listed', credits => 5, "
                             "allowed_ips => '{127.0.0.1/32}')").fetchone()
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    tcp = "host=127.0.0.1 user=postgres dbname=postgres port="
    with psycopg.connect(tcp + PRIMARY_PORT, autocommit=True) as p:
        p.execute("BEGIN READ ONLY")
        assert p.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone()[0] == "replica"
        assert p.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 5
        assert p.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()[0] is None
        p.execute("COMMIT")
    with connect("standby", STANDBY_PORT) as s:
        wait_for(lambda: s.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0])
    with psycopg.connect(tcp + STANDBY_PORT, autocommit=True) as s:
        assert s.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone()[0] == "replica"
        assert s.execute("SELECT apikey.authenticate(%s, cost => 2)", (key,)).fetchone()[0] == "replica"
        assert s.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 3
    with connect("standby", STANDBY_PORT) as s:  # a Unix socket: no address, so the list refuses
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not allowed from this address"):
            s.execute("SELECT apikey.verify(%s)", (key,))
