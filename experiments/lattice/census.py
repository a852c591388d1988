"""The live/dead census of a vocabulary on a training text: which ids occur, how often, in which script.

Not on the training path (runs.TRAINING_MODULES), so refining a report never changes a run key.
"""

from __future__ import annotations

import unicodedata

import numpy as np
from tokenizers import Tokenizer

SCRIPTS = ("thai", "latin", "cjk", "hangul", "digits", "punctuation", "whitespace", "other", "special")

_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x30FF),  # CJK symbols and punctuation, Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # halfwidth and fullwidth forms
    (0x20000, 0x3FFFF),  # CJK extensions B onwards
)
_HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF))


def _in(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in ranges)


def _is_latin(ch: str) -> bool:
    return ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN")


def script_of(token: str) -> str:
    """The script of a vocabulary token, by Unicode block/category of its characters.

    A letter script wins over digits and marks (Thai > Hangul > CJK > Latin; "1st" is Latin, Thai digits are
    Thai). Without letters of those scripts: all decimal digits -> "digits", all whitespace -> "whitespace",
    all punctuation or symbols -> "punctuation", anything else (Greek, Cyrillic, mixed, ...) -> "other".
    "special" is not decided here (a token's text does not say it is special): ``census`` labels those.
    """
    if not token:
        return "other"
    if any(0x0E00 <= ord(c) <= 0x0E7F for c in token):
        return "thai"
    if any(_in(c, _HANGUL_RANGES) for c in token):
        return "hangul"
    if any(_in(c, _CJK_RANGES) for c in token):
        return "cjk"
    if any(_is_latin(c) for c in token):
        return "latin"
    cats = [unicodedata.category(c) for c in token]
    if all(c == "Nd" for c in cats):
        return "digits"
    if all(c.isspace() for c in token):
        return "whitespace"
    if all(c[0] in "PS" for c in cats):
        return "punctuation"
    return "other"


def census(prepared, tokenizer: Tokenizer, top: int = 20, examples: int = 10) -> dict:
    """Live/dead census of the vocabulary on the training stream (plain data, JSON-serialisable)."""
    return census_of_counts(prepared.counts, tokenizer, prepared.manifest, top=top, examples=examples)


def census_of_counts(counts: np.ndarray, tokenizer: Tokenizer, manifest: dict | None = None,
                     top: int = 20, examples: int = 10) -> dict:
    """The census from per-id occurrence counts (what every run file stores), see ``census``."""
    counts = np.asarray(counts, dtype=np.int64)
    V = int(counts.size)
    manifest = manifest or {}
    n_tokens = int(counts.sum())
    id_to_token = [tokenizer.id_to_token(i) for i in range(V)]
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    scripts = ["special" if t in specials else script_of(t) for t in id_to_token]
    live = counts > 0
    live_counts = counts[live]
    chars = manifest.get("texts", {}).get("train", {}).get("chars", 0)

    by_script: dict[str, dict[str, int]] = {}
    dead_examples: dict[str, list[str]] = {}
    for i, s in enumerate(scripts):
        row = by_script.setdefault(s, {"vocab": 0, "live": 0, "dead": 0})
        row["vocab"] += 1
        row["live" if live[i] else "dead"] += 1
        if not live[i] and len(dead_examples.setdefault(s, [])) < examples:
            dead_examples[s].append(id_to_token[i])
    order = sorted(by_script, key=lambda s: (-by_script[s]["dead"], SCRIPTS.index(s)))
    top_ids = np.argsort(-counts, kind="stable")[:top]
    return {
        "vocab_size": V,
        "tokens": n_tokens,
        "chars": int(chars),
        "tokens_per_char": float(n_tokens / chars) if chars else None,
        "live": int(live.sum()),
        "dead": int(V - live.sum()),
        "live_fraction": float(live.mean()),
        "dead_fraction": float(1 - live.mean()),
        # "mostly dead" candidates: a kick or two, then nothing
        "seen_once": int((counts == 1).sum()),
        "seen_twice": int((counts == 2).sum()),
        "live_counts": {
            "min": int(live_counts.min()) if live_counts.size else 0,
            "max": int(live_counts.max()) if live_counts.size else 0,
            "mean": float(live_counts.mean()) if live_counts.size else 0.0,
            "median": float(np.median(live_counts)) if live_counts.size else 0.0,
        },
        "top": [{"id": int(i), "token": id_to_token[i], "count": int(counts[i])} for i in top_ids],
        "dead_by_script": {s: by_script[s]["dead"] for s in order},
        "by_script": {s: by_script[s] for s in order},
        "dead_examples": {s: dead_examples[s] for s in order if dead_examples.get(s)},
        "dead_ids": [int(i) for i in np.flatnonzero(~live)],
    }
