"""The learning-rate schedules are HF Trainer's own: checked against transformers' scheduler functions."""

from __future__ import annotations

import pytest
import torch

from experiments.errors import ConfigError
from experiments.rig.config import load_config
from experiments.rig.train import lr_at

transformers_opt = pytest.importorskip("transformers.optimization")


def _hf(schedule: str, steps: int, warmup: int, floor: float) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    if schedule == "constant":
        sched = transformers_opt.get_constant_schedule_with_warmup(opt, warmup)
    elif schedule == "linear":
        sched = transformers_opt.get_linear_schedule_with_warmup(opt, warmup, steps)
    else:
        sched = transformers_opt.get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, steps, min_lr_rate=floor)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup, floor", [(0, 0.0), (7, 0.0), (20, 0.1)])
def test_schedule_is_hf_trainers(schedule, warmup, floor):
    steps = 100
    o = {"lr": 1e-3, "schedule": schedule, "warmup": warmup, "min_lr_ratio": floor}
    ours = [lr_at(o, step, steps) for step in range(1, steps + 1)]
    assert ours == pytest.approx(_hf(schedule, steps, warmup, floor), rel=1e-12, abs=0)


def test_cosine_recipe_validates():
    cfg = load_config("recipe-llama", **{"optim.schedule": "cosine", "optim.warmup": 30, "optim.min_lr_ratio": 0.1})
    assert cfg["optim"]["schedule"] == "cosine" and cfg["optim"]["warmup"] == 30
    with pytest.raises(ConfigError, match="optim.min_lr_ratio"):
        load_config("recipe-llama", **{"optim.min_lr_ratio": 2})
    with pytest.raises(ConfigError, match="optim.schedule"):
        load_config("recipe-llama", **{"optim.schedule": "cosinus"})
