"""One authority model, tested as the attacker on a real cluster (docs/security.md, "One authority
model"): authority re-checked at every act, charges that cannot be dodged, every policy in the
rights rule, nothing privileged read by a name after it was checked, creation rules on every path,
bounded inputs, and a worker that a database owner cannot switch off."""

import concurrent.futures
import hashlib
import os
import time
import uuid

import psycopg
import pytest

from conftest import ROOT, new_key, new_role, own_cluster

PORT = "54371"
DB = "authz_db"


@pytest.fixture(scope="module")
def connect():
    # Started the way a careless environment would: RUST_BACKTRACE=1 (see the bounded-input tests).
    os.environ["CLUSTER_RUST_BACKTRACE"] = "1"
    try:
        with own_cluster("authority", PORT, DB, 
                         "apikey.usage_flush_interval = 200",
                         setup=(f"ALTER DATABASE {DB} SET apikey.creation_limit = 0",)) as conn:
            os.environ.pop("CLUSTER_RUST_BACKTRACE", None)
            yield conn
    finally:
        os.environ.pop("CLUSTER_RUST_BACKTRACE", None)


def role(c, prefix="az"):
    return new_role(c, prefix)


key = new_key


def owner():
    return f"o_{uuid.uuid4().hex[:8]}"


# --- Authority is re-checked at every act ---------------------------------------------------------

@pytest.mark.parametrize("loss", ["revoke", "disable", "delete", "leak", "expire"])
@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_a_key_that_lost_its_rights_in_another_session_stops_acting(connect, loss, isolation):
    """A holder authenticates, then another session takes the key away: the next management call
    (even minting a replacement) is refused with 28000 and the policy readers see nobody."""
    o = owner()
    with connect() as su:
        holder = role(su)
        kid, k = key(su, o, expires_in="3 seconds" if loss == "expire" else None)
        sibling, _ = key(su, o, "sibling")
    with connect(user=holder, autocommit=False) as h, connect() as admin:
        h.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        assert h.execute("SELECT apikey.current_owner()").fetchone()[0] == o
        if loss == "revoke":
            admin.execute("SELECT apikey.revoke(%s)", (kid,))
        elif loss == "disable":
            admin.execute("SELECT apikey.disable(%s)", (kid,))
        elif loss == "delete":
            admin.execute("SELECT apikey.delete(%s)", (kid,))
        elif loss == "leak":
            admin.execute("SELECT apikey.report_leaked(ARRAY[%s], 'test')", (k,))
        else:
            time.sleep(3.2)
        assert h.execute("SELECT apikey.current_owner(), apikey.current_key_id(), "
                         "apikey.has_scope('x')").fetchone() == (None, None, False)
        for call, args in (("SELECT apikey.create(%s, 'replacement')", (o,)),
                           ("SELECT apikey.revoke(%s)", (sibling,)),
                           ("SELECT apikey.disable(%s)", (sibling,)),
                           ("SELECT apikey.rotate(%s)", (sibling,)),
                           ("SELECT apikey.charge('requests')", None)):
            h.execute("SAVEPOINT s")
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification,
                               match="no longer valid"):
                h.execute(call, args)
            h.execute("ROLLBACK TO SAVEPOINT s")
        h.rollback()
    with connect() as su:
        assert su.execute("SELECT count(*) FROM apikey.keys WHERE owner = %s AND name = 'replacement'",
                          (o,)).fetchone()[0] == 0
        assert su.execute("SELECT revoked_at IS NULL AND disabled_at IS NULL FROM apikey.keys WHERE id = %s",
                          (sibling,)).fetchone()[0]


def test_a_live_key_keeps_acting_and_a_two_key_identity_needs_both(connect):
    o = owner()
    with connect() as su:
        holder = role(su)
        kid, k = key(su, o)
        app_id, app = key(su, "the_app", "app", kind="app")
    with connect(user=holder, autocommit=False) as h, connect() as admin:
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        assert h.execute("SELECT count(*) FROM apikey.create(%s, 'ok')", (o,)).fetchone()[0] == 1
        h.commit()
        h.execute("SELECT apikey.authenticate(%s, %s)", (app, k))
        assert h.execute("SELECT apikey.current_owner()").fetchone()[0] == o
        admin.execute("SELECT apikey.revoke(%s)", (app_id,))
        assert h.execute("SELECT apikey.current_owner()").fetchone()[0] is None
        h.rollback()


# --- Charges are final ----------------------------------------------------------------------------

def test_a_rolled_back_request_is_still_charged(connect):
    """The client saw its rows before rolling back: credits and limits stay spent."""
    with connect() as c:
        kid, k = key(c, owner(), credits=20, rate_limit=3, rate_period="1 hour")
    with connect(autocommit=False) as c:
        c.execute("SELECT apikey.authenticate(%s, cost => 4)", (k,))
        c.rollback()
        c.execute("BEGIN READ ONLY")
        c.execute("SELECT apikey.authenticate(%s, cost => 3)", (k,))
        c.execute("SAVEPOINT s")
        c.execute("SELECT apikey.authenticate(%s, cost => 5)", (k,))
        c.execute("ROLLBACK TO SAVEPOINT s")
        c.commit()
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 8
        c.rollback()
        # Three requests were charged to the per-key limit of 3 an hour: the fourth is refused.
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            c.execute("SELECT apikey.authenticate(%s, cost => 0)", (k,))
        c.rollback()


