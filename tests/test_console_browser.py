"""The console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
installed by the test run when missing) driven by Selenium, against a real control plane. Opens
the overview, scales a cluster from its page and watches the running count reach the target
without a reload, holds and drains a handle, and sees the error of a refused request; a kill
asks first; and the page says what is down when Redis is killed, and comes back by itself.
Screenshots go to `test-artifacts/console/` (docs/console.md shows three of them)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client import masked
from fleet.console.app import create_app, serve
from fleet.store import Store
from fleet.testing.plane import Plane, plane
from fleet.testing.system import ensure_debian_packages

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "console"
BROWSER = {"chromium": lambda: shutil.which("chromium") is not None,
           "chromium-driver": lambda: shutil.which("chromedriver") is not None}
CLUSTERS = """
[clusters.web]
provider = "memory"
max_workers = 12
price_per_hour = 0.5
[clusters.web.container]
command = ["celery", "-A", "app", "worker"]
env = {DATABASE_PASSWORD = "never-shown-91c2"}

[clusters.jobs]
provider = "memory"
max_workers = 6
queues = ["browser-jobs"]
drain_timeout = 60
[clusters.jobs.container]
command = ["celery", "-A", "jobs", "worker"]
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ensure_debian_packages(BROWSER, "the console's browser tests")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plane, str]]:
    with plane(tmp_path_factory.mktemp("browser"), CLUSTERS, fleet="sweep_interval = 0.5\n") as cp:
        server = serve(create_app(cp.config, cp.stack.url), "127.0.0.1", 0)
        threading.Thread(target=server.run, daemon=True).start()
        yield cp, f"http://127.0.0.1:{server.effective_port}"
        server.close()


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def click(browser: Any, css: str, what: str) -> None:
    """Find the element and click it, again if the page's live refresh replaced it in between
    (a stale element)."""
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        browser.find_element(By.CSS_SELECTOR, css).click()
        return True

    until(clicked, what=what)


