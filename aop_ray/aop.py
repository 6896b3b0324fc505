"""The AOP training step and its diagnostics, as pure torch (no Ray, no MLflow).

One step: training states x_t -> one denoiser forward -> the policy's scores
from that forward's outputs -> the AOP loss `sum_i pi(i|x_t) * cost_i`.
Policy-only training detaches the cost (the denoiser is frozen); joint
training lets it reach the denoiser, optionally adding `lambda * L_MDM` so the
denoiser keeps learning the positions the policy avoids.

States come from the forward process (`uniform`) or from teacher-forced
decoding trajectories of an order (`trajectory`): the states the policy will
actually meet when it decodes. Refreshing the trajectories with the current
policy is the DAgger / on-policy variant.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from aop_ray.config import REFERENCE_FREE, AopConfig
from aop_ray.losses import aop_loss, correctness_loss, mask_free_positions, pairwise_rank_loss, position_costs, sample_t
from aop_ray.orders import DecodeState, Order, select
from aop_ray.protein.potts import excess_energy
from aop_ray.sampling import teacher_forced_state, unmask


@dataclasses.dataclass
class Trajectories:
    """Teacher-forced rollouts: the instances, the step each position was revealed at, and its CE then.

    With `keep_logits`, also the denoiser's logits at every state the rollouts visited. A fixed pool is
    sampled many times over (1,500 steps of 64 states from 600 Sudoku trajectories of about 50 states each:
    every state three times), and a frozen denoiser's outputs at a state never change, so a policy step can
    read them instead of running the denoiser again; collecting already computed each of them once.
    """

    tokens: torch.Tensor  # (N, L) prompt + mask
    fixed: torch.Tensor
    target: torch.Tensor
    step_of: torch.Tensor  # (N, L)
    chosen_ce: torch.Tensor  # (N, L) -log p(reference) when the order revealed the position; 0 for prompt
    logits: torch.Tensor | None = None  # (S, L, V) at every state, in `all_states` order

    @classmethod
    def collect(
        cls,
        denoiser: nn.Module,
        order: Order,
        tokens: torch.Tensor,
        fixed: torch.Tensor,
        target: torch.Tensor,
        mask_id: int,
        batch_size: int = 256,
        keep_logits: bool = False,
        token_temperature: float = 0.0,
        generator: torch.Generator | None = None,
        argmax: bool = False,
    ) -> Trajectories:
        """Roll `order` out from `tokens`, revealing the reference (`target`), or with `token_temperature`
        > 0 the denoiser's own draws at that temperature (with `argmax`, its argmax): the states a sampler
        meets. Such a pool keeps its draws as its `target`, so `teacher_forced_state` rebuilds exactly those
        states; its `chosen_ce` is then each draw's own -log p."""
        parts = []
        sampled = token_temperature > 0 or argmax
        for lo in range(0, len(tokens), batch_size):
            recorder = _Recorder(denoiser) if keep_logits else None
            rollout = unmask(
                recorder or denoiser,
                order,
                tokens[lo : lo + batch_size],
                mask_id,
                target=None if sampled else target[lo : lo + batch_size],
                teacher_force=not sampled,
                token_temperature=token_temperature,
                generator=generator,
            )
            parts.append((rollout, recorder))
        if not parts:  # no instances: a worker's slice of a validation set smaller than the worker count
            return cls(tokens, fixed, target, torch.zeros_like(tokens), torch.zeros(tokens.shape, device=tokens.device))
        rollouts = [rollout for rollout, _ in parts]
        logits = None
        if keep_logits:
            logits = torch.cat([pool_order(r.step_of, rec.outputs) for r, rec in parts if rec is not None])
        return cls(
            tokens,
            fixed,
            torch.cat([r.tokens for r in rollouts]) if sampled else target,
            torch.cat([r.step_of for r in rollouts]),
            torch.cat([-(r.logp_token if sampled else r.logp_target) for r in rollouts]),  # type: ignore[operator]
            logits,
        )

    @staticmethod
    def concat(parts: list[Trajectories]) -> Trajectories:
        """One pool of `parts`, in order; it keeps logits only if every part has them."""
        logits = [p.logits for p in parts]
        joined = {
            f.name: torch.cat([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(Trajectories)
            if f.name != "logits"
        }
        return Trajectories(**joined, logits=None if any(x is None for x in logits) else torch.cat(logits))  # type: ignore[arg-type]

    def all_states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, x0) for every state of every trajectory, in order: a fixed evaluation set."""
        n_steps, first_state = state_offsets(self.step_of)
        rows = torch.repeat_interleave(torch.arange(len(self.tokens), device=n_steps.device), n_steps)
        first = torch.repeat_interleave(first_state, n_steps)  # each row's first state index
        step = torch.arange(len(rows), device=n_steps.device) - first
        return teacher_forced_state(self.tokens[rows], self.step_of[rows], self.target[rows], step), self.target[rows]

    def sample(
        self, batch: int, generator: torch.Generator, focus: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, x0, index) for random (instance, step) pairs, `index` the state's place in `all_states`.

        A `1 - focus` share of the batch is uniform over each instance's steps.
        The `focus` share is prioritised (as in prioritised replay) by the CE of
        the position the collecting order revealed at that state: a good order
        errs at a fraction of a percent of states, and only there does the AOP
        loss have a gradient worth following.
        """
        n_focus = int(round(focus * batch))
        rows = torch.randint(0, len(self.tokens), (batch - n_focus,), generator=generator)
        n_steps = self.step_of[rows].max(dim=1).values + 1
        step = (torch.rand(batch - n_focus, generator=generator) * n_steps.cpu()).long().to(rows.device)
        if n_focus:
            revealed = self.step_of >= 0
            by_step = torch.zeros_like(self.chosen_ce).scatter_add_(
                1, self.step_of.clamp(min=0), self.chosen_ce * revealed
            )
            flat = torch.multinomial(by_step.flatten().cpu() + 1e-12, n_focus, replacement=True, generator=generator)
            length = self.step_of.shape[1]
            rows = torch.cat([rows, (flat // length).to(rows.device)])
            step = torch.cat([step, (flat % length).to(rows.device)])
        rows, step = rows.to(self.tokens.device), step.to(self.tokens.device)
        state = teacher_forced_state(self.tokens[rows], self.step_of[rows], self.target[rows], step)
        return state, self.target[rows], state_offsets(self.step_of)[1][rows] + step


def state_offsets(step_of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) each instance's number of states (its steps) and (N,) the index of its step-0 state in the
    pool's instance-major order (`all_states`, the cached logits)."""
    n_steps = step_of.max(dim=1).values + 1
    return n_steps, n_steps.cumsum(0) - n_steps


class _Recorder(nn.Module):
    """The denoiser, keeping the float logits of every forward it runs (`Trajectories.collect`)."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.outputs: list[torch.Tensor] = []

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False) -> Any:
        out = self.denoiser(tokens, return_hidden=True) if return_hidden else self.denoiser(tokens)
        self.outputs.append((out[0] if return_hidden else out).detach().float())
        return out


def pool_order(step_of: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    """(S, L, V) a one-position-per-step rollout's forwards in `all_states` order (instance-major).

    Forward s ran on the instances still decoding at step s (those with more than s free positions),
    in instance order, so its row r is the state (instance r of them, step s)."""
    n_steps, first = state_offsets(step_of)
    pooled = outputs[0].new_empty(int(n_steps.sum()), *outputs[0].shape[1:])
    for step, logits in enumerate(outputs):
        pooled[first[(n_steps > step).nonzero().squeeze(1)] + step] = logits
    return pooled


def uniform_states(x0: torch.Tensor, fixed: torch.Tensor, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """Forward-process states: t ~ U(0, 1), each free position masked with probability t."""
    return mask_free_positions(x0, fixed, sample_t(len(x0), generator, x0.device), mask_id, generator)[0]


def policy_objective(
    scores: torch.Tensor,
    masked: torch.Tensor,
    cost: torch.Tensor,
    cfg: AopConfig,
    shortlist: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`cfg.objective` on the policy's scores, and the expectation's stats whatever the objective
    (the curves remain comparable). `shortlist`: the base order's scores, which `pairwise` ranks the top of."""
    loss, stats = aop_loss(scores, masked, cost, cfg.policy_temperature, cfg.entropy_beta)
    if cfg.objective == "pairwise":
        if shortlist is None:
            raise ValueError("aop.objective pairwise needs the shortlist order (the policy's base heuristic)")
        loss = pairwise_rank_loss(scores, masked, cost, shortlist, cfg.pairwise_k)
    elif cfg.objective == "correctness":
        loss = correctness_loss(scores, masked, cost)
    return loss, stats


# A cost that needs no reference: (x_t, the denoiser's logits there) -> (B, L). Targets `dead_end` (the
# task's solver) and `energy` (a family's Potts model) are built from one by the training shell.
FreeCost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def free_cost(
    target: str,
    task: Any,
    mask_id: int,
    potts: tuple[torch.Tensor, torch.Tensor] | None = None,
    temperature: float = 0.0,
) -> FreeCost | None:
    """The cost function of a reference-free `target`: `dead_end` asks the task's solver about the
    denoiser's argmax; `energy` scores its draw at `temperature` under the Potts model (h, J)
    (`protein.potts.excess_energy`). None for the reference targets."""
    if target == "dead_end":
        return lambda xt, logits: task.dead_ends(xt, logits.argmax(-1))
    if target == "energy":
        if potts is None:
            raise ValueError("aop.target energy needs a Potts model (aop.energy_model)")
        h, J = potts  # on the states' device already: this runs at every training step
        return lambda xt, logits: excess_energy(h, J, xt, logits, mask_id, temperature)
    return None


def state_costs(
    xt: torch.Tensor, logits: torch.Tensor, x0: torch.Tensor, target: str, free_cost: FreeCost | None = None
) -> torch.Tensor:
    """(B, L) the cost of revealing each position of `xt` now: `losses.position_costs` against the
    reference `x0`, or for the reference-free targets (`REFERENCE_FREE`) `free_cost`."""
    if target not in REFERENCE_FREE:
        return position_costs(logits, x0, target)  # type: ignore[arg-type]
    if free_cost is None:
        raise ValueError(f"aop.target {target} needs its cost function (the task's solver or a Potts model)")
    return free_cost(xt, logits).float()


def aop_step(
    denoiser: nn.Module,
    policy: nn.Module,
    xt: torch.Tensor,
    x0: torch.Tensor,
    mask_id: int,
    cfg: AopConfig,
    joint: bool,
    shortlist: Order | None = None,
    logits: torch.Tensor | None = None,
    free_cost: FreeCost | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AOP loss on states `xt` (plus the MDM term in joint training, if `cfg.mdm_lambda`).

    `logits`: the frozen denoiser's outputs at `xt`, when the caller has them (`Trajectories.denoised`);
    the step then runs no denoiser forward. Policies that read the hidden state cannot use them.
    `free_cost`: the cost of a reference-free target (`dead_end`, `energy`).

    With `objective: pairwise` the loss ranks the `k` best positions by the
    `shortlist` order (the policy's base heuristic) instead (`losses.pairwise_rank_loss`);
    with `objective: correctness` it fits every masked position's score as the logit
    that the denoiser is right there (`losses.correctness_loss`).
    """
    masked = xt == mask_id
    hidden: torch.Tensor | None = None
    if logits is None:
        with torch.set_grad_enabled(joint and torch.is_grad_enabled()):
            logits, hidden = denoiser(xt, return_hidden=True)
        hidden = hidden.detach()
    elif joint:
        raise ValueError("aop_step: cached logits are a frozen denoiser's; joint training needs the forward")
    state = DecodeState(tokens=xt, masked=masked, logits=logits.detach().float(), hidden=hidden, step=0)
    cost = state_costs(xt, logits, x0, cfg.target, free_cost)
    ranked = shortlist(state) if cfg.objective == "pairwise" and shortlist is not None else None
    return policy_objective(policy(state), masked, cost if joint else cost.detach(), cfg, ranked)


def chosen_costs(
    orders: dict[str, Order],
    denoiser: nn.Module,
    xt: torch.Tensor,
    x0: torch.Tensor | None,
    mask_id: int,
    batch_size: int = 512,
    free_costs: dict[str, FreeCost] | None = None,
) -> dict[str, dict[str, float]]:
    """For each order: the mean cost of the position it would reveal at each state: error and CE against
    the reference `x0` (None: states with no reference, such as sampled ones), and each of `free_costs`
    (e.g. {"dead_end": ...}).

    The validation diagnostic of policy training: a policy that helps should
    pick positions the denoiser gets right more often than the heuristics do.
    `random` is always included, as its exact expectation (the mean over masked positions).
    """
    live = (xt == mask_id).any(dim=1)
    xt = xt[live]
    x0 = None if x0 is None else x0[live]
    free_costs = free_costs or {}
    kinds = [*(["error", "ce"] if x0 is not None else []), *free_costs]
    sums = {name: dict.fromkeys(kinds, 0.0) for name in ["random", *orders]}
    with torch.no_grad():
        for lo in range(0, len(xt), batch_size):
            x = xt[lo : lo + batch_size]
            masked = x == mask_id
            logits, hidden = denoiser(x, return_hidden=True)
            state = DecodeState(tokens=x, masked=masked, logits=logits.float(), hidden=hidden, step=0)
            costs = {kind: fn(x, logits).float() for kind, fn in free_costs.items()}
            if x0 is not None:
                y = x0[lo : lo + batch_size]
                costs.update(ce=position_costs(logits, y, "ce"), error=position_costs(logits, y, "error"))
            for kind, cost in costs.items():
                sums["random"][kind] += ((cost * masked).sum(1) / masked.sum(1)).sum().item()
            for name, order in orders.items():
                pos, _ = select(order(state), masked, 1)
                for kind, cost in costs.items():
                    sums[name][kind] += torch.gather(cost, 1, pos).sum().item()
    return {name: {kind: value / max(len(xt), 1) for kind, value in s.items()} for name, s in sums.items()}
