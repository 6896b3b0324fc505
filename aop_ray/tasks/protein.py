"""Protein families: one aligned family, one position per match column, residues sampled by the denoiser.

Tokens are `aop_ray.protein.alignment.ALPHABET` (20 amino acids, then the gap: 21 ids; the
mask is 21). Every position is free: generation starts from a fully masked row.

There is no verifier of a protein, so `verify` only checks that a sequence is
complete and `solve_rate` is 1 for every order: it says nothing. What says
something are the family oracle's metrics (`aop_ray.protein.oracle`: Potts energy, HMM
bits, novelty, diversity), which `evaluate --oracle DIR` adds to every row.

`generate` samples a *synthetic* family: a small random Potts model fixed by
(`length`, `family`), for tests and smoke runs. Real families are read from
their alignment (`read`).
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from aop_ray.errors import InputError, located
from aop_ray.protein.alignment import ALPHABET, Alignment, decode, read_alignment
from aop_ray.tasks.base import Instances, TaskHooks

MASK = len(ALPHABET)


@dataclasses.dataclass(frozen=True)
class Protein(TaskHooks):
    """An aligned family of `length` match columns; `family` labels it (checkpoints refuse another)."""

    name: ClassVar[str] = "protein"
    has_verifier: ClassVar[bool] = False
    length: int = 53
    family: str = "synthetic"

    def __post_init__(self) -> None:
        if self.length < 2:
            raise InputError(f"task.length: need at least 2 alignment columns, got {self.length}")

    @property
    def seq_len(self) -> int:
        return self.length

    @property
    def vocab_size(self) -> int:
        return len(ALPHABET)

    @property
    def prompt_vocab_size(self) -> int:
        return 0

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.length,)

    def position_groups(self) -> dict[str, np.ndarray]:
        return {"column": np.arange(self.length)}

    def token_structure(self) -> None:
        return None

    def _instances(self, seqs: np.ndarray, ids: list[str], metas: list[dict[str, Any]]) -> Instances:
        seqs = np.asarray(seqs, dtype=np.int64)
        return Instances(
            tokens=np.full_like(seqs, MASK), fixed=np.zeros(seqs.shape, dtype=bool), target=seqs, ids=ids, meta=metas
        )

    def read(self, path: Path) -> Instances:
        """An aligned FASTA or A2M file of this family (see `aop_ray.protein.alignment.read_alignment`)."""
        return self.from_alignment(read_alignment(path), path)

    def from_alignment(self, alignment: Alignment, path: Path) -> Instances:
        """The rows of an alignment already read from `path` (named in errors and metadata)."""
        if alignment.seqs.shape[1] != self.length:
            raise located(
                path,
                alignment.lines[0],
                f"alignment has {alignment.seqs.shape[1]} match columns; "
                f"this protein task holds task.length={self.length}",
            )
        metas = [{"source": Path(path).name, "line": line} for line in alignment.lines]
        return self._instances(alignment.seqs, alignment.names, metas)

    def synthetic_family(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, J) of the random Potts model behind `generate`, fixed by the task's fields.

        Six residues carry the family (the rest are strongly disfavoured), with
        fields and couplings strong enough that positions depend on each other:
        the order in which they are revealed then matters, as in a real family.
        """
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.family}/{self.length}".encode()))
        q, length, used = len(ALPHABET), self.length, 6
        h = torch.full((length, q), -6.0, dtype=torch.float64)
        h[:, :used] = torch.randn(length, used, generator=g, dtype=torch.float64)
        J = torch.zeros(length, length, q, q, dtype=torch.float64)
        block = torch.randn(length, length, used, used, generator=g, dtype=torch.float64) * 0.8
        block = (block + block.permute(1, 0, 3, 2)) / 2
        J[:, :, :used, :used] = block * (1 - torch.eye(length, dtype=torch.float64))[:, :, None, None]
        return h, J

    def generate(self, n: int, seed: int, start: int = 0, sweeps: int = 30) -> Instances:
        """Sequences `start..start+n-1` of the synthetic family; sequence `j` depends only on (seed, j)."""
        from aop_ray.protein.potts import sample_potts

        h, J = self.synthetic_family()
        seqs = [
            sample_potts(h, J, 1, sweeps, seed=zlib.crc32(f"{seed}/{j}".encode()))[0] for j in range(start, start + n)
        ]
        ids = [f"{self.family}{self.length}-{seed}-{j}" for j in range(start, start + n)]
        return self._instances(np.array(seqs).reshape(n, self.length), ids, [{"seed": seed}] * n)

    def verify(self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Complete (no mask left): there is no notion of a correct protein here; see the oracle."""
        return (tokens < MASK).all(1)

    def metrics(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, step_of: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {}  # the family oracle scores proteins (evaluate --oracle)

    def augment(
        self, tokens: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tokens, fixed, target  # alignment columns have no symmetry

    def render(self, tokens: np.ndarray) -> str:
        tokens = np.asarray(tokens)
        text = "".join("_" if t == MASK else decode(np.array([t])) for t in tokens.tolist())
        return "\n".join(text[i : i + 60] for i in range(0, len(text), 60))
