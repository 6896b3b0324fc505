"""Bidirectional transformer denoiser for masked diffusion.

No time input: for masked diffusion the number of masks already tells the
noise level (MDLM/MD4 use a time-independent denoiser too). The trunk
(`transformer.StructuredTransformer`) gives it the task's geometry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aop_ray.config import ModelConfig
from aop_ray.errors import InputError
from aop_ray.models.transformer import StructuredTransformer
from aop_ray.tasks import SizeFreeForm, Task, TokenStructure


class Denoiser(StructuredTransformer):
    """p_theta(x0_i | x_t) for every position i, as logits over the task's tokens."""

    def __init__(
        self,
        vocab_size: int,
        position_groups: dict[str, Any],
        cfg: ModelConfig,
        prompt_vocab_size: int = 0,
        structure: TokenStructure | None = None,
        size_free: SizeFreeForm | None = None,
    ) -> None:
        """`size_free`: the task's size-free form, which `cfg.size_free` asks for (`for_task` passes it)."""
        super().__init__(
            position_groups,
            cfg.d_model,
            cfg.n_layers,
            cfg.n_heads,
            cfg.ff_mult,
            cfg.dropout,
            cfg.relation_bias,
            structure,
            size_free.embedded if size_free else None,
        )
        self.vocab_size = vocab_size
        self.alphabet = size_free.tokens if size_free else None  # a function of the tokens, not a weight
        n_tokens = size_free.n_tokens if size_free else vocab_size + 1 + prompt_vocab_size  # + mask + prompt-only
        self.tok = nn.Embedding(n_tokens, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size)
        self.apply(self._init)

    @classmethod
    def for_task(cls, task: Task, cfg: ModelConfig) -> Denoiser:
        size_free = task.size_free_form() if cfg.size_free else None
        if cfg.size_free and size_free is None:
            raise InputError(f"model.size_free: task {task.name} has no size-free form (only sat has)")
        return cls(
            task.vocab_size, task.position_groups(), cfg, task.prompt_vocab_size, task.token_structure(), size_free
        )

    def forward(
        self, tokens: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, L, V); with `return_hidden`, also the final hidden states (B, L, D)."""
        hidden = self.encode(self.tok(self.alphabet(tokens) if self.alphabet else tokens), tokens)
        logits = self.head(hidden)
        return (logits, hidden) if return_hidden else logits


def build_denoiser(task: Task, cfg: ModelConfig) -> nn.Module:
    """The denoiser `cfg` describes, randomly initialised: this project's transformer, or the architecture
    of a pretrained masked LM (its weights are loaded by the caller)."""
    if cfg.pretrained is not None:
        from aop_ray.models import pretrained

        return pretrained.build(task, cfg.pretrained)
    return Denoiser.for_task(task, cfg)


def frozen_pretrained(cfg: ModelConfig, stage: str) -> bool:
    """A pretrained denoiser the stage does not train: checkpoints point at its weights instead of copying them."""
    return cfg.pretrained is not None and stage in ("policy", "grpo")
