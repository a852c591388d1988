"""The config schema machinery: keys declared as data, one validator walking them, one message style.

Every key of an experiment config is one `Key` entry: its dotted path, its type with bounds or choices, its
default, whether null is allowed, its smoke cap and a line of help. The entries themselves live next to the code
that owns them (`experiments.rig.config.SCHEMA`, which takes in `experiments.rig.tokenizer.SCHEMA`); this module only
knows how to walk them:

* `check(schema, value)` validates a mapping against the keys under a prefix, fills in defaults, normalises
  values (numbers written as strings, sorted id lists, ...) and runs the section's cross-key rules.
* `defaults(schema)` is the default config the schema describes (`DEFAULTS`, `DEFAULT_CORPUS`, ...).
* `reference(schema, rules)` is the key reference, `experiments/configs/README.md`; a test keeps the committed
  file equal to it (`python -m experiments.rig.schema` rewrites it).

Every error names the key first, then what is wrong, then what is allowed:

    optim.lr: got -0.002 (allowed: a number > 0); set in experiments/configs/child.yaml
    train.stepz: unknown key (did you mean train.steps?)
    record.tensors: got E with model.tied: true (allowed: E, the untied output matrix, only with model.tied: false)

This module is not part of the training fingerprint: what it decides reaches training only through the
resolved config, which the run key hashes.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.errors import ConfigError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a key without a default: it must be given


def show(value: Any) -> str:
    """A value as a config file spells it (null, true, false), else its repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class Invalid(ConfigError):
    """A config value or key is wrong: `<key>: <what is wrong> (<what is allowed>)[; set in <source>]`."""

    def __init__(self, key: str, problem: str, note: str | None = None, source: str | None = None):
        self.key, self.problem, self.note, self.source = key, problem, note, source
        msg = f"{key}: {problem}" + (f" ({note})" if note else "") + (f"; set in {source}" if source else "")
        super().__init__(msg)

    def set_in(self, source: str | None) -> Invalid:
        """The same error naming the file (or override) that set the key."""
        return Invalid(self.key, self.problem, self.note, source) if source and not self.source else self


def allowed(what: str, hint: str | None = None) -> str:
    return f"allowed: {what}" + (f"; {hint}" if hint else "")


class Bad(Exception):
    """Raised by a type: `problem` says what is wrong; the walker adds the key and what is allowed."""

    def __init__(self, problem: str, *, hint: str | None = None, sub: str | None = None, what: str | None = None):
        super().__init__(problem)
        self.problem, self.hint, self.sub, self.what = problem, hint, sub, what


def _did_you_mean(word: Any, options: Iterable[str]) -> str | None:
    if not isinstance(word, str):
        return None
    hit = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f"did you mean {hit[0]}?" if hit else None


# ------------------------------------------------------------------------------------------------- types

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class _Bounded:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def _within(self, v: float) -> bool:
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))

    def _bounds(self) -> str:
        lo = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        hi = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        if lo and hi:
            return f" in {lo}, {hi}"
        if lo:
            return f" {'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f" {'<=' if self.le is not None else '<'} {hi[:-1]}"
        return ""


@dataclass(frozen=True)
class Int(_Bounded):
    """An integer (never a bool, a float or a string)."""

    def check(self, v: Any) -> int:
        if not _is_int(v) or not self._within(v):
            raise Bad(f"got {show(v)}")
        return v

    def describe(self, plural: bool = False) -> str:
        return ("integers" if plural else "an integer") + self._bounds()


@dataclass(frozen=True)
class Num(_Bounded):
    """A finite number, stored as a float; a numeric string is read as one (YAML 1.1 reads `1e-3` as a string)
    unless `strings` is false."""

    strings: bool = True

    def check(self, v: Any) -> float:
        if isinstance(v, str) and self.strings:
            try:
                v = float(v)
            except ValueError:
                pass
        if not _is_num(v):
            raise Bad(f"got {show(v)}")
        if not math.isfinite(v):  # NaN compares false with every bound: it would slip through to torch
            raise Bad(f"{show(v)} is not a finite number")
        if not self._within(v):
            raise Bad(f"got {show(v)}")
        return float(v)

    def describe(self, plural: bool = False) -> str:
        return ("numbers" if plural else "a number") + self._bounds()


