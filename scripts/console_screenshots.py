"""Screenshots of a running review console (docs/console-overview.png, docs/console-record.png).

    zeroproof run --keep            # in one terminal: a run to look at
    python scripts/console_screenshots.py http://127.0.0.1:8080/ docs/

Drives Debian's chromium through Playwright (no browser download), like the browser tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main(url: str, out: Path) -> int:
    from playwright.sync_api import sync_playwright

    base = url.rstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(base + "/")
        page.wait_for_selector("svg.chart")
        page.screenshot(path=str(out / "console-overview.png"), full_page=True)
        page.goto(base + "/queue")
        page.screenshot(path=str(out / "console-queue.png"), full_page=False)
        page.click("#queue a.rec >> nth=0")
        page.wait_for_selector("#elements")
        page.screenshot(path=str(out / "console-record.png"), full_page=True)
        browser.close()
    print(f"wrote {out}/console-overview.png, console-queue.png, console-record.png")
    return 0


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/"
    sys.exit(main(url, Path(sys.argv[2] if len(sys.argv) > 2 else "docs")))
