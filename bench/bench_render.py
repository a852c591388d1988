"""Render timings, side by side: cold render -j1 vs -j2, no-change render, edit-one-entry render.

    python bench/bench_render.py               # on the test fixture (copied to a temp dir)
    python bench/bench_render.py --root .      # also: no-change renders of a real project, in place
    python bench/bench_render.py --root . --cold 'lore/the-*' lore/lifecycle.qmd
                                               # also: those pages executed cold, their runs cached
    python bench/bench_render.py --root . --cold
                                               # every page executed cold, runs cached
    LAB_SMOKE=1 python bench/bench_render.py --root . --cold-store
                                               # a fresh clone: the project's sources copied, empty store,
                                               # plan trained, every page executed
    python bench/bench_render.py --quarto      # `quarto render` vs `lab render`, LAB_SMOKE=1 copies of the
                                               # project (tests/pages/quarto_parity.py SUBSET; --all: every
                                               # page): cold (runs stored, nothing else) and no-change

Each render runs as `lab render` in a fresh interpreter, as a user would start it, so import time is
included. Cold renders also report where the time went (the render's own `time:` line): total,
training (planned + inside documents, from the run log), analyses, rendering (pages + site build).
Goal: a no-change render in <= 3 s.

--quarto: first a warm-up `lab render` in a third copy trains the smoke runs into a shared temporary store,
so both renderers start with the runs stored and nothing else; then, in two fresh copies, `lab render` and
`quarto render` cold, then both again without a change. Quarto has no cache for us to use (freeze: false,
see ARCHITECTURE.md), so its no-change render executes every page again. The ratio column is quarto/lab.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "notebook"  # 2 log entries, 2 lore pages, figures, math, links
STAMP = ".lab-build"
LAB = Path(sys.executable).with_name("lab")  # the installed command: it trains the plan (publish alone cannot)
BREAKDOWN = re.compile(r"^time: total ([\d.]+) s, training ([\d.]+) s, analyses ([\d.]+) s, rendering ([\d.]+) s$",
                       re.M)


def write_project(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("site", ".lab", "store", "__pycache__"))
    return dest


def timed_render(root: Path, *args: str, env: dict | None = None, breakdown: list | None = None) -> tuple[float, str]:
    """Seconds and summary line of one render; `breakdown` receives (total, training, analyses, rendering)."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [str(LAB)] if LAB.exists() else [sys.executable, "-m", "lab"]
    start = time.perf_counter()
    done = subprocess.run([*command, "render", "--root", str(root), "--strict", *args],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"render failed in {root}:\n{done.stdout}\n{done.stderr}")
    summary = next((line for line in done.stdout.splitlines() if " document" in line and " executed, " in line), "")
    m = BREAKDOWN.search(done.stdout)
    if breakdown is not None and m:
        breakdown.extend(float(x) for x in m.groups())
    return seconds, summary


def breakdown_rows(project: str, what: str, parts: list, rows: list) -> None:
    for name, value in zip(("total", "training", "analyses", "rendering"), parts, strict=False):
        rows.append((project, f"{what}: {name}", value, ""))


def bench_fixture(rows: list) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        one = write_project(Path(tmp) / "j1")
        two = write_project(Path(tmp) / "j2")
        env1, env2 = {"LAB_STORE": str(one / "store")}, {"LAB_STORE": str(two / "store")}
        parts: list = []
        t1, s1 = timed_render(one, "-j", "1", env=env1, breakdown=parts)
        rows.append(("fixture", "cold render -j1", t1, s1))
        breakdown_rows("fixture", "cold -j1", parts, rows)
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


def bench_root(root: Path, rows: list, cold: list[str] | None, cold_store: bool) -> None:
    t, s = timed_render(root)
    rows.append((root.name, "first render (may execute)", t, s))
    t, s = timed_render(root)
    rows.append((root.name, "no-change render", t, s))
    stamp = root / "site" / STAMP
    if stamp.exists():
        stamp.unlink()
    t, s = timed_render(root)
    rows.append((root.name, "no-change, site rebuilt", t, s))
    if cold is not None:
        # re-execute the chosen pages (all without patterns) from scratch; their runs are in the store
        parts: list = []
        t, s = timed_render(root, "--force", *(cold or ["*"]), "-j", "1", breakdown=parts)
        rows.append((root.name, "cold pages, runs cached", t, s))
        breakdown_rows(root.name, "cold", parts, rows)
    if cold_store:
        bench_cold_store(root, rows)


