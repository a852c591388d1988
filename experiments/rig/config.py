"""Experiment configuration as plain data: YAML presets, inheritance, overrides, validation, smoke profile.

A preset is `experiments/configs/<name>.yaml`. It may say `extends: <other-preset>`; the chain is deep-merged
onto `DEFAULTS` (mappings merge key by key, everything else replaces). Overrides are dotted keys
(`{"optim.lr": 3e-4}`, CLI `--set optim.lr=3e-4`, values parsed as YAML) or a bare leaf name (`lr=3e-4`)
when exactly one section has that leaf (`steps` is ambiguous: train.steps or record.steps).

Sections (see DEFAULTS for every key and its default):
  corpus, tokenizer  -- owned by experiments.rig.corpus / experiments.rig.tokenizer, validated there
  model              -- d_model, n_layers, n_heads, d_ff, context, tied, init_std, tagged (null, or
                        {ids: 2**k token ids, control: [ids], scale, at: first | origin}: the ids start as
                        the vertices of a k-cube of edge `scale` in coordinates 0..k-1 around the first
                        id's initial row (or the origin), the control ids uniformly in the same box)
  precision          -- dtype: bf16 (pure bf16 params and bf16 Adam state, the seeds' setting) | fp32 |
                        fp32-master-rne | fp32-master-sr (fp32 master weights + optimizer, written into the
                        bf16 model by round-to-nearest-even or stochastic rounding seeded by sr_seed).
                        The shorthand `precision: bf16` is accepted.
  optim              -- AdamW lr, betas, eps, weight_decay; schedule constant | linear (HF Trainer default:
                        linear decay to 0 over train.steps) | cosine (half a cosine down to
                        min_lr_ratio·lr, as the published pre-training recipes do), after `warmup` steps of
                        linear warm-up from 0 (HF's get_*_schedule_with_warmup); clip null | max grad norm;
                        impl foreach | single | fused (pinned, never left to torch's heuristics)
  train              -- steps, batch_size, seq_len (tokens per window; loss on seq_len-1 positions),
                        init_seed, data_seed, dataset sliding (every start offset) | chunks (non-overlapping,
                        shuffled each epoch, drop_last), device auto (cuda > mps > cpu) | cpu | cuda | mps,
                        threads (torch CPU threads: results depend on it, so it is part of the config)
  record             -- rows all | dead | live | [ids]; steps all | {every: k} | [steps] (step 0 is the
                        initialization); tensors subset of W, E, m, v, grad, h_mean, master (m, v, grad
                        are W's; master is W's fp32 master copy in the fp32-master precisions).
                        loss, lr and the applied clip scale are always recorded every step.
  sweep              -- {dotted.key: [values, ...]}: one run per combination (cartesian product)

Smoke profile: with env LAB_SMOKE=1, `resolve` shrinks every config after overrides (and records
`smoke: true`, so the run key differs from the real run's):
  train.steps <= 20, train.batch_size <= 2, train.seq_len <= 32, train.threads <= 2,
  corpus.train_bytes <= 300_000, corpus.tokenizer_bytes <= 300_000, tokenizer.vocab_size <= 1000,
  record.steps lists keep only steps <= the new train.steps, record.rows id lists keep ids < vocab_size,
  sweep lists keep their first 2 values.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from experiments.errors import ConfigError
from experiments.rig.corpus import DEFAULT_CORPUS, validate_corpus_config
from experiments.rig.tokenizer import DEFAULT_TOKENIZER, validate_tokenizer_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

PRECISIONS = ("bf16", "fp32", "fp32-master-rne", "fp32-master-sr")
SCHEDULES = ("constant", "linear", "cosine")
IMPLS = ("foreach", "single", "fused")
DATASETS = ("sliding", "chunks")
DEVICES = ("auto", "cpu", "cuda", "mps")
TENSORS = ("W", "E", "m", "v", "grad", "h_mean", "master")

DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": "",
    "smoke": False,
    "corpus": DEFAULT_CORPUS,
    "tokenizer": DEFAULT_TOKENIZER,
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256, "context": 128, "tied": True,
              "init_std": 0.02, "tagged": None},
    "precision": {"dtype": "bf16", "sr_seed": 0},
    "optim": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "schedule": "constant",
              "warmup": 0, "min_lr_ratio": 0.0, "clip": None, "impl": "foreach"},
    "train": {"steps": 1000, "batch_size": 32, "seq_len": 128, "init_seed": 42, "data_seed": 42,
              "dataset": "sliding", "device": "auto", "threads": 2},
    "record": {"rows": "dead", "steps": "all", "tensors": ["W"]},
    "sweep": {},
}

# sections whose inner keys belong to another module's validator (we only merge them)
_FOREIGN = ("corpus", "tokenizer")

SMOKE = {"train.steps": 20, "train.batch_size": 2, "train.seq_len": 32, "train.threads": 2,
         "corpus.train_bytes": 300_000, "corpus.tokenizer_bytes": 300_000, "tokenizer.vocab_size": 1000}


# ---------------------------------------------------------------------------------------------- loading

def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping, got {type(data).__name__}")
    return data


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "sweep" and prefix != "sweep.":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _merge(base: dict, top: dict, origins: dict, source: str, prefix: str = "") -> dict:
    """Deep-merge `top` onto `base` (new dict); remember which source set each leaf for error messages."""
    out = dict(base)
    for k, v in top.items():
        key = f"{prefix}{k}"
        if k == "precision" and not prefix and isinstance(out.get(k), str):  # the `precision: bf16` shorthand
            out[k] = {**DEFAULTS["precision"], "dtype": out[k]}
        if k == "precision" and not prefix and isinstance(v, str):
            v = {**DEFAULTS["precision"], **(out.get(k) or {}), "dtype": v}
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "sweep":
            out[k] = _merge(out[k], v, origins, source, key + ".")
        else:
            out[k] = copy.deepcopy(v)
            for leaf in _flatten({k: v}, prefix) if isinstance(v, dict) else [key]:
                origins[leaf] = source
            origins[key] = source
    return out


def _load_chain(name: str, origins: dict, seen: tuple = ()) -> dict:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no preset named {name!r} in {CONFIG_DIR} (available: {', '.join(preset_names())})")
    if name in seen:
        raise ConfigError(f"{path}: key 'extends': cycle {' -> '.join((*seen, name))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    base = copy.deepcopy(DEFAULTS)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: key 'extends': must be a preset name, got {parent!r}")
        base = _load_chain(parent, origins, (*seen, name))
    return _merge(base, data, origins, str(path))


def _set_dotted(cfg: dict, dotted: str, value: Any, origins: dict, source: str) -> None:
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            if p == "precision" and isinstance(node.get(p), str):
                node[p] = {"dtype": node[p]}
            else:
                raise ConfigError(f"{source}: key '{dotted}': unknown key")
        node = node[p]
    if dotted == "precision" and isinstance(value, str) and isinstance(node.get("precision"), dict):
        value = {**node["precision"], "dtype": value}  # shorthand keeps the configured sr_seed
    node[parts[-1]] = value
    origins[dotted] = source


def _resolve_alias(key: str, cfg: dict) -> str:
    """A bare leaf name like `lr` -> `optim.lr` when exactly one section has it."""
    if "." in key or key in cfg:
        return key
    hits = [f"{s}.{key}" for s, v in cfg.items() if isinstance(v, dict) and s != "sweep" and key in v]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ConfigError(f"override: key '{key}': ambiguous, say one of {', '.join(hits)}")
    raise ConfigError(f"override: key '{key}': unknown key")


def parse_set(items: list[str]) -> dict[str, Any]:
    """CLI `--set a.b=value` strings -> {dotted: value}; values are parsed as YAML (`3e-4`, `[1, 2]`, `null`)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def load_config(name_or_config: str | dict, **overrides: Any) -> dict:
    """Resolve a preset name (or an already-built config dict) plus overrides into a validated config.

    `device: auto` stays as written here; `resolve_device` fixes it when a run is trained or keyed.
    Applies the smoke profile when LAB_SMOKE=1.
    """
    origins: dict[str, str] = {}
    if isinstance(name_or_config, str):
        cfg = _load_chain(name_or_config, origins)
        if not cfg.get("name"):  # a preset is named after its file unless it says otherwise
            cfg["name"] = name_or_config
    elif isinstance(name_or_config, dict):
        cfg = _merge(copy.deepcopy(DEFAULTS), name_or_config, origins, "config")
        if not cfg.get("name"):
            raise ConfigError("config: key 'name': a config dict needs a name (it names the run file)")
    else:
        raise ConfigError(f"expected a preset name or a config dict, got {type(name_or_config).__name__}")
    if isinstance(cfg.get("precision"), str):
        cfg["precision"] = {**DEFAULTS["precision"], "dtype": cfg["precision"]}
    for key, value in overrides.items():
        dotted = _resolve_alias(key, cfg)
        _set_dotted(cfg, dotted, value, origins, "override")
        # overriding a swept key fixes it: the result is one member, not a sweep
        if isinstance(cfg.get("sweep"), dict):
            cfg["sweep"].pop(dotted, None)
    if isinstance(cfg.get("precision"), str):
        cfg["precision"] = {**DEFAULTS["precision"], "dtype": cfg["precision"]}
    if os.environ.get("LAB_SMOKE") == "1":
        cfg = _smoke(cfg)
    validate(cfg, origins)
    return cfg


