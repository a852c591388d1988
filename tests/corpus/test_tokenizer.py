"""Flannel tokenizer: character-level BPE, exact vocab, census, caching, config errors."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from tokenizers import Tokenizer

from experiments.errors import ConfigError, DataError
from experiments.lattice import census
from experiments.rig import corpus, tokenizer


def test_character_level_bpe_recipe(tiny):
    c, tok, _ = tiny
    spec = json.loads(tok.to_str())
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] is False
    assert spec["normalizer"] is None
    assert spec["pre_tokenizer"]["type"] == "Whitespace"
    vocab = tok.get_vocab()
    # no byte-level artefacts
    assert not any(t.startswith("<0x") or "Ġ" in t or "Ċ" in t for t in vocab)
    # every character of the tokenizer text (whitespace included) is a token of its own
    missing = [ch for ch in set(c.tokenizer_text) if ch not in vocab]
    assert missing == []
    # tokens decode to clean Unicode: each is a substring of the tokenizer text (or the special token)
    sample = [t for t in vocab if t != "<|endoftext|>"][:300]
    assert all(t in c.tokenizer_text for t in sample)


def test_exact_vocab_size_and_special_token(tiny, tiny_cfg):
    _, tok, prepared = tiny
    _, tcfg = tiny_cfg
    assert tok.get_vocab_size() == tcfg["vocab_size"] == prepared.vocab_size
    assert tok.token_to_id("<|endoftext|>") == 0


def test_census_equals_a_direct_count(tiny):
    c, tok, prepared = tiny
    direct = Counter(tok.encode(c.train_text).ids)
    assert prepared.ids.dtype == np.int32 and prepared.counts.dtype == np.int64
    assert prepared.ids.tolist() == tok.encode(c.train_text).ids  # batched encoding == plain encoding
    assert {i: int(n) for i, n in enumerate(prepared.counts) if n} == dict(direct)
    report = census.census(prepared, tok)
    assert report["live"] == len(direct)
    assert report["dead"] == prepared.vocab_size - len(direct) == int(prepared.dead.sum())
    assert report["tokens"] == sum(direct.values())
    assert report["dead_ids"] == sorted(set(range(prepared.vocab_size)) - set(direct))
    assert sum(report["dead_by_script"].values()) == report["dead"]
    top = report["top"][0]
    assert top["count"] == max(direct.values()) and tok.id_to_token(top["id"]) == top["token"]
    assert report["seen_once"] == sum(1 for n in direct.values() if n == 1)
    assert 0 < report["tokens_per_char"] < 1


def test_thai_tokens_are_dead_on_english_text(tiny):
    _, tok, prepared = tiny
    thai = [i for t, i in tok.get_vocab().items() if census.script_of(t) == "thai"]
    assert len(thai) > 50
    assert all(prepared.dead[i] for i in thai)
    report = census.census(prepared, tok)
    assert report["dead_by_script"]["thai"] == len(thai)
    # the Whitespace pre-tokenizer never emits whitespace, and the special token is never inserted
    assert report["dead_by_script"]["whitespace"] >= 2 and report["dead_by_script"]["special"] == 1
    assert report["by_script"]["latin"]["live"] > 100


@pytest.mark.parametrize(
    "token, script",
    [
        ("the", "latin"),
        ("café", "latin"),
        ("1st", "latin"),
        ("ที่", "thai"),
        ("๑๒", "thai"),
        ("東京", "cjk"),
        ("カタ", "cjk"),
        ("한국", "hangul"),
        ("123", "digits"),
        (",.", "punctuation"),
        ("—", "punctuation"),
        ("$", "punctuation"),
        ("\n", "whitespace"),
        ("\u00a0", "whitespace"),
        ("αβ", "other"),
        ("мир", "other"),
    ],
)
def test_script_of(token, script):
    assert census.script_of(token) == script


def test_prepared_hashes_and_json(tiny):
    c, tok, prepared = tiny
    assert prepared.tokenizer_sha256 == hashlib.sha256(prepared.tokenizer_json.encode()).hexdigest()
    assert prepared.corpus_sha256 == c.sha256
    assert prepared.manifest == c.manifest
    again = Tokenizer.from_str(prepared.tokenizer_json)
    assert again.encode("To be, or not to be").ids == tok.encode("To be, or not to be").ids


def test_training_is_deterministic(tmp_path, tiny, tiny_cfg):
    c, tok, _ = tiny
    _, tcfg = tiny_cfg
    again = tokenizer.train_tokenizer(c, tcfg, tmp_path)  # empty cache: trained again
    assert again.to_str() == tok.to_str()
    assert len(list(tmp_path.glob("tokenizer-*.json"))) == 1


def test_second_prepare_reads_the_cache(tmp_path, monkeypatch, tiny_cfg):
    ccfg, tcfg = tiny_cfg
    first = tokenizer.prepare(ccfg, tcfg, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert [n.split("-")[0] for n in names] == ["corpus", "ids", "text", "text", "tokenizer"]

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(tokenizer, "_train", boom)
    monkeypatch.setattr(tokenizer, "encode", boom)
    monkeypatch.setattr(corpus, "_build_offline", boom)
    second = tokenizer.prepare(ccfg, tcfg, tmp_path)
    assert np.array_equal(second.ids, first.ids)
    assert second.tokenizer_sha256 == first.tokenizer_sha256
    # another vocabulary size is another tokenizer: it must train (and so hits the patched trainer)
    with pytest.raises(AssertionError, match="recomputed"):
        tokenizer.prepare(ccfg, {**tcfg, "vocab_size": 400}, tmp_path)


def test_prepare_defaults_to_the_store(tmp_path, monkeypatch, tiny_cfg):
    ccfg, tcfg = tiny_cfg
    monkeypatch.setenv("LAB_STORE", str(tmp_path / "store"))
    tokenizer.prepare(ccfg, tcfg)
    assert len(list((tmp_path / "store" / "data").glob("ids-*.npy"))) == 1


def test_vocab_smaller_than_alphabet_names_the_key(tiny, tmp_path):
    c, _, _ = tiny
    with pytest.raises(ConfigError, match=r"^tokenizer\.vocab_size: 50 is smaller"):
        tokenizer.train_tokenizer(c, {"vocab_size": 50}, tmp_path)
    assert not list(tmp_path.glob("tokenizer-*.json"))


def test_vocab_larger_than_the_text_supports(tmp_path):
    small = corpus.Corpus("abc", "ab ab abc abc cd", {}, "0" * 64)
    with pytest.raises(DataError, match="tokenizer.vocab_size"):
        tokenizer.train_tokenizer(small, {"vocab_size": 1000}, tmp_path)


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"vocab_size": None}, "tokenizer.vocab_size"),
        ({"vocab_size": "10k"}, "tokenizer.vocab_size"),
        ({"vocab_size": 1}, "tokenizer.vocab_size"),
        ({"min_frequency": 0}, "tokenizer.min_frequency"),
        ({"special_tokens": "<|endoftext|>"}, "tokenizer.special_tokens"),
        ({"special_tokens": ["a", "a"]}, "tokenizer.special_tokens"),
        ({"vocab": 500}, "tokenizer.vocab"),
    ],
)
def test_bad_tokenizer_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        tokenizer.validate_tokenizer_config(cfg)
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_tokenizer_defaults():
    assert tokenizer.validate_tokenizer_config({}) == tokenizer.DEFAULT_TOKENIZER
    assert tokenizer.DEFAULT_TOKENIZER == {
        "vocab_size": 10000, "min_frequency": 2, "special_tokens": ["<|endoftext|>"]
    }


@pytest.mark.slow
def test_default_config_has_exact_vocab_and_dead_thai(tmp_path):
    """The real default (vocab 10,000 on the ~10 MB offline corpus); about 10 s on 2 cores."""
    prepared = tokenizer.prepare({}, {}, tmp_path)
    tok = Tokenizer.from_str(prepared.tokenizer_json)
    report = census.census(prepared, tok)
    assert prepared.vocab_size == 10000
    assert report["by_script"]["thai"]["live"] == 0 and report["by_script"]["thai"]["dead"] > 1000
    assert report["live"] + report["dead"] == 10000