def test_a_refusal_the_client_provokes_after_its_work_gives_nothing_back(connect):
    """authenticate, read, then fail require_scope on purpose: the request stays charged to the
    key's limit, its owner's limit and its credits."""
    o = owner()
    with connect() as c:
        c.execute("SELECT apikey.set_owner_limit(%s, 'requests', 2, '1 hour')", (o,))
        kid, k = key(c, o, scopes=["a:read"], credits=10)
    with connect(autocommit=False) as c:
        for _ in range(2):
            c.execute("SELECT apikey.authenticate(%s, cost => 2)", (k,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT apikey.require_scope('b:write')")
            c.rollback()
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="Owner"):
            c.execute("SELECT apikey.authenticate(%s)", (k,))
        c.rollback()
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 6
        c.rollback()


def test_a_refusal_by_pg_apikey_charges_nothing(connect):
    """A request the limiter refuses spends none of the credits taken before the limit refused."""
    with connect() as c:
        kid, k = key(c, owner(), credits=10, rate_limit=1, rate_period="1 hour")
        c.execute("SELECT apikey.authenticate(%s, cost => 2)", (k,))
        for _ in range(3):
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
                c.execute("SELECT apikey.authenticate(%s, cost => 2)", (k,))
        assert c.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 8


# --- Every policy in the rights rule --------------------------------------------------------------

def test_a_metered_key_cannot_take_over_a_sibling(connect):
    """A key with credits manages only itself: not an unmetered sibling, and not a richer metered
    one either (found by the fourth review: rotating a sibling with a million credits handed the
    balance to the caller)."""
    o = owner()
    with connect() as su:
        holder = role(su)
        metered_id, metered = key(su, o, "metered", credits=20)
        free_id, _ = key(su, o, "free")
        rich_id, _ = key(su, o, "rich", credits=1_000_000)
    with connect(user=holder, autocommit=False) as h:
        for target in (free_id, rich_id):
            for call in ("SELECT apikey.rotate(%s)", "SELECT apikey.disable(%s)",
                         "SELECT apikey.revoke(%s)", "SELECT apikey.delete(%s)",
                         "SELECT apikey.credits(%s)"):
                h.execute("SELECT apikey.authenticate(%s)", (metered,))
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="manages no key but itself"):
                    h.execute(call, (target,))
                h.rollback()
        h.execute("SELECT apikey.authenticate(%s)", (metered,))
        assert h.execute("SELECT apikey.credits(%s)", (metered_id,)).fetchone()[0] is not None
        assert h.execute("SELECT count(*) FROM apikey.rotate(%s)", (metered_id,)).fetchone()[0] == 1
        h.rollback()


# --- Nothing privileged reads an object by name after checking it ---------------------------------

def test_import_reads_the_table_it_checked_even_if_its_name_is_swapped(connect):
    """A schema owner renames the schema of the importing superuser's table while the import
    waits for a lock, and puts a view of the same name in its place: the import reads the table
    (by OID), and the view's function never runs as the superuser."""
    with connect() as su:
        attacker = role(su, "sch")
        su.execute(f"GRANT CREATE ON DATABASE {DB} TO {attacker}")
        su.execute(f"CREATE SCHEMA imp_{attacker} AUTHORIZATION {attacker}")
        schema = f"imp_{attacker}"
        su.execute(f"CREATE TABLE {schema}.src (owner text, name text, hash text, algorithm text)")
        digest = hashlib.sha256(b"cfk_" + b"a" * 64).hexdigest()
        su.execute(f"INSERT INTO {schema}.src VALUES ('imp_owner', 'real', %s, 'sha256')", (digest,))
        su.execute(f"CREATE TABLE {schema}.ran (who text)")
        su.execute(f"ALTER TABLE {schema}.ran OWNER TO {attacker}")
        oid = su.execute(f"SELECT '{schema}.src'::regclass::oid").fetchone()[0]
    with connect(autocommit=False) as blocker, connect() as importer, \
            connect(user=attacker) as a:
        blocker.execute(f"LOCK TABLE {schema}.src IN ACCESS EXCLUSIVE MODE")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(lambda: importer.execute(
                "SELECT status, reason FROM apikey.import_keys(%s::oid::regclass)", (oid,)).fetchall())
            try:
                time.sleep(1.0)
                a.execute(f"ALTER SCHEMA {schema} RENAME TO {schema}_old")
                a.execute(f"CREATE SCHEMA {schema}")
                a.execute(f"""CREATE FUNCTION {schema}.spy() RETURNS text LANGUAGE sql AS
                              $$ INSERT INTO {schema}_old.ran VALUES (current_user) RETURNING 'x' $$""")
                a.execute(f"""CREATE VIEW {schema}.src AS SELECT {schema}.spy() AS owner, 'view' AS name,
                              '{digest}' AS hash, 'sha256' AS algorithm""")
            finally:
                blocker.commit()
            rows = job.result(timeout=30)
        assert [r[0] for r in rows] == ["imported"]
    with connect() as su:
        assert su.execute(f"SELECT count(*) FROM {schema}_old.ran").fetchone()[0] == 0
        assert su.execute("SELECT name FROM apikey.keys WHERE owner = 'imp_owner'").fetchall() == [("real",)]


