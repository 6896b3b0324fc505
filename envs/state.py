"""The unmasking process over a frozen denoiser, for a batch of boards at once.

Both Gymnasium environments are thin shells around `UnmaskBatch`: the single env is a
batch of one, the vector env a batch of `num_envs`. Sharing the state machine is what
keeps their semantics identical, and batching is what makes the vector env fast: every
step is exactly one denoiser forward over all boards, whose logits both fill the chosen
cells *and* give the next observation's features (the sampler's one-forward-per-step
floor, as in `aop_ray.sampling.unmask`).

No Gymnasium here: plain torch and numpy, so the state machine is testable on its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
from torch import nn

from aop_ray.errors import InputError
from aop_ray.orders import DecodeState, confidence, margin, neg_entropy
from aop_ray.precision import autocast
from aop_ray.tasks import Instances, Task, mask_id

FEATURES = ("confidence", "margin", "entropy")  # columns of obs["features"]
DENSE_REWARDS = ("none", "logp", "correct")


class IllegalAction(ValueError):
    """An action that names a position that is not masked (a clue, or already revealed)."""


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """What an episode pays.

    The terminal reward is the task's verifier: 1 when the completed board is valid and
    keeps its clues, else 0. `dense` adds, at every step, `dense_weight` times the
    log-probability of the revealed token (`logp`) or 1 when it equals the reference
    solution (`correct`; 0 where the reference is unknown).

    An action on a position that is not masked either pays `illegal_penalty` and leaves
    the board unchanged (`penalty`, the default: RL libraries sample from the whole action
    space, and Gymnasium's checker does too) or raises `IllegalAction` (`error`: for agents
    that must never make one). Under `penalty` an episode is truncated after
    `2 * L` steps, which only illegal actions can reach.
    """

    dense: Literal["none", "logp", "correct"] = "none"
    dense_weight: float = 0.1
    illegal: Literal["error", "penalty"] = "penalty"
    illegal_penalty: float = -1.0

    def __post_init__(self) -> None:
        if self.dense not in DENSE_REWARDS:
            raise InputError(f"dense_reward: must be one of {', '.join(DENSE_REWARDS)}, got {self.dense!r}")
        if self.illegal not in ("error", "penalty"):
            raise InputError(f"illegal_action: must be 'error' or 'penalty', got {self.illegal!r}")


def feature_bounds(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column bounds of obs["features"], with slack for float32 round-off (softmax can exceed 1 by an ulp)."""
    low = np.full(len(FEATURES), -1e-3, dtype=np.float32)
    high = np.array([1.0, 1.0, math.log(vocab_size)], dtype=np.float32) + 1e-3
    return low, high


@dataclasses.dataclass
class Outcome:
    """One step's result for each board that acted."""

    reward: np.ndarray  # float64
    terminated: np.ndarray  # bool: nothing left to unmask
    truncated: np.ndarray  # bool: the step limit, reachable only through illegal actions
    solved: np.ndarray  # bool: the verifier's verdict, on terminated boards
    illegal: np.ndarray  # bool: the action was refused (penalty mode)


