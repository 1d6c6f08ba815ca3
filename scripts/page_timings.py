"""Page-ready times of a running portal, each page on a fresh browser session (empty cache).

    PYTHONPATH=. .venv/bin/python scripts/page_timings.py [--url http://127.0.0.1:8000] [--runs 3]

Against `make run` (or `manage.py runportal`) with its demo data, signed in as the demo account.
For every page and run, a new browser context (no cached files, the session cookie only)
opens the page and reports, from the browser's own performance timing: the first byte of
the page, DOMContentLoaded, the load event and, on chart pages, the moments the charts on
screen are shown (the "charts-visible" mark of static/monitoring/charts.js: their SVG
sketches) and all the charts are plotly's, interactive (its "charts-drawn" mark), plus the
bytes transferred. A page is ready when what is on screen is drawn: its charts on screen on
chart pages, DOMContentLoaded elsewhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from playwright.sync_api import Browser, sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

# Chart pages, then the others; the evaluation page's address is found on the compare page.
CHART_PAGES = ["/monitoring/", "/models/iris-classifier/", "/models/iris-classifier/compare/", "EVALUATION"]
OTHER_PAGES = ["/", "/models/iris-classifier/versions/2/", "/jobs/", "/usage/", "/tokens/", "/api/v1/docs/"]

TIMING = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const at = (name) => (performance.getEntriesByName(name)[0] || {startTime: null}).startTime;
  const bytes = performance.getEntriesByType("resource").reduce((sum, r) => sum + r.transferSize, nav.transferSize);
  return {ttfb: nav.responseStart, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
          visible: at("charts-visible"), charts: at("charts-drawn"), bytes: bytes};
}"""


# When every chart is drawn: the "charts-drawn" mark, or else the first animation frame in
# which each chart holds plotly's drawing or was found empty.
DRAWN = """() => {
  const mark = performance.getEntriesByName("charts-drawn")[0];
  if (mark) return mark.startTime;
  const charts = Array.from(document.querySelectorAll("[data-figure]"));
  const drawn = (el) => el.dataset.hasData === "false" || (el.dataset.hasData && el.querySelector(".main-svg"));
  const done = charts.every(drawn);
  return done ? performance.now() : false;
}"""


def signed_in_state(browser: Browser, url: str, username: str, password: str) -> dict[str, Any]:
    """The cookies of a signed-in session, to start each fresh context with."""
    context = browser.new_context(base_url=url)
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url.rstrip('/')}/")
    state = context.storage_state()
    context.close()
    return dict(state)


def evaluation_path(browser: Browser, url: str, state: dict[str, Any]) -> str | None:
    context = browser.new_context(base_url=url, storage_state=state)  # type: ignore[arg-type]
    page = context.new_page()
    page.goto("/models/iris-classifier/compare/")
    link = page.locator("a[href*='/evaluations/']").first
    path = link.get_attribute("href") if link.count() else None
    context.close()
    return path


def measure(browser: Browser, url: str, state: dict[str, Any], path: str) -> dict[str, Any]:
    """One fresh-session view of a page: its timings in milliseconds from the navigation's start."""
    context = browser.new_context(base_url=url, storage_state=state, viewport={"width": 1280, "height": 900})  # type: ignore[arg-type]
    page = context.new_page()
    response = page.goto(path, wait_until="load")
    if response is None or response.status != 200:
        context.close()
        raise SystemExit(f"{path}: HTTP {response.status if response else 'no response'}")
    drawn = None
    if page.locator("[data-figure]").count():
        drawn = page.wait_for_function(DRAWN, polling="raf", timeout=30_000).json_value()
    timing = dict(page.evaluate(TIMING))
    # Pages without the marks (an older portal) are timed by watching their charts appear.
    timing["charts"] = timing["charts"] if timing["charts"] is not None else drawn
    timing["visible"] = timing["visible"] if timing["visible"] is not None else drawn
    context.close()
    return timing


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default=os.environ.get("DEMO_USERNAME", "admin"))
    parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD", "admin"))
    parser.add_argument("--runs", type=int, default=3, help="fresh sessions per page (the median is shown)")
    args = parser.parse_args()
    url = args.url.rstrip("/") + "/"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        state = signed_in_state(browser, url, args.user, args.password)
        chart_pages = [p for p in CHART_PAGES if p != "EVALUATION"]
        evaluation = evaluation_path(browser, url, state)
        if evaluation:
            chart_pages.append(evaluation)
        # A first view of the portal warms its processes (the numbers are about the browser's side).
        measure(browser, url, state, "/")
        print(
            f"{'page':48} {'first byte':>10} {'DOM ready':>10} {'load':>8} {'on screen':>10} {'interactive':>11} "
            f"{'ready':>8} {'KB':>7}"
        )
        for kind, pages in (("chart", chart_pages), ("other", OTHER_PAGES)):
            for path in pages:
                runs = [measure(browser, url, state, path) for _ in range(args.runs)]

                def median(key: str, runs: list[dict[str, Any]] = runs) -> float | None:
                    values = [r[key] for r in runs if r[key] is not None]
                    return statistics.median(values) if values else None

                visible, charts = median("visible"), median("charts")
                ready = visible if kind == "chart" and visible is not None else median("dcl")
                print(
                    f"{path:48} {median('ttfb'):10.0f} {median('dcl'):10.0f} {median('load'):8.0f} {_ms(visible):>10} "
                    f"{_ms(charts):>11} {ready:8.0f} {median('bytes') / 1024:7.0f}"
                )
        browser.close()
    print(f"milliseconds from the navigation's start, median of {args.runs} fresh sessions per page", file=sys.stderr)


if __name__ == "__main__":
    main()
