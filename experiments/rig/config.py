"""Experiment configuration as plain data: YAML presets, inheritance, overrides, validation, smoke profile.

A preset is `experiments/configs/<name>.yaml`. It may say `extends: <other-preset>`; the chain is deep-merged
onto `DEFAULTS` (mappings merge key by key, everything else replaces). Overrides are dotted keys
(`{"optim.lr": 3e-4}`, CLI `--set optim.lr=3e-4`, values parsed as YAML) or a bare leaf name (`lr=3e-4`)
when exactly one section has that leaf (`steps` is ambiguous: train.steps or record.steps).

Every key -- its type, bounds or choices, default, smoke cap and meaning -- is one entry of `SCHEMA` below
(the tokenizer section is `experiments.rig.tokenizer.SCHEMA`; the corpus section `experiments.rig.corpus.SCHEMA`);
`DEFAULTS` and `SMOKE` are derived from it, `validate` walks it (`experiments.rig.schema.check`) and then applies
the rules that relate keys (`RULES`, and each section's `rules`). The key reference generated from it is
`experiments/configs/README.md` (`python -m experiments.rig.schema` rewrites it; a test keeps it current).

Smoke profile: with env LAB_SMOKE=1, `resolve` shrinks every config after overrides (and records
`smoke: true`, so the run key differs from the real run's): the integer caps of the schema's smoke column,
then record.steps lists keep only steps <= the new train.steps, record.rows id lists keep ids < vocab_size,
sweep lists keep their first 2 values.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path
from typing import Any

import yaml

from experiments.errors import ConfigError
from experiments.rig import corpus, schema, tokenizer
from experiments.rig.schema import (
    Bool,
    Choice,
    Every,
    Int,
    Invalid,
    Key,
    ListOf,
    Num,
    OneOf,
    Str,
    Sweep,
    allowed,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

PRECISIONS = ("bf16", "fp32", "fp32-master-rne", "fp32-master-sr")
MASTER_PRECISIONS = tuple(p for p in PRECISIONS if p.startswith("fp32-master"))  # fp32 masters written into bf16
SCHEDULES = ("constant", "linear", "cosine")
IMPLS = ("foreach", "single", "fused")
DATASETS = ("sliding", "chunks")
DEVICES = ("auto", "cpu", "cuda", "mps")
TENSORS = ("W", "E", "m", "v", "grad", "h_mean", "master")


# ------------------------------------------------------------------------------------------------ schema

def _heads_divide_width(m: dict) -> None:
    """`model.n_heads` divides `model.d_model`."""
    if m["d_model"] % m["n_heads"]:
        raise Invalid("model.n_heads", f"got {m['n_heads']}, which does not divide model.d_model {m['d_model']}",
                      allowed("a divisor of model.d_model"))


def _tagged_fits(m: dict) -> None:
    """`model.tagged`: the control ids differ from the cube's ids, and the cube of 2^k ids fits the model
    (k <= `model.d_model` coordinates)."""
    tg = m["tagged"]
    if tg is None:
        return
    both = sorted(set(tg["ids"]) & set(tg["control"]))
    if both:
        raise Invalid("model.tagged.control", f"got {both[0]}, which is also one of model.tagged.ids",
                      allowed("token ids distinct from model.tagged.ids"))
    k = len(tg["ids"]).bit_length() - 1
    if k > m["d_model"]:
        raise Invalid("model.tagged.ids", f"got 2^{k} ids, a {k}-cube, with model.d_model {m['d_model']}",
                      allowed("a k-cube with k <= model.d_model coordinates"))


def _seq_len_fits_context(cfg: dict) -> None:
    """`train.seq_len` <= `model.context`."""
    t, m = cfg["train"], cfg["model"]
    if t["seq_len"] > m["context"]:
        raise Invalid("train.seq_len", f"got {t['seq_len']}, more than model.context {m['context']}",
                      allowed("at most model.context"))


def _record_steps_within_run(cfg: dict) -> None:
    """`record.steps` lists only steps in 0..`train.steps`."""
    steps, last = cfg["record"]["steps"], cfg["train"]["steps"]
    if isinstance(steps, list) and steps[-1] > last:
        raise Invalid("record.steps", f"got step {steps[-1]} in a run of train.steps {last}",
                      allowed(f"steps in 0..train.steps = 0..{last}"))


def _tensors_exist(cfg: dict) -> None:
    """`record.tensors`: E (the untied output matrix) needs `model.tied: false`; master (W's fp32 master copy)
    needs `precision.dtype` fp32-master-rne or fp32-master-sr."""
    tensors = cfg["record"]["tensors"]
    if "E" in tensors and cfg["model"]["tied"]:
        raise Invalid("record.tensors", "got E with model.tied: true",
                      allowed("E, the untied output matrix, only with model.tied: false"))
    dtype = cfg["precision"]["dtype"]
    if "master" in tensors and dtype not in MASTER_PRECISIONS:
        raise Invalid("record.tensors", f"got master with precision.dtype {dtype}",
                      allowed("master, the fp32 master copy of W, only with precision.dtype fp32-master-rne or "
                              "fp32-master-sr"))


def _sweep_keys_exist(cfg: dict) -> None:
    """Every `sweep` key names a config key."""
    flat = _flatten({k: v for k, v in cfg.items() if k != "sweep"})
    paths = {k.path for k in SCHEMA}
    for key in cfg["sweep"]:
        if key not in flat and key not in paths:
            raise Invalid(f"sweep.{key}", "unknown key", schema.suggest(SCHEMA, str(key)))


SCHEMA: tuple[Key, ...] = (
    Key("name", Str(nonempty=True, forbid="/\\ \0", no_leading=".", purpose="usable in a file name"), None,
        "names the run file; a preset is named after its file unless it says otherwise"),
    Key("description", Str(), "", "what the run is for, in a line or two (not part of the run key)"),
    Key("smoke", Bool(), False,
        "set by the smoke profile (LAB_SMOKE=1), so a smoke run never shares a real run's key"),
    *corpus.SCHEMA,
    *tokenizer.SCHEMA,
    Key("model", help="The transformer (experiments/model.py).", rules=(_heads_divide_width, _tagged_fits)),
    Key("model.d_model", Int(gt=0), 64, "width of the residual stream and of the embedding rows"),
    Key("model.n_layers", Int(gt=0), 2, "transformer blocks"),
    Key("model.n_heads", Int(gt=0), 2, "attention heads per block"),
    Key("model.d_ff", Int(gt=0), 256, "width of the feed-forward hidden layer"),
    Key("model.context", Int(gt=0), 128, "longest sequence the position embeddings cover"),
    Key("model.tied", Bool(), True, "the output matrix is the embedding matrix W (false: a separate matrix E)"),
    Key("model.init_std", Num(gt=0), 0.02, "standard deviation of the normal initialisation"),
    Key("model.tagged", default=None, nullable=True,
        help="rows initialised as a structure: the ids start as the vertices of a k-cube of edge `scale` in "
             "coordinates 0..k-1 around the first id's initial row (or the origin), the control ids "
             "uniformly in the same box"),
    Key("model.tagged.ids", ListOf(Int(ge=0), pow2=True, duplicates="reject"), help="the cube's vertices"),
    Key("model.tagged.control", ListOf(Int(ge=0), duplicates="reject"), [],
        help="token ids placed uniformly at random in the cube's box"),
    Key("model.tagged.scale", Num(gt=0), help="the cube's edge"),
    Key("model.tagged.at", Choice(("first", "origin")), "first",
        help="first: around the first id's initial row; origin: around 0"),
    Key("precision", help="Number formats of the weights and the optimizer. The shorthand `precision: bf16` "
                          "sets `precision.dtype` and keeps `sr_seed`."),
    Key("precision.dtype", Choice(PRECISIONS), "bf16",
        "bf16: pure bf16 params and bf16 Adam state (the seeds' setting); fp32; fp32-master-rne, fp32-master-sr: "
        "fp32 master weights and optimizer, written into the bf16 model by round-to-nearest-even or by "
        "stochastic rounding"),
    Key("precision.sr_seed", Int(ge=0), 0, "seed of the stochastic rounding (fp32-master-sr)"),
    Key("optim", help="AdamW and its learning-rate schedule."),
    Key("optim.lr", Num(gt=0), 1e-3, "peak learning rate"),
    Key("optim.betas", ListOf(Num(ge=0, lt=1), length=2), [0.9, 0.999], "AdamW's beta1, beta2"),
    Key("optim.eps", Num(ge=0), 1e-8, "AdamW's epsilon"),
    Key("optim.weight_decay", Num(ge=0), 0.0, "decoupled weight decay"),
    Key("optim.schedule", Choice(SCHEDULES), "constant",
        "constant; linear: decay to 0 over train.steps (the HF Trainer default); cosine: half a cosine down to "
        "min_lr_ratio x lr, as the published pre-training recipes do"),
    Key("optim.warmup", Int(ge=0), 0, "steps of linear warm-up from 0 before the schedule (HF's "
                                      "get_*_schedule_with_warmup)"),
    Key("optim.min_lr_ratio", Num(ge=0, le=1), 0.0, "where cosine ends, as a fraction of lr"),
    Key("optim.clip", Num(gt=0), None, "max gradient norm; null: no clipping", nullable=True),
    Key("optim.impl", Choice(IMPLS), "foreach", "torch's AdamW implementation, pinned (never left to its "
                                                "heuristics)"),
    Key("train", help="The training loop (experiments/train.py)."),
    Key("train.steps", Int(gt=0), 1000, "optimizer steps", smoke=20),
    Key("train.batch_size", Int(gt=0), 32, "windows per step", smoke=2),
    Key("train.seq_len", Int(gt=1), 128, "tokens per window; the loss is on seq_len-1 positions", smoke=32),
    Key("train.init_seed", Int(ge=0), 42, "seed of the initialisation"),
    Key("train.data_seed", Int(ge=0), 42, "seed of the batch order"),
    Key("train.dataset", Choice(DATASETS), "sliding",
        "sliding: every start offset; chunks: non-overlapping windows, shuffled each epoch, drop_last"),
    Key("train.device", Choice(DEVICES, prefixed="or cuda:N"), "auto",
        "auto: cuda > mps > cpu, fixed when the run is trained or keyed"),
    Key("train.threads", Int(gt=0), 2, "torch CPU threads; results depend on it, so it is part of the config",
        smoke=2),
    Key("record", help="What the run file records. loss, lr and the applied clip scale are always recorded, "
                       "every step."),
    Key("record.rows", OneOf((Choice(("all", "dead", "live")), ListOf(Int(ge=0), nonempty=True, order="sorted"))),
        "dead", "the embedding rows recorded: all, the dead tokens', the live tokens', or these token ids",
        smoke="keeps ids < tokenizer.vocab_size"),
    Key("record.steps", OneOf((Choice(("all",)), Every(), ListOf(Int(ge=0), nonempty=True, order="sorted"))),
        "all", "the steps recorded (step 0 is the initialisation)", smoke="keeps steps <= train.steps"),
    Key("record.tensors", ListOf(Choice(TENSORS), order="canonical"), ["W"],
        "W: the embedding rows; E: the untied output rows; m, v, grad: W's Adam moments and gradient; h_mean: "
        "the final hidden state averaged over batch and positions; master: W's fp32 master copy"),
    Key("sweep", Sweep(), {}, "one run per combination of the values (cartesian product)",
        smoke="keeps the first 2 values of each list"),
)

# rules across sections (each section's own rules sit on its Key)
RULES = (_seq_len_fits_context, _record_steps_within_run, _tensors_exist, _sweep_keys_exist)

DEFAULTS: dict[str, Any] = schema.defaults(SCHEMA)

SMOKE = {k.path: k.smoke for k in SCHEMA if isinstance(k.smoke, int)}

REFERENCE_INTRO = """\
Every key an experiment config may set: a preset (`experiments/configs/<name>.yaml`, which may say
`extends: <other preset>`), a `--set key=value` override (the value read as YAML; a bare key name such as
`lr` when exactly one section has it) or a config dict passed to `experiments.run`. Keys left out take the
default. Under `LAB_SMOKE=1` every config is shrunk after overrides as the smoke column says, and records
`smoke: true`.

A bad value is reported as `<key>: <what is wrong> (allowed: <what is allowed>); set in <file>`, an unknown
key as `<key>: unknown key (did you mean <nearest key>?)`.
"""


def reference() -> str:
    """The key reference (experiments/configs/README.md) as the schema generates it."""
    return schema.reference(SCHEMA, RULES, REFERENCE_INTRO)


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
        raise Invalid("extends", f"cycle {' -> '.join((*seen, name))}", allowed("a chain of presets without a loop"),
                      str(path))
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    base = copy.deepcopy(DEFAULTS)
    if parent is not None:
        if not isinstance(parent, str):
            raise Invalid("extends", f"got {schema.show(parent)}", allowed("a preset name"), str(path))
        base = _load_chain(parent, origins, (*seen, name))
    return _merge(base, data, origins, str(path))


def _set_dotted(cfg: dict, dotted: str, value: Any, origins: dict, source: str) -> None:
    parts = dotted.split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node.get(p), dict):
            if p == "precision" and isinstance(node.get(p), str):
                node[p] = {"dtype": node[p]}
            elif any(k.path == dotted for k in SCHEMA):  # `model.tagged.scale` while model.tagged is null
                above = ".".join(parts[:i + 1])
                raise Invalid(dotted, f"{above} is {schema.show(node.get(p))}",
                              allowed(f"set {above} to a mapping first"), source)
            else:
                raise Invalid(dotted, "unknown key", schema.suggest(SCHEMA, dotted), source)
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
        raise Invalid(key, "ambiguous key", f"say one of {', '.join(hits)}", "override")
    raise Invalid(key, "unknown key", schema.suggest(SCHEMA, key), "override")


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
            raise Invalid("name", "missing", allowed("a config dict needs a name: it names the run file"), "config")
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

def _source(key: str, origins: dict) -> str | None:
    """The file (or override) that set `key`, or the nearest section above it, or a key below it."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        if origins.get(".".join(parts[:i])):
            return origins[".".join(parts[:i])]
    return next((v for k, v in origins.items() if k.startswith(key + ".")), None)


def validate(cfg: dict, origins: dict | None = None) -> None:
    """Check `cfg` against SCHEMA and RULES in place: defaults filled in, values normalised (numbers written as
    strings read, id and step lists sorted); raise ConfigError naming the first bad key (and what set it)."""
    try:
        checked = schema.check(SCHEMA, cfg, rules=RULES)
    except Invalid as e:
        raise e.set_in(_source(e.key, origins or {})) from None
    cfg.clear()
    cfg.update(checked)


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
