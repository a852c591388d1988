"""Render timings, side by side: cold render -j1 vs -j2, no-change render, edit-one-entry render.

    python bench/bench_render.py               # on the test fixture (copied to a temp dir)
    python bench/bench_render.py --root .      # also: no-change renders of a real project, in place
    python bench/bench_render.py --root . --cold 'lore/the-*' lore/lifecycle.qmd
                                               # also: those pages executed cold, their runs cached

Each render runs as `python -m publish render` in a fresh interpreter, as a user would start it, so
import time is included. Goal: a no-change render in <= 3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "notebook"  # 2 log entries, 2 lore pages, figures, math, links
STAMP = ".lab-build"


def write_project(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("site", ".lab", "store", "__pycache__"))
    return dest


def timed_render(root: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "publish", "render", "--root", str(root), *args],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"render failed in {root}:\n{done.stdout}\n{done.stderr}")
    summary = next((line for line in done.stdout.splitlines() if " document" in line and " executed, " in line), "")
    return seconds, summary


def bench_fixture(rows: list) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        one = write_project(Path(tmp) / "j1")
        two = write_project(Path(tmp) / "j2")
        env1, env2 = {"LAB_STORE": str(one / "store")}, {"LAB_STORE": str(two / "store")}
        t1, s1 = timed_render(one, "-j", "1", env=env1)
        rows.append(("fixture", "cold render -j1", t1, s1))
        t2, s2 = timed_render(two, "-j", "2", env=env2)
        rows.append(("fixture", "cold render -j2", t2, s2))
        rows.append(("fixture", "speed-up -j2 vs -j1", t1 / t2, "x (ratio, not seconds)"))
        t, s = timed_render(two, env=env2)
        rows.append(("fixture", "no-change render", t, s))
        (two / "site" / STAMP).unlink()
        t, s = timed_render(two, env=env2)
        rows.append(("fixture", "no-change, site rebuilt", t, s))
        entry = two / "log" / "2026-11-21-1415-second-look.py"
        entry.write_text(entry.read_text().replace("6 * 7", "6 * 8"))
        t, s = timed_render(two, env=env2)
        rows.append(("fixture", "after editing one entry", t, s))


def bench_root(root: Path, rows: list, cold: list[str]) -> None:
    t, s = timed_render(root)
    rows.append((root.name, "first render (may execute)", t, s))
    t, s = timed_render(root)
    rows.append((root.name, "no-change render", t, s))
    stamp = root / "site" / STAMP
    if stamp.exists():
        stamp.unlink()
    t, s = timed_render(root)
    rows.append((root.name, "no-change, site rebuilt", t, s))
    if cold:
        # re-execute the chosen pages from scratch; the runs they use are already in the store
        t, s = timed_render(root, "--force", *cold, "-j", "1")
        rows.append((root.name, "cold pages, runs cached", t, s))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="also time renders of this project (renders it in place)")
    parser.add_argument("--cold", nargs="+", default=[], metavar="PATTERN",
                        help="with --root: also time executing these sources from scratch (runs cached)")
    args = parser.parse_args()
    rows: list = []
    bench_fixture(rows)
    if args.root:
        bench_root(args.root.resolve(), rows, args.cold)
    print(f"{'project':<12} {'measurement':<28} {'value':>8}  summary")
    for project, what, value, summary in rows:
        unit = "" if "speed-up" in what else " s"
        print(f"{project:<12} {what:<28} {value:>6.2f}{unit:<2}  {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
