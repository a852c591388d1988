"""The coarsening hypothesis: do black holes form *during* training as a cloud drifts onto a coarser lattice?

The seeds' idea (lore/coarsening-hypothesis.qmd, which runs all three tools): dead tokens start near the origin, where bf16 cells
are tiny and every row is distinct; the cloud then drifts outward to r ≈ 0.37, where cells are a hundred
times wider, and rows that were close might fall into one cell and become a black hole. Three tools test it:

- `drift`: an N(0, σ) cloud of n bf16 rows translated toward radius R along one unit direction in X equal
  steps. Each step is computed in float32 from the current bf16 values and rounded back to bf16, either
  round-to-nearest-even (`lattice.from_float32`) or stochastically (the same bit trick as
  ``train._stochastic_round_``: add 16 uniform random bits to the float32 pattern, truncate). No row is ever
  culled (the seeds' drift simulation culled at a wrong rate and kept 36 rows instead of ~2,200; see the
  page's introduction).
- `sigma_sweep`: float32 noise N(0, σ) added to one bf16 vector, cast to bf16; the seeds ran it on Qwen3-4B's
  "John" vector. `john_standin` builds a vector with John's published statistics because we do not have it.
- `shared_rows_over_time`: the black-hole census of the recorded dead rows of one of our runs at each step.

Why translation alone cannot merge a wide cloud: with round-to-nearest two rows that differ by k cells in a
coordinate keep differing after a shift unless the shift takes them into a coarser binade, where their
difference is re-quantized; at the end a coordinate separates two rows with probability ≈ |Δ|/ULP(final).
Rows stay distinct while *any* of the D coordinates separates them, so a cloud collapses only when σ is far
below the finest ULP along the destination vector — a cloud already inside one destination cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from experiments.bits import random_low_bits, stochastic_round
from experiments.lattice import blackholes
from experiments.lattice import lifecycle as lattice

JOHN_NORM = 0.370917  # L2 norm of Qwen3-4B's largest black hole, as the seeds report it (lore/coarsening-hypothesis.qmd)
JOHN_DIM = 2560
SEED_SIGMAS = (1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5)  # the seeds' sigma_sweep grid (lore/coarsening-hypothesis.qmd)


# ---------------------------------------------------------------------------------------------------------
# rounding float32 → bf16


def round_nearest(values: np.ndarray) -> np.ndarray:
    """float32 → bf16 bits, round to nearest even (`lattice.from_float32`)."""
    return lattice.from_float32(values)


def round_stochastic(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 → bf16 bits, stochastic rounding (`bits.stochastic_round`, the training loop's fp32-master-sr
    rounding) with the random bits drawn from `rng` (`bits.random_low_bits`): a value a fraction f of the way
    from one bf16 neighbour to the next rounds up (away from zero) with probability f; a value already on the
    bf16 lattice is returned exactly."""
    values = np.asarray(values)
    return stochastic_round(values, random_low_bits(rng, values.shape))


def _rounder(rounding: str, rng: np.random.Generator):
    if rounding == "nearest":
        return round_nearest
    if rounding == "stochastic":  # the drift's float32 buffer is scratch: round it in place
        return lambda x: stochastic_round(x, random_low_bits(rng, x.shape), overwrite=True)
    raise ValueError(f"rounding must be 'nearest' or 'stochastic', not {rounding!r}")


# ---------------------------------------------------------------------------------------------------------
# drift


def unit_direction(direction, d: int, rng: np.random.Generator) -> np.ndarray:
    """A float64 unit vector: "random" (isotropic), "diagonal" (random ±1 signs / √d) or a given vector."""
    if isinstance(direction, str):
        if direction == "random":
            v = rng.normal(size=d)
        elif direction == "diagonal":
            v = rng.choice([-1.0, 1.0], size=d)
        else:
            raise ValueError(f"direction must be 'random', 'diagonal' or a vector, not {direction!r}")
    else:
        v = np.asarray(direction, dtype=np.float64).reshape(-1)
        if v.shape != (d,):
            raise ValueError(f"direction has shape {v.shape}, expected ({d},)")
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("direction must be a finite non-zero vector")
    return v / norm


