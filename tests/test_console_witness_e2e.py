"""End to end in headless Chromium: the console shows each witness's cosigned size and lag, and the quorum line."""

import signal

import pytest

from tests.harness.twistd import GatewayProcess
from tests.test_console_e2e import ARTIFACTS, Browser
from tests.test_events import _session
from tests.test_plugin_api import CONFIG, PLUGIN_DIR, echoBackend  # noqa: F401
from tests.test_witness_e2e import _cosigners, _latest, _witnessSize, witnessedGateway

NAMES = ("witness.test/w1", "witness.test/w2")


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.quit()


def _signIn(browser, gw, key) -> str:
    base = f"http://127.0.0.1:{gw.adminPort}"
    browser.driver.delete_all_cookies()
    browser.driver.get(base + "/login")
    browser.wait("#key").send_keys(key)
    browser.wait("#key-login").click()
    browser.wait("body.ready")
    return base


def _page(driver) -> dict:
    """What the witnesses view shows: each row's cells by witness name, the quorum line, the nav badge."""
    return driver.execute_script("""
        const rows = {};
        for (const r of document.querySelectorAll('#witnesses tbody tr'))
          rows[r.cells[0].textContent] = {size: Number(r.cells[1].textContent), lag: Number(r.cells[2].textContent),
                                          state: r.cells[3].textContent, last: r.cells[4].textContent,
                                          error: r.cells[5].textContent};
        return {rows, quorum: document.querySelector('#quorum').textContent,
                badge: document.querySelector('#witness-badge').textContent,
                nav: !document.querySelector('#nav-witnesses').hidden};""")


def _until(browser, condition, what, timeout=90):
    """Poll the page until C{condition(page)} holds (a deadline, no sleeps); the last page on failure."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    seen: list = []

    def check(driver):
        seen[:] = [_page(driver)]
        return condition(seen[0])

    try:
        WebDriverWait(browser.driver, timeout, poll_frequency=0.1).until(check)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; the page showed {seen}") from None
    return seen[0]


def test_console_shows_each_witness_size_and_lag_and_the_quorum_falling_behind(tmp_path, echoBackend, browser):  # noqa: F811
    state, signer, ws, gw, key = witnessedGateway(tmp_path, echoBackend)
    gw.start()
    try:
        _session(gw, key, ["hello"])
        _signIn(browser, gw, key)
        browser.driver.get(f"http://127.0.0.1:{gw.adminPort}/console/#witnesses")
        # Both witnesses, at the size each one's own store holds, which is the latest checkpoint.
        page = _until(browser, lambda p: set(p["rows"]) == set(NAMES) and _cosigners(state, ws) == set(NAMES)
                      and all(p["rows"][w.cosigner.verifier.name]["size"] == _witnessSize(w) == _latest(state)[0]
                              for w in ws) and "lag 0" in p["quorum"],
                      "both witnesses at the latest checkpoint")
        size = _latest(state)[0]
        assert page["nav"] and page["badge"] == "ok"
        assert all(r["lag"] == 0 and r["state"] == "up to date" and r["last"].startswith("20") for r in page["rows"].values())
        assert page["quorum"].startswith(f"Quorum 2 of 2: size {size} is cosigned by 2 witnesses"), page["quorum"]
        browser.driver.save_screenshot(str(ARTIFACTS / "console-witnesses.png"))

        # w2 stops; a session goes on and makes new checkpoints that only w1 cosigns.
        ws[1].stop()
        _session(gw, key, ["while w2 is down"])
        page = _until(browser, lambda p: p["rows"]["witness.test/w2"]["error"] and "below quorum" in p["quorum"]
                      and p["rows"]["witness.test/w1"]["size"] == _latest(state)[0] > size
                      and p["rows"]["witness.test/w2"]["lag"] == _latest(state)[0] - size,
                      "w2 lagging and the quorum below")
        latest = page["rows"]["witness.test/w1"]["size"]
        w1, w2 = page["rows"]["witness.test/w1"], page["rows"]["witness.test/w2"]
        assert w2["size"] == _witnessSize(ws[1]) == size and w2["state"].startswith("failing (")
        assert w1["size"] == _witnessSize(ws[0]) and w1["lag"] == 0 and w1["state"] == "up to date"
        assert w2["lag"] == latest - size and page["badge"] == f"lag {latest - size}"
        assert f"size {size} is cosigned by 2 witnesses" in page["quorum"]
        assert f"lag {latest - size} leaves: below quorum" in page["quorum"]
        browser.driver.save_screenshot(str(ARTIFACTS / "console-witness-down.png"))
        source = browser.driver.page_source

        # w2 returns and catches up: the quorum line clears.
        ws[1].start()
        page = _until(browser, lambda p: p["rows"]["witness.test/w2"]["size"] == _latest(state)[0]
                      and "lag 0" in p["quorum"] and not p["rows"]["witness.test/w2"]["error"],
                      "w2 to catch up")
        assert page["badge"] == "ok"
    finally:
        gw.stop(signal.SIGTERM)
        for w in ws:
            w.stop()
    # No secret in the page: the API key, the node's signing key, the witnesses' keys and where they listen.
    for secret in (key, signer.skey(), *(w.cosigner.skey() for w in ws), *(w.url for w in ws)):
        assert secret not in source


def test_console_shows_no_witnesses_when_none_are_configured(tmp_path, echoBackend, browser):  # noqa: F811
    gw = GatewayProcess(tmp_path, CONFIG.replace("{backend}", str(echoBackend)) + '\n[admin]\nauditors = ["eng"]\n',
                        [PLUGIN_DIR])
    key = gw.cli("keys", "create", "--name", "ci", "--group", "eng").stdout.splitlines()[-1]
    gw.start()
    try:
        base = _signIn(browser, gw, key)
        browser.waitText("#whoami", "apikey:ci")
        assert _page(browser.driver)["nav"] is False
        browser.driver.get(base + "/console/#witnesses")
        text = browser.waitText("#quorum", "No witnesses are configured")
        assert _page(browser.driver)["rows"] == {} and _page(browser.driver)["nav"] is False
    finally:
        gw.stop(signal.SIGTERM)
    assert "witness.test" not in text
