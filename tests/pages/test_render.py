"""End to end: the fixture notebook (tests/fixtures/notebook) rendered by `lab render` into a site.

One render is shared by the read-only assertions (module fixture); the tests that edit sources work on
their own copy.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from publish.render import render

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "notebook"

pytestmark = pytest.mark.slow


def copy_fixture(dest: Path) -> Path:
    root = dest / "notebook"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("site", ".lab", "store", "__pycache__"))
    return root


def statuses(out: str) -> dict[str, str]:
    """`executed  log/x.qmd  1.2s` lines of the render report -> {source: status}."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"^(executed|reused|static|failed)\s+(\S+)\s", line)
        if m:
            found[m[2]] = m[1]
    return found


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(root, site, first render's stdout) of the fixture rendered once."""
    root = copy_fixture(tmp_path_factory.mktemp("e2e"))
    os.environ["LAB_STORE"] = str(root / "store")
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = render(root, jobs=2)
        assert rc == 0, buf.getvalue()
    finally:
        os.environ.pop("LAB_STORE", None)
    return root, root / "site", buf.getvalue()


def html(site: Path, rel: str) -> str:
    return (site / rel).read_text(encoding="utf-8")


def test_first_render_executes_each_code_document(built):
    _, _, out = built
    st = statuses(out)
    assert st["log/2026-11-20-0930-first-look.qmd"] == "executed"
    assert st["log/2026-11-21-1415-second-look.py"] == "executed"
    assert st["lore/curve.qmd"] == "executed"
    assert st["lore/plain.qmd"] == "static"
    assert "0 failed" in out
    # each execution announces itself when it starts, so a long one is visibly under way
    for rel in ("log/2026-11-20-0930-first-look.qmd", "log/2026-11-21-1415-second-look.py", "lore/curve.qmd"):
        assert re.search(rf"^running\s+{re.escape(rel)}\s+\(not cached\)$", out, re.M), rel


def test_log_lists_entries_newest_first_with_time_categories_and_archive(built):
    _, site, _ = built
    page = html(site, "log/index.html")
    assert page.index("Second look") < page.index("First look")
    assert "2026-11-21 14:15" in page and "2026-11-20 09:30" in page
    assert (site / "log/category/flannel.html").is_file()
    radius = html(site, "log/category/radius.html")
    assert "First look" in radius and "Second look" in radius
    assert (site / "log/archive/2026/11.html").is_file()


def test_rss_feed_has_every_entry(built):
    _, site, _ = built
    feed = ET.parse(site / "feed_rss_created.xml").getroot()
    titles = [item.findtext("title") for item in feed.iter("item")]
    assert sorted(titles) == ["First look", "Second look"]
    links = [item.findtext("link") for item in feed.iter("item")]
    assert all(link.startswith("https://example.org/fixture/log/2026-") for link in links)
    assert 'href="../feed_rss_created.xml"' in html(site, "log/index.html")


def test_figures_exist_are_referenced_and_captioned(built):
    _, site, _ = built
    page_dir = site / "log"
    page = (page_dir / "2026-11-20-0930-first-look.html").read_text(encoding="utf-8")
    srcs = re.findall(r'<img[^>]*src="([^"]+\.png)"', page)
    assert srcs, "no figure on the page"
    for src in srcs:
        target = (page_dir / src).resolve()
        assert target.is_file() and target.stat().st_size > 1000, src
    assert re.search(r"<figcaption>.*The first curve", page, re.S)
    assert 'id="fig-first"' in page  # the chunk label is an anchor


def test_echo_and_code_fold(built):
    _, site, _ = built
    entry = html(site, "log/2026-11-20-0930-first-look.html")
    assert "TOTAL=55" in entry
    assert "sum(range(1, 11))" not in entry  # echo: false hides the code
    lore = html(site, "lore/curve.html")
    assert re.search(r"<details[^>]*>\s*<summary>Code</summary>", lore)  # code-fold: true


def test_links_become_page_links_and_backlinks(built):
    _, site, _ = built
    entry = html(site, "log/2026-11-20-0930-first-look.html")
    assert 'href="../lore/curve.html"' in entry
    curve = html(site, "lore/curve.html")
    backlinks = curve[curve.index("Mentioned in"):]
    assert "First look" in backlinks
    plain = html(site, "lore/plain.html")
    backlinks = plain[plain.index("Mentioned in"):]
    assert "Second look" in backlinks and "The curve" in backlinks


def test_executed_pages_say_when_and_which_runs(built):
    _, site, _ = built
    curve = html(site, "lore/curve.html")
    assert re.search(r"Executed \d{4}-\d{2}-\d{2} \d{2}:\d{2}", curve)
    assert "runs used: none" in curve
    assert "Executed" not in html(site, "lore/plain.html")


def test_home_links_findings_with_thumbnails_and_latest_entries(built):
    _, site, _ = built
    home = html(site, "index.html")
    findings = home[home.index("Findings"):]
    assert "The curve" in findings and "A plain page" in findings
    assert re.search(r'<img[^>]*src="lore/curve_files/figure-html/fig-curve-output-1\.png"', findings)
    assert home.index("Second look") < home.index("First look")


def test_lore_index_and_runs_page(built):
    _, site, _ = built
    lore = html(site, "lore.html")
    assert "The curve" in lore and "A plain page" in lore
    assert "No complete runs" in html(site, "runs.html")


def test_math_is_served_from_the_site_and_nothing_from_the_web(built):
    _, site, _ = built
    assert (site / "assets/mathjax/tex-svg.js").is_file()
    assert "arithmatex" in html(site, "log/2026-11-20-0930-first-look.html")
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r'(?:src|href)="(https?://[^"]+)"', text)
        # Links a reader clicks are fine; assets the browser would fetch are not.
        assets = [u for u in remote if re.search(r"\.(js|css|woff2?|ttf|png|svg|jpg)(\?|$)", u)]
        assert not assets, f"{page}: remote assets {assets}"
        assert "fonts.googleapis" not in text, page