@dataclass
class Drift:
    """Result of `drift`: census of the cloud at the recorded steps (step 0 = the initial cast).

    populations[i] holds every unique vector's population at steps[i], largest first (so its length is
    unique[i] and its first entry the largest black hole, or 1).
    """

    n: int
    d: int
    sigma: float
    radius: float
    n_steps: int
    direction: str
    rounding: str
    master: bool  # True: fp32 master cloud, bf16 rows are its rounding (see `drift`)
    steps: np.ndarray  # (K,) recorded step numbers
    unique: np.ndarray  # (K,)
    black_holes: np.ndarray  # (K,)
    largest: np.ndarray  # (K,)
    centroid_norm: np.ndarray  # (K,) L2 norm of the cloud's mean row (float64 of the bf16 values)
    median_ulp: np.ndarray  # (K,) ULP at the median exponent of the cloud's first 64 rows
    populations: list = field(repr=False)  # K arrays, largest first
    bits: np.ndarray = field(repr=False)  # (n, d) uint16, the final cloud
    initial_bits: np.ndarray = field(repr=False)  # (n, d) uint16, the cloud at step 0
    increment: np.ndarray = field(repr=False)  # (d,) float32 step added every step

    @property
    def tokens_in_black_holes(self) -> np.ndarray:
        return np.array([int(p[p > 1].sum()) for p in self.populations])

    def summary(self) -> dict:
        """The final step as one row of a sweep table."""
        return {"sigma": self.sigma, "radius": self.radius, "steps": self.n_steps, "direction": self.direction,
                "rounding": self.rounding, "master": self.master, "n": self.n, "d": self.d,
                "unique_start": int(self.unique[0]), "unique": int(self.unique[-1]),
                "black_holes": int(self.black_holes[-1]), "largest": int(self.largest[-1]),
                "tokens_in_black_holes": int(self.tokens_in_black_holes[-1]),
                "centroid_norm": float(self.centroid_norm[-1])}


