"""Owner-wide and named limits with overrides: a key's named limits (charged by apikey.charge),
limits shared by every key of an owner (many keys cannot multiply the allowance), exact owner
beats pattern beats default, all or nothing, 429 over HTTP."""

import psycopg
import pytest


def make(c, owner, **kw):
    c.execute("SET apikey.creation_limit = 0")
    args = "".join(f", {k} => %({k})s" for k in kw)
    return c.execute(f"SELECT id, api_key::text FROM apikey.create(%(o)s, 'k'{args})", dict(o=owner, **kw)).fetchone()


def authenticated(db, key):
    c = db(autocommit=False)
    c.execute("SELECT apikey.authenticate(%s)", (key,))
    return c


def test_named_limits_are_charged_by_name(db):
    su = db()
    _, k = make(su, "n", limits=psycopg.types.json.Jsonb({"expensive": {"max": 2, "per": "1 hour"}}))
    c = authenticated(db, k)
    assert c.execute("SELECT apikey.charge('expensive')").fetchone()[0] is True
    # A name no limit of the key or its owner defines: an error, unless the caller says the
    # limit is optional.
    assert c.execute("SELECT apikey.charge('cheap', if_defined => true)").fetchone()[0] is False
    c.execute("SAVEPOINT s")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='no limit named "cheap"'):
        c.execute("SELECT apikey.charge('cheap')")
    c.execute("ROLLBACK TO SAVEPOINT s")
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match='"expensive" rate limit exceeded'):
        c.execute("SELECT apikey.charge('expensive', 2)")
    c.rollback()
    c.execute("SELECT apikey.authenticate(%s)", (k,))
    assert c.execute("SELECT apikey.charge('expensive')").fetchone()[0] is True
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
        c.execute("SELECT apikey.charge('expensive')")
    c.rollback()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="could never pass"):
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        c.execute("SELECT apikey.charge('expensive', 3)")
    c.rollback()
    listed = su.execute("SELECT limits -> 'expensive' ->> 'max' FROM apikey.key_list WHERE owner = 'n'").fetchone()[0]
    assert listed == "2"


def test_an_owner_limit_is_shared_by_all_its_keys(db):
    su = db()
    su.execute("SELECT apikey.set_owner_limit('acme', 'requests', 3, '1 hour')")
    keys = [make(su, "acme")[1] for _ in range(3)]
    admitted = 0
    for i in range(9):
        try:
            su.execute("SELECT apikey.authenticate(%s)", (keys[i % 3],))
            admitted += 1
        except psycopg.errors.ConfigurationLimitExceeded as e:
            assert 'Owner "requests" rate limit exceeded' in str(e)
    assert admitted == 3, "three keys must not triple the owner's allowance"


def test_exact_beats_pattern_beats_default(db):
    su = db()
    su.execute("SELECT apikey.set_owner_limit('*', 'requests', 1, '1 hour')")
    su.execute("SELECT apikey.set_owner_limit('team-*', 'requests', 2, '1 hour')")
    su.execute("SELECT apikey.set_owner_limit('team-red', 'requests', 4, '1 hour')")

    def admitted(owner):
        _, k = make(su, owner)
        n = 0
        for _ in range(6):
            try:
                su.execute("SELECT apikey.authenticate(%s)", (k,))
                n += 1
            except psycopg.errors.ConfigurationLimitExceeded:
                pass
        return n

    assert (admitted("team-red"), admitted("team-blue"), admitted("solo")) == (4, 2, 1)
    assert su.execute("SELECT apikey.clear_owner_limit('team-red', 'requests')").fetchone()[0] is True
    assert admitted("team-red") == 0  # the pattern applies now, and team-red spent its 2 already


def test_own_and_owner_limits_both_apply_all_or_nothing(db):
    su = db()
    su.execute("SELECT apikey.set_owner_limit('both', 'expensive', 5, '1 hour')")
    _, tight = make(su, "both", limits=psycopg.types.json.Jsonb({"expensive": {"max": 1, "per": "1 hour"}}))
    _, loose = make(su, "both")
    c = authenticated(db, tight)
    c.execute("SELECT apikey.charge('expensive')")
    for _ in range(3):  # refused by the key's own limit: the owner's allowance is not spent
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match='API key "expensive"'):
            c.execute("SAVEPOINT s; SELECT apikey.charge('expensive')")
        c.execute("ROLLBACK TO SAVEPOINT s")
    c.rollback()
    d = authenticated(db, loose)
    assert sum(1 for _ in range(4) if d.execute("SELECT apikey.charge('expensive')").fetchone()[0]) == 4
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match='Owner "expensive"'):
        d.execute("SELECT apikey.charge('expensive')")
    d.rollback()


def test_only_administrators_set_owner_limits_and_holders_inherit_named_limits(db):
    su = db()
    holder = su.execute("SELECT 'nl_' || substr(md5(random()::text), 1, 8)").fetchone()[0]
    su.execute(f"CREATE ROLE {holder} LOGIN")
    _, k = make(su, "h", limits=psycopg.types.json.Jsonb({"expensive": {"max": 10, "per": "1 hour"}}))
    with db(user=holder, autocommit=False) as c:
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT apikey.set_owner_limit('h', 'requests', 1000, '1 second')")
        c.rollback()
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        new_id = c.execute("SELECT id FROM apikey.create('h', 'child')").fetchone()[0]
        assert c.execute("SELECT limits -> 'expensive' ->> 'max' FROM apikey.key_list WHERE id = %s",
                         (new_id,)).fetchone()[0] == "10"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="named limit"):
            c.execute("SELECT apikey.create('h', 'looser', limits => %s)",
                      (psycopg.types.json.Jsonb({"expensive": {"max": 100, "per": "1 hour"}}),))
        c.rollback()


def test_a_request_refused_by_a_scope_check_stays_charged(db):
    """The client chose to call the check that refused, after reading what it wanted: the key's
    limit and its owner's stay charged (docs/limits.md, "Charges are final")."""
    su = db()
    su.execute("SELECT apikey.set_owner_limit('scoped', 'requests', 5, '1 hour')")
    kid, k = make(su, "scoped", scopes=["a:read"], rate_limit=2, rate_period="1 hour")
    c = db(autocommit=False)
    for _ in range(2):
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT apikey.require_scope('b:write')")
        c.rollback()
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="API key"):
        c.execute("SELECT apikey.authenticate(%s)", (k,))
    c.rollback()
