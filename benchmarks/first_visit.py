"""A newcomer's first visit: `make app`'s server on a fresh cache, Home opened in Debian's
headless Chromium, timed until the page is interactive (the demo model trained, its test
accuracy shown). Prints JSON: seconds to the server's health check, to the first paint of
the page, and to the interactive Home page, from the server's start. Target: under 30 s on
a quiet machine.

    python benchmarks/first_visit.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "app"))
from test_browser import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402  # the browser test's settings


def one_visit() -> dict:
    port = free_port()
    cache = tempfile.mkdtemp(prefix="gda-first-visit-")
    env = {**os.environ, "GDA_CACHE_DIR": cache}
    started = time.perf_counter()
    # the flags of `make app` (the rest comes from .streamlit/config.toml)
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    times = {}
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.1)
        times["server_ready_s"] = time.perf_counter() - started
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_text("Home", exact=True).first.wait_for(timeout=120_000)
            times["first_paint_s"] = time.perf_counter() - started
            page.get_by_text("Test accuracy").wait_for(timeout=300_000)
            times["interactive_s"] = time.perf_counter() - started
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    return {k: round(v, 2) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    visits = [one_visit() for _ in range(args.repeats)]
    median = {key: round(statistics.median(v[key] for v in visits), 2) for key in visits[0]}
    print(json.dumps({"repeats": args.repeats, "visits": visits, "median": median,
                      "load_average": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(),
                      "target": "interactive under 30 s on a quiet machine",
                      "met": median["interactive_s"] < 30}, indent=2))


if __name__ == "__main__":
    main()
