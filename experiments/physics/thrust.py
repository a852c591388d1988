"""The thrust period: step one, where Adam's bias corrections cancel, and the steps after it.

At t = 1, m₁ = (1 − β₁)g and v₁ = (1 − β₂)g², and the bias corrections undo exactly those factors:
m̂₁ = g, v̂₁ = g², so every coordinate moves by −η·g/(|g| + ε) ≈ −η·sign(g), whatever the size of its
gradient. A row of D coordinates therefore moves η√D, dead or live; its direction is sign(g), not g (the
cosine between them is ‖g‖₁ / (√D‖g‖₂)); and since a dead row's only gradient is the output-side pᵢ·Σh,
every dead row's gradient points along the mean hidden state. From t = 2 on the cancellation breaks and the
Adam term m̂/(√v̂ + ε) relaxes towards its long-run size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.bits import row_cosine
from experiments.errors import DataError
from experiments.physics import adam


@dataclass
class StepOne:
    """Per recorded row at step 1 (arrays of length N, aligned with `tokens`)."""

    tokens: np.ndarray
    dead: np.ndarray  # bool
    step: np.ndarray  # ‖W[1] − W[0]‖₂
    cos_sign: np.ndarray  # cos(ΔW, −sign(g)); the three cosines are 0 where undefined (a zero row), not NaN
    cos_grad: np.ndarray  # cos(ΔW, −g)
    predicted_cos_grad: np.ndarray  # ‖g‖₁ / (√D ‖g‖₂): the cosine a pure sign step would have with −g
    cos_h_mean: np.ndarray  # cos(g, h_mean[1])
    ideal: float  # η√D, the step of a row if every coordinate moved exactly ±η
    lr: float


def step_one(run) -> StepOne:
    """Step-one quantities of a run that recorded W at steps 0 and 1, grad and h_mean at step 1."""
    need = [t for t in ("W", "grad", "h_mean") if t not in run.available]
    recorded = set(int(s) for s in run.steps)
    if need or not {0, 1} <= recorded:
        raise DataError(f"{run.path.name}: step one needs W at steps 0 and 1 and grad, h_mean at step 1 "
                        f"(missing: {', '.join(need) or 'steps 0/1'})")
    w0 = run.W(steps=0).astype(np.float64)
    w1 = run.W(steps=1).astype(np.float64)
    g = np.asarray(run.tensor("grad", steps=1), dtype=np.float64) * float(run.clip_scale[0])
    h = np.asarray(run.tensor("h_mean", steps=1), dtype=np.float64)
    dw = w1 - w0
    D = dw.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.nan_to_num(np.abs(g).sum(-1) / (np.sqrt(D) * np.linalg.norm(g, axis=-1)))
    lr = float(run.lr[0])

    def _cos(a, b):  # an undefined cosine (a row that did not move, a zero gradient) counts as 0, not NaN:
        return row_cosine(a, b, undefined=0.0)  # lore/step-one.qmd's table takes plain means of these columns

    return StepOne(tokens=np.asarray(run.tokens), dead=np.asarray(run.dead)[run.tokens],
                   step=np.linalg.norm(dw, axis=-1), cos_sign=_cos(dw, -np.sign(g)), cos_grad=_cos(dw, -g),
                   predicted_cos_grad=predicted, cos_h_mean=_cos(g, np.broadcast_to(h, g.shape)),
                   ideal=lr * np.sqrt(D), lr=lr)


def adam_term_norms(run, steps) -> np.ndarray:
    """‖m̂/(√v̂ + ε)‖₂ per recorded row at each of `steps` (array (len(steps), N)), from the recorded m, v.

    The Adam term as the kernels computed it: the intended update of `adam.apply_update` divided by −η.
    At step 1 it is √D for every row whose gradient is far above ε.
    """
    missing = [t for t in ("W", "m", "v") if t not in run.available]
    if missing:
        raise DataError(f"{run.path.name}: the Adam term needs m and v (missing: {', '.join(missing)})")
    out = []
    for t in steps:
        hp = adam.hyper_of(run, t)
        r = adam.apply_update(run.tensor("W", steps=t - 1, kind="bits"), run.tensor("m", steps=t, kind="bits"),
                              run.tensor("v", steps=t, kind="bits"), t, hp, bf16=True,
                                  impl=run.config["optim"].get("impl", "foreach"))
        out.append(np.linalg.norm(r.intended.astype(np.float64) / -hp.lr, axis=-1))
    return np.asarray(out)
