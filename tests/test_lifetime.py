"""Lifetime rules: apikey.default_lifetime fills in an expiry, apikey.max_lifetime refuses longer
or never-expiring keys (22023 naming the maximum), per database by a superuser, and keys minted by
keys and rotations obey them too."""

import psycopg
import pytest


def test_default_and_maximum_per_database(db):
    su = db()
    su.execute(f'ALTER DATABASE "{db.name}" SET apikey.default_lifetime = \'90d\'')
    su.execute(f'ALTER DATABASE "{db.name}" SET apikey.max_lifetime = \'365d\'')
    su.execute(f'ALTER DATABASE "{db.name}" SET apikey.creation_limit = 0')
    with db() as c:
        kid = c.execute("SELECT id FROM apikey.create('l', 'default')").fetchone()[0]
        days = c.execute("SELECT extract(day FROM expires_at - created_at) FROM apikey.keys WHERE id = %s",
                         (kid,)).fetchone()[0]
        assert days == 90
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"at most apikey.max_lifetime \(31536000 seconds\)"):
            c.execute("SELECT apikey.create('l', 'too long', '400 days')")
        c.execute("SELECT apikey.create('l', 'a year', '365 days')")
        # "Never" is refused when there is a maximum, even with no default.
        c.execute("SET apikey.default_lifetime = 0")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SELECT apikey.create('l', 'forever')")
    # Only a superuser sets them.
    role = su.execute("SELECT 'lt_' || substr(md5(random()::text), 1, 8)").fetchone()[0]
    su.execute(f"CREATE ROLE {role} LOGIN")
    with db(user=role) as r:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            r.execute("SET apikey.max_lifetime = 0")


def test_rotations_and_keys_minted_by_keys_obey_the_maximum(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    old_id, _ = su.execute("SELECT id, api_key::text FROM apikey.create('m', 'old, never expires')").fetchone()
    _, holder_key = su.execute("SELECT id, api_key::text FROM apikey.create('m', 'holder, never expires')").fetchone()
    su.execute(f'ALTER DATABASE "{db.name}" SET apikey.max_lifetime = \'30d\'')
    with db() as c:
        new_id = c.execute("SELECT id FROM apikey.rotate(%s)", (old_id,)).fetchone()[0]
        capped = c.execute("SELECT expires_at <= now() + interval '30 days' FROM apikey.keys WHERE id = %s",
                           (new_id,)).fetchone()[0]
        assert capped is True
    role = su.execute("SELECT 'lh_' || substr(md5(random()::text), 1, 8)").fetchone()[0]
    su.execute(f"CREATE ROLE {role} LOGIN")
    with db(user=role, autocommit=False) as h:
        h.execute("SELECT apikey.authenticate(%s)", (holder_key,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="max_lifetime"):
            h.execute("SELECT apikey.create('m', 'minted, inherits never')")
        h.rollback()
        h.execute("SELECT apikey.authenticate(%s)", (holder_key,))
        h.execute("SELECT apikey.create('m', 'minted, 10 days', '10 days')")
        h.rollback()


def test_a_creation_check_runs_first_and_a_bad_setting_fails_closed(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    su.execute("""CREATE FUNCTION public.no_bob(owner text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN IF owner = 'bob' THEN RAISE EXCEPTION 'bob may not have keys' USING ERRCODE = '42501'; END IF; END $$""")
    su.execute("SET apikey.creation_check = 'public.no_bob(text)'")
    su.execute("SELECT apikey.create('alice', 'fine')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="bob may not have keys"):
        su.execute("SELECT apikey.create('bob', 'refused')")
    assert su.execute("SELECT count(*) FROM apikey.keys WHERE owner = 'bob'").fetchone()[0] == 0
    su.execute("SET apikey.creation_check = 'public.no_such_function(text)'")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="names no function"):
        su.execute("SELECT apikey.create('alice', 'fails closed')")
