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
    assert page.locator("figure:has(img) figcaption", has_text="The first curve").count() == 1
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


# ---------------------------------------------------------------------------------------------- Quarto markdown

ENTRY = "log/2026-11-20-0930-first-look.html"


def _serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def quarto_site_url(tmp_path_factory):
    """The fixture rendered by `quarto render` (skipped, with the reason, without Quarto)."""
    from tests.pages.quarto_parity import quarto_render, require_quarto

    require_quarto()
    root = tmp_path_factory.mktemp("quarto-browser") / "notebook"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("site", ".lab", "store", "__pycache__"))
    done = quarto_render(root, env={"LAB_STORE": str(root / "store")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    server = _serve(root / "site")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _side_by_side(page, selector: str) -> None:
    """Two loaded images of one row: same top, the second to the right of the first."""
    images = page.locator(selector)
    assert images.count() == 2
    boxes = [images.nth(i).bounding_box() for i in range(2)]
    assert all(images.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 100)"))
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 40 and boxes[1]["x"] > boxes[0]["x"] + boxes[0]["width"] / 2, boxes


def test_quarto_markdown_renders_in_our_site(browser, site_url):
    page, problems = open_page(browser, f"{site_url}/{ENTRY}")
    text = page.locator("article").inner_text()
    assert "add up to 55, which is 5.5 times ten." in text  # inline values
    note = page.locator(".admonition.note")  # callout with its title
    assert "The seeds reported" in note.locator(".admonition-title").inner_text()
    assert "Seed 0 gives 55" in note.inner_text()
    warning = page.locator("details.warning")  # collapsed until opened
    assert not warning.evaluate("d => d.open")
    body = warning.locator("p", has_text="Folded away")
    assert not body.is_visible()
    warning.locator("summary").click()
    body.wait_for(state="visible")
    _side_by_side(page, "figure.lab-layout img")  # layout-ncol: 2
    assert page.locator("#fig-panels-1 figcaption").inner_text() == "(a) Linear axes"
    page.locator("article a[href='#fig-panels-2']").click()  # cross-reference to a panel
    assert page.evaluate("location.hash") == "#fig-panels-2"
    assert page.locator("article a[href='#sec-curves']", has_text="Section").inner_text() == "Section\xa02"
    footnotes = page.locator(".footnote li")  # both footnotes, listed at the end
    assert footnotes.count() == 2 and "Gauss did it in his head." in footnotes.nth(1).inner_text()
    page.locator("a.footnote-ref").first.click()
    assert page.evaluate("location.hash") == "#fn:decay"
    cite = page.locator(".citation a").first
    assert cite.inner_text() == "Kingma and Ba 2014"
    cite.click()
    assert page.locator("#ref-kingma2014adam").is_visible()
    assert "Adam: A Method for Stochastic Optimization" in page.locator("#ref-kingma2014adam").inner_text()
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "fixture-quarto-markdown-lab")
    assert problems == []


def test_quarto_markdown_renders_in_quartos_site(browser, quarto_site_url):
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.goto(f"{quarto_site_url}/{ENTRY}", wait_until="networkidle")
    text = page.locator("main").inner_text()
    assert "add up to 55, which is 5.5 times ten." in text
    note = page.locator(".callout-note")
    assert "The seeds reported" in note.locator(".callout-title-container").inner_text()
    assert "Seed 0 gives 55" in note.inner_text()
    warning = page.locator(".callout-warning")
    body = warning.locator("p", has_text="Folded away")
    assert not body.is_visible()
    warning.locator(".callout-header").click()
    body.wait_for(state="visible")
    _side_by_side(page, "#fig-panels img")
    assert "(a) Linear axes" in page.locator("#fig-panels-1 figcaption").inner_text()
    assert page.locator("main a[href$='#sec-curves']", has_text="Section").inner_text() == "Section\xa02"
    assert page.locator("main a.quarto-xref[href$='#fig-panels-2']").inner_text() == "Figure\xa02 (b)"
    footnotes = page.locator("#footnotes li")
    assert footnotes.count() == 2 and "Gauss did it in his head." in footnotes.nth(1).inner_text()
    assert page.locator(".citation a").first.inner_text() == "Kingma and Ba 2014"
    assert "Adam: A Method for Stochastic Optimization" in page.locator("#ref-kingma2014adam").inner_text()
    shot(page, "fixture-quarto-markdown-quarto")
    # Quarto's own page asks a CDN for MathJax (html-math-method: mathjax), and the browser for a favicon
    # the site has none of; nothing else may fail
    local = [p for p in problems if "https://" not in p and not p.endswith("/favicon.ico")]
    assert local == [], problems


def test_callouts_material_lacks_have_quartos_colours(browser, site_url):
    page, problems = open_page(browser, f"{site_url}/lore/plain.html")
    important = page.locator(".admonition.important")
    assert important.locator(".admonition-title").inner_text() == "Important"
    assert important.evaluate("e => getComputedStyle(e).borderLeftColor") == "rgb(220, 53, 69)"
    caution = page.locator("details.caution")
    assert caution.evaluate("d => d.open") and "Open, and can be folded" in caution.locator("summary").inner_text()
    assert caution.evaluate("e => getComputedStyle(e).borderLeftColor") == "rgb(253, 126, 20)"
    shot(page, "fixture-callouts")
    assert problems == []
