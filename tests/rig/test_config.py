"""Config as plain data: presets, inheritance, overrides, validation messages, smoke profile, key reference."""

from __future__ import annotations

import re

import pytest

from experiments.errors import ConfigError
from experiments.rig import config as C
from experiments.rig import corpus, schema, tokenizer

# every message: `<dotted.key>: <what is wrong> (<what is allowed>)`, then `; set in <source>` when known
STYLE = re.compile(r"^(?P<key>[\w.]+): (?P<problem>[^()]+?|.+?) \((?P<note>.+)\)(; set in (?P<source>.+))?$")


def test_every_preset_resolves_and_seed_presets_extend_site_presets():
    names = C.preset_names()
    for required in ("flannel-1", "flannel-2", "flannel-4", "flannel-5", "flannel-6", "flannel-7", "thimble-3",
                     "crucible-1", "thimble-8", "thimble-9"):
        assert required in names and f"{required}-seed" in names
    for name in names:
        cfg = C.load_config(name)
        assert cfg["name"] == name and cfg["description"], name
    f1, f1s = C.load_config("flannel-1"), C.load_config("flannel-1-seed")
    assert (f1s["train"]["batch_size"], f1s["train"]["seq_len"]) == (32, 128)
    assert f1s["optim"] == f1["optim"] and f1["optim"]["schedule"] == "linear" and f1["optim"]["clip"] == 1.0
    assert C.load_config("thimble-3-seed")["train"]["batch_size"] == 128
    assert C.load_config("flannel-2")["model"]["tied"] is False
    t8 = C.load_config("thimble-8")
    assert (t8["optim"]["lr"], t8["optim"]["weight_decay"], t8["train"]["dataset"]) == (3e-4, 0.1, "chunks")
    assert C.load_config("thimble-9-seed")["train"]["steps"] == 10_000
    members = C.sweep_members(C.load_config("flannel-5"))
    assert [m["model"]["init_std"] for m in members] == pytest.approx([0.005 * i for i in range(1, 10)])
    f6 = C.sweep_members(C.load_config("flannel-6"))
    assert {m["train"]["init_seed"] for m in f6} == {42} and [m["train"]["data_seed"] for m in f6] == [42, 43, 44]
    f6s = C.sweep_members(C.load_config("flannel-6-seed"))
    assert [m["train"]["data_seed"] for m in f6s] == list(range(42, 52))


def test_overrides_dotted_alias_and_sweep_fixing():
    cfg = C.load_config("flannel-1", **{"optim.lr": 3e-4, "train.steps": 7})
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["steps"] == 7
    assert C.load_config("flannel-1", lr=2e-4, batch_size=3)["optim"]["lr"] == 2e-4
    with pytest.raises(ConfigError, match="steps: ambiguous.*record.steps.*train.steps|train.steps"):
        C.load_config("flannel-1", steps=5)
    # setting the swept key turns the sweep into one member
    assert C.load_config("flannel-4", **{"train.init_seed": 45})["sweep"] == {}
    assert C.parse_set(["optim.lr=3e-4", "optim.clip=null", "record.rows=[1, 2]"]) == {
        "optim.lr": 3e-4, "optim.clip": None, "record.rows": [1, 2]}
    assert C.load_config("flannel-1", precision="fp32-master-sr")["precision"] == {"dtype": "fp32-master-sr",
                                                                                   "sr_seed": 0}


