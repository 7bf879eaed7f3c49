"""The real browser path: `streamlit run` on a free localhost port, driven by Playwright in
Debian's headless Chromium through demo -> compute -> explore, with the real UMAP map: a click
on a test point, a box selection and a drill-down, with a screenshot (the README's, when
GDA_SCREENSHOT=docs/explore.png).

`make test` installs /usr/bin/chromium (Debian's package) when it is missing; Playwright's own
browser download is never used."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
N_TRAIN, N_TEST = 1438, 359

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed "
                                "(make test installs it: apt-get install -y chromium)")


#: (index, x, y) of the test point (the trace of grey crosses) farthest from every other point
ISOLATED_TEST_POINT = """() => {
  const traces = [...document.querySelectorAll('.js-plotly-plot .scatterlayer .trace')];
  const centre = p => { const r = p.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; };
  const all = traces.flatMap(t => [...t.querySelectorAll('path.point')].map(centre));
  const tests = [...traces.find(t => t.querySelectorAll('path.point').length === %d).querySelectorAll('path.point')];
  let best = [-1, 0, 0, -1];
  tests.forEach((p, i) => {
    const [x, y] = centre(p);
    const nearest = Math.min(...all.map(([a, b]) => (a - x) ** 2 + (b - y) ** 2).filter(d => d > 0.01));
    if (i > 0 && nearest > best[3]) best = [i, x, y, nearest];
  });
  return best.slice(0, 3);
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "GDA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("GDA_EMBEDDER", None)  # the real UMAP
    log = open(tmp_path / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise AssertionError((tmp_path / "streamlit.log").read_text())
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_demo_compute_explore_in_a_real_browser(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    screenshot = Path(os.environ.get("GDA_SCREENSHOT", tmp_path / "explore.png"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(server)
            page.get_by_text("Training points", exact=True).wait_for(timeout=180_000)  # demo model trains first
            assert page.get_by_text("1438").count() >= 1
            # the sidebar names every page, the entry included
            for name in ("Home", "Compute", "Explore", "Fidelity", "Noisy labels"):
                assert page.get_by_role("link", name=name, exact=True).count() >= 1, name

            page.get_by_role("link", name="Compute", exact=True).first.click()
            page.get_by_role("button", name="Compute", exact=True).click()
            page.get_by_text("Attribution time").wait_for(timeout=240_000)

            page.get_by_role("link", name="Explore", exact=True).first.click()
            page.get_by_role("button", name="Compute the map").click()
            points = page.locator(".js-plotly-plot .scatterlayer .trace").first.locator("path.point")
            deadline = time.time() + 300
            while points.count() < N_TRAIN and time.time() < deadline:
                time.sleep(1)
            assert points.count() == N_TRAIN  # the first trace holds exactly the training points
            page.get_by_text("Most helpful groups").first.wait_for()

            # a click on a test point (grey cross) chooses it: click the cross farthest from any
            # other point, so that plotly's nearest-point pick cannot land on a neighbour
            index, x, y = page.evaluate(ISOLATED_TEST_POINT % N_TEST)
            page.mouse.click(x, y)
            page.get_by_text(f"chosen test point #{index}").wait_for(timeout=60_000)

            # colour by the chosen point's group scores: the map gets a colour bar
            page.get_by_text("group score for this test point", exact=False).click()
            page.locator(".js-plotly-plot .colorbar").first.wait_for(timeout=60_000)
            page.get_by_text(f"chosen test point #{index}").first.wait_for(timeout=60_000)

            # a box dragged over the middle of the map (the toolbar's Box Select) selects the
            # training points under it
            chart = page.locator(".js-plotly-plot", has=page.locator(".scatterlayer")).first
            chart.hover()
            chart.locator('.modebar-btn[data-val="select"]').click()
            area = chart.locator(".nsewdrag").first.bounding_box()
            page.mouse.move(area["x"] + 0.3 * area["width"], area["y"] + 0.3 * area["height"])
            page.mouse.down()
            page.mouse.move(area["x"] + 0.7 * area["width"], area["y"] + 0.7 * area["height"], steps=12)
            page.mouse.up()
            page.get_by_role("tab", name="Selection").click()
            selected = page.get_by_text(re.compile(r"^\d+ training points selected"))
            selected.wait_for(timeout=60_000)
            count = int(selected.inner_text().split()[0])
            assert 0 < count < N_TRAIN
            page.get_by_role("button", name="Send to the Noisy-labels review").wait_for(timeout=30_000)

            # drill into the most helpful group: its members are scored one by one (a job) and
            # drawn on the map in their own colours
            page.get_by_role("tab", name="Most helpful groups").click()
            page.get_by_role("button", name=re.compile(r"^Drill into group \d+$")).first.click()
            page.get_by_role("tab", name="Drill into a group").click()
            page.get_by_text("its members' own scores sum to", exact=False).wait_for(timeout=120_000)
            page.get_by_text("members of the chosen group").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # let the member thumbnails finish drawing
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