def test_import_refuses_a_view_and_a_table_of_another_role(connect):
    with connect() as su:
        other = role(su, "oth")
        su.execute("CREATE TABLE imp_view_base (owner text)")
        su.execute("CREATE VIEW imp_view AS SELECT * FROM imp_view_base")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be a table"):
            su.execute("SELECT * FROM apikey.import_keys('imp_view')")
        su.execute(f"CREATE TABLE imp_theirs (owner text); ALTER TABLE imp_theirs OWNER TO {other}")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="you own"):
            su.execute("SELECT * FROM apikey.import_keys('imp_theirs')")


# --- Creation rules hold on every path ------------------------------------------------------------

def test_creation_check_runs_on_import_and_with_a_pinned_search_path(connect):
    """The administrator's creation_check refuses imports as it refuses create, and a caller's
    own '=' first on their search_path cannot change its answer."""
    o = owner()
    with connect() as su:
        su.execute("CREATE SCHEMA IF NOT EXISTS cc")
        su.execute("""CREATE OR REPLACE FUNCTION cc.check(owner text) RETURNS void LANGUAGE plpgsql AS $$
                      BEGIN IF owner = 'blocked' THEN RAISE EXCEPTION 'owner % may not have keys', owner
                            USING ERRCODE = '42501'; END IF; END $$""")
        su.execute("GRANT USAGE ON SCHEMA cc TO PUBLIC")
        holder = role(su)
        _, k = key(su, "blocked", "existing")
        _, k2 = key(su, o, "existing")
        su.execute(f"GRANT CREATE ON DATABASE {DB} TO {holder}")
    with connect() as su:
        su.execute("SET apikey.creation_check = 'cc.check(text)'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not have keys"):
            su.execute("SELECT apikey.import('blocked', 'imported', %s, 'sha256')",
                       (hashlib.sha256(uuid.uuid4().bytes).hexdigest(),))
        su.execute("SELECT apikey.import(%s, 'imported', %s, 'sha256')",
                   (o, hashlib.sha256(uuid.uuid4().bytes).hexdigest()))
    with connect(user=holder) as h:
        h.execute("CREATE SCHEMA evil")
        h.execute("""CREATE FUNCTION evil.never(a text, b text) RETURNS boolean
                     LANGUAGE sql IMMUTABLE AS 'SELECT false'""")
        h.execute("CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.never)")
    with connect() as su:
        su.execute(f"ALTER ROLE {holder} IN DATABASE {DB} SET apikey.creation_check = 'cc.check(text)'")
    with connect(user=holder, autocommit=False) as h:
        h.execute("SET search_path = evil, pg_catalog")
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not have keys"):
            h.execute("SELECT apikey.create('blocked', 'sneaky')")
        h.rollback()
        h.execute("SELECT apikey.authenticate(%s)", (k2,))
        assert h.execute("SELECT count(*) FROM apikey.create(%s, 'fine')", (o,)).fetchone()[0] == 1
        h.commit()


# --- Bounded inputs -------------------------------------------------------------------------------

def test_holder_keys_bound_their_limits_and_allow_lists(connect):
    o = owner()
    with connect() as su:
        holder = role(su)
        _, k = key(su, o)
    many_limits = psycopg.types.json.Jsonb({f"l{i}": {"max": 1, "per": "1 hour"} for i in range(17)})
    many_blocks = [f"10.0.{i}.0/24" for i in range(33)]
    with connect(user=holder, autocommit=False) as h:
        for kw, arg in (("limits", many_limits), ("allowed_ips", many_blocks)):
            h.execute("SELECT apikey.authenticate(%s)", (k,))
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most"):
                h.execute(f"SELECT apikey.create(%s, 'big', {kw} => %s)", (o, arg))
            h.rollback()
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        assert h.execute("SELECT count(*) FROM apikey.create(%s, 'ok', allowed_ips => %s)",
                         (o, many_blocks[:32])).fetchone()[0] == 1
        h.rollback()


def deep(n):
    """JSON text nesting n objects (passed as text and cast: Python's encoder stops at ~1000)."""
    return '{"a": ' * n + "1" + "}" * n


def test_odd_input_gets_a_documented_sqlstate_and_no_backtrace(connect):
    """Every function of the API called with NULL for every argument, and JSON nested thousands
    of levels deep wherever JSON is taken, on a server started with RUST_BACKTRACE=1: each answer
    is a documented SQLSTATE (never XX000), and no backtrace reaches the client or the log."""
    seen = []
    with connect() as su:
        su.execute("CREATE TABLE deep_src (owner text, name text, hash text, algorithm text, metadata jsonb)")
        su.execute("INSERT INTO deep_src VALUES ('deep', 'k', %s, 'sha256', %s::jsonb)",
                   (hashlib.sha256(b"deep").hexdigest(), deep(3000)))
        functions = su.execute("""
            SELECT p.oid::regprocedure::text, p.proname, pg_catalog.array_agg(pg_catalog.format_type(t, NULL) ORDER BY o)
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   CROSS JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, o)
             WHERE n.nspname = 'apikey' AND p.prokind = 'f' AND p.pronargs > 0
             GROUP BY p.oid, p.proname""").fetchall()
        assert len(functions) > 30
        calls = [(f"SELECT apikey.{name}({', '.join(f'NULL::{t}' for t in types)})", None)
                 for _, name, types in functions if not name.startswith("_")]
        calls += [("SELECT apikey.create('deep', 'k', metadata => %s::jsonb)", (deep(3000),)),
                  ("SELECT apikey.create('deep', 'k', limits => %s::jsonb)", (deep(3000),)),
                  ("SELECT apikey.import('deep', 'k', %s, 'sha256', metadata => %s::jsonb)",
                   (hashlib.sha256(b"x").hexdigest(), deep(3000))),
                  ("SELECT apikey.secret_scanning(%s::jsonb)", (deep(3000),)),
                  ("SELECT apikey.create('deep', 'k', metadata => %s::jsonb)", (deep(40),))]
        for sql, args in calls:
            try:
                with su.transaction():
                    su.execute(sql, args)
            except psycopg.Error as e:
                seen.append((sql, e.sqlstate, e.diag.message_primary, e.diag.message_detail))
        rows = su.execute("SELECT status, reason FROM apikey.import_keys('deep_src')").fetchall()
        assert rows == [("refused", "column metadata is not a valid jsonb")]
    internal = [s[0].split("(")[0] for s in seen if s[1] in ("XX000", None)]
    assert internal == []
    for sql, state, message, detail in seen:
        assert "backtrace" not in f"{message} {detail}".lower(), sql
    deep_refusals = [s for s in seen if "levels deep" in (s[2] or "")]
    assert len(deep_refusals) == 5 and all(s[1] == "22023" for s in deep_refusals)
    log = (ROOT / ".run/authority/server.log").read_text(errors="replace")
    assert "stack backtrace" not in log.lower() and "rust_begin_unwind" not in log


