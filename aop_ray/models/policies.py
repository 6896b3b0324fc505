"""Which policy network a config names (`policy.encoder`), and the mean of several trained ones.

The encoders live in their own modules (`models/policy.py`: transformer and token-axis; `models/clause_graph.py`:
3-SAT); this one only knows them all, so that neither imports the other.
"""

from __future__ import annotations

import torch
from torch import nn

from aop_ray.config import PolicyConfig
from aop_ray.models.clause_graph import ClauseGraphPolicy
from aop_ray.models.policy import Policy, TokenAxisPolicy
from aop_ray.orders import DecodeState
from aop_ray.tasks import Task

PolicyNet = Policy | TokenAxisPolicy | ClauseGraphPolicy  # an Order with .cfg, .base and .needs_hidden
ENCODERS: dict[str, type[PolicyNet]] = {
    "transformer": Policy,
    "token_axis": TokenAxisPolicy,
    "clause_graph": ClauseGraphPolicy,
}


class PolicyEnsemble(nn.Module):
    """An `Order`: the mean score of policies of one config trained apart (seeds) on one denoiser.

    A policy's residual is fitted to the few hundred trajectory states where its
    base order errs, so its solve rate moves by several points from one training
    seed to the next. Each member scores `scale * base + residual`; their mean keeps
    the base and averages the residuals, which averages that seed noise out
    (docs/results/sudoku9_ensemble.md). Built from trained checkpoints by
    `python -m aop_ray.ensemble`; it is not trained as one.
    """

    def __init__(self, members: list[PolicyNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg
        self.needs_hidden = members[0].needs_hidden

    def forward(self, state: DecodeState) -> torch.Tensor:
        return torch.stack([member(state) for member in self.members]).mean(0)


def make_policy(task: Task, hidden_dim: int, cfg: PolicyConfig) -> PolicyNet:
    """The policy network `cfg.encoder` names."""
    return ENCODERS[cfg.encoder](task, hidden_dim, cfg)
