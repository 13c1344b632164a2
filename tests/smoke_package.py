"""The release artifacts, after `packaging/build.sh package` (run by tests/run-all.sh after the
other suites, since installing the Debian package replaces the installed extension):
META.json agrees with the crate, the source archive holds exactly the tracked files, and the
Debian package installs with dpkg -i and works (CREATE EXTENSION, create, verify)."""

import json
import re
import subprocess
import tarfile

import psycopg
import pytest

from conftest import ROOT

PORT = "54358"
VERSION = re.search(r'^version = "(.*)"$', (ROOT / "Cargo.toml").read_text(), re.M).group(1)


def test_meta_json_names_the_crate_version():
    meta = json.loads((ROOT / "META.json").read_text())
    assert meta["version"] == VERSION
    assert meta["provides"]["pg_apikey"]["version"] == VERSION
    assert meta["meta-spec"]["version"] == "1.0.0"
    assert (ROOT / meta["provides"]["pg_apikey"]["file"]).exists()
    control = (ROOT / "pg_apikey.control").read_text()
    assert "default_version = '@CARGO_VERSION@'" in control


def test_the_source_archive_holds_exactly_the_tracked_files():
    out = subprocess.run(["bash", str(ROOT / "packaging/build.sh"), "dist"], check=True, capture_output=True,
                         text=True).stdout.strip()
    with tarfile.open(out) as t:
        names = {m.name[len(f"pg_apikey-{VERSION}/"):] for m in t.getmembers() if not m.isdir()}
    tracked = set(subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.split())
    assert names == tracked


def deb():
    found = sorted((ROOT / "dist").glob(f"postgresql-15-pg-apikey_{VERSION}_*.deb"))
    if not found:
        pytest.fail("no Debian package: run packaging/build.sh package first")
    return found[-1]


def test_the_debian_package_describes_itself():
    info = subprocess.run(["dpkg-deb", "-f", str(deb())], check=True, capture_output=True, text=True).stdout
    assert "Package: postgresql-15-pg-apikey" in info and f"Version: {VERSION}" in info
    assert "Depends: postgresql-15" in info
    files = subprocess.run(["dpkg-deb", "-c", str(deb())], check=True, capture_output=True, text=True).stdout
    for path in ["./usr/lib/postgresql/15/lib/pg_apikey.so",
                 "./usr/share/postgresql/15/extension/pg_apikey.control",
                 f"./usr/share/postgresql/15/extension/pg_apikey--{VERSION}.sql",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.1.0.sql",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.1.0--0.2.0.sql",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.2.0.sql",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.2.0--0.3.0.sql",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.3.0.sql",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.3.0--0.4.0.sql"]:
        assert path in files, path


def test_the_debian_package_installs_and_works():
    subprocess.run(["dpkg", "-i", str(deb())], check=True, capture_output=True)
    status = subprocess.run(["dpkg", "-s", "postgresql-15-pg-apikey"], check=True, capture_output=True,
                            text=True).stdout
    assert "Status: install ok installed" in status
    subprocess.run([str(ROOT / "tests/cluster.sh"), "start", "package", PORT], check=True)
    try:
        with psycopg.connect(f"host={ROOT / '.run/package'} port={PORT} user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_apikey")
            assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == VERSION
            kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('smoke', 'from the package')").fetchone()
            assert c.execute("SELECT id, name FROM apikey.verify(%s)", (key,)).fetchone() == (kid, "from the package")
            c.execute("DROP EXTENSION pg_apikey")
            c.execute("CREATE EXTENSION pg_apikey VERSION '0.1.0'")
            c.execute("ALTER EXTENSION pg_apikey UPDATE")
            assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == VERSION
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", "package"], check=False)
