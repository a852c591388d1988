"""Epochs of the dead cloud, detected from its radius about the origin and from how many dead rows move.

The seeds' epochs (lore/lifecycle.qmd; one page each: lore/the-inhale.qmd, lore/the-sneeze.qmd,
lore/deceleration.qmd, lore/fimbulwinter.qmd): *Inhale* (a slight initial contraction,
minimum at step 2 in every Flannel 4 run, depth ≈ 0.5%), *Sneeze* (explosive expansion up to the peak of
dr/dt, t ≈ 24), *Deceleration* (peak → freeze), an optional *Re-expansion* (Flannel 1: "linear second growth"
around 300–400; Flannel 7: "re-expansion at 595") and *Fimbulwinter* (the freeze), whose onset the notebooks
defined in several ways; every definition here is reported side by side, by name.

Conventions (the seeds'): r(t) = mean ‖wᵢ‖ of the dead rows; velocity v = np.diff(r) / np.diff(steps)
smoothed by a 5-step uniform filter (scipy.ndimage.uniform_filter1d, mode "reflect"); v[i] = r[i+1] − r[i]
is labelled with step steps[i], as argmax over the diff array reports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from experiments.cloud.geometry import CloudTrack, row_selection, run_cloud

FREEZE_DEFINITIONS = ("velocity<1%peak", "90%frozen", "90%frozen-sustained", "global")


def uniform_smooth(x, size: int = 5) -> np.ndarray:
    """Centred running mean of `size` samples with reflected edges (= scipy.ndimage.uniform_filter1d(x, size),
    mode "reflect", for odd size)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or size <= 1:
        return x.copy()
    half = size // 2
    padded = np.pad(x, (half, size - 1 - half), mode="symmetric")
    return np.convolve(padded, np.ones(size) / size, mode="valid")