def test_second_render_executes_nothing_and_keeps_the_site(tmp_path, capsys, monkeypatch):
    root = copy_fixture(tmp_path)
    monkeypatch.setenv("LAB_STORE", str(root / "store"))
    assert render(root, jobs=2) == 0
    capsys.readouterr()
    before = tree_digest(root / "site")

    assert render(root, jobs=2) == 0
    out = capsys.readouterr().out
    assert "0 executed" in out and set(statuses(out).values()) <= {"reused", "static"}
    assert tree_digest(root / "site") == before

    # One entry edited: that entry runs again, and the two listing pages that read it (Home, Lore: their
    # chunks read every source through publish.listings, so the cache records the sources as files read)
    entry = root / "log/2026-11-21-1415-second-look.py"
    entry.write_text(entry.read_text().replace("6 * 7", "6 * 8"))
    assert render(root, jobs=2) == 0
    st = statuses(capsys.readouterr().out)
    assert sorted(k for k, v in st.items() if v == "executed") == [
        "index.qmd", "log/2026-11-21-1415-second-look.py", "lore.qmd"]
    assert "SECOND-ENTRY-OUTPUT 48" in html(root / "site", "log/2026-11-21-1415-second-look.html")

    # The imported project module edited: exactly the two documents that import it run again.
    helpers = root / "helpers.py"
    helpers.write_text(helpers.read_text().replace("SCALE = 2.0", "SCALE = 3.0"))
    assert render(root, jobs=2) == 0
    st = statuses(capsys.readouterr().out)
    assert sorted(k for k, v in st.items() if v == "executed") == [
        "log/2026-11-20-0930-first-look.qmd", "lore/curve.qmd"]

    # Another smoke profile is another computation: nothing cached under the old one is reused.
    monkeypatch.setenv("LAB_SMOKE", "1")
    assert render(root, jobs=2) == 0
    st = statuses(capsys.readouterr().out)
    assert sorted(k for k, v in st.items() if v == "executed") == [
        "index.qmd", "log/2026-11-20-0930-first-look.qmd", "log/2026-11-21-1415-second-look.py", "lore.qmd",
        "lore/curve.qmd", "runs.qmd"]


