"""The learned unmasking order (Adaptive Order Policy).

The policy reads what the denoiser already computed at the current state and
returns a score per position; the order reveals the best masked one. Its
inputs, per position, all from the same denoiser forward:

- `probs`: the full probability vector, digit identity kept, so relational
  facts such as "digit d is likely in only one cell of this row" are learnable
  by attention across positions;
- `stats`: max probability, margin, entropy, mask flag, fraction still masked;
- `hidden`: the denoiser's final hidden state (detached);
- `group_probs`: for each structure group of the position (row, column, box),
  the summed token distribution of the *other* positions in that group
  (revealed positions count as one-hot). Generic: it uses only the geometry
  the denoiser is given too, no task rule; "digit d already has mass 1 in my
  row" is how a confidently wrong cell shows.
- optional task features, named in the config (Sudoku: candidate count,
  naked/hidden single, argmax legal), never on by default.

The score is `scale * base_order(state) + residual`: the residual head starts
at zero and `scale` at `base_scale`, so an untrained policy *is* the base
heuristic (a near-hard argmax of it), and training only has to learn where to
deviate. A too-soft start wastes the budget on sharpening (DESIGN.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aop_ray.config import PolicyConfig
from aop_ray.models.transformer import StructuredTransformer
from aop_ray.orders import HEURISTICS, DecodeState
from aop_ray.tasks import Task


def group_pooled(belief: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """(B, L, G*V): per group, the summed `belief` (B, L, V) of the position's group peers, itself excluded."""
    parts = []
    for ids in groups:
        totals = torch.zeros(belief.shape[0], int(ids.max()) + 1, belief.shape[-1], dtype=belief.dtype,
                             device=belief.device)
        totals.index_add_(1, ids, belief)
        parts.append(totals[:, ids] - belief)
    return torch.cat(parts, dim=-1)


def generic_features(probs: torch.Tensor, hidden: torch.Tensor | None, masked: torch.Tensor,
                     names: list[str], tokens: torch.Tensor | None = None,
                     groups: list[torch.Tensor] | None = None) -> torch.Tensor:
    """(B, L, F) the named generic features of a decoding state."""
    parts = []
    if "probs" in names:
        parts.append(probs)
    if "stats" in names:
        top2 = probs.topk(2, dim=-1).values
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
        frac = masked.float().mean(dim=1, keepdim=True).expand_as(masked)
        parts += [top2[..., 0, None], (top2[..., 0] - top2[..., 1])[..., None], entropy[..., None],
                  masked.float()[..., None], frac[..., None]]
    if "hidden" in names:
        if hidden is None:
            raise ValueError("feature 'hidden' needs the denoiser's hidden state")
        parts.append(hidden.detach().float())
    if "group_probs" in names or "group_tokens" in names:
        revealed = torch.nn.functional.one_hot(tokens.clamp(max=probs.shape[-1] - 1), probs.shape[-1]).to(probs.dtype)
        revealed = revealed * ~masked[..., None]
    if "group_probs" in names:
        parts.append(group_pooled(revealed + probs * masked[..., None], groups))
    if "group_tokens" in names:
        parts.append(group_pooled(revealed, groups))
    return torch.cat(parts, dim=-1)


def feature_dim(cfg: PolicyConfig, vocab_size: int, hidden_dim: int, n_groups: int) -> int:
    sizes = {"probs": vocab_size, "stats": 5, "hidden": hidden_dim, "group_probs": n_groups * vocab_size,
             "group_tokens": n_groups * vocab_size}
    return sum(sizes[name] for name in cfg.features) + len(cfg.task_features)


class Policy(StructuredTransformer):
    """An `Order`: `policy(state)` scores every position; the sampler takes the best masked one."""

    def __init__(self, task: Task, hidden_dim: int, cfg: PolicyConfig) -> None:
        super().__init__(task.position_groups(), cfg.d_model, cfg.n_layers, cfg.n_heads, ff_mult=2,
                         dropout=0.0, relation_bias=cfg.relation_bias, structure=task.token_structure())
        self.task = task
        self.cfg = cfg
        self.needs_hidden = "hidden" in cfg.features
        self.inp = nn.Linear(feature_dim(cfg, task.vocab_size, hidden_dim, len(self.group_names)), cfg.d_model)
        self.head = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, 1))
        self.apply(self._init)
        nn.init.zeros_(self.head[-1].weight)  # residual starts at exactly zero
        self.log_scale = (nn.Parameter(torch.tensor(math.log(cfg.base_scale)), requires_grad=cfg.learn_scale)
                          if cfg.base_scale else None)  # base_scale 0: no base order, learned from scratch
        self.base = HEURISTICS[cfg.base_order]

    def features(self, state: DecodeState) -> torch.Tensor:
        groups = [getattr(self, f"group_{name}") for name in self.group_names]
        feats = generic_features(state.probs, state.hidden, state.masked, self.cfg.features, state.tokens, groups)
        if self.cfg.task_features:
            extra = self.task.policy_features(state.tokens, state.probs, self.cfg.task_features)
            feats = torch.cat([feats, extra.to(feats.dtype)], dim=-1)
        return feats

    def forward(self, state: DecodeState) -> torch.Tensor:
        residual = self.head(self.encode(self.inp(self.features(state)), state.tokens)).squeeze(-1).float()
        if self.log_scale is None:
            return residual
        return self.log_scale.exp() * self.base(state).float() + residual