def _smoke(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["smoke"] = True
    for dotted, cap in SMOKE.items():
        section, key = dotted.split(".")
        value = cfg.get(section, {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            cfg[section][key] = cap
    steps = cfg["train"]["steps"]
    rec = cfg["record"]
    if isinstance(rec.get("steps"), list):
        rec["steps"] = [s for s in rec["steps"] if isinstance(s, int) and s <= steps]
    vocab = cfg["tokenizer"].get("vocab_size")
    if isinstance(rec.get("rows"), list) and isinstance(vocab, int):
        rec["rows"] = [r for r in rec["rows"] if isinstance(r, int) and r < vocab]
    if isinstance(cfg.get("sweep"), dict):
        cfg["sweep"] = {k: v[:2] if isinstance(v, list) else v for k, v in cfg["sweep"].items()}
    return cfg


# ------------------------------------------------------------------------------------------- validation

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: dict, origins: dict | None = None) -> None:
    """Raise ConfigError naming the first bad key (and the file that set it); coerce numeric strings."""
    origins = origins or {}

    def fail(key: str, msg: str) -> None:
        src = origins.get(key) or origins.get(key.split(".")[0]) or "config"
        raise ConfigError(f"{key}: {msg} (set in {src})")

    for key in cfg:
        if key not in DEFAULTS:
            fail(key, f"unknown key (known: {', '.join(DEFAULTS)})")
    for section, default in DEFAULTS.items():
        if isinstance(default, dict) and not isinstance(cfg.get(section), dict):
            fail(section, f"must be a mapping, got {cfg.get(section)!r}")
        if isinstance(default, dict) and section not in _FOREIGN and section != "sweep":
            for key in cfg[section]:
                if key not in default:
                    fail(f"{section}.{key}", f"unknown key (known: {', '.join(default)})")

    def num(section: str, key: str, *, integer: bool = False, low: float | None = None, strict: bool = True,
            high: float | None = None) -> None:
        v = cfg[section][key]
        dotted = f"{section}.{key}"
        if isinstance(v, str) and not integer:  # YAML 1.1 reads `1e-3` as a string
            try:
                v = cfg[section][key] = float(v)
            except ValueError:
                pass
        if integer and not _is_int(v):
            fail(dotted, f"must be an integer, got {v!r}")
        if not _is_num(v):
            fail(dotted, f"must be a number, got {v!r}")
        if not math.isfinite(v):  # NaN compares false with every bound: it would slip through to torch
            fail(dotted, f"must be a finite number, got {v!r}")
        if not integer:
            v = cfg[section][key] = float(v)
        if low is not None and (v <= low if strict else v < low):
            fail(dotted, f"must be {'>' if strict else '>='} {low}, got {v!r}")
        if high is not None and v > high:
            fail(dotted, f"must be <= {high}, got {v!r}")

    def choice(section: str, key: str, options: tuple) -> None:
        if cfg[section][key] not in options:
            fail(f"{section}.{key}", f"must be one of {', '.join(options)}, got {cfg[section][key]!r}")

    if not isinstance(cfg.get("name"), str) or not cfg["name"]:
        fail("name", f"must be a non-empty string, got {cfg.get('name')!r}")
    if any(c in cfg["name"] for c in "/\\ \0") or cfg["name"].startswith("."):
        fail("name", f"must be usable in a file name, got {cfg['name']!r}")
    if not isinstance(cfg.get("description"), str):
        fail("description", "must be a string")
    if not isinstance(cfg.get("smoke"), bool):
        fail("smoke", "must be true or false")

    for key in ("d_model", "n_layers", "n_heads", "d_ff", "context"):
        num("model", key, integer=True, low=0)
    num("model", "init_std", low=0)
    m = cfg["model"]
    if not isinstance(m["tied"], bool):
        fail("model.tied", f"must be true or false, got {m['tied']!r}")
    if m["n_heads"] > m["d_model"] or m["d_model"] % m["n_heads"]:
        fail("model.n_heads", f"d_model {m['d_model']} must be a multiple of n_heads {m['n_heads']}")
    # --- tagged structure (issue 14): rows initialised as a k-cube plus a random control set -----------------
    if m["tagged"] is not None:
        tg = m["tagged"]
        if not isinstance(tg, dict):
            fail("model.tagged", f"must be null or a mapping {{ids, control, scale, at}}, got {tg!r}")
        for key in tg:
            if key not in ("ids", "control", "scale", "at"):
                fail(f"model.tagged.{key}", "unknown key (known: ids, control, scale, at)")
        ids, control = tg.get("ids"), tg.get("control", [])
        n = len(ids) if isinstance(ids, list) else 0
        if n < 2 or n & (n - 1) or not all(_is_int(i) and i >= 0 for i in ids):
            fail("model.tagged.ids", f"must be 2**k token ids (k >= 1), the cube's vertices, got {ids!r}")
        if not (isinstance(control, list) and all(_is_int(i) and i >= 0 for i in control)):
            fail("model.tagged.control", f"must be a list of token ids, got {control!r}")
        if len(set(ids) | set(control)) != n + len(control):
            fail("model.tagged.control", "ids and control must be distinct token ids")
        if n.bit_length() - 1 > m["d_model"]:
            fail("model.tagged.ids", f"a {n.bit_length() - 1}-cube needs more than d_model {m['d_model']} coordinates")
        tg.setdefault("scale", None)
        tg.setdefault("at", "first")
        tg["control"] = control
        if isinstance(tg["scale"], str):  # YAML 1.1 reads `1e-3` as a string
            try:
                tg["scale"] = float(tg["scale"])
            except ValueError:
                pass
        if not (_is_num(tg["scale"]) and math.isfinite(tg["scale"]) and tg["scale"] > 0):
            fail("model.tagged.scale", f"must be a positive number (the cube's edge), got {tg['scale']!r}")
        tg["scale"] = float(tg["scale"])
        if tg["at"] not in ("first", "origin"):
            fail("model.tagged.at", f"must be first (the first id's initial row) or origin, got {tg['at']!r}")
    # --- end tagged structure -------------------------------------------------------------------------------

    p = cfg["precision"]
    for key in p:
        if key not in DEFAULTS["precision"]:
            fail(f"precision.{key}", "unknown key (known: dtype, sr_seed)")
    cfg["precision"] = p = {**DEFAULTS["precision"], **p}
    choice("precision", "dtype", PRECISIONS)
    num("precision", "sr_seed", integer=True, low=0, strict=False)

    o = cfg["optim"]
    num("optim", "lr", low=0)
    num("optim", "eps", low=0, strict=False)
    num("optim", "weight_decay", low=0, strict=False)
    if not (isinstance(o["betas"], (list, tuple)) and len(o["betas"]) == 2
            and all(_is_num(b) and 0 <= b < 1 for b in o["betas"])):
        fail("optim.betas", f"must be two numbers in [0, 1), got {o['betas']!r}")
    o["betas"] = [float(b) for b in o["betas"]]
    choice("optim", "schedule", SCHEDULES)
    num("optim", "warmup", integer=True, low=0, strict=False)
    num("optim", "min_lr_ratio", low=0, strict=False)
    if o["min_lr_ratio"] > 1:
        fail("optim.min_lr_ratio", f"must be a fraction of lr in [0, 1], got {o['min_lr_ratio']!r}")
    if o["clip"] is not None:
        num("optim", "clip", low=0)
    choice("optim", "impl", IMPLS)

    t = cfg["train"]
    for key in ("steps", "batch_size"):
        num("train", key, integer=True, low=0)
    num("train", "seq_len", integer=True, low=1)
    for key in ("init_seed", "data_seed"):
        num("train", key, integer=True, low=0, strict=False)
    if t["seq_len"] > m["context"]:
        fail("train.seq_len", f"{t['seq_len']} exceeds model.context {m['context']}")
    choice("train", "dataset", DATASETS)
    if not (isinstance(t["device"], str) and t["device"].split(":")[0] in DEVICES):
        fail("train.device", f"must be one of {', '.join(DEVICES)} (or cuda:N), got {t['device']!r}")
    num("train", "threads", integer=True, low=0)

    r = cfg["record"]
    rows = r["rows"]
    if not (rows in ("all", "dead", "live") or (isinstance(rows, list) and rows
                                                and all(_is_int(i) and i >= 0 for i in rows))):
        fail("record.rows", f"must be all, dead, live or a non-empty list of token ids, got {rows!r}")
    if isinstance(rows, list):
        r["rows"] = sorted(set(rows))
    steps = r["steps"]
    if isinstance(steps, dict):
        if set(steps) != {"every"} or not _is_int(steps["every"]) or steps["every"] <= 0:
            fail("record.steps", f"a mapping must be {{every: k}} with k > 0, got {steps!r}")
    elif isinstance(steps, list):
        bad = [s for s in steps if not _is_int(s) or not 0 <= s <= t["steps"]]
        if bad or not steps:
            fail("record.steps", f"list entries must be steps in 0..{t['steps']}, bad: {bad or steps!r}")
        r["steps"] = sorted(set(steps))
    elif steps != "all":
        fail("record.steps", f"must be all, {{every: k}} or a list of steps, got {steps!r}")
    tensors = r["tensors"]
    if not isinstance(tensors, list) or any(x not in TENSORS for x in tensors):
        fail("record.tensors", f"must be a list drawn from {', '.join(TENSORS)}, got {tensors!r}")
    if "E" in tensors and m["tied"]:
        fail("record.tensors", "E (the untied output matrix) needs model.tied: false")
    if "master" in tensors and not str(cfg["precision"]["dtype"]).startswith("fp32-master"):
        fail("record.tensors", "master (the fp32 master copy of W) needs precision fp32-master-rne or fp32-master-sr")
    r["tensors"] = [x for x in TENSORS if x in tensors]  # canonical order

    sweep = cfg["sweep"]
    flat = _flatten({k: v for k, v in cfg.items() if k != "sweep"})
    for key, values in sweep.items():
        if key not in flat and key.split(".")[0] not in _FOREIGN:
            fail(f"sweep.{key}", "names no config key")
        if not isinstance(values, list) or not values:
            fail(f"sweep.{key}", f"must be a non-empty list of values, got {values!r}")

    for section, validator in (("corpus", validate_corpus_config), ("tokenizer", validate_tokenizer_config)):
        try:
            checked = validator(cfg[section])
        except ConfigError as e:
            msg = str(e)
            if not msg.startswith(f"{section}."):
                msg = f"{section}: {msg}"
            src = next((v for k, v in origins.items() if k.startswith(section)), None)
            raise ConfigError(f"{msg} (set in {src})" if src else msg) from None
        if isinstance(checked, dict):
            cfg[section] = checked


def sweep_members(cfg: dict) -> list[dict]:
    """One validated config per combination of the sweep's values (cartesian product), `sweep` emptied."""
    sweep = cfg.get("sweep") or {}
    if not sweep:
        return [cfg]
    keys = list(sweep)
    members = []
    for combo in itertools.product(*(sweep[k] for k in keys)):
        member = copy.deepcopy(cfg)
        member["sweep"] = {}
        for key, value in zip(keys, combo, strict=True):
            _set_dotted(member, key, value, {}, f"sweep.{key}")
        if member.get("smoke"):  # a swept value must not escape the smoke profile
            member = _smoke(member)
        validate(member)
        members.append(member)
    return members


def resolve_device(cfg: dict) -> dict:
    """`train.device: auto` -> the device this machine trains on (cuda > mps > cpu). Part of the run key."""
    if cfg["train"]["device"] != "auto":
        return cfg
    import torch

    if torch.cuda.is_available():
        device = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    cfg = copy.deepcopy(cfg)
    cfg["train"]["device"] = device
    return cfg


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