# --- Background work cannot be switched off by a database owner -----------------------------------

def test_a_database_owner_cannot_stop_the_flush(connect):
    """The database's owner sets a read-only default, a 1 ms statement timeout and a hostile
    search_path for the database: the worker (restarted so that it connects under them) still
    writes spent credits and usage."""
    with connect() as su:
        dbo = role(su, "dbo")
        su.execute(f"ALTER DATABASE {DB} OWNER TO {dbo}")
    try:
        with connect(user=dbo) as o:
            o.execute(f"ALTER DATABASE {DB} SET default_transaction_read_only = on")
            o.execute(f"ALTER DATABASE {DB} SET statement_timeout = '1ms'")
            o.execute(f"ALTER DATABASE {DB} SET lock_timeout = '1ms'")
            o.execute(f"ALTER DATABASE {DB} SET search_path = nowhere")
        with connect(dbname="postgres") as p:
            p.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE backend_type = 'pg_apikey worker'")
            time.sleep(2.5)
            assert p.execute("SELECT count(*) FROM pg_stat_activity "
                             "WHERE backend_type = 'pg_apikey worker'").fetchone()[0] >= 1
        with connect(autocommit=False) as c:
            c.execute("SET statement_timeout = 0")
            c.execute("SET TRANSACTION READ WRITE")
            kid, k = c.execute("SELECT id, api_key::text FROM apikey.create('flushed', 'k', credits => 10)"
                               ).fetchone()
            c.commit()
            c.execute("SET statement_timeout = 0")
            c.execute("SELECT apikey.authenticate(%s, cost => 3)", (k,))
            c.commit()
            deadline = time.time() + 10
            while True:
                c.execute("SET statement_timeout = 0")
                row = c.execute("SELECT credits, (SELECT sum(uses) FROM apikey.usage WHERE key_id = k.id) "
                                "FROM apikey.keys k WHERE k.id = %s", (kid,)).fetchone()
                c.commit()
                if row == (7, 1):
                    break
                assert time.time() < deadline, f"the worker never wrote the balance: {row}"
                time.sleep(0.1)
    finally:
        with connect(dbname="postgres") as p:
            for setting in ("default_transaction_read_only", "statement_timeout", "lock_timeout",
                            "search_path"):
                p.execute(f"ALTER DATABASE {DB} RESET {setting}")
            p.execute(f"ALTER DATABASE {DB} OWNER TO postgres")
            p.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE backend_type = 'pg_apikey worker'")
        time.sleep(1.5)


# --- Expensive paths are cancellable and bounded --------------------------------------------------

def test_unknown_keys_of_a_format_with_bcrypt_imports_wait_cancellably(connect):
    """After a backend has timed one bcrypt, a key with no candidate waits instead of computing,
    and the wait honours statement_timeout (57014); costs above 14 are refused at import."""
    import bcrypt
    import secrets
    key = "cfk_" + secrets.token_hex(32)
    no_candidate = key[:4] + ("f" if key[4] != "f" else "e") + key[5:]
    with connect() as su:
        su.execute("SELECT apikey.import('bc', 'slow', %s, 'bcrypt', lookup => %s)",
                   (bcrypt.hashpw(key.encode(), bcrypt.gensalt(13)).decode(), key[:12]))
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            su.execute("SELECT apikey.verify(%s)", (no_candidate,))  # the backend's decoy bcrypt
        before = su.execute("SELECT apikey.bcrypt_checks()").fetchone()[0]
        su.execute("SET statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            su.execute("SELECT apikey.verify(%s)", (no_candidate,))
        su.execute("SET statement_timeout = 0")
        assert su.execute("SELECT apikey.bcrypt_checks()").fetchone()[0] == before + 1
        assert su.execute("SELECT name FROM apikey.verify(%s)", (key,)).fetchone()[0] == "slow"
        cheap = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="from 04 to 14"):
            su.execute("SELECT apikey.import('bc', 'dear', %s, 'bcrypt', lookup => 'cfk_abcd')",
                       (cheap[:4] + "15" + cheap[6:],))


# --- Rotations and toggles are bounded per owner --------------------------------------------------

