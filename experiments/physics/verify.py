"""Replay a recorded run with `adam.adamw_step` and compare every element of W, m, v at every step.

A run is replayable when it recorded W, m, v and grad at consecutive steps (t − 1, t), in pure bf16, fp32
or with fp32 master weights, with any AdamW implementation (single, foreach, fused). The replay uses only
the recording: W[t−1], m[t−1], v[t−1], grad[t], the step's lr and clip scale, and the config's β, ε, λ,
with the kernel laws of the machine that trained the run (recorded in the run file; probed here for older
runs, see `experiments.physics.laws`). Kernels that no law reproduces (the fused step, a library square root) are
borrowed from this machine's torch, and the report says so. When the replay is not exact, the first
mismatching step is taken apart: which tensor, which kernel's law would reproduce it, or whether the
differences look like damaged data rather than arithmetic.
Streams the recording in blocks of steps, so memory does not grow with the run's length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from experiments.bits import ordinal, stochastic_round
from experiments.errors import DataError
from experiments.physics import adam
from experiments.physics import laws as kernel_laws
from experiments.rig.config import MASTER_PRECISIONS, PRECISIONS

TENSORS = ("W", "m", "v")


@dataclass
class Mismatch:
    """Mismatches of one tensor over the whole replay."""

    tensor: str
    elements: int = 0  # compared
    count: int = 0  # differing in any bit
    max_ulps: int = 0  # largest distance on the number line, in units of the last place
    first_step: int | None = None
    ulp_histogram: dict[int, int] = field(default_factory=dict)  # distance -> count


@dataclass
class Verification:
    run: str
    variant: str  # "bf16" | "fp32"
    steps: list[int]
    laws: dict
    table: list[Mismatch]
    hyper: dict = field(default_factory=dict)  # hyper-parameters replaced for a negative control
    seconds: float = 0.0
    impl: str = "foreach"
    source: str = ""  # where the kernel laws came from
    notes: list[str] = field(default_factory=list)  # borrowed kernels, machines that differ
    explanation: list[str] = field(default_factory=list)  # the first mismatching step taken apart

    @property
    def exact(self) -> bool:
        return all(m.count == 0 for m in self.table)

    @property
    def elements(self) -> int:
        return sum(m.elements for m in self.table)

    def as_dict(self) -> dict:
        return {"run": self.run, "variant": self.variant, "steps": [self.steps[0], self.steps[-1]] if self.steps else [],
                "impl": self.impl, "laws": self.laws, "laws_source": self.source, "notes": self.notes,
                "hyper": self.hyper, "exact": self.exact, "seconds": round(self.seconds, 3),
                "table": [m.__dict__ for m in self.table], "explanation": self.explanation}


# the precisions with fp32 master weights, spelled as config.py and train.py test them (startswith)
MASTER = MASTER_PRECISIONS


def variant_of(run) -> str:
    """The replayable arithmetic of a run, or a DataError that says why it is not replayable."""
    missing = [t for t in ("W", "m", "v", "grad") if t not in run.available]
    if missing:
        raise DataError(f"{run.path.name}: cannot replay: it did not record {', '.join(missing)} "
                        f"(record.tensors must hold W, m, v and grad; e.g. the flannel-7 preset)")
    dtype = run.config["precision"]["dtype"]
    if dtype in MASTER and "master" not in run.available:
        raise DataError(f"{run.path.name}: precision {dtype}: the fp32 master weights are not recorded "
                        "(add master to record.tensors), so the optimizer's W[t−1] is unknown")
    if dtype not in PRECISIONS:
        raise DataError(f"{run.path.name}: precision {dtype} is not replayable")
    return dtype


class _SRNoise:
    """The random low bits stochastic rounding added to W at each step, regenerated from the recorded seed.

    Training draws `randint(0, 2¹⁶)` for every parameter in order after each optimizer step from one
    generator, so W's bits at step t come after all earlier draws: steps are regenerated in order.
    """

    def __init__(self, run):
        import torch

        from experiments.rig.model import GPT

        self.torch = torch
        V = int(np.asarray(run.dead).size)
        with torch.device("meta"):  # shapes only, no memory
            model = GPT(V, run.config["model"])
        params = list(model.parameters())
        self.shapes = [tuple(p.shape) for p in params]
        self.w_index = next(i for i, p in enumerate(params) if p is model.W)
        self.rows = np.asarray(run.tokens)
        # the generator of the device that trained (CUDA's Philox draws other numbers than the CPU's)
        self.device = str(run.config["train"]["device"])
        if not kernel_laws.available(self.device):
            raise DataError(f"{run.path.name}: trained on {self.device} with stochastic rounding; its noise "
                            f"comes from {self.device}'s random generator, so replay it on a machine with "
                            f"{kernel_laws.device_kind(self.device)}")
        self.gen = torch.Generator(device=self.device).manual_seed(int(run.config["precision"]["sr_seed"]))
        self.step = 0

    def at(self, t: int) -> np.ndarray:
        if t <= self.step:
            raise ValueError(f"stochastic-rounding noise is regenerated in step order (asked {t} after {self.step})")
        noise = None
        while self.step < t:
            self.step += 1
            for i, shape in enumerate(self.shapes):
                n = self.torch.randint(0, 1 << 16, shape, generator=self.gen, dtype=self.torch.int32,
                                       device=self.device)
                if i == self.w_index and self.step == t:
                    noise = n.cpu().numpy()[self.rows]
        return noise


def laws_of(run, bf16: bool, impl: str, laws: dict | None = None) -> tuple[dict, str, list[str]]:
    """(kernel laws for the replay, where they came from, notes on borrowed kernels)."""
    rec = run.kernel_laws or {}
    # the device the run trained on (a GPU run's kernels are the GPU's); replayed there when this machine has
    # one of that kind, else the CPU's library kernels stand in for the borrowed ones
    device = rec.get("device", "cpu")
    here_device = device if kernel_laws.available(device) else "cpu"
    here = kernel_laws.current(bf16, impl, here_device)
    notes = []
    if rec.get("laws") and rec.get("arith") == ("bf16" if bf16 else "fp32") and rec.get("impl") == impl:
        base = dict(rec["laws"])
        m = rec.get("machine", {})
        on = (f"{m.get('gpu', '?')}, CUDA {m.get('cuda', '?')}" if device == "cuda" else
              f"{m.get('cpu', '?')}, ATen {m.get('aten_capability', '?')}")
        source = (f"recorded by the training machine ({on}, "
                  f"torch {m.get('torch', '?')}{', ' + str(m.get('env')) if m.get('env') else ''})")
    else:
        base = dict(here)
        source = "probed on this machine (the run file does not record its machine's kernel laws)"
    if here_device != device:
        notes.append(f"trained on {device}, replayed on this machine's cpu (no {device} here): the numpy laws "
                     "are the training device's, borrowed library kernels come from the cpu")
    for k, law in base.items():
        if not str(law).startswith("library"):
            continue
        if here.get(k) != law and kernel_laws.library_device(law) != here_device:
            base[k] = here.get(k, "library")  # a kernel of a device this machine lacks: borrow its own
        if here.get(k) == law:
            notes.append(f"{k}: no law reproduces it; borrowed from this machine's torch ({law}, same "
                         "fingerprint as the training machine)" if rec.get("laws") else
                         f"{k}: no law reproduces it; borrowed from this machine's torch ({law})")
        else:
            notes.append(f"{k}: the training machine's library kernel ({law}) differs from this machine's "
                         f"({here.get(k)}); borrowing this machine's, so mismatches in {k} are expected here")
    return {**adam.LAWS, **base, **adam.normalise_laws(laws)}, source, notes


def _machine(m: dict) -> str:
    return f"{m.get('host', '?')} ({m.get('cpu', '?')}, torch {m.get('torch', '?')})"


def machines_of(run) -> str:
    """Where the run was trained and where it is replayed: a difference found here is traced to a machine
    (a cluster trains runs on many)."""
    from experiments.store.runs import trained_on

    here, there = trained_on(), run.trained_on
    if not there:
        return f"trained on: not recorded (an older run); replayed on {_machine(here)}"
    differ = [k for k in ("host", "cpu", "torch", "torch_git") if there.get(k) != here.get(k)]
    if not differ:
        return f"trained and replayed on the same machine, {_machine(here)}"
    return (f"trained on {_machine(there)}, replayed on {_machine(here)}: {', '.join(differ)} differ")


def replay_pairs(run) -> list[int]:
    """Steps t ≥ 1 whose predecessor t − 1 was recorded too."""
    recorded = set(int(s) for s in run.steps)
    return [t for t in sorted(recorded) if t >= 1 and t - 1 in recorded]


def verify(run, laws: dict | None = None, block: int = 32, progress: bool = False,
           steps: list[int] | None = None, hyper: dict | None = None) -> Verification:
    """Replay every recorded step pair of `run` and tabulate mismatches per tensor.

    `laws` replaces parts of the arithmetic and `hyper` the config's beta1, beta2, eps or weight_decay:
    the negative controls, which must produce mismatches.
    """
    from tqdm import tqdm

    variant = variant_of(run)
    bf16 = variant == "bf16"
    master = variant in MASTER
    impl = run.config["optim"].get("impl", "foreach")
    law, source, notes = laws_of(run, bf16, impl, laws)
    notes = [*notes, machines_of(run)]
    explanation: list[str] = []
    hyper = dict(hyper or {})
    adam.hyper_of(run, 1, **hyper)  # unknown keys fail here, before any reading
    pairs = replay_pairs(run) if steps is None else steps
    if not pairs:
        raise DataError(f"{run.path.name}: no two consecutive recorded steps to replay")
    clip = run.clip_scale
    kind = "bits" if bf16 else "numpy"
    # the optimizer's own weights: W itself, or (master variants) its fp32 master copy, from which the
    # bf16 W is rounded after the step
    theta = "master" if master else "W"
    names = (theta, "m", "v", *(("W",) if master else ()))
    table = {name: Mismatch(tensor=name) for name in names}
    noise = _SRNoise(run) if variant == "fp32-master-sr" else None

    def bf16_of(name: str) -> bool:  # stored as bf16 bits: everything of a bf16 run, W of a master run
        return bf16 or (master and name == "W")

    started = time.perf_counter()
    with tqdm(total=len(pairs), desc=f"verify {run.name}", unit="step", disable=not progress) as bar:
        for i in range(0, len(pairs), block):
            chunk = pairs[i:i + block]
            prev = {name: run.tensor(name, steps=[t - 1 for t in chunk], kind=kind) for name in (theta, "m", "v")}
            cur = {name: run.tensor(name, steps=chunk, kind="bits" if bf16_of(name) else kind) for name in names}
            grad = run.tensor("grad", steps=chunk, kind="bits" if master or bf16 else kind)
            for j, t in enumerate(chunk):
                hp = adam.hyper_of(run, t, **hyper)
                g = adam.bf16_to_f32(grad[j]) if master else grad[j]  # master grads: the bf16 grad, upcast
                out = adam.adamw_step(prev[theta][j], prev["m"][j], prev["v"][j], g, t, hp,
                                      clip_scale=float(clip[t - 1]), bf16=bf16, laws=law, impl=impl)
                got = {theta: out.W, "m": out.m, "v": out.v}
                if master:  # the bf16 model weights are written from the master copy
                    got["W"] = (adam.f32_to_bf16(out.W) if noise is None
                                else stochastic_round(out.W, noise.at(t)))
                bad = [name for name in names if _tally(table[name], got[name], cur[name][j], t, bf16_of(name))]
                if bad and not explanation:
                    inputs = (prev[theta][j], prev["m"][j], prev["v"][j], g, t, hp, float(clip[t - 1]))
                    want = {name: cur[name][j] for name in (theta, "m", "v")}
                    explanation = explain(inputs, want, got, bad, bf16, impl, law, theta, replaced=hyper)
            bar.update(len(chunk))
    return Verification(run=f"{run.name}-{run.key}", variant=variant, steps=list(pairs), laws=law,
                        table=list(table.values()), hyper=hyper, seconds=time.perf_counter() - started,
                        impl=impl, source=source, notes=notes, explanation=explanation)


def _ordinal(x: np.ndarray) -> np.ndarray:
    """Position on the number line (`bits.ordinal`, int64; inf and NaN allowed: the data may be damaged), so
    differences count representable steps; bf16 tensors arrive as uint16 bits, fp32 ones as float32."""
    return ordinal(x, check=False).astype(np.int64)


TERMS = {"lerp": "first moment", "beta2": "second moment (β₂·v)", "addcmul": "second moment ((1 − β₂)·g²)",
         "sqrt": "denominator (√v)", "bias2": "denominator (bias correction)", "eps": "denominator (+ ε)",
         "decay": "decay", "addcdiv": "step (θ + step·m / d)", "step": "fused step"}


def _distance(got, want) -> np.ndarray:
    return np.abs(_ordinal(got) - _ordinal(want))


def explain(inputs, want: dict, replayed: dict, bad: list[str], bf16: bool, impl: str, law: dict,
            theta: str = "W", replaced: dict | None = None) -> list[str]:
    """Take the first mismatching step apart: per tensor how many elements and ULPs, whether the update
    alone (from the recorded moments) differs, and which single kernel's other law would reproduce it.
    `replayed` is the step as the replay computed it (tensor name -> array), `want` as it was recorded."""
    W, m, v, g, t, hp, clip = inputs
    dist = {k: _distance(replayed[k], want[k]) for k in want}
    lines = []
    for name in bad:
        if name not in want:  # the bf16 W of a master run follows its master copy
            continue
        d = dist[name]
        term = {"m": "first moment", "v": "second moment"}.get(name, "update")
        lines.append(f"step {t}: {name} ({term}) differs on {int(np.count_nonzero(d)):,} of {d.size:,} elements, "
                     f"up to {int(d.max()):,} ULP")
    if theta in bad and impl != "fused" and not {"m", "v"} & set(bad):
        lines.append(f"step {t}: the recorded moments are reproduced, so the difference is in the update "
                     "(decay, denominator or step)")
    fixes = []
    if impl != "fused" and not replaced:
        for kname in kernel_laws.KERNELS:
            for alt in (*kernel_laws.CANDIDATES[kname], "library"):
                if alt == law.get(kname):
                    continue
                try:
                    out = adam.adamw_step(W, m, v, g, t, hp, clip_scale=clip, bf16=bf16,
                                          laws={**law, kname: alt}, impl=impl)
                except (ValueError, RuntimeError):
                    continue
                got = {theta: out.W, "m": out.m, "v": out.v}
                if all(np.array_equal(_ordinal(got[k]), _ordinal(want[k])) for k in want):
                    fixes.append(f"{kname} ({TERMS[kname]}): law {alt!r} reproduces step {t} exactly; the replay "
                                 f"used {law.get(kname)!r}")
    if fixes:
        lines.extend(fixes)
        return lines
    worst = max(int(d.max()) for d in dist.values())
    share = max(np.count_nonzero(d) / d.size for d in dist.values())
    if replaced:
        lines.append(f"hyper-parameters replaced for this replay ({replaced}): mismatches are expected")
    elif worst > 64 and share <= 0.01:
        # arithmetic gaps touch many elements by a few ULP; a damaged file, a few elements by a lot
        lines.append(f"no kernel law explains it, and {share:.2%} of the elements differ, by up to {worst:,} ULP: "
                     "this looks like damaged data (a changed bit in the recording), not arithmetic; "
                     "check the run file")
    else:
        lines.append("no single kernel's law explains it: a different hyper-parameter or arithmetic than the "
                     "run's config and this machine's kernels")
    return lines


def _tally(m: Mismatch, got: np.ndarray, want: np.ndarray, t: int, bf16: bool) -> bool:
    got_o, want_o = _ordinal(got), _ordinal(want)
    # a mismatch is any differing bit (+0 vs −0, NaN payloads included); the distance counts grid steps
    as_int = np.uint16 if bf16 else np.uint32
    differs = (np.ascontiguousarray(got).view(as_int) != np.ascontiguousarray(want).view(as_int))
    dist = np.maximum(np.abs(got_o - want_o), differs.astype(np.int64))
    m.elements += dist.size
    bad = int(np.count_nonzero(dist))
    if bad:
        m.count += bad
        m.max_ulps = max(m.max_ulps, int(dist.max()))
        if m.first_step is None:
            m.first_step = t
        values, counts = np.unique(np.minimum(dist[dist > 0], 1000), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            m.ulp_histogram[v] = m.ulp_histogram.get(v, 0) + c
    return bool(bad)


def format_table(v: Verification) -> str:
    lines = [f"replay of {v.run} ({v.variant}, impl {v.impl}, steps {v.steps[0]}..{v.steps[-1]}, "
             f"{len(v.steps)} steps, {v.elements:,} elements compared in {v.seconds:.1f} s)",
             f"kernel laws {v.source}: " + ", ".join(f"{k}={x}" for k, x in v.laws.items() if k not in adam.LAWS)]
    lines += [f"  {n}" for n in v.notes]
    changed = {k: x for k, x in v.laws.items() if k in adam.LAWS and adam.LAWS[k] != x} | v.hyper
    if changed:
        lines.append(f"changed from PyTorch's arithmetic and the run's config: {changed}")
    lines.append(f"{'tensor':<7} {'elements':>14} {'mismatches':>11} {'max ULPs':>9} {'first step':>10}")
    for m in v.table:
        first = "-" if m.first_step is None else str(m.first_step)
        lines.append(f"{m.tensor:<7} {m.elements:>14,} {m.count:>11,} {m.max_ulps:>9,} {first:>10}")
    lines += [f"  {e}" for e in v.explanation]
    lines.append("bit-exact" if v.exact else "MISMATCH")
    return "\n".join(lines)