@dataclass(frozen=True)
class Bool:
    def check(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise Bad(f"got {show(v)}")
        return v

    def describe(self, plural: bool = False) -> str:
        return "true or false"


@dataclass(frozen=True)
class Str:
    """A string; `nonempty`, and `forbid`: characters it may not contain, `no_leading`: nor start with."""

    nonempty: bool = False
    forbid: str = ""
    no_leading: str = ""
    purpose: str = ""  # said after the type, e.g. "usable in a file name"

    def check(self, v: Any) -> str:
        if (not isinstance(v, str) or (self.nonempty and not v) or any(c in v for c in self.forbid)
                or (self.no_leading and v.startswith(self.no_leading))):
            raise Bad(f"got {show(v)}")
        return v

    def describe(self, plural: bool = False) -> str:
        what = ("non-empty " if self.nonempty else "") + ("strings" if plural else "string")
        what = what if plural else ("a " + what)
        return what + (f" {self.purpose}" if self.purpose else "")


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]
    prefixed: str = ""  # also allowed: an option followed by ":..." (a device index), described so

    def check(self, v: Any) -> str:
        ok = v in self.options if not self.prefixed else (isinstance(v, str) and v.split(":")[0] in self.options)
        if not ok:
            raise Bad(f"got {show(v)}", hint=_did_you_mean(v, self.options))
        return v

    def describe(self, plural: bool = False) -> str:
        return ("values drawn from " if plural else "one of ") + ", ".join(self.options) + (
            f", {self.prefixed}" if self.prefixed else "")


@dataclass(frozen=True)
class ListOf:
    """A list (or tuple) of `item`s. `duplicates`: keep, merge (drop repeats) or reject; `order`: keep, sorted or
    canonical (the order of the item's choices); `length`: exact; `pow2`: the length is 2**k, k >= 1."""

    item: Any
    nonempty: bool = False
    length: int | None = None
    duplicates: str = "keep"
    order: str = "keep"
    pow2: bool = False

    def check(self, v: Any) -> list:
        if not isinstance(v, (list, tuple)):
            raise Bad(f"got {show(v)}")
        out = []
        for x in v:
            try:
                out.append(self.item.check(x))
            except Bad as e:
                raise Bad(f"got {show(x)} in {show(v)}", hint=e.hint) from None
        if (self.nonempty and not out) or (self.length is not None and len(out) != self.length):
            raise Bad(f"got {show(v)}")
        if self.pow2 and (len(out) < 2 or len(out) & (len(out) - 1)):
            raise Bad(f"got {len(out)} entries")
        if self.duplicates == "reject":
            for i, x in enumerate(out):
                if x in out[:i]:
                    raise Bad(f"lists {show(x)} twice")
        if self.order == "sorted":
            out = sorted(set(out))
        elif self.order == "canonical":
            out = [o for o in self.item.options if o in out]
        return out

    def describe(self, plural: bool = False) -> str:
        size = ("a non-empty list of" if self.nonempty else f"a list of {self.length}" if self.length is not None
                else "a list of 2^k (k >= 1)" if self.pow2 else "a list of")
        distinct = "distinct " if self.duplicates == "reject" else ""
        return f"{size} {distinct}{self.item.describe(plural=True)}"


@dataclass(frozen=True)
class Every:
    """`{every: k}`: every k-th step."""

    k: Int = Int(gt=0)

    def check(self, v: Any) -> dict:
        if not isinstance(v, dict) or set(v) != {"every"}:
            raise Bad(f"got {show(v)}")
        self.k.check(v["every"])
        return dict(v)

    def describe(self, plural: bool = False) -> str:
        return "{every: k} with k " + self.k.describe()