def test_rotations_and_toggles_are_bounded_per_owner(connect):
    """One transaction cannot write a thousand key rows by rotating, nor flip a key a thousand
    times: rotations count as creations (5 an hour here), disable/enable ten times that; a
    disabled key cannot be rotated into an enabled successor."""
    o = owner()
    with connect() as su:
        holder = role(su)
        _, k = key(su, o)
        target, _ = key(su, o, "target")
    with connect() as su:
        su.execute(f"ALTER ROLE {holder} IN DATABASE {DB} SET apikey.creation_limit = 5")
    with connect(user=holder, autocommit=False) as h:
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        current = target
        for _ in range(5):
            current = h.execute("SELECT id FROM apikey.rotate(%s)", (current,)).fetchone()[0]
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="Too many API key creation"):
            h.execute("SELECT apikey.rotate(%s)", (current,))
        h.rollback()
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        flips = 0
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="Too many API key changes"):
            for i in range(100):
                h.execute("SELECT apikey.disable(%s)" if i % 2 == 0 else "SELECT apikey.enable(%s)", (target,))
                flips += 1
        assert flips == 50
        h.rollback()
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        h.execute("SELECT apikey.disable(%s)", (target,))
        h.commit()
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="disabled"):
            h.execute("SELECT apikey.rotate(%s)", (target,))
        h.rollback()


def test_charge_name_charges_the_application_key_of_a_pair_too(connect):
    """A two-key request's charge('expensive') spends the application key's own limit and its
    owner's as well as the user's, all or nothing."""
    limit = psycopg.types.json.Jsonb({"expensive": {"max": 1, "per": "1 hour"}})
    o = owner()
    with connect() as su:
        _, app = key(su, "app_" + o, "app", kind="app", limits=limit)
        _, user = key(su, o, "user")
    with connect(autocommit=False) as c:
        c.execute("SELECT apikey.authenticate(%s, %s)", (app, user))
        assert c.execute("SELECT apikey.charge('expensive')").fetchone()[0] is True
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match='API key "expensive"'):
            c.execute("SELECT apikey.charge('expensive')")
        c.rollback()


def slot_start(key_id, slots=1024):
    """Where the credits table starts probing for a key (credits_table::start_of)."""
    return ((key_id * 0x9E3779B97F4A7C15) % 2**64 >> 32) % slots


def test_a_balance_is_never_reloaded_from_an_old_snapshot(connect):
    """A REPEATABLE READ transaction opened before a key's credits were spent (and written by the
    worker) must not reload the balance it saw and spend it again once the key's shared-memory
    balance has been evicted."""
    o = owner()
    with connect() as su:
        victim, k = key(su, o, "victim", credits=10)
    with connect(autocommit=False) as old, connect() as su:
        old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT count(*) FROM pg_class")  # takes the transaction's snapshot
        su.execute("SELECT apikey.authenticate(%s, cost => 10)", (k,))
        deadline = time.time() + 10
        while su.execute("SELECT credits FROM apikey.keys WHERE id = %s", (victim,)).fetchone()[0] != 0:
            assert time.time() < deadline, "the worker never wrote the balance"
            time.sleep(0.1)
        time.sleep(0.5)  # the flush marks the slot clean after writing
        # Keys whose balances start probing where the victim's does take its (clean) slot.
        next_id = su.execute("SELECT last_value FROM apikey.keys_id_seq").fetchone()[0] + 1
        for _ in range(24):
            while slot_start(next_id) != slot_start(victim):
                next_id += 1
            su.execute("SELECT setval('apikey.keys_id_seq', %s, false)", (next_id,))
            _, other = key(su, o, "evictor", credits=1)
            su.execute("SELECT apikey.authenticate(%s, cost => 0)", (other,))
            next_id += 1
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="no credits left"):
            old.execute("SELECT apikey.authenticate(%s)", (k,))
        old.rollback()


# --- Found by the independent review ---------------------------------------------------------------

def test_a_rotated_key_stops_refilling_during_its_grace(connect):
    """Rotation moves the balance; the old key must not keep refilling beside its successor."""
    o = owner()
    with connect() as su:
        kid, k = key(su, o, credits=3, refill_amount=3, refill_interval="2 seconds")
        su.execute("SELECT apikey.authenticate(%s, cost => 3)", (k,))
        _, new = su.execute("SELECT id, api_key::text FROM apikey.rotate(%s, '1 hour')", (kid,)).fetchone()
        time.sleep(2.2)
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="no credits left"):
            su.execute("SELECT apikey.authenticate(%s)", (k,))
        assert su.execute("SELECT apikey.authenticate(%s, cost => 3)", (new,)).fetchone()[0] == o


def test_an_exhausted_key_is_refused_even_at_cost_zero(connect):
    """Only administrators may authenticate for free (cost 0), and not even they with a key that
    has nothing left: a holder at a SQL prompt cannot use a metered key without paying."""
    with connect() as su:
        holder = role(su)
        _, k = key(su, owner(), credits=2)
        su.execute("SELECT apikey.authenticate(%s)", (k,))
    with connect(user=holder) as h:
        for cost in (0, -1):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="at least 1"):
                h.execute("SELECT apikey.authenticate(%s, cost => %s)", (k, cost))
    with connect() as su:
        assert su.execute("SELECT apikey.authenticate(%s, cost => 0)", (k,)).fetchone()[0]
        su.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="no credits left"):
            su.execute("SELECT apikey.authenticate(%s, cost => 0)", (k,))


