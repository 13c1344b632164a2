"""The trust model, tested as the attacker: each test is one class of attack from docs/security.md,
run on a real cluster as the least privileged role that could try it (PUBLIC role, key holder,
database owner, schema creator, administrator of another database)."""

import json
import re
import subprocess
import time
import uuid

import psycopg
import pytest

from conftest import ROOT, dsn, new_key, new_role, server_log


def role(conn, prefix="atk", login=True):
    return new_role(conn, prefix, login)


key = new_key


def sqlstate(conn, sql, params=None):
    """The SQLSTATE a statement fails with (inside a savepoint when in a transaction), or None."""
    try:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            with conn.transaction():
                conn.execute(sql, params)
        else:
            conn.execute(sql, params)
        return None
    except psycopg.Error as e:
        return e.sqlstate


# --- Privilege escalation -------------------------------------------------------------------------

def test_hostile_operators_on_the_search_path_never_run_inside_pg_apikey(db):
    """A role puts its own '=' and '<' (for every type our statements compare) first on its
    search_path, then calls every entry point: its functions must never be called."""
    su = db()
    attacker = role(su)
    su.execute(f"GRANT CREATE ON DATABASE \"{db.name}\" TO {attacker}")
    su.execute("SET apikey.creation_limit = 0")
    kid, k = key(su, "alice")
    with db(user=attacker) as a:
        a.execute("CREATE SCHEMA evil")
        a.execute("CREATE TABLE evil.calls (who text, op text)")
        a.execute("GRANT INSERT ON evil.calls TO PUBLIC")
        a.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        # A logging twin of every comparison our statements make, for every type they compare.
        for typ in ("bigint", "bytea", "text", "name", "oid", "timestamptz", "integer", "\"char\""):
            for op, fn in (("=", "eq"), ("<", "lt"), ("<=", "le"), (">", "gt"), ("<>", "ne")):
                f = f"{fn}_{typ.strip(chr(34))}"
                a.execute(f"""CREATE FUNCTION evil.{f}(a {typ}, b {typ}) RETURNS boolean LANGUAGE plpgsql AS
                    $f$ BEGIN INSERT INTO evil.calls VALUES (current_user, '{op}');
                    RETURN a OPERATOR(pg_catalog.{op}) b; END $f$""")
                a.execute(f"CREATE OPERATOR evil.{op} (LEFTARG = {typ}, RIGHTARG = {typ}, FUNCTION = evil.{f})")
        a.execute("""CREATE FUNCTION evil.pl(a bigint, b bigint) RETURNS bigint LANGUAGE plpgsql AS
            $f$ BEGIN INSERT INTO evil.calls VALUES (current_user, '+'); RETURN a OPERATOR(pg_catalog.+) b; END $f$""")
        a.execute("CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.pl)")
        # Sanity: the trap works when nothing pins the search_path.
        a.execute("SET search_path = evil, pg_catalog, public")
        a.execute("SELECT 1::bigint = 1::bigint")
        assert a.execute("SELECT count(*) FROM evil.calls").fetchone()[0] == 1
        a.execute("DELETE FROM evil.calls")
        a.execute("SET search_path = evil, pg_catalog, public")
        a.execute("SELECT apikey.verify(%s)", (k,))
        a.execute("BEGIN")
        a.execute("SELECT apikey.authenticate(%s)", (k,))
        for sql in ("SELECT * FROM apikey.create('alice', 'mine')",
                    f"SELECT apikey.revoke({kid})",
                    "SELECT apikey.rate_limit('evil', 10, '1 minute')",
                    "SELECT * FROM apikey.key_list",
                    f"SELECT apikey.verify_callback_signature({kid}, 'https://x', 'ab')"):
            sqlstate(a, sql)
        a.execute("COMMIT")
        a.execute("RESET search_path")
        assert a.execute("SELECT count(*) FROM evil.calls").fetchone()[0] == 0


