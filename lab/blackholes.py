"""`lab blackholes PATH`: the black-hole census of a checkpoint's matrix and its frozen-smoke component table.

PATH is a file or directory, or a Hugging Face repo id (ORG/NAME) already in the local cache (never the
network). `--tensor both` puts the input embedding's and the unembedding's census side by side.

Exit status: 0 done, 2 bad input (one line on stderr, `lab blackholes: error: ...`).
"""

from __future__ import annotations

import argparse
import json
import time

from experiments.errors import DataError
from experiments.lattice import blackholes
from experiments.lattice.checkpoints import CheckpointError, Pairing, load_matrix, pairing, resolve
from lab.cli import fail


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help=".safetensors, sharded index .json, checkpoint directory, .gguf, "
                   "run .h5, or a Hugging Face repo id (ORG/NAME) in the local cache")
    p.add_argument("--revision", help="for a repo id: branch, tag or commit of the cached snapshot (default: main, "
                   "else the only one cached)")
    p.add_argument("--tensor", help="tensor name (default: lm_head/output, else the token embedding; W for runs), or "
                   "'both': the input embedding and the unembedding side by side (census only)")
    p.add_argument("--step", type=int, help="recorded step of a run file (default: the last)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--select-k", type=int, default=5, help="exponent-space L∞ radius of the selection (default 5)")
    p.add_argument("--adjacency-k", type=int, default=1, help="graph edges join nodes at lattice L∞ ≤ this (default 1)")
    p.add_argument("--zone-radius", type=float, default=5e-5, help="L2 radius of the geographic core (default 5e-5)")
    p.add_argument("--center", choices=("anchor", "medoid"), default="anchor", help="centre of the zones")
    p.add_argument("--top", type=int, default=20, help="black holes listed (default 20)")
    p.add_argument("--max-nodes", type=int, default=5000, help="largest selection the lattice graph accepts (default 5000)")
    p.add_argument("--bf16-view", action="store_true",
                   help="for float32/float16/quantized tensors: analyse the values rounded to bf16 instead of the "
                        "stored bytes (census and lattice graph both on the rounded view)")
    p.add_argument("--no-smoke", action="store_true", help="census only, skip the selection and component table")
    p.add_argument("--unused", metavar="REGEX",
                   help="token strings of known-unused tokens (e.g. '^\\[unused\\d+\\]$'): adds Magikarp "
                        "under-training indicators (norm, cosine to their mean) compared with black-hole membership")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `blackholes` subcommand to an argparse subparsers object (handler in ``func``)."""
    p = subparsers.add_parser("blackholes", help="black-hole census and lattice components of a checkpoint matrix",
                              description=__doc__.splitlines()[0])
    _add_arguments(p)
    p.set_defaults(func=cmd_blackholes)
    return p


def cmd_blackholes(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): lab's main stops quietly
    except (CheckpointError, DataError, ValueError, OSError) as e:
        return fail("blackholes", e)


def _run(args: argparse.Namespace) -> int:
    if args.top < 0 or args.select_k < 0 or args.adjacency_k < 1 or args.zone_radius <= 0:
        raise ValueError("need --top ≥ 0, --select-k ≥ 0, --adjacency-k ≥ 1 and --zone-radius > 0")
    source = resolve(args.path, revision=args.revision)
    if args.tensor == "both":
        return _run_both(args, source)
    t0 = time.perf_counter()
    m = load_matrix(source, tensor=args.tensor, step=args.step, progress=not args.json)
    pair = pairing(source) if m.step is None else None
    t_load = time.perf_counter() - t0
    view = args.bf16_view and not m.exact_bf16
    identity = m.bits if view else m.identity
    t1 = time.perf_counter()
    c = blackholes.census(identity, row_ids=m.row_ids)
    t_census = time.perf_counter() - t1

    lattice_ok = m.exact_bf16 or view
    smoke, skipped = None, None
    if args.no_smoke:
        skipped = "--no-smoke"
    elif not lattice_ok:
        skipped = (f"lattice analyses need bf16 data; this tensor is {m.dtype} "
                   "(use --bf16-view to analyse its values rounded to bf16)")
    elif c.black_holes.size == 0:
        skipped = "no black holes, so no anchor for the selection"
    else:
        smoke = blackholes.frozen_smoke(m.bits, c, select_k=args.select_k, adjacency_k=args.adjacency_k,
                                        zone_radius=args.zone_radius, center=args.center, max_nodes=args.max_nodes)
    indicators = _indicators(m, c, args.unused) if args.unused else None
    subject = _subject(m, pair, view)
    if args.json:
        out = {"subject": subject, "census": c.to_json(top=args.top, tokens=m.tokens),
               "smoke": smoke.to_json() if smoke else None, "smoke_skipped": skipped, "undertrained": indicators,
               "seconds": {"load": round(t_load, 3), "census": round(t_census, 3)}}
        print(json.dumps(out))
        return 0
    print(m.describe() + (" — analysed as its bf16 view" if view else ""))
    if pair is not None:
        print(f"analysed the {pair.role(m.tensor)}; {pair.describe(m.tensor)}")
    print(f"identity on {subject['identity']}; loaded in {t_load:.2f} s, census in {t_census:.2f} s")
    print(blackholes.format_census(c, top=args.top, tokens=m.tokens))
    print()
    print(blackholes.format_report(smoke) if smoke else f"component table skipped: {skipped}")
    if indicators:
        print()
        print(f"under-training indicators (reference: {indicators['reference']['rows']} rows matching "
              f"{args.unused!r}; cosine after removing the first principal direction)")
        for name in ("reference", "black_hole", "other"):
            g = indicators[name]
            if g["rows"]:
                print(f"  {name:<10} {g['rows']:>8,} rows  median norm {g['median_norm']:.4g}  "
                      f"median cosine {g['median_cosine']:.3f}")
        print(f"  AUC of cosine: reference vs rest {indicators['auc_cosine_reference']:.3f}"
              + (f", black-hole rows vs rest {indicators['auc_cosine_black_hole']:.3f}"
                 if indicators.get("auc_cosine_black_hole") is not None else ""))
    return 0


def _subject(m, pair: Pairing | None, view: bool = False) -> dict:
    return {"path": str(m.path), "tensor": m.tensor, "dtype": m.dtype, "step": m.step, "shape": list(m.shape),
            "identity": "bf16 view (rounded)" if view else "stored bytes",
            "role": pair.role(m.tensor) if pair else None, "tied": pair.tied if pair else None,
            "tied_reason": pair.reason if pair else None}


def _run_both(args: argparse.Namespace, source) -> int:
    """Census of the input embedding and of the unembedding (one, when they are tied), side by side."""
    if args.step is not None or source.suffix.lower() in (".h5", ".hdf5"):
        raise CheckpointError(f"{source}: --tensor both needs a model checkpoint (safetensors or GGUF), not a run file")
    pair = pairing(source)
    if pair is None:
        raise CheckpointError(f"{source}: --tensor both found neither an input embedding nor an unembedding tensor; "
                              "pass --tensor NAME")
    names = [pair.embedding or pair.unembedding] if pair.tied else [pair.embedding, pair.unembedding]
    sides = []
    for name in names:
        t0 = time.perf_counter()
        m = load_matrix(source, tensor=name, progress=not args.json)
        view = args.bf16_view and not m.exact_bf16
        t1 = time.perf_counter()
        c = blackholes.census(m.bits if view else m.identity, row_ids=m.row_ids)
        sides.append((m, c, view, t1 - t0, time.perf_counter() - t1))
    if args.json:
        print(json.dumps({"tied": pair.tied, "tied_reason": pair.reason, "matrices": [
            {"subject": _subject(m, pair, view), "census": c.to_json(top=args.top, tokens=m.tokens),
             "seconds": {"load": round(tl, 3), "census": round(tc, 3)}} for m, c, view, tl, tc in sides]}))
        return 0
    print(f"{source}: {pair.describe()}")
    print(_side_by_side(pair, sides))
    for m, c, _, _, _ in sides:
        print(f"\n{pair.role(m.tensor)} {m.tensor}:")
        print(blackholes.format_census(c, top=args.top, tokens=m.tokens))
    print("\ncomponent tables skipped: --tensor both is census only (pass --tensor NAME for one matrix)")
    return 0


def _side_by_side(pair: Pairing, sides: list) -> str:
    cols = []
    for m, c, view, t_load, t_census in sides:
        j = c.to_json(top=5)
        cols.append([pair.role(m.tensor), m.tensor, m.dtype + (" (bf16 view)" if view else ""),
                     f"{m.shape[0]:,} × {m.shape[1]:,}", f"{j['unique']:,}", f"{j['black_holes']:,}",
                     f"{j['tokens_in_black_holes']:,}", f"{j['largest']:,}",
                     ", ".join(map(str, j["populations"][:5])) or "-", f"{t_load:.2f} + {t_census:.2f}"])
    labels = ["", "tensor", "dtype", "shape", "unique rows", "black holes", "tokens in BHs", "largest",
              "top populations", "load + census s"]
    width = [max(len(x) for x in labels)] + [max(len(x) for x in col) for col in cols]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip([label, *row], width, strict=True)).rstrip()
                     for label, *row in zip(labels, *cols, strict=True))


def _indicators(m, c, pattern: str) -> dict:
    import re

    if m.tokens is None:
        raise ValueError(f"{m.path}: --unused needs token strings, but no tokenizer was found beside it")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--unused: bad regular expression {pattern!r}: {e}") from e
    ref = [i for i, t in enumerate(m.row_ids.tolist()) if t < len(m.tokens) and m.tokens[t] and rx.search(m.tokens[t])]
    if not ref:
        raise ValueError(f"--unused: no token matches {pattern!r}")
    return blackholes.undertrained_indicators(m.values(), ref).compare(c)

