"""Importing keys another system issued, by the hash it stored: SHA-256 (hex or base64) verify at
full speed at once; bcrypt ones are found by their lookup part, checked once and rehashed to
SHA-256 (later, by the worker, when the verify could not write). Hashes are made outside the
database, by Python's hashlib and bcrypt, as the other system would have."""

import base64
import hashlib
import secrets
import time

import bcrypt
import psycopg
import pytest

from conftest import ROOT, own_cluster

PORT = "54355"
DB = "import_db"


@pytest.fixture(scope="module")
def connect():
    with own_cluster("import", PORT, DB, "apikey.usage_flush_interval = 200",
                     setup=("CREATE ROLE importer_nobody LOGIN",)) as conn:
        yield conn


def cfk():
    return "cfk_" + secrets.token_hex(32)


def bcrypt_hash(key, cost=4, prefix=b"2b"):
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(cost, prefix=prefix)).decode()


def verify(c, key):
    return c.execute("SELECT id, owner, name FROM apikey.verify(%s)", (key,)).fetchone()


def bcrypt_checks(c):
    return c.execute("SELECT apikey.bcrypt_checks()").fetchone()[0]


def audit(c, key_id):
    return c.execute("SELECT action, actor, detail::text FROM apikey.audit_log WHERE key_id = %s ORDER BY id",
                     (key_id,)).fetchall()


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_sha256_imports_verify_at_once_in_hex_and_base64(connect):
    hex_key, b64_key, url_key = cfk(), cfk(), cfk()
    with connect() as c:
        hex_id = c.execute("SELECT apikey.import('ann', 'from hex', %s, 'sha256', last4 => %s)",
                           (hashlib.sha256(hex_key.encode()).hexdigest(), hex_key[-4:])).fetchone()[0]
        b64_id = c.execute("SELECT apikey.import('ann', 'from base64', %s, 'sha256-base64')",
                           (base64.b64encode(hashlib.sha256(b64_key.encode()).digest()).decode(),)).fetchone()[0]
        url_id = c.execute("SELECT apikey.import('ann', 'url-safe', %s, 'sha256-base64')",
                           (base64.urlsafe_b64encode(hashlib.sha256(url_key.encode()).digest()).decode().rstrip("="),)
                           ).fetchone()[0]
        before = bcrypt_checks(c)
        assert verify(c, hex_key) == (hex_id, "ann", "from hex")
        assert verify(c, b64_key) == (b64_id, "ann", "from base64")
        assert verify(c, url_key) == (url_id, "ann", "url-safe")
        assert bcrypt_checks(c) == before
        # Listed masked, with the last characters the importer gave.
        assert c.execute("SELECT key FROM apikey.key_list WHERE id = %s", (hex_id,)).fetchone()[0] \
            == "cfk_…" + hex_key[-4:]
        # The stored hash is no key.
        with pytest.raises(psycopg.Error) as e:
            verify(c, hashlib.sha256(hex_key.encode()).hexdigest())
        assert e.value.sqlstate in ("22P02", "28000")


def test_bcrypt_imports_of_every_variant_verify_and_are_rehashed_once(connect):
    with connect() as c:
        for prefix in (b"2a", b"2b"):
            key = cfk()
            kid = c.execute("SELECT apikey.import('ann', 'bcrypt', %s, 'bcrypt', lookup => %s, expires_in => '30 days',"
                            " scopes => '{surveys:read}')",
                            (bcrypt_hash(key, prefix=prefix), key[:12])).fetchone()[0]
            checks = bcrypt_checks(c)
            assert verify(c, key) == (kid, "ann", "bcrypt")
            assert bcrypt_checks(c) == checks + 1
            # Rehashed in that (read-write) transaction: from now on found by digest, no bcrypt.
            for _ in range(3):
                assert verify(c, key)[0] == kid
            assert bcrypt_checks(c) == checks + 1
            assert c.execute("SELECT count(*) FROM apikey.key_imports WHERE key_id = %s", (kid,)).fetchone()[0] == 0
            actions = [a for a, _, _ in audit(c, kid)]
            assert actions == ["import", "rehash"]
            info = c.execute("SELECT scopes, expires_at > now() + interval '29 days' FROM apikey.verify(%s)",
                             (key,)).fetchone()
            assert info == (["surveys:read"], True)
            assert c.execute("SELECT key FROM apikey.key_list WHERE id = %s", (kid,)).fetchone()[0] \
                == key[:8] + "…" + key[-4:]


def test_a_read_only_verify_works_and_the_worker_rehashes_later(connect):
    key = cfk()
    with connect() as c:
        kid = c.execute("SELECT apikey.import('ann', 'ro', %s, 'bcrypt', lookup => %s)",
                        (bcrypt_hash(key), key[:10])).fetchone()[0]
    with connect(autocommit=False) as c:
        c.execute("SET TRANSACTION READ ONLY")
        assert verify(c, key)[0] == kid
        c.rollback()
    with connect() as c:
        assert wait_for(lambda: c.execute("SELECT count(*) FROM apikey.key_imports WHERE key_id = %s",
                                          (kid,)).fetchone()[0] == 0)
        assert audit(c, kid)[-1][:2] == ("rehash", "pg_apikey worker")
        checks = bcrypt_checks(c)
        assert verify(c, key)[0] == kid
        assert bcrypt_checks(c) == checks


