"""What every task gives the rest of aop-ray.

A task turns a problem family into fixed-length token sequences: a prompt part
that is never masked (Sudoku clues, SAT clauses) and free positions that the
denoiser fills in. Everything above this layer (losses, orders, the sampler,
training, evaluation) sees only `Instances` and the `Task` protocol, so a new
domain is one file in this package.

Token ids run 0..vocab_size-1 (what the denoiser predicts); the mask token is
`vocab_size`; a task may add `prompt_vocab_size` prompt-only tokens after it
(SAT literals), which the denoiser reads but never outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from aop_ray.errors import InputError


@dataclasses.dataclass
class Instances:
    """A set of problem instances as token arrays.

    `target` is the reference completion; rows whose reference is unknown hold
    -1 everywhere. `fixed` marks prompt positions (never masked, never picked).
    """

    tokens: np.ndarray  # (N, L) int64, mask id at free positions
    fixed: np.ndarray  # (N, L) bool
    target: np.ndarray  # (N, L) int64, -1 where unknown
    ids: list[str]
    meta: list[dict[str, Any]]

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("tokens", "fixed", "target"):
            arr = getattr(self, name)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"Instances.{name} has shape {arr.shape}, expected ({n}, L)")
        if len(self.meta) != n:
            raise ValueError(f"Instances.meta has {len(self.meta)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray | slice | list[int]) -> Instances:
        idx = np.arange(len(self))[index]
        return Instances(
            tokens=self.tokens[idx],
            fixed=self.fixed[idx],
            target=self.target[idx],
            ids=[self.ids[i] for i in idx],
            meta=[self.meta[i] for i in idx],
        )

    @staticmethod
    def concat(parts: list[Instances]) -> Instances:
        if not parts:
            raise ValueError("cannot concatenate zero Instances")
        return Instances(
            tokens=np.concatenate([p.tokens for p in parts]),
            fixed=np.concatenate([p.fixed for p in parts]),
            target=np.concatenate([p.target for p in parts]),
            ids=[i for p in parts for i in p.ids],
            meta=[m for p in parts for m in p.meta],
        )


@dataclasses.dataclass(frozen=True)
class TokenStructure:
    """Structure that differs per instance, derived from the tokens, for the models' trunk.

    `relations` gives attention a bias per pair kind (0: unrelated), `states` an
    embedding per position (e.g. "this literal is currently false"): deterministic
    functions of x_t, so they are part of the architecture, not extra inputs.
    """

    relations: Callable[[torch.Tensor], torch.Tensor]  # (B, L) tokens -> (B, L, L) ids in [0, n_relations)
    n_relations: int
    states: Callable[[torch.Tensor], torch.Tensor]  # (B, L) tokens -> (B, L) ids in [0, n_states)
    n_states: int


@dataclasses.dataclass(frozen=True)
class SizeFreeForm:
    """How a denoiser reads a task without any weight tied to the task's size (`model.size_free`).

    A SAT literal token names its variable's number, and the `clause` and `var` position groups number
    clauses and variables: embedding those ties the weights to 20 variables, and to one numbering of
    interchangeable variables. In the size-free form a literal token is read as its sign alone, only the
    `embedded` groups get embeddings, and which literal names which variable reaches attention through
    the token relations. The other groups still give the static relation bias ("same clause"), whose size
    does not depend on the task's. So one set of weights runs on formulas of any size.
    """

    tokens: Callable[[torch.Tensor], torch.Tensor]  # (B, L) tokens -> (B, L) ids in [0, n_tokens)
    n_tokens: int
    embedded: tuple[str, ...]  # the position groups that get embeddings


class TaskHooks:
    """The optional parts of a task, with their defaults: every task class inherits this, so code calls the
    hooks directly instead of probing for them."""

    # Task-specific policy features the config may name in `policy.task_features` (none by default).
    feature_names: ClassVar[tuple[str, ...]] = ()
    # Scored by recovering a native reference (antibody CDR-H3): results also carry `aar` (recovery) and
    # `loglik` (the denoiser's mean log-probability of what it wrote).
    scored_by_recovery: ClassVar[bool] = False

    def policy_features(self, tokens: torch.Tensor, probs: torch.Tensor, names: list[str]) -> torch.Tensor:
        """(B, L, len(names)) the named task features; only called with names from `feature_names`."""
        raise InputError(f"policy.task_features: this task has no policy features (asked for {', '.join(names)})")

    def rule_orders(self) -> dict[str, Callable[[Any], torch.Tensor]]:
        """Orders written from the task's rules (Sudoku: `singles`, SAT: `unit`), by name; none by default."""
        return {}

    def model_tokens(self) -> list[str] | None:
        """The output tokens as a pretrained model's vocabulary spells them (amino acids: "A", "C", ...),
        so a Hugging Face masked LM can be the denoiser; None: the task has no text form."""
        return None

    def size_free_form(self) -> SizeFreeForm | None:
        """How a size-free denoiser reads this task (`model.size_free`); None: the task has no such form."""
        return None

    def padding_token(self) -> int | None:
        """A prompt-only token meaning "no position here" (trailing, for sequences shorter than the task),
        which a pretrained model's adapter attention-masks; None: every position is real."""
        return None

    # Whether `dead_ends` is implemented: the task has a solver (SAT), so `aop.target: dead_end` can use it.
    has_dead_ends: ClassVar[bool] = False

    def dead_ends(self, tokens: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: True at each masked position where revealing `proposal` there leaves the instance
        with no solution that keeps the tokens already revealed. The failure event of a decoder on a task
        with many solutions, where differing from one reference solution is not an error."""
        raise InputError("aop.target: dead_end needs a task with a solver (sat)")

    def solved(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """(B,) what `solve_rate` counts: `verify` by default; exact recovery of the reference for a task
        that has no verifier of its own (antibody CDR-H3)."""
        return self.verify(tokens, prompt, fixed)  # type: ignore[attr-defined]


class Task(Protocol):
    """The protocol every task implements (see `sudoku.Sudoku`).

    Tasks are frozen dataclasses: their fields are the task's parameters, which
    the YAML config sets and the checkpoint records, so a checkpoint for another
    task or size is refused field by field.
    """

    name: ClassVar[str]
    # False: `verify` accepts any completion (proteins), so it cannot reward an order (stage grpo)
    has_verifier: ClassVar[bool]

    @property
    def seq_len(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def prompt_vocab_size(self) -> int:
        """Tokens that only occur in the prompt, ids vocab_size+1 onwards (0 for most tasks)."""
        ...

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """How positions lay out for heat maps, e.g. (9, 9); (L,) for plain sequences."""
        ...

    def position_groups(self) -> dict[str, np.ndarray]:
        """Categorical structure ids per position, e.g. row/column/box.

        The denoiser and the policy embed each group and sum the embeddings:
        this is how a task tells the models its geometry.
        """
        ...

    def token_structure(self) -> TokenStructure | None:
        """Per-instance structure read off the tokens (SAT's formula graph); None when the
        position groups say it all (Sudoku)."""
        ...

    def read(self, path: Path) -> Instances:
        """Parse one file in any of the task's text formats."""
        ...

    def generate(self, n: int, seed: int, **options: Any) -> Instances: ...

    def verify(self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the completed sequences are correct and keep the prompt."""
        ...

    def metrics(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, step_of: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Task-specific (B,) scores of decoded sequences beyond solved/not (SAT: clauses satisfied,
        and how often the order took a unit-forced variable, replayed from `step_of`); NaN = not defined."""
        ...

    def augment(
        self, tokens: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random symmetry of the task applied to a batch (identity if none)."""
        ...

    def render(self, tokens: np.ndarray) -> str: ...

    # The optional hooks (defaults in `TaskHooks`, which every task inherits).
    feature_names: ClassVar[tuple[str, ...]]
    scored_by_recovery: ClassVar[bool]

    def policy_features(self, tokens: torch.Tensor, probs: torch.Tensor, names: list[str]) -> torch.Tensor: ...

    def rule_orders(self) -> dict[str, Callable[[Any], torch.Tensor]]: ...

    has_dead_ends: ClassVar[bool]

    def dead_ends(self, tokens: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor: ...

    def model_tokens(self) -> list[str] | None: ...

    def size_free_form(self) -> SizeFreeForm | None: ...

    def padding_token(self) -> int | None: ...

    def solved(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor: ...


def mask_id(task: Task) -> int:
    """The mask token's id: the first id after the output tokens (named, so callers say what they pass)."""
    return task.vocab_size


def input_vocab_size(task: Task) -> int:
    """Token ids a sequence may hold: outputs, the mask, prompt-only tokens."""
    return task.vocab_size + 1 + task.prompt_vocab_size


def task_params(task: Task) -> dict[str, Any]:
    """The task as a JSON-able dict: its name plus its dataclass fields."""
    return {"name": task.name, **dataclasses.asdict(task)}  # type: ignore[call-overload]
