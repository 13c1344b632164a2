"""A pytest plugin (loaded by conftest.py) that keeps keys, digests and secrets out of the
report of a failing test.

pytest shows the values an assertion compared, a traceback's locals and whatever the test
printed or logged; a test that holds a key in a variable would print it. Every long run of
characters a key, a hex or base64 digest, a JWT segment or a seal can be made of is replaced
before the report is printed or stored, whichever test it comes from. A shorter run is no
secret of ours: the shortest key body any preset format has is 32 characters."""

import re

import pytest

SECRET_RUN = re.compile(r"[A-Za-z0-9_+/=-]{32,}")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return SECRET_RUN.sub(REDACTED, text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.longrepr is not None:
        # The rendered text replaces the structured report: nothing else keeps the values.
        report.longrepr = redact(str(report.longrepr))
    report.sections = [(title, redact(content)) for title, content in report.sections]
