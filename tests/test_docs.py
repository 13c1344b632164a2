"""The SQL examples in README.md and docs/*.md are run, and the output they show is checked.

Format, in any page:

    ```sql
    SELECT name, status FROM apikey.key_list;
    ```
    ```output
        name     | status
    -------------+--------
     CI pipeline | active
    (1 row)
    ```

A ```sql block followed (blank lines allowed) by an ```output block shows what psql printed for
it. A ```sql block preceded by the line `<!-- not run -->` is left out: examples that need
PostgREST, a second session, a postgresql.conf change or placeholders. Every other ```sql block
of a page runs, in order, in one psql session (-X -q, errors do not stop it, stderr merged), as
the superuser, in a database created for that page with pg_apikey installed; so a page must
create what its examples use. Roles a page creates are dropped after it.

Both sides are normalized before comparing: trailing spaces and runs of spaces (psql pads and
centres columns to the widest value), the length of separator lines, and values that change on
every run (keys, masked keys, timestamps; see VOLATILE). A mismatch fails with a diff of the
normalized block, which never holds a key.
"""

import difflib
import os
import re
import subprocess
import uuid

import psycopg
import pytest

from conftest import HAS_PGCRYPTO, PG_MAJOR, PGBIN, ROOT

PORT = "54357"
CLUSTER = "docs"
# Each page gets a database created for it after the server started, with no pg_apikey setting:
# its worker (started by the launcher) serves credits, usage and events as in any database.
DB = "docs"
NOT_RUN = "<!-- not run -->"
# The client of the server's major: another psql version formats some output differently.
PSQL = os.path.join(PGBIN, "psql")

# Values that differ on every run, replaced by a placeholder on both sides.
VOLATILE = [
    # Whole keys, format by format: drawn at random.
    (re.compile(r"\bcfk_[0-9a-f]{64}\b"), "<key>"),
    (re.compile(r"\bct_(?:live|test)_[0-9A-Za-z]{43}\b"), "<key>"),
    (re.compile(r"\bpak_[0-9A-Za-z]{49}\b"), "<key>"),
    (re.compile(r"(?<![0-9A-Za-z_])[0-9A-Za-z]{43}(?![0-9A-Za-z_])"), "<key>"),  # cft
    # A masked key (key_list): prefix, the first and last four random characters.
    (re.compile(r"\b(?:[a-z][a-z0-9]*_)*[0-9A-Za-z]{4}…[0-9A-Za-z]{4}"), "<masked key>"),
    # Timestamps: creation, expiry, last use, audit times.
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[+-]\d{2}(?::\d{2})?)?"),
     "<timestamp>"),
]
SEPARATOR = re.compile(r"^[-+]+$")


def pages():
    found = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    return [p for p in found if any(b["lang"] == "output" for b in parse(p.read_text()))]


def parse(text):
    """The page's fenced blocks in order: line (1-based, of the opening fence), lang, body, end
    (0-based index of the closing fence) and skip (the last non-blank line before is NOT_RUN)."""
    blocks, lines, i, last = [], text.splitlines(), 0, ""
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            last = lines[i].strip() or last
            i += 1
            continue
        start, lang, body = i + 1, m.group(1), []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        blocks.append(dict(line=start, lang=lang, body="\n".join(body), skip=last == NOT_RUN, end=i))
        last = "```"
        i += 1
    return blocks


def examples(text):
    """(line, sql, expected output or None, run?) for each ```sql block."""
    blocks, lines, out = parse(text), text.splitlines(), []
    for n, b in enumerate(blocks):
        if b["lang"] == "output":
            prev = blocks[n - 1] if n else None
            gap = lines[prev["end"] + 1:b["line"] - 1] if prev else []
            if not prev or prev["lang"] != "sql" or any(l.strip() for l in gap):
                out.append((b["line"], None, "orphan", False))
            continue
        if b["lang"] != "sql":
            continue
        nxt = blocks[n + 1] if n + 1 < len(blocks) else None
        expected = None
        if nxt and nxt["lang"] == "output" and not any(l.strip() for l in lines[b["end"] + 1:nxt["line"] - 1]):
            expected = nxt["body"]
        out.append((b["line"], b["body"], expected, not b["skip"]))
    return out