@pytest.fixture(scope="module")
def tenant_cluster():
    """A cluster whose usage worker serves a database owned by an ordinary role."""
    port = "54351"
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", "tenants", port,
                    "apikey.usage_flush_interval = 200",
                    "apikey.encryption_key = '" + "ab" * 32 + "'"], check=True)

    def connect(dbname="postgres", user="postgres"):
        return psycopg.connect(f"host={ROOT / '.run/tenants'} port={port} user={user} dbname={dbname}",
                               autocommit=True)
    try:
        with connect() as c:
            c.execute("CREATE ROLE tenant_owner LOGIN")
            c.execute("CREATE DATABASE tenant OWNER tenant_owner")
            c.execute("CREATE DATABASE other_tenant")
        for d in ("tenant", "other_tenant"):
            with connect(d) as c:
                c.execute("CREATE EXTENSION pg_apikey")
        yield connect
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", "tenants"], check=False)


def test_database_owner_cannot_run_code_as_the_usage_worker(tenant_cluster):
    """The database owner controls ALTER DATABASE … SET search_path. The worker must not run the
    owner's '=' (or anything else of theirs) with its privileges."""
    connect = tenant_cluster
    with connect("tenant", "tenant_owner") as o:
        o.execute("CREATE SCHEMA evil")
        o.execute("CREATE TABLE evil.calls (who text, super boolean)")
        o.execute("GRANT ALL ON SCHEMA evil TO PUBLIC")
        o.execute("GRANT INSERT ON evil.calls TO PUBLIC")
        o.execute("""CREATE FUNCTION evil.eq(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql AS $f$
            BEGIN INSERT INTO evil.calls SELECT current_user, rolsuper FROM pg_catalog.pg_roles
                   WHERE rolname OPERATOR(pg_catalog.=) current_user;
                  RETURN a OPERATOR(pg_catalog.=) b; END $f$""")
        o.execute("CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.eq)")
        o.execute("CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = pg_catalog.int8pl)")
        o.execute("ALTER DATABASE tenant SET search_path = evil, pg_catalog, public")
    # A new worker connection picks up the database setting: restart it.
    with connect() as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_apikey worker'")
    time.sleep(1.5)
    with connect("tenant") as c:
        c.execute("SET apikey.creation_limit = 0")
        kid, k = key(c, "u")
        for _ in range(3):
            c.execute("SELECT apikey.verify(%s)", (k,))
        deadline = time.time() + 15
        while time.time() < deadline:
            if c.execute("SELECT last_used_at IS NOT NULL FROM apikey.keys WHERE id = %s", (kid,)).fetchone()[0]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the worker never flushed")
        assert c.execute("SELECT count(*) FROM evil.calls").fetchone()[0] == 0
        assert c.execute("SELECT sum(uses) FROM apikey.usage WHERE key_id = %s", (kid,)).fetchone()[0] == 3
        c.execute("ALTER DATABASE tenant RESET search_path")


