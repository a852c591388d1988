"""The built fixture site in a real browser: Debian's headless Chromium driven by Playwright.

Served on 127.0.0.1 by a local http.server; Chromium runs with no background networking, so anything the
site tried to fetch from the web would fail and show up as a console error or a failed request.
Screenshots are kept under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from publish.render import render

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "notebook"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
if not Path(CHROMIUM).is_file():
    pytestmark.append(pytest.mark.skip(reason="Debian chromium not installed (bash scripts/setup.sh --tests)"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser") / "notebook"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("site", ".lab", "store", "__pycache__"))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LAB_STORE", str(root / "store"))
            assert render(root, jobs=2) == 0, out.getvalue()
    handler = functools.partial(_Quiet, directory=str(root / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900})
        yield context
        context.close()


def open_page(browser, url: str):
    """A page plus the console errors and failed requests seen while loading `url`."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.goto(url, wait_until="networkidle")
    return page, problems


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_entry_typesets_math_and_loads_figures(browser, site_url):
    page, problems = open_page(browser, f"{site_url}/log/2026-11-20-0930-first-look.html")
    page.wait_for_selector("mjx-container", timeout=15_000)  # MathJax, from the site itself
    assert page.locator("mjx-container").count() >= 2  # inline math in the text and in the caption
    images = page.locator("article img")
    assert images.count() >= 1
    widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 100 for w in widths), widths
    assert "The first curve" in page.locator("figcaption").first.inner_text()
    shot(page, "fixture-log-entry")
    assert problems == []


@pytest.mark.parametrize("path,name", [("", "home"), ("log/index.html", "log"), ("lore/curve.html", "lore-curve"),
                                       ("runs.html", "runs"), ("log/2026-11-21-1415-second-look.html", "percent-entry")])
def test_pages_load_without_errors(browser, site_url, path, name):
    page, problems = open_page(browser, f"{site_url}/{path}")
    assert page.locator(".md-content h1").count() >= 1
    shot(page, f"fixture-{name}")
    assert problems == []


def test_home_thumbnail_links_to_the_finding(browser, site_url):
    page, problems = open_page(browser, f"{site_url}/")
    thumb = page.locator(".lab-findings img").first
    assert thumb.evaluate("i => i.naturalWidth") > 100
    page.locator(".lab-findings a", has_text="The curve").first.click()
    page.wait_for_url("**/lore/curve.html")
    assert "The curve" in page.locator("article h1").inner_text()
    assert problems == []


def test_search_finds_a_known_page(browser, site_url):
    page, problems = open_page(browser, f"{site_url}/")
    page.locator("label.md-search__icon, .md-search__input").first.click()
    # typed key by key: the theme listens for key events, not for a programmatic fill
    page.locator("input.md-search__input").press_sequentially("zanzibarite", delay=30)
    result = page.locator(".md-search-result__item", has_text="A plain page")
    result.first.wait_for(timeout=15_000)
    shot(page, "fixture-search")
    assert problems == []
