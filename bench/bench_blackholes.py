"""Benchmark the black-hole census and the lattice graph at Qwen3-4B scale. One command:

    .venv/bin/python bench/bench_blackholes.py [--rows 151936] [--dim 2560] [--nodes 2000] [--skip-unique] [--cli-only]

1. Census of a synthetic rows × dim bf16 matrix with the 13 planted Qwen3-4B black holes
   (814, 704, 306, …, 2; so the expected unique count is rows − 2,087), best of 3, against one
   ``np.unique(axis=0)`` on the same matrix (the goal is ≤ 1 s and the ratio is reported).
2. Exponent-space selection over the whole matrix.
3. Pairwise lattice L∞ + components + the component table on `nodes` unique vectors of `dim` dimensions
   shaped like the frozen smoke (each vector one to three single-cell hops from an earlier one).
4. The whole frozen-smoke pipeline with that cloud planted in the big matrix.
5. `lab blackholes` as a user runs it: the matrix saved by ``safetensors.torch.save_file`` as bf16
   ``lm_head.weight``, the installed script in a fresh process (twice: the second run is the warm one; then
   census only, ``--no-smoke``, as the full run's matrix also holds the 2,000-node cloud whose component table
   costs what part 4 does); its own load and census seconds, the whole command's wall time and its peak RSS
   (GNU time). Goals:
   census ≤ 0.5 s, command ≤ 2 s, peak RSS ≤ 2× the tensor. The tensor is memory-mapped, so "load" only
   parses the header and the census includes paging the file in.
Results are printed and written to bench/results/blackholes.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.lattice import blackholes  # noqa: E402
from experiments.lattice import lifecycle as lattice  # noqa: E402

QWEN_POPULATIONS = (814, 704, 306, 228, 11, 10, 6, 5, 4, 4, 3, 3, 2)


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def smoke_cloud(rng: np.random.Generator, n: int, dim: int, cluster: int = 20) -> np.ndarray:
    """n distinct bf16 vectors shaped like the frozen smoke: a Qwen-like base (|x| ~ 0.01), clusters whose
    centres sit 2–5 cells away from it in 20 dims, and inside each cluster a random tree of single-cell hops
    in 1–3 dims (so nodes within a cluster are mostly adjacent and clusters are not)."""
    base = lattice.ordinal(lattice.from_float32((rng.normal(size=dim) * 0.01).astype(np.float32)))
    base[np.abs(base) < 0x2000] = 0x3C00  # keep every coordinate far from zero: hops never cross it
    ords, seen = [], set()
    while len(ords) < n:
        centre = base.copy()
        dims = rng.choice(dim, size=20, replace=False)
        centre[dims] += rng.integers(2, 6, size=20) * rng.choice([-1, 1], size=20)
        members = [centre]
        while len(members) < cluster:
            v = members[rng.integers(len(members))].copy()
            hop = rng.choice(dim, size=rng.integers(1, 4), replace=False)
            v[hop] += rng.choice([-1, 1], size=hop.size)
            members.append(v)
        for v in members:
            if v.tobytes() not in seen and len(ords) < n:
                seen.add(v.tobytes())
                ords.append(v)
    o = np.stack(ords)
    # back from sign-aware ordinals to bit patterns
    return np.where(o < 0, (-o) | 0x8000, o).astype(np.uint16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=151_936)
    ap.add_argument("--dim", type=int, default=2_560)
    ap.add_argument("--nodes", type=int, default=2_000)
    ap.add_argument("--skip-unique", action="store_true", help="skip the slow np.unique(axis=0) reference")
    ap.add_argument("--cli-only", action="store_true", help="only part 5, the command in a fresh process")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    res: dict = {"rows": args.rows, "dim": args.dim, "nodes": args.nodes, "cpus": os.cpu_count(),
                 "machine": platform.platform(), "numpy": np.__version__}

    t = time.perf_counter()
    # random finite bf16 patterns with exponents 100…127 (|x| < 1): no accidental duplicates at this width
    w = rng.integers(0, 2**16, size=(args.rows, args.dim), dtype=np.uint16)
    w &= np.uint16(0x807F)
    w |= (rng.integers(100, 127, size=(args.rows, args.dim), dtype=np.uint16) << np.uint16(7))
    rows = rng.permutation(args.rows)
    at = 0
    for pop in QWEN_POPULATIONS:
        members = rows[at:at + pop]
        w[members] = w[members[0]]
        at += pop
    expected_unique = args.rows - sum(p - 1 for p in QWEN_POPULATIONS)
    print(f"synthetic {args.rows:,} × {args.dim:,} bf16 ({w.nbytes / 2**20:.0f} MiB) built in "
          f"{time.perf_counter() - t:.1f} s; expected unique {expected_unique:,}")
    if args.cli_only:
        res.update(cli_command(w, expected_unique))
        return _write(res)

    t_census, c = best_of(lambda: blackholes.census(w))
    assert c.n_unique == expected_unique, (c.n_unique, expected_unique)
    assert c.populations[c.black_holes].tolist() == list(QWEN_POPULATIONS)
    t_hash, _ = best_of(lambda: blackholes.row_hashes(w))
    res.update(census_s=round(t_census, 3), hash_s=round(t_hash, 3), unique=c.n_unique,
               black_holes=int(c.black_holes.size))
    print(f"census: {t_census:.3f} s (hashing {t_hash:.3f} s) → {c.n_unique:,} unique, "
          f"{c.black_holes.size} black holes, {c.tokens_in_black_holes:,} tokens in them")
    if not args.skip_unique:
        t = time.perf_counter()
        u = np.unique(w, axis=0)
        t_unique = time.perf_counter() - t
        assert u.shape[0] == c.n_unique
        res.update(np_unique_s=round(t_unique, 3), speedup=round(t_unique / t_census, 1))
        print(f"np.unique(axis=0): {t_unique:.2f} s → census is {t_unique / t_census:.1f}× faster")
        del u

    t_sel, _ = best_of(lambda: blackholes.exponent_distances(w, int(c.first_row[c.black_holes[0]])))
    res["exponent_selection_s"] = round(t_sel, 3)
    print(f"exponent-space distances of all rows from the anchor: {t_sel:.3f} s")

    cloud = smoke_cloud(rng, args.nodes, args.dim)
    ords = lattice.ordinal(cloud)
    t_dist, dist = best_of(lambda: blackholes.pairwise_linf(ords))
    pops = np.ones(args.nodes, dtype=np.int64)
    pops[: len(QWEN_POPULATIONS)] = QWEN_POPULATIONS
    core = np.zeros(args.nodes, dtype=bool)
    t_table, (table, single, n_comp, _) = best_of(lambda: blackholes.component_table(dist, pops, core, 1))
    n_edges = int(((dist == 1).sum()) // 2)
    res.update(pairwise_linf_s=round(t_dist, 3), component_table_s=round(t_table, 3), edges=n_edges,
               components=n_comp)
    print(f"{args.nodes:,} nodes × {args.dim:,} dims: pairwise lattice L∞ {t_dist:.3f} s, components + table "
          f"{t_table:.3f} s ({n_edges:,} edges, {n_comp} components, largest {table[0].nodes if table else 1})")
    x = ords[: min(500, args.nodes)]
    dense = np.random.default_rng(1).integers(-30000, 30000, size=x.shape).astype(np.int32)
    t_dense, _ = best_of(lambda: blackholes.pairwise_linf(dense), repeats=1)
    res["pairwise_linf_dense_500_s"] = round(t_dense, 3)
    print(f"worst case (dense, every coordinate different) on {x.shape[0]} nodes: {t_dense:.3f} s")

    # plant the cloud: node i goes to one row, the BH nodes to as many rows as their population
    for i in range(args.nodes):
        w[rows[i]] = cloud[i]
    at = args.nodes
    for i, pop in enumerate(QWEN_POPULATIONS):
        w[rows[at:at + pop - 1]] = cloud[i]
        at += pop - 1
    c = blackholes.census(w)
    t = time.perf_counter()
    rep = blackholes.frozen_smoke(w, c)
    t_smoke = time.perf_counter() - t
    res.update(frozen_smoke_s=round(t_smoke, 3), smoke_nodes=rep.nodes, smoke_selected=rep.selected_tokens)
    print(f"frozen-smoke pipeline on the planted matrix: {t_smoke:.2f} s ({rep.selected_tokens:,} tokens, "
          f"{rep.nodes:,} nodes, {rep.edges:,} edges, {rep.components} components)")

    res.update(cli_command(w, None))
    return _write(res)


def _write(res: dict) -> int:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "blackholes.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out / 'blackholes.json'}")
    return 0


def _run_child(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one command in a fresh process.

    The peak comes from /usr/bin/time (GNU time's %M), which execs the command from its own small process:
    a child forked straight from this benchmark (which holds the matrix and torch) would report our RSS as
    its own, because Linux carries ru_maxrss across fork until exec. Without /usr/bin/time: psutil polling.
    """
    with tempfile.NamedTemporaryFile("r") as peak:
        timer = ["/usr/bin/time", "-f", "%M", "-o", peak.name] if os.path.exists("/usr/bin/time") else []
        t = time.perf_counter()
        proc = subprocess.Popen(timer + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        polled = 0
        if not timer:
            import psutil

            child = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    polled = max(polled, child.memory_info().rss)
                except psutil.Error:
                    break
                time.sleep(0.005)
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()}")
        rss = int(peak.read().split()[-1]) * 1024 if timer else polled  # GNU time reports KiB
    return wall, rss, out.decode()


