"""The web view in a real headless browser (Debian's chromium), served by `coordinator run`."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.testing import CoordinatorProcess
from endpoints import HTTP_ANY_PORT, get, http_port
from helpers import FAST

Spawn = Callable[..., CoordinatorProcess]
GROUPS = ["scheduler", "billing", "reports/eu"]
WAIT = 15.0
#: The page must show the new leaders this soon after the old one is killed.
SHOWN_WITHIN = 1.0
#: Set to a path to save a screenshot there (docs/images/web-view.png).
SCREENSHOT_ENV = "COORDINATOR_WEB_SCREENSHOT"

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="the browser test needs Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver; .ci/run installs them)",
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,860"):
        options.add_argument(argument)
    # Given explicitly, so that Selenium never looks for a driver to download.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


#: What the page shows now, read in one script: it redraws four times a second.
READ_PAGE = """
const rows = (selector) => [...document.querySelectorAll(selector)];
return {
  leaders: Object.fromEntries(rows('#groups tbody tr').map((row) => [
    row.dataset.group,
    [row.querySelector('.leader').textContent, row.querySelector('.term').textContent],
  ])),
  lanes: Object.fromEntries(rows('.bar').map((bar) => [
    bar.dataset.group, [...bar.querySelectorAll('span')].map((span) => span.dataset.term),
  ])),
  members: rows('#members tbody tr').map((row) => [row.dataset.instance, row.className]),
};
"""


def shown(browser: Any) -> dict[str, Any]:
    page: dict[str, Any] = browser.execute_script(READ_PAGE)
    return page


def leaders_shown(browser: Any) -> dict[str, tuple[str, str]]:
    """Group -> (leader, term) as the page's groups table shows them now."""
    return {group: (leader, term) for group, (leader, term) in shown(browser)["leaders"].items()}


def wait_shown(browser: Any, condition: Callable[[Any], bool], timeout: float, what: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.02).until(condition, message=what)


def test_the_page_shows_a_failover_within_a_second(
    dsn: str, spawn: Spawn, browser: Any, tmp_path: Path
) -> None:
    """Kill the leader of every group: the page served by a follower shows the new leaders.

    The groups table, the members (the killed instance no longer live) and
    the timeline (a second leadership in each lane) all follow, without a
    reload.
    """
    first = spawn(dsn, GROUPS, instance_id="app-1", **FAST)
    for _ in GROUPS:
        first.wait_for("leadership_acquired", WAIT, term=1)
    viewer = spawn(dsn, GROUPS, instance_id="app-2", **FAST, extra_args=HTTP_ANY_PORT)
    spawn(dsn, GROUPS, instance_id="app-3", **FAST)
    port = http_port(viewer)
    status, page = get(port, "/")
    assert status == 200
    assert b"view.js" in page

    browser.get(f"http://127.0.0.1:{port}/")
    wait_shown(
        browser,
        lambda b: leaders_shown(b) == dict.fromkeys(GROUPS, ("app-1", "1")),
        WAIT,
        "the first leaders on the page",
    )
    wait_shown(
        browser,
        lambda b: len(shown(b)["members"]) == 3 * len(GROUPS),
        WAIT,
        "every member on the page",
    )

    first.kill()
    started = time.monotonic()
    # Crash failover takes milliseconds; the rest of the second is the page's to show it.
    wait_shown(
        browser,
        lambda b: (
            set(leaders_shown(b)) == set(GROUPS)
            and all(
                leader in ("app-2", "app-3") and term == "2"
                for leader, term in leaders_shown(b).values()
            )
        ),
        SHOWN_WITHIN,
        f"the new leaders on the page within {SHOWN_WITHIN:g} s of the kill",
    )
    print(f"new leaders shown {time.monotonic() - started:.3f} s after the kill")
    assert shown(browser)["lanes"] == {group: ["1", "2"] for group in GROUPS}
    wait_shown(
        browser,
        lambda b: (
            {role for instance, role in shown(b)["members"] if instance == "app-1"} == {"gone"}
        ),
        WAIT,
        "the killed instance shown as not live",
    )
    screenshot = os.environ.get(SCREENSHOT_ENV)
    if screenshot:
        browser.save_screenshot(screenshot)