def test_every_failing_bcrypt_path_costs_exactly_one_bcrypt(connect):
    key = cfk()
    with connect() as c:
        c.execute("SELECT apikey.import('ann', 'timing', %s, 'bcrypt', lookup => %s)", (bcrypt_hash(key), key[:14]))
        wrong_body = key[:14] + ("0" if key[14] != "0" else "1") + key[15:]
        no_candidate = "cfk_" + ("f" if key[4] != "f" else "e") + key[5:]
        other_format = "ct_live_" + secrets.token_urlsafe(32).replace("-", "a").replace("_", "b")[:40]
        for presented, cost in [(wrong_body, 1), (no_candidate, 1), (other_format, 0)]:
            before = bcrypt_checks(c)
            with pytest.raises(psycopg.Error) as e:
                verify(c, presented)
            assert e.value.sqlstate in ("28000", "22P02")
            assert bcrypt_checks(c) == before + cost
        assert verify(c, key)


def test_bulk_import_reports_every_row_and_imports_the_rest(connect):
    good_bcrypt, good_sha, dup_sha = cfk(), cfk(), cfk()
    with connect() as c:
        c.execute("SELECT apikey.import('bob', 'already', %s, 'sha256')", (hashlib.sha256(dup_sha.encode()).hexdigest(),))
        c.execute("CREATE TABLE legacy_keys (id serial, owner text, name text, hash text, algorithm text, lookup text,"
                  " expires_at timestamptz, scopes text[])")
        rows = [
            ("bob", "bcrypt ok", bcrypt_hash(good_bcrypt), "bcrypt", good_bcrypt[:12], None, None),
            ("bob", "sha ok", hashlib.sha256(good_sha.encode()).hexdigest(), "sha256", None, "2099-01-01", ["a:read"]),
            ("bob", "dup", hashlib.sha256(dup_sha.encode()).hexdigest(), "sha256", None, None, None),
            ("bob", "bad hash", "not-a-hash", "sha256", None, None, None),
            ("bob", "md5", "0" * 32, "md5", None, None, None),
            ("bob", "no lookup", bcrypt_hash(cfk()), "bcrypt", None, None, None),
            ("bob", "bad lookup", bcrypt_hash(cfk()), "bcrypt", "zz_123", None, None),
            ("bob", "overlap", bcrypt_hash(cfk()), "bcrypt", good_bcrypt[:14], None, None),
            ("bob", "past", hashlib.sha256(cfk().encode()).hexdigest(), "sha256", None, "2001-01-01", None),
            (None, "no owner", hashlib.sha256(cfk().encode()).hexdigest(), "sha256", None, None, None),
        ]
        for r in rows:
            c.execute("INSERT INTO legacy_keys (owner, name, hash, algorithm, lookup, expires_at, scopes)"
                      " VALUES (%s, %s, %s, %s, %s, %s, %s)", r)
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        out = c.execute("SELECT ordinal, name, status, key_id IS NOT NULL, reason FROM apikey.import_keys('legacy_keys')"
                        " ORDER BY ordinal").fetchall()
        assert [(o, n, s) for o, n, s, _, _ in out] == [
            (1, "bcrypt ok", "imported"), (2, "sha ok", "imported"), (3, "dup", "duplicate"),
            (4, "bad hash", "refused"), (5, "md5", "refused"), (6, "no lookup", "refused"),
            (7, "bad lookup", "refused"), (8, "overlap", "refused"), (9, "past", "refused"),
            (10, "no owner", "refused")]
        reasons = {n: r for _, n, _, _, r in out}
        assert reasons["bad hash"].startswith("bad hash:")
        assert reasons["md5"].startswith("unknown hash algorithm")
        assert reasons["no lookup"].startswith("malformed lookup part")
        assert reasons["bad lookup"].startswith("malformed lookup part")
        assert "overlaps" in reasons["overlap"]
        assert reasons["no owner"] == "owner must not be null"
        assert any('"id"' in n for n in notices), notices
        for _, _, _, _, reason in out:
            assert reason is None or ("$2b$" not in reason and "cfk_" not in reason)
        assert verify(c, good_bcrypt)[2] == "bcrypt ok"
        assert c.execute("SELECT name, scopes, expires_at::date::text FROM apikey.verify(%s)", (good_sha,)).fetchone() \
            == ("sha ok", ["a:read"], "2099-01-01")
        # The refused rows left nothing behind.
        assert c.execute("SELECT count(*) FROM apikey.keys WHERE owner = 'bob'").fetchone()[0] == 3


