"""IP allow-lists: a key with allowed_ips is refused from any other address with 42501 before
anything is charged; the address is the connection's peer, or the X-Forwarded-For header only
when the peer is a trusted proxy; keys minted by keys stay within the caller's list."""

import psycopg
import pytest

from conftest import PORT


def tcp(dbname, user="postgres", autocommit=True):
    return psycopg.connect(f"host=127.0.0.1 port={PORT} user={user} dbname={dbname}", autocommit=autocommit)


def test_the_peer_address_decides_before_anything_is_charged(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    kid, far = su.execute("""SELECT id, api_key::text FROM apikey.create('ip', 'far', allowed_ips => '{10.0.0.0/8}',
                             rate_limit => 1, rate_period => '1 hour')""").fetchone()
    _, near = su.execute("SELECT id, api_key::text FROM apikey.create('ip', 'near', allowed_ips => '{127.0.0.0/8,::1/128}')").fetchone()
    with tcp(db.name) as c:
        assert c.execute("SELECT apikey.authenticate(%s)", (near,)).fetchone()[0] == "ip"
        for _ in range(3):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not allowed from this address"):
                c.execute("SELECT apikey.authenticate(%s)", (far,))
    # Nothing was charged: the limit of 1/hour is untouched.
    assert su.execute("SELECT count(*) FROM apikey.rate_limit_state WHERE bucket = %s", (f"key:{kid}",)).fetchone()[0] == 0
    # A Unix-socket connection has no address: an allow-list refuses it.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        su.execute("SELECT apikey.verify(%s)", (near,))
    listed = su.execute("SELECT allowed_ips::text FROM apikey.key_list WHERE name = 'far'").fetchone()[0]
    assert listed == "{10.0.0.0/8}"
    assert sqlstate_of(su, "SELECT apikey.create('ip', 'bad', allowed_ips => '{10.0.0.1/8}')") == "22023"


def sqlstate_of(conn, sql):
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        return e.sqlstate
    return None


def test_a_forwarding_header_counts_only_from_a_trusted_peer(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    _, k = su.execute("SELECT id, api_key::text FROM apikey.create('ip', 'k', allowed_ips => '{10.9.9.9/32}')").fetchone()
    with tcp(db.name, autocommit=False) as c:
        # Untrusted peer (no apikey.trusted_proxies): a forged header is ignored.
        c.execute("""SELECT set_config('request.headers', '{"x-forwarded-for": "10.9.9.9"}', true)""")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT apikey.verify(%s)", (k,))
        c.rollback()
        # The peer (127.0.0.1) trusted: the header's last address is the client.
        c.execute("SET apikey.trusted_proxies = '127.0.0.1/32'")
        c.execute("""SELECT set_config('request.headers', '{"x-forwarded-for": "1.2.3.4, 10.9.9.9"}', true)""")
        assert c.execute("SELECT (apikey.verify(%s)).owner", (k,)).fetchone()[0] == "ip"
        c.rollback()


def test_keys_minted_by_a_key_stay_within_its_list(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    _, k = su.execute("SELECT id, api_key::text FROM apikey.create('ip', 'k', allowed_ips => '{127.0.0.0/8}')").fetchone()
    holder = su.execute("SELECT 'ip_' || substr(md5(random()::text), 1, 8)").fetchone()[0]
    su.execute(f"CREATE ROLE {holder} LOGIN")
    with tcp(db.name, user=holder, autocommit=False) as c:
        c.execute("SELECT apikey.authenticate(%s)", (k,))
        new_id = c.execute("SELECT id FROM apikey.create('ip', 'child')").fetchone()[0]
        assert c.execute("SELECT allowed_ips::text FROM apikey.key_list WHERE id = %s", (new_id,)).fetchone()[0] == "{127.0.0.0/8}"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="allow-list"):
            c.execute("SELECT apikey.create('ip', 'wider', allowed_ips => '{0.0.0.0/0}')")
        c.rollback()


def test_both_keys_of_a_pair_must_admit_the_address(db):
    su = db()
    su.execute("SET apikey.creation_limit = 0")
    _, app = su.execute("SELECT id, api_key::text FROM apikey.create('farm', 'app', kind => 'app', "
                        "allowed_ips => '{10.0.0.0/8}')").fetchone()
    _, user = su.execute("SELECT id, api_key::text FROM apikey.create('jo', 'user')").fetchone()
    _, app_here = su.execute("SELECT id, api_key::text FROM apikey.create('farm', 'app2', kind => 'app', "
                             "allowed_ips => '{127.0.0.0/8}')").fetchone()
    with tcp(db.name) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not allowed from this address"):
            c.execute("SELECT apikey.authenticate(%s, %s)", (app, user))
        assert c.execute("SELECT apikey.authenticate(%s, %s)", (app_here, user)).fetchone()[0] == "jo"