def test_create_extension_refuses_a_squatted_schema(db):
    su = db()
    squatter = role(su)
    name = f"sq_{uuid.uuid4().hex[:8]}"
    su.execute(f'CREATE DATABASE "{name}"')
    try:
        su.execute(f'GRANT CREATE ON DATABASE "{name}" TO {squatter}')
        with psycopg.connect(dsn(name, squatter), autocommit=True) as s:
            s.execute("CREATE SCHEMA apikey")
            s.execute("CREATE FUNCTION apikey.verify(k text) RETURNS text LANGUAGE sql AS 'SELECT k'")
        with psycopg.connect(dsn(name), autocommit=True) as c:
            with pytest.raises(psycopg.errors.DuplicateSchema, match='schema "apikey" already exists'):
                c.execute("CREATE EXTENSION pg_apikey")
            # Even an empty squatted schema, or a superuser's schema that lets others create in it.
            c.execute("DROP SCHEMA apikey CASCADE")
            c.execute(f"CREATE SCHEMA apikey AUTHORIZATION {squatter}")
            with pytest.raises(psycopg.errors.DuplicateSchema):
                c.execute("CREATE EXTENSION pg_apikey")
            c.execute("DROP SCHEMA apikey")
            c.execute(f"CREATE SCHEMA apikey; GRANT CREATE ON SCHEMA apikey TO {squatter}")
            with pytest.raises(psycopg.errors.DuplicateSchema):
                c.execute("CREATE EXTENSION pg_apikey")
            # An empty schema of a superuser's own (what pg_dump writes) is fine.
            c.execute(f"REVOKE CREATE ON SCHEMA apikey FROM {squatter}")
            c.execute("CREATE EXTENSION pg_apikey")
            assert c.execute("SELECT count(*) FROM apikey.formats").fetchone()[0] >= 5
    finally:
        su.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_no_cluster_wide_role_is_created_or_adopted(db):
    su = db()
    su.execute("DO $$ BEGIN CREATE ROLE apikey_admin NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    member = role(su)
    su.execute(f"GRANT apikey_admin TO {member}")
    with db(user=member) as m:
        assert m.execute("SELECT apikey.is_admin()").fetchone()[0] is False
        assert sqlstate(m, "SELECT * FROM apikey.create('someone', 'k')") == "42501"
        assert sqlstate(m, "SELECT * FROM apikey.audit_log") == "42501"


def test_a_replaced_extension_table_fails_closed(db):
    su = db()
    _, k = key(su, "alice")
    su.execute("ALTER TABLE apikey.keys RENAME TO keys_real")
    su.execute("CREATE VIEW apikey.keys AS SELECT * FROM apikey.keys_real")
    with db() as fresh:
        with pytest.raises(psycopg.errors.InternalError, match="pg_apikey internal error: an extension table"):
            fresh.execute("SELECT apikey.verify(%s)", (k,))


def test_administrators_are_per_database(db):
    su = db()
    admin = role(su)
    su.execute(f"SELECT apikey.grant_admin('{admin}')")
    other = f"{db.name}_o"
    su.execute(f'CREATE DATABASE "{other}"')
    try:
        with db(dbname=other) as o:
            o.execute("CREATE EXTENSION pg_apikey")
            o.execute("SET apikey.creation_limit = 0")
            key(o, "victim")
        with db(user=admin) as a:
            assert a.execute("SELECT apikey.is_admin()").fetchone()[0] is True
            a.execute("SELECT * FROM apikey.create('anyone', 'k')")
            assert a.execute("SELECT count(*) FROM apikey.audit_log").fetchone()[0] >= 1
        with db(user=admin, dbname=other) as a:
            assert a.execute("SELECT apikey.is_admin()").fetchone()[0] is False
            assert sqlstate(a, "SELECT * FROM apikey.create('victim', 'mine now')") == "42501"
            assert sqlstate(a, "SELECT * FROM apikey.audit_log") == "42501"
            assert a.execute("SELECT count(*) FROM apikey.key_list").fetchone()[0] == 0
        # Only superusers grant; revoking takes the table rights back.
        with db(user=admin) as a:
            assert sqlstate(a, f"SELECT apikey.grant_admin('{admin}')") == "42501"
        su.execute(f"SELECT apikey.revoke_admin('{admin}')")
        with db(user=admin) as a:
            assert a.execute("SELECT apikey.is_admin()").fetchone()[0] is False
            assert sqlstate(a, "SELECT * FROM apikey.audit_log") == "42501"
    finally:
        su.execute(f'DROP DATABASE "{other}" WITH (FORCE)')


# --- Key rights never widen --------------------------------------------------------------------------

@pytest.fixture
def narrow(db):
    """alice holds a wide key and a narrow one (scoped, one resource, expiring, limited, own role)."""
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    r = role(su, "reader", login=False)
    wide_id, wide = key(su, "alice", "wide")
    narrow_id, nk = key(su, "alice", "narrow", scopes=["surveys:read"], resource="north",
                        expires_in="10 days", rate_limit=100, rate_period="1 minute", db_role=r)
    login = role(su, "holder")
    return dict(su=su, wide_id=wide_id, wide=wide, narrow_id=narrow_id, narrow=nk, role=r, login=login)


def as_holder(db, narrow, k):
    """A connection of an ordinary role (no administrator rights) authenticated with key k."""
    c = db(user=narrow["login"], autocommit=False)
    c.execute("SELECT apikey.authenticate(%s)", (k,))
    return c


def test_a_narrow_key_cannot_touch_a_wider_sibling(db, narrow):
    c = as_holder(db, narrow, narrow["narrow"])
    wid = narrow["wide_id"]
    for sql in (f"SELECT * FROM apikey.rotate({wid})", f"SELECT * FROM apikey.rotate({wid}, '1 hour')",
                f"SELECT apikey.reveal({wid})", f"SELECT apikey.revoke({wid})", f"SELECT apikey.delete({wid})"):
        assert sqlstate(c, sql) == "42501", sql
    # A wide key manages narrower keys (same database role: roles are not comparable, so a key
    # with a role of its own is managed only with that role), and a key may revoke itself.
    w = as_holder(db, narrow, narrow["wide"])
    child = w.execute("SELECT id FROM apikey.create('alice', 'child', scopes => '{x:read}')").fetchone()[0]
    assert sqlstate(w, f"SELECT * FROM apikey.rotate({child}, '1 hour')") is None
    assert sqlstate(w, f"SELECT apikey.revoke({narrow['narrow_id']})") == "42501"
    w.rollback()
    assert sqlstate(c, f"SELECT apikey.revoke({narrow['narrow_id']})") is None
    c.rollback()


def test_keys_created_by_a_holder_inherit_every_restriction(db, narrow):
    c = as_holder(db, narrow, narrow["narrow"])
    new_id, new = c.execute("SELECT id, api_key::text FROM apikey.create('alice', 'child', expires_in => '400 days')").fetchone()
    row = c.execute("""SELECT scopes, resource, db_role, rate_limit, rate_burst,
                              expires_at <= now() + interval '10 days' AS capped
                         FROM apikey.key_list WHERE id = %s""", (new_id,)).fetchone()
    assert row == (["surveys:read"], "north", narrow["role"], 100, 100, True)
    # A looser limit, another role, bulky metadata: refused.
    assert sqlstate(c, "SELECT apikey.create('alice', 'x', rate_limit => 1000, rate_period => '1 minute')") == "42501"
    assert sqlstate(c, "SELECT apikey.create('alice', 'x', db_role => 'postgres')") == "42501"
    assert sqlstate(c, "SELECT apikey.create('alice', 'x', metadata => jsonb_build_object('pad', repeat('x', 5000)))") == "22023"
    c.rollback()


def test_rotation_grace_is_capped_and_charged_to_the_quota(db):
    su = db()
    su.execute("SET apikey.creation_limit = 5")
    kid, k = key(su, "quota-owner")
    assert sqlstate(su, f"SELECT * FROM apikey.rotate({kid}, '30 days')") == "22023"
    ids = [kid]
    for _ in range(4):
        ids.append(su.execute("SELECT id FROM apikey.rotate(%s, '1 day')", (ids[-1],)).fetchone()[0])
    # Five live keys now (four in their grace): a sixth is over the 5/hour quota.
    assert sqlstate(su, f"SELECT * FROM apikey.rotate({ids[-1]}, '1 day')") == "53400"
    # A rotation without grace makes a key too: charged the same (test_authority.py bounds
    # rotations and toggles per owner).
    assert sqlstate(su, f"SELECT * FROM apikey.rotate({ids[-1]})") == "53400"


# --- Limits that others can reset ------------------------------------------------------------------

def test_rate_limit_buckets_belong_to_the_calling_role(db):
    su = db()
    victim, attacker = role(su), role(su)
    with db(user=attacker) as a:
        for _ in range(3):
            sqlstate(a, "SELECT apikey.rate_limit('login:bob', 1, '31 days')")
        # Periods are capped, so nothing is locked for millennia.
        assert sqlstate(a, "SELECT apikey.rate_limit('login:bob', 1, '1000 years')") == "22023"
    with db(user=victim) as v:
        assert v.execute("SELECT apikey.rate_limit('login:bob', 1, '1 hour')").fetchone()[0] == 0


def test_raise_http_clamps_any_retry_after(db):
    c = db()
    with pytest.raises(psycopg.Error) as e:
        c.execute("""SELECT apikey.raise_http('53400', 'slow down', '{"retry_after": 99999999999999}')""")
    assert e.value.sqlstate == "PGRST"
    assert '"status" : 429' in e.value.diag.message_detail
    assert json.loads(e.value.diag.message_detail)["headers"]["Retry-After"] == "2147483647"


def test_each_database_counts_usage_in_its_own_region(tenant_cluster):
    """Every database gets its own region of usage slots (no list to be in): another database's
    uses land in its own region and are flushed by its own worker, and never in this one's."""
    connect = tenant_cluster
    with connect("other_tenant") as o:
        o.execute("SET apikey.creation_limit = 0")
        made = [key(o, f"u{i}") for i in range(40)]
        o.execute("SELECT count(apikey.verify(k)) FROM unnest(%s::text[]) k", ([k for _, k in made],))
        assert o.execute("SELECT apikey.usage_dropped()").fetchone()[0] == 0
        deadline = time.time() + 15
        while o.execute("SELECT count(*) FROM apikey.keys WHERE last_used_at IS NOT NULL").fetchone()[0] < 40:
            assert time.time() < deadline, "other_tenant's worker never flushed"
            time.sleep(0.2)
    with connect("tenant") as t:
        t.execute("SET apikey.creation_limit = 0")
        kid, k = key(t, "counted")
        t.execute("SELECT apikey.verify(%s)", (k,))
        assert t.execute("SELECT count(*) FROM apikey.usage_live WHERE key_id = %s", (kid,)).fetchone()[0] == 1 \
            or t.execute("SELECT count(*) FROM apikey.usage WHERE key_id = %s", (kid,)).fetchone()[0] == 1


# --- Secrets and oracles -------------------------------------------------------------------------------

def test_no_key_reaches_the_log_through_context_or_query_lines(db):
    c = db()
    kid, k = key(c, "logged")
    c.execute("SELECT apikey.revoke(%s)", (kid,))
    attempts = [
        f"DO $$ BEGIN PERFORM apikey.verify('{k}'); END $$",
        f"DO $$ BEGIN EXECUTE 'SELECT apikey.verify($1)' USING '{k}'::text; END $$",
        f"DO $$ BEGIN EXECUTE 'SELECT apikey.verify(''{k}'')'; END $$",
        f"DO $$ BEGIN PERFORM apikey.verify('{k} '); END $$",
        f"DO $$ BEGIN PERFORM apikey.authenticate('{k}'); END $$",
    ]
    c.execute("CREATE FUNCTION check_it(k text) RETURNS void LANGUAGE plpgsql AS "
              "$$ BEGIN PERFORM apikey.verify(k); END $$")
    attempts.append(f"SELECT check_it('{k}')")
    for sql in attempts:
        with pytest.raises(psycopg.Error):
            c.execute(sql)
    c.execute("SELECT pg_sleep(0.3)")
    log = server_log()
    # A boolean, so a failure never prints the key.
    assert (k[4:40] in log) is False


def test_a_reveal_is_logged_even_if_the_transaction_rolls_back(tenant_cluster):
    connect = tenant_cluster
    with connect("tenant") as c:
        c.execute("SET apikey.creation_limit = 0")
        c.execute("SELECT apikey.alter_format('ct_test', true)")
        kid, k = key(c, "revealer", format="ct_test")
        c.execute("BEGIN")
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        assert c.execute("SELECT apikey.reveal(%s)::text", (kid,)).fetchone()[0] == k
        c.execute("ROLLBACK")
        assert c.execute("SELECT count(*) FROM apikey.audit_log WHERE action = 'reveal'").fetchone()[0] == 0
        c.execute("SELECT pg_sleep(0.3)")
    log = (ROOT / ".run/tenants/server.log").read_text(errors="replace")
    assert f'API key {kid} of owner "revealer" revealed to role "postgres"' in log
    assert (k[8:40] in log) is False


def test_usage_pending_and_limiter_state_are_for_administrators(db):
    su = db()
    nobody = role(su)
    kid, k = key(su, "u")
    su.execute("SELECT apikey.verify(%s)", (k,))
    with db(user=nobody) as n:
        assert sqlstate(n, "SELECT * FROM apikey.usage_pending()") == "42501"
        assert sqlstate(n, "SELECT * FROM apikey.rate_limit_buckets()") == "42501"
        assert sqlstate(n, "SELECT apikey.usage_dropped()") == "42501"


def test_callback_signature_answers_the_same_for_every_wrong_key(db):
    su = db()
    app_id, _ = key(su, "app-owner", kind="app")
    user_id, _ = key(su, "user-owner")
    answers = {su.execute("SELECT apikey.verify_callback_signature(%s, 'https://x', 'ab')", (i,)).fetchone()[0]
               for i in (app_id, user_id, 987654)}
    assert answers == {False}


def test_management_calls_do_not_touch_other_owners_rows(db):
    """Neither the answer nor the table statistics tell whether another owner's key id exists."""
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    victim_id, _ = key(su, "victim")
    _, mine = key(su, "mallory")
    nobody = role(su)
    c = db(user=nobody, autocommit=False)
    c.execute("SELECT apikey.authenticate(%s)", (mine,))

    def fetched_after(sql):
        before = c.execute("SELECT pg_stat_get_xact_tuples_fetched('apikey.keys'::regclass)").fetchone()[0]
        state = sqlstate(c, sql)
        after = c.execute("SELECT pg_stat_get_xact_tuples_fetched('apikey.keys'::regclass)").fetchone()[0]
        return state, after - before

    for fn in ("revoke", "delete", "reveal"):
        existing = fetched_after(f"SELECT apikey.{fn}({victim_id})")
        missing = fetched_after(f"SELECT apikey.{fn}(987654321)")
        assert existing == missing and existing[0] == "P0002", fn
    c.rollback()


def test_metadata_is_bounded(db):
    su = db()
    assert sqlstate(su, "SELECT apikey.create('m', 'k', metadata => jsonb_build_object('pad', repeat('x', 70000)))") == "22023"
    # Even a superuser editing the table cannot store more than the cache is sized for.
    kid, _ = key(su, "m2")
    assert sqlstate(su, "UPDATE apikey.keys SET metadata = jsonb_build_object('pad', repeat('x', 70000)) "
                        f"WHERE id = {kid}") == "23514"


# --- The privilege guard -------------------------------------------------------------------------------

def test_an_error_inside_a_management_call_leaves_the_caller_as_they_were(db):
    su = db()
    su.execute("SET apikey.creation_limit = 1")
    caller = role(su)
    su.execute(f"SELECT apikey.grant_admin('{caller}')")
    with db(user=caller) as c:
        c.execute("SET search_path = public")
        c.execute("SELECT * FROM apikey.create('g', 'first')")
        # The quota refusal is raised while running as the extension owner, search_path pinned.
        row = c.execute("""DO $$ BEGIN
                PERFORM apikey.create('g', 'second');
            EXCEPTION WHEN OTHERS THEN
                RAISE NOTICE 'caught %', SQLSTATE;
            END $$""")
        assert row is not None
        assert c.execute("SELECT current_user, current_setting('search_path')").fetchone() == (caller, "public")
        assert sqlstate(c, "SELECT * FROM apikey.keys") == "42501"


# --- Found by the independent review ------------------------------------------------------------

def test_an_application_key_manages_no_keys(db):
    """An application key alone grants no identity at all (28000); in a two-key request the
    identity is the user key's, bounded by both keys."""
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    _, app = key(su, "acme", "app", kind="app")
    user_id, user = key(su, "acme", "user")
    holder = role(su)
    c = db(user=holder, autocommit=False)
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="user key required"):
        c.execute("SELECT apikey.authenticate(%s)", (app,))
    c.rollback()
    c.execute("SELECT apikey.authenticate(%s, %s)", (app, user))
    assert c.execute("SELECT apikey.current_owner()").fetchone()[0] == "acme"
    c.rollback()


