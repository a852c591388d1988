"""The Flannel tokenizer: a character-level BPE (its live/dead census is census.py).

Recipe (the seeds' own; tests/corpus/test_tokenizer.py checks it): HF ``tokenizers`` BPE model, Whitespace pre-tokenizer (word-character runs and
punctuation runs; whitespace is dropped), no normalizer, no byte fallback, ``initial_alphabet`` = every
distinct character of the tokenizer text, ``min_frequency`` 2, one special token ``<|endoftext|>`` (id 0).
Not byte-level: every token decodes to clean Unicode, and the whole alphabet (whitespace characters and
characters that never reach the training text included) is in the vocabulary, which is where many of the
dead tokens come from.

``prepare`` is what training needs: the training text encoded once and cached as ``.npy`` next to the
tokenizer JSON, so a second call costs file reads only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
from filelock import FileLock
from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.trainers import BpeTrainer
from tqdm import tqdm

from experiments.errors import ConfigError, DataError
from experiments.rig.corpus import (
    Corpus,
    Loader,
    atomic_write,
    build_corpus,
    data_dir,
    module_source_sha256,
    sha256_hex,
)
from experiments.rig.schema import Int, Key, ListOf, Str, check, defaults

# Bump when a cached tokenizer or id stream would mean something different.
FORMAT = 1


_CHUNK_BYTES = 1 << 16  # encode/training pieces; split at newlines, which the pre-tokenizer drops anyway


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Prepared:
    """Everything training needs."""

    ids: np.ndarray  # int32 training token stream (the train_text encoded)
    vocab_size: int
    counts: np.ndarray  # int64 (V,) occurrences of each id in ids
    dead: np.ndarray  # bool (V,) counts == 0
    tokenizer_json: str  # tokenizer.to_str(), stored inside every run file
    corpus_sha256: str
    tokenizer_sha256: str  # sha256 of tokenizer_json
    manifest: dict


# ---------------------------------------------------------------------------------------------- config


# The tokenizer section of the config schema (experiments.rig.config.SCHEMA takes it in; see experiments.rig.schema).
SCHEMA: tuple[Key, ...] = (
    Key("tokenizer", help="The Flannel tokenizer (experiments/rig/tokenizer.py): a character-level BPE trained on "
                          "the corpus's tokenizer text."),
    Key("tokenizer.vocab_size", Int(ge=2), 10000, "tokens in the vocabulary (special tokens and the whole "
                                                  "alphabet included)", smoke=1000),
    Key("tokenizer.min_frequency", Int(ge=1), 2, "a pair is merged only if it occurs this often"),
    Key("tokenizer.special_tokens", ListOf(Str(nonempty=True), duplicates="reject"), ["<|endoftext|>"],
        "special tokens, the first gets id 0"),
)

DEFAULT_TOKENIZER: dict = defaults(SCHEMA)["tokenizer"]


def validate_tokenizer_config(cfg: dict | None) -> dict:
    """Return a complete tokenizer config (defaults filled in); raise ConfigError naming the bad key."""
    return check(SCHEMA, {} if cfg is None else cfg, "tokenizer")


# -------------------------------------------------------------------------------------------- training


def _chunks(text: str, size: int = _CHUNK_BYTES) -> Iterator[str]:
    """Pieces of about ``size`` characters cut at newlines (so no pre-token is split)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _tokenizer_path(corpus: Corpus, cfg: dict, cache_dir: Path) -> Path:
    key = sha256_hex(json.dumps(
        {"format": FORMAT, "config": cfg, "corpus": corpus.sha256, "tokenizers": tokenizers.__version__,
         "code": module_source_sha256(__file__)},
        sort_keys=True,
    ))
    return Path(cache_dir) / f"tokenizer-{key[:16]}.json"


def _load_tokenizer(path: Path) -> Tokenizer | None:
    try:
        return Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception:  # missing or unparsable: rebuild (writes are atomic, so this is rare)
        return None