def until(predicate: Any, timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the page is being replaced under us: try again
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_scale_watch_hold_drain_and_an_error_in_a_real_browser(browser: Any, site: tuple[Plane, str]) -> None:
    from selenium.webdriver.common.by import By

    cp, base = site
    browser.get(base + "/")
    assert "fleet " + cp.fleet_id in browser.title
    rows = browser.find_elements(By.CSS_SELECTOR, "table.clusters tbody tr")
    assert [r.get_attribute("id") for r in rows] == ["cluster-web", "cluster-jobs"]

    browser.get(base + "/clusters/web")
    box = browser.find_element(By.ID, "workers")
    box.send_keys("5")
    browser.find_element(By.ID, "scale").click()
    until(lambda: "desired 5" in browser.find_element(By.CSS_SELECTOR, ".flash.ok").text, what="the scale is confirmed")
    until(lambda: browser.find_element(By.ID, "running").text == "5", what="5 running")
    # another service scales it while the page stays open: the page follows without a reload
    browser.execute_script("window.fleetNoReload = 'still the same page';")
    cp.call("fleet.scale", "web", 7)
    until(lambda: browser.find_element(By.ID, "running").text == "7", what="7 running, shown live")
    assert browser.execute_script("return window.fleetNoReload") == "still the same page"
    assert "never-shown-91c2" not in browser.page_source
    shot(browser, "cluster")

    box = browser.find_element(By.ID, "workers")
    box.send_keys(str(10**9))
    browser.find_element(By.ID, "scale").click()
    error = until(lambda: browser.find_element(By.CSS_SELECTOR, ".flash.error").text, what="the refusal is shown")
    assert "ScaleRefused" in error and "between 0 and 12" in error
    assert Store(cp.r, cp.fleet_id).get_desired("web").n == 7  # type: ignore[union-attr]

    browser.get(base + "/clusters/jobs")
    browser.find_element(By.ID, "workers").send_keys("3")
    browser.find_element(By.ID, "scale").click()
    until(lambda: browser.find_element(By.ID, "running").text == "3", what="3 jobs workers running")
    first = until(lambda: browser.find_element(By.CSS_SELECTOR, "table.handles tbody tr[data-handle]"))
    handle = first.get_attribute("data-handle")
    click(browser, f'tr[data-handle="{handle}"] button.hold', "the hold button")
    until(lambda: "held" in browser.find_element(By.CSS_SELECTOR, f'tr[data-handle="{handle}"] td.status').text,
          what="the handle shows held")
    assert Store(cp.r, cp.fleet_id).read("jobs").handles[handle].hold
    other = next(r for r in browser.find_elements(By.CSS_SELECTOR, "table.handles tbody tr[data-handle]")
                 if r.get_attribute("data-handle") != handle)
    drained = other.get_attribute("data-handle")
    click(browser, f'tr[data-handle="{drained}"] button.drain', "the drain button")
    until(lambda: "draining" in browser.find_element(By.CSS_SELECTOR, ".flash.ok").text, what="the drain is confirmed")
    store = Store(cp.r, cp.fleet_id)
    until(lambda: drained not in store.read("jobs").handles or
          store.read("jobs").handles[drained].status.value in ("draining", "stopping"), what="the handle drains")

    browser.get(base + "/")
    until(lambda: browser.find_element(By.CSS_SELECTOR, "#cluster-web td[data-field=running]").text == "7")
    # the cost column: 7 handles at 0.5 USD an hour
    until(lambda: browser.find_element(By.CSS_SELECTOR, "#cluster-web td[data-field=cost]").text.startswith("$3.50/h"),
          what="the run rate in the cost column")
    assert "so far" in browser.find_element(By.CSS_SELECTOR, "#cluster-web td[data-field=cost]").text
    shot(browser, "overview")


def test_a_kill_asks_first_in_a_real_browser(browser: Any, site: tuple[Plane, str]) -> None:
    from selenium.webdriver.common.by import By

    cp, base = site
    store = Store(cp.r, cp.fleet_id)
    cp.call("fleet.scale", "web", 2)
    until(lambda: store.summary("web").converged_at(2), what="2 web workers")
    browser.get(base + "/clusters/web")
    row = until(lambda: browser.find_element(By.CSS_SELECTOR, "table.handles tbody tr[data-handle]"))
    handle = row.get_attribute("data-handle")

    click(browser, f'tr[data-handle="{handle}"] button.kill', "the kill button")
    asked = until(lambda: browser.switch_to.alert, what="a confirmation dialog")
    assert handle in asked.text and "stop at once" in asked.text
    asked.dismiss()  # "no": nothing is sent
    assert store.read("web").handles[handle].status.value == "running"
    assert browser.find_elements(By.CSS_SELECTOR, ".flash.ok") == []
    click(browser, f'tr[data-handle="{handle}"] button.kill', "the kill button again")
    until(lambda: browser.switch_to.alert, what="the dialog again").accept()
    until(lambda: f"{handle}: killed" in browser.find_element(By.CSS_SELECTOR, ".flash.ok").text, what="killed")
    assert handle not in store.read("web").handles or store.read("web").handles[handle].status.value == "stopping"


def test_the_outage_page_in_a_real_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with plane(tmp_path, CLUSTERS, fleet="sweep_interval = 0.5\n") as cp:
        server = serve(create_app(cp.config, cp.stack.url), "127.0.0.1", 0)
        threading.Thread(target=server.run, daemon=True).start()
        base = f"http://127.0.0.1:{server.effective_port}"
        try:
            cp.call("fleet.scale", "web", 3)
            browser.get(base + "/")
            until(lambda: browser.find_element(By.CSS_SELECTOR, "#cluster-web td[data-field=running]").text == "3")
            assert cp.stack.redis is not None and cp.stack.redis.proc is not None
            cp.stack.redis.proc.kill()
            cp.stack.redis.proc.wait(timeout=10)
            said = f"Redis at {masked(cp.stack.url)} unreachable"
            # the open page says so at its next update, in place of what it can no longer read
            until(lambda: said in browser.find_element(By.ID, "problem").text, what="the open page says it")
            assert browser.find_element(By.ID, "live-state").text == "outage"
            browser.get(base + "/")  # and so does a page opened now
            assert said in browser.find_element(By.ID, "problem").text and "internal error" not in browser.page_source
            assert browser.find_element(By.ID, "live-state").text == "outage"
            shot(browser, "outage")
            cp.stack.redis.restart()
            # it comes back by itself, without a reload
            until(lambda: browser.find_element(By.CSS_SELECTOR, "#cluster-web td[data-field=running]").text == "3",
                  what="the fleet shown again")
            assert browser.find_element(By.ID, "live-state").text == "live"
        finally:
            server.close()
