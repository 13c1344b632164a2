"""The report of a failing test shows no key: assertion values, locals, captured output."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

FAILING = '''
import logging

def test_compares_a_key():
    key = {key!r}
    print("printed:", key)
    logging.getLogger("t").warning("logged: %s", key)
    assert key == "cfk_" + "0" * 64

def test_raises_with_a_digest():
    raise ValueError("digest " + {digest!r})
'''


def test_a_failing_tests_report_shows_no_key_or_digest(tmp_path):
    key = "cfk_" + secrets.token_hex(32)
    digest = secrets.token_hex(32)
    test_file = tmp_path / "test_leaky.py"
    test_file.write_text(FAILING.format(key=key, digest=digest))
    env = dict(os.environ, PYTHONPATH=str(HERE))
    for extra in ([], ["-l", "-vv", "--tb=long"]):
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "secret_redaction", "-p", "no:cacheprovider",
             "-rA", *extra, str(test_file)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        out = run.stdout + run.stderr
        assert run.returncode == 1, "the inner tests must fail"
        assert "2 failed" in out
        assert "[redacted]" in out
        # Booleans, not the strings: a failure here must not print what it looked for.
        assert (key in out, key[4:] in out, digest in out) == (False, False, False)