class UnmaskBatch:
    """`n` boards being unmasked by one frozen denoiser."""

    def __init__(
        self,
        denoiser: nn.Module,
        task: Task,
        instances: Instances,
        n: int,
        reward: RewardConfig,
        precision: str = "auto",
    ) -> None:
        """The boards live on the CPU (observations are numpy arrays); only the forward runs where the
        denoiser is: a step moves n*L token ids there and n*L*V logits back."""
        if len(instances) == 0:
            raise InputError("the environment's data holds no instances")
        self.denoiser, self.task, self.instances, self.reward = denoiser, task, instances, reward
        self.device = next(denoiser.parameters()).device
        self.precision = precision
        self.mask_id = mask_id(task)
        length = task.seq_len
        self.tokens = torch.full((n, length), self.mask_id, dtype=torch.long)
        self.prompt = self.tokens.clone()
        self.fixed = torch.zeros(n, length, dtype=torch.bool)
        self.target = torch.full((n, length), -1, dtype=torch.long)
        self.index = np.zeros(n, dtype=np.int64)  # which instance each board holds
        self.steps = np.zeros(n, dtype=np.int64)  # steps taken in the current episode
        self.max_steps = 2 * length
        self.logits = torch.zeros(n, length, task.vocab_size)
        self.features = torch.zeros(n, length, len(FEATURES))

    @property
    def masked(self) -> torch.Tensor:
        return self.tokens == self.mask_id

    def load(self, rows: np.ndarray, index: np.ndarray) -> None:
        """Start boards `rows` on instances `index` (no forward: call `refresh` once all rows are set)."""
        self.index[rows] = index
        self.steps[rows] = 0
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        for name, source in (("tokens", "tokens"), ("prompt", "tokens"), ("fixed", "fixed"), ("target", "target")):
            getattr(self, name)[rows_t] = torch.as_tensor(getattr(self.instances, source)[index])

    @torch.no_grad()
    def refresh(self) -> None:
        """The one denoiser forward per step: logits for filling cells, features for the observation."""
        with autocast(self.precision, self.device):
            self.logits = self.denoiser(self.tokens.to(self.device)).float().cpu()
        state = DecodeState(tokens=self.tokens, masked=self.masked, logits=self.logits, hidden=None, step=0)
        self.features = torch.stack([confidence(state), margin(state), -neg_entropy(state)], dim=-1)

    def observe(self, rows: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
        """Fresh arrays (never views of the state), as Gymnasium's checker requires."""
        return {
            "tokens": self.tokens[rows].numpy().copy(),
            "action_mask": self.masked[rows].numpy().astype(np.int8),
            "features": self.features[rows].numpy().astype(np.float32, copy=True),
        }

    def check(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Which of the actions are legal; raises `IllegalAction` for an illegal one under `illegal: error`."""
        inside = (positions >= 0) & (positions < self.tokens.shape[1])
        if not inside.all():
            bad = int(positions[~inside][0])
            raise IllegalAction(f"action {bad} is outside Discrete({self.tokens.shape[1]})")
        legal = self.masked[torch.as_tensor(rows), torch.as_tensor(positions)].numpy()
        if not legal.all() and self.reward.illegal == "error":
            row, pos = int(rows[~legal][0]), int(positions[~legal][0])
            kind = "a clue" if self.fixed[row, pos] else "already revealed"
            raise IllegalAction(
                f"action {pos} (board {row}, instance {self.instances.ids[self.index[row]]}) "
                f"is not a masked position: it is {kind}; legal actions are obs['action_mask']"
            )
        return legal

    def reveal(
        self,
        rows: np.ndarray,
        positions: np.ndarray,
        token_temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Outcome:
        """Fill one position per board in `rows` from the current logits.

        Illegal actions (under `illegal: penalty`) change nothing and pay the penalty.
        """
        legal = self.check(rows, positions)
        reward = np.where(legal, 0.0, self.reward.illegal_penalty)
        r = torch.as_tensor(rows[legal], dtype=torch.long)
        p = torch.as_tensor(positions[legal], dtype=torch.long)
        logp = self.logits[r, p].log_softmax(-1)  # (A, V)
        if token_temperature > 0:
            new = torch.multinomial((logp / token_temperature).softmax(-1), 1, generator=generator).squeeze(1)
        else:
            new = logp.argmax(-1)
        self.tokens[r, p] = new
        if self.reward.dense == "logp":
            reward[legal] += self.reward.dense_weight * logp.gather(1, new[:, None]).squeeze(1).numpy()
        elif self.reward.dense == "correct":
            reward[legal] += self.reward.dense_weight * (new == self.target[r, p]).float().numpy()
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        self.steps[rows] += 1
        terminated = ~self.masked[rows_t].any(dim=1).numpy()
        solved = np.zeros(len(rows), dtype=bool)
        if terminated.any():
            done = rows_t[torch.as_tensor(terminated)]
            solved[terminated] = self.task.solved(
                self.tokens[done], self.prompt[done], self.fixed[done], self.target[done]
            ).numpy()
        return Outcome(
            reward=reward + solved,
            terminated=terminated,
            truncated=~terminated & (self.steps[rows] >= self.max_steps),
            solved=solved,
            illegal=~legal,
        )
