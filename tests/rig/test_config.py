"""Config as plain data: presets, inheritance, overrides, validation messages, smoke profile."""

from __future__ import annotations

import pytest

from experiments.errors import ConfigError
from experiments.rig import config as C


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
    ({"model.wings": 2}, "model.wings"),
    ({"tokenizer.vocab_size": 1}, "tokenizer.vocab_size"),
    ({"corpus.train_bytes": "lots"}, "corpus.train_bytes"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        C.load_config("flannel-1", **override)
    assert str(e.value).startswith(key), str(e.value)


def test_errors_name_the_file_and_yaml_line(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "CONFIG_DIR", tmp_path)
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 1.0e-3\n  clip: 1.0\n")
    (tmp_path / "child.yaml").write_text("extends: base\noptim:\n  lr: -2.0e-3\n")
    (tmp_path / "typo.yaml").write_text("extends: base\ntrain:\n  stepz: 10\n")
    (tmp_path / "broken.yaml").write_text("optim:\n  lr: [1\n  eps: 2\n")
    (tmp_path / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ConfigError, match=r"optim.lr: must be > 0.*child.yaml"):
        C.load_config("child")
    with pytest.raises(ConfigError, match=r"train.stepz: unknown key.*typo.yaml"):
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
    with pytest.raises(ConfigError, match="optim.lr.*must be a finite number"):
        C.load_config("flannel-1", **{"optim.lr": value})