def test_render_only_named_documents(tmp_path, capsys, monkeypatch):
    root = copy_fixture(tmp_path)
    monkeypatch.setenv("LAB_STORE", str(root / "store"))
    monkeypatch.chdir(root)
    assert render(root, jobs=2) == 0
    # Both documents edited, only one named: the other keeps its cached (stale) page.
    for rel in ("lore/curve.qmd", "log/2026-11-21-1415-second-look.py"):
        p = root / rel
        p.write_text(p.read_text() + "\n")
    capsys.readouterr()
    assert render(root, ["lore/curve.qmd"], jobs=1) == 0
    out = capsys.readouterr().out
    st = statuses(out)
    assert [k for k, v in st.items() if v == "executed"] == ["lore/curve.qmd"]
    assert st["log/2026-11-21-1415-second-look.py"] == "reused"
    assert "stale, not executed: source changed" in out

    # --force re-executes what matches, cached or not.
    assert render(root, jobs=2, force=["lore/*"]) == 0
    st = statuses(capsys.readouterr().out)
    assert st["lore/curve.qmd"] == "executed"
    assert st["log/2026-11-21-1415-second-look.py"] == "executed"  # stale: a full render runs it
    assert st["log/2026-11-20-0930-first-look.qmd"] == "reused"


@pytest.mark.parametrize("breakage", ["raising chunk", "broken link", "bad date", "unknown option"])
def test_bad_input_fails_and_strict_leaves_the_site_untouched(tmp_path, capsys, monkeypatch, breakage):
    root = copy_fixture(tmp_path)
    monkeypatch.setenv("LAB_STORE", str(root / "store"))
    assert render(root, jobs=2) == 0
    before = tree_digest(root / "site")
    capsys.readouterr()

    entry = root / "log/2026-11-20-0930-first-look.qmd"
    text = entry.read_text()
    if breakage == "raising chunk":
        text = text.replace('print(f"TOTAL={total}")', 'raise ValueError("planted failure")')
    elif breakage == "broken link":
        text = text.replace("../lore/curve.qmd", "../lore/no-such-page.qmd")
    elif breakage == "bad date":
        text = text.replace('date: "2026-11-20 09:30"', 'date: "the twentieth"')
    else:
        text = text.replace("#| echo: false", "#| echo: false\n#| colour: blue")
    entry.write_text(text)

    assert render(root, jobs=2, strict=True) != 0  # all or nothing (without --strict, see test_cold.py)
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "log/2026-11-20-0930-first-look.qmd" in err
    expected = {"raising chunk": ["planted failure", "numbers"],  # traceback and the chunk's label
                "broken link": ["no-such-page.qmd"],
                "bad date": ["date"],
                "unknown option": ["colour"]}[breakage]
    for needle in expected:
        assert needle in err, (needle, err)
    assert tree_digest(root / "site") == before


def test_keep_going_publishes_the_rest_and_reports_every_failure(tmp_path, capsys, monkeypatch):
    root = copy_fixture(tmp_path)
    monkeypatch.setenv("LAB_STORE", str(root / "store"))
    for rel in ("log/2026-11-20-0930-first-look.qmd", "lore/curve.qmd"):
        p = root / rel
        p.write_text(p.read_text().replace("import helpers", "import helpers\nraise RuntimeError('boom " + rel + "')"))
    assert render(root, jobs=2, keep_going=True) == 1
    captured = capsys.readouterr()
    assert "boom log/2026-11-20-0930-first-look.qmd" in captured.err
    assert "boom lore/curve.qmd" in captured.err
    st = statuses(captured.out)
    assert st["log/2026-11-21-1415-second-look.py"] == "executed"
    assert "This page failed to execute" in html(root / "site", "lore/curve.html")