@pytest.mark.parametrize("override, key", [
    ({"optim.lr": 0}, "optim.lr"),
    ({"optim.lr": -1e-3}, "optim.lr"),
    ({"model.init_std": 0.0}, "model.init_std"),
    ({"model.n_heads": 3}, "model.n_heads"),
    ({"model.n_heads": 128}, "model.n_heads"),
    ({"train.steps": 0}, "train.steps"),
    ({"train.steps": 2.5}, "train.steps"),
    ({"train.seq_len": 4096}, "train.seq_len"),
    ({"train.dataset": "random"}, "train.dataset"),
    ({"optim.schedule": "cosinus"}, "optim.schedule"),
    ({"optim.impl": "auto"}, "optim.impl"),
    ({"optim.betas": [0.9]}, "optim.betas"),
    ({"precision": "fp16"}, "precision.dtype"),
    ({"record.tensors": ["W", "logits"]}, "record.tensors"),
    ({"record.tensors": ["E"]}, "record.tensors"),  # E needs an untied model
    ({"record.steps": {"every": 0}}, "record.steps"),
    ({"record.steps": [0, 5000]}, "record.steps"),
    ({"record.rows": "some"}, "record.rows"),
    ({"record.rows": []}, "record.rows"),
    ({"record.tensors": ["master"]}, "record.tensors"),  # master needs an fp32-master precision
    ({"model.wings": 2}, "model.wings"),
    ({"model.tagged": {"ids": [1, 2, 3], "scale": 1.0}}, "model.tagged.ids"),  # not 2**k ids
    ({"model.tagged": {"ids": [1, 2], "control": [2], "scale": 1.0}}, "model.tagged.control"),
    ({"model.tagged": {"ids": [1, 2]}}, "model.tagged.scale"),  # no default: required
    ({"model.tagged": {"ids": [1, 2], "scale": 1.0, "at": "centroid"}}, "model.tagged.at"),
    ({"model": 3}, "model"),
    ({"model.tagged.scale": 1.0}, "model.tagged.scale"),  # flannel-1's model.tagged is null
    ({"optim.lr": None}, "optim.lr"),
    ({"optim.min_lr_ratio": 1.5}, "optim.min_lr_ratio"),
    ({"train.device": "tpu"}, "train.device"),
    ({"name": "a/b"}, "name"),
    ({"tokenizer.vocab_size": 1}, "tokenizer.vocab_size"),
    ({"tokenizer.special_tokens": ["a", "a"]}, "tokenizer.special_tokens"),
    ({"corpus.train_bytes": "lots"}, "corpus.train_bytes"),
    ({"corpus.thai_parts": []}, "corpus.thai_parts"),  # empty only with thai_fraction 0
    ({"corpus.fineweb.split": ""}, "corpus.fineweb.split"),
    ({"sweep": {"optim.lrr": [1e-3]}}, "sweep.optim.lrr"),
    ({"sweep": {"optim.lr": []}}, "sweep.optim.lr"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        C.load_config("flannel-1", **override)
    m = STYLE.match(str(e.value))
    assert m and m["key"] == key and m["source"] == "override", str(e.value)


def test_one_message_style_for_every_section():
    assert str(_error(lambda: C.load_config("flannel-1", **{"optim.lr": -1}))) == (
        "optim.lr: got -1 (allowed: a number > 0); set in override")
    assert str(_error(lambda: C.load_config("flannel-1", **{"optim.schedule": "cosinus"}))) == (
        "optim.schedule: got 'cosinus' (allowed: one of constant, linear, cosine; did you mean cosine?); "
        "set in override")
    # the corpus and tokenizer sections speak the same way (checked on its own, no file to name)
    assert str(_error(lambda: C.load_config("flannel-1", **{"corpus.seed": -1}))) == (
        "corpus.seed: got -1 (allowed: an integer >= 0); set in override")
    assert str(_error(lambda: tokenizer.validate_tokenizer_config({"vocab_size": "10k"}))) == (
        "tokenizer.vocab_size: got '10k' (allowed: an integer >= 2)")
    assert str(_error(lambda: C.load_config("flannel-1", **{"record.tensors": ["E"]}))) == (
        "record.tensors: got E with model.tied: true (allowed: E, the untied output matrix, only with "
        "model.tied: false); set in override")


def _error(call) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        call()
    return e.value


@pytest.mark.parametrize("given, nearest", [
    ({"train.stepz": 10}, "train.steps"),  # a sibling
    ({"train.lr": 1e-3}, "optim.lr"),  # the same name in another section
    ({"lrr": 1e-3}, "optim.lr"),  # a bare name close to one section's key
    ({"optm.lr": 1e-3}, "optim"),  # the section itself is misspelt
    ({"corpus.fineweb.splt": "train"}, "corpus.fineweb.split"),
    ({"tokenizer.vocab": 500}, "tokenizer.vocab_size"),
])
def test_a_misspelt_key_suggests_the_nearest(given, nearest):
    e = _error(lambda: C.load_config("flannel-1", **given))
    assert str(e).startswith(f"{next(iter(given))}: unknown key (did you mean {nearest}?)"), str(e)


def test_an_unknown_key_with_no_near_one_lists_the_known():
    e = _error(lambda: C.load_config("flannel-1", **{"model.zzzzzz": 1}))
    assert str(e).startswith("model.zzzzzz: unknown key (known: d_model, n_layers, n_heads, d_ff, context, tied,")


def test_defaults_and_smoke_caps_come_from_the_schema():
    assert C.DEFAULTS == schema.defaults(C.SCHEMA)
    assert C.DEFAULTS["corpus"] == corpus.DEFAULT_CORPUS and C.DEFAULTS["tokenizer"] == tokenizer.DEFAULT_TOKENIZER
    assert C.SMOKE == {"corpus.train_bytes": 300_000, "corpus.tokenizer_bytes": 300_000,
                       "tokenizer.vocab_size": 1000, "train.steps": 20, "train.batch_size": 2, "train.seq_len": 32,
                       "train.threads": 2}
    assert C.validate(cfg := C.load_config("flannel-1")) is None and cfg == C.load_config("flannel-1")  # idempotent


def test_the_key_reference_is_generated_from_the_schema():
    """experiments/configs/README.md is what the schema generates: rewrite it with `python -m experiments.rig.schema`."""
    committed = schema.REFERENCE.read_text()
    assert committed == C.reference(), "experiments/configs/README.md is stale: run python -m experiments.rig.schema"
    for key in C.SCHEMA:
        assert f"| `{key.path}` |" in committed or f"## `{key.path}`" in committed, key.path
    for rule in (*C.RULES, *(r for k in C.SCHEMA for r in k.rules)):
        assert " ".join(rule.__doc__.split()) in committed, rule.__name__


def test_errors_name_the_file_and_yaml_line(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "CONFIG_DIR", tmp_path)
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 1.0e-3\n  clip: 1.0\n")
    (tmp_path / "child.yaml").write_text("extends: base\noptim:\n  lr: -2.0e-3\n")
    (tmp_path / "typo.yaml").write_text("extends: base\ntrain:\n  stepz: 10\n")
    (tmp_path / "broken.yaml").write_text("optim:\n  lr: [1\n  eps: 2\n")
    (tmp_path / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ConfigError, match=r"^optim\.lr: got -0\.002 \(allowed: a number > 0\); set in .*child\.yaml$"):
        C.load_config("child")
    with pytest.raises(ConfigError, match=r"^train\.stepz: unknown key \(did you mean train\.steps\?\); set in .*typo\.yaml$"):
        C.load_config("typo")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        C.load_config("broken")
    with pytest.raises(ConfigError, match="cycle"):
        C.load_config("loop")
    with pytest.raises(ConfigError, match="no preset named 'nope'"):
        C.load_config("nope")
    # deep merge: the child keeps the parent's clip while replacing lr
    (tmp_path / "ok.yaml").write_text("extends: base\noptim:\n  lr: 2.0e-3\n")
    cfg = C.load_config("ok")
    assert cfg["optim"]["lr"] == 2e-3 and cfg["optim"]["clip"] == 1.0 and cfg["optim"]["eps"] == 1e-8


def test_smoke_profile_shrinks_and_marks(monkeypatch):
    monkeypatch.setenv("LAB_SMOKE", "1")
    cfg = C.load_config("crucible-1-seed")
    assert cfg["smoke"] is True
    assert cfg["train"]["steps"] <= 20 and cfg["train"]["batch_size"] <= 2 and cfg["train"]["seq_len"] <= 32
    assert cfg["tokenizer"]["vocab_size"] <= 1000 and cfg["corpus"]["train_bytes"] <= 300_000
    assert len(C.sweep_members(C.load_config("flannel-4"))) == 2
    monkeypatch.delenv("LAB_SMOKE")
    assert C.load_config("crucible-1-seed")["train"]["steps"] == 5000


def test_precision_shorthand_merges_with_its_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "CONFIG_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("precision: fp32-master-sr\n")
    (tmp_path / "b.yaml").write_text("extends: a\nprecision:\n  sr_seed: 7\n")
    assert C.load_config("b")["precision"] == {"dtype": "fp32-master-sr", "sr_seed": 7}
    assert C.load_config("b", precision="fp32-master-rne")["precision"] == {"dtype": "fp32-master-rne", "sr_seed": 7}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan"])
def test_non_finite_numbers_name_the_key(value):
    with pytest.raises(ConfigError, match=r"^optim\.lr: (nan|inf) is not a finite number \(allowed: a number > 0\)"):
        C.load_config("flannel-1", **{"optim.lr": value})


# the corpus section is validated by the same schema walk, whether it comes through a config or straight to
# corpus.build_corpus (validate_corpus_config)
CORPUS_REJECTED = [
    {"train_byte": 5000}, {"train_bytes": "big"}, {"train_bytes": None}, {"train_bytes": True},
    {"tokenizer_bytes": 10}, {"thai_fraction": 1.5}, {"thai_fraction": "0.2"}, {"thai_fraction": float("nan")},
    {"seed": None}, {"seed": -1}, {"source": "web"}, {"english_parts": ["nope"]}, {"english_parts": []},
    {"english_parts": ["kjv", "kjv"]}, {"thai_parts": ["kjv"]}, {"thai_parts": []},
    {"fineweb": {"skip_english_docs": -1}}, {"fineweb": {"english_dataset": ""}}, {"fineweb": {"datset": "x"}},
]
CORPUS_ACCEPTED = [
    {}, {"train_bytes": 5000}, {"thai_fraction": 0}, {"thai_fraction": 0, "thai_parts": []},
    {"source": "fineweb", "fineweb": {"skip_english_docs": 10000}}, {"english_parts": ["kjv"]},
]


@pytest.mark.parametrize("cfg", CORPUS_REJECTED)
def test_a_bad_corpus_value_names_its_key_in_the_one_style(cfg):
    with pytest.raises(ConfigError) as direct:
        corpus.validate_corpus_config(cfg)
    assert STYLE.match(str(direct.value)) and direct.value.key.startswith("corpus"), str(direct.value)
    with pytest.raises(ConfigError) as through:
        C.load_config({"name": "x", "corpus": cfg})
    assert str(through.value).startswith(str(direct.value)), (str(through.value), str(direct.value))


@pytest.mark.parametrize("cfg", CORPUS_ACCEPTED)
def test_a_good_corpus_section_gets_its_defaults(cfg):
    out = corpus.validate_corpus_config(cfg)
    assert set(out) == set(corpus.DEFAULT_CORPUS)
    assert all(out[k] == v for k, v in cfg.items() if k != "fineweb")
    assert C.load_config({"name": "x", "corpus": cfg})["corpus"] == out
