"""The release artifacts, after `packaging/build.sh package` for each tested major (run by
tests/run-all.sh after the other suites, since installing the Debian package replaces the
installed extension): META.json agrees with the crate and with the PGXN META spec, the source
archive holds exactly the tracked files, and every install path works on a real cluster
(CREATE EXTENSION, create, verify): the .deb with dpkg -i (15) and unpacked into a scratch root
(17), the .rpm with rpm --root into a scratch root (18, whose server has the RPM repositories'
layout), the tarball's install.sh into scratch copies of the 16 and 18 servers."""

import json
import os
import re
import shutil
import subprocess
import tarfile
import time

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
                 "./usr/share/doc/postgresql-15-pg-apikey/copyright",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.4.0.sql",
                 "./usr/share/postgresql/15/extension/pg_apikey--0.4.0--0.5.0.sql",
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


# --- PGXN -------------------------------------------------------------------------------------
# The PGXN Meta Spec 1.0.0 (https://pgxn.org/spec/): required keys, their shapes, the licence
# names and release statuses it allows, and the version syntax (Semantic Versions 1.0.0).
SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+)?$")
LICENSES = {"agpl_3", "apache_1_1", "apache_2_0", "artistic_1", "artistic_2", "bsd", "freebsd",
            "gfdl_1_2", "gfdl_1_3", "gpl_1", "gpl_2", "gpl_3", "lgpl_2_1", "lgpl_3_0", "mit",
            "mozilla_1_0", "mozilla_1_1", "openssl", "perl_5", "postgresql", "qpl_1_0", "ssleay",
            "sun", "zlib", "open_source", "restricted", "unrestricted", "unknown"}
PHASES = {"configure", "build", "test", "runtime", "develop"}
RELATIONS = {"requires", "recommends", "suggests", "conflicts"}
VERSION_RANGE = re.compile(r"^\s*(?:(?:[<>]=?|==|!=)\s*)?(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)){2}"
                           r"(?:\s*,\s*(?:[<>]=?|==|!=)\s*(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)){2})*\s*$|^0$")


def pgxn_problems(meta: dict, root) -> list:
    problems = []
    for key in ["name", "version", "abstract", "maintainer", "license", "provides", "meta-spec"]:
        if key not in meta:
            problems.append(f"missing {key}")
    if not re.fullmatch(r"[^/\\\s:]{2,}", meta.get("name", "")):
        problems.append("name")
    if not SEMVER.match(meta.get("version", "")):
        problems.append("version is not a semantic version")
    if meta.get("meta-spec", {}).get("version") != "1.0.0" or "url" not in meta.get("meta-spec", {}):
        problems.append("meta-spec needs version 1.0.0 and url")
    maintainer = meta.get("maintainer")
    if not (isinstance(maintainer, str) or (isinstance(maintainer, list) and maintainer)):
        problems.append("maintainer")
    license = meta.get("license")
    names = [license] if isinstance(license, str) else list(license) if isinstance(license, (list, dict)) else []
    if not names or (not isinstance(license, dict) and any(n not in LICENSES for n in names)):
        problems.append("license")
    for ext, p in meta.get("provides", {}).items():
        if "file" not in p or "version" not in p or not SEMVER.match(p["version"]):
            problems.append(f"provides.{ext} needs file and a semantic version")
        elif not (root / p["file"]).exists():
            problems.append(f"provides.{ext}.file does not exist")
        if "docfile" in p and not (root / p["docfile"]).exists():
            problems.append(f"provides.{ext}.docfile does not exist")
    for phase, relations in meta.get("prereqs", {}).items():
        if phase not in PHASES or not set(relations) <= RELATIONS:
            problems.append(f"prereqs.{phase}")
        for rel in relations.values():
            for name, rng in rel.items():
                if not VERSION_RANGE.match(str(rng)):
                    problems.append(f"prereqs {name}: {rng!r} is not a version range")
    if meta.get("release_status", "stable") not in {"stable", "testing", "unstable"}:
        problems.append("release_status")
    if not isinstance(meta.get("tags", []), list):
        problems.append("tags")
    allowed = {"name", "version", "abstract", "maintainer", "license", "provides", "meta-spec",
               "description", "generated_by", "tags", "no_index", "prereqs", "release_status",
               "resources"}
    problems += [f"unknown key {k}" for k in meta if k not in allowed and not k.startswith("x_")]
    return problems