def test_quarto_markdown_features(built):
    """What the fixture entry writes in Quarto markdown renders as Quarto renders it (tests/pages/test_quarto.py
    compares with Quarto itself where it is installed)."""
    _, site, _ = built
    entry = html(site, "log/2026-11-20-0930-first-look.html")
    # inline values, evaluated after the chunk that defines them
    assert "add up to 55, which is 5.5 times ten." in entry
    assert "{python}" not in entry
    # sections and panels cross-referenced with Quarto's numbers
    assert '<a href="#sec-curves">Section&nbsp;2</a>' in entry and '<a href="#sec-sum">Section&nbsp;1</a>' in entry
    assert '<a href="#fig-panels">Figure&nbsp;2</a>' in entry and '<a href="#fig-panels-2">Figure&nbsp;2 (b)</a>' in entry
    assert re.search(r'id="sec-curves"', entry)
    # a table chunk: numbered caption on top, referenced
    assert re.search(r'<figure class="lab-table">\s*<figcaption>Table&nbsp;1: Sums of the first '
                     r'<span class="arithmatex">\\\(n\\\)</span> numbers\.</figcaption>\s*<table>', entry)
    assert '<a href="#tbl-sums">Table&nbsp;1</a>' in entry
    # callouts: titled note, collapsed warning titled by its heading
    assert re.search(r'<div class="admonition note">\s*<p class="admonition-title">The seeds reported</p>\s*'
                     r"<p>Seed 0 gives 55; see", entry)
    assert re.search(r'<details class="warning">\s*<summary>Measured, not assumed</summary>', entry)
    # two panels side by side, each with its sub-caption, under one numbered caption
    layout = entry[entry.index('class="lab-layout"'):]
    layout = layout[:layout.index("Figure&nbsp;2: Two panels")]
    assert "grid-template-columns:repeat(2," in layout
    assert re.findall(r'<figure id="(fig-panels-\d)">', layout) == ["fig-panels-1", "fig-panels-2"]
    assert "(a) Linear axes" in layout and "(b) Log axes" in layout
    for n in (1, 2):
        png = site / f"log/2026-11-20-0930-first-look_files/figure-html/fig-panels-output-{n}.png"
        assert png.is_file() and png.stat().st_size > 1000
    # footnotes, the [^label] one and the inline ^[...] one, listed under Footnotes
    notes = entry[entry.index('id="footnotes">Footnotes'):]
    assert re.findall(r'<li id="fn:[^"]+">', notes) and len(re.findall(r'<li id="fn:', notes)) == 2
    assert "Gauss\ndid it in his head" not in notes and "Gauss did it in his head." in notes
    assert 'class="footnote-ref" href="#fn:decay">1</a>' in entry
    # citations in pandoc's default style, linked to the References list
    assert ('(<a href="#ref-kingma2014adam" role="doc-biblioref">Kingma and Ba 2014</a>; '
            '<a href="#ref-loshchilov2019decoupled" role="doc-biblioref">Loshchilov and Hutter 2019</a>)') in entry
    assert 'Loshchilov and Hutter (<a href="#ref-loshchilov2019decoupled" role="doc-biblioref">2019</a>)' in entry
    refs = entry[entry.index(">References</h2>"):]
    assert re.search(r'id="ref-kingma2014adam"[^>]*>Kingma, Diederik P\., and Jimmy Ba\. 2014\. '
                     r"“Adam: A Method for Stochastic Optimization\.” <em>arXiv Preprint arXiv:1412\.6980</em>\.", refs)
    assert refs.index("ref-kingma2014adam") < refs.index("ref-loshchilov2019decoupled") < refs.index("Footnotes")


