"""The shared key cache (apikey.shared_key_cache_size): a key one backend read is found by every
other backend of the database without touching the table; revocation is still seen at the very
next statement in every session; revokes racing with misses leave no revoked key valid; every
database gets its own region, which grows into the pool and never evicts another database's
keys; TRUNCATE empties it; a transaction that changed keys cannot be prepared while it is on."""

import psycopg
import pytest

from conftest import own_cluster, race_revokes_against_readers

PORT = "54360"


@pytest.fixture(scope="module")
def connect():
    # A small pool (4 MB: 15 chunks of 1,024 keys) for at most 6 databases, so one database can
    # grow into it and the pool still keeps a first chunk for every database.
    with own_cluster("shared", PORT, "shared_a",
                     "apikey.shared_key_cache_size = '4MB'", "apikey.max_databases = 6",
                     "max_prepared_transactions = 2",
                     setup=("ALTER DATABASE shared_a SET apikey.creation_limit = 0",)) as conn:
        with conn("postgres") as c:
            c.execute("CREATE DATABASE shared_b")
            c.execute("CREATE DATABASE shared_c")
        for name in ("shared_b", "shared_c"):
            with conn(name) as c:
                c.execute("CREATE EXTENSION pg_apikey")
                c.execute(f"ALTER DATABASE {name} SET apikey.creation_limit = 0")
        with conn("postgres") as c:
            c.execute("CREATE DATABASE shared_old")
        with conn("shared_old") as c:
            c.execute("CREATE EXTENSION pg_apikey VERSION '0.1.0'")
        yield conn


def stats(c):
    return c.execute("SELECT entries, capacity, hits, misses FROM apikey.shared_key_cache_stats()").fetchone()


def make_keys(c, n, owner="s"):
    return c.execute(
        "SELECT id, api_key::text FROM generate_series(1, %s) g, LATERAL apikey.create(%s, 'k' || g) c",
        (n, owner)).fetchall()


def reader(connect, dbname="shared_a"):
    """A session that never answers from its own cache, so every verify asks the shared one."""
    c = connect(dbname)
    c.execute("SET apikey.key_cache_size = 0")
    return c


def test_a_key_read_by_one_backend_is_a_hit_in_another(connect):
    with connect() as admin:
        (_, k), = make_keys(admin, 1)
    with reader(connect) as first:
        first.execute("SELECT apikey.verify(%s)", (k,))
        assert stats(first)[2:] == (0, 1)
    with reader(connect) as second:
        second.execute("SELECT apikey.verify(%s)", (k,))
        second.execute("SELECT apikey.verify(%s)", (k,))
        assert stats(second)[2:] == (2, 0), "the second backend read the table"


