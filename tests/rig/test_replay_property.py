"""Bit-exact replay across the recipe space: hypothesis draws the hyper-parameters, nobody picks them.

Each example trains a tiny model for a few steps with drawn β₁, β₂, ε, lr, weight decay, clipping,
schedule, AdamW implementation, precision and tying, then replays every recorded step with the kernel laws
and asserts W, m, v (and the master weights) are reproduced bit for bit. CI runs a few examples
(LAB_PROPERTY_EXAMPLES, default 10); `python bench/bench_replay_property.py` runs the long profile.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import experiments
from experiments.physics import verify

EXAMPLES = int(os.environ.get("LAB_PROPERTY_EXAMPLES", "10"))


def _log_uniform(lo: float, hi: float):
    return st.floats(min_value=0.0, max_value=1.0).map(lambda u: lo * (hi / lo) ** u)


recipes = st.fixed_dictionaries({
    "beta1": st.one_of(st.sampled_from([0.9, 0.8, 0.95]), st.floats(0.0, 0.99)),
    "beta2": st.one_of(st.sampled_from([0.95, 0.98, 0.99, 0.999]), st.floats(0.5, 0.9999)),
    "eps": _log_uniform(1e-12, 1e-5),
    "lr": _log_uniform(1e-4, 3e-2),
    "weight_decay": st.one_of(st.just(0.0), st.sampled_from([0.1, 0.01]), st.floats(0.0, 0.5)),
    "clip": st.one_of(st.none(), st.sampled_from([1.0, 0.05]), _log_uniform(1e-3, 2.0)),
    "schedule": st.sampled_from(["constant", "linear", "cosine"]),
    "warmup": st.sampled_from([0, 0, 2]),
    "impl": st.sampled_from(["single", "foreach", "fused"]),
    "precision": st.sampled_from(["bf16", "fp32", "fp32-master-rne", "fp32-master-sr"]),
    "tied": st.booleans(),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("LAB_PROPERTY_RANDOM") is None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(r=recipes)
@pytest.mark.slow
def test_every_recipe_replays_bit_exactly(store, tiny, r):
    tensors = ["W", "m", "v", "grad"] + (["master"] if r["precision"].startswith("fp32-master") else [])
    cfg = tiny(
        name="recipe",
        train={"steps": 5, "init_seed": r["seed"]},
        model={"tied": r["tied"]},
        optim={"lr": r["lr"], "betas": [r["beta1"], r["beta2"]], "eps": r["eps"],
               "weight_decay": r["weight_decay"], "clip": r["clip"], "schedule": r["schedule"], "warmup": r["warmup"], "impl": r["impl"]},
        precision={"dtype": r["precision"], "sr_seed": r["seed"] + 1},
        record={"rows": "dead", "steps": "all", "tensors": tensors},
    )
    run = experiments.run(cfg, progress=False)
    result = verify.verify(run)
    assert result.exact, f"{r}\n{verify.format_table(result)}"
