"""docs/settings.md lists every apikey.* setting, and only those, with the default, context and
unit the server reports. The cluster preloads the library: the postmaster settings
(apikey.max_databases, apikey.shared_key_cache_size) exist only then."""

import re

from conftest import ROOT

PAGE = ROOT / "docs" / "settings.md"
HEADER = ["setting", "default", "context", "unit", "what it does"]


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def documented():
    """{name: (default, context, unit)} from the page's table of settings. A default is the first
    `code` of its cell, '' written as `''`; an empty unit cell means no unit."""
    lines = PAGE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and cells(line) == HEADER)
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        name, default, context, unit = cells(line)[:4]
        name = re.fullmatch(r"`(apikey\.[a-z0-9_]+)`", name)
        value = re.match(r"`([^`]*)`", default)
        assert name and value, f"settings.md: cannot read the row {line!r}"
        assert name.group(1) not in rows, f"settings.md lists {name.group(1)} twice"
        rows[name.group(1)] = ("" if value.group(1) == "''" else value.group(1), context, unit or None)
    return rows


def test_the_settings_page_matches_pg_settings(db):
    doc = documented()
    with db() as c:
        assert "pg_apikey" in c.execute("SHOW shared_preload_libraries").fetchone()[0]
        server = {name: (boot_val or "", context, unit) for name, boot_val, context, unit in c.execute(
            "SELECT name, boot_val, context, unit FROM pg_catalog.pg_settings WHERE name LIKE 'apikey.%'")}
        # pg_settings leaves out GUC_NO_SHOW_ALL settings (apikey.encryption_key): such a row
        # must name a real one, whose value (this cluster sets none of them) is its default.
        hidden = {}
        for name in doc.keys() - server.keys():
            flags, value = c.execute("SELECT pg_catalog.pg_settings_get_flags(%s), pg_catalog.current_setting(%s, true)",
                                     (name, name)).fetchone()
            if flags is not None and "NO_SHOW_ALL" in flags:
                hidden[name] = value
    assert {"apikey.max_databases", "apikey.shared_key_cache_size"} <= server.keys()

    undocumented = sorted(server.keys() - doc.keys())
    assert undocumented == [], f"settings.md does not list {undocumented}"
    unknown = sorted(doc.keys() - server.keys() - hidden.keys())
    assert unknown == [], f"settings.md lists settings the server does not have: {unknown}"

    differ = [f"{name}: settings.md says (default, context, unit) = {doc[name]}, pg_settings {server[name]}"
              for name in sorted(server) if doc[name] != server[name]]
    differ += [f"{name}: settings.md says default {doc[name][0]!r}, the server {value!r}"
               for name, value in sorted(hidden.items()) if doc[name][0] != value]
    assert differ == [], "\n".join(differ)