def test_a_burst_cannot_pin_a_bucket_past_31_days(db):
    c = db()
    assert sqlstate(c, "SELECT apikey.rate_limit('pin', 1, '31 days', 100000)") == "22023"
    assert sqlstate(c, "SELECT apikey.create('p', 'k', rate_limit => 1, rate_period => '31 days', rate_burst => 2)") == "22023"
    assert sqlstate(c, "SELECT apikey.rate_limit('ok', 10, '31 days', 10)") is None


def test_keys_of_a_rolled_back_transaction_never_reach_the_limiter(db):
    """Create a limited key, use it, roll back, many times: shared memory keeps nothing of it."""
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    _, mine = key(su, "m")
    holder = role(su)
    c = db(user=holder)
    c.execute("""DO $$ DECLARE k text; BEGIN
        PERFORM apikey.authenticate(%s);
        FOR i IN 1..300 LOOP
          BEGIN
            SELECT x.api_key INTO k FROM apikey.create('m', 'tmp', rate_limit => 1, rate_period => '31 days') x;
            PERFORM apikey.authenticate(k::apikey.api_key);
            RAISE EXCEPTION 'undo';
          EXCEPTION WHEN raise_exception THEN NULL; END;
        END LOOP; END $$""".replace("%s", "'" + mine + "'"))
    assert su.execute("SELECT count(*) FROM apikey.rate_limit_state WHERE bucket LIKE 'key:%%'").fetchone()[0] == 0


