"""aop-ray's orders as agents on `aop/Unmask-v0`: `OrderAgent(name).act(obs) -> action`.

An agent sees only the observation. The confidence, margin and entropy heuristics read
`obs["features"]`; `random` draws its own uniform scores; orders that need the denoiser's
full output (`learned`, and task rules such as Sudoku's `singles`) run the checkpoint's
denoiser on `obs["tokens"]`. Positions are then chosen by `aop_ray.orders.select`, the
same function the sampler uses, so an agent on the environment makes exactly the choices
`aop_ray.evaluate` makes (a test checks that their solve rates agree).

`act` takes a single observation or a batch from the vector env and answers in kind. A
finished board in a batch (waiting for the vector env's next-step autoreset, which ignores
its action) gets action 0.
"""

from __future__ import annotations

import numpy as np
import torch

from aop_ray import checkpoints
from aop_ray.errors import InputError
from aop_ray.orders import DecodeState, Order, get_order, order_names, random_order, select

FEATURE_ORDERS = {"confidence": (0, 1.0), "margin": (1, 1.0), "entropy": (2, -1.0)}  # column, sign


class OrderAgent:
    """Greedy in the order's scores (or sampled at `order_temperature`), over legal positions only."""

    def __init__(
        self, order: str, checkpoint: str | None = None, seed: int = 0, order_temperature: float = 0.0
    ) -> None:
        self.name = order
        self.order_temperature = order_temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.denoiser = None
        self.order: Order | None = None
        if order in FEATURE_ORDERS or order == "random":
            return
        if checkpoint is None:
            raise InputError(f"agent {order!r} needs a checkpoint (the denoiser, or for 'learned' a policy)")
        self.denoiser, task, manifest = checkpoints.load_denoiser(checkpoint)
        if order not in order_names(task):
            raise InputError(f"agent: unknown order {order!r} (known: {', '.join(order_names(task))})")
        policy = checkpoints.load_policy(checkpoint, task, manifest["model"]) if order == "learned" else None
        self.order = get_order(order, policy=policy, task=task)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> int | np.ndarray:
        single = np.ndim(obs["action_mask"]) == 1
        masked = torch.as_tensor(np.atleast_2d(obs["action_mask"])).bool()
        finished = ~masked.any(dim=1)
        if single and finished.item():
            raise InputError("agent: the observation has no legal action (the episode is over: reset first)")
        scores = self.scores(obs, masked)
        positions, _ = select(scores, masked, 1, self.order_temperature, self.generator)
        action = positions[:, 0].masked_fill(finished, 0).numpy()
        return int(action[0]) if single else action

    def scores(self, obs: dict[str, np.ndarray], masked: torch.Tensor) -> torch.Tensor:
        if self.name in FEATURE_ORDERS:
            column, sign = FEATURE_ORDERS[self.name]
            return sign * torch.as_tensor(obs["features"]).reshape(*masked.shape, -1)[..., column]
        tokens = torch.as_tensor(np.atleast_2d(obs["tokens"]), dtype=torch.long)
        if self.name == "random":
            return random_order(DecodeState(tokens, masked, torch.empty(0), None, 0, self.generator))
        needs_hidden = getattr(self.order, "needs_hidden", False)
        out = self.denoiser(tokens, return_hidden=True) if needs_hidden else self.denoiser(tokens)
        logits, hidden = out if needs_hidden else (out, None)
        return self.order(DecodeState(tokens, masked, logits.float(), hidden, 0, self.generator))
