"""Tiny configs and an isolated store for the rig tests (vocab ~500, D 16, tens of steps)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # --import-mode=importlib does not add the repo root
    sys.path.insert(0, str(ROOT))

TINY = {
    "name": "tiny",
    "corpus": {"train_bytes": 60_000, "tokenizer_bytes": 60_000},
    "tokenizer": {"vocab_size": 500},
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "context": 16},
    "train": {"steps": 12, "batch_size": 4, "seq_len": 16, "threads": 1, "device": "cpu"},
    "record": {"rows": "dead", "steps": "all", "tensors": ["W", "m", "v", "grad", "h_mean"]},
}


def _tiny(**sections) -> dict:
    """TINY with some sections deep-updated: tiny(train={"steps": 5}, name="x")."""
    cfg = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One corpus/tokenizer cache for the whole session (prepare is deterministic and cached by content)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def store(tmp_path, data_cache, monkeypatch) -> Path:
    """A fresh LAB_STORE per test sharing the session's prepared data; no LAB_SMOKE / LAB_RUN_LOG leaks."""
    s = tmp_path / "store"
    s.mkdir()
    (s / "data").symlink_to(data_cache, target_is_directory=True)
    monkeypatch.setenv("LAB_STORE", str(s))
    monkeypatch.delenv("LAB_SMOKE", raising=False)
    monkeypatch.delenv("LAB_RUN_LOG", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return s


@pytest.fixture
def tiny():
    return _tiny


@pytest.fixture
def sibling_store(store, tmp_path):
    """sibling_store(name): another empty LAB_STORE sharing `store`'s prepared data (a second machine, or a
    second training of the same run to compare with)."""
    def make(name: str) -> Path:
        other = tmp_path / name
        other.mkdir()
        (other / "data").symlink_to(store / "data", target_is_directory=True)
        return other

    return make


@pytest.fixture
def sub_env():
    return _subprocess_env


def _subprocess_env(store: Path, **extra: str) -> dict:
    env = dict(os.environ, LAB_STORE=str(store), PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    env.pop("LAB_SMOKE", None)
    env.update(extra)
    return env
