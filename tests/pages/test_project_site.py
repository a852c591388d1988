"""The project's own site: every real page of log/ and lore/ executes under the smoke profile.

A code change that breaks a page fails here. The sources are copied into a temporary root so the test
never touches the developer's document cache or site; LAB_SMOKE=1 shrinks every run to a few steps and
LAB_STORE keeps them out of the real store.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from publish.render import render
from publish.sources import discover

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_every_real_page_renders_under_the_smoke_profile(tmp_path, capsys, monkeypatch):
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy2(ROOT / "_quarto.yml", root)
    for path in ROOT.glob("*.qmd"):
        shutil.copy2(path, root)
    for folder in ("log", "lore"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, root / folder)
    # the H200's runs, which lore/laws-of-physics replays on this CPU
    shutil.copytree(ROOT / "tests" / "fixtures" / "cuda_runs", root / "tests" / "fixtures" / "cuda_runs")
    monkeypatch.setenv("LAB_SMOKE", "1")
    monkeypatch.setenv("LAB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernels import `experiments` from this checkout

    sources = [p.relative_to(root).as_posix() for p in discover(root)]
    assert any(s.startswith("log/") for s in sources) and any(s.startswith("lore/") for s in sources)

    rc = render(root, jobs=2, keep_going=True)
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    executed = re.findall(r"^executed\s+(\S+)", captured.out, re.M)
    assert executed, captured.out
    site = root / "site"
    assert (site / "index.html").is_file()
    runs = (site / "runs.html").read_text(encoding="utf-8")
    assert "Used by:" in runs and "Used by: no page" not in runs  # every smoke run is used by a page
    for src in sources:
        if src.startswith("lore/"):
            assert (site / "lore" / f"{Path(src).stem}.html").is_file(), src
    laws_page = (site / "lore" / "laws-of-physics.html").read_text(encoding="utf-8")
    assert laws_page.count("bit-exact, 63,744 elements") == 3  # every GPU run replays here
    assert "a recording from that GPU verifies on any CPU" in laws_page  # printed only when that holds
