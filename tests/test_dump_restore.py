"""pg_dump keeps the keys (as digests), their audit history and admin-added formats; a restored
database verifies its old keys; the dump never contains a plaintext key."""

import subprocess

import psycopg

from conftest import PGBIN, PORT, cluster_dir, dsn



def run_as_postgres(*cmd, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, text=True, **kw)


def test_dump_and_restore_keeps_keys_working(db, tmp_path):
    conn = db()
    conn.execute("SELECT apikey.add_format('acme', 'acme_', 'base62', 40, 'crc32')")
    keys = {}
    for fmt in ["cfk", "ct_live", "cft", "pak", "acme"]:
        keys[fmt] = conn.execute(
            "SELECT api_key::text FROM apikey.create('dump-owner', %s, format => %s, scopes => '{surveys:read}')",
            (fmt, fmt),
        ).fetchone()[0]
    revoked_id, revoked = conn.execute("SELECT id, api_key::text FROM apikey.create('dump-owner2', 'gone')").fetchone()
    conn.execute("SELECT apikey.revoke(%s)", (revoked_id,))
    max_id = conn.execute("SELECT max(id) FROM apikey.keys").fetchone()[0]

    host = str(cluster_dir())
    dump = run_as_postgres(f"{PGBIN}/pg_dump", "-h", host, "-p", str(PORT), "-U", "postgres", db.name).stdout
    for key in [*keys.values(), revoked]:
        assert key[-40:] not in dump

    target = db.name + "_r"
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{target}"')
    try:
        restore = subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{PGBIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
             "-h", host, "-p", str(PORT), "-U", "postgres", "-d", target],
            input=dump, capture_output=True, text=True,
        )
        assert restore.returncode == 0, restore.stderr
        assert "ERROR" not in restore.stderr
        with psycopg.connect(dsn(target), autocommit=True) as r:
            for fmt, key in keys.items():
                row = r.execute("SELECT owner, name, scopes FROM apikey.verify(%s)", (key,)).fetchone()
                assert row == ("dump-owner", fmt, ["surveys:read"])
            try:
                r.execute("SELECT apikey.verify(%s)", (revoked,))
                raise AssertionError("revoked key verified after restore")
            except psycopg.errors.InvalidAuthorizationSpecification:
                pass
            formats = r.execute("SELECT count(*), count(*) FILTER (WHERE name = 'acme') FROM apikey.formats").fetchone()
            assert formats == (6, 1)
            actions = r.execute("SELECT count(*) FROM apikey.audit_log").fetchone()[0]
            assert actions == 7
            new_id = r.execute("SELECT id FROM apikey.create('dump-owner3', 'after restore')").fetchone()[0]
            assert new_id > max_id
    finally:
        with psycopg.connect(dsn("postgres"), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