@dataclass(frozen=True)
class OneOf:
    """The first alternative that accepts the value."""

    alternatives: tuple

    def check(self, v: Any) -> Any:
        hints = []
        for alt in self.alternatives:
            try:
                return alt.check(v)
            except Bad as e:
                hints.append(e.hint)
        raise Bad(f"got {show(v)}", hint=next((h for h in hints if h), None))

    def describe(self, plural: bool = False) -> str:
        parts = [", ".join(a.options) if isinstance(a, Choice) else a.describe() for a in self.alternatives]
        return ", ".join(parts[:-1]) + ", or " + parts[-1]


@dataclass(frozen=True)
class Sweep:
    """`{dotted.key: [values, ...]}`; that each key names a config key is a rule (it needs the config)."""

    def check(self, v: Any) -> dict:
        if not isinstance(v, dict):
            raise Bad(f"got {show(v)}")
        for key, values in v.items():
            if not isinstance(values, list) or not values:
                raise Bad(f"got {show(values)}", sub=str(key), what="a non-empty list of values")
        return v

    def describe(self, plural: bool = False) -> str:
        return "a mapping {dotted.key: [values, ...]}"


class _Section:
    def __repr__(self) -> str:
        return "SECTION"


SECTION: Any = _Section()  # the type of a key that holds keys of its own


# -------------------------------------------------------------------------------------------------- keys

