"""Disable / enable: a reversible stop, refused with 28000 "API key is disabled" at the next
statement in every session, shown as status 'disabled', audited, and under the same rights as
revoke."""

import psycopg
import pytest


def new_key(conn, owner="d", **kw):
    conn.execute("SET apikey.creation_limit = 0")
    args = "".join(f", {k} => %({k})s" for k in kw)
    return conn.execute(f"SELECT id, api_key::text FROM apikey.create(%(o)s, 'k'{args})", dict(o=owner, **kw)).fetchone()


def test_disable_is_seen_at_once_and_enable_restores(db):
    admin = db()
    kid, k = new_key(admin)
    reader = db()
    for _ in range(3):  # cached in the reader's backend
        reader.execute("SELECT apikey.verify(%s)", (k,))
    assert admin.execute("SELECT apikey.disable(%s)", (kid,)).fetchone()[0] is True
    assert admin.execute("SELECT apikey.disable(%s)", (kid,)).fetchone()[0] is False
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="API key is disabled"):
        reader.execute("SELECT apikey.verify(%s)", (k,))
    assert admin.execute("SELECT status FROM apikey.key_list WHERE id = %s", (kid,)).fetchone()[0] == "disabled"
    assert admin.execute("SELECT apikey.enable(%s)", (kid,)).fetchone()[0] is True
    assert reader.execute("SELECT (apikey.verify(%s)).owner", (k,)).fetchone()[0] == "d"
    actions = [r[0] for r in admin.execute(
        "SELECT action FROM apikey.audit_log WHERE key_id = %s ORDER BY id", (kid,)).fetchall()]
    assert actions == ["create", "disable", "enable"]


def test_disabled_is_told_before_expired_and_revoke_stays_irreversible(db):
    admin = db()
    kid, k = new_key(admin)
    admin.execute("SELECT apikey.disable(%s)", (kid,))
    admin.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 minute' WHERE id = %s", (kid,))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="API key is disabled"):
        admin.execute("SELECT apikey.verify(%s)", (k,))
    rid, _ = new_key(admin)
    admin.execute("SELECT apikey.revoke(%s)", (rid,))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is revoked"):
        admin.execute("SELECT apikey.enable(%s)", (rid,))


def test_holders_disable_only_within_their_key(db):
    admin = db()
    wide_id, wide = new_key(admin, "alice")
    narrow_id, narrow = new_key(admin, "alice", scopes=["read"])
    other_id, _ = new_key(admin, "bob")
    holder = admin.execute("SELECT 'h_' || substr(md5(random()::text), 1, 8)").fetchone()[0]
    admin.execute(f"CREATE ROLE {holder} LOGIN")
    c = db(user=holder, autocommit=False)
    c.execute("SELECT apikey.authenticate(%s)", (narrow,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("SELECT apikey.disable(%s)", (wide_id,))
    c.rollback()
    c.execute("SELECT apikey.authenticate(%s)", (narrow,))
    with pytest.raises(psycopg.errors.NoDataFound):
        c.execute("SELECT apikey.disable(%s)", (other_id,))
    c.rollback()
    c.execute("SELECT apikey.authenticate(%s)", (wide,))
    assert c.execute("SELECT apikey.disable(%s)", (narrow_id,)).fetchone()[0] is True
    c.commit()
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="API key is disabled"):
        admin.execute("SELECT apikey.authenticate(%s)", (narrow,))
