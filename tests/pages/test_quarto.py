"""`quarto render` and `lab render` build the same site (skipped, with the reason, without Quarto): the fixture
notebook, and a LAB_SMOKE=1 copy of the whole project (slow); freeze that cannot lie in either renderer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from publish.render import render
from tests.pages.quarto_parity import (
    SUBSET,
    compare,
    copy_project,
    generated_content,
    pages,
    quarto_render,
    require_quarto,
    title,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "notebook"
LAB = REPO / ".venv" / "bin" / "lab"
FROZEN = "FROZEN-MARKER-FROM-AN-OLD-RENDER"


def plant_frozen_result(root: Path, rel: str) -> Path:
    """What `quarto render` with `freeze: auto` leaves in _freeze/ for `rel` (checked by hand against Quarto
    1.10.18: execute-results/html.json holds the md5 of the source text and the executed markdown), with a
    marker in place of the results. A renderer that reuses it publishes the marker."""
    source = root / rel
    folder = root / "_freeze" / Path(rel).with_suffix("") / "execute-results"
    folder.mkdir(parents=True)
    result = {"engine": "jupyter", "markdown": f"---\ntitle: \"Frozen\"\n---\n\n{FROZEN}\n",
              "supporting": [], "filters": [], "includes": {}}
    (folder / "html.json").write_text(json.dumps({"hash": hashlib.md5(source.read_bytes()).hexdigest(),
                                                  "result": result}))
    return folder


@pytest.fixture(scope="module")
def both_sites(tmp_path_factory):
    require_quarto()
    base = tmp_path_factory.mktemp("parity")
    lab_root, quarto_root = base / "lab", base / "quarto"
    shutil.copytree(FIXTURE, lab_root)
    shutil.copytree(FIXTURE, quarto_root)
    assert render(lab_root, jobs=2, strict=True) == 0
    frozen = plant_frozen_result(quarto_root, "lore/curve.qmd")
    done = quarto_render(quarto_root, env={"LAB_STORE": str(base / "store")})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return lab_root / "site", quarto_root / "site", frozen


def test_quarto_freeze_false_ignores_and_drops_old_frozen_results(both_sites):
    _, quarto, frozen = both_sites
    assert FROZEN not in (quarto / "lore/curve.html").read_text(encoding="utf-8")
    assert not (frozen / "html.json").exists()  # Quarto deletes a page's frozen results when freeze is off


def test_quarto_inputs_exclude_nothing_lab_renders_and_add_nothing(both_sites):
    lab, quarto, _ = both_sites
    assert set(pages(lab)) == set(pages(quarto))
    assert "log/2026-11-20-0930-first-look.html" in pages(quarto)


def test_same_site(both_sites):
    lab, quarto, _ = both_sites
    assert compare(lab, quarto) == {}


def test_generated_home_and_runs_in_both(both_sites):
    for site in both_sites[:2]:
        assert all(generated_content(site).values()), (site, generated_content(site))


def test_figures_numbered_in_both(both_sites):
    for site in both_sites[:2]:
        page = (site / "lore/curve.html").read_text(encoding="utf-8")
        assert "Figure&nbsp;1" in page or "Figure 1" in page, site


def test_crossreference_resolved_in_both(both_sites):
    from tests.pages.quarto_parity import crossrefs

    for site in both_sites[:2]:
        assert crossrefs((site / "lore/curve.html").read_text(encoding="utf-8")) == ["Figure 1"], site


# --------------------------------------------------------------------------- freeze that cannot lie (no Quarto)


def lab_cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(LAB)] if LAB.is_file() else [sys.executable, "-m", "lab"]
    return subprocess.run([*command, "render", "--root", str(root), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)


@pytest.mark.parametrize("where, old, new", [
    ("_quarto.yml", "  freeze: false", "  freeze: auto"),
    ("_quarto.yml", "  freeze: false", "  freeze: true"),
    ("_quarto.yml", "  freeze: false", "  freeze: false\n  cache: true"),  # jupyter-cache keys on code alone
    ("lore/curve.qmd", "description:", "execute:\n  freeze: auto\ndescription:"),
])
def test_lab_render_refuses_a_freeze_that_could_lie(tmp_path, where, old, new):
    root = tmp_path / "notebook"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("site", ".lab", "_freeze"))
    path = root / where
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    done = lab_cli(root)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{path}:" in done.stderr and ("freeze" in done.stderr or "cache" in done.stderr), done.stderr
    assert not (root / "site").exists()


def test_lab_cache_never_serves_a_smoke_page_on_the_real_site(project, put, monkeypatch):
    # two `lab render` processes, as a user runs them
    settings = 'website:\n  title: "Freeze"\n  site-url: "https://example.org/"\nexecute:\n  freeze: false\n'
    put(project, "_quarto.yml", (project / "_quarto.yml").read_text() + settings)
    put(project, "lore/env.qmd", """
        ---
        title: "Env"
        ---

        ```{python}
        import os
        print("PROFILE", os.environ.get("LAB_SMOKE") or "real")
        ```
        """)
    env = {"LAB_STORE": str(project / "store"), "LAB_SMOKE": "1"}
    done = lab_cli(project, "--strict", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PROFILE 1" in (project / "site/lore/env.html").read_text()
    # a frozen result of the smoke render, as Quarto would keep it: the lab never reads _freeze/
    plant_frozen_result(project, "lore/env.qmd")
    monkeypatch.delenv("LAB_SMOKE", raising=False)
    done = lab_cli(project, "--strict", env={"LAB_STORE": env["LAB_STORE"], "LAB_SMOKE": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LAB_SMOKE changed (1 -> unset)" in done.stdout
    page = (project / "site/lore/env.html").read_text()
    assert "PROFILE real" in page and "PROFILE 1" not in page and FROZEN not in page


# --------------------------------------------------------------------------- the whole project, LAB_SMOKE=1 (slow)

# SUBSET (quarto_parity.py) by default, so the suite stays within its time; LAB_PARITY_PAGES=all renders every
# page of the project.


@pytest.mark.slow
def test_whole_project_smoke_render_same_site_with_both_renderers(tmp_path):
    require_quarto()
    keep = None if os.environ.get("LAB_PARITY_PAGES") == "all" else SUBSET
    lab_root = copy_project(tmp_path / "lab", keep)
    quarto_root = copy_project(tmp_path / "quarto", keep)
    env = {"LAB_SMOKE": "1", "LAB_STORE": str(tmp_path / "store")}  # one store: runs train once
    done = lab_cli(lab_root, "--strict", "-j", "2", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = quarto_render(quarto_root, env=env, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lab, quarto = lab_root / "site", quarto_root / "site"
    assert compare(lab, quarto) == {}  # pages, titles, figure files, figure numbers, cross-references, no bars
    sources = [p.relative_to(lab_root).with_suffix(".html").as_posix()
               for section in ("log", "lore") for p in sorted((lab_root / section).iterdir())]
    assert set(sources) <= set(pages(lab)), sorted(set(sources) - set(pages(lab)))
    for site in (lab, quarto):
        assert all(generated_content(site).values()), (site, generated_content(site))
        assert all(title(text) for rel, text in pages(site).items() if rel != "log.html"), site
        assert (site / "lore/origin-or-centroid.html").read_text(encoding="utf-8").count("<figcaption") >= 1
