"""Unmasking orders: which masked positions to reveal next.

Every order is a function from the current decoding state to a score per
position (higher = reveal sooner). Scores come from the *same* denoiser
forward the sampler uses for the tokens, so an order costs no extra forward.
`select` alone decides which positions are eligible: prompt and already
revealed positions are excluded there, once, for every order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import torch


@dataclasses.dataclass
class DecodeState:
    """What an order may look at when choosing the next positions."""

    tokens: torch.Tensor  # (B, L) current x_t, mask id where masked
    masked: torch.Tensor  # (B, L) bool, still masked (never prompt)
    logits: torch.Tensor  # (B, L, V) denoiser logits for x_t
    hidden: torch.Tensor | None  # (B, L, D) final denoiser hidden state, if the order asked for it
    step: int
    generator: torch.Generator | None = None

    @functools.cached_property
    def probs(self) -> torch.Tensor:
        return self.logits.float().softmax(-1)


Order = Callable[[DecodeState], torch.Tensor]


def random_order(state: DecodeState) -> torch.Tensor:
    return torch.rand(state.masked.shape, generator=state.generator).to(state.masked.device)


def confidence(state: DecodeState) -> torch.Tensor:
    """Top-1 probability."""
    return state.probs.max(dim=-1).values


def margin(state: DecodeState) -> torch.Tensor:
    """Top-1 minus top-2 probability: confident *and* unambiguous."""
    top2 = state.probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def neg_entropy(state: DecodeState) -> torch.Tensor:
    """Lowest entropy first."""
    logp = state.logits.float().log_softmax(-1)
    return (logp.exp() * logp).sum(-1)


def left_to_right(state: DecodeState) -> torch.Tensor:
    """The leftmost masked position first: the natural order for infilling a sequence (not a heuristic on
    the denoiser; tasks over sequences offer it with their rule orders)."""
    length = state.masked.shape[1]
    return -torch.arange(length, device=state.masked.device, dtype=torch.float32).expand(state.masked.shape)


HEURISTICS: dict[str, Order] = {
    "random": random_order,
    "confidence": confidence,
    "margin": margin,
    "entropy": neg_entropy,
}


def task_rules(task: Any) -> dict[str, Order]:
    """Rule orders a task offers (Sudoku: `singles`); none for tasks without rules."""
    return task.rule_orders() if task is not None else {}


def get_order(name: str, policy: Order | None = None, task: Any = None) -> Order:
    """The order called `name`: a heuristic, a rule of `task`, or `learned` (a trained policy)."""
    if name == "learned":
        if policy is None:
            raise ValueError("order 'learned' needs a policy (pass a policy checkpoint)")
        return policy
    rules = task_rules(task)
    if name in rules:
        return rules[name]
    if name not in HEURISTICS:
        raise ValueError(f"unknown order {name!r} (known: {', '.join(order_names(task))})")
    return HEURISTICS[name]


def order_names(task: Any = None) -> list[str]:
    return [*HEURISTICS, *task_rules(task), "learned"]


def select(
    scores: torch.Tensor,
    masked: torch.Tensor,
    k: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best masked positions per row: (B, k) indices and (B, k) validity.

    With `temperature > 0`, k positions are sampled without replacement from
    softmax(scores / temperature) over masked positions (Gumbel top-k).
    A row with fewer than k masked positions gets `valid = False` in the rest.
    """
    scores = scores.float()
    if temperature > 0:
        u = torch.rand(scores.shape, generator=generator).to(scores.device).clamp_(1e-20, 1.0)
        scores = scores / temperature - torch.log(-torch.log(u))
    scores = scores.masked_fill(~masked, float("-inf"))
    k = min(k, scores.shape[1])
    positions = scores.topk(k, dim=1).indices
    return positions, torch.gather(masked, 1, positions)
