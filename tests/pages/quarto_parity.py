"""Compare a site built by `lab render` with one built by `quarto render` of the same sources.

Both renderers use Quarto's URLs (publish/layout.py), so pages are compared by path: the page set, each
page's title, its figure files and numbered captions, the resolved cross-references, no progress-bar text,
and the generated Home and Runs content. Pages only the blog engine makes (archive, categories), redirects
and the search/404 pages are lab-only by design and left out.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"


def quarto_binary() -> str | None:
    for candidate in (os.environ.get("QUARTO"), shutil.which("quarto"), "/opt/quarto/bin/quarto"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_quarto() -> str:
    quarto = quarto_binary()
    if quarto is None:
        pytest.skip("Quarto is not installed (no $QUARTO, no quarto on PATH, no /opt/quarto/bin/quarto): "
                    "install it (quarto.org, or bash ../shared/quarto/install.sh /opt/quarto) to run the "
                    "quarto render parity tests")
    return quarto


def quarto_render(root: Path, env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`quarto render` in `root` as a user runs it (QUARTO_PYTHON = our venv), stdout+stderr captured."""
    e = dict(os.environ)
    e.update(env or {})
    e["QUARTO_PYTHON"] = str(PYTHON if PYTHON.is_file() else shutil.which("python3"))
    e["PWD"] = str(root)  # _environment's PYTHONPATH=${PWD}
    e.pop("PYTHONPATH", None)  # what _environment sets is under test
    return subprocess.run([require_quarto(), "render"], cwd=root, env=e, capture_output=True, text=True,
                          timeout=timeout)


LAB_ONLY = re.compile(r"^(404\.html|search/|assets/|log/archive/|log/category/|log/index\.html|site_libs/)")


def _is_redirect(path: Path) -> bool:
    return path.stat().st_size < 2000 and 'http-equiv="refresh"' in path.read_text(errors="replace")


def pages(site: Path) -> dict[str, str]:
    """Site path -> HTML of every page both renderers make (log.html: lab redirects it to the blog index)."""
    out = {}
    for path in sorted(site.rglob("*.html")):
        rel = path.relative_to(site).as_posix()
        if rel == "log.html":
            out[rel] = ""
            continue
        if LAB_ONLY.match(rel) or _is_redirect(path):
            continue
        out[rel] = path.read_text(encoding="utf-8", errors="replace")
    return out


def _text(fragment: str) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", "", fragment)).replace("\xa0", " ")
    return " ".join(text.split())


def title(page: str) -> str:
    m = re.search(r"<h1[^>]*>(.*?)</h1>", page, re.S)
    return _text(m.group(1)).rstrip("¶").strip() if m else ""


def captions(page: str) -> list[str]:
    """Numbered figure captions ("Figure 2: ...") in page order."""
    found = [_text(m) for m in re.findall(r"<figcaption[^>]*>(.*?)</figcaption>", page, re.S)]
    return [c.split(":", 1)[0] for c in found if re.match(r"(Figure|Table) \d+:", c)]


def crossrefs(page: str) -> list[str]:
    """Text of links to #fig-/#tbl-/#sec- anchors (resolved cross-references), not the headings' own
    permalinks or the table of contents (their links point at #sec- anchors too)."""
    links = re.findall(r'<a([^>]+href="#(?:fig|tbl|sec)-[^"]*"[^>]*)>(.*?)</a>', page, re.S)
    return [_text(t) for attrs, t in links if not re.search(r'headerlink|md-nav|nav-link|toc-', attrs)]


def figures(site: Path) -> set[str]:
    return {p.relative_to(site).as_posix() for p in site.rglob("*_files/figure-html/*.png")}


PROGRESS = re.compile(r"\d+%\|[^|]*\|\s*\d+/\d+|it/s\]")


def compare(lab_site: Path, quarto_site: Path) -> dict[str, dict]:
    """Every difference between the two sites, as {what: {page: (lab, quarto)}}; empty = same site."""
    lab, quarto = pages(lab_site), pages(quarto_site)
    diffs: dict[str, dict] = {}
    if set(lab) != set(quarto):
        diffs["pages"] = {"lab only": sorted(set(lab) - set(quarto)), "quarto only": sorted(set(quarto) - set(lab))}
    for rel in sorted(set(lab) & set(quarto)):
        for what, fn in (("title", title), ("captions", captions), ("crossrefs", crossrefs)):
            a, b = fn(lab[rel]), fn(quarto[rel])
            if a != b:
                diffs.setdefault(what, {})[rel] = (a, b)
    for name, site_pages in (("lab", lab), ("quarto", quarto)):
        noisy = [rel for rel, text in site_pages.items() if PROGRESS.search(_text(text))]
        if noisy:
            diffs[f"progress text ({name})"] = noisy
    if figures(lab_site) != figures(quarto_site):
        diffs["figures"] = {"lab only": sorted(figures(lab_site) - figures(quarto_site)),
                            "quarto only": sorted(figures(quarto_site) - figures(lab_site))}
    return diffs


# A link-closed part of the project (its pages link only to each other and the top pages): what the parity
# test and bench/bench_render.py --quarto render by default, to keep within the suite's time.
SUBSET = ["log/2026-11-22-1930-flannel-1-first-look.qmd", "lore/dead-tokens.qmd", "lore/origin-or-centroid.qmd",
          "lore/step-one.qmd"]

COPY_IGNORE = shutil.ignore_patterns("site", ".lab", "store", ".git", ".venv", "test-artifacts", "*.egg-info", "tests",
                                     "bench", ".quarto-install", ".quarto", "_freeze", "__pycache__",
                                     ".pytest_cache", ".ruff_cache", ".hypothesis")


def copy_project(dest: Path, keep: list[str] | None = None) -> Path:
    """The project as a fresh clone has it (sources, settings, plan, code; no store, site or caches) in `dest`;
    with `keep`, only those log/ and lore/ sources (the top pages always)."""
    shutil.copytree(ROOT, dest, ignore=COPY_IGNORE)
    if keep is not None:
        for section in ("log", "lore"):
            for path in (dest / section).iterdir():
                if path.is_file() and f"{section}/{path.name}" not in keep:
                    path.unlink()
    return dest


def generated_content(site: Path) -> dict[str, bool]:
    home = (site / "index.html").read_text(encoding="utf-8")
    runs = (site / "runs.html").read_text(encoding="utf-8")
    return {"home cards": "lab-findings" in home and "Findings" in home,
            "home latest": "Latest log entries" in home,
            "runs": ("Used by:" in runs) or ("No complete runs" in runs)}