def test_an_owner_limit_set_after_a_snapshot_applies_in_it(connect):
    """A REPEATABLE READ transaction opened before an administrator sets an owner limit must
    not load (and keep, after its commit) the limits as they were."""
    o = owner()
    with connect() as su:
        _, k = key(su, o)
    with connect(autocommit=False) as c, connect() as admin:
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        c.execute("SELECT count(*) FROM pg_class")
        admin.execute("SELECT apikey.set_owner_limit(%s, 'requests', 2, '1 hour')", (o,))
        for _ in range(2):
            c.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="Owner"):
            c.execute("SELECT apikey.authenticate(%s)", (k,))
        c.rollback()


def test_a_revoked_administrator_stops_in_an_old_snapshot(connect):
    with connect() as su:
        bob = role(su, "adm")
        su.execute("SELECT apikey.grant_admin(%s)", (bob,))
    with connect(user=bob, autocommit=False) as b, connect() as su:
        b.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert b.execute("SELECT apikey.is_admin()").fetchone()[0] is True
        su.execute("SELECT apikey.revoke_admin(%s)", (bob,))
        assert b.execute("SELECT apikey.is_admin()").fetchone()[0] is False
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            b.execute("SELECT apikey.create('anyone', 'k')")
        b.rollback()


def test_a_refused_row_shows_no_digest(connect):
    """Metadata just over the limit as jsonb prints it is refused by pg_apikey (22023), and a
    row a table constraint refuses never shows its values (a digest) in DETAIL."""
    digest = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    # ~60 KB compact, over 64 KiB as jsonb text (which puts a space after every ':' and ',').
    meta = psycopg.types.json.Jsonb({f"k{i:05d}": 1 for i in range(6500)})
    with connect() as su:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 65536 bytes"):
            su.execute("SELECT apikey.import('o', 'n', %s, 'sha256', metadata => %s)", (digest, meta))
        # A constraint pg_apikey does not check first (as a future column might bring): its
        # DETAIL would list the row, digest included.
        su.execute("ALTER TABLE apikey.keys ADD CONSTRAINT no_forbidden CHECK (name <> 'forbidden')")
        try:
            with pytest.raises(psycopg.errors.CheckViolation) as e:
                su.execute("SELECT apikey.import('o', 'forbidden', %s, 'sha256')", (digest,))
            assert e.value.diag.message_detail == "a row was refused by a constraint of pg_apikey's tables"
        finally:
            su.execute("ALTER TABLE apikey.keys DROP CONSTRAINT no_forbidden")
    log = (ROOT / ".run/authority/server.log").read_text(errors="replace")
    assert digest not in log and digest[:16] not in log


def test_scopes_and_resources_are_bounded_and_rotation_obeys_creation_check(connect):
    o = owner()
    with connect() as su:
        holder = role(su)
        kid, k = key(su, o)
        su.execute("""CREATE OR REPLACE FUNCTION public.no_more(owner text) RETURNS void LANGUAGE plpgsql AS $$
                      BEGIN RAISE EXCEPTION 'no more keys for %', owner USING ERRCODE = '42501'; END $$""")
    with connect(user=holder, autocommit=False) as h:
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 64 scopes"):
            h.execute("SELECT apikey.create(%s, 'wide', scopes => %s)", (o, [f"s{i}" for i in range(65)]))
        h.rollback()
        h.execute("SELECT apikey.authenticate(%s)", (k,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="resource may be at most"):
            h.execute("SELECT apikey.create(%s, 'long', resource => %s)", (o, "r" * 201))
        h.rollback()
    with connect() as su:
        su.execute("SET apikey.creation_check = 'public.no_more(text)'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no more keys"):
            su.execute("SELECT apikey.rotate(%s)", (kid,))


# --- Limits belong to a key's lineage -------------------------------------------------------------

def test_a_rotation_hands_out_no_fresh_allowance(connect):
    """A key and its successors share the request limit and named limits of their lineage:
    rotating (with or without grace) starts no fresh bucket, and during the grace the old and
    the new key draw on the same one."""
    limit = psycopg.types.json.Jsonb({"expensive": {"max": 1, "per": "1 hour"}})
    with connect() as su:
        kid, old = key(su, owner(), rate_limit=3, rate_period="1 hour", limits=limit)
        su.execute("SELECT apikey.authenticate(%s)", (old,))
        su.execute("BEGIN")
        su.execute("SELECT apikey.authenticate(%s)", (old,))
        assert su.execute("SELECT apikey.charge('expensive')").fetchone()[0] is True
        su.execute("COMMIT")
        new_id, new = su.execute("SELECT id, api_key::text FROM apikey.rotate(%s, '1 hour')", (kid,)).fetchone()
        assert su.execute("SELECT lineage FROM apikey.keys WHERE id = %s", (new_id,)).fetchone()[0] == kid
        su.execute("SELECT apikey.authenticate(%s)", (new,))  # the third of three
        for k in (old, new):
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="API key rate limit"):
                su.execute("SELECT apikey.authenticate(%s)", (k,))
        newer_id, newer = su.execute("SELECT id, api_key::text FROM apikey.rotate(%s)", (new_id,)).fetchone()
        assert su.execute("SELECT lineage FROM apikey.keys WHERE id = %s", (newer_id,)).fetchone()[0] == kid
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="API key rate limit"):
            su.execute("SELECT apikey.authenticate(%s)", (newer,))


# --- Found by the second review -------------------------------------------------------------------

