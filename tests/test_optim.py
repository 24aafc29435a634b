"""Learning-rate schedules and optimizer builders."""

import math

import pytest
import torch

from fs2mini.errors import UserError
from fs2mini.optim import AdamWConfig, ConstantConfig, CosineConfig, InverseSqrtConfig, SGDConfig, build_lr_schedule, build_optimizer


def test_inverse_sqrt_warms_up_linearly_then_decays():
    lr_at = build_lr_schedule(InverseSqrtConfig(warmup_steps=100, init_lr=0.0), 1e-3, 1000)
    assert lr_at(50) == pytest.approx(5e-4)
    assert lr_at(100) == pytest.approx(1e-3)
    assert lr_at(400) == pytest.approx(1e-3 * math.sqrt(100 / 400))


def test_cosine_ends_at_final_scale_and_constant_stays():
    cosine = build_lr_schedule(CosineConfig(warmup_steps=10, final_lr_scale=0.1), 1.0, 110)
    assert cosine(10) == pytest.approx(1.0) and cosine(60) == pytest.approx(0.55) and cosine(110) == pytest.approx(0.1)
    constant = build_lr_schedule(ConstantConfig(warmup_steps=0), 0.5, 10)
    assert constant(1) == constant(10) == 0.5


def test_optimizers_are_built_from_their_configs():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = build_optimizer(AdamWConfig(), params)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.98)
    assert isinstance(build_optimizer(SGDConfig(), params), torch.optim.SGD)
    with pytest.raises(UserError, match=r"--optimizer.lr must be positive, got -1"):
        build_optimizer(AdamWConfig(lr=-1), params)
