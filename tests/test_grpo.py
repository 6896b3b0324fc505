"""GRPO math (aop_ray/grpo.py): advantages, rebuilt states, the policy-gradient direction."""

from __future__ import annotations

import pytest
import torch
from test_aop_train import denoiser_of, metric_history
from torch import nn

from aop_ray import checkpoints
from aop_ray.config import GrpoConfig, ModelConfig
from aop_ray.errors import InputError
from aop_ray.grpo import group_advantages, grpo_step, sample_steps
from aop_ray.models.denoiser import Denoiser
from aop_ray.sampling import teacher_forced_state, unmask
from aop_ray.tasks import Sudoku

from conftest import ROOT, run_cli


def test_group_advantages_standardise_within_groups_and_vanish_where_a_group_agrees():
    reward = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(reward, 4)
    # group 1: mean 0.25, std sqrt(0.1875)
    s = 0.1875**0.5
    assert torch.allclose(adv[:4], torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s]))
    assert (adv[4:] == 0).all()


def test_rebuilt_rollout_states_show_exactly_the_earlier_reveals_and_the_action_is_legal():
    task = Sudoku(4)
    torch.manual_seed(0)
    denoiser = Denoiser(4, task.position_groups(), ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)).eval()
    inst = task.generate(3, seed=2, clues=6)
    x = torch.as_tensor(inst.tokens)
    gen = torch.Generator().manual_seed(0)
    roll = unmask(denoiser, lambda s: torch.zeros(s.masked.shape), x, 4, order_temperature=1.0, generator=gen)
    rows, step = sample_steps(roll.step_of, torch.arange(3), 5, gen)
    assert rows.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and (step >= 0).all() and (step < 10).all()
    states = teacher_forced_state(x[rows], roll.step_of[rows], roll.tokens[rows], step)
    for state, r, s in zip(states, rows, step):
        shown = state != 4
        assert torch.equal(shown, (roll.step_of[r] < s) & (roll.step_of[r] >= 0) | (x[r] != 4))
        chosen = (roll.step_of[r] == s).nonzero().squeeze(1)
        assert len(chosen) == 1 and state[chosen] == 4  # the rollout's action was a masked position


class BiasPolicy(nn.Module):
    """Scores = one learnable number per position: the simplest policy whose gradient we can read."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(length))

    def forward(self, state):
        return self.bias.expand(state.masked.shape)


class ForcedTask:
    """A stand-in task whose verifier rewards rollouts that revealed position 0 *first*."""

    vocab_size = 4

    def __init__(self) -> None:
        self.first: torch.Tensor | None = None

    def verify(self, tokens, prompt, fixed):
        return self.first


def test_grpo_gradient_raises_the_probability_of_rewarded_actions(monkeypatch):
    torch.manual_seed(0)
    task4 = Sudoku(4)
    denoiser = Denoiser(4, task4.position_groups(), ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)).eval()
    policy = BiasPolicy(16)
    prompt = torch.full((4, 16), 4)
    fixed = torch.zeros(4, 16, dtype=torch.bool)
    task = ForcedTask()
    import aop_ray.grpo as grpo

    real_unmask = grpo.unmask

    def recording_unmask(*args, **kwargs):
        roll = real_unmask(*args, **kwargs)
        task.first = (roll.step_of[:, 0] == 0).float()
        return roll

    monkeypatch.setattr(grpo, "unmask", recording_unmask)
    cfg = GrpoConfig(group_size=8, rollout_temperature=1.0, states_per_rollout=32)
    before = None
    for _ in range(30):
        loss, stats = grpo_step(denoiser, policy, policy, prompt, fixed, task, cfg, torch.Generator().manual_seed(_))
        loss.backward()
        with torch.no_grad():
            policy.bias -= 20.0 * policy.bias.grad
            policy.bias.grad = None
        before = stats["reward"] if before is None else before
    probs = policy.bias.softmax(0)
    assert probs[0] > 0.5 and probs[0] == probs.max()  # from 1/16: position 0 is learned first
    assert stats["reward"] > before


def test_grpo_config_refuses_groups_of_one():
    with pytest.raises(InputError, match="grpo.group_size"):
        GrpoConfig(group_size=1)


def test_grpo_stage_trains_on_ray_and_writes_a_policy_checkpoint(trained):
    """`stage: grpo` through `python -m aop_ray.train`: 2 workers, a checkpoint, reward and KL curves."""
    name = "grpo-smoke"
    proc = run_cli(
        "aop_ray.train",
        "--config",
        str(ROOT / "tune_configs" / "sudoku4_grpo_smoke.yaml"),
        denoiser_of(trained),
        f"name={name}",
        cwd=trained,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = checkpoints.read_manifest(trained / "runs" / name / "final")
    assert manifest["stage"] == "grpo" and manifest["step"] == 20 and manifest["grpo"]["group_size"] == 4
    reward = metric_history(trained, name, "reward")
    assert [m.step for m in reward] == [10, 20] and all(0 <= m.value <= 1 for m in reward)
    assert len(metric_history(trained, name, "kl")) == 2
    assert len(metric_history(trained, name, "val_chosen_error/learned")) == 1
