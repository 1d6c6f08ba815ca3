"""Screenshot of a running portal for the README: python scripts/screenshot.py OUT.png [URL].

Logs in with the demo account and captures the demo model's page in Debian's Chromium.
"""

from __future__ import annotations

import os
import sys

from playwright.sync_api import sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS


def main(out: str, url: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 1000})
        page.goto("/accounts/login/")
        page.fill("input[name=username]", os.environ.get("DEMO_USERNAME", "admin"))
        page.fill("input[name=password]", os.environ.get("DEMO_PASSWORD", "admin"))
        page.click("button[type=submit]")
        page.goto("/models/iris-classifier/")
        page.screenshot(path=out, full_page=False)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8000")
