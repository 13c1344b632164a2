"""The "API Keys" page (examples/web/, served by the demo's nginx at /keys/) in a real headless
Chromium: Debian's chromium and chromedriver, driven by selenium, against the demo's stack.

Keys never appear in a failure message: comparisons that involve one go through check(), and
an API answer that carries a key has it taken out (as a Secret) before anything is asserted."""

import datetime
import os
import re
import time

import pytest
import requests

from conftest import ROOT
from demo_stack import POSTGREST, Secret, check, demo_stack

PG_PORT, PGRST_PORT, NGINX_PORT = "54353", "54386", "54387"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
OUTPUT = ROOT / ".run/test-output"
SCREENSHOT = OUTPUT / "api-keys-page.png"
AXE = ROOT / "tests/clients/node_modules/axe-core/axe.min.js"
WARNING = "Important: Copy and save your API key immediately - you won’t be able to see it again!"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

missing = [p for p in (POSTGREST, CHROMIUM, CHROMEDRIVER, AXE) if not os.path.exists(p)]
missing += ["selenium"] if webdriver is None else []
# On CI a missing tool is a broken set-up, not a reason to skip.
pytestmark = pytest.mark.skipif(bool(missing) and not os.environ.get("CI"),
                                reason=f"not installed (run make setup): {missing}")


@pytest.fixture(scope="module")
def stack():
    # Usage reaches apikey.usage (and so the charts) within a moment.
    with demo_stack("web", PG_PORT, PGRST_PORT, NGINX_PORT, "apikey.usage_flush_interval = '200ms'") as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    # Selenium Manager must never fetch a driver or browser: both binaries are named below.
    os.environ["SE_OFFLINE"] = "true"
    opts = Options()
    opts.binary_location = CHROMIUM
    # As root (no sandbox), and with nothing that reaches out to the network by itself.
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--window-size=1400,1000", "--lang=en-US",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def close_in_time(a: datetime.datetime, b: datetime.datetime, seconds: float = 2) -> bool:
    return abs((a - b).total_seconds()) <= seconds