def test_prewarm_loads_live_keys_for_administrators_only(connect):
    with connect() as admin:
        admin.execute("DO $$ BEGIN CREATE ROLE shared_nobody LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        (kid, k), = make_keys(admin, 1, owner="warm")
        admin.execute("SELECT apikey.revoke(%s)", (kid,))
        (_, live), = make_keys(admin, 1, owner="warm")
        held = admin.execute("SELECT apikey.prewarm_key_cache()").fetchone()[0]
        assert held > 0
    with reader(connect) as r:
        r.execute("SELECT apikey.verify(%s)", (live,))
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            r.execute("SELECT apikey.verify(%s)", (k,))
        assert stats(r)[2:] == (1, 1)
    with connect(user="shared_nobody") as nobody:
        for call in ("SELECT apikey.prewarm_key_cache()", "SELECT * FROM apikey.shared_key_cache_stats()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                nobody.execute(call)


def test_a_revoke_is_seen_at_the_next_statement_through_the_shared_cache(connect):
    with connect() as admin:
        (kid, k), (kid2, k2) = make_keys(admin, 2)
        with reader(connect) as r, reader(connect, "shared_a") as rr:
            r.execute("SELECT apikey.verify(%s)", (k,))
            rr.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            rr.execute("SELECT apikey.verify(%s)", (k2,))
            rr.execute("SELECT apikey.verify(%s)", (k2,))
            assert stats(r)[2] + stats(rr)[2] >= 1
            admin.execute("SELECT apikey.revoke(%s)", (kid,))
            admin.execute("SELECT apikey.revoke(%s)", (kid2,))
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                r.execute("SELECT apikey.verify(%s)", (k,))
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                rr.execute("SELECT apikey.verify(%s)", (k2,))
            rr.execute("ROLLBACK")
        with reader(connect) as fresh:
            for key in (k, k2):
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                    fresh.execute("SELECT apikey.verify(%s)", (key,))


def test_revokes_racing_with_shared_cache_misses_never_leave_a_revoked_key_valid(connect):
    """Eight readers (no cache of their own) verify random keys out of 400 while four sessions
    revoke them one by one. A verify that starts after a revoke returned must fail."""
    with connect() as admin:
        keys = make_keys(admin, 400, owner="race")
    assert race_revokes_against_readers(keys, lambda: reader(connect), connect) == []
    with reader(connect) as c:
        for _, k in keys:
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                c.execute("SELECT apikey.verify(%s)", (k,))


def test_every_database_has_its_own_region_that_grows_without_evicting_another(connect):
    with connect("shared_b") as b:
        (_, kb), = make_keys(b, 1)
        b.execute("SELECT apikey.verify(%s)", (kb,))
        entries_b, capacity_b, _, _ = stats(b)
        assert entries_b >= 1 and capacity_b == 1024
    with connect() as a:
        # Database a loads far more keys than one chunk holds: its region grows into the pool,
        # up to what the pool keeps back for databases that have no chunk yet.
        make_keys(a, 6000, owner="filler")
        a.execute("SELECT apikey.prewarm_key_cache()")
        entries_a, capacity_a, _, _ = stats(a)
        assert capacity_a > 1024 and entries_a > 1024, (entries_a, capacity_a)
    with reader(connect, "shared_b") as b:
        b.execute("SELECT apikey.verify(%s)", (kb,))
        assert stats(b)[2] == 1, "database a's keys evicted database b's"
    with connect("shared_c") as c:
        # A database that came last still gets its first chunk.
        (_, kc), = make_keys(c, 1)
        c.execute("SELECT apikey.verify(%s)", (kc,))
        c.execute("SET apikey.key_cache_size = 0")
        c.execute("SELECT apikey.verify(%s)", (kc,))
        entries, capacity, hits, _ = stats(c)
        assert (capacity, hits) == (1024, 1) and entries >= 1


def test_truncate_empties_the_region(connect):
    with connect() as admin:
        (_, k), = make_keys(admin, 1, owner="trunc")
        with reader(connect) as r:
            r.execute("SELECT apikey.verify(%s)", (k,))
            admin.execute("TRUNCATE apikey.keys CASCADE")
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                r.execute("SELECT apikey.verify(%s)", (k,))
        with reader(connect) as fresh:
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                fresh.execute("SELECT apikey.verify(%s)", (k,))


def test_a_transaction_that_changed_keys_cannot_be_prepared(connect):
    with connect() as admin:
        (kid, k), = make_keys(admin, 1, owner="twophase")
    with connect(autocommit=False) as c:
        c.execute("SELECT apikey.revoke(%s)", (kid,))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            c.execute("PREPARE TRANSACTION 'revoke_it'")
        c.rollback()
    with reader(connect) as r:
        r.execute("SELECT apikey.verify(%s)", (k,))


def test_before_alter_extension_update_the_shared_cache_stays_out_of_the_way(connect):
    """A database still on the 0.1.0 schema (the library upgraded, ALTER EXTENSION UPDATE not yet
    run) has no per-key trigger: the shared cache must not hold its keys, or a revoke would
    never reach it (found by the review)."""
    key = "cfk_" + "4e" * 32
    with connect("shared_old") as admin:
        admin.execute("""INSERT INTO apikey.keys (owner, name, format, display_prefix, last4, digest, created_by)
                         VALUES ('old', 'k', 'cfk', 'cfk_4e4e4', '4e4e', sha256(convert_to(%s, 'UTF8')), 'postgres')""",
                      (key,))
        with reader(connect, "shared_old") as r, reader(connect, "shared_old") as r2:
            r.execute("SELECT apikey.verify(%s)", (key,))
            r2.execute("SELECT apikey.verify(%s)", (key,))
            admin.execute("UPDATE apikey.keys SET revoked_at = now() WHERE owner = 'old'")
            for c in (r, r2):
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                    c.execute("SELECT apikey.verify(%s)", (key,))
        with reader(connect, "shared_old") as fresh:
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                fresh.execute("SELECT apikey.verify(%s)", (key,))


def test_a_database_created_again_under_the_same_name_does_not_find_the_old_keys(connect):
    """A database dropped and created again from the same
    template has its keys table in a file of the same number; it must still not see the keys
    the dropped one had cached (found by the review)."""
    with connect("postgres") as c:
        c.execute("CREATE DATABASE shared_tpl")
    with connect("shared_tpl") as c:
        c.execute("CREATE EXTENSION pg_apikey")
        c.execute("ALTER DATABASE shared_tpl SET apikey.creation_limit = 0")
    with connect("postgres") as c:
        c.execute("CREATE DATABASE shared_re TEMPLATE shared_tpl")
    with connect("shared_re") as admin:
        (_, k), = make_keys(admin, 1, owner="before-drop")
    with reader(connect, "shared_re") as r:
        r.execute("SELECT apikey.verify(%s)", (k,))
        r.execute("SELECT apikey.verify(%s)", (k,))
        # In the shared cache now (the worker's first load may have put it there even before the
        # first verify: one hit or two).
        assert stats(r)[2] >= 1
    with connect("postgres") as c:
        c.execute("DROP DATABASE shared_re WITH (FORCE)")
        c.execute("CREATE DATABASE shared_re TEMPLATE shared_tpl")
    with reader(connect, "shared_re") as r:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            r.execute("SELECT apikey.verify(%s)", (k,))
