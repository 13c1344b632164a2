"""apikey.has_permissions: expressions over the authenticated key's scopes, usable in RLS policies,
with 22023 and the character position for a syntax error."""

import psycopg
import pytest


def test_expressions_over_the_keys_scopes(db):
    c = db(autocommit=False)
    c.execute("SET apikey.creation_limit = 0")
    c.execute("SET apikey.deny_scopes = 'surveys:write, metrics:read'")
    k = c.execute("SELECT api_key::text FROM apikey.create('p', 'k', scopes => '{surveys:read,metrics:*}')").fetchone()[0]
    c.commit()
    assert c.execute("SELECT apikey.has_permissions('surveys:read')").fetchone()[0] is False  # no key yet
    c.execute("SELECT apikey.authenticate(%s)", (k,))
    cases = {
        "surveys:read AND (metrics:read OR admin:*)": True,
        "surveys:read AND admin:*": False,
        "surveys:write OR metrics:daily": True,
        "NOT surveys:write": True,
        "surveys:read and not (metrics:read)": False,
    }
    for expr, expected in cases.items():
        assert c.execute("SELECT apikey.has_permissions(%s)", (expr,)).fetchone()[0] is expected, expr
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="at character 31"):
        c.execute("SELECT apikey.has_permissions('surveys:read AND (metrics:read')")
    c.rollback()
    c.execute("SELECT apikey.authenticate(%s)", (k,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="NOT admin:x, which apikey.deny_scopes"):
        c.execute("SELECT apikey.has_permissions('surveys:read AND NOT admin:x')")
    c.rollback()


def test_a_restricting_scope_cannot_be_shed_by_a_new_key(db):
    """A key holding a declared restriction (tested with NOT) cannot escape it by creating or
    managing a key without it."""
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    holder = su.execute("SELECT 'pd_' || substr(md5(random()::text), 1, 8)").fetchone()[0]
    su.execute(f"CREATE ROLE {holder} LOGIN")
    su.execute(f'ALTER ROLE {holder} IN DATABASE "{db.name}" SET apikey.deny_scopes = \'reports:embargoed\'')
    k = su.execute("SELECT api_key::text FROM apikey.create('pd', 'held', scopes => '{reports:*}')").fetchone()[0]
    free_id = su.execute("SELECT id FROM apikey.create('pd', 'free', scopes => '{reports:read}')").fetchone()[0]
    rule = "SELECT apikey.has_permissions('reports:read AND NOT reports:embargoed')"
    c = db(user=holder, autocommit=False)
    c.execute("SELECT apikey.authenticate(%s)", (k,))
    assert c.execute(rule).fetchone()[0] is False
    child = c.execute("SELECT api_key::text FROM apikey.create('pd', 'child', scopes => '{reports:read}')").fetchone()[0]
    c.commit()
    c.execute("SELECT apikey.authenticate(%s)", (child,))
    assert c.execute("SELECT apikey.current_scopes()").fetchone()[0] == ["reports:read", "reports:embargoed"]
    assert c.execute(rule).fetchone()[0] is False
    c.rollback()
    c.execute("SELECT apikey.authenticate(%s)", (k,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="restricting scope"):
        c.execute("SELECT apikey.rotate(%s)", (free_id,))
    c.rollback()


def test_in_a_row_level_security_policy(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    su.execute("CREATE TABLE reports (id int, body text)")
    su.execute("INSERT INTO reports VALUES (1, 'q3')")
    su.execute("ALTER TABLE reports ENABLE ROW LEVEL SECURITY")
    su.execute("CREATE POLICY readers ON reports USING ((SELECT apikey.has_permissions('reports:read AND NOT reports:embargoed')))")
    su.execute(f'ALTER DATABASE "{db.name}" SET apikey.deny_scopes = \'reports:embargoed\'')
    reader = su.execute("SELECT 'pr_' || substr(md5(random()::text), 1, 8)").fetchone()[0]
    su.execute(f"CREATE ROLE {reader} LOGIN")
    su.execute(f"GRANT SELECT ON reports TO {reader}")
    ok = su.execute("SELECT api_key::text FROM apikey.create('p', 'ok', scopes => '{reports:read}')").fetchone()[0]
    embargoed = su.execute("SELECT api_key::text FROM apikey.create('p', 'no', scopes => '{reports:*}')").fetchone()[0]
    c = db(user=reader, autocommit=False)
    c.execute("SELECT apikey.authenticate(%s)", (ok,))
    assert c.execute("SELECT count(*) FROM reports").fetchone()[0] == 1
    c.rollback()
    c.execute("SELECT apikey.authenticate(%s)", (embargoed,))
    assert c.execute("SELECT count(*) FROM reports").fetchone()[0] == 0
    c.rollback()