@dataclass(frozen=True)
class Key:
    """One config key. A section (type SECTION) holds the keys under its path; its default is theirs."""

    path: str
    type: Any = SECTION
    default: Any = REQUIRED
    help: str = ""
    nullable: bool = False
    smoke: int | str | None = None  # an int caps the value under LAB_SMOKE=1; a string says what smoke does
    rules: tuple[Callable[[dict], None], ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    def describe(self, schema: tuple[Key, ...] = ()) -> str:
        if self.type is SECTION:
            what = f"a mapping of {', '.join(k.name for k in children(schema, self.path))}"
        else:
            what = self.type.describe()
        return what + (" or null" if self.nullable else "")


def children(schema: Iterable[Key], prefix: str) -> list[Key]:
    return [k for k in schema if k.parent == prefix]


def defaults(schema: tuple[Key, ...], prefix: str = "") -> dict:
    """The default mapping of the keys under `prefix` (a section without a default takes its keys')."""
    out = {}
    for k in children(schema, prefix):
        if k.type is SECTION and k.default is REQUIRED:
            out[k.name] = defaults(schema, k.path)
        elif k.default is not REQUIRED:
            out[k.name] = copy.deepcopy(k.default)
    return out


def suggest(schema: tuple[Key, ...], path: str) -> str:
    """The note of an unknown key: the nearest sibling, else the same or a near name in another section,
    else the known keys."""
    prefix, _, name = path.rpartition(".")
    if prefix and not any(k.path == prefix for k in schema):
        return suggest(schema, prefix)  # `foo.bar`: it is `foo` that is unknown
    siblings = [k.name for k in children(schema, prefix)]
    hint = difflib.get_close_matches(name, siblings, n=1)
    if hint:
        return f"did you mean {prefix + '.' if prefix else ''}{hint[0]}?"
    elsewhere = [k.path for k in schema if k.name == name]
    if not elsewhere:
        near = difflib.get_close_matches(name, [k.name for k in schema], n=1)
        elsewhere = [k.path for k in schema if near and k.name == near[0]]
    if elsewhere:
        return f"did you mean {' or '.join(elsewhere)}?"
    return f"known: {', '.join(siblings)}"


def unknown(schema: tuple[Key, ...], path: str) -> Invalid:
    return Invalid(path, "unknown key", suggest(schema, path))


def check(schema: tuple[Key, ...], value: Any, prefix: str = "",
          rules: tuple[Callable[[dict], None], ...] = ()) -> dict:
    """Validate the mapping of the keys under `prefix`: a new dict with defaults filled in and values
    normalised; raise Invalid naming the first bad key. `rules` (and each section's) run on the result."""
    keys = children(schema, prefix)
    if not isinstance(value, dict):
        raise Invalid(prefix or "config", f"got {show(value)}",
                      allowed(f"a mapping of {', '.join(k.name for k in keys)}"))
    known = {k.name for k in keys}
    for name in value:
        if name not in known:
            raise unknown(schema, f"{prefix}.{name}" if prefix else str(name))
    out = {}
    for k in keys:
        if k.name in value:
            out[k.name] = _check_value(schema, k, value[k.name])
        elif k.type is SECTION and k.default is REQUIRED:
            out[k.name] = check(schema, {}, k.path, k.rules)
        elif k.default is REQUIRED:
            raise Invalid(k.path, "missing", allowed(k.describe(schema)))
        else:
            out[k.name] = copy.deepcopy(k.default)
    for rule in rules:
        rule(out)
    return out


def _check_value(schema: tuple[Key, ...], k: Key, v: Any) -> Any:
    if v is None:
        if k.nullable:
            return None
        raise Invalid(k.path, "got null", allowed(k.describe(schema)))
    if k.type is SECTION:
        return check(schema, v, k.path, k.rules)
    try:
        return k.type.check(v)
    except Bad as e:
        key = f"{k.path}.{e.sub}" if e.sub else k.path
        raise Invalid(key, e.problem, allowed(e.what or k.describe(schema), e.hint)) from None


# --------------------------------------------------------------------------------------------- reference

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "README.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(k: Key, schema: tuple[Key, ...]) -> str:
    if k.default is REQUIRED:
        return "(its keys')" if k.type is SECTION else "required"
    return "`" + json.dumps(k.default, ensure_ascii=False) + "`"


def reference(schema: tuple[Key, ...], rules: Iterable[Callable] = (), intro: str = "") -> str:
    """The key reference as markdown: one table per section, then the rules that relate keys."""
    lines = ["# Config keys", "",
             "<!-- Generated from the schema by `python -m experiments.rig.schema`; do not edit by hand. -->", ""]
    if intro:
        lines += [intro.strip(), ""]
    top = [k for k in children(schema, "") if k.type is not SECTION]
    sections = [("", "Top level", "", top)]
    for s in children(schema, ""):
        if s.type is SECTION:
            sections.append((s.path, f"`{s.path}`", s.help, [k for k in schema if k.path.startswith(s.path + ".")]))
    for _, title, help_, keys in sections:
        lines += [f"## {title}", ""]
        if help_:
            lines += [help_.strip(), ""]
        lines += ["| key | allowed | default | smoke | meaning |", "|---|---|---|---|---|"]
        for k in keys:
            smoke = "" if k.smoke is None else f"<= {k.smoke}" if isinstance(k.smoke, int) else k.smoke
            lines.append(f"| `{k.path}` | {_cell(k.describe(schema))} | {_cell(_default(k, schema))} | "
                         f"{_cell(smoke)} | {_cell(k.help)} |")
        lines.append("")
    section_rules = [r for k in schema for r in k.rules]
    all_rules = [*section_rules, *rules]
    if all_rules:
        lines += ["## Rules across keys", ""]
        lines += [f"- {' '.join((r.__doc__ or r.__name__).split())}" for r in all_rules]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments.rig.schema [--check]`: rewrite (or compare) experiments/configs/README.md."""
    from experiments.rig import config

    argv = sys.argv[1:] if argv is None else argv
    text = config.reference()
    if "--check" in argv:
        same = REFERENCE.exists() and REFERENCE.read_text() == text
        print(f"{REFERENCE}: {'up to date' if same else 'differs from the schema'}")
        return 0 if same else 1
    REFERENCE.write_text(text)
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
