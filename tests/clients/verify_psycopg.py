"""Verify an API key from Python with psycopg. The key is a bind parameter ($1), never part of the
statement text, so neither the server log nor pg_stat_statements can show it.

Connects with the usual libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE); reads the key from
API_KEY. Prints the key's record as JSON, or the refusal (SQLSTATE and message) and exits 1."""

import json
import os
import sys

import psycopg

with psycopg.connect() as conn, psycopg.RawCursor(conn) as cur:
    try:
        cur.execute("SELECT * FROM apikey.verify($1)", [os.environ["API_KEY"]])
    except psycopg.Error as e:
        print(json.dumps({"sqlstate": e.sqlstate, "message": e.diag.message_primary}))
        sys.exit(1)
    names = [d.name for d in cur.description]
    print(json.dumps(dict(zip(names, cur.fetchone())), default=str))