LAB = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "lab"
TINY = """\
project:
  type: website
  output-dir: site
  render:
    - /lore/*.qmd
website:
  title: "Tiny"
execute:
  freeze: false
"""


@pytest.mark.parametrize("body,line,needles", [
    ("```{python}\nx = 2\n```\n\nTwice is `{python} x * 2`, and `{python} y + 1` fails.\n", 9,
     ["inline `{python} y + 1`", "NameError", "'y' is not defined"]),
    ("Before.\n\n::: {.panel-tabset}\nTabs.\n:::\n", 7, ["fenced div", "panel-tabset"]),
    ("Cite [@nobody].\n", 5, ["citation @nobody", "no bibliography"]),
])
def test_lab_render_names_file_and_line_of_bad_quarto_markdown(tmp_path, body, line, needles):
    """As a user runs it: the installed `lab render` in a fresh process exits 1 and names file:line."""
    import subprocess

    root = tmp_path / "tiny"
    (root / "lore").mkdir(parents=True)
    (root / "_quarto.yml").write_text(TINY, encoding="utf-8")
    (root / "lore" / "a.qmd").write_text('---\ntitle: "A"\n---\n\n' + body, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["LAB_STORE"] = str(tmp_path / "store")
    done = subprocess.run([str(LAB), "render", "--strict"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"lore/a.qmd:{line}" in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)
    assert not (root / "site").exists()


def test_fig_width_and_height_set_the_figure_size(tmp_path, monkeypatch, capsys):
    """Front matter (or _quarto.yml's format: html:) fig-width / fig-height, in inches, are matplotlib's
    default size for the page, as under Quarto (the PNG is 200 dpi, cropped tight)."""
    from PIL import Image

    root = tmp_path / "tiny"
    (root / "lore").mkdir(parents=True)
    (root / "_quarto.yml").write_text(TINY + "format:\n  html:\n    fig-width: 4\n", encoding="utf-8")
    chunk = "```{python}\n#| label: fig-a\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n```\n"
    (root / "lore" / "a.qmd").write_text('---\ntitle: "A"\nfig-width: 3\nfig-height: 2\n---\n\n' + chunk)
    (root / "lore" / "b.qmd").write_text('---\ntitle: "B"\n---\n\n' + chunk)
    monkeypatch.setenv("LAB_STORE", str(tmp_path / "store"))
    assert render(root, jobs=1, strict=True) == 0, capsys.readouterr().err
    sizes = {}
    for page in ("a", "b"):
        png = root / f"site/lore/{page}_files/figure-html/fig-a-output-1.png"
        sizes[page] = Image.open(png).size
    (wa, ha), (wb, hb) = sizes["a"], sizes["b"]
    assert 520 <= wa <= 600 and 340 <= ha <= 400, sizes  # 3 x 2 in
    assert 700 <= wb <= 800 and hb > wb, sizes  # 4 in wide (project), 5 in high (Quarto's default)


def test_a_site_without_log_entries_builds_twice_in_one_process(tmp_path, capsys):
    """mkdocs reuses the blog plugin across builds in a process (lab preview, the tests); with no posts to
    re-create its temp dir, the second build used to fail removing it."""
    root = tmp_path / "tiny"
    (root / "lore").mkdir(parents=True)
    (root / "_quarto.yml").write_text(TINY, encoding="utf-8")
    (root / "lore" / "a.qmd").write_text('---\ntitle: "A"\n---\n\nText.\n', encoding="utf-8")
    assert render(root, jobs=1, strict=True) == 0, capsys.readouterr().err
    (root / "lore" / "a.qmd").write_text('---\ntitle: "A"\n---\n\nText, edited.\n', encoding="utf-8")
    assert render(root, jobs=1, strict=True) == 0, capsys.readouterr().err
    assert "Text, edited." in html(root / "site", "lore/a.html")