def test_import_is_for_administrators_and_names_no_secret(connect):
    key = cfk()
    h = bcrypt_hash(key)
    with connect() as c:
        c.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO importer_nobody")
    with connect(user="importer_nobody") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT apikey.import('eve', 'mine', %s, 'sha256')", (hashlib.sha256(b"x").hexdigest(),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM apikey.import_keys('legacy_keys')")
    with connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute("SELECT apikey.import('ann', 'x', %s, 'bcrypt', lookup => %s)", (h[:-1] + "!", key[:12]))
        assert h[7:20] not in str(e.value) and key[:12] not in str(e.value)
        kid = c.execute("SELECT apikey.import('ann', 'audited', %s, 'bcrypt', lookup => %s)", (h, key[:12])).fetchone()[0]
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("SELECT apikey.import('ann', 'again', %s, 'bcrypt', lookup => %s)", (h, key[:12]))
        verify(c, key)
        for _, _, detail in audit(c, kid):
            assert h[7:] not in detail and key[4:12] not in detail and hashlib.sha256(key.encode()).hexdigest() not in detail
    log = (ROOT / ".run/import/server.log").read_text(errors="replace")
    assert key not in log and h not in log


# Found by the independent review of these features.

def test_a_source_that_would_run_someone_elses_code_is_refused(connect):
    """A view, another role's table (even for a superuser) and a column of a user-defined type
    are refused before any row is read: reading them could run their owner's code as the
    importing administrator (view functions, policies, casts)."""
    with connect() as c:
        c.execute("CREATE ROLE etl_owner")
        c.execute("CREATE TABLE etl_staging (owner text, name text, hash text, algorithm text)")
        c.execute("ALTER TABLE etl_staging OWNER TO etl_owner")
        c.execute("CREATE VIEW staging_view AS SELECT 'v'::text AS owner, 'n'::text AS name,"
                  " repeat('0', 64) AS hash, 'sha256'::text AS algorithm")
        c.execute("CREATE TYPE wrapped AS (v text)")
        c.execute("CREATE FUNCTION wrapped_text(w wrapped) RETURNS text LANGUAGE sql AS"
                  " $$ SELECT (apikey.create('mallory', 'backdoor')).api_key::text $$")
        c.execute("CREATE CAST (wrapped AS text) WITH FUNCTION wrapped_text(wrapped)")
        c.execute("CREATE TABLE typed_staging (owner wrapped, name text, hash text, algorithm text)")
        c.execute("INSERT INTO typed_staging VALUES (ROW('x'), 'n', repeat('0', 64), 'sha256')")
        for source, message in [("staging_view", "must be a table"),
                                ("etl_staging", "must be a table you own"),
                                ("typed_staging", "column owner of the import source must be of type text")]:
            with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
                c.execute("SELECT * FROM apikey.import_keys(%s)", (source,))
            assert message in str(e.value), str(e.value)
        assert c.execute("SELECT count(*) FROM apikey.keys WHERE owner = 'mallory'").fetchone()[0] == 0


def test_a_bad_value_refuses_its_row_only_and_is_never_echoed(connect):
    good = cfk()
    h = bcrypt_hash(cfk())
    with connect() as c:
        c.execute("CREATE TABLE text_staging (owner text, name text, hash text, algorithm text, expires_at text,"
                  " rate_limit text, rate_period text)")
        c.execute("INSERT INTO text_staging VALUES ('tina', 'good', %s, 'sha256', '2099-01-01', '5', '1 hour')",
                  (hashlib.sha256(good.encode()).hexdigest(),))
        c.execute("INSERT INTO text_staging VALUES ('tina', 'swapped', 'x', 'sha256', %s, NULL, NULL)", (h,))
        c.execute("INSERT INTO text_staging VALUES ('tina', 'bad limit', 'x', 'sha256', NULL, 'lots', '1 hour')")
        out = c.execute("SELECT name, status, reason FROM apikey.import_keys('text_staging') ORDER BY ordinal").fetchall()
        assert out == [("good", "imported", None),
                       ("swapped", "refused", "column expires_at is not a valid timestamp with time zone"),
                       ("bad limit", "refused", "column rate_limit is not a valid integer")]
        assert c.execute("SELECT rate_limit FROM apikey.keys WHERE name = 'good' AND owner = 'tina'").fetchone()[0] == 5
    assert h not in (ROOT / ".run/import/server.log").read_text(errors="replace")


def test_bcrypt_is_refused_for_keys_longer_than_it_reads(connect):
    """bcrypt reads 72 bytes: for a longer format any string sharing them would verify."""
    with connect() as c:
        c.execute("SELECT apikey.add_format('longkey', 'longkey_', 'base62', 80)")
        key = "longkey_" + "Q7x" * 26 + "AB"
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            # Systems that stored such keys hashed their first 72 bytes (bcrypt libraries truncate).
            c.execute("SELECT apikey.import('lee', 'long', %s, 'bcrypt', lookup => %s, format => 'longkey')",
                      (bcrypt_hash(key[:72]), key[:14]))
        assert "72 bytes" in str(e.value)