def test_the_source_archive_is_a_valid_pgxn_distribution(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "packaging/build.sh"), "dist"], check=True, capture_output=True,
                         text=True).stdout.strip()
    subprocess.run(["tar", "-xzf", out, "-C", str(tmp_path)], check=True)
    root = tmp_path / f"pg_apikey-{VERSION}"
    meta = json.loads((root / "META.json").read_text())
    assert pgxn_problems(meta, root) == []
    # PGXN's client runs `make` and `make install` with PG_CONFIG: `make` alone must not set up a
    # machine (the first target only explains).
    dry = subprocess.run(["make", "-n"], cwd=root, check=True, capture_output=True, text=True).stdout
    assert "setup.sh" not in dry and "apt-get" not in dry
    # It claims exactly the majors the suite tests (tests/run-all.sh's list).
    listed = re.search(r'MAJORS=\$\{PG_MAJORS:-"([0-9 ]+)"\}', (ROOT / "tests/run-all.sh").read_text()).group(1)
    tested = sorted(int(m) for m in listed.split())
    assert meta["prereqs"]["runtime"]["requires"]["PostgreSQL"] == f">= {tested[0]}.0.0, < {tested[-1] + 1}.0.0"


def test_the_validator_catches_what_pgxn_refuses():
    good = json.loads((ROOT / "META.json").read_text())
    assert pgxn_problems(good, ROOT) == []
    for broken in [dict(good, version="0.5"), dict(good, license="PostgreSQL Licence"),
                   {k: v for k, v in good.items() if k != "abstract"},
                   dict(good, provides={"pg_apikey": {"file": "nope.sql", "version": VERSION}})]:
        assert pgxn_problems(broken, ROOT) != []


# --- installing into scratch copies of real servers ----------------------------------------------
SCRATCH = ROOT / ".run" / "install-paths"
SCRATCH_PORT = 54377


def artifact(pattern):
    found = sorted((ROOT / "dist").glob(pattern))
    if not found:
        pytest.fail(f"no {pattern} in dist/: run packaging/build.sh package for that major first")
    return found[-1]


