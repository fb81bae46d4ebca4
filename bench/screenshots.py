"""Screenshot every page of the app as a user sees it (headless Debian chromium).

    python bench/screenshots.py                 # into screenshots/ (git-ignored), one PNG per page
    python bench/screenshots.py --readme        # also refresh assets/screenshots/predict.png

Starts its own fresh, offline server (so "Best available" is the demo model), opens each page from
the navigation in turn and waits until its run has finished before taking the picture.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.appserver import streamlit_server  # noqa: E402
from bench.browser import AppTab, browser_missing_reason, launch, registered_pages  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "screenshots"))
    parser.add_argument("--readme", action="store_true", help="refresh the README's screenshot")
    args = parser.parse_args(argv)
    reason = browser_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with streamlit_server() as server, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        tab = AppTab(page, server.url).open()
        for entry in registered_pages(ROOT):
            if entry.path != "pages/predict.py":
                tab.go_to(entry.title)
            path = out / f"{Path(entry.path).stem}.png"
            page.screenshot(path=str(path), full_page=True)
            print(f"{entry.title}: {path}")
            if args.readme and entry.path == "pages/predict.py":
                target = ROOT / "assets" / "screenshots" / "predict.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(target))  # the first screen, as a visitor sees it
        if tab.errors:
            print("browser console errors:\n  " + "\n  ".join(tab.errors), file=sys.stderr)
        browser.close()
    return 1 if tab.errors else 0


if __name__ == "__main__":
    sys.exit(main())
