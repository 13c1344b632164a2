"""Upgrading in place: a database made with 0.1.0's (or 0.2.0's, 0.3.0's, 0.4.0's) install script (kept in sql/),
holding keys, formats, usage and audit rows, runs ALTER EXTENSION pg_apikey UPDATE and then (a)
has exactly the catalog of a fresh install of the current version, (b) verifies every old key
with its data, (c) lost nothing.

The library is the current one throughout, as after a package upgrade and restart: 0.1.0's SQL
must still find every C symbol it names. Until the UPDATE runs, data is written with plain SQL,
since functions whose arguments changed refuse to run with the old definitions."""

import hashlib
import shutil
import time
import subprocess

import psycopg
import pytest

from conftest import PG_CONFIG, ROOT

PORT = "54359"
OLD_SCRIPT = ROOT / "sql/pg_apikey--0.1.0.sql"
OLD_SCRIPTS = [OLD_SCRIPT, ROOT / "sql/pg_apikey--0.2.0.sql", ROOT / "sql/pg_apikey--0.3.0.sql",
               ROOT / "sql/pg_apikey--0.4.0.sql"]
VERSION = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
               if line.startswith("version = "))
SNAPSHOT = (ROOT / "tests/catalog_snapshot.sql").read_text()


def sharedir():
    return subprocess.run([PG_CONFIG, "--sharedir"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def connect():
    # make install puts the old install scripts beside the new one; do it here too when run alone.
    for old in OLD_SCRIPTS:
        shutil.copyfile(old, f"{sharedir()}/extension/{old.name}")
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", "upgrade", PORT], check=True)

    def conn(dbname, autocommit=True, user="postgres"):
        return psycopg.connect(f"host={ROOT / '.run/upgrade'} port={PORT} user={user} dbname={dbname}",
                               autocommit=autocommit)
    try:
        yield conn
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", "upgrade"], check=False)


def new_db(connect, name, version=None):
    with connect("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    with connect(name) as c:
        c.execute("CREATE EXTENSION pg_apikey" + (f" VERSION '{version}'" if version else ""))


def snapshot(c):
    return [r[0] for r in c.execute(SNAPSHOT).fetchall()]


KEYS = [
    # (key, owner, name, format, scopes, resource, expires, revoked, metadata, rate_limit)
    ("cfk_" + "1f" * 32, "alice", "ci", "cfk", ["surveys:read"], None, "2099-01-01", None, '{"team": "web"}', None),
    ("ct_live_" + "A1b2C3d4E5" * 4 + "xyz", "alice", "live", "ct_live", None, "marketing", None, None, "{}", 2),
    ("cfk_" + "2e" * 32, "bob", "old", "cfk", None, None, "2001-01-01", None, "{}", None),
    ("cfk_" + "3d" * 32, "bob", "gone", "cfk", None, None, None, "2020-01-01", "{}", None),
    ("acme_" + "0123456789abcdefABCDEF" * 2, "carol", "custom format", "acme", None, None, None, None, "{}", None),
]

# Everything 0.1.0 stored, as text, for "nothing was lost".
OLD_DATA = """
SELECT 'key ' || string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', id, owner, name, format, kind, scopes,
       resource, encode(digest, 'hex'), expires_at, revoked_at, metadata, rate_limit), E'\n' ORDER BY id) FROM apikey.keys
UNION ALL SELECT 'format ' || string_agg(format('%s|%s|%s|%s|%s', name, prefix, alphabet, body_length, checksum), E'\n'
       ORDER BY name) FROM apikey.formats
UNION ALL SELECT 'audit ' || string_agg(format('%s|%s|%s|%s|%s', id, action, key_id, owner, detail), E'\n' ORDER BY id)
       FROM apikey.audit_log
UNION ALL SELECT 'usage ' || string_agg(format('%s|%s|%s|%s', key_id, bucket, uses, rate_limited), E'\n'
       ORDER BY key_id, bucket) FROM apikey.usage
 -- The rows stored before; the database's worker adds the minute of this test's own uses.
 WHERE bucket < date_trunc('minute', now()) - interval '30 minutes'
"""


def fill_010(c):
    c.execute("INSERT INTO apikey.formats (name, prefix, alphabet, body_length, checksum, description)"
              " VALUES ('acme', 'acme_', 'base62', 44, 'none', 'an administrator''s format')")
    for key, owner, name, fmt, scopes, resource, expires, revoked, metadata, rate in KEYS:
        c.execute("""INSERT INTO apikey.keys (owner, name, format, scopes, resource, display_prefix, last4, digest,
                                               created_by, expires_at, revoked_at, metadata, rate_limit, rate_period)
                     VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'postgres', %s, %s, %s, %s,
                             CASE WHEN %s::int IS NOT NULL THEN interval '1 hour' END)""",
                  (owner, name, fmt, scopes, resource, key[:len(fmt) + 5], key[-4:], hashlib.sha256(key.encode()).digest(),
                   expires, revoked, metadata, rate, rate))
    c.execute("INSERT INTO apikey.audit_log (action, key_id, owner, key_name, actor, session_actor)"
              " SELECT 'create', id, owner, name, 'postgres', 'postgres' FROM apikey.keys")
    c.execute("INSERT INTO apikey.audit_log (action, key_id, owner, key_name, actor, session_actor, detail)"
              " SELECT 'revoke', id, owner, name, 'postgres', 'postgres', '{\"why\": \"test\"}' FROM apikey.keys"
              " WHERE revoked_at IS NOT NULL")
    c.execute("INSERT INTO apikey.usage (key_id, bucket, uses, rate_limited)"
              " SELECT id, date_trunc('minute', now()) - interval '1 hour', 10 * id, id FROM apikey.keys")


def test_the_old_install_script_finds_every_symbol_it_names(connect):
    new_db(connect, "up_symbols", "0.1.0")
    with connect("up_symbols") as c:
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == "0.1.0"
        # A function whose arguments did not change works before the update, too.
        assert c.execute("SELECT count(*) FROM apikey.builtin_formats()").fetchone()[0] == 5


def test_an_upgraded_database_equals_a_fresh_install_and_keeps_everything(connect):
    new_db(connect, "up_fresh")
    new_db(connect, "up_old", "0.1.0")
    with connect("up_old") as c:
        fill_010(c)
        before = c.execute(OLD_DATA).fetchall()
        # Between the library upgrade and ALTER EXTENSION UPDATE, keys still verify and
        # authenticate (found by the review: this used to fail with XX000).
        key, owner, name = KEYS[0][:3]
        assert c.execute("SELECT owner, name FROM apikey.verify(%s)", (key,)).fetchone() == (owner, name)
        assert c.execute("SELECT apikey.authenticate(%s)", (key,)).fetchone()[0] == owner
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            c.execute("SELECT apikey.verify(%s)", ("cfk_" + "9" * 64,))
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("ALTER EXTENSION pg_apikey UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == VERSION
        assert any("apikey_admin no longer manages keys here" in n for n in notices), notices
        # (c) nothing lost.
        assert c.execute(OLD_DATA).fetchall() == before
        # (b) every old key verifies with its data, and refusals stay refusals.
        for key, owner, name, fmt, scopes, resource, expires, revoked, metadata, rate in KEYS:
            if revoked:
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
                    c.execute("SELECT apikey.verify(%s)", (key,))
                assert e.value.diag.message_primary == "invalid API key"
            elif expires and expires < "2026":
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
                    c.execute("SELECT apikey.verify(%s)", (key,))
                assert e.value.diag.message_primary == "API key has expired"
            else:
                row = c.execute("SELECT owner, name, format, scopes, resource, metadata FROM apikey.verify(%s)",
                                (key,)).fetchone()
                assert row == (owner, name, fmt, scopes, resource, __import__("json").loads(metadata))
        # The old per-key limit still holds: two requests an hour.
        limited = KEYS[1][0]
        c.execute("SELECT apikey.authenticate(%s)", (limited,))
        c.execute("SELECT apikey.authenticate(%s)", (limited,))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT apikey.authenticate(%s)", (limited,))
        # 0.2.0 features work on the upgraded data.
        kid = c.execute("SELECT id FROM apikey.keys WHERE name = 'ci'").fetchone()[0]
        assert c.execute("SELECT apikey.disable(%s)", (kid,)).fetchone()[0] is True
        assert c.execute("SELECT status FROM apikey.key_list WHERE id = %s", (kid,)).fetchone()[0] == "disabled"
        upgraded = snapshot(c)
    # (a) the catalog equals a fresh 0.2.0 install's.
    with connect("up_fresh") as c:
        fresh = snapshot(c)
    missing = sorted(set(fresh) - set(upgraded))
    extra = sorted(set(upgraded) - set(fresh))
    assert (missing, extra) == ([], []), f"missing after upgrade: {missing[:10]}\nextra after upgrade: {extra[:10]}"
    assert len(fresh) > 400


def test_before_the_update_a_revoke_is_seen_by_a_session_that_cached_the_key(connect):
    """0.1.0's statement triggers invalidate the whole keys table, not one key: until ALTER
    EXTENSION UPDATE installs the per-key trigger, such an invalidation must empty the cache
    (found by the review: for one commit it only compared the table's file)."""
    new_db(connect, "up_window", "0.1.0")
    with connect("up_window") as admin, connect("up_window") as reader:
        fill_010(admin)
        key, owner, _ = KEYS[0][:3]
        for _ in range(3):
            assert reader.execute("SELECT owner FROM apikey.verify(%s)", (key,)).fetchone()[0] == owner
        admin.execute("UPDATE apikey.keys SET revoked_at = now() WHERE digest = sha256(convert_to(%s, 'UTF8'))",
                      (key,))
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            reader.execute("SELECT apikey.verify(%s)", (key,))


def test_apikey_admin_is_no_administrator_after_the_upgrade(connect):
    new_db(connect, "up_admin", "0.1.0")
    with connect("up_admin") as c:
        c.execute("DROP ROLE IF EXISTS old_admin_member")
        c.execute("CREATE ROLE old_admin_member LOGIN IN ROLE apikey_admin")
        c.execute("ALTER EXTENSION pg_apikey UPDATE")
    try:
        with connect("up_admin", user="old_admin_member") as c:
            assert c.execute("SELECT apikey.is_admin()").fetchone()[0] is False
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT * FROM apikey.audit_log")
        with connect("up_admin") as c:
            c.execute("SELECT apikey.grant_admin('apikey_admin')")
        with connect("up_admin", user="old_admin_member") as c:
            assert c.execute("SELECT apikey.is_admin()").fetchone()[0] is True
    finally:
        with connect("postgres") as c:
            c.execute("DROP DATABASE up_admin WITH (FORCE)")
            c.execute("DROP ROLE old_admin_member")


def test_an_update_that_would_break_a_new_rule_stops_and_says_why(connect):
    new_db(connect, "up_big", "0.1.0")
    with connect("up_big") as c:
        c.execute("""INSERT INTO apikey.keys (owner, name, format, display_prefix, last4, digest, created_by, metadata)
                     VALUES ('dave', 'huge', 'cfk', 'cfk_0000', '0000', %s, 'postgres',
                             jsonb_build_object('blob', repeat('x', 70000)))""",
                  (hashlib.sha256(b"huge").digest(),))
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute("ALTER EXTENSION pg_apikey UPDATE")
        assert "more than 64 KiB of metadata" in str(e.value)
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == "0.1.0"


def test_from_020_rotation_lineages_share_their_limits_and_the_catalog_equals_a_fresh_install(connect):
    """0.2.0 → 0.3.0: keys rotated before the update join the lineage of the first key of their
    chain (request limits belong to the lineage), and the catalog equals a fresh install's."""
    new_db(connect, "up2_fresh")
    new_db(connect, "up2_old", "0.2.0")
    with connect("up2_old") as c:
        rows = []
        for i, key in enumerate(["cfk_" + f"{i}a" * 32 for i in range(1, 5)]):
            rows.append(key)
            # root, its successor, the successor's successor; and one whose parent is gone.
            c.execute("""INSERT INTO apikey.keys (owner, name, format, display_prefix, last4, digest, created_by,
                                                   rate_limit, rate_period, rotated_from)
                         VALUES ('lin', %s, 'cfk', 'cfk_1a1a', %s, %s, 'postgres', 2, '1 hour',
                                 CASE %s WHEN 0 THEN NULL WHEN 3 THEN 999999
                                         ELSE (SELECT max(id) FROM apikey.keys WHERE owner = 'lin') END)""",
                      (f"k{i}", key[-4:], hashlib.sha256(key.encode()).digest(), i))
        before = c.execute(OLD_DATA).fetchall()
        # Verified before the update: this session's cache holds each key without a lineage.
        for key in rows:
            for _ in range(2):
                c.execute("SELECT apikey.verify(%s)", (key,))
        c.execute("ALTER EXTENSION pg_apikey UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == VERSION
        assert c.execute(OLD_DATA).fetchall() == before
        ids = [r[0] for r in c.execute("SELECT id FROM apikey.keys WHERE owner = 'lin' ORDER BY id").fetchall()]
        lineage = [r[0] for r in c.execute("SELECT lineage FROM apikey.keys WHERE owner = 'lin' ORDER BY id")]
        assert lineage == [None, ids[0], ids[0], None]
        # The chain's keys share one bucket of two requests an hour; the orphan has its own.
        c.execute("SELECT apikey.authenticate(%s)", (rows[0],))
        c.execute("SELECT apikey.authenticate(%s)", (rows[2],))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT apikey.authenticate(%s)", (rows[1],))
        c.execute("SELECT apikey.authenticate(%s)", (rows[3],))
        upgraded = snapshot(c)
    with connect("up2_fresh") as c:
        fresh = snapshot(c)
    missing = sorted(set(fresh) - set(upgraded))
    extra = sorted(set(upgraded) - set(fresh))
    assert (missing, extra) == ([], []), f"missing after upgrade: {missing[:10]}\nextra after upgrade: {extra[:10]}"


def test_from_030_a_balance_is_kept_and_the_catalog_equals_a_fresh_install(connect):
    """0.3.0 → 0.4.0 adds apikey.held_balances (balances written while a key's row is held): a
    key's credits spent before the update stay spent, and the catalog equals a fresh install's."""
    new_db(connect, "up3_fresh")
    new_db(connect, "up3_old", "0.3.0")
    with connect("up3_old") as c:
        c.execute("SET apikey.creation_limit = 0")
        kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('up3', 'k', credits => 10)").fetchone()
        c.execute("SELECT apikey.authenticate(%s, 4)", (key,))
        # The database's worker writes the spending: wait for it, so nothing moves meanwhile.
        deadline = time.time() + 20
        while c.execute("SELECT credits FROM apikey.keys WHERE id = %s", (kid,)).fetchone()[0] != 6:
            assert time.time() < deadline, "the worker never wrote the balance"
            time.sleep(0.2)
        before = c.execute(OLD_DATA).fetchall()
        c.execute("ALTER EXTENSION pg_apikey UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == VERSION
        assert c.execute(OLD_DATA).fetchall() == before
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 6
        upgraded = snapshot(c)
    with connect("up3_fresh") as c:
        fresh = snapshot(c)
    missing = sorted(set(fresh) - set(upgraded))
    extra = sorted(set(upgraded) - set(fresh))
    assert (missing, extra) == ([], []), f"missing after upgrade: {missing[:10]}\nextra after upgrade: {extra[:10]}"


def test_from_040_statistics_and_descriptions_arrive_and_the_catalog_equals_a_fresh_install(connect):
    """0.4.0 → 0.5.0 adds apikey.stat and a description on every function: the updated catalog,
    descriptions included, equals a fresh install's, and the view counts at once."""
    new_db(connect, "up4_fresh")
    new_db(connect, "up4_old", "0.4.0")
    with connect("up4_old") as c:
        c.execute("SET apikey.creation_limit = 0")
        kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('up4', 'k')").fetchone()
        before = c.execute(OLD_DATA).fetchall()
        c.execute("ALTER EXTENSION pg_apikey UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == VERSION
        assert c.execute(OLD_DATA).fetchall() == before
        assert c.execute("SELECT id FROM apikey.verify(%s)", (key,)).fetchone()[0] == kid
        assert c.execute("SELECT verifications >= 1 FROM apikey.stat WHERE datname = 'up4_old'").fetchone()[0]
        assert c.execute("SELECT obj_description('apikey.verify'::regproc, 'pg_proc') IS NOT NULL").fetchone()[0]
        upgraded = snapshot(c)
    with connect("up4_fresh") as c:
        fresh = snapshot(c)
    missing = sorted(set(fresh) - set(upgraded))
    extra = sorted(set(upgraded) - set(fresh))
    assert (missing, extra) == ([], []), f"missing after upgrade: {missing[:10]}\nextra after upgrade: {extra[:10]}"