def test_a_restriction_is_not_shed_by_pairing_with_an_application_key(connect):
    o = owner()
    with connect() as su:
        holder = role(su)
        su.execute(f"ALTER ROLE {holder} IN DATABASE {DB} SET apikey.deny_scopes = 'reports:embargoed'")
        _, user = key(su, o, "u", scopes=["surveys:read", "reports:embargoed"])
        _, app = key(su, "app_" + o, "a", kind="app", scopes=["surveys:read"])
    with connect(user=holder, autocommit=False) as h:
        h.execute("SELECT apikey.authenticate(%s, %s)", (app, user))
        assert h.execute("SELECT apikey.has_permissions('surveys:read AND NOT reports:embargoed')"
                         ).fetchone()[0] is False
        assert "reports:embargoed" in h.execute("SELECT apikey.current_scopes()").fetchone()[0]
        child = h.execute("SELECT id FROM apikey.create(%s, 'shed', scopes => '{surveys:read}')",
                          (o,)).fetchone()[0]
        assert h.execute("SELECT scopes FROM apikey.key_list WHERE id = %s", (child,)).fetchone()[0] \
            == ["surveys:read", "reports:embargoed"]
        h.rollback()


def test_a_rotation_right_after_a_refill_gives_no_second_refill(connect):
    with connect() as su:
        kid, k = key(su, owner(), credits=3, refill_amount=3, refill_interval="2 seconds")
        time.sleep(2.2)  # a refill is due, and the table still holds the time before it
        su.execute("BEGIN")
        su.execute("SELECT apikey.authenticate(%s, cost => 3)", (k,))
        _, new = su.execute("SELECT id, api_key::text FROM apikey.rotate(%s)", (kid,)).fetchone()
        su.execute("COMMIT")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="no credits left"):
            su.execute("SELECT apikey.authenticate(%s)", (new,))


def test_an_error_inside_a_privileged_section_never_logs_the_statement(connect):
    """A lock timeout raised inside pg_apikey's own statements (here the creation quota's row,
    held by another session) is re-raised by pgrx without the marks that hide the statement: the
    statement, key included, must still stay out of the server log."""
    o = owner()
    with connect() as su:
        _, k = key(su, o)
    with connect(autocommit=False) as a, connect() as b:
        a.execute("SET apikey.creation_limit = 5")
        a.execute("SELECT apikey.create(%s, 'holds the quota row')", (o,))
        b.execute("SET apikey.creation_limit = 5")
        b.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.execute(f"SELECT apikey.authenticate('{k}'), (SELECT id FROM apikey.create('{o}', 'x'))")
        a.rollback()
    log = (ROOT / ".run/authority/server.log").read_text(errors="replace")
    assert k not in log


def test_a_key_with_an_absolute_expiry_rotates_into_one_that_expires(connect):
    with connect() as su:
        kid = su.execute("SELECT apikey.import(%s, 'legacy', %s, 'sha256', expires_at => now() + interval '1 day')",
                         (owner(), hashlib.sha256(uuid.uuid4().bytes).hexdigest())).fetchone()[0]
        new_id = su.execute("SELECT id FROM apikey.rotate(%s)", (kid,)).fetchone()[0]
        old_at, new_at = su.execute("SELECT (SELECT expires_at FROM apikey.keys WHERE id = %s), "
                                    "(SELECT expires_at FROM apikey.keys WHERE id = %s)", (kid, new_id)).fetchone()
        assert new_at is not None and new_at == old_at


def test_a_sql_creation_check_returning_void_works(connect):
    with connect() as su:
        su.execute("CREATE OR REPLACE FUNCTION public.sql_check(owner text) RETURNS void "
                   "LANGUAGE sql AS 'SELECT NULL::void'")
        su.execute("SET apikey.creation_check = 'public.sql_check(text)'")
        assert su.execute("SELECT count(*) FROM apikey.create(%s, 'ok')", (owner(),)).fetchone()[0] == 1


# --- Found by the third review --------------------------------------------------------------------

def test_a_rotation_that_does_not_commit_leaves_the_balance_where_it_was(connect):
    with connect() as su:
        kid, k = key(su, owner(), credits=100)
        su.execute("BEGIN")
        su.execute("SELECT apikey.rotate(%s)", (kid,))
        su.execute("ROLLBACK")
        assert su.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 100
        su.execute("BEGIN")
        su.execute("SAVEPOINT s")
        su.execute("SELECT apikey.rotate(%s)", (kid,))
        su.execute("ROLLBACK TO SAVEPOINT s")
        su.execute("COMMIT")
        assert su.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 100
        new_id = su.execute("SELECT id FROM apikey.rotate(%s)", (kid,)).fetchone()[0]
        assert su.execute("SELECT apikey.credits(%s)", (new_id,)).fetchone()[0] == 100


def test_a_rotation_successor_is_charged_in_the_transaction_that_made_it(connect):
    with connect() as su:
        kid, k = key(su, owner(), rate_limit=1, rate_period="1 hour")
        su.execute("SELECT apikey.authenticate(%s)", (k,))
        su.execute("BEGIN")
        _, new = su.execute("SELECT id, api_key::text FROM apikey.rotate(%s, '1 hour')", (kid,)).fetchone()
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            su.execute("SELECT apikey.authenticate(%s)", (new,))
        su.execute("ROLLBACK")


# --- Found by the fifth review --------------------------------------------------------------------