def cli_command(w: np.ndarray, expected_unique: int | None) -> dict:
    """Part 5: `lab blackholes FILE --json` in a fresh process on the matrix written by safetensors.torch."""
    import torch
    from safetensors.torch import save_file

    lab = Path(sys.executable).with_name("lab")
    tensor_mb = w.nbytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        t = time.perf_counter()
        save_file({"lm_head.weight": torch.from_numpy(w.view(np.int16)).view(torch.bfloat16)}, str(path))
        print(f"\nsafetensors.torch.save_file: {path.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - t:.1f} s")
        runs = []
        for label, extra in (("first", []), ("second", []), ("no-smoke", ["--no-smoke"])):
            wall, rss, out = _run_child([str(lab), "blackholes", str(path), "--json", *extra])
            j = json.loads(out)
            if expected_unique is not None:
                assert j["census"]["unique"] == expected_unique, j["census"]["unique"]
            runs.append({"run": label, "load_s": j["seconds"]["load"], "census_s": j["seconds"]["census"],
                         "command_s": round(wall, 3), "peak_rss_mb": round(rss / 1e6)})
    print(f"lab blackholes on a {w.shape[0]:,} × {w.shape[1]:,} bf16 file ({tensor_mb:,.0f} MB tensor), fresh process:")
    print(f"  {'run':<8} {'load s':>7} {'census s':>9} {'command s':>10} {'peak RSS MB':>12} {'RSS / tensor':>13}")
    for r in runs:
        print(f"  {r['run']:<8} {r['load_s']:>7.3f} {r['census_s']:>9.3f} {r['command_s']:>10.2f} "
              f"{r['peak_rss_mb']:>12,} {r['peak_rss_mb'] / tensor_mb:>13.2f}")
    print(f"  goals:   {'':>7} {'≤ 0.5':>9} {'≤ 2':>10} {2 * tensor_mb:>12,.0f} {'≤ 2':>13}")
    return {"cli": runs, "tensor_mb": round(tensor_mb)}


if __name__ == "__main__":
    sys.exit(main())