class Page:
    def __init__(self, driver, stack):
        self.d, self.stack = driver, stack
        self.wait = WebDriverWait(driver, 15)
        driver.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": stack.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})

    def by_id(self, id_):
        return self.d.find_element(By.ID, id_)

    def text(self, id_):
        return self.by_id(id_).text

    def active_id(self):
        return self.d.execute_script("return document.activeElement && document.activeElement.id")

    def open(self):
        """The page in a fresh tab state: nobody signed in."""
        self.d.get(f"{self.stack.base}/keys/")
        self.d.execute_script("sessionStorage.clear()")
        self.d.refresh()
        self.wait.until(EC.visibility_of_element_located((By.ID, "sign-in-key")))

    def sign_in(self, key):
        self.open()
        self.by_id("sign-in-key").send_keys(key)
        self.d.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
        self.wait.until(EC.visibility_of_element_located((By.ID, "keys")))
        self.wait_rows()
        self.wait.until(lambda d: self.by_id("signed-in").get_attribute("aria-busy") == "false")

    def wait_rows(self):
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#keys tbody tr"))

    def rows(self):
        return {r["name"]: r for r in self.row_list()}

    def by_key_id(self, key_id):
        return next(r for r in self.row_list() if r["id"] == key_id)

    def row_list(self):
        """[{column: text}] of the key table, with the chart's numbers and the actions
        offered. Read in one script, so a table the page is re-rendering is never seen half-built."""
        rows = self.d.execute_script("""
            return [...document.querySelectorAll('#keys tbody tr')].map((tr) => {
              const col = (c) => tr.querySelector(`[data-col=${c}]`);
              const chart = col('usage').querySelector('svg');
              const time = (c) => { const t = col(c).querySelector('time');
                                    return t && { datetime: t.getAttribute('datetime'), title: t.title }; };
              return {
                id: Number(tr.getAttribute('data-key-id')),
                name: col('name').querySelector('.name-text').textContent,
                session: !!col('name').querySelector('.badge.session'),
                session_badge: (col('name').querySelector('.badge.session') || {}).textContent,
                key: col('key').textContent, scopes: col('scopes').textContent,
                sub_agency: col('sub_agency').textContent,
                status: col('status').querySelector('.badge').textContent,
                status_note: (col('status').querySelector('.note') || {}).textContent || '',
                created: col('created').textContent, expires: col('expires').textContent,
                expires_time: time('expires'), created_time: time('created'),
                last_used: col('last_used').textContent,
                uses: Number(chart.getAttribute('data-total')), chart_label: chart.getAttribute('aria-label'),
                chart_title: chart.querySelector('title').textContent,
                y_max: chart.querySelector('.y-max').textContent,
                hours: [...chart.querySelectorAll('.x-hour')].map((t) => t.textContent),
                legend: col('usage').querySelector('.legend').textContent,
                bars: [...chart.querySelectorAll('g')].map((g) =>
                  [Number(g.getAttribute('data-uses')), Number(g.getAttribute('data-refused'))]),
                actions: [...col('actions').querySelectorAll('button')].map((b) => b.textContent),
                actions_text: col('actions').textContent,
              };
            });""")
        return rows

    def create(self, name, expiry_label=None, sub_agency=None):
        field = self.by_id("create-name")
        field.clear()
        field.send_keys(name)
        if expiry_label:
            Select(self.by_id("create-expiry")).select_by_visible_text(expiry_label)
        if sub_agency:
            Select(self.by_id("create-sub-agency")).select_by_visible_text(sub_agency)
        self.by_id("create-submit").click()
        # Either the new key or an error, once the button is enabled again.
        self.wait.until(lambda d: self.by_id("create-submit").is_enabled()
                        and (self.by_id("new-key").is_displayed() or self.text("create-error")))

    def dismiss_new_key(self):
        self.by_id("new-key-done").click()
        self.wait.until(EC.visibility_of_element_located((By.ID, "new-key-close")))
        self.by_id("new-key-close").click()
        self.wait.until(EC.invisibility_of_element_located((By.ID, "new-key")))

    def action(self, verb, name):
        self.d.find_element(By.CSS_SELECTOR, f"button[aria-label='{verb} {name}']").click()

    def axe(self, context=""):
        """Serious and critical accessibility violations axe-core finds in the page as it is now.
        axe is injected through the WebDriver, which the page's Content-Security-Policy does not
        govern; only rule ids, impacts and selectors come back, never the page's text."""
        if not self.d.execute_script("return typeof axe !== 'undefined'"):
            self.d.execute_script(AXE.read_text())
        found = self.d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            axe.run(document, { resultTypes: ['violations'] }).then(
              (r) => done(r.violations.map((v) => ({ id: v.id, impact: v.impact,
                                                      nodes: v.nodes.map((n) => n.target.join(' ')) }))),
              (e) => done([{ id: 'axe-error', impact: 'critical', nodes: [String(e)] }]));""")
        return [f"{context}: {v['id']} ({v['impact']}) at {v['nodes'][:5]}"
                for v in found if v["impact"] in ("serious", "critical")]

    def viewport(self, width, height=900):
        self.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})

    def reset_viewport(self):
        self.d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture
def page(browser, stack):
    p = Page(browser, stack)
    yield p
    p.reset_viewport()


def api(stack, method, path, key, **kw):
    return requests.request(method, f"{stack.base}{path}", headers={"X-Api-Key": key}, **kw)


def key_expiry(stack, key_id):
    with stack.connect() as c:
        return c.execute("SELECT expires_at FROM apikey.keys WHERE id = %s", (key_id,)).fetchone()[0]


def test_sign_in_is_refused_for_a_wrong_key_and_nothing_is_kept(page):
    page.open()
    page.by_id("sign-in-key").send_keys("ct_live_" + "A" * 43)
    page.d.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    page.wait.until(lambda d: page.text("status"))
    assert page.text("status") == "Sign-in failed: invalid API key"
    assert page.d.execute_script("return sessionStorage.length") == 0
    assert not page.by_id("signed-in").is_displayed()
    assert page.active_id() == "sign-in-key"


def test_lists_the_owners_keys_masked_with_status_and_usage(page, stack):
    sign_in_id, key = stack.create_key("carol", "dashboard", format="ct_live")
    used_id, _ = stack.create_key("carol", "nightly export", expires_in="90 days", resource="marketing",
                                  scopes=["surveys:read"])
    expired_id, _ = stack.create_key("carol", "old script", expires_in="30 days")
    revoked_id, _ = stack.create_key("carol", "leaked", format="ct_live")
    bob_id, _ = stack.create_key("bob", "bob's", format="ct_live")
    with stack.connect() as c:
        c.execute("UPDATE apikey.keys SET expires_at = now() - interval '1 day' WHERE id = %s", (expired_id,))
        c.execute("SELECT apikey.revoke(%s)", (revoked_id,))
        # Two hours ago: 7 uses and 2 refusals for one of carol's keys; some for bob's.
        for kid in (used_id, bob_id):
            c.execute("INSERT INTO apikey.usage (key_id, bucket, uses, denied) "
                      "VALUES (%s, date_trunc('minute', now() - interval '2 hours'), 7, 2)", (kid,))

    page.sign_in(key)
    assert page.text("signed-in-as") == "Signed in as carol"
    # Signed in: focus moves on to the list the user came for.
    assert page.active_id() == "keys-title"
    rows = page.rows()
    assert set(rows) == {"dashboard", "nightly export", "old script", "leaked"}  # never bob's
    assert {n: r["status"] for n, r in rows.items()} == {
        "dashboard": "active", "nightly export": "active", "old script": "expired", "leaked": "revoked"}
    # The key this page is signed in with is marked, and only that one.
    assert {n for n, r in rows.items() if r["session"]} == {"dashboard"}
    assert rows["dashboard"]["session_badge"] == "this session"
    check(rows["dashboard"]["key"] == key[:12] + "…" + key[-4:], "the signed-in key is not listed masked")
    check(key not in page.d.page_source, "the page shows the full key it signed in with")
    assert re.fullmatch(r"cfk_[0-9a-f]{4}…[0-9a-f]{4}", rows["old script"]["key"])
    assert rows["nightly export"]["sub_agency"] == "marketing" and rows["dashboard"]["sub_agency"] == "All"
    assert rows["nightly export"]["scopes"] == "surveys:read" and rows["dashboard"]["scopes"] == "All"
    assert rows["dashboard"]["expires"] == "Never" and rows["nightly export"]["expires"] != "Never"

    chart = rows["nightly export"]
    assert len(chart["bars"]) == 24
    assert sum(u for u, _ in chart["bars"]) == 7 and sum(r for _, r in chart["bars"]) == 2
    assert chart["chart_title"] == "7 uses and 2 refused in the last 24 hours"
    assert chart["chart_label"] == "7 uses and 2 refused in the last 24 hours; at most 9 in one hour"
    # A scale: the busiest hour's count at the top, three hour labels along the bottom, the
    # totals beside a legend.
    assert chart["y_max"] == "9"
    assert len(chart["hours"]) == 3 and all(re.fullmatch(r"\d{1,2}\s[AP]M", h) for h in chart["hours"])
    assert chart["legend"] == "7 uses 2 refused"
    assert rows["old script"]["y_max"] == "1" and rows["old script"]["legend"] == "0 uses 0 refused"
    font = page.d.execute_script(
        "return parseFloat(getComputedStyle(document.querySelector('#keys .chart .tick')).fontSize)")
    assert font >= 11
    # Only the caller's own keys come back from the usage endpoint.
    usage = requests.get(f"{stack.base}/api/keys/usage", headers={"X-Api-Key": key}).json()
    assert {u["key_id"] for u in usage} == {sign_in_id, used_id, expired_id, revoked_id}
    assert requests.get(f"{stack.base}/api/keys/usage").status_code == 401
    # The API says the same: scopes, the session's key, and never another owner's key.
    listed = {k["id"]: k for k in api(stack, "GET", "/api/keys", key).json()}
    assert set(listed) == {sign_in_id, used_id, expired_id, revoked_id}
    assert [i for i, k in listed.items() if k["current"]] == [sign_in_id]
    assert listed[used_id]["scopes"] == ["surveys:read"] and listed[sign_in_id]["scopes"] is None

    # The page's own requests are usage of the signed-in key: they reach its chart and last-used
    # time once the usage worker has flushed them (the page reads the two in separate requests, so
    # a flush may fall between them).
    seen = lambda r: r["uses"] > 0 and r["last_used"] != "Never"
    deadline = time.monotonic() + 10
    while not seen(rows["dashboard"]) and time.monotonic() < deadline:
        time.sleep(0.3)
        page.d.refresh()
        page.wait_rows()
        rows = page.rows()
    assert rows["dashboard"]["uses"] > 0
    assert rows["dashboard"]["last_used"] != "Never"

    problems = page.axe("the key list")
    assert not problems, problems


def test_times_read_as_people_read_them(page, stack):
    _, key = stack.create_key("judy", "console", format="ct_live")
    soon_id, _ = stack.create_key("judy", "soon", expires_in="1 hour 10 minutes")
    later_id, _ = stack.create_key("judy", "later", expires_in="90 days")
    old_id, _ = stack.create_key("judy", "old", expires_in="30 days")
    with stack.connect() as c:
        c.execute("UPDATE apikey.keys SET created_at = now() - interval '2 hours', "
                  "last_used_at = now() - interval '3 minutes' WHERE id = %s", (old_id,))
        c.execute("UPDATE apikey.keys SET expires_at = now() - interval '5 days' WHERE id = %s", (old_id,))
    page.sign_in(key)
    rows = page.rows()
    assert rows["soon"]["expires"] == "in 1 hour"
    assert rows["later"]["expires"] == "in 3 months"
    assert rows["old"]["expires"] == "5 days ago"
    assert rows["old"]["created"] == "2 hours ago"
    assert rows["old"]["last_used"] == "3 minutes ago"
    assert rows["console"]["created"] in ("now", "1 minute ago")
    # The exact time is there for whoever wants it.
    exact = rows["later"]["expires_time"]
    check(close_in_time(parse_time(exact["datetime"]), key_expiry(stack, later_id)),
          "the expiry's datetime attribute is not the key's expiry")
    assert str(key_expiry(stack, later_id).year) in exact["title"]
    assert re.search(r"\d{1,2}:\d{2}:\d{2}", exact["title"])


def test_create_shows_the_key_once_copy_works_and_reload_shows_it_masked(page, stack):
    _, key = stack.create_key("alice", "creator", format="ct_live")
    page.sign_in(key)
    assert [o.text for o in Select(page.by_id("create-expiry")).options] == [
        "30 days", "60 days", "90 days (recommended)", "180 days", "1 year", "Never expires"]
    assert Select(page.by_id("create-expiry")).first_selected_option.text == "90 days (recommended)"
    assert [o.text for o in Select(page.by_id("create-sub-agency")).options] == [
        "All sub-agencies", "Marketing Agency", "Sales Agency"]
    # apikey.create refuses names of more than 200 characters.
    assert page.by_id("create-name").get_attribute("maxlength") == "200"

    page.create("CI pipeline", expiry_label="30 days", sub_agency="Marketing Agency")
    assert page.text("create-error") == ""
    page.wait.until(lambda d: "CI pipeline" in page.rows())  # listed at once
    assert page.text("new-key-warning") == WARNING
    assert page.text("new-key-title") == "Your new API key “CI pipeline”"
    assert page.text("new-key-sub-agency") == "Marketing Agency"
    assert "(in 30 days)" in page.text("new-key-expires") and "Capped" not in page.text("new-key-expires")
    new_key = Secret(page.by_id("new-key-value").get_attribute("value"))
    check(re.fullmatch(r"ct_live_[A-Za-z0-9]{43}", new_key) is not None, "the new key is not a ct_live key")

    page.by_id("copy-key").click()
    page.wait.until(lambda d: page.text("copy-status"))
    assert page.text("copy-status") == "Copied to the clipboard."
    clipboard = Secret(page.d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, (e) => done('error: ' + e.name));"))
    check(clipboard == new_key, "the clipboard does not hold the new key")

    problems = page.axe("the shown-once panel")
    assert not problems, problems

    # Closing the panel takes a second, explicit step that names the key.
    page.by_id("new-key-done").click()
    page.wait.until(EC.visibility_of_element_located((By.ID, "new-key-close")))
    assert page.by_id("new-key").is_displayed()
    assert "“CI pipeline” cannot be shown again" in page.text("new-key-confirm-text")
    assert page.active_id() == "new-key-keep"
    page.by_id("new-key-keep").click()
    assert page.by_id("new-key").is_displayed() and not page.by_id("new-key-close").is_displayed()
    check(page.by_id("new-key-value").get_attribute("value") == new_key, "keeping the panel lost the key")
    page.dismiss_new_key()
    assert page.active_id() == "create-name"

    # The key works, for its sub-agency only.
    auth = {"Authorization": Secret(f"Bearer {new_key}")}
    agencies = requests.get(f"{stack.base}/api/sub-agencies", headers=auth)
    assert agencies.status_code == 200 and [a["slug"] for a in agencies.json()] == ["marketing"]

    # After a reload: listed masked, never again in full.
    page.d.refresh()
    page.wait_rows()
    assert not page.by_id("new-key").is_displayed()
    row = page.rows()["CI pipeline"]
    check(row["key"] == new_key[:12] + "…" + new_key[-4:], "the new key is not listed masked")
    assert row["sub_agency"] == "marketing" and row["status"] == "active" and row["expires"] != "Never"
    source = page.d.page_source
    storage = page.d.execute_script("return JSON.stringify(sessionStorage) + JSON.stringify(localStorage)")
    check(new_key not in source and new_key[8:] not in source and new_key[-20:] not in source,
          "the reloaded page shows the new key")
    check(new_key not in storage, "the new key was stored in the browser")
    check(page.by_id("new-key-value").get_attribute("value") == "", "the new-key field still holds a key")


def test_expiry_and_sub_agency_capped_by_the_session_key_are_shown_before_and_after(page, stack):
    session_id, key = stack.create_key("alice", "marketing console", format="ct_live",
                                       expires_in="45 days", resource="marketing")
    session_expiry = key_expiry(stack, session_id)
    page.sign_in(key)
    assert [o.text for o in Select(page.by_id("create-sub-agency")).options] == [
        "All sub-agencies", "Marketing Agency"]

    def preview():
        return page.d.execute_script("""
            const li = (id) => document.getElementById(id);
            const t = li('preview-expiry').querySelector('time');
            return { expiry: li('preview-expiry').textContent, capped: li('preview-expiry').classList.contains('capped'),
                     at: t && t.getAttribute('datetime'), agency: li('preview-sub-agency').textContent,
                     scopes: li('preview-scopes').textContent };""")

    # Before creating: 30 days is within the session key's 45; 1 year and "never" are not.
    Select(page.by_id("create-expiry")).select_by_visible_text("30 days")
    p = preview()
    assert not p["capped"] and "(in 30 days)" in p["expiry"]
    expected = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    assert close_in_time(parse_time(p["at"]), expected, 60)
    for label in ("1 year", "Never expires"):
        Select(page.by_id("create-expiry")).select_by_visible_text(label)
        p = preview()
        assert p["capped"], label
        assert close_in_time(parse_time(p["at"]), session_expiry, 1), (p["at"], session_expiry)
        assert "(in 45 days)" in p["expiry"] and "never outlives it" in p["expiry"]
    assert p["agency"] == ("Reaches only the sub-agency Marketing Agency, not all of them: "
                           "the key you are signed in with is limited to it.")
    Select(page.by_id("create-sub-agency")).select_by_visible_text("Marketing Agency")
    assert preview()["agency"] == "Reaches only the sub-agency Marketing Agency."
    Select(page.by_id("create-sub-agency")).select_by_visible_text("All sub-agencies")
    problems = page.axe("the creation form with a capped expiry")
    assert not problems, problems

    # After creating: the date and sub-agency the key really got, and that they were capped.
    page.create("forever, everywhere", expiry_label="Never expires")
    assert page.text("create-error") == ""
    assert "Capped: the key you are signed in with expires then" in page.text("new-key-expires")
    at = page.by_id("new-key-expires").find_element(By.TAG_NAME, "time").get_attribute("datetime")
    assert close_in_time(parse_time(at), session_expiry, 1)
    assert page.text("new-key-sub-agency") == (
        "Marketing Agency Limited to the sub-agency of the key you are signed in with.")
    page.dismiss_new_key()
    row = page.rows()["forever, everywhere"]
    assert row["sub_agency"] == "marketing" and row["expires"] == "in 45 days"

    # The API says so too.
    r = api(stack, "POST", "/api/keys", key, json={"name": "via the API"})
    assert r.status_code == 200, r.status_code
    created = r.json()
    check(re.fullmatch(r"ct_live_[A-Za-z0-9]{43}", Secret(created.pop("key"))) is not None, "no key returned")
    assert created["expiry_capped"] is True and created["sub_agency_capped"] is True
    assert created["sub_agency"] == "marketing" and created["name"] == "via the API"
    assert close_in_time(parse_time(created["expires_at"]), session_expiry, 0.001)
    r = api(stack, "POST", "/api/keys", key, json={"name": "short", "expires_in_days": 30, "sub_agency": "marketing"})
    created = r.json()
    Secret(created.pop("key"))
    assert created["expiry_capped"] is False and created["sub_agency_capped"] is False
    assert parse_time(created["expires_at"]) < session_expiry
    # Another sub-agency is refused, not capped.
    r = api(stack, "POST", "/api/keys", key, json={"name": "sales", "sub_agency": "sales"})
    assert r.status_code == 403 and "resource" in r.json()["message"]
    # An unbounded session key caps nothing.
    _, open_key = stack.create_key("alice", "open console", format="ct_live")
    session = api(stack, "GET", "/api/keys/session", open_key).json()
    assert session["expires_at"] is None and session["sub_agency"] is None
    assert session["creation_quota"]["remaining"] == 1  # alice made 4 keys this hour through the API


def test_scopes_are_listed_and_chosen_within_the_session_keys_rights(page, stack):
    # A scoped session key: only its own scope is offered, and nothing else can be had.
    _, scoped = stack.create_key("frank", "reader console", format="ct_live", scopes=["surveys:read"])
    page.sign_in(scoped)
    offered = [c.get_attribute("value") for c in page.d.find_elements(By.CSS_SELECTOR, "#scope-list input")]
    assert offered == ["surveys:read"]
    assert page.text("scopes-inherit-label") == "The same as the key you are signed in with (surveys:read)"
    assert not page.by_id("scope-list").is_displayed()
    page.by_id("scopes-only").click()
    assert page.by_id("scope-list").is_displayed()
    assert page.text("preview-scopes") == "Scopes: none."
    page.create("nothing ticked")
    assert page.text("create-error") == "Tick at least one scope, or give the new key the same scopes as yours."
    page.by_id("scope-surveys-read").click()
    assert page.text("preview-scopes") == "Scopes: surveys:read."
    page.create("reader")
    assert page.text("new-key-scopes") == "surveys:read"
    page.dismiss_new_key()
    assert page.rows()["reader"]["scopes"] == "surveys:read"
    r = api(stack, "POST", "/api/keys", scoped, json={"name": "wider", "scopes": ["leaks:report"]})
    assert r.status_code == 403 and "scope" in r.json()["message"]
    r = api(stack, "POST", "/api/keys", scoped, json={"name": "Bad Scope", "scopes": ["Not A Scope"]})
    assert r.status_code == 400

    # An unscoped session key holds the database's restriction (apikey.deny_scopes), and every
    # key it gives scopes to gets it as well: offered ticked, and not to be unticked.
    _, unscoped = stack.create_key("frank", "full console", format="ct_live")
    page.sign_in(unscoped)
    boxes = {c.get_attribute("value"): c for c in page.d.find_elements(By.CSS_SELECTOR, "#scope-list input")}
    assert set(boxes) == {"surveys:read", "reports:embargoed"}
    page.by_id("scopes-only").click()
    assert boxes["reports:embargoed"].is_selected() and not boxes["reports:embargoed"].is_enabled()
    boxes["surveys:read"].click()
    assert page.text("preview-scopes") == "Scopes: surveys:read, reports:embargoed."
    page.create("restricted reader")
    assert page.text("new-key-scopes") == "surveys:read, reports:embargoed"
    page.dismiss_new_key()
    # After the form's reset the restriction is still ticked.
    page.by_id("scopes-only").click()
    assert page.by_id("scope-reports-embargoed").is_selected()
    rows = page.rows()
    assert rows["restricted reader"]["scopes"] == "surveys:read, reports:embargoed"
    assert rows["full console"]["scopes"] == "All"
    r = api(stack, "POST", "/api/keys", unscoped, json={"name": "by the API", "scopes": ["surveys:read"]})
    created = r.json()
    Secret(created.pop("key"))
    assert created["scopes"] == ["surveys:read", "reports:embargoed"]


def test_revoke_disable_enable_and_rotate_within_the_session_keys_rights(page, stack):
    _, key = stack.create_key("heidi", "console", format="ct_live", scopes=["surveys:read"], expires_in="30 days")
    worker_id, worker = stack.create_key("heidi", "worker", format="ct_live", scopes=["surveys:read"],
                                         expires_in="10 days")
    wide_id, _ = stack.create_key("heidi", "unbounded", format="ct_live")
    gone_id, _ = stack.create_key("heidi", "gone", scopes=["surveys:read"], expires_in="5 days")
    bob_id, _ = stack.create_key("bob", "not heidi's", format="ct_live")
    with stack.connect() as c:
        c.execute("SELECT apikey.revoke(%s)", (gone_id,))
    surveys = lambda k: requests.get(f"{stack.base}/api/surveys/", headers={"X-Api-Key": k})

    page.sign_in(key)
    rows = page.rows()
    assert rows["console"]["session"]
    # The session's own key: no disable (it could not sign in to enable itself again).
    assert rows["console"]["actions"] == ["Rotate", "Revoke", "Delete"]
    assert rows["worker"]["actions"] == ["Rotate", "Disable", "Revoke", "Delete"]
    assert rows["gone"]["actions"] == ["Delete"]
    # A key wider than the session's own (no scopes, no expiry) is beyond its reach.
    assert rows["unbounded"]["actions"] == []
    assert rows["unbounded"]["actions_text"] == "None: wider than the key you signed in with"

    # Disable, and enable again: the key is refused, then works; focus stays with the key.
    page.action("Disable", "worker")
    page.wait.until(lambda d: page.rows()["worker"]["status"] == "disabled")
    assert page.text("status") == "Disabled “worker”: requests with it are refused until you enable it."
    assert page.rows()["worker"]["actions"] == ["Enable", "Revoke", "Delete"]
    assert page.d.switch_to.active_element.get_attribute("aria-label") == "Enable worker"
    r = surveys(worker)
    assert r.status_code == 401 and r.json()["message"] == "API key is disabled"
    page.action("Enable", "worker")
    page.wait.until(lambda d: page.rows()["worker"]["status"] == "active")
    assert surveys(worker).status_code == 200

    # Rotate with a grace of 1 hour: the new key is shown once, the old one keeps working.
    page.action("Rotate", "worker")
    page.wait.until(EC.visibility_of_element_located((By.ID, "rotate-dialog")))
    graces = {e.get_attribute("value"): e for e in page.d.find_elements(By.CSS_SELECTOR, "#grace-options input")}
    assert set(graces) == {"0", "3600", "86400"} and graces["3600"].is_selected()
    problems = page.axe("the rotate dialog")
    assert not problems, problems
    page.by_id("rotate-confirm").click()
    page.wait.until(EC.visibility_of_element_located((By.ID, "new-key")))
    assert page.text("new-key-title") == "Your new API key “worker”"
    assert "keeps working until" in page.text("new-key-replaces")
    successor = Secret(page.by_id("new-key-value").get_attribute("value"))
    page.dismiss_new_key()
    page.wait.until(lambda d: len(page.row_list()) == 5)
    listed = api(stack, "GET", "/api/keys", key).json()
    old = next(k for k in listed if k["id"] == worker_id)
    new = next(k for k in listed if k["rotated_from"] == worker_id)
    assert old["stops_at"] is not None and new["scopes"] == ["surveys:read"]
    old_row = page.by_key_id(worker_id)
    assert old_row["status_note"] == "replaced: stops in 1 hour"
    assert "Rotate" not in old_row["actions"]
    assert surveys(worker).status_code == 200 and surveys(successor).status_code == 200

    # Revoke the successor, after a confirmation: it stops at once and can only be deleted.
    new_row = page.by_key_id(new["id"])
    assert new_row["actions"] == ["Rotate", "Disable", "Revoke", "Delete"]
    page.d.find_element(By.CSS_SELECTOR, f"tr[data-key-id='{new['id']}'] button[aria-label='Revoke worker']").click()
    page.wait.until(EC.visibility_of_element_located((By.ID, "revoke-dialog")))
    assert "will stop working now and for good" in page.text("revoke-text")
    assert "signed out" not in page.text("revoke-text")
    page.by_id("revoke-confirm").click()
    page.wait.until(lambda d: page.by_key_id(new["id"])["status"] == "revoked")
    assert page.by_key_id(new["id"])["actions"] == ["Delete"]
    assert surveys(successor).status_code == 401

    # Through nginx: only POST, only the owner's keys, only keys within the session key's rights.
    assert api(stack, "POST", f"/api/keys/{wide_id}/revoke", key).status_code == 403
    assert api(stack, "POST", f"/api/keys/{wide_id}/rotate?grace_seconds=0", key).status_code == 403
    assert api(stack, "POST", f"/api/keys/{bob_id}/disable", key).status_code == 404
    assert api(stack, "POST", f"/api/keys/{bob_id}/rotate", key).status_code == 404
    assert api(stack, "GET", f"/api/keys/{worker_id}/revoke", key).status_code == 405
    assert api(stack, "POST", f"/api/keys/{gone_id}/enable", key).status_code == 409
    assert api(stack, "POST", f"/api/keys/{worker_id}/rotate?grace_seconds=soon", key).status_code == 400
    assert api(stack, "POST", f"/api/keys/{worker_id}/rotate?grace_seconds=9999999", key).status_code == 400
    # A key already in its grace is being replaced: its successor is the one to rotate.
    assert api(stack, "POST", f"/api/keys/{worker_id}/rotate", key).status_code == 409
    assert requests.post(f"{stack.base}/api/keys/{bob_id}/revoke").status_code == 401
    r = api(stack, "POST", f"/api/keys/{gone_id}/revoke", key)
    assert r.status_code == 200 and r.json() == {"id": gone_id, "status": "revoked", "changed": False}
    with stack.connect() as c:
        assert c.execute("SELECT revoked_at IS NULL FROM apikey.keys WHERE id = %s", (bob_id,)).fetchone()[0]
        assert c.execute("SELECT revoked_at IS NULL FROM apikey.keys WHERE id = %s", (wide_id,)).fetchone()[0]

    # The session's own key: rotating it always leaves a grace, so the page keeps working while
    # the new key is copied; revoking it says that the page signs out, and does.
    page.action("Rotate", "console")
    page.wait.until(EC.visibility_of_element_located((By.ID, "rotate-dialog")))
    graces = [e.get_attribute("value") for e in page.d.find_elements(By.CSS_SELECTOR, "#grace-options input")]
    assert graces == ["3600", "86400"]
    assert "sign in with the new key" in page.text("rotate-text")
    page.d.find_element(By.CSS_SELECTOR, "#rotate-dialog button[value=cancel]").click()
    page.wait.until(EC.invisibility_of_element_located((By.ID, "rotate-dialog")))
    page.action("Revoke", "console")
    page.wait.until(EC.visibility_of_element_located((By.ID, "revoke-dialog")))
    assert "you will be signed out" in page.text("revoke-text")
    page.by_id("revoke-confirm").click()
    page.wait.until(EC.visibility_of_element_located((By.ID, "sign-in-key")))
    assert page.text("status") == "Signed out: you revoked “console”, the key you were signed in with."
    assert page.active_id() == "sign-in-key"
    assert page.d.execute_script("return sessionStorage.length") == 0
    assert surveys(key).status_code == 401


def test_long_names_and_a_phone_width_keep_the_columns_in_their_box(page, stack):
    _, key = stack.create_key("ivan", "console", format="ct_live")
    long_name = "nightly-export-to-the-data-warehouse-" * 5 + "x" * 15  # 200 characters
    assert len(long_name) == 200
    stack.create_key("ivan", long_name, expires_in="90 days", scopes=["surveys:read"])
    # The server's limit is the page's maxlength.
    r = api(stack, "POST", "/api/keys", key, json={"name": long_name + "y"})
    assert r.status_code == 400 and "200" in r.json()["message"]

    for width in (1280, 390):
        page.viewport(width)
        page.sign_in(key)
        layout = page.d.execute_script("""
            const box = document.querySelector('.table-scroll'), doc = document.documentElement;
            const name = [...document.querySelectorAll('#keys td.name')].find((td) => td.textContent.length > 100);
            return { page: doc.scrollWidth, viewport: doc.clientWidth, box: box.clientWidth,
                     table: box.scrollWidth, overflow: getComputedStyle(box).overflowX,
                     name_width: name.getBoundingClientRect().width, name_height: name.getBoundingClientRect().height,
                     line: parseFloat(getComputedStyle(name).lineHeight) || 20,
                     form: document.getElementById('create-form').scrollWidth };""")
        assert width - 20 <= layout["viewport"] <= width, layout  # the emulated width took
        assert layout["page"] <= layout["viewport"], layout  # nothing pushes the page sideways
        assert layout["overflow"] == "auto"
        assert layout["name_width"] <= 16 * 16 + 20, layout  # the long name wraps ...
        assert layout["name_height"] > 2 * layout["line"], layout  # ... onto several lines
        if width == 390:
            assert layout["viewport"] <= 390
            assert layout["table"] > layout["box"], layout  # the table scrolls in its own box
            assert layout["form"] <= layout["viewport"], layout
        problems = page.axe(f"the key list at {width} px")
        assert not problems, problems
        if width == 390:  # the phone's shot shows the table in its box, not only the form
            page.d.execute_script("document.getElementById('keys-title').scrollIntoView()")
        shot = OUTPUT / f"api-keys-{width}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.d.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000


def test_creation_quota_is_shown_and_says_try_again_in_n_seconds(page, stack):
    _, key = stack.create_key("bob", "bob's console", format="ct_live")
    page.sign_in(key)
    assert page.text("quota") == "You can create 5 more keys now (5 new keys per hour; a rotation counts as one)."
    for i in range(5):  # the demo's quota: 5 new keys per hour per owner
        page.create(f"batch {i}", expiry_label="Never expires")
        check(page.by_id("new-key").is_displayed(), f"key {i + 1} of 5 was refused: {page.text('create-error')}")
        page.dismiss_new_key()
        if i == 3:
            page.wait.until(lambda d: page.text("quota").startswith("You can create 1 more key now"))
    page.wait.until(lambda d: page.text("quota").startswith("You cannot create another key"))
    assert page.text("quota") == ("You cannot create another key yet: the next one can be created in 1 hour "
                                  "(5 new keys per hour; a rotation counts as one).")
    page.create("one too many")
    assert not page.by_id("new-key").is_displayed()
    message = page.text("create-error")
    m = re.fullmatch(r"Too many API key creation requests\. Please try again in (\d+) seconds\.", message)
    assert m, message
    assert 3000 < int(m.group(1)) <= 3600
    rows = page.rows()
    assert "one too many" not in rows and all(f"batch {i}" in rows for i in range(5))
    assert rows["batch 0"]["expires"] == "Never"
    quota = api(stack, "GET", "/api/keys/session", key).json()["creation_quota"]
    assert quota["limit"] == 5 and quota["used"] == 5 and quota["remaining"] == 0
    assert 3000 < (parse_time(quota["next_slot_at"]) - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 3600

    # The screenshot shows the list and the refusal, and no full key (the new-key panel is closed).
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.d.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def test_delete_asks_for_confirmation_and_the_key_stops_working(page, stack):
    _, key = stack.create_key("alice", "deleter", format="ct_live")
    doomed_id, doomed = stack.create_key("alice", "old deploy key", format="ct_live")
    page.sign_in(key)

    def ask():
        page.action("Delete", "old deploy key")
        page.wait.until(EC.visibility_of_element_located((By.ID, "delete-dialog")))
        assert "“old deploy key”" in page.text("delete-text") and "cannot be undone" in page.text("delete-text")

    ask()
    page.d.find_element(By.CSS_SELECTOR, "#delete-dialog button[value=cancel]").click()
    page.wait.until(EC.invisibility_of_element_located((By.ID, "delete-dialog")))
    assert "old deploy key" in page.rows()
    assert page.d.switch_to.active_element.get_attribute("aria-label") == "Delete old deploy key"
    assert requests.get(f"{page.stack.base}/api/surveys/", headers={"X-Api-Key": doomed}).status_code == 200

    ask()
    page.by_id("delete-confirm").click()
    page.wait.until(lambda d: "old deploy key" not in page.rows())
    assert page.text("status") == "Deleted “old deploy key”."
    # Focus moves to the key that took the deleted one's place in the list, not to the page.
    focused = page.d.switch_to.active_element
    assert focused.tag_name == "button" and focused.get_attribute("aria-label").endswith(
        tuple(page.rows())), focused.get_attribute("aria-label")
    assert page.d.execute_script("return document.querySelector('#keys').contains(document.activeElement)")
    assert requests.get(f"{page.stack.base}/api/surveys/", headers={"X-Api-Key": doomed}).status_code == 401
    page.d.refresh()
    page.wait_rows()
    assert "old deploy key" not in page.rows() and "deleter" in page.rows()


def test_the_page_is_served_with_a_strict_content_security_policy(page, stack):
    r = requests.get(f"{stack.base}/keys/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    assert requests.get(f"{stack.base}/keys/app.js").headers["Content-Type"].startswith("application/javascript")
    r = requests.get(f"{stack.base}/keys", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "/keys/"
    # The API's routes are unchanged around it.
    assert requests.get(f"{stack.base}/api/keys").status_code == 401
    assert requests.get(f"{stack.base}/api/keys/session").status_code == 401
    assert requests.post(f"{stack.base}/api/keys/1/revoke").status_code == 401
    assert requests.get(f"{stack.base}/nothing-here").status_code == 404
    # The page serves nothing but its own files.
    html = requests.get(f"{stack.base}/keys/").text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)

    page.open()
    problems = page.axe("the sign-in form")
    assert not problems, problems
