"""The masked-diffusion (MDM) objective.

Forward process (MDLM / MD4 with the linear schedule alpha_t = 1 - t): draw
t ~ U(0, 1) and mask each free (non-prompt) position independently with
probability t. The continuous-time ELBO weights the cross-entropy of every
masked position by -alpha'_t / (1 - alpha_t) = 1/t; the plain mean over masked
positions is the common lower-variance alternative. Both are offered because
which trains the better *sampler* on a given task is an empirical question.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from aop_ray.orders import select

T_MIN = 1e-3


def sample_t(batch: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Stratified ("low-discrepancy") t in [T_MIN, 1): one uniform offset, evenly spaced.

    Lower-variance ELBO estimates than i.i.d. t at no cost (as in MDLM).
    """
    u = torch.rand(1, generator=generator).item()
    t = (u + torch.arange(batch, dtype=torch.float32) / batch) % 1.0
    return (T_MIN + (1 - T_MIN) * t).to(device)


def mask_free_positions(
    x0: torch.Tensor, fixed: torch.Tensor, t: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and its mask: each non-fixed position is masked with probability t (per row)."""
    u = torch.rand(x0.shape, generator=generator).to(x0.device)
    masked = (u < t[:, None]) & ~fixed
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def output_targets(x0: torch.Tensor, vocab: int) -> torch.Tensor:
    """x0 as class indices for CE: only free positions count, and prompt-only tokens
    (SAT literals) or unknown references (-1) there are clamped into range, to be masked out."""
    return x0.clamp(0, vocab - 1)


def mdm_loss(
    logits: torch.Tensor,
    x0: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    fixed: torch.Tensor,
    weighting: Literal["elbo", "mean"] = "elbo",
) -> torch.Tensor:
    """Scalar MDM loss.

    `elbo`: per-sequence sum over masked positions of CE / t, divided by the
    number of free positions (a per-token ELBO in nats), averaged over the batch.
    `mean`: the mean CE over all masked positions in the batch.
    """
    ce = F.cross_entropy(  # (B, L); in fp32 whatever the forward ran in (aop_ray/precision.py)
        logits.float().transpose(1, 2), output_targets(x0, logits.shape[-1]), reduction="none"
    )
    ce = ce * masked
    if weighting == "mean":
        return ce.sum() / masked.sum().clamp(min=1)
    free = (~fixed).sum(dim=1).clamp(min=1)
    return (ce.sum(dim=1) / t / free).mean()


def denoiser_loss(
    model: nn.Module,
    x0: torch.Tensor,
    fixed: torch.Tensor,
    mask_id: int,
    weighting: Literal["elbo", "mean"],
    generator: torch.Generator,
) -> torch.Tensor:
    """One MDM training loss on a batch of clean sequences (forward process included)."""
    t = sample_t(x0.shape[0], generator, x0.device)
    xt, masked = mask_free_positions(x0, fixed, t, mask_id, generator)
    return mdm_loss(model(xt), x0, masked, t, fixed, weighting)


def position_costs(logits: torch.Tensor, x0: torch.Tensor, kind: Literal["ce", "error", "both"]) -> torch.Tensor:
    """(B, L) the cost of revealing each position now: CE_i = -log p(x0_i | x_t), 1[argmax != x0_i], or both.

    Differentiable through CE (joint training); the error indicator has no gradient.
    """
    ce = F.cross_entropy(logits.float().transpose(1, 2), output_targets(x0, logits.shape[-1]), reduction="none")
    if kind == "ce":
        return ce
    error = (logits.argmax(-1) != x0).float()
    return error if kind == "error" else ce + error


def masked_log_softmax(scores: torch.Tensor, masked: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(i | x_t) over masked positions only; -inf elsewhere."""
    return (scores.float() / temperature).masked_fill(~masked, float("-inf")).log_softmax(dim=1)


def aop_loss(
    scores: torch.Tensor, masked: torch.Tensor, cost: torch.Tensor, temperature: float = 1.0, entropy_beta: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AOP objective: E_i~pi[cost_i] - beta * H(pi), averaged over states with a masked position.

    `pi` is the policy's softmax over masked positions, so unmasked positions
    get exactly zero probability. Gradients reach the policy through `pi` and,
    unless the caller detaches `cost` (policy-only stage), the denoiser through
    `cost` (joint stage).
    """
    live = masked.any(dim=1)
    logp = masked_log_softmax(scores[live], masked[live], temperature)
    pi = logp.exp()
    safe_logp = logp.masked_fill(~masked[live], 0.0)
    expected = (pi * cost[live].masked_fill(~masked[live], 0.0)).sum(1)
    entropy = -(pi * safe_logp).sum(1)
    loss = (expected - entropy_beta * entropy).mean()
    return loss, {"expected_cost": expected.mean().detach(), "entropy": entropy.mean().detach()}


def pairwise_rank_loss(
    scores: torch.Tensor, masked: torch.Tensor, cost: torch.Tensor, shortlist: torch.Tensor, k: int
) -> torch.Tensor:
    """Mean softplus(s_j - s_i) over pairs of the `k` best masked positions by `shortlist` where cost_i < cost_j.

    The expectation `aop_loss` has a gradient only where the policy already puts
    mass on a costly position: a fraction of a percent of a good order's states.
    Ranking the base order's shortlist by cost instead learns from every state
    where *any* of its k candidates would have been wrong, at the decisions that
    matter (an argmax policy only ever picks near the top). Costs only define
    the pairs, so no gradient reaches them: a policy-only objective.
    """
    top, valid = select(shortlist, masked, k)
    s, c = torch.gather(scores.float(), 1, top), torch.gather(cost.detach(), 1, top)
    pairs = valid[:, :, None] & valid[:, None, :] & (c[:, :, None] < c[:, None, :])  # (B, i better, j worse)
    loss = F.softplus(s[:, None, :] - s[:, :, None])
    return (loss * pairs).sum() / pairs.sum().clamp(min=1)


def correctness_loss(scores: torch.Tensor, masked: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each masked position's score as the logit that the denoiser's argmax is right.

    `cost` is the greedy error indicator. The expectation learns only from the
    positions the policy already weights, the pairwise loss from the base order's
    shortlist; this one supervises *every* masked position of every state, so a
    cross-position feature that separates right from wrong cells (a cell its peers
    force) is learnt from the whole board, not from the rare states where the base
    order errs. The argmax of the score is then the position most likely right.
    Costs are labels: no gradient reaches them (a policy-only objective).
    """
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        scores.float(), 1.0 - cost.detach().float(), reduction="none"
    )
    return (bce * masked).sum() / masked.sum().clamp(min=1)
