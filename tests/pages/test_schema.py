"""Config that cannot be misspelt: `_quarto.yml` and front matter against Quarto's own schema (closed), through
the installed `lab` command: exit 2, one line naming the file, the line and the nearest valid key."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from publish import schema
from publish.sources import discover, load_project, read_document

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / ".venv" / "bin" / "lab"
FIXTURE = ROOT / "tests" / "fixtures" / "notebook"

QUARTO = """\
project:
  type: website
  output-dir: site
  render:
    - /index.qmd
    - /lore/*.qmd
website:
  title: "Schema test"
  search: true
  navbar:
    left:
      - href: index.qmd
        text: Home
      - href: lore/a.qmd
        text: A
format:
  html:
    toc: true
execute:
  freeze: false
  timeout: 60
"""
PAGE = """\
---
title: "A page"
categories: [x]
order: 2
---

Some text.
"""


def make(tmp_path: Path, quarto: str = QUARTO, page: str = PAGE) -> Path:
    root = tmp_path / "proj"
    (root / "lore").mkdir(parents=True)
    (root / "_quarto.yml").write_text(textwrap.dedent(quarto), encoding="utf-8")
    (root / "index.qmd").write_text("---\ntitle: Home\n---\n\nHello.\n", encoding="utf-8")
    (root / "lore" / "a.qmd").write_text(page, encoding="utf-8")
    return root


def lab_render(root: Path) -> subprocess.CompletedProcess:
    command = [str(LAB)] if LAB.is_file() else [sys.executable, "-m", "lab"]
    env = {**os.environ, "LAB_STORE": str(root / "store")}
    return subprocess.run([*command, "render", "--root", str(root)], capture_output=True, text=True, env=env,
                          timeout=300)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def line_of(root: Path, rel: str, needle: str) -> int:
    return next(n for n, t in enumerate((root / rel).read_text().splitlines(), 1) if needle in t)


def test_valid_project_with_lab_keys_renders(tmp_path):
    root = make(tmp_path)
    done = lab_render(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "site" / "lore" / "a.html").is_file()


@pytest.mark.parametrize("old, new, key, guess", [
    ("website:\n", "websiteX: 1\nwebsite:\n", "websiteX", "website"),
    ("  search: true", "  serach: false", "website.serach", "search"),
    ("    toc: true", "    tocc: true", "format.html.tocc", "toc"),
    ("    toc: true", "    code_fold: true", "format.html.code_fold", "code-fold"),
    ("  timeout: 60", "  timeuot: 60", "execute.timeuot", "timeout"),
    ("        text: A", "        txt: A", "website.navbar.left[1].txt", "text"),
    ("format:\n", "format:\n  hmtl: default\n", "format.hmtl", "html"),
])
def test_misspelt_quarto_key(tmp_path, old, new, key, guess):
    root = make(tmp_path, QUARTO.replace(old, new))
    line = one_line_error(lab_render(root))
    n = line_of(root, "_quarto.yml", key.split(".")[-1] + ":")
    assert line.startswith(f"lab render: error: {root / '_quarto.yml'}:{n}: unknown key '{key}'"), line
    assert f"did you mean '{guess}'?" in line, line


def test_wrong_value_names_key_and_line(tmp_path):
    root = make(tmp_path, QUARTO.replace("  search: true", '  search: "yes"'))
    line = one_line_error(lab_render(root))
    assert f"_quarto.yml:{line_of(root, '_quarto.yml', 'search:')}: website.search: \"yes\" must be boolean" in line


def test_navbar_link_to_missing_page(tmp_path):
    root = make(tmp_path, QUARTO.replace("href: lore/a.qmd", "href: lore/b.qmd"))
    line = one_line_error(lab_render(root))
    n = line_of(root, "_quarto.yml", "lore/b.qmd")
    assert f"_quarto.yml:{n}: website.navbar.left[1].href: 'lore/b.qmd' links to a page that does not exist" in line
    assert "did you mean 'lore/a.qmd'?" in line


def test_sidebar_link_to_missing_page(tmp_path):
    quarto = QUARTO.replace("format:\n", "  sidebar:\n    contents:\n      - index.qmd\n"
                                         "      - section: Lore\n        contents:\n          - lore/nope.qmd\n"
                                         "format:\n")
    root = make(tmp_path, quarto)
    line = one_line_error(lab_render(root))
    n = line_of(root, "_quarto.yml", "lore/nope.qmd")
    assert f"_quarto.yml:{n}: website.sidebar.contents[1].contents[0]: 'lore/nope.qmd' links to a page" in line


@pytest.mark.parametrize("old, new, key, guess", [
    ('title: "A page"', 'titel: "A page"', "titel", "title"),
    ("order: 2", "oder: 2", "oder", "order"),
    ("order: 2", "order: 2\nexecute:\n  ech: false", "execute.ech", "echo"),
])
def test_misspelt_front_matter_key(tmp_path, old, new, key, guess):
    root = make(tmp_path, page=PAGE.replace(old, new))
    line = one_line_error(lab_render(root))
    n = line_of(root, "lore/a.qmd", key.split(".")[-1] + ":")
    assert line.startswith(f"lab render: error: {root / 'lore' / 'a.qmd'}:{n}: unknown key '{key}'"), line
    assert f"did you mean '{guess}'?" in line, line


def test_project_and_fixture_pass_the_schema():
    # every source the project and the fixture notebook publish, and both _quarto.yml files
    for root in (ROOT, FIXTURE):
        load_project(root)
        for path in discover(root):
            read_document(path, root)


def test_vendored_schema_matches_installed_quarto(tmp_path):
    from tests.pages.quarto_parity import quarto_binary

    quarto = quarto_binary()
    if quarto is None:
        pytest.skip("Quarto is not installed: cannot check publish/quarto_schema.json against it")
    share = Path(quarto).resolve().parent.parent / "share"
    version = (share / "version").read_text().strip()
    vendored = schema._schemas()["quarto"]
    if version != vendored:
        pytest.skip(f"Quarto {version} installed, the schema is from {vendored}: run scripts/quarto_schema.py")
    out = tmp_path / "schema.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "quarto_schema.py"), str(share), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == schema.SCHEMA_FILE.read_bytes()


def test_nearest_key():
    assert schema.nearest("codeFold", ["code-fold", "code-tools"]) == "code-fold"
    assert schema.nearest("serach", ["search", "title"]) == "search"
    assert schema.nearest("zzzz", ["search", "title"]) is None