def radial_velocity(steps, r_origin, size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(labels, smoothed dr/dt): the forward difference per step, smoothed (the seeds' convention above);
    labels = steps[:-1]."""
    steps, r = np.asarray(steps), np.asarray(r_origin, dtype=np.float64)
    v = np.diff(r) / np.diff(steps)
    return steps[:-1], uniform_smooth(v, size)


def inhale(steps, r_origin, window: int = 10) -> dict | None:
    """The initial contraction: the minimum of r over the steps ≤ first + window (the seeds' "argmin over t ≤ 10";
    lore/the-inhale.qmd).
    None ("absent") when that minimum is the first step. Depth absolute r₀ − r_min and relative to r₀."""
    steps, r = np.asarray(steps), np.asarray(r_origin, dtype=np.float64)
    early = np.flatnonzero(steps <= steps[0] + window)
    i = int(early[np.argmin(r[early])])
    if i == 0:
        return None
    return {"step": int(steps[i]), "depth": float(r[0] - r[i]), "relative": float((r[0] - r[i]) / r[0])}


def peak_velocity(steps, r_origin, size: int = 5) -> tuple[int, float]:
    """(step, value) of the maximum smoothed dr/dt: the end of the Sneeze (Flannel 4: step 24, 0.005191)."""
    labels, v = radial_velocity(steps, r_origin, size)
    i = int(np.argmax(v))
    return int(labels[i]), float(v[i])


def freeze_onsets(steps, r_origin, moving, after: int = 100, size: int = 5, frozen: float = 0.9) -> dict:
    """Fimbulwinter onset under each named definition (None where it never happens):

    - ``velocity<1%peak``: first labelled step t > `after` with smoothed dr/dt < 1% of its peak;
    - ``90%frozen``: first step t ≥ steps[1] at which more than 90% of the rows did not change;
    - ``90%frozen-sustained``: first step from which more than 90% stay unchanged at every later step;
    - ``global``: first step after which no row ever moves again; None if a row still moves at the last
      recorded step; the first step if no row ever moved.
    The seeds' notebooks used each of these (lore/fimbulwinter.qmd sets them side by side).
    `moving[t]` is the fraction of rows whose bits changed between the previous recorded step and t.
    """
    steps, moving = np.asarray(steps), np.asarray(moving, dtype=np.float64)
    labels, v = radial_velocity(steps, r_origin, size)
    peak = v.max() if v.size else 0.0
    slow = np.flatnonzero((labels > after) & (v < 0.01 * peak))
    still = (1 - moving[1:]) > frozen
    first_still = np.flatnonzero(still)
    not_still = np.flatnonzero(~still)
    if not_still.size == 0:
        sustained = int(steps[1]) if still.size else None
    elif not_still[-1] + 1 < still.size:
        sustained = int(steps[1 + not_still[-1] + 1])
    else:
        sustained = None
    moved = np.flatnonzero(moving[1:] > 0)
    if moved.size == 0:
        global_ = int(steps[0])
    elif moved[-1] + 2 < steps.size:
        global_ = int(steps[moved[-1] + 2])
    else:
        global_ = None
    return {"velocity<1%peak": int(labels[slow[0]]) if slow.size else None,
            "90%frozen": int(steps[1 + first_still[0]]) if first_still.size else None,
            "90%frozen-sustained": sustained, "global": global_}


def re_expansion(steps, r_origin, rise: float = 0.05, size: int = 5) -> dict | None:
    """A renewed rise of the smoothed dr/dt after the Sneeze's peak, or None.

    Definition: after the peak, track the running minimum m of the smoothed velocity. Re-expansion begins at
    the step of that minimum once the velocity climbs above m + `rise`·peak (default 5% of the peak
    velocity), and ends at the first later step at which it falls back below m + `rise`·peak (or at the
    last step). Reports start, end, the velocity at the minimum and the highest velocity of the rise.
    (Seeds: Flannel 1 "linear second growth" 300–400; Flannel 7 "re-expansion at 595"; lore/deceleration.qmd.)
    """
    labels, v = radial_velocity(steps, r_origin, size)
    if v.size == 0:
        return None
    p = int(np.argmax(v))
    threshold = rise * v[p]
    run_min = np.minimum.accumulate(v[p:])
    above = np.flatnonzero(v[p:] > run_min + threshold)
    if above.size == 0 or threshold <= 0:
        return None
    j = p + int(above[0])
    m = p + int(np.argmin(v[p:j]))
    base = v[m] + threshold
    below = np.flatnonzero(v[j:] < base)
    end = j + int(below[0]) if below.size else v.size - 1
    return {"start": int(labels[m]), "end": int(labels[end]), "velocity_min": float(v[m]),
            "velocity_max": float(v[j:end + 1].max())}


@dataclass
class Epochs:
    """The epochs of one run's dead cloud (steps are step numbers; None = absent / never)."""

    label: str
    r_start: float
    r_end: float
    inhale: dict | None
    peak_step: int
    peak_velocity: float
    sneeze: tuple[int, int]  # inhale minimum (or first step) → peak velocity
    deceleration: tuple[int, int | None]  # peak velocity → freeze onset (the "90%frozen" definition)
    re_expansion: dict | None
    fimbulwinter: dict = field(default_factory=dict)  # definition name → onset step

    def row(self) -> dict:
        """One flat dict (for tables and JSON)."""
        d = {"run": self.label, "r_start": self.r_start, "r_end": self.r_end,
             "factor": self.r_end / self.r_start if self.r_start else float("nan"),
             "inhale_step": self.inhale["step"] if self.inhale else None,
             "inhale_depth": self.inhale["depth"] if self.inhale else None,
             "inhale_relative": self.inhale["relative"] if self.inhale else None,
             "sneeze_start": self.sneeze[0], "sneeze_end": self.sneeze[1],
             "peak_step": self.peak_step, "peak_velocity": self.peak_velocity,
             "deceleration_start": self.deceleration[0], "deceleration_end": self.deceleration[1],
             "re_expansion_start": self.re_expansion["start"] if self.re_expansion else None,
             "re_expansion_end": self.re_expansion["end"] if self.re_expansion else None}
        d.update({f"fimbulwinter[{k}]": v for k, v in self.fimbulwinter.items()})
        return d

    def as_dict(self) -> dict:
        return asdict(self)


def epochs(track: CloudTrack, label: str = "", window: int = 10, after: int = 100, rise: float = 0.05,
           size: int = 5) -> Epochs:
    """Epochs of a cloud track of dead rows (see the module docstring and each detector for definitions)."""
    steps, r = track.steps, track.r_origin
    inh = inhale(steps, r, window)
    peak_step, peak_v = peak_velocity(steps, r, size)
    freeze = freeze_onsets(steps, r, track.moving, after=after, size=size)
    start = inh["step"] if inh else int(steps[0])
    return Epochs(label, float(r[0]), float(r[-1]), inh, peak_step, peak_v, (start, peak_step),
                  (peak_step, freeze["90%frozen"]), re_expansion(steps, r, rise, size), freeze)


def dead_track(run, block: int = 128) -> CloudTrack:
    """The CloudTrack of a run's recorded dead rows (one contiguous read when only dead rows were recorded)."""
    return run_cloud(run, rows=row_selection(run)[1], block=block)


def epochs_of_run(run, label: str | None = None, block: int = 128, **kw) -> Epochs:
    """Epochs of a recorded run's dead rows (label defaults to the run's name and key prefix)."""
    return epochs(dead_track(run, block), label if label is not None else f"{run.name} ({run.key[:8]})", **kw)


@dataclass
class EpochTable:
    """Epochs of several runs, one row each (for the "lifecycle of a dead token" page)."""

    epochs: list[Epochs]

    def rows(self) -> list[dict]:
        return [e.row() for e in self.epochs]

    def markdown(self) -> str:
        """A Markdown table: radius, inhale, sneeze, peak dr/dt, deceleration, re-expansion, each freeze onset."""
        def s(x):
            return "—" if x is None else str(x)

        head = ["run", "r about origin", "inhale", "sneeze", "peak dr/dt", "deceleration", "re-expansion",
                *(f"Fimbulwinter ({k})" for k in FREEZE_DEFINITIONS)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in self.epochs:
            inh = (f"{e.inhale['step']} (−{e.inhale['depth']:.6f}, {100 * e.inhale['relative']:.3f}%)"
                   if e.inhale else "absent")
            rex = f"{e.re_expansion['start']}–{e.re_expansion['end']}" if e.re_expansion else "—"
            cells = [e.label, f"{e.r_start:.6f} → {e.r_end:.6f} ({e.r_end / e.r_start:.2f}×)", inh,
                     f"{e.sneeze[0]}–{e.sneeze[1]}", f"{e.peak_velocity:.6f} at {e.peak_step}",
                     (f"{e.deceleration[0]}–{e.deceleration[1]}" if e.deceleration[1] is not None
                      else f"from {e.deceleration[0]} (no 90% freeze)"), rex,
                     *(s(e.fimbulwinter.get(k)) for k in FREEZE_DEFINITIONS)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def epoch_table(items, labels=None, **kw) -> EpochTable:
    """Epochs for a list of runs, CloudTracks of dead rows, or Epochs, as one table."""
    out = []
    for i, item in enumerate(items):
        label = labels[i] if labels is not None else None
        if isinstance(item, Epochs):
            out.append(item)
        elif isinstance(item, CloudTrack):
            out.append(epochs(item, label if label is not None else f"track {i}", **kw))
        else:
            out.append(epochs_of_run(item, label, **kw))
    return EpochTable(out)
