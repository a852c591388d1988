"""`quarto render` and `lab render` build the same fixture site (skipped, with the reason, without Quarto)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from publish.render import render
from tests.pages.quarto_parity import compare, generated_content, pages, quarto_render, require_quarto

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "notebook"


@pytest.fixture(scope="module")
def both_sites(tmp_path_factory):
    require_quarto()
    base = tmp_path_factory.mktemp("parity")
    lab_root, quarto_root = base / "lab", base / "quarto"
    shutil.copytree(FIXTURE, lab_root)
    shutil.copytree(FIXTURE, quarto_root)
    assert render(lab_root, jobs=2, strict=True) == 0
    done = quarto_render(quarto_root, env={"LAB_STORE": str(base / "store")})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return lab_root / "site", quarto_root / "site"


def test_quarto_inputs_exclude_nothing_lab_renders_and_add_nothing(both_sites):
    lab, quarto = both_sites
    assert set(pages(lab)) == set(pages(quarto))
    assert "log/2026-11-20-0930-first-look.html" in pages(quarto)


def test_same_site(both_sites):
    lab, quarto = both_sites
    assert compare(lab, quarto) == {}


def test_generated_home_and_runs_in_both(both_sites):
    for site in both_sites:
        assert all(generated_content(site).values()), (site, generated_content(site))


def test_figures_numbered_in_both(both_sites):
    for site in both_sites:
        page = (site / "lore/curve.html").read_text(encoding="utf-8")
        assert "Figure&nbsp;1" in page or "Figure 1" in page, site


def test_crossreference_resolved_in_both(both_sites):
    from tests.pages.quarto_parity import crossrefs

    for site in both_sites:
        assert crossrefs((site / "lore/curve.html").read_text(encoding="utf-8")) == ["Figure 1"], site
