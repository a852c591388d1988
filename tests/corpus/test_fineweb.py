"""The FineWeb path, exercised through `datasets` streaming on local JSON-lines fixtures."""

import json

import pytest

from experiments.errors import DataError
from experiments.rig import corpus

datasets = pytest.importorskip("datasets")

EN = "HuggingFaceFW/fineweb"
TH = "HuggingFaceFW/fineweb-2"


def english_doc(i: int) -> str:
    # distinct, ~600-byte documents with a findable marker line
    return f"Document {i} begins.\n" + "\n".join(f"line {j} of document {i} says hello" for j in range(20))


def thai_doc(i: int) -> str:
    return f"เอกสาร {i}\n" + "\n".join(f"ภาษาไทย บรรทัด {j} ของเอกสาร {i}" for j in range(10))


@pytest.fixture
def loader(tmp_path):
    files = {EN: tmp_path / "en.jsonl", TH: tmp_path / "th.jsonl"}
    with files[EN].open("w") as f:
        for i in range(300):
            text = "" if i == 3 else english_doc(i)  # one empty record: must be skipped but still counted
            f.write(json.dumps({"text": text, "id": i}) + "\n")
    with files[TH].open("w") as f:
        for i in range(100):
            f.write(json.dumps({"text": thai_doc(i)}, ensure_ascii=False) + "\n")
    calls = []

    def load(name, config, split, streaming=True):
        calls.append((name, config, split, streaming))
        ds = datasets.load_dataset("json", data_files=str(files[name]), split=split, streaming=streaming)
        assert isinstance(ds, datasets.IterableDataset)  # the same streaming iteration the hub gives
        return ds

    load.calls = calls
    return load


def fw_cfg(**fineweb):
    return {"source": "fineweb", "train_bytes": 20_000, "tokenizer_bytes": 30_000, "fineweb": fineweb}


def test_streams_to_byte_targets_and_is_disjoint(tmp_path, loader):
    c = corpus.build_corpus(fw_cfg(), tmp_path / "cache", loader=loader)
    assert {(n, cfg, s, st) for n, cfg, s, st in loader.calls} == {
        (EN, "sample-10BT", "train", True),
        (TH, "tha_Thai", "train", True),
    }
    m = c.manifest
    assert 18_000 < len(c.train_text.encode()) <= 20_000
    assert 27_000 < len(c.tokenizer_text.encode()) <= 30_000
    assert abs(m["thai_bytes"] / len(c.tokenizer_text.encode()) - 0.2) < 0.02
    # the tokenizer took English records 0..n-1 (in stream order), the training text starts at record n
    tok_part = next(p for p in m["parts"] if p["role"] == "tokenizer" and p["part"] == "fineweb_english")
    train_part = next(p for p in m["parts"] if p["role"] == "train")
    n = tok_part["records"]
    assert c.tokenizer_text.startswith(english_doc(0))
    assert "Document 4 begins." in c.tokenizer_text and "Document 3 begins." not in c.tokenizer_text
    assert train_part["first_doc"] == n == m["skip_english_docs"]
    assert c.train_text.startswith(english_doc(n))
    assert f"Document {n - 1} begins." not in c.train_text
    assert m["overlap_docs"] == 0
    assert train_part["package"] == "datasets" and train_part["sha256"]
    assert m["texts"]["train"]["sha256"] == corpus.sha256_hex(c.train_text)
    # cached: a second build does not stream again
    before = len(loader.calls)
    assert corpus.build_corpus(fw_cfg(), tmp_path / "cache", loader=loader).sha256 == c.sha256
    assert len(loader.calls) == before


def test_fixed_skip_reproduces_the_seeds_recipe(tmp_path, loader):
    c = corpus.build_corpus(fw_cfg(skip_english_docs=5), tmp_path, loader=loader)
    assert c.train_text.startswith(english_doc(5))
    # records 5.. were also read by the tokenizer: reported, not hidden
    assert c.manifest["overlap_docs"] > 0


def test_missing_text_field_is_named(tmp_path, loader):
    with pytest.raises(DataError, match="corpus.fineweb.text_field"):
        corpus.build_corpus(fw_cfg(text_field="content"), tmp_path, loader=loader)
    assert not list(tmp_path.glob("corpus-*.json"))


def test_unreachable_hub_is_a_data_error(tmp_path):
    def offline(name, config, split, streaming=True):
        raise ConnectionError("no route to host")

    with pytest.raises(DataError, match="HuggingFaceFW/fineweb"):
        corpus.build_corpus(fw_cfg(), tmp_path, loader=offline)
