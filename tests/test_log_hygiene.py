"""No key reaches the server log at any level, and failing key statements are not logged.

`log_min_error_statement` stays at its default (error): lowering it makes Postgres log the
statement beside every debug line, which is statement logging and documented as such."""

import psycopg
import pytest

from conftest import server_log


def test_no_key_in_the_log_even_at_debug5(db):
    conn = db()
    conn.execute("SET log_min_messages = debug5")
    conn.execute("SET client_min_messages = debug5")
    key_id, key = conn.execute("SELECT id, api_key::text FROM apikey.create('log', 'k', '30 days')").fetchone()
    conn.execute("SELECT apikey.verify(%s)", (key,))
    conn.execute("SELECT apikey.authenticate(%s)", (key,))
    conn.execute("SELECT apikey.revoke(%s)", (key_id,))
    for attempt in [f"SELECT apikey.verify('{key}')", f"SELECT apikey.verify('{key}x')", f"SELECT '{key.upper()}'::apikey.api_key"]:
        with pytest.raises(psycopg.Error):
            conn.execute(attempt)
    new_id, new_key = conn.execute("SELECT id, api_key::text FROM apikey.rotate(%s)", (db().execute(
        "SELECT id FROM apikey.create('log', 'k2')").fetchone()[0],)).fetchone()
    conn.execute("SELECT pg_sleep(0.3)")
    log = server_log()
    for secret in (key, new_key):
        assert secret[4:40] not in log
        assert secret[4:40].upper() not in log