def _count(bits: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    c = blackholes.census(bits)
    pops = np.sort(c.populations)[::-1]
    return c.n_unique, int((pops > 1).sum()), int(pops[0]) if pops.size else 0, pops


def drift(n: int = 2200, d: int = 2560, sigma: float = 1e-6, radius: float = 0.37, steps: int = 100,
          direction="random", start=None, rounding: str = "nearest", seed: int = 0,
          record=None, master: bool = False) -> Drift:
    """Translate an N(start, σ) bf16 cloud of n rows to the point ``radius · direction`` in `steps` steps.

    The cloud is drawn in float32 (``start + σ·N(0, 1)``, start default the origin) and cast to bf16 with
    round-to-nearest-even, as an fp32 initialisation cast to bf16 would be. Every step then computes
    ``W + δ`` in float32 from the current bf16 values, with δ = (radius·u − start)/steps in float32, and
    rounds back to bf16 (`rounding`: "nearest" or "stochastic", the latter from a generator seeded by
    `seed`). All n rows are kept. `record`: step numbers to take the census at (default every step, always
    including 0 and the last); `direction`: "random", "diagonal" (±1/√d) or a vector. Deterministic in `seed`.

    master=True models fp32 master weights instead: the float32 cloud itself accumulates ``+ δ`` and is never
    rounded; the bf16 rows at each step are its rounding (so with "nearest" the final rows are exactly the
    one-shot quantization of the translated float32 cloud, and a black hole lasts only as long as the
    float32 rows stay inside one cell).
    """
    if n < 1 or d < 1 or steps < 1 or sigma < 0 or radius < 0:
        raise ValueError("need n ≥ 1, d ≥ 1, steps ≥ 1, sigma ≥ 0 and radius ≥ 0")
    rng = np.random.default_rng(seed)
    u = unit_direction(direction, d, rng)
    c0 = np.zeros(d) if start is None else np.asarray(start, dtype=np.float64).reshape(-1)
    if c0.shape != (d,):
        raise ValueError(f"start has shape {c0.shape}, expected ({d},)")
    delta = ((radius * u - c0) / steps).astype(np.float32)
    x = rng.standard_normal(size=(n, d), dtype=np.float32)  # the float32 state: master copy or scratch
    x *= np.float32(sigma)
    x += c0.astype(np.float32)
    bits = round_nearest(x)
    initial = bits
    rnd = _rounder(rounding, np.random.default_rng([seed, 1]))
    want = set(range(steps + 1)) if record is None else {0, steps, *(int(s) for s in record if 0 <= s <= steps)}
    rec: dict[str, list] = {k: [] for k in ("steps", "unique", "bh", "largest", "cn", "ulp", "pops")}
    scratch = np.empty((n, d), dtype=np.float32) if master else x

    def take(t: int, b: np.ndarray) -> None:
        nu, nb, big, pops = _count(b)
        f = scratch
        np.left_shift(b, 16, out=f.view(np.uint32), dtype=np.uint32)  # exact float32 values of the bits
        rec["steps"].append(t)
        rec["unique"].append(nu)
        rec["bh"].append(nb)
        rec["largest"].append(big)
        rec["cn"].append(float(np.linalg.norm(f.mean(axis=0, dtype=np.float64))))
        e = np.maximum(lattice.exponent_field(b[: min(n, 64)]), 1)  # ULP = 2**(E − 134), E = 0 as 1
        rec["ulp"].append(float(np.ldexp(1.0, int(np.median(e)) - 134)))
        rec["pops"].append(pops)

    take(0, bits)
    for t in range(1, steps + 1):
        if master:
            x += delta
            if rounding == "stochastic":  # the rounder works in place: round a copy, keep the master
                np.copyto(scratch, x)
                bits = rnd(scratch)
            else:
                bits = rnd(x)
        else:
            # W (bf16 bits) → float32 in place: the bits are the float32's top half
            np.left_shift(bits, 16, out=x.view(np.uint32), dtype=np.uint32)
            x += delta
            bits = rnd(x)
        if t in want:
            take(t, bits)
    name = direction if isinstance(direction, str) else "given"
    return Drift(n=n, d=d, sigma=float(sigma), radius=float(radius), n_steps=steps, direction=name,
                 rounding=rounding, master=master, steps=np.array(rec["steps"]), unique=np.array(rec["unique"]),
                 black_holes=np.array(rec["bh"]), largest=np.array(rec["largest"]),
                 centroid_norm=np.array(rec["cn"]), median_ulp=np.array(rec["ulp"]), populations=rec["pops"],
                 bits=bits, initial_bits=initial, increment=delta)


def drift_sweep(sigmas=(0.02, 1e-6, 1e-8), radii=(0.37,), steps=(100,), directions=("random",),
                roundings=("nearest",), masters=(False,), n: int = 2200, d: int = 2560, seed: int = 0
                ) -> list[dict]:
    """`drift` over the grid σ × R × X × direction × rounding × master; one summary dict per run (its final
    step: unique, black_holes, largest, …; see `Drift.summary`), in that nesting order."""
    out = []
    for s in sigmas:
        for r in radii:
            for x in steps:
                for dr in directions:
                    for rd in roundings:
                        for m in masters:
                            res = drift(n=n, d=d, sigma=s, radius=r, steps=x, direction=dr, rounding=rd, seed=seed,
                                        record=(), master=m)
                            out.append(res.summary())
    return out


# ---------------------------------------------------------------------------------------------------------
# sigma sweep around one vector


def john_standin(d: int = JOHN_DIM, norm: float = JOHN_NORM, seed: int = 0, distribution: str = "normal"
                 ) -> np.ndarray:
    """A stand-in for Qwen3-4B's "John" (bf16 bits): random values scaled to John's norm 0.370917 in
    D = 2,560, cast to bf16 (nearest even). We do not have Qwen3-4B, so this is *not* John.

    distribution: "normal" (default) or "laplace" (more mass near zero and a heavier tail). John's published
    statistics (the seeds', quoted in lore/coarsening-hypothesis.qmd): exponents 107–123, median 118, values −0.080…0.050. A normal vector of
    that norm has per-coordinate std 0.0073, median exponent 119 and smallest coordinates at exponent
    107–108; a Laplace one has median exponent 118. The finest ULPs, which decide where a noisy copy stops
    collapsing, are of the same order as John's (7.45e-9 at exponent 107) either way.
    """
    rng = np.random.default_rng(seed)
    if distribution == "normal":
        v = rng.standard_normal(d)
    elif distribution == "laplace":
        v = rng.laplace(size=d)
    else:
        raise ValueError(f"distribution must be 'normal' or 'laplace', not {distribution!r}")
    return round_nearest((v * (norm / np.linalg.norm(v))).astype(np.float32))


def sigma_sweep(center_bits, sigmas=SEED_SIGMAS, n: int = 2200, seed: int = 42) -> list[dict]:
    """Noise N(0, σ) in float32 added to one bf16 vector, cast to bf16 (nearest even); census per σ.

    One row per σ: unique vectors, black holes, largest population, tokens in black holes, and how many of
    the n copies landed exactly on the centre. (The seeds drew 151,936 noisy copies and sampled 2,200 of
    them; drawing 2,200 directly is the same distribution.)
    """
    c = lattice.as_bits(center_bits).reshape(-1)
    lattice.check_finite(c, "centre vector")
    cf = lattice.to_float32(c)
    rng = np.random.default_rng(seed)
    out = []
    for s in sigmas:
        noise = rng.standard_normal(size=(n, c.size), dtype=np.float32)
        noise *= np.float32(s)
        noise += cf
        b = round_nearest(noise)
        nu, nb, big, pops = _count(b)
        out.append({"sigma": float(s), "n": n, "unique": nu, "black_holes": nb, "largest": big,
                    "tokens_in_black_holes": int(pops[pops > 1].sum()),
                    "on_center": int((b == c).all(axis=1).sum())})
    return out


def half_unique_sigma(center_bits, lo: float = 1e-10, hi: float = 1e-6, n: int = 2200, seed: int = 42,
                      iterations: int = 14) -> dict:
    """Bisect (in log σ) the σ at which the sweep yields n/2 unique vectors (the seeds' σ_crit ≈ 2.02e-8, quoted
    in lore/coarsening-hypothesis.qmd, "How fine must the cloud be?")."""
    target = n / 2
    row = None
    for _ in range(iterations):
        mid = float(np.sqrt(lo * hi))
        row = sigma_sweep(center_bits, (mid,), n=n, seed=seed)[0]
        if row["unique"] < target:
            lo = mid
        else:
            hi = mid
    return row


def ulp_profile(center_bits) -> dict:
    """Exponent and ULP statistics of one bf16 vector (the seeds' John exponent profile; lore/coarsening-hypothesis.qmd
    compares the stand-ins' with it)."""
    c = lattice.as_bits(center_bits).reshape(-1)
    e = lattice.exponent_field(c)
    u = lattice.ulp(c)
    f = lattice.to_float32(c)
    return {"norm": float(np.linalg.norm(f.astype(np.float64))), "exp_min": int(e.min()), "exp_max": int(e.max()),
            "exp_median": float(np.median(e)), "ulp_min": float(u.min()), "ulp_max": float(u.max()),
            "ulp_median": float(np.median(u)), "value_min": float(f.min()), "value_max": float(f.max()),
            "positive": float((f > 0).mean())}


# ---------------------------------------------------------------------------------------------------------
# our own runs


def nearest_cells(bits, chunk: int = 256) -> np.ndarray:
    """Per row, the lattice L∞ distance (bf16 cells, via `lattice.ordinal`) to its nearest other row (int64).

    0 means the row shares its value with another (a black-hole member); 1 an adjacent cell. Brute force in
    row blocks: O(n²·D), about a second for 3,000 rows of D = 64.
    """
    o = lattice.ordinal(lattice.as_bits(bits)).astype(np.int32)
    n = o.shape[0]
    out = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    if n < 2:
        return out
    for s in range(0, n, chunk):
        blk = o[s:s + chunk]
        dist = np.abs(blk[:, None, :] - o[None, :, :]).max(axis=2).astype(np.int64)
        dist[np.arange(blk.shape[0]), np.arange(s, s + blk.shape[0])] = np.iinfo(np.int64).max
        out[s:s + chunk] = dist.min(axis=1)
    return out


@dataclass
class SharedRows:
    """Black-hole census of a run's recorded dead rows at each examined step."""

    run: str
    key: str
    rows: int  # dead rows examined
    steps: np.ndarray
    unique: np.ndarray
    black_holes: np.ndarray
    tokens_in_black_holes: np.ndarray
    largest: np.ndarray

    def table(self) -> list[dict]:
        return [{"step": int(s), "unique": int(u), "black_holes": int(b), "tokens_in_black_holes": int(t),
                 "largest": int(g)}
                for s, u, b, t, g in zip(self.steps, self.unique, self.black_holes, self.tokens_in_black_holes,
                                         self.largest, strict=True)]


def shared_rows_over_time(run, steps=None, chunk: int = 64) -> SharedRows:
    """`blackholes.census` of the recorded dead rows of `run` (an `experiments.Run`) at each recorded step.

    steps: None (every recorded step), or step numbers / a slice as `Run.W` takes them. Only recorded rows
    whose token is dead (``run.dead``) are counted; the W tensor is read `chunk` steps at a time.
    """
    recorded = np.asarray(run.tokens, dtype=np.int64)
    dead = np.asarray(run.dead, dtype=bool)
    keep = dead[recorded] if dead.size else np.ones(recorded.size, dtype=bool)
    ids = recorded[keep]
    all_steps = np.asarray(run.steps)
    if steps is None:
        wanted = all_steps
    elif isinstance(steps, slice):
        lo = -np.inf if steps.start is None else steps.start
        hi = np.inf if steps.stop is None else steps.stop
        wanted = all_steps[(all_steps >= lo) & (all_steps < hi)][:: steps.step or 1]
    else:
        wanted = np.atleast_1d(np.asarray(steps, dtype=np.int64))
    res = {k: [] for k in ("unique", "bh", "tok", "big")}
    for s in range(0, wanted.size, chunk):
        part = wanted[s:s + chunk]
        w = run.W(steps=part.tolist(), kind="bits")
        if not keep.all():
            w = w[:, keep]
        for t in range(w.shape[0]):
            c = blackholes.census(w[t], row_ids=ids)
            res["unique"].append(c.n_unique)
            res["bh"].append(int(c.black_holes.size))
            res["tok"].append(c.tokens_in_black_holes)
            res["big"].append(int(c.populations.max()) if c.n_unique else 0)
    return SharedRows(run=str(run.name), key=str(run.key), rows=int(ids.size), steps=wanted,
                      unique=np.array(res["unique"], dtype=np.int64), black_holes=np.array(res["bh"], dtype=np.int64),
                      tokens_in_black_holes=np.array(res["tok"], dtype=np.int64),
                      largest=np.array(res["big"], dtype=np.int64))
