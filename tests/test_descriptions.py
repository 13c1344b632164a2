"""The extension describes itself: every function, table, view, sequence and type it installs in
schema apikey has a COMMENT (what \\df+, \\d+ and pgAdmin show), and every apikey.* setting's
short_desc in pg_settings names its default and, for a setting with a unit, the unit."""

import re

# Members of the extension only: an object someone else put in the schema is not ours to
# describe. Row types of tables and views, and array types, come with their relation or element
# type and are described there.
UNDESCRIBED = """
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0) AS object,
       NOT EXISTS (SELECT 1 FROM pg_catalog.pg_description x
                    WHERE x.classoid = d.classid AND x.objoid = d.objid AND x.objsubid = 0) AS missing
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_apikey'
 WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
   AND d.deptype = 'e'
   AND (   (d.classid = 'pg_catalog.pg_proc'::regclass
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                         WHERE p.oid = d.objid AND p.pronamespace = 'apikey'::regnamespace))
        OR (d.classid = 'pg_catalog.pg_class'::regclass
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                         WHERE c.oid = d.objid AND c.relnamespace = 'apikey'::regnamespace
                           AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')))
        OR (d.classid = 'pg_catalog.pg_type'::regclass
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_type t
                         WHERE t.oid = d.objid AND t.typnamespace = 'apikey'::regnamespace
                           AND t.typtype IN ('b', 'c', 'd', 'e')
                           AND (t.typrelid = 0
                                OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')
                           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type a WHERE a.typarray = t.oid))))
 ORDER BY 1
"""

# How a short_desc may name a unit: the word, so that "Seconds …" and "… in kB" both read well.
UNIT_WORDS = {
    "ms": [r"(?i)\bmilliseconds?\b"],
    "s": [r"(?i)\bseconds?\b"],
    "min": [r"(?i)\bminutes?\b"],
    "h": [r"(?i)\bhours?\b"],
    "d": [r"(?i)\bdays?\b"],
    "B": [r"(?i)\bbytes?\b"],
    "kB": [r"\bkB\b", r"(?i)\bkilobytes?\b"],
    "MB": [r"\bMB\b", r"(?i)\bmegabytes?\b"],
}

# "(default 5000, 5s)", "(default on)", "(default -1: …)", "(default empty: none)".
DEFAULT = re.compile(r"\(default ([^\s,;:)]+)")


def test_every_object_of_the_extension_is_described(db):
    with db() as c:
        rows = c.execute(UNDESCRIBED).fetchall()
    checked = {obj for obj, _ in rows}
    # The query must see each kind of object, or an empty answer would prove nothing.
    for expected in ("function apikey.verify(apikey.api_key)", "table apikey.keys", "view apikey.key_list",
                     "sequence apikey.keys_id_seq", "type apikey.api_key", "type apikey.key_info"):
        assert expected in checked, f"{expected} was not checked"
    missing = [obj for obj, undescribed in rows if undescribed]
    assert missing == [], "no COMMENT on:\n" + "\n".join(missing)


def test_every_settings_short_desc_names_its_default_and_unit(db):
    with db() as c:
        assert "pg_apikey" in c.execute("SHOW shared_preload_libraries").fetchone()[0]
        rows = c.execute("SELECT name, short_desc, boot_val, unit FROM pg_catalog.pg_settings"
                         " WHERE name LIKE 'apikey.%' ORDER BY name").fetchall()
    assert rows, "no apikey.* setting in pg_settings"
    wrong = []
    for name, short_desc, boot_val, unit in rows:
        m = DEFAULT.search(short_desc or "")
        named = m.group(1) if m else None
        expected = ("empty",) if boot_val in (None, "") else (boot_val,)
        if named not in expected:
            wrong.append(f"{name}: short_desc names default {named!r}, boot_val is {boot_val!r}: {short_desc!r}")
        if unit and not any(re.search(w, short_desc or "") for w in UNIT_WORDS.get(unit, [re.escape(unit)])):
            wrong.append(f"{name}: short_desc does not name the unit {unit!r}: {short_desc!r}")
    assert wrong == [], "\n".join(wrong)