def test_one_database_cannot_fill_the_limiter_for_another(db):
    su = db()
    other = f"{db.name}_f"
    su.execute(f'CREATE DATABASE "{other}"')
    try:
        with db(dbname=other) as o:
            o.execute("CREATE EXTENSION pg_apikey")
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="rate limiter is full"):
                for start in range(0, 8000, 500):
                    o.execute("SELECT count(apikey.rate_limit('f' || g, 1, '1 hour')) "
                              "FROM generate_series(%s::int, %s::int) g", (start, start + 499))
        # This database still gets buckets: the flood took at most half of each partition.
        got = su.execute("SELECT count(apikey.rate_limit('mine' || g, 1, '1 hour')) "
                         "FROM generate_series(1, 300) g").fetchone()[0]
        assert got == 300
    finally:
        su.execute(f'DROP DATABASE "{other}" WITH (FORCE)')


def test_a_derived_key_keeps_its_capped_lifetime_through_rotation(db, narrow):
    c = as_holder(db, narrow, narrow["narrow"])
    child = c.execute("SELECT id FROM apikey.create('alice', 'long', expires_in => '10 years')").fetchone()[0]
    c.commit()
    su = narrow["su"]
    new_id = su.execute("SELECT id FROM apikey.rotate(%s)", (child,)).fetchone()[0]
    within = su.execute("SELECT expires_at <= now() + interval '10 days 1 minute' FROM apikey.keys WHERE id = %s",
                        (new_id,)).fetchone()[0]
    assert within is True


