"""Tiny lab projects in tmp_path for the publishing tests."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # --import-mode=importlib does not add the repo root; the package is not installed
    sys.path.insert(0, str(ROOT))

QUARTO = """\
project:
  type: website
  output-dir: site
  render:
    - index.qmd
    - log/*.qmd
    - log/*.py
    - lore/*.qmd
    - lore/*.py
"""


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project: `_quarto.yml` only."""
    root = tmp_path / "proj"
    write(root, "_quarto.yml", QUARTO)
    return root


@pytest.fixture
def put():
    """`put(root, rel, text)`: write a dedented file, making folders."""
    return write
