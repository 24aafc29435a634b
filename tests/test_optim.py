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


def test_cosine_decays_on_whichever_budget_ends_first():
    cosine = build_lr_schedule(CosineConfig(warmup_steps=10, final_lr_scale=0.1), 1.0, 100_010)
    assert cosine(20, 0.0) == pytest.approx(1.0, abs=1e-3)  # steps alone: barely started
    assert cosine(20, 0.5) == pytest.approx(0.55) and cosine(20, 1.0) == pytest.approx(0.1)  # half / all the time spent
    short = build_lr_schedule(CosineConfig(warmup_steps=10, final_lr_scale=0.1), 1.0, 110)
    assert short(110, 0.2) == pytest.approx(0.1)  # the steps ran out first
    assert short(5, 0.9) == pytest.approx(0.5)  # warmup is counted in steps
    inverse_sqrt = build_lr_schedule(InverseSqrtConfig(warmup_steps=100, init_lr=0.0), 1e-3, 1000)
    assert inverse_sqrt(400, 0.9) == inverse_sqrt(400)  # no end to decay towards: time changes nothing


def test_a_cooldown_ends_the_run_at_zero_on_whichever_budget_ends_first():
    wsd = build_lr_schedule(ConstantConfig(warmup_steps=10, cooldown_fraction=0.2), 1.0, 100)
    assert wsd(5) == pytest.approx(0.5) and wsd(50) == 1.0 and wsd(80) == pytest.approx(1.0)
    assert wsd(90) == pytest.approx(0.5) and wsd(100) == 0.0
    budgeted = build_lr_schedule(ConstantConfig(warmup_steps=10, cooldown_fraction=0.2), 1.0, 1_000_000)
    assert budgeted(50, 0.5) == 1.0 and budgeted(50, 0.9) == pytest.approx(0.5) and budgeted(50, 1.0) == 0.0
    inverse_sqrt = build_lr_schedule(InverseSqrtConfig(warmup_steps=100, init_lr=0.0, cooldown_fraction=0.5), 1e-3, 1_000_000)
    assert inverse_sqrt(400, 0.25) == pytest.approx(1e-3 * 0.5)  # before the cooldown: inverse-sqrt as ever
    assert inverse_sqrt(400, 0.75) == pytest.approx(1e-3 * 0.5 * 0.5)  # half-way through the cooldown
    with pytest.raises(UserError, match=r"--lr-scheduler.cooldown-fraction.*1.5.*between 0 and 1"):
        build_lr_schedule(ConstantConfig(cooldown_fraction=1.5), 1.0, 10)


def test_a_recipe_schedule_of_the_step_alone_is_still_accepted():
    class StepOnly:
        def build(self, peak_lr, max_steps):
            return lambda step: peak_lr / step

    lr_at = build_lr_schedule(StepOnly(), 1.0, 10)
    assert lr_at(4, 0.5) == 0.25
    with pytest.raises(UserError, match="expected a function lr_at"):
        build_lr_schedule(type("Broken", (), {"build": lambda self, peak_lr, max_steps: 3.0})(), 1.0, 10)


def test_optimizers_are_built_from_their_configs():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = build_optimizer(AdamWConfig(), params)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.98)
    assert isinstance(build_optimizer(SGDConfig(), params), torch.optim.SGD)
    with pytest.raises(UserError, match=r"--optimizer.lr must be positive, got -1"):
        build_optimizer(AdamWConfig(lr=-1), params)


def test_adamw_is_fused_for_plain_tensors():
    group = AdamWConfig().build(torch.nn.Linear(4, 4).parameters()).param_groups[0]
    assert group["fused"] is True and not group["foreach"]


def test_a_foreach_era_checkpoint_resumes_fused_and_under_fp16_loss_scaling():
    """Optimizer states saved by foreach AdamW (checkpoints before 2026-12-05) carry foreach=True in their groups;
    loading must not switch the fused optimizer back, or fp16's GradScaler (set up for a fused one) fails in step."""
    from fs2mini.distributed import full_state_dicts, load_optimizer_state

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    old = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    model(torch.randn(2, 4)).sum().backward()
    old.step()
    _, saved = full_state_dicts(model, old)
    model.zero_grad(set_to_none=True)  # as a freshly built model at resume
    optimizer = AdamWConfig().build(model.parameters())
    load_optimizer_state(model, optimizer, saved)
    assert optimizer.param_groups[0]["fused"] is True and not optimizer.param_groups[0]["foreach"]
    assert torch.equal(optimizer.state[model.weight]["exp_avg"], old.state[model.weight]["exp_avg"])  # the state itself loaded
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    optimizer.zero_grad()
    scaler.scale(model(torch.randn(2, 4)).sum()).backward()
    scaler.step(optimizer)  # failed with "Expected grad_scale and found_inf to be None" before the kernel settings were kept
    scaler.update()
    assert optimizer.state[model.weight]["step"].item() == 2