def test_bad_input_never_gives_an_internal_error(db):
    c = db()
    assert sqlstate(c, "SELECT apikey.create('x', 'y', scopes => ARRAY[NULL]::text[])") == "22004"
    for detail in ("not json", '{"retry_after": "abc"}', None):
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT apikey.raise_http('53400', 'slow', %s)", (detail,))
        assert e.value.sqlstate == "PGRST" and '"status" : 429' in e.value.diag.message_detail


def test_a_key_in_its_grace_period_cannot_be_rotated_again(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    kid, _ = key(su, "g")
    su.execute("SELECT apikey.rotate(%s, '1 hour')", (kid,))
    assert sqlstate(su, f"SELECT apikey.rotate({kid})") == "55000"


# --- Found by the second independent review -----------------------------------------------------

def test_whitespace_or_non_ascii_after_bearer_is_no_jwt(db):
    """PostgREST reads `Bearer` + whitespace only as *no* token: such a request is anonymous and
    must get 401, not pass as JWT-authenticated; non-ASCII must not crash (XX000) or echo the key."""
    c = db()
    _, k = key(c, "b")
    for header in ["Bearer \u000b", "Bearer \u000c", "Bearer \t", "Bearer  ", "Bearer",
                   "Bearer\u00a0" + k, "Beareré-xyz", "Bearer a..b"]:
        c.execute("BEGIN")
        c.execute("SELECT set_config('request.headers', json_build_object('authorization', %s::text)::text, true)",
                  (header,))
        c.execute("SELECT set_config('request.path', '/notes', true)")
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT apikey.pre_request()")
        c.execute("ROLLBACK")
        assert e.value.sqlstate == "PGRST", header
        assert '"message" : "API key required"' in e.value.diag.message_primary
        assert (k[8:30] in str(e.value)) is False
    assert (k[8:30] in server_log()) is False


def test_a_role_flooding_rate_limit_in_two_databases_leaves_room_for_a_third(db):
    su = db()
    flooder = role(su)
    names = [f"{db.name}_x", f"{db.name}_y"]
    try:
        for n in names:
            su.execute(f'CREATE DATABASE "{n}"')
            with db(dbname=n) as c:
                c.execute("CREATE EXTENSION pg_apikey")
            with db(user=flooder, dbname=n) as f:
                f.execute("""DO $$ BEGIN FOR i IN 1..4000 LOOP
                    BEGIN PERFORM apikey.rate_limit('flood' || i, 1, '30 days');
                    EXCEPTION WHEN SQLSTATE '53400' THEN NULL; END; END LOOP; END $$""")
        other = role(su)
        with db(user=other) as v:
            got = v.execute("SELECT count(apikey.rate_limit('login:' || g, 5, '1 minute')) "
                            "FROM generate_series(1, 400) g").fetchone()[0]
            assert got == 400
    finally:
        for n in names:
            su.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def test_a_dropped_admin_role_is_not_adopted_by_its_name(db):
    su = db()
    name = f"adm_{uuid.uuid4().hex[:8]}"
    su.execute(f"CREATE ROLE {name} LOGIN")
    su.execute(f"SELECT apikey.grant_admin('{name}')")
    su.execute(f"DROP OWNED BY {name}")
    su.execute(f"DROP ROLE {name}")
    su.execute(f"CREATE ROLE {name} LOGIN")
    with db(user=name) as squatter:
        assert squatter.execute("SELECT apikey.is_admin()").fetchone()[0] is False
        assert sqlstate(squatter, "SELECT apikey.create('victim', 'minted')") == "42501"
    # A renamed administrator loses the rights with the name (fail closed).
    renamed = f"adm_{uuid.uuid4().hex[:8]}"
    su.execute(f"CREATE ROLE {renamed} LOGIN")
    su.execute(f"SELECT apikey.grant_admin('{renamed}')")
    su.execute(f"ALTER ROLE {renamed} RENAME TO {renamed}_x")
    with db(user=f"{renamed}_x") as r:
        assert r.execute("SELECT apikey.is_admin()").fetchone()[0] is False


def test_cache_triggers_fire_under_replication_role_replica(db):
    su = db()
    kid, k = key(su, "repl")
    reader = db()
    for _ in range(3):
        reader.execute("SELECT apikey.verify(%s)", (k,))
    su.execute("SET session_replication_role = replica")
    su.execute("UPDATE apikey.keys SET revoked_at = now() WHERE id = %s", (kid,))
    su.execute("RESET session_replication_role")
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        reader.execute("SELECT apikey.verify(%s)", (k,))


def test_a_key_updated_in_this_transaction_is_still_charged(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    kid, k = key(su, "upd", rate_limit=1, rate_period="1 hour")
    holder = role(su)
    c = db(user=holder, autocommit=False)
    c.execute("SELECT apikey.authenticate(%s)", (k,))
    c.execute("SELECT apikey.rotate(%s, '1 hour')", (kid,))   # updates the old key's row
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
        c.execute("SELECT apikey.authenticate(%s)", (k,))
    c.rollback()


def test_db_role_must_exist(db):
    su = db()
    assert sqlstate(su, "SELECT apikey.create('r', 'k', db_role => 'no_such_role_xyz')") == "22023"


def test_a_two_key_request_carries_both_keys_policies(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    _, app = key(su, "farm-app", "app", kind="app", scopes=["farms:read"], resource="north",
                 rate_limit=5, rate_period="1 hour")
    _, user = key(su, "jo", "user", scopes=["farms:read", "farms:write"], rate_limit=1, rate_period="1 hour")
    c = db(autocommit=False)
    c.execute("SELECT apikey.authenticate(%s, %s)", (app, user))
    row = c.execute("""SELECT apikey.has_scope('farms:read'), apikey.has_scope('farms:write'),
                              apikey.in_resource('north'), apikey.in_resource('south'),
                              apikey.current_scopes(), apikey.current_resource()""").fetchone()
    assert row == (True, False, True, False, ["farms:read"], "north")
    c.commit()
    # The user key's limit (1/hour) refuses the second request: the application's allowance
    # (5/hour) is not spent by it, all or nothing.
    for _ in range(3):
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT apikey.authenticate(%s, %s)", (app, user))
        c.rollback()
    remaining = su.execute("SELECT reset_after_seconds FROM apikey.rate_limit_state "
                           "WHERE bucket = 'key:' || (SELECT id FROM apikey.keys WHERE kind = 'app' "
                           "AND owner = 'farm-app')").fetchone()[0]
    assert remaining <= 3600 / 5 + 1, "the refused requests spent the application's allowance"
