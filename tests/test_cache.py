"""The backend key cache: per-key invalidation at commit (a change to one key evicts only that key,
a new key evicts nothing), revocation seen at the very next statement in every session (REPEATABLE
READ included), a bound in bytes, and no stale entry when revokes race with cache misses."""

import psycopg
import pytest

from conftest import race_revokes_against_readers


def stats(conn):
    return conn.execute("SELECT entries, bytes, hits, misses FROM apikey.key_cache_stats()").fetchone()


def make_keys(conn, n, owner="c"):
    conn.execute("SET apikey.creation_limit = 0")
    return conn.execute(
        "SELECT id, api_key::text FROM generate_series(1, %s) g, LATERAL apikey.create(%s, 'k' || g) c",
        (n, owner),
    ).fetchall()


def test_a_new_key_evicts_nothing_and_a_revoke_evicts_only_its_key(db):
    admin = db()
    (id1, k1), (id2, k2) = make_keys(admin, 2)
    reader = db()
    # A key enters the cache on its second miss (the doorkeeper), so verify each twice.
    for k in (k1, k2, k1, k2):
        reader.execute("SELECT apikey.verify(%s)", (k,))
    _, _, hits0, misses0 = stats(reader)
    make_keys(admin, 1, owner="someone-else")
    reader.execute("SELECT apikey.verify(%s)", (k1,))
    reader.execute("SELECT apikey.verify(%s)", (k2,))
    _, _, hits1, misses1 = stats(reader)
    assert (hits1 - hits0, misses1 - misses0) == (2, 0), "an unrelated create evicted cached keys"
    admin.execute("SELECT apikey.revoke(%s)", (id2,))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        reader.execute("SELECT apikey.verify(%s)", (k2,))
    reader.execute("SELECT apikey.verify(%s)", (k1,))
    _, _, hits2, _ = stats(reader)
    assert hits2 - hits1 == 1, "revoking one key evicted another"


def test_a_revoke_is_seen_at_the_next_statement_even_in_repeatable_read(db):
    admin = db()
    (kid, k), = make_keys(admin, 1)
    reader = db(autocommit=False)
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT apikey.verify(%s)", (k,))
    reader.execute("SELECT apikey.verify(%s)", (k,))
    admin.execute("SELECT apikey.revoke(%s)", (kid,))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        reader.execute("SELECT apikey.verify(%s)", (k,))
    reader.rollback()


def test_the_cache_is_bounded_in_bytes(db):
    admin = db()
    keys = [k for _, k in make_keys(admin, 1500)]
    reader = db()
    reader.execute("SET apikey.key_cache_size = '64kB'")
    reader.execute("SELECT count(apikey.verify(k)) FROM unnest(%s::text[]) k", (keys,))
    # A key seen once is not cached, but for the doorkeeper's false positives (two hash bits out
    # of 2^18 per key: about one key in 7,000 at this fill).
    assert stats(reader)[0] <= 3, "a key seen once is not cached"
    reader.execute("SELECT count(apikey.verify(k)) FROM unnest(%s::text[]) k", (keys,))
    entries, size, _, _ = stats(reader)
    assert 0 < size <= 64 * 1024 and entries < 1500
    reader.execute("SET apikey.key_cache_size = 0")
    reader.execute("SELECT apikey.verify(%s)", (keys[0],))
    assert stats(reader)[0] == 0


def test_revokes_racing_with_cache_misses_never_leave_a_revoked_key_valid(db):
    """Eight readers verify random keys out of 400 with a small cache (so misses are frequent)
    while four sessions revoke them one by one. A verify that *starts* after a revoke's commit
    returned must fail; any success is a stale cache entry."""
    admin = db()
    keys = make_keys(admin, 400)

    def small_cache_reader():
        c = db()
        c.execute("SET apikey.key_cache_size = '32kB'")
        return c

    assert race_revokes_against_readers(keys, small_cache_reader, db) == []
    # And afterwards every key is refused in a fresh session too.
    with db() as c:
        for _, k in keys[::40]:
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                c.execute("SELECT apikey.verify(%s)", (k,))


def test_vacuum_and_analyze_keep_the_cache_and_truncate_empties_it(db):
    """VACUUM and ANALYZE (autovacuum runs them on a table whose last_used_at the usage worker
    updates) invalidate the keys table but change no key: cached keys stay. TRUNCATE removes
    every key: none verifies afterwards, in a session that had them cached."""
    admin = db()
    (_, k1), (_, k2) = make_keys(admin, 2)
    reader = db()
    for k in (k1, k2, k1, k2):
        reader.execute("SELECT apikey.verify(%s)", (k,))
    for maintenance in ("VACUUM apikey.keys", "ANALYZE apikey.keys", "VACUUM (ANALYZE) apikey.keys"):
        _, _, hits0, misses0 = stats(reader)
        admin.execute(maintenance)
        reader.execute("SELECT apikey.verify(%s)", (k1,))
        reader.execute("SELECT apikey.verify(%s)", (k2,))
        _, _, hits1, misses1 = stats(reader)
        assert (hits1 - hits0, misses1 - misses0) == (2, 0), f"{maintenance} emptied the cache"
    admin.execute("TRUNCATE apikey.keys CASCADE")
    for k in (k1, k2):
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            reader.execute("SELECT apikey.verify(%s)", (k,))


def test_a_cache_switched_off_serves_nothing_it_held(db):
    admin = db()
    (kid, k), = make_keys(admin, 1)
    reader = db()
    reader.execute("SELECT apikey.verify(%s)", (k,))
    reader.execute("SELECT apikey.verify(%s)", (k,))
    assert stats(reader)[0] == 1
    reader.execute("SET apikey.key_cache_size = 0")
    reader.execute("SELECT apikey.verify(%s)", (k,))
    entries, _, _, _ = stats(reader)
    assert entries == 0
