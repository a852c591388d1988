"""The derived-results cache on the seven epoch lore pages: cold vs warm, side by side. One command:

    .venv/bin/python bench/bench_derived.py            # smoke runs in a temporary store (trained first)
    .venv/bin/python bench/bench_derived.py --real     # the real runs of the store (LAB_STORE or store/)

The project's sources are copied into a temporary root (so the code cannot change under the bench and the
site, document cache and derived results of the real tree are untouched), and the seven pages are rendered
there with `lab render -j 1 --strict`, each render in a fresh interpreter as a user starts it:

1. prepare: one render that puts the runs in the store (smoke: trains them; --real: they must be stored,
   or this render trains them) -- not a measurement;
2. cold: every page executed with LAB_DERIVED=0 (every analysis computed, as before the cache);
3. first: every page executed, derived results empty: each analysis is computed once, by the first page
   that needs it, and read by the others;
4. after a prose edit: one sentence appended to each page, then `lab render` (no --force): the pages
   re-execute and read every analysis;
5. warm, forced: every page executed again with the cache full.

For each: wall time of the render and the render's own breakdown (analyses = execution minus training),
plus the derived results on disk. With --real the derived results of the real store are emptied for step 3.

    .venv/bin/python bench/bench_derived.py --per-call flannel-1

times each cached analysis on one stored run (`experiments.find`: never trains) computed (LAB_DERIVED=0),
computed and stored (first call), and read (second call): the cost per track at the run's real size, when
the store lacks the runs for a full real --real comparison. Results go to bench/results/derived.json
(git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = Path(sys.executable).with_name("lab")
PAGES = ["lore/the-inhale.qmd", "lore/the-sneeze.qmd", "lore/deceleration.qmd", "lore/fimbulwinter.qmd",
         "lore/lifecycle.qmd", "lore/random-walk-on-the-shell.qmd", "lore/origin-or-centroid.qmd"]
TOTAL = re.compile(r"^time: total ([\d.]+) s, training ([\d.]+) s, analyses ([\d.]+) s, rendering ([\d.]+) s$", re.M)
PER_PAGE = re.compile(r"^\s+(lore/\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", re.M)
IGNORE = shutil.ignore_patterns("site", ".lab", "store", "__pycache__", ".git", ".venv", "test-artifacts",
                                "*.egg-info", "bench")


def render(root: Path, env: dict, *args: str) -> dict:
    """One `lab render` of the seven pages: wall seconds, the render's breakdown, per-page analyses."""
    command = [str(LAB)] if LAB.exists() else [sys.executable, "-m", "lab"]
    start = time.perf_counter()
    done = subprocess.run([*command, "render", "--root", str(root), "--strict", "-j", "1", *args, *PAGES],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"render failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    out = {"wall_s": round(wall, 1)}
    m = TOTAL.search(done.stdout)
    if m:
        out.update(zip(("total_s", "training_s", "analyses_s", "rendering_s"), map(float, m.groups()),
                       strict=True))
    out["pages_analyses_s"] = {p: float(a) for p, _, a, _ in PER_PAGE.findall(done.stdout)}
    return out


def derived_on_disk(store: Path) -> dict:
    files = list((store / "derived").rglob("*.npz"))
    return {"entries": len(files), "bytes": sum(f.stat().st_size for f in files)}


def prose_edit(root: Path, n: int) -> None:
    for page in PAGES:
        path = root / page
        path.write_text(path.read_text().rstrip("\n") + f"\n\nProse edit {n}: nothing the code reads.\n")


def per_call(ref: str) -> dict:
    """Seconds per cached analysis of one stored run: computed, computed + stored, read back."""
    os.environ["TQDM_DISABLE"] = "1"
    sys.path.insert(0, str(REPO))
    import experiments
    from experiments.cloud import epochs, geometry, shell
    from experiments.store import derived
    run = experiments.find(ref)
    calls = {"geometry.run_cloud": geometry.run_cloud, "epochs.dead_track": epochs.dead_track,
             "geometry.population_tracks": geometry.population_tracks, "shell.run_shell": shell.run_shell,
             "shell.run_cloud_and_shell": shell.run_cloud_and_shell, "shell.radial_split": shell.radial_split}
    out = {"run": f"{run.name} {run.key}", "steps": len(run.steps), "rows": len(run.tokens), "seconds": {}}
    for name, fn in calls.items():
        shutil.rmtree(run.path.parent / "derived" / run.key, ignore_errors=True)  # the first stored call misses
        times = []
        for switch in ("0", "1", "1"):  # computed, computed and stored, read
            os.environ["LAB_DERIVED"] = switch
            start = time.perf_counter()
            fn(run)
            times.append(round(time.perf_counter() - start, 4))
        out["seconds"][name] = dict(zip(("computed", "computed+stored", "read"), times, strict=True))
    out["stats"] = dict(derived.stats)
    print(f"{out['run']}: {out['steps']} steps x {out['rows']} rows")
    print(f"{'analysis':<28} {'computed s':>11} {'+stored s':>10} {'read s':>8}")
    for name, t in out["seconds"].items():
        print(f"{name:<28} {t['computed']:>11.3f} {t['computed+stored']:>10.3f} {t['read']:>8.4f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="use the real runs of LAB_STORE or store/ (not smoke)")
    ap.add_argument("--per-call", metavar="RUN", help="only time each cached analysis on this stored run")
    args = ap.parse_args(argv)
    if args.per_call:
        res = per_call(args.per_call)
        out = REPO / "bench" / "results" / "derived-per-call.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-derived-") as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(REPO, root, ignore=IGNORE)
        store = Path(os.environ.get("LAB_STORE") or REPO / "store") if args.real else Path(tmp) / "store"
        env = {**os.environ, "LAB_STORE": str(store), "PYTHONPATH": str(root), "TQDM_DISABLE": "1"}
        if args.real:
            env.pop("LAB_SMOKE", None)
        else:
            env["LAB_SMOKE"] = "1"
        cold, warm = {**env, "LAB_DERIVED": "0"}, {**env, "LAB_DERIVED": "1"}
        res: dict = {"runs": "real" if args.real else "smoke (LAB_SMOKE=1, temporary store)", "pages": PAGES,
                     "cpus": os.cpu_count(), "machine": platform.platform(), "renders": {}}
        r = res["renders"]
        r["prepare (puts the runs in the store)"] = render(root, cold)
        r["cold: LAB_DERIVED=0, --force"] = render(root, cold, "--force")
        shutil.rmtree(store / "derived", ignore_errors=True)
        r["first: derived empty, --force"] = render(root, warm, "--force")
        res["derived after first"] = derived_on_disk(store)
        prose_edit(root, 1)
        r["after a prose edit (warm)"] = render(root, warm)
        r["warm, --force"] = render(root, warm, "--force")
        if not args.real:
            shutil.rmtree(store / "derived", ignore_errors=True)
    print(f"runs: {res['runs']}; {len(PAGES)} pages, -j 1, {res['cpus']} CPUs")
    print(f"{'render':<40} {'wall s':>8} {'analyses s':>11} {'training s':>11} {'rendering s':>12}")
    for name, v in r.items():
        print(f"{name:<40} {v['wall_s']:>8.1f} {v.get('analyses_s', float('nan')):>11.1f} "
              f"{v.get('training_s', float('nan')):>11.1f} {v.get('rendering_s', float('nan')):>12.1f}")
    print(f"derived results after the first render: {res['derived after first']}")
    for name in ("cold: LAB_DERIVED=0, --force", "first: derived empty, --force", "after a prose edit (warm)"):
        print(f"  per page analyses, {name}: {r[name]['pages_analyses_s']}")
    out = REPO / "bench" / "results" / "derived.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
