"""The dashboard in a real browser: Debian's chromium driven by Playwright (never `playwright
install`: it downloads), against uvicorn on a free 127.0.0.1 port.

While the page is open the test writes to the run store like a training driver would, and checks
that a chart gains a point and a rollout row appears. A route guard fails the test on any request
that leaves the local server, and any page error or console error fails it too. The pages' CSP
forbids eval, so waits use selectors and ``expect`` rather than ``wait_for_function``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from dashboard_support import RUN_A, RUN_B, STEPS, T0, TOKEN, rollout_rows, step_metrics

from roll.jobs.runstore import RunStore

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)
expect = sync_api.expect
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); .ci/run installs it"
)


class Guard:
    """Aborts and records requests leaving the server; records page and console errors."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.outside: list[str] = []
        self.errors: list[str] = []

    def route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base + "/") or url == self.base:
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def watch(self, page) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))

    def check(self) -> None:
        assert not self.outside, f"requests left the local server: {self.outside}"
        assert not self.errors, f"errors in the page: {self.errors}"


@pytest.fixture
def browser_page(live_server):
    guard = Guard(live_server.url)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", guard.route)
        page = context.new_page()
        page.set_default_timeout(15_000)
        guard.watch(page)
        yield page, guard
        context.close()
        browser.close()
    guard.check()


def _attr(page, selector: str, name: str) -> str | None:
    return page.get_attribute(selector, name)


def test_run_page_updates_live(browser_page, live_server, workspace, tmp_path):
    page, guard = browser_page
    page.goto(f"{live_server.url}/runs/{RUN_A}")
    reward = "#chart-reward"
    page.wait_for_selector(f"{reward}[data-last-step='{STEPS}'] canvas")
    assert int(_attr(page, reward, "data-points")) == STEPS
    for chart in ("zero_std", "kl", "entropy", "clip", "length", "tps", "time"):
        page.wait_for_selector(f"#chart-{chart} canvas")
    page.wait_for_selector("#rollout-groups[data-step='200'] tr[data-sample='200:1:3']")
    assert page.inner_text("#step-value") == "step 200"
    assert "checkpoint" in page.inner_text("#events-body")

    # the driver logs a new step: the chart gains a point, a rollout row appears
    with RunStore(workspace.db_a) as store:
        store.log_metrics(RUN_A, STEPS + 1, step_metrics(STEPS + 1), wall_time=T0 + 2.0 * (STEPS + 1))
        store.log_rollouts(RUN_A, STEPS + 1, rollout_rows(STEPS + 1))
        store.log_event(RUN_A, "checkpoint", f"saved step {STEPS + 1}", step=STEPS + 1)
    page.wait_for_selector(f"{reward}[data-last-step='{STEPS + 1}']")
    assert int(_attr(page, reward, "data-points")) == STEPS + 1
    page.wait_for_selector(f"tr[data-sample='{STEPS + 1}:0:0']")
    assert page.inner_text("#step-value") == f"step {STEPS + 1}"
    expect(page.locator("#run-step")).to_have_text(str(STEPS + 1))
    page.wait_for_selector(f"#events-body >> text=saved step {STEPS + 1}")

    # move the step slider back to the first step with rollouts
    page.focus("#step-slider")
    page.keyboard.press("Home")
    page.wait_for_selector("#rollout-groups[data-step='100'] tr[data-sample='100:0:0']")
    assert page.inner_text("#step-value") == "step 100"
    assert not page.is_checked("#follow-latest")

    # a long completion expands; sorting and search work
    row = page.locator("tr[data-sample='100:1:3']")
    assert "long: 7" not in row.inner_text()
    row.locator("button.expand").click()
    assert "long: 7" in row.inner_text()
    page.select_option("#rollout-sort", "advantage")
    first = page.locator("#rollout-groups .group tr.sample").first
    expect(first).to_have_attribute("data-sample", "100:0:3")  # advantage 0.75 on top
    page.fill("#rollout-search", "very very")
    expect(page.locator("#rollout-groups .group")).to_have_count(1)
    assert page.locator("#rollout-groups tr.match").count() == 1
    page.fill("#rollout-search", "")

    # smoothing slider and x axis by wall time keep the charts drawn
    page.locator("#smoothing").fill("0.9")
    assert page.inner_text("#smoothing-value") == "0.90"
    page.select_option("#x-axis", "wall")
    page.wait_for_selector(f"{reward}[data-x='wall'] canvas")

    page.screenshot(path=str(tmp_path / "run-page.png"), full_page=False)
    assert (tmp_path / "run-page.png").stat().st_size > 20_000

    # drag to zoom: the chart refetches the range at full resolution
    page.select_option("#x-axis", "step")
    page.wait_for_selector(f"{reward}[data-x='step'][data-points='{STEPS + 1}']")
    box = page.locator(f"{reward} .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.4, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    expect(page.locator(reward)).to_have_attribute("data-points", re.compile(r"^[1-9][0-9]?$"))  # < 100
    page.screenshot(path=str(tmp_path / "run-page-zoomed.png"))


def test_runs_list_compare_and_validate(browser_page, live_server, tmp_path):
    page, guard = browser_page
    page.goto(f"{live_server.url}/#token={TOKEN}")
    assert page.url == f"{live_server.url}/"  # the token left the address bar ...
    assert page.inner_text("#token-state") == "set"  # ... and was kept in the browser
    assert page.locator("#runs-table tbody tr").count() == 2
    page.select_option("#status-filter", "completed")
    page.wait_for_url(re.compile(r"/\?status=completed"))
    assert page.locator("#runs-table tbody tr").count() == 1
    page.goto(f"{live_server.url}/")
    page.check(f"input[value='{RUN_A}']")
    page.check(f"input[value='{RUN_B}']")
    page.click("#compare-button")
    # the first ticked run in the table (newest first) is the page's run, the others are overlaid
    page.wait_for_url(re.compile(re.escape(f"/runs/{RUN_B}?compare={RUN_A}") + "$"))
    page.wait_for_selector("#chart-reward canvas")
    assert page.locator("#legend-runs .run-chip").count() == 2
    labels = page.inner_text("#chart-reward .u-legend")
    assert RUN_A in labels and RUN_B in labels
    page.screenshot(path=str(tmp_path / "compare.png"))

    page.goto(f"{live_server.url}/validate")
    page.fill("#job-text", (REPO / "configs" / "quickstart.yaml").read_text())
    page.click("#validate-button")
    page.wait_for_selector("#validate-result.good", timeout=60_000)
    assert "is a valid 'rlvr' job" in page.inner_text("#validate-result")
    page.fill("#job-text", "pipeline: rlvr\nstepz: 3\n")
    page.click("#validate-button")
    page.wait_for_selector("#validate-result.bad")
    assert "stepz" in page.inner_text("#validate-result")
