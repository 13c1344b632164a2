"""Key changes take effect for every session the moment they commit; verification needs no
write, so it works in READ ONLY transactions; the identity never outlives its transaction."""

import psycopg
import pytest


def create(conn, owner="alice", name="k", **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    sql = f"SELECT id, api_key::text FROM apikey.create(%(owner)s, %(name)s{', ' + args if args else ''})"
    return conn.execute(sql, {"owner": owner, "name": name, **kw}).fetchone()


def verify_owner(conn, key):
    return conn.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone()[0]


@pytest.mark.parametrize("change", ["revoke", "delete"])
def test_a_change_is_seen_by_another_session_at_its_next_statement(db, change):
    admin, other = db(), db()
    key_id, key = create(admin)
    # The other session has verified (and cached plans for) this key already.
    assert verify_owner(other, key) == "alice"
    admin.execute(f"SELECT apikey.{change}(%s)", (key_id,))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid API key"):
        verify_owner(other, key)


def test_an_uncommitted_revoke_is_not_seen_and_a_rolled_back_one_never_is(db):
    admin, other = db(autocommit=False), db()
    key_id, key = create(other)
    admin.execute("SELECT apikey.revoke(%s)", (key_id,))
    assert verify_owner(other, key) == "alice"
    admin.rollback()
    assert verify_owner(other, key) == "alice"


def test_verify_and_authenticate_work_in_read_only_transactions(db):
    conn = db(autocommit=False)
    _, key = create(db())
    conn.execute("SET TRANSACTION READ ONLY")
    assert verify_owner(conn, key) == "alice"
    assert conn.execute("SELECT apikey.authenticate(%s)", (key,)).fetchone()[0] == "alice"
    conn.commit()
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    assert verify_owner(conn, key) == "alice"
    conn.rollback()


def test_identity_is_cleared_at_commit_and_rollback_on_a_pooled_connection(db):
    conn = db(autocommit=False)
    _, key = create(db())
    conn.execute("SELECT apikey.authenticate(%s)", (key,))
    assert conn.execute("SELECT apikey.current_owner()").fetchone()[0] == "alice"
    conn.commit()
    assert conn.execute("SELECT apikey.current_owner()").fetchone()[0] is None
    conn.execute("SELECT apikey.authenticate(%s)", (key,))
    conn.rollback()
    assert conn.execute("SELECT apikey.current_owner()").fetchone()[0] is None


def test_keys_pass_as_bind_parameters_in_text_and_binary(db):
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    conn = db()
    _, key = create(conn)
    assert conn.execute("SELECT owner FROM apikey.verify(%s::apikey.api_key)", (key,)).fetchone()[0] == "alice"

    class BinaryKey(str):
        pass

    class BinaryKeyDumper(Dumper):
        format = Format.BINARY
        oid = conn.execute("SELECT 'apikey.api_key'::regtype::oid").fetchone()[0]

        def dump(self, obj):
            return obj.encode()

    conn.adapters.register_dumper(BinaryKey, BinaryKeyDumper)
    # A binary parameter of type api_key goes through api_key_recv, which checks it like text.
    assert conn.execute("SELECT owner FROM apikey.verify(%b)", (BinaryKey(key),)).fetchone()[0] == "alice"
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="wrong length"):
        conn.execute("SELECT apikey.verify(%b)", (BinaryKey(key[:-1]),))
    out = conn.cursor(binary=True).execute("SELECT %s::apikey.api_key", (key,)).fetchone()[0]
    assert bytes(out) == key.encode()


def test_many_sessions_create_distinct_keys_that_all_verify(db):
    import concurrent.futures

    db().execute("ALTER DATABASE \"%s\" SET apikey.creation_limit = 0" % db.name)

    def work(i):
        with db() as c:
            return [create(c, owner=f"owner{i}", name=f"k{j}")[1] for j in range(25)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = [k for batch in pool.map(work, range(8)) for k in batch]
    assert len(set(keys)) == 200
    check = db()
    owners = {verify_owner(check, k) for k in keys}
    assert owners == {f"owner{i}" for i in range(8)}


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_a_revoke_reaches_a_session_inside_its_open_transaction(db, isolation):
    """The backend-local key cache is invalidated at the other session's commit, even for a
    transaction that was already open and takes no new locks."""
    admin, reader = db(), db(autocommit=False)
    key_id, key = create(admin)
    reader.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    assert verify_owner(reader, key) == "alice"
    assert verify_owner(reader, key) == "alice"
    admin.execute("SELECT apikey.revoke(%s)", (key_id,))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        verify_owner(reader, key)
    reader.rollback()


def test_a_direct_update_by_a_superuser_invalidates_cached_keys(db):
    admin, reader = db(), db()
    key_id, key = create(admin)
    assert verify_owner(reader, key) == "alice"
    admin.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 second' WHERE id = %s", (key_id,))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="API key has expired"):
        verify_owner(reader, key)


def test_a_key_created_and_used_in_a_rolled_back_transaction_does_not_survive(db):
    conn = db(autocommit=False)
    key = create(conn)[1]
    assert verify_owner(conn, key) == "alice"
    assert verify_owner(conn, key) == "alice"
    conn.rollback()
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        verify_owner(conn, key)
    conn.rollback()


def test_a_grace_period_ends_for_sessions_that_cached_the_key(db):
    admin, reader = db(), db()
    key_id, key = create(admin)
    assert verify_owner(reader, key) == "alice"
    admin.execute("SELECT apikey.rotate(%s, '1 second')", (key_id,))
    assert verify_owner(reader, key) == "alice"
    reader.execute("SELECT pg_sleep(1.1)")
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid API key"):
        verify_owner(reader, key)
