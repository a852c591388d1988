"""The science: corpus, tokenizer, model, training, recording, run store, analyses and plots.

Pages import this package often, so importing it is cheap: torch, h5py and the corpus machinery load only
when a run is resolved, trained or read.

    import experiments
    run = experiments.run("flannel-1")                       # the stored run, trained first if missing
    run = experiments.run("flannel-1", **{"optim.lr": 3e-4})  # dotted overrides (or lr=3e-4: unambiguous)
    runs = experiments.sweep("flannel-4", jobs=2)            # every member of a sweep preset
    cfg = experiments.load_config("thimble-3")               # the resolved, validated config (plain data)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from experiments.physics.laws import pin_numerics

# Before anything in this process calls into MKL: one code path on every AVX2 CPU, Intel or AMD (laws.py)
pin_numerics()

if TYPE_CHECKING:
    from experiments.store.recording import Run

__all__ = ["Run", "find", "load_config", "run", "sweep"]


def run(name_or_config: str | dict, progress: bool = True, **overrides: Any) -> Run:
    from experiments.store.runs import run as _run

    return _run(name_or_config, progress=progress, **overrides)


def sweep(name_or_config: str | dict, jobs: int = 1, progress: bool = True, **overrides: Any) -> list[Run]:
    from experiments.store.runs import sweep as _sweep

    return _sweep(name_or_config, jobs=jobs, progress=progress, **overrides)


def load_config(name_or_config: str | dict, **overrides: Any) -> dict:
    from experiments.rig.config import load_config as _load

    return _load(name_or_config, **overrides)


def find(ref: str) -> Run:
    from experiments.store.runs import find as _find

    return _find(ref)


def __getattr__(name: str):
    if name == "Run":  # lazily: the reader imports h5py
        from experiments.store.recording import Run

        return Run
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")