def _train(text: str, cfg: dict) -> Tokenizer:
    alphabet = sorted(set(text))
    specials = cfg["special_tokens"]
    smallest = len(alphabet) + len(specials)
    if cfg["vocab_size"] < smallest:
        raise ConfigError(
            f"tokenizer.vocab_size: {cfg['vocab_size']} is smaller than the {len(alphabet)} distinct characters "
            f"of the tokenizer text plus {len(specials)} special token(s) = {smallest}; a character-level BPE "
            f"needs them all (raise tokenizer.vocab_size or shrink corpus.tokenizer_bytes)"
        )
    tok = Tokenizer(BPE(byte_fallback=False))  # no unk token: every character is in the alphabet
    tok.pre_tokenizer = Whitespace()
    trainer = BpeTrainer(
        vocab_size=cfg["vocab_size"],
        min_frequency=cfg["min_frequency"],
        special_tokens=specials,
        initial_alphabet=alphabet,
        # Rust progress bars write stray newlines to fd 1, which a notebook kernel would capture into pages.
        show_progress=sys.stderr.isatty(),
    )
    pieces = list(_chunks(text))
    tok.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    got = tok.get_vocab_size()
    if got != cfg["vocab_size"]:
        raise DataError(
            f"tokenizer: the tokenizer text ({len(text.encode())} bytes) only supports {got} tokens with "
            f"min_frequency {cfg['min_frequency']}, not tokenizer.vocab_size {cfg['vocab_size']}; raise "
            f"corpus.tokenizer_bytes or lower tokenizer.vocab_size"
        )
    if specials and tok.token_to_id(specials[0]) != 0:
        raise DataError(f"tokenizer: special token {specials[0]!r} did not get id 0")
    return tok


def train_tokenizer(corpus: Corpus, cfg: dict, cache_dir: Path) -> Tokenizer:
    """The Flannel tokenizer for ``corpus`` (trained once, then read from ``cache_dir``)."""
    cfg = validate_tokenizer_config(cfg)
    path = _tokenizer_path(corpus, cfg, cache_dir)
    if path.exists() and (tok := _load_tokenizer(path)) is not None:
        return tok
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists() and (tok := _load_tokenizer(path)) is not None:
            return tok
        text = _train(corpus.tokenizer_text, cfg).to_str()
        atomic_write(path, text)
    return Tokenizer.from_str(text)  # the same object a later cache hit returns


# ------------------------------------------------------------------------------------------- encoding


def encode(tokenizer: Tokenizer, text: str, desc: str = "encoding") -> np.ndarray:
    """``tokenizer.encode(text).ids`` as int32, computed in parallel batches of newline-aligned pieces."""
    pieces = list(_chunks(text))
    out: list[np.ndarray] = []
    batch = 32
    for i in tqdm(range(0, len(pieces), batch), desc=desc, unit="batch", leave=False):
        for enc in tokenizer.encode_batch(pieces[i : i + batch], add_special_tokens=False):
            out.append(np.asarray(enc.ids, dtype=np.int32))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)


def _load_ids(path: Path, vocab_size: int) -> np.ndarray | None:
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if ids.dtype != np.int32 or ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= vocab_size)):
        return None
    return ids


def prepare(
    corpus_cfg: dict, tokenizer_cfg: dict, cache_dir: Path | None = None, *, loader: Loader | None = None
) -> Prepared:
    """Corpus, tokenizer and encoded training stream, each cached under ``cache_dir`` (default <store>/data)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir()
    corpus = build_corpus(corpus_cfg, cache_dir, loader=loader)
    tok = train_tokenizer(corpus, tokenizer_cfg, cache_dir)
    tokenizer_json = tok.to_str()
    tokenizer_sha = sha256_hex(tokenizer_json)
    vocab_size = tok.get_vocab_size()
    key = sha256_hex(json.dumps({"format": FORMAT, "corpus": corpus.sha256, "tokenizer": tokenizer_sha}))
    path = Path(cache_dir) / f"ids-{key[:16]}.npy"
    ids = _load_ids(path, vocab_size) if path.exists() else None
    if ids is None:
        with FileLock(str(path) + ".lock"):
            ids = _load_ids(path, vocab_size) if path.exists() else None
            if ids is None:
                ids = encode(tok, corpus.train_text, "encoding training text")
                atomic_write(path, lambda f: np.save(f, ids, allow_pickle=False))
    counts = np.bincount(ids, minlength=vocab_size).astype(np.int64)
    return Prepared(
        ids=ids,
        vocab_size=vocab_size,
        counts=counts,
        dead=counts == 0,
        tokenizer_json=tokenizer_json,
        corpus_sha256=corpus.sha256,
        tokenizer_sha256=tokenizer_sha,
        manifest=corpus.manifest,
    )