def test_a_key_row_locked_in_an_idle_transaction_does_not_stop_the_flush(connect):
    """A holder locks their own key row (a management call that changes nothing) and idles: the
    worker writes every other key's credits and usage meanwhile without waiting on it, the locked
    key's balance aside (apikey.held_balances, so a crash forgets no more than a flush), and into
    the key's row as soon as the lock goes."""
    o = owner()
    with connect() as su:
        holder = role(su)
        kid, k = key(su, o, "locked", credits=100)
        other_id, other = key(su, owner(), "other", credits=100)

    def table(c, key_id):
        return c.execute("SELECT credits, (SELECT sum(uses) FROM apikey.usage WHERE key_id = k.id) "
                         "FROM apikey.keys k WHERE id = %s", (key_id,)).fetchone()

    def wait_for(c, key_id, expected):
        deadline = time.time() + 10
        while table(c, key_id) != expected:
            assert time.time() < deadline, f"not flushed: {table(c, key_id)}"
            time.sleep(0.1)

    with connect(user=holder, autocommit=False) as h, connect() as su:
        h.execute("SELECT apikey.authenticate(%s, cost => 5)", (k,))
        assert h.execute("SELECT apikey.enable(%s)", (kid,)).fetchone()[0] is False  # row now locked
        # Spent again once the row is locked: a flush between the first two statements may have
        # written 95 into the still free row, which leaves nothing to write aside.
        h.execute("SELECT apikey.authenticate(%s, cost => 5)", (k,))
        su.execute("SELECT apikey.authenticate(%s, cost => 7)", (other,))
        wait_for(su, other_id, (93, 1))
        deadline = time.time() + 10
        while su.execute("SELECT credits FROM apikey.held_balances WHERE key_id = %s", (kid,)).fetchone() != (90,):
            assert time.time() < deadline, "the locked key's balance was not written aside"
            time.sleep(0.1)
        assert table(su, kid)[0] in (100, 95)
        assert su.execute("SELECT apikey.credits(%s)", (kid,)).fetchone()[0] == 90
        h.rollback()
        wait_for(su, kid, (90, 2))
        deadline = time.time() + 10
        while su.execute("SELECT count(*) FROM apikey.held_balances WHERE key_id = %s", (kid,)).fetchone()[0]:
            assert time.time() < deadline, "the held balance stayed after the row was written"
            time.sleep(0.1)


# --- Found by the sixth review --------------------------------------------------------------------

def test_keys_of_rolled_back_transactions_pin_no_slot(connect):
    """Credits spent and uses recorded for keys that never committed (or no longer exist) are
    settled by the next flush, not kept as pending forever: after 1,100 such keys (more than a
    partition holds), a new metered key still spends and nothing pending names a missing key."""
    o = owner()
    with connect(autocommit=False) as c:
        for i in range(1100):
            _, k = c.execute("SELECT id, api_key::text FROM apikey.create(%s, 'gone', credits => 10)",
                             (o,)).fetchone()
            c.execute("SELECT apikey.verify(%s)", (k,))  # a use recorded for a key that never commits
            c.rollback()
    time.sleep(1.0)  # a few flushes
    with connect() as su:
        dropped = su.execute("SELECT apikey.usage_dropped()").fetchone()[0]
        kid, k = key(su, owner(), "after", credits=5)
        assert su.execute("SELECT apikey.authenticate(%s)", (k,)).fetchone()[0]
        deadline = time.time() + 10
        while su.execute("SELECT credits, (SELECT sum(uses) FROM apikey.usage WHERE key_id = k.id) "
                         "FROM apikey.keys k WHERE id = %s", (kid,)).fetchone() != (4, 1):
            assert time.time() < deadline, "the new key's spending and use were not written"
            time.sleep(0.1)
        assert su.execute("SELECT apikey.usage_dropped()").fetchone()[0] == dropped


# --- Found by the seventh review ------------------------------------------------------------------

def test_credits_of_a_key_made_in_this_transaction_are_not_spent_before_it_commits(connect):
    """The worker cannot see a key row before its transaction commits, so spending from it
    could not be written (and would come back after a restart): refused, for a new key and for a
    rotation's successor alike, until the commit."""
    with connect(autocommit=False) as c:
        _, k = c.execute("SELECT id, api_key::text FROM apikey.create(%s, 'new', credits => 5)",
                         (owner(),)).fetchone()
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="commit first"):
            c.execute("SELECT apikey.authenticate(%s)", (k,))
        c.rollback()
        # Found by the eighth review: updating the new row (disable, enable) must not hide that
        # this transaction inserted it.
        nid, k = c.execute("SELECT id, api_key::text FROM apikey.create(%s, 'toggled', credits => 5)",
                           (owner(),)).fetchone()
        c.execute("SELECT apikey.disable(%s), apikey.enable(%s)", (nid, nid))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="commit first"):
            c.execute("SELECT apikey.authenticate(%s)", (k,))
        c.rollback()
        kid, k = c.execute("SELECT id, api_key::text FROM apikey.create(%s, 'old', credits => 5)",
                           (owner(),)).fetchone()
        c.commit()
        _, new = c.execute("SELECT id, api_key::text FROM apikey.rotate(%s)", (kid,)).fetchone()
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="commit first"):
            c.execute("SELECT apikey.authenticate(%s)", (new,))
        c.rollback()
        _, new = c.execute("SELECT id, api_key::text FROM apikey.rotate(%s)", (kid,)).fetchone()
        c.commit()
        assert c.execute("SELECT apikey.authenticate(%s)", (new,)).fetchone()[0]
        c.commit()