def copy_server(src, dest):
    """A copy of a PostgreSQL installation: PostgreSQL finds its lib and share directories
    relative to its programs, so the copy is a server of its own."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, symlinks=True)


def create_and_verify(bindir):
    """initdb + start a cluster with the server in `bindir`, then CREATE EXTENSION, create, verify."""
    data = SCRATCH / "data"
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run(["chown", "-R", "postgres:", str(SCRATCH)], check=True)
    as_pg = ["runuser", "-u", "postgres", "--", "env", "RUST_BACKTRACE=0"]
    subprocess.run(as_pg + [f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {SCRATCH_PORT}\nlisten_addresses = ''\nunix_socket_directories = '{SCRATCH}'\n"
                   "shared_preload_libraries = 'pg_apikey'\n")
    subprocess.run(as_pg + [f"{bindir}/pg_ctl", "-D", str(data), "-l", str(SCRATCH / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        with psycopg.connect(f"host={SCRATCH} port={SCRATCH_PORT} user=postgres dbname=postgres",
                             autocommit=True) as c:
            libdir = c.execute("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'").fetchone()[0]
            c.execute("CREATE EXTENSION pg_apikey")
            assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_apikey'").fetchone()[0] == VERSION
            kid, key = c.execute("SELECT id, api_key::text FROM apikey.create('smoke', 'installed')").fetchone()
            assert c.execute("SELECT id, name FROM apikey.verify(%s)", (key,)).fetchone() == (kid, "installed")
            return libdir
    finally:
        subprocess.run(as_pg + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                       check=False, capture_output=True)


@pytest.fixture
def scratch():
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    os.chmod(SCRATCH, 0o755)
    yield SCRATCH
    shutil.rmtree(SCRATCH, ignore_errors=True)


def majors():
    return os.environ.get("PG_MAJORS", "15 16 17 18").split()


@pytest.mark.skipif("18" not in majors(), reason="PostgreSQL 18 is not tested in this run")
def test_the_rpm_installs_with_rpm_root_and_works(scratch):
    rpm = artifact(f"pg_apikey_18-{VERSION}-*.rpm")
    info = subprocess.run(["rpm", "-qip", str(rpm)], check=True, capture_output=True, text=True).stdout
    assert "License     : PostgreSQL" in info
    assert "postgresql18-server" in subprocess.run(["rpm", "-qp", "--requires", str(rpm)], check=True,
                                                   capture_output=True, text=True).stdout
    root = scratch / "root"
    # The RPM repositories' server lives in /usr/pgsql-18 (lib, share/extension): a copy of the
    # 18 server here has that layout; rpm installs into it, and only the rpm's files are there.
    copy_server("/usr/local/pgsql-18", root / "usr/pgsql-18")
    for f in (root / "usr/pgsql-18").rglob("pg_apikey*"):
        f.unlink()
    subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--nodeps", "--nosignature",
                    "-i", str(rpm)], check=True, capture_output=True)
    listed = subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-ql", "pg_apikey_18"],
                            check=True, capture_output=True, text=True).stdout
    assert "/usr/pgsql-18/lib/pg_apikey.so" in listed and "/usr/share/licenses/pg_apikey_18/LICENSE" in listed
    assert create_and_verify(root / "usr/pgsql-18/bin") == str(root / "usr/pgsql-18/lib")


@pytest.mark.parametrize("major,server", [("16", "/usr/local/pgsql-16"), ("18", "/usr/local/pgsql-18")])
def test_the_tarball_installs_into_a_server_with_its_install_sh(scratch, major, server):
    if major not in majors():
        pytest.skip(f"PostgreSQL {major} is not tested in this run")
    prefix = scratch / "server"
    copy_server(server, prefix)
    for f in prefix.rglob("pg_apikey*"):
        f.unlink()
    subprocess.run(["tar", "-xzf", str(artifact(f"pg_apikey-{VERSION}-pg{major}.tar.gz")), "-C", str(scratch)],
                   check=True)
    unpacked = scratch / f"pg_apikey-{VERSION}-pg{major}"
    assert (unpacked / "LICENSE").exists()
    out = subprocess.run([str(unpacked / "install.sh")], env=dict(os.environ, PG_CONFIG=str(prefix / "bin/pg_config")),
                         check=True, capture_output=True, text=True).stdout
    assert str(prefix) in out
    assert create_and_verify(prefix / "bin").startswith(str(prefix))
    # Root's files, writable by nobody else, whoever built the archive; and a checksum beside it.
    listing = subprocess.run(["tar", "-tvzf", str(artifact(f"pg_apikey-{VERSION}-pg{major}.tar.gz"))],
                             check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(" root/root " in line or " 0/0 " in line for line in listing), listing[:3]
    assert all(line[5] != "w" and line[8] != "w" for line in listing), listing[:3]
    assert (ROOT / "dist" / f"pg_apikey-{VERSION}-pg{major}.tar.gz.sha256").exists()
    # A planted symlink (a root-only file installed world-readable) is refused. (The cluster
    # above made the scratch tree postgres's: the archive's files are root's again first.)
    subprocess.run(["chown", "-R", "root:root", str(unpacked)], check=True)
    planted = unpacked / "extension" / "pg_apikey--9.9.9.sql"
    planted.symlink_to("/etc/shadow")
    refused = subprocess.run([str(unpacked / "install.sh")], env=dict(os.environ, PG_CONFIG=str(prefix / "bin/pg_config")),
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "not a regular file" in refused.stderr
    assert not list(prefix.rglob("pg_apikey--9.9.9.sql"))
    planted.unlink()
    # Built for one major, it refuses another.
    other = "/usr/lib/postgresql/15/bin/pg_config"
    refused = subprocess.run([str(unpacked / "install.sh")], env=dict(os.environ, PG_CONFIG=other),
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "built for PostgreSQL" in refused.stderr


@pytest.mark.skipif("17" not in majors(), reason="PostgreSQL 17 is not tested in this run")
def test_the_debian_package_for_17_has_debians_layout_and_works(scratch):
    deb17 = artifact(f"postgresql-17-pg-apikey_{VERSION}_*.deb")
    info = subprocess.run(["dpkg-deb", "-f", str(deb17)], check=True, capture_output=True, text=True).stdout
    assert "Depends: postgresql-17" in info
    root = scratch / "root"
    # Debian's 17 (as .ci/pg17.sh unpacked it) under a scratch root, in Debian's own layout.
    copy_server("/usr/local/pgsql-17/lib/postgresql/17", root / "usr/lib/postgresql/17")
    copy_server("/usr/local/pgsql-17/share/postgresql/17", root / "usr/share/postgresql/17")
    for f in root.rglob("pg_apikey*"):
        f.unlink()
    subprocess.run(["dpkg-deb", "-x", str(deb17), str(root)], check=True)
    assert (root / "usr/share/doc/postgresql-17-pg-apikey/copyright").read_text().count("PostgreSQL") >= 1
    assert create_and_verify(root / "usr/lib/postgresql/17/bin") == str(root / "usr/lib/postgresql/17/lib")
