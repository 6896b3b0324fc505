"""Bidirectional transformer denoiser for masked diffusion.

No time input: for masked diffusion the number of masks already tells the
noise level (MDLM/MD4 use a time-independent denoiser too). The trunk
(`transformer.StructuredTransformer`) gives it the task's geometry.
"""

from __future__ import annotations

import torch
from torch import nn

from aop_ray.config import ModelConfig
from aop_ray.models.transformer import StructuredTransformer


class Denoiser(StructuredTransformer):
    """p_theta(x0_i | x_t) for every position i, as logits over the task's tokens."""

    def __init__(self, vocab_size: int, position_groups: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
        super().__init__(position_groups, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ff_mult, cfg.dropout,
                         cfg.relation_bias)
        self.vocab_size = vocab_size
        self.tok = nn.Embedding(vocab_size + 1, cfg.d_model)  # + mask token
        self.head = nn.Linear(cfg.d_model, vocab_size)
        self.apply(self._init)

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, L, V); with `return_hidden`, also the final hidden states (B, L, D)."""
        hidden = self.encode(self.tok(tokens))
        logits = self.head(hidden)
        return (logits, hidden) if return_hidden else logits