def normalize(text):
    result = []
    for line in text.splitlines():
        for pattern, placeholder in VOLATILE:
            line = pattern.sub(placeholder, line)
        line = re.sub(r" +", " ", line.rstrip())
        if SEPARATOR.match(line):
            line = re.sub(r"-+", "-", line)
        result.append(line)
    while result and not result[0]:
        result.pop(0)
    while result and not result[-1]:
        result.pop()
    return result


@pytest.fixture(scope="module")
def cluster():
    # Nothing in postgresql.conf but shared_preload_libraries (cluster.sh): every page runs as
    # a new user's first database would.
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", CLUSTER, PORT], check=True)
    try:
        yield ROOT / ".run" / CLUSTER
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", CLUSTER], check=False)


def admin(cluster):
    return psycopg.connect(f"host={cluster} port={PORT} user=postgres dbname=postgres", autocommit=True)


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_print_what_the_page_shows(cluster, page):
    found = examples(page.read_text())
    orphans = [line for line, sql, _, _ in found if sql is None]
    if orphans:
        pytest.fail(f"{page.name}: ```output blocks not right after a ```sql block, lines {orphans}", pytrace=False)
    runnable = [(line, sql, expected) for line, sql, expected, run in found if run]
    if not HAS_PGCRYPTO and any("pgcrypto" in sql for _, sql, _ in runnable):
        pytest.skip(f"{page.name} uses pgcrypto, which PostgreSQL {PG_MAJOR} here lacks")

    with admin(cluster) as c:
        roles = {r for (r,) in c.execute("SELECT rolname FROM pg_roles")}
        c.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{DB}"')
    with psycopg.connect(f"host={cluster} port={PORT} user=postgres dbname={DB}", autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_apikey")

    marker = f"@@docs-{uuid.uuid4().hex}@@"
    script = "".join(f"\\echo {marker}\n{sql}\n" for _, sql, _ in runnable) + f"\\echo {marker}\n"
    env = dict(os.environ, PGTZ="UTC", PGCLIENTENCODING="UTF8", PGDATESTYLE="ISO, MDY",
               PGHOST=str(cluster), PGPORT=PORT, PGUSER="postgres", PGDATABASE=DB)
    try:
        run = subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=0", "-P", "pager=off"],
                             input=script, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=ROOT, env=env, timeout=120)
    finally:
        with admin(cluster) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            for (role,) in c.execute("SELECT rolname FROM pg_roles").fetchall():
                if role not in roles:
                    c.execute(f'DROP ROLE "{role}"')

    # Failure messages are built from normalized text only, and pytest.fail keeps pytest from
    # printing the raw output (which holds keys) as assertion context.
    parts = run.stdout.split(marker + "\n")
    # parts[0] precedes the first marker; parts[k] is the output of the k-th block.
    if run.returncode != 0 or len(parts) != len(runnable) + 2:
        pytest.fail(f"{page.name}: psql exited with {run.returncode} after {len(parts) - 1} of "
                    f"{len(runnable)} blocks:\n" + "\n".join(normalize(run.stdout)[-20:]), pytrace=False)

    failures = []
    for (line, _, expected), actual in zip(runnable, parts[1:]):
        if expected is None:
            continue
        want, got = normalize(expected), normalize(actual)
        if want != got:
            diff = difflib.unified_diff(want, got, f"{page.name}:{line} (shown)", "psql printed", lineterm="")
            failures.append("\n".join(diff))
    if failures:
        pytest.fail(f"{len(failures)} example(s) in {page.name} print something else:\n\n"
                    + "\n\n".join(failures), pytrace=False)
