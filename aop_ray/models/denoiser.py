"""Bidirectional transformer denoiser for masked diffusion.

Positions are embedded through the task's structure groups (row, column and
box for Sudoku) rather than a flat position index: attention then sees which
cells share a constraint, which is most of what Sudoku needs. No time input:
for masked diffusion the number of masks already tells the noise level
(MDLM/MD4 use a time-independent denoiser too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aop_ray.config import ModelConfig


def relation_ids(position_groups: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(L, L) id of which structure groups two positions share, and the number of ids.

    For Sudoku (row, col, box) there are 8 relations: none, same row, same
    column, same box, row+box, ... and "same cell". A learned bias per head
    and relation lets attention find a position's constraint peers at once
    instead of learning it from the summed position embeddings.
    """
    ids = torch.zeros(0)
    for bit, name in enumerate(sorted(position_groups)):
        g = torch.as_tensor(position_groups[name], dtype=torch.long)
        same = (g[:, None] == g[None, :]).long() << bit
        ids = same if bit == 0 else ids + same
    return ids, 1 << len(position_groups)


class Block(nn.Module):
    """Pre-LayerNorm transformer block with full (bidirectional) attention.

    With `n_relations > 0`, attention logits get a learned per-head bias for
    the structural relation of each query/key pair (initialised to zero).
    """

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float, n_relations: int = 0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.relation_bias = nn.Parameter(torch.zeros(n_heads, n_relations)) if n_relations else None
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_mult * d_model), nn.GELU(),
                                nn.Linear(ff_mult * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, relations: torch.Tensor | None = None) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.n_heads, d // self.n_heads).unbind(2)
        bias = self.relation_bias[:, relations].to(x.dtype) if self.relation_bias is not None else None
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(att.transpose(1, 2).reshape(b, length, d))
        return x + self.ff(self.ln2(x))


class Denoiser(nn.Module):
    """p_theta(x0_i | x_t) for every position i, as logits over the task's tokens."""

    def __init__(self, vocab_size: int, position_groups: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tok = nn.Embedding(vocab_size + 1, cfg.d_model)  # + mask token
        self.group_names = sorted(position_groups)
        for name in self.group_names:
            ids = torch.as_tensor(position_groups[name], dtype=torch.long)
            self.register_buffer(f"group_{name}", ids, persistent=False)
            setattr(self, f"emb_{name}", nn.Embedding(int(ids.max()) + 1, cfg.d_model))
        relations, n_relations = relation_ids(position_groups)
        self.register_buffer("relations", relations, persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.ff_mult, cfg.dropout, n_relations if cfg.relation_bias else 0)
            for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def position_embedding(self) -> torch.Tensor:
        return sum(getattr(self, f"emb_{n}")(getattr(self, f"group_{n}")) for n in self.group_names)

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, L, V); with `return_hidden`, also the final hidden states (B, L, D)."""
        x = self.tok(tokens) + self.position_embedding()
        for block in self.blocks:
            x = block(x, self.relations)
        hidden = self.ln_f(x)
        logits = self.head(hidden)
        return (logits, hidden) if return_hidden else logits
