"""Leak reports in SQL: apikey.report_leaked revokes every reported key that is stored here at
once (a bcrypt import not yet presented included), audits it as leaked with the source, answers
true/false positive per key, and never echoes a token."""

import hashlib
import secrets

import bcrypt
import psycopg
import pytest

from conftest import ROOT


def test_reported_keys_are_revoked_and_audited(db):
    with db() as c:
        c.execute("SET apikey.creation_limit = 0")
        kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('lena', 'leaky')").fetchone()
        imported = "cfk_" + secrets.token_hex(32)
        imp_id = c.execute("SELECT apikey.import('lena', 'old system', %s, 'bcrypt', lookup => %s)",
                           (bcrypt.hashpw(imported.encode(), bcrypt.gensalt(4)).decode(), imported[:12])).fetchone()[0]
        unknown = "cfk_" + secrets.token_hex(32)
        out = c.execute("SELECT token_hash, label FROM apikey.report_leaked(%s, 'pastebin')",
                        ([key, unknown, imported, "not a key"],)).fetchall()
        assert out == [(hashlib.sha256(k.encode()).hexdigest(), label) for k, label in
                       [(key, "true_positive"), (unknown, "false_positive"), (imported, "true_positive"),
                        ("not a key", "false_positive")]]
        for k in (key, imported):
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                c.execute("SELECT apikey.verify(%s)", (k,))
        for i in (kid, imp_id):
            action, detail = c.execute("SELECT action, detail FROM apikey.audit_log WHERE key_id = %s ORDER BY id DESC",
                                       (i,)).fetchone()
            assert action == "leaked" and detail == {"source": "pastebin", "url": None}
        # Reported again: still ours, still revoked.
        assert c.execute("SELECT label FROM apikey.report_leaked(%s)", ([key],)).fetchone()[0] == "true_positive"


def test_only_administrators_may_report(db):
    with db() as c:
        c.execute("CREATE ROLE leak_nobody LOGIN")
        key = c.execute("SELECT api_key::text FROM apikey.create('lena', 'safe')").fetchone()[0]
    with db(user="leak_nobody") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("SELECT * FROM apikey.report_leaked(%s, 'x')", ([key],))
        assert key not in str(e.value)
    with db() as c:
        c.execute("SELECT apikey.verify(%s)", (key,))
        c.execute("DROP ROLE leak_nobody")
