"""The "API Keys" page (examples/web/, served by the demo's nginx at /keys/) in a real headless
Chromium: Debian's chromium and chromedriver, driven by selenium, against the demo's stack.

Keys never appear in a failure message: comparisons that involve one go through check()."""

import os
import re
import time

import pytest
import requests

from conftest import ROOT
from demo_stack import POSTGREST, Secret, check, demo_stack

PG_PORT, PGRST_PORT, NGINX_PORT = "54353", "54386", "54387"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = ROOT / ".run/test-output/api-keys-page.png"
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

missing = [p for p in (POSTGREST, CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
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
    try:
        yield driver
    finally:
        driver.quit()


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

    def wait_rows(self):
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#keys tbody tr"))

    def rows(self):
        """{name: {column: text}} of the key table, with the chart's numbers. Read in one script, so
        a table the page is re-rendering is never seen half-built."""
        rows = self.d.execute_script("""
            return [...document.querySelectorAll('#keys tbody tr')].map((tr) => {
              const td = tr.cells, chart = td[7].querySelector('svg');
              return {
                id: Number(tr.getAttribute('data-key-id')), name: td[0].textContent, key: td[1].textContent,
                sub_agency: td[2].textContent, status: td[3].textContent, created: td[4].textContent,
                expires: td[5].textContent, last_used: td[6].textContent,
                uses: Number(chart.getAttribute('data-total')), chart_label: chart.getAttribute('aria-label'),
                bars: [...chart.querySelectorAll('g')].map((g) =>
                  [Number(g.getAttribute('data-uses')), Number(g.getAttribute('data-refused'))]),
              };
            });""")
        return {r["name"]: r for r in rows}

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
        self.wait.until(EC.invisibility_of_element_located((By.ID, "new-key")))


@pytest.fixture
def page(browser, stack):
    return Page(browser, stack)


def test_sign_in_is_refused_for_a_wrong_key_and_nothing_is_kept(page):
    page.open()
    page.by_id("sign-in-key").send_keys("ct_live_" + "A" * 43)
    page.d.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    page.wait.until(lambda d: page.text("status"))
    assert page.text("status") == "Sign-in failed: invalid API key"
    assert page.d.execute_script("return sessionStorage.length") == 0
    assert not page.by_id("signed-in").is_displayed()


def test_lists_the_owners_keys_masked_with_status_and_usage(page, stack):
    sign_in_id, key = stack.create_key("carol", "dashboard", format="ct_live")
    used_id, _ = stack.create_key("carol", "nightly export", expires_in="90 days", resource="marketing")
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
    rows = page.rows()
    assert set(rows) == {"dashboard", "nightly export", "old script", "leaked"}  # never bob's
    assert {n: r["status"] for n, r in rows.items()} == {
        "dashboard": "active", "nightly export": "active", "old script": "expired", "leaked": "revoked"}
    check(rows["dashboard"]["key"] == key[:12] + "…" + key[-4:], "the signed-in key is not listed masked")
    check(key not in page.d.page_source, "the page shows the full key it signed in with")
    assert re.fullmatch(r"cfk_[0-9a-f]{4}…[0-9a-f]{4}", rows["old script"]["key"])
    assert rows["nightly export"]["sub_agency"] == "marketing" and rows["dashboard"]["sub_agency"] == "All"
    assert rows["dashboard"]["expires"] == "Never" and rows["nightly export"]["expires"] != "Never"

    chart = rows["nightly export"]
    assert len(chart["bars"]) == 24
    assert sum(u for u, _ in chart["bars"]) == 7 and sum(r for _, r in chart["bars"]) == 2
    assert chart["chart_label"] == "7 uses and 2 refused in the last 24 hours"
    # Only the caller's own keys come back from the usage endpoint.
    usage = requests.get(f"{stack.base}/api/keys/usage", headers={"X-Api-Key": key}).json()
    assert {u["key_id"] for u in usage} == {sign_in_id, used_id, expired_id, revoked_id}
    assert requests.get(f"{stack.base}/api/keys/usage").status_code == 401

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


def test_create_shows_the_key_once_copy_works_and_reload_shows_it_masked(page, stack):
    _, key = stack.create_key("alice", "creator", format="ct_live")
    page.sign_in(key)
    assert [o.text for o in Select(page.by_id("create-expiry")).options] == [
        "30 days", "60 days", "90 days (recommended)", "180 days", "1 year", "Never expires"]
    assert Select(page.by_id("create-expiry")).first_selected_option.text == "90 days (recommended)"
    assert [o.text for o in Select(page.by_id("create-sub-agency")).options] == [
        "All sub-agencies", "Marketing Agency", "Sales Agency"]

    page.create("CI pipeline", expiry_label="30 days", sub_agency="Marketing Agency")
    assert page.text("create-error") == ""
    page.wait.until(lambda d: "CI pipeline" in page.rows())  # listed at once
    assert page.text("new-key-warning") == WARNING
    new_key = Secret(page.by_id("new-key-value").get_attribute("value"))
    check(re.fullmatch(r"ct_live_[A-Za-z0-9]{43}", new_key) is not None, "the new key is not a ct_live key")

    page.by_id("copy-key").click()
    page.wait.until(lambda d: page.text("copy-status"))
    assert page.text("copy-status") == "Copied to the clipboard."
    clipboard = Secret(page.d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, (e) => done('error: ' + e.name));"))
    check(clipboard == new_key, "the clipboard does not hold the new key")

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


def test_creation_quota_shows_try_again_in_n_seconds(page, stack):
    _, key = stack.create_key("bob", "bob's console", format="ct_live")
    page.sign_in(key)
    for i in range(5):  # the demo's quota: 5 new keys per hour per owner
        page.create(f"batch {i}", expiry_label="Never expires")
        check(page.by_id("new-key").is_displayed(), f"key {i + 1} of 5 was refused: {page.text('create-error')}")
        page.dismiss_new_key()
    page.create("one too many")
    assert not page.by_id("new-key").is_displayed()
    message = page.text("create-error")
    m = re.fullmatch(r"Too many API key creation requests\. Please try again in (\d+) seconds\.", message)
    assert m, message
    assert 3000 < int(m.group(1)) <= 3600
    rows = page.rows()
    assert "one too many" not in rows and all(f"batch {i}" in rows for i in range(5))
    assert rows["batch 0"]["expires"] == "Never"

    # The screenshot shows the list and the refusal, and no full key (the new-key panel is closed).
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.d.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def test_delete_asks_for_confirmation_and_the_key_stops_working(page, stack):
    _, key = stack.create_key("alice", "deleter", format="ct_live")
    doomed_id, doomed = stack.create_key("alice", "old deploy key", format="ct_live")
    page.sign_in(key)

    def ask():
        page.d.find_element(By.CSS_SELECTOR, "button[aria-label='Delete old deploy key']").click()
        page.wait.until(EC.visibility_of_element_located((By.ID, "delete-dialog")))
        assert "“old deploy key”" in page.text("delete-text") and "cannot be undone" in page.text("delete-text")

    ask()
    page.d.find_element(By.CSS_SELECTOR, "#delete-dialog button[value=cancel]").click()
    page.wait.until(EC.invisibility_of_element_located((By.ID, "delete-dialog")))
    assert "old deploy key" in page.rows()
    assert requests.get(f"{page.stack.base}/api/surveys/", headers={"X-Api-Key": doomed}).status_code == 200

    ask()
    page.by_id("delete-confirm").click()
    page.wait.until(lambda d: "old deploy key" not in page.rows())
    assert page.text("status") == "Deleted “old deploy key”."
    assert requests.get(f"{page.stack.base}/api/surveys/", headers={"X-Api-Key": doomed}).status_code == 401
    page.d.refresh()
    page.wait_rows()
    assert "old deploy key" not in page.rows() and "deleter" in page.rows()


def test_the_page_is_served_with_a_strict_content_security_policy(stack):
    r = requests.get(f"{stack.base}/keys/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert requests.get(f"{stack.base}/keys/app.js").headers["Content-Type"].startswith("application/javascript")
    r = requests.get(f"{stack.base}/keys", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "/keys/"
    # The API's routes are unchanged around it.
    assert requests.get(f"{stack.base}/api/keys").status_code == 401
    assert requests.get(f"{stack.base}/nothing-here").status_code == 404
