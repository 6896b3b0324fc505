"""One batched unmasking engine for every order.

Each step runs one denoiser forward on the rows that still have masks, lets
the order score positions from those same logits, reveals the k best, and
records when each position was revealed and how likely its token was. The
records give order heat maps and the planner-aware NLL:

    planner NLL = sum over steps of -log p_theta(x0_i | x_t) at the chosen i,

the order-dependent likelihood of the reference under teacher forcing
(`teacher_force=True` reveals the reference token instead of the model's).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import torch
from torch import nn

from aop_ray import precision
from aop_ray.config import DecodeConfig
from aop_ray.orders import DecodeState, Order, select
from aop_ray.tasks import Task, mask_id


@dataclasses.dataclass
class Rollout:
    tokens: torch.Tensor  # (B, L) completed sequences
    step_of: torch.Tensor  # (B, L) step at which each position was revealed; -1 for prompt
    logp_token: torch.Tensor  # (B, L) log-prob of the revealed token when it was revealed; 0 for prompt
    logp_target: torch.Tensor | None  # (B, L) log-prob of the reference token there; None without target
    steps: int  # = denoiser forwards (each on the rows still active)

    def planner_nll(self) -> torch.Tensor:
        """(B,) mean over revealed positions of -log p(reference | state when revealed)."""
        if self.logp_target is None:
            raise ValueError("planner NLL needs the reference target")
        revealed = self.step_of >= 0
        return -(self.logp_target * revealed).sum(1) / revealed.sum(1).clamp(min=1)


@torch.no_grad()
def unmask(
    denoiser: nn.Module,
    order: Order,
    tokens: torch.Tensor,
    mask_id: int,
    k: int = 1,
    token_temperature: float = 0.0,
    order_temperature: float = 0.0,
    target: torch.Tensor | None = None,
    teacher_force: bool = False,
    generator: torch.Generator | None = None,
    threshold: float | None = None,
) -> Rollout:
    """Reveal every masked position of `tokens`: the order's k best per step.

    With `threshold`, a step also reveals every other masked position whose
    top-1 probability is at least `threshold` (confidence-threshold parallel
    decoding): the order still guarantees progress, and easy positions stop
    costing a forward each.
    `token_temperature` 0 takes the denoiser's argmax token, otherwise samples at that
    temperature; `order_temperature` likewise samples the positions.
    With `teacher_force`, the reference token is revealed instead (for
    planner NLL and for policy-training trajectories).
    """
    if teacher_force and target is None:
        raise ValueError("teacher_force needs target")
    need_hidden = getattr(order, "needs_hidden", False)  # a learned policy may read hidden states
    tokens = tokens.clone()
    batch, length = tokens.shape
    device = tokens.device
    step_of = torch.full((batch, length), -1, dtype=torch.long, device=device)
    logp_token = torch.zeros(batch, length, device=device)
    logp_target = torch.zeros(batch, length, device=device) if target is not None else None
    steps = 0
    while True:
        masked = tokens == mask_id
        active = masked.any(dim=1).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        whole = active.numel() == batch
        x = tokens if whole else tokens[active]
        out = denoiser(x, return_hidden=True) if need_hidden else denoiser(x)
        logits, hidden = out if need_hidden else (out, None)
        logits = logits.float()
        state = DecodeState(
            tokens=x,
            masked=masked if whole else masked[active],
            logits=logits,
            hidden=hidden,
            step=steps,
            generator=generator,
        )
        positions, valid = select(order(state), state.masked, k, order_temperature, generator)
        picked = torch.arange(len(active), device=device)[:, None].expand_as(positions)[valid]  # rows of x
        cols = positions[valid]
        if threshold is not None:
            sure = state.masked & (state.probs.amax(-1) >= threshold)
            sure[picked, cols] = False  # already chosen by the order
            extra_rows, extra_cols = sure.nonzero(as_tuple=True)
            picked, cols = torch.cat([picked, extra_rows]), torch.cat([cols, extra_cols])
        rows = active[picked]
        chosen_logp = logits[picked, cols].log_softmax(-1)  # (n, V), one row per revealed position
        if teacher_force:
            assert target is not None  # unmask() refuses teacher forcing without a target
            new = target[rows, cols]
        elif token_temperature > 0:
            probs = (chosen_logp / token_temperature).softmax(-1)
            new = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
        else:
            new = chosen_logp.argmax(-1)
        tokens[rows, cols] = new
        step_of[rows, cols] = steps
        logp_token[rows, cols] = chosen_logp.gather(1, new[:, None]).squeeze(1)
        if logp_target is not None and target is not None:  # logp_target exists exactly when target does
            ref = target[rows, cols].clamp(min=0)
            logp_target[rows, cols] = chosen_logp.gather(1, ref[:, None]).squeeze(1)
        steps += 1
    return Rollout(tokens=tokens, step_of=step_of, logp_token=logp_token, logp_target=logp_target, steps=steps)


DEFAULT_DECODE = DecodeConfig()  # one position per forward, argmax tokens, no planner-NLL pass


@dataclasses.dataclass
class Decoded:
    """Per-instance results of decoding a dataset under one order."""

    solved: torch.Tensor  # (N,) bool
    cell_accuracy: torch.Tensor  # (N,) fraction of free positions equal to the reference
    planner_nll: torch.Tensor | None  # (N,) teacher-forced planner NLL (NaN: no reference); None if not asked
    step_of: torch.Tensor  # (N, L) reveal step per position, -1 for prompt
    metrics: dict[str, torch.Tensor]  # the task's own (N,) scores, e.g. SAT's fraction of clauses satisfied
    seconds: float  # decoding and verifying only (not the planner-NLL pass)
    precision: str  # what the forwards ran in: fp32 or bf16 (`auto` resolved)


def decode_dataset(
    denoiser: nn.Module,
    task: Task,
    tokens: torch.Tensor,
    fixed: torch.Tensor,
    target: torch.Tensor,
    order: Order,
    decode: DecodeConfig = DEFAULT_DECODE,
    *,
    generator: torch.Generator | None = None,
    on_batch: Callable[[int], None] | None = None,
    scorer: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> Decoded:
    """Decode every instance with `order` as `decode` says, verify it, and score the planner NLL if asked.

    Generator state carries across batches, so results depend on the batch
    size only through floating-point reduction order. `scorer` adds per-instance
    metrics of the decoded sequences (a protein family's oracle). The forwards run in
    `decode.precision` (the sampler itself reads fp32 logits either way).
    """
    device = next(denoiser.parameters()).device
    forwards = functools.partial(precision.autocast, decode.precision, device)
    seconds = 0.0
    parts: dict[str, list[torch.Tensor]] = {"solved": [], "acc": [], "nll": [], "step_of": []}
    metrics: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, tokens.shape[0], decode.batch_size):
        x, f, y = (a[lo : lo + decode.batch_size].to(device) for a in (tokens, fixed, target))
        start = time.perf_counter()
        with forwards():
            roll = unmask(
                denoiser,
                order,
                x,
                mask_id(task),
                k=decode.k,
                threshold=decode.threshold,
                token_temperature=decode.token_temperature,
                order_temperature=decode.order_temperature,
                generator=generator,
            )
        parts["solved"].append(task.solved(roll.tokens, x, f, y).cpu())
        seconds += time.perf_counter() - start
        scores = {**task.metrics(roll.tokens, x, f, roll.step_of), **(scorer(roll.tokens) if scorer else {})}
        scored = ~f & (y >= 0)
        accuracy = ((roll.tokens == y) & scored).sum(1) / scored.sum(1).clamp(min=1)
        if task.scored_by_recovery:  # amino-acid recovery, and how likely the model finds what it wrote
            scores["aar"] = accuracy
            scores["loglik"] = (roll.logp_token * ~f).sum(1) / (~f).sum(1).clamp(min=1)
        for name, value in scores.items():
            metrics.setdefault(name, []).append(value.cpu())
        parts["acc"].append(accuracy.cpu())
        parts["step_of"].append(roll.step_of.cpu())
        if decode.planner_nll:  # NaN where the reference is unknown
            nll = torch.full((x.shape[0],), float("nan"))
            known = ((y >= 0) | f).all(1)
            if known.any():
                with forwards():
                    forced = unmask(
                        denoiser,
                        order,
                        x[known],
                        mask_id(task),
                        k=decode.k,
                        threshold=decode.threshold,
                        target=y[known],
                        teacher_force=True,
                        order_temperature=decode.order_temperature,
                        generator=generator,
                    )
                nll[known.cpu()] = forced.planner_nll().cpu()
            parts["nll"].append(nll)
        if on_batch is not None:
            on_batch(x.shape[0])
    return Decoded(
        solved=torch.cat(parts["solved"]),
        cell_accuracy=torch.cat(parts["acc"]),
        planner_nll=torch.cat(parts["nll"]) if decode.planner_nll else None,
        step_of=torch.cat(parts["step_of"]),
        metrics={name: torch.cat(values) for name, values in metrics.items()},
        seconds=seconds,
        precision=precision.resolve(decode.precision, device),
    )


def teacher_forced_state(
    tokens: torch.Tensor, step_of: torch.Tensor, target: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    """The state of a teacher-forced rollout just before `step` (one per row).

    A rollout's `step_of` is all it takes to rebuild any of its states: the
    prompt plus the reference tokens revealed at earlier steps. Trajectories
    are therefore stored as (instances, step_of), not as every state.
    """
    revealed = (step_of >= 0) & (step_of < step[:, None])
    return torch.where(revealed, target, tokens)
