"""Black-hole genesis: do dead rows of a training run coalesce into bit-identical rows, when, and why.

The mechanism under test (lore/black-hole-genesis.qmd, "The prediction"): with fp32 master weights, AdamW's decoupled weight
decay multiplies every dead row by (1 − η_t·λ) each step, while all dead rows receive nearly the same Adam
step u_t (their gradients are proportional: p_i·h̄, and Adam's m/√v ignores a common scale). Writing a dead
row as common part plus its own offset, x_i = c + d_i, the offset shrinks by the decay alone,

    d_i(t) = d_i(0) · Π_s (1 − η_s·λ) ≈ d_i(0) · exp(−S_t),   S_t = Σ_{s ≤ t} η_s·λ   (the decay budget),

while c follows the drive. A coordinate of two rows falls into one bf16 cell once their gap is below half a
cell at c, and a row joins a black hole once that holds in every coordinate. The budget S is the clock:
the same S gives the same collapse whatever η and λ are, so a result measured in accelerated ageing (large
ηλ, few steps) carries to a published recipe through S alone (`budget`, `RECIPES`).

What stops it: anything that breaks "same step for every dead row" (per-row differences of the Adam step
feed the offsets a floor of about δu/λ), and anything that shrinks c together with d (pure decay without a
drive: the relative gap never changes).

Analyses here read recorded runs (`census_track`, `gap_track`, `pure_decay_track`, `end_structure`) and
reuse the census and lattice graph of `experiments.lattice.blackholes` and the bf16 arithmetic of
`experiments.lattice.lifecycle`. None of them is on the training path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from experiments.lattice import blackholes
from experiments.lattice import lifecycle as lattice
from experiments.store.derived import cached

# Published recipes, as the project's genesis notes quote them (tags: V = read in the source, S = secondary,
# R = recalled); lore/black-hole-genesis.qmd ("How much budget real recipes spend") tabulates them. Sources:
# Pythia https://arxiv.org/abs/2304.01373 (its configs), Llama 3 https://arxiv.org/abs/2407.21783 (Table 3).
# Only their schedules enter the code; the budgets are computed by `budget`.
RECIPES = (
    {"model": "Pythia-70M", "tied": False, "lr": 1e-3, "min_lr_ratio": 0.1, "schedule": "cosine",
     "warmup": 1430, "steps": 143_000, "weight_decay": 0.1, "source": "V: pythia-70m.yml"},
    {"model": "Pythia-160M", "tied": False, "lr": 6e-4, "min_lr_ratio": 0.1, "schedule": "cosine",
     "warmup": 1430, "steps": 143_000, "weight_decay": 0.1, "source": "V: pythia-160m.yml"},
    {"model": "SmolLM1-135M", "tied": True, "lr": 3e-3, "min_lr_ratio": 0.0, "schedule": "wsd",
     "warmup": 2000, "steps": 2_000_000, "decay_steps": 400_000, "weight_decay": 0.01,
     "source": "V: config_smollm1_135M.yaml"},
    {"model": "Llama 3 8B", "tied": False, "lr": 3e-4, "min_lr_ratio": 0.1, "schedule": "cosine",
     "warmup": 8000, "steps": 940_000, "weight_decay": 0.1,
     "source": "S/R: peak lr from Table 3; wd 0.1 and steps assumed"},
)


# ---------------------------------------------------------------------------------------------------------
# the decay budget


def lr_schedule(lr: float, steps: int, schedule: str = "constant", warmup: int = 0, min_lr_ratio: float = 0.0,
                decay_steps: int = 0) -> np.ndarray:
    """η_t for optimizer steps t = 1..steps (float64), vectorised `experiments.rig.train.lr_at` plus WSD.

    "wsd" (warm-up, stable, decay): linear warm-up, constant, then linear decay to min_lr_ratio·lr over the
    last `decay_steps` steps (SmolLM1's recipe).
    """
    current = np.arange(steps, dtype=np.float64)  # lr_at evaluates the schedulers at step − 1
    warm = current < warmup
    out = np.empty(steps, dtype=np.float64)
    out[warm] = lr * current[warm] / max(1, warmup)
    rest = ~warm
    c = current[rest]
    if schedule == "constant":
        out[rest] = lr
    elif schedule == "linear":
        out[rest] = lr * np.maximum(0.0, (steps - c) / max(1, steps - warmup))
    elif schedule == "cosine":
        progress = (c - warmup) / max(1, steps - warmup)
        out[rest] = lr * (np.maximum(0.0, 0.5 * (1.0 + np.cos(math.pi * progress))) * (1 - min_lr_ratio)
                          + min_lr_ratio)
    elif schedule == "wsd":
        start = steps - decay_steps
        frac = np.clip((c - start) / max(1, decay_steps), 0.0, 1.0)
        out[rest] = lr * (1.0 - frac * (1.0 - min_lr_ratio))
    else:
        raise ValueError(f"schedule must be constant, linear, cosine or wsd, got {schedule!r}")
    return out


def budget(lr: float, weight_decay: float, steps: int, schedule: str = "constant", warmup: int = 0,
           min_lr_ratio: float = 0.0, decay_steps: int = 0, **_ignored) -> float:
    """S = Σ_t η_t·λ over a whole schedule (a recipe dict can be passed as keyword arguments)."""
    return float(lr_schedule(lr, steps, schedule, warmup, min_lr_ratio, decay_steps).sum() * weight_decay)


def config_budget(cfg: dict) -> float:
    """S of a resolved run config (its optim section and train.steps)."""
    o = cfg["optim"]
    return budget(o["lr"], o["weight_decay"], cfg["train"]["steps"], o["schedule"], o["warmup"],
                  o["min_lr_ratio"])


def run_budget(run) -> tuple[np.ndarray, np.ndarray]:
    """(S, shrink) at every recorded step of a run: S_t = Σ η_s·λ from the recorded lr, and the exact
    decay factor Π (1 − η_s·λ) the offsets would keep under pure decay (1 at step 0)."""
    wd = float(run.config["optim"]["weight_decay"])
    lr = np.asarray(run.lr, dtype=np.float64)  # lr[t − 1] is the rate of step t
    s = np.concatenate([[0.0], np.cumsum(lr * wd)])
    shrink = np.concatenate([[1.0], np.cumprod(1.0 - lr * wd)])
    steps = np.asarray(run.steps)
    return s[steps], shrink[steps]


# ---------------------------------------------------------------------------------------------------------
# census over steps


@dataclass
class CensusTrack:
    """The black-hole census of a run's recorded rows at each recorded step."""

    steps: np.ndarray
    unique: np.ndarray
    black_holes: np.ndarray
    tokens_in_black_holes: np.ndarray
    largest: np.ndarray
    rows: int

    def first(self, condition: np.ndarray) -> int | None:
        """First recorded step where `condition` (an array over steps) holds, or None."""
        hit = np.flatnonzero(condition)
        return int(self.steps[hit[0]]) if hit.size else None


@cached
def census_track(run, tensor: str = "W", block: int = 64) -> CensusTrack:
    """Census of the recorded rows of `tensor` (bf16 bits, or float32 bits for `master`) at every recorded step."""
    steps, unique, bhs, toks, largest = [], [], [], [], []
    for sel, data in lattice.iter_step_blocks(run, block=block, tensor=tensor, stored=True):
        for t, frame in zip(sel, data, strict=True):
            if steps and t == steps[-1]:
                continue  # blocks overlap by one step
            c = blackholes.census(frame)
            steps.append(int(t))
            unique.append(c.n_unique)
            bhs.append(int(c.black_holes.size))
            toks.append(c.tokens_in_black_holes)
            largest.append(int(c.populations.max()) if c.n_unique else 0)
    a = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return CensusTrack(a(steps), a(unique), a(bhs), a(toks), a(largest), int(len(run.tokens)))


# ---------------------------------------------------------------------------------------------------------
# offsets from the common part, in bf16 cells


def _values(run, tensor: str, steps) -> np.ndarray:
    x = np.asarray(run.tensor(tensor, steps=steps))
    return x.astype(np.float32) if x.dtype != np.float32 else x


def source_tensor(run) -> str:
    """The tensor holding the rows' exact values: the fp32 master copy when recorded, else W."""
    return "master" if "master" in run.available else "W"


@dataclass
class GapTrack:
    """Per recorded step: each row's largest offset from the common part, in bf16 cells at the common part."""

    steps: np.ndarray
    budget: np.ndarray  # S_t
    shrink: np.ndarray  # Π (1 − η_s·λ)
    median_cells: np.ndarray  # median over rows of max_k |x_ik − c_k| / cell(c_k)
    p90_cells: np.ndarray
    inside: np.ndarray  # fraction of rows within half a cell of c in every coordinate
    common_norm: np.ndarray  # ‖c‖₂
    tensor: str


@cached
def gap_track(run, block: int = 64) -> GapTrack:
    """How far the rows sit from their common part (the mean row), in cells of the bf16 lattice at c.

    Pure decay predicts median_cells(t) = median_cells(0)·shrink(t)·cell(c_0)/cell(c_t): a straight line in
    log against S while c stays in one binade. A floor where the line flattens is the per-row noise of the
    Adam step (offsets fed δu each step, decayed by λ: a level of about δu/λ).
    """
    tensor = source_tensor(run)
    s, shrink = run_budget(run)
    med, p90, inside, norm = [], [], [], []
    steps = np.asarray(run.steps)
    for start in range(0, steps.size, block):
        sel = steps[start:start + block]
        x = _values(run, tensor, slice(int(sel[0]), int(sel[-1]) + 1))
        for frame in x:
            c = frame.mean(axis=0, dtype=np.float64).astype(np.float32)
            cell = lattice.ulp(lattice.from_float32(c)).astype(np.float64)
            g = (np.abs(frame.astype(np.float64) - c) / cell).max(axis=1)
            med.append(float(np.median(g)))
            p90.append(float(np.quantile(g, 0.9)))
            inside.append(float((g < 0.5).mean()))
            norm.append(float(np.linalg.norm(c)))
    f = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    return GapTrack(steps, s, shrink, f(med), f(p90), f(inside), f(norm), tensor)


@dataclass
class PureDecay:
    """Unique bf16 rows the pure-decay model predicts: RNE(c_t + (x_i(0) − c_0)·Π(1 − η_s·λ)), with c_t the
    measured common part; beside the measured count, so the gap between them is what the model leaves out."""

    steps: np.ndarray
    budget: np.ndarray
    predicted_unique: np.ndarray
    predicted_black_holes: np.ndarray


@cached
def pure_decay_track(run, block: int = 64) -> PureDecay:
    tensor = source_tensor(run)
    s, shrink = run_budget(run)
    steps = np.asarray(run.steps)
    x0 = _values(run, tensor, int(steps[0])).astype(np.float64)
    off0 = x0 - x0.mean(axis=0)
    uniq, bhs = [], []
    i = 0
    for start in range(0, steps.size, block):
        sel = steps[start:start + block]
        x = _values(run, tensor, slice(int(sel[0]), int(sel[-1]) + 1))
        for frame in x:
            c = frame.mean(axis=0, dtype=np.float64)
            pred = lattice.from_float32((c + off0 * shrink[i]).astype(np.float32))
            cen = blackholes.census(pred)
            uniq.append(cen.n_unique)
            bhs.append(int(cen.black_holes.size))
            i += 1
    return PureDecay(steps, s, np.asarray(uniq, np.int64), np.asarray(bhs, np.int64))


def predicted_onset(run, at_step: int | None = None) -> float:
    """The budget S at which the first pair of rows should share a cell under pure decay, from the initial
    offsets alone: min over pairs of max_k ln(|Δ_ijk(0)| / (cell(c_k)/2)), with the cells of the common part
    c at `at_step` (default: the last recorded step, where the drive has carried it) — the estimate
    S ≈ ln(d0 / (cell/2)) of lore/black-hole-genesis.qmd, per pair and coordinate. Exact over all pairs (≤ 4,096 rows)."""
    tensor = source_tensor(run)
    x0 = _values(run, tensor, int(run.steps[0])).astype(np.float64)
    if x0.shape[0] > 4096:
        raise ValueError(f"{x0.shape[0]} rows: the exact pair search is limited to 4,096")
    at = int(run.steps[-1]) if at_step is None else int(at_step)
    c = _values(run, tensor, at).mean(axis=0, dtype=np.float64).astype(np.float32)
    half = lattice.ulp(lattice.from_float32(c)).astype(np.float64) / 2
    best = np.inf
    for s in range(0, x0.shape[0], 256):
        d = np.abs(x0[s:s + 256, None, :] - x0[None, :, :]) / half  # (b, n, D) gaps in half-cells
        worst = d.max(axis=2)
        worst[np.arange(worst.shape[0]), np.arange(s, s + worst.shape[0])] = np.inf
        best = min(best, float(worst.min()))
    return math.log(best) if best > 1 else 0.0


# ---------------------------------------------------------------------------------------------------------
# structure at the end


def end_structure(run, step: int | None = None, tensor: str = "W", select_k: int = 5):
    """(census, frozen-smoke report or None) of the recorded rows at `step` (default: the last): the seeds'
    selection around the largest black hole, its lattice graph and component table (`blackholes`)."""
    t = int(run.steps[-1]) if step is None else int(step)
    bits = lattice.as_bits(run.tensor(tensor, steps=t, kind="bits"))
    c = blackholes.census(bits, np.asarray(run.tokens))
    if c.black_holes.size == 0:
        return c, None
    return c, blackholes.frozen_smoke(bits, c, select_k=select_k)


def bh_linf_gaps(report) -> np.ndarray:
    """Lattice L∞ between every pair of black holes of a frozen-smoke report (upper triangle)."""
    m = np.asarray(report.bh_linf)
    if m.shape[0] < 2:
        return np.empty(0, dtype=np.int64)
    return m[np.triu_indices(m.shape[0], 1)]


def markdown_table(report) -> str:
    """The seeds' component table as a Markdown table."""
    lines = ["| Comp | Nodes | Tokens | Core | BH | Edges | Density | Cluster |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in [*report.table, report.singletons]:
        dens = "" if row.density is None else f"{row.density:.3f}"
        clus = "" if row.cluster is None else f"{row.cluster:.3f}"
        lines.append(f"| {row.comp} | {row.nodes} | {row.tokens} | {row.core} | {row.bh} | {row.edges} | {dens} | {clus} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# the tagged structure (a k-cube of dead rows and a random control set, `model.tagged`)


@dataclass
class SetTrack:
    """One tagged set (the cube or its control) over the recorded steps."""

    size: np.ndarray  # RMS distance of its rows from their centroid, relative to step 0
    shape_error: np.ndarray  # ‖Y − s·Y0‖ / ‖Y0‖ for offsets Y from the centroid, best scale s: 0 = same shape
    lag: np.ndarray  # ‖Δ(its centroid) − Δ(the dead cloud's centroid)‖ since step 0, in units of the scale
    unique: np.ndarray  # distinct bf16 rows among its members


@dataclass
class TaggedTrack:
    steps: np.ndarray
    scale: float
    k: int
    cell: float  # median bf16 cell of the cube's spanned coordinates at its initial centre
    cloud_shift: np.ndarray  # ‖Δ(dead centroid)‖ since step 0
    thermal: np.ndarray  # RMS over dead rows and coordinates of their own motion since step 0 (common part removed)
    cube: SetTrack
    control: SetTrack


def _set_stats(x: np.ndarray, x0: np.ndarray, shift: np.ndarray, scale: float, bits: np.ndarray):
    y, y0 = x - x.mean(axis=0), x0 - x0.mean(axis=0)
    n0 = np.sqrt((y0 ** 2).sum())
    s = (y * y0).sum() / max((y0 ** 2).sum(), 1e-300)
    lag = np.linalg.norm((x.mean(axis=0) - x0.mean(axis=0)) - shift) / scale
    return (np.sqrt((y ** 2).sum()) / max(n0, 1e-300), np.sqrt(((y - s * y0) ** 2).sum()) / max(n0, 1e-300), lag,
            len(np.unique(bits, axis=0)))


@cached
def tagged_track(run, block: int = 64) -> TaggedTrack:
    """Follow a tagged run's cube and control set against the rest of the dead cloud (needs record.rows dead
    or all, and `model.tagged` in the run's config)."""
    spec = run.config["model"].get("tagged")
    if not spec:
        raise ValueError(f"{run.name}: not a tagged run (model.tagged is null)")
    tokens = np.asarray(run.tokens)
    pos = {int(t): i for i, t in enumerate(tokens)}
    missing = [i for i in spec["ids"] + spec["control"] if i not in pos]
    if missing:
        raise ValueError(f"{run.name}: tagged token {missing[0]} is not among the recorded rows")
    cube = np.array([pos[i] for i in spec["ids"]])
    ctrl = np.array([pos[i] for i in spec["control"]])
    rest = np.setdiff1d(np.arange(tokens.size), np.concatenate([cube, ctrl]))
    k = len(spec["ids"]).bit_length() - 1
    scale = float(spec["scale"])
    steps = np.asarray(run.steps)
    b0 = lattice.as_bits(run.tensor("W", steps=int(steps[0]), kind="bits"))
    x0 = lattice.to_float32(b0).astype(np.float64)
    cell = float(np.median(lattice.ulp(b0[cube[0], :k])))
    c0 = x0[rest].mean(axis=0)
    shift, thermal = [], []
    stats = {"cube": [], "control": []}
    for start in range(0, steps.size, block):
        sel = steps[start:start + block]
        bits = lattice.as_bits(run.tensor("W", steps=slice(int(sel[0]), int(sel[-1]) + 1), kind="bits"))
        for b in bits:
            x = lattice.to_float32(b).astype(np.float64)
            d = x[rest].mean(axis=0) - c0
            shift.append(float(np.linalg.norm(d)))
            own = (x[rest] - x0[rest]) - d
            thermal.append(float(np.sqrt((own ** 2).mean())))
            for name, idx in (("cube", cube), ("control", ctrl)):
                stats[name].append(_set_stats(x[idx], x0[idx], d, scale, b[idx]))

    def track(rows) -> SetTrack:
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        return SetTrack(a[:, 0], a[:, 1], a[:, 2], a[:, 3].astype(np.int64))

    return TaggedTrack(steps, scale, k, cell, np.asarray(shift), np.asarray(thermal), track(stats["cube"]),
                       track(stats["control"]))