def bench_cold_store(root: Path, rows: list) -> None:
    """A fresh clone: the sources (and the committed plan) copied into a temp root, an empty store."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        copy = Path(tmp) / root.name
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(
            "site", ".lab", "store", "__pycache__", ".git", ".venv", "test-artifacts", "*.egg-info"))
        parts: list = []
        t, s = timed_render(copy, env={"LAB_STORE": str(Path(tmp) / "store")}, breakdown=parts)
        rows.append((root.name, "cold build, empty store", t, s))
        breakdown_rows(root.name, "empty store", parts, rows)


def parity_helpers():
    """tests/pages/quarto_parity.py, loaded by path (tests/ is not a package; site-packages may have one)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quarto_parity", REPO / "tests" / "pages" / "quarto_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_quarto(root: Path, env: dict) -> float:
    start = time.perf_counter()
    done = parity_helpers().quarto_render(root, env=env, timeout=7200)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"quarto render failed in {root}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def bench_quarto(rows: list, all_pages: bool) -> None:
    """quarto render vs lab render of LAB_SMOKE=1 copies of the project, runs already stored, side by side."""
    helpers = parity_helpers()
    SUBSET, copy_project = helpers.SUBSET, helpers.copy_project  # noqa: N806
    if helpers.quarto_binary() is None:
        sys.exit("--quarto: Quarto is not installed (no $QUARTO, no quarto on PATH, no /opt/quarto/bin/quarto)")
    keep = None if all_pages else SUBSET
    what = "smoke (all)" if all_pages else "smoke (subset)"
    with tempfile.TemporaryDirectory(prefix="bench-quarto-", dir=os.environ.get("TMPDIR")) as tmp:
        env = {"LAB_SMOKE": "1", "LAB_STORE": str(Path(tmp) / "store")}
        warm = copy_project(Path(tmp) / "warm", keep)
        t, s = timed_render(warm, "-j", "1", env=env)
        rows.append((what, "warm-up: runs trained", t, s))
        lab, quarto = copy_project(Path(tmp) / "lab", keep), copy_project(Path(tmp) / "quarto", keep)
        # lab's pair first, then quarto's: a quarto render in between would add derived results to the shared
        # store, which (rightly) re-executes lab's listing pages
        t_lab = [timed_render(lab, "-j", "1", env=env) for _ in range(2)]
        t_quarto = [timed_quarto(quarto, env) for _ in range(2)]
        for i, label in enumerate(("cold (runs stored)", "no-change")):
            rows.append((what, f"lab render {label}", t_lab[i][0], t_lab[i][1]))
            rows.append((what, f"quarto render {label}", t_quarto[i], ""))
            rows.append((what, f"ratio quarto/lab {label}", t_quarto[i] / t_lab[i][0], "x (ratio, not seconds)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="also time renders of this project (renders it in place)")
    parser.add_argument("--cold", nargs="*", default=None, metavar="PATTERN",
                        help="with --root: also time executing these sources (all without patterns) from scratch, "
                             "runs cached, with the time breakdown")
    parser.add_argument("--cold-store", action="store_true",
                        help="with --root: also time a fresh clone's build (copied sources, empty store)")
    parser.add_argument("--quarto", action="store_true",
                        help="instead: quarto render vs lab render of a LAB_SMOKE=1 copy of this project")
    parser.add_argument("--all", action="store_true", help="with --quarto: every page, not the parity subset")
    args = parser.parse_args()
    rows: list = []
    load_before = os.getloadavg()
    if args.quarto:
        bench_quarto(rows, args.all)  # both renderers with -j1 equivalent: Quarto executes one page at a time
    else:
        bench_fixture(rows)
    if args.root:
        bench_root(args.root.resolve(), rows, args.cold, args.cold_store)
    print(f"load average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs: timings taken side by side, compare the ratios")
    print(f"{'project':<14} {'measurement':<34} {'value':>8}  summary")
    for project, what, value, summary in rows:
        unit = "" if ("speed-up" in what or "ratio" in what) else " s"
        print(f"{project:<14} {what:<34} {value:>6.2f}{unit:<2}  {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
