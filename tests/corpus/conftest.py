"""Shared tiny corpus for the corpus/tokenizer tests (built once per session under a pytest tmp dir)."""

import sys
from pathlib import Path

import pytest

# --import-mode=importlib does not put the repo root on sys.path; the package is not installed in CI either.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# ~100 KB texts and a 500-token vocabulary: a few seconds for the whole directory.
TINY_CORPUS = {"train_bytes": 100_000, "tokenizer_bytes": 120_000}
TINY_TOKENIZER = {"vocab_size": 500}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny(tiny_cache):
    """(corpus, tokenizer, prepared) for the tiny config."""
    from experiments.rig import corpus, tokenizer
    c = corpus.build_corpus(TINY_CORPUS, tiny_cache)
    tok = tokenizer.train_tokenizer(c, TINY_TOKENIZER, tiny_cache)
    prepared = tokenizer.prepare(TINY_CORPUS, TINY_TOKENIZER, tiny_cache)
    return c, tok, prepared


@pytest.fixture
def tiny_cfg():
    """Fresh copies of the tiny (corpus, tokenizer) configs."""
    return dict(TINY_CORPUS), dict(TINY_TOKENIZER)
