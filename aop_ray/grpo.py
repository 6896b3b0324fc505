"""GRPO for the order policy: the RL baseline to the AOP loss, as pure torch (no Ray, no MLflow).

UPO, SAS and Olausson et al. learn unmasking orders by policy gradient on the
task's reward; this is that baseline on the same policy network, so the two
objectives can be compared on equal compute (stage `grpo` of `aop_ray.train`).

One step:
1. each puzzle is decoded `group_size` times by the current policy, sampling
   positions at `temperature` over the frozen denoiser (the unmasking process
   that `envs/` exposes as an environment, run batched by `sampling.unmask`);
2. the reward is the task's verifier (solved 1/0), or for a protein family
   minus the sequence's energy under a training-split Potts model (`reward`),
   and the advantage of a rollout is its reward standardised within its group
   (group-relative: no value network);
3. the loss is `-A * log pi(a_t | s_t)` averaged over `states_per_rollout`
   states drawn from each rollout with a non-zero advantage (an unbiased
   sub-sample of its steps: the state before any step is rebuilt from the
   rollout's record, as for teacher-forced trajectories), plus optionally
   `kl_beta * KL(pi || reference)` to a heuristic's softmax.

One gradient step per batch of rollouts, so the update is on-policy and needs
no importance ratio or clipping.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from aop_ray.config import GrpoConfig
from aop_ray.losses import masked_log_softmax
from aop_ray.orders import HEURISTICS, DecodeState
from aop_ray.protein.potts import Potts
from aop_ray.sampling import teacher_forced_state, unmask
from aop_ray.tasks import Task

# What a finished rollout earns: (tokens, prompt, fixed) -> (N,) reward.
Reward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def energy_reward(h: torch.Tensor, J: torch.Tensor) -> Reward:
    """Minus the Potts energy E(x) = -sum_i h_i(x_i) - sum_{i<j} J_ij(x_i, x_j) of each finished sequence."""

    potts = Potts(h=h, J=J)

    def reward(tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return -potts.energy(tokens)  # type: ignore[operator,return-value]  # a tensor for tensor input

    return reward


def group_advantages(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) rewards of consecutive groups -> standardised within each group (0 where a group agrees)."""
    groups = reward.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(std > 0, centred / std.clamp(min=1e-8), torch.zeros_like(centred)).view(-1)


def sample_steps(
    step_of: torch.Tensor, rows: torch.Tensor, per_row: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_row` random decoding steps of each rollout in `rows` (with replacement): (rows, steps)."""
    n_steps = step_of[rows].max(dim=1).values + 1
    rows = rows.repeat_interleave(per_row)
    u = torch.rand(len(rows), generator=generator).to(rows.device)
    return rows, (u * n_steps.repeat_interleave(per_row)).long()


def grpo_step(
    denoiser: nn.Module,
    policy: nn.Module,
    rollout_policy: nn.Module,
    prompt: torch.Tensor,
    fixed: torch.Tensor,
    task: Task,
    cfg: GrpoConfig,
    generator: torch.Generator,
    reward_fn: Reward | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss on `prompt` puzzles (each decoded `cfg.group_size` times).

    `rollout_policy` is the bare policy module (it samples the rollouts, no
    gradient); `policy` is the same module as trained (e.g. DDP-wrapped), and
    scores the sampled states with gradient. `reward_fn`: what a rollout earns (default: the task's
    verifier).
    """
    mask_id = task.vocab_size
    x = prompt.repeat_interleave(cfg.group_size, dim=0)
    f = fixed.repeat_interleave(cfg.group_size, dim=0)
    roll = unmask(
        denoiser,
        rollout_policy,
        x,
        mask_id,
        token_temperature=cfg.token_temperature,
        order_temperature=cfg.rollout_temperature,
        generator=generator,
    )
    reward = (reward_fn or task.verify)(roll.tokens, x, f).float()
    advantage = group_advantages(reward, cfg.group_size)
    useful = (advantage != 0) if not cfg.kl_beta else torch.ones_like(advantage, dtype=torch.bool)
    candidates = useful.nonzero().squeeze(1)
    if len(candidates) == 0:  # every group agreed: the loss is 0, but every DDP worker must still run the
        candidates = torch.arange(len(x), device=x.device)  # same forward and backward, or all-reduce hangs
    rows, step = sample_steps(roll.step_of, candidates, cfg.states_per_rollout, generator)
    stats = {
        "reward": reward.mean(),
        "informative_groups": (advantage.view(-1, cfg.group_size) != 0).any(1).float().mean(),
    }
    states = teacher_forced_state(x[rows], roll.step_of[rows], roll.tokens[rows], step)
    chosen = (roll.step_of[rows] == step[:, None]).float().argmax(dim=1)
    masked = states == mask_id
    with torch.no_grad():
        logits, hidden = denoiser(states, return_hidden=True)
    state = DecodeState(tokens=states, masked=masked, logits=logits.float(), hidden=hidden, step=0)
    logp = masked_log_softmax(policy(state), masked, cfg.rollout_temperature)
    chosen_logp = logp.gather(1, chosen[:, None]).squeeze(1)
    loss = -(advantage[rows] * chosen_logp).mean()
    pi = logp.exp()
    safe = logp.masked_fill(~masked, 0.0)
    stats["entropy"] = -(pi * safe).sum(1).mean().detach()
    if cfg.kl_beta:
        reference = masked_log_softmax(
            cfg.kl_scale * HEURISTICS[cfg.kl_reference](state), masked, cfg.rollout_temperature
        ).masked_fill(~masked, 0.0)
        kl = (pi * (safe - reference)).sum(1).mean()
        loss = loss + cfg.kl_beta * kl
        stats["kl"] = kl.detach()
    return loss, stats
