"""The learned unmasking order (Adaptive Order Policy).

The policy reads what the denoiser already computed at the current state and
returns a score per position; the order reveals the best masked one. Its
inputs, per position, all from the same denoiser forward:

- `probs`: the full probability vector, digit identity kept, so relational
  facts such as "digit d is likely in only one cell of this row" are learnable
  by attention across positions;
- `stats`: max probability, margin, entropy, mask flag, fraction still masked;
- `hidden`: the denoiser's final hidden state (detached);
- `group_probs`: for each structure group of the position (row, column, box),
  the summed token distribution of the *other* positions in that group
  (revealed positions count as one-hot). Generic: it uses only the geometry
  the denoiser is given too, no task rule; "digit d already has mass 1 in my
  row" is how a confidently wrong cell shows.
- optional task features, named in the config (Sudoku: candidate count,
  naked/hidden single, argmax legal), never on by default.

Two encoders read them here (a third, for 3-SAT formulas, is `models/clause_graph.py`).
`Policy` (encoder `transformer`) embeds each position's
features and mixes positions by structured attention. `TokenAxisPolicy` (encoder
`token_axis`) keeps the token axis: every (position, token) pair is embedded by
the same weights, then rounds pool over the pair's group peers (same token) and
over the position's tokens. "Digit d is placed in my row" and "d fits no other
cell of my box" are then one pooling step each instead of something attention
must discover from a few hundred decoding errors; and because no weight belongs to
a token or a position, the score is exactly invariant under renaming tokens and
under position permutations that map each group kind onto itself (Sudoku's row,
column, band and stack shuffles; not its transposition, which swaps two kinds).

The score is `scale * base_order(state) + residual`: the residual head starts
at zero and `scale` at `base_scale`, so an untrained policy *is* the base
heuristic (a near-hard argmax of it), and training only has to learn where to
deviate. A too-soft start wastes the budget on sharpening (DESIGN.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aop_ray.config import PolicyConfig
from aop_ray.errors import InputError
from aop_ray.models.transformer import StructuredTransformer, register_groups, registered_groups
from aop_ray.orders import HEURISTICS, DecodeState, Order
from aop_ray.tasks import Task


def group_pooled(belief: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """(B, L, G*V): per group, the summed `belief` (B, L, V) of the position's group peers, itself excluded."""
    parts = []
    for ids in groups:
        totals = torch.zeros(
            belief.shape[0], int(ids.max()) + 1, belief.shape[-1], dtype=belief.dtype, device=belief.device
        )
        totals.index_add_(1, ids, belief)
        parts.append(totals[:, ids] - belief)
    return torch.cat(parts, dim=-1)


def position_stats(probs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """(B, L, 5) max probability, margin, entropy, mask flag, fraction still masked."""
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
    frac = masked.float().mean(dim=1, keepdim=True).expand_as(masked)
    return torch.stack([top2[..., 0], top2[..., 0] - top2[..., 1], entropy, masked.float(), frac], dim=-1)


def revealed_one_hot(tokens: torch.Tensor, masked: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, V) one-hot of the revealed tokens, zero at masked positions."""
    revealed = torch.nn.functional.one_hot(tokens.clamp(max=vocab_size - 1), vocab_size).to(dtype)
    return revealed * ~masked[..., None]


def generic_features(
    probs: torch.Tensor,
    hidden: torch.Tensor | None,
    masked: torch.Tensor,
    names: list[str],
    tokens: torch.Tensor | None = None,
    groups: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, L, F) the named generic features of a decoding state."""
    parts = []
    if "probs" in names:
        parts.append(probs)
    if "stats" in names:
        parts.append(position_stats(probs, masked).to(probs.dtype))
    if "hidden" in names:
        if hidden is None:
            raise ValueError("feature 'hidden' needs the denoiser's hidden state")
        parts.append(hidden.detach().float())
    if "group_probs" in names or "group_tokens" in names:
        if tokens is None or groups is None:
            raise ValueError("features 'group_probs' and 'group_tokens' need the tokens and the position groups")
        revealed = revealed_one_hot(tokens, masked, probs.shape[-1], probs.dtype)
        if "group_probs" in names:
            parts.append(group_pooled(revealed + probs * masked[..., None], groups))
        if "group_tokens" in names:
            parts.append(group_pooled(revealed, groups))
    return torch.cat(parts, dim=-1)


def base_log_scale(cfg: PolicyConfig) -> nn.Parameter | None:
    """The log weight of the base order in the score; None for `base_scale: 0` (the residual alone, learned
    from scratch)."""
    if not cfg.base_scale:
        return None
    return nn.Parameter(torch.tensor(math.log(cfg.base_scale)), requires_grad=cfg.learn_scale)


def over_base(log_scale: nn.Parameter | None, base: Order, state: DecodeState, residual: torch.Tensor) -> torch.Tensor:
    """The score `scale * base_order(state) + residual` (the residual alone without a base)."""
    if log_scale is None:
        return residual
    return log_scale.exp() * base(state).float() + residual


def feature_dim(cfg: PolicyConfig, vocab_size: int, hidden_dim: int, n_groups: int) -> int:
    sizes = {
        "probs": vocab_size,
        "stats": 5,
        "hidden": hidden_dim,
        "group_probs": n_groups * vocab_size,
        "group_tokens": n_groups * vocab_size,
    }
    return sum(sizes[name] for name in cfg.features) + len(cfg.task_features)


def last_linear(head: nn.Sequential) -> nn.Linear:
    """The output layer of an MLP head (to start its residual at zero)."""
    layer = head[-1]
    assert isinstance(layer, nn.Linear)
    return layer


class Policy(StructuredTransformer):
    """An `Order`: `policy(state)` scores every position; the sampler takes the best masked one."""

    def __init__(self, task: Task, hidden_dim: int, cfg: PolicyConfig) -> None:
        super().__init__(
            task.position_groups(),
            cfg.d_model,
            cfg.n_layers,
            cfg.n_heads,
            ff_mult=2,
            dropout=0.0,
            relation_bias=cfg.relation_bias,
            structure=task.token_structure(),
        )
        self.task = task
        self.cfg = cfg
        self.needs_hidden = "hidden" in cfg.features
        self.inp = nn.Linear(feature_dim(cfg, task.vocab_size, hidden_dim, len(self.group_names)), cfg.d_model)
        self.head = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, 1))
        self.apply(self._init)
        nn.init.zeros_(last_linear(self.head).weight)  # residual starts at exactly zero
        self.log_scale = base_log_scale(cfg)
        self.base = HEURISTICS[cfg.base_order]

    def features(self, state: DecodeState) -> torch.Tensor:
        feats = generic_features(
            state.probs, state.hidden, state.masked, self.cfg.features, state.tokens, registered_groups(self)
        )
        if self.cfg.task_features:
            extra = self.task.policy_features(state.tokens, state.probs, self.cfg.task_features)
            feats = torch.cat([feats, extra.to(feats.dtype)], dim=-1)
        return feats

    def forward(self, state: DecodeState) -> torch.Tensor:
        residual = self.head(self.encode(self.inp(self.features(state)), state.tokens)).squeeze(-1).float()
        return over_base(self.log_scale, self.base, state, residual)


def accumulate(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, alpha: float = 1.0) -> None:
    """out += alpha * x @ weight.T over the last axes, in place (no new activation-sized tensor), in `out`'s
    dtype: bf16 under autocast, which does not cast in-place ops itself."""
    out.view(-1, weight.shape[0]).addmm_(
        x.reshape(-1, weight.shape[1]).to(out.dtype), weight.t().to(out.dtype), alpha=alpha
    )


def mlp(d_in: int, d_out: int, d_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class TokenAxisPolicy(nn.Module):
    """An `Order` with a (position, token) trunk (encoder `token_axis`; module docstring).

    Per pair it reads the token's probability, whether it is revealed there, the mask
    flag, and per group the revealed and the expected count of that token among the
    peers (`group_tokens`, `group_probs`), plus the margin and the fraction masked;
    the readout adds the position's `stats` and any task features.
    """

    def __init__(self, task: Task, hidden_dim: int, cfg: PolicyConfig) -> None:
        super().__init__()
        if task.token_structure() is not None:
            raise InputError(
                f"policy.encoder: token_axis pools over fixed position groups; the {task.name} task's "
                "structure differs per instance, use encoder transformer"
            )
        self.task = task
        self.cfg = cfg
        self.needs_hidden = False
        self.group_names = register_groups(self, task.position_groups())
        n_groups, width = len(self.group_names), cfg.d_model
        ones = torch.ones(1, task.seq_len, 1, device="cpu")  # structure data, on the CPU even in a meta context
        peers = group_pooled(ones, registered_groups(self)).clamp(min=1)  # (1, L, G)
        self._register_structure(registered_groups(self), peers[0])
        self.embed = mlp(3 + 2 * n_groups + 2, width, 2 * width)
        self.rounds = nn.ModuleList(mlp((3 + n_groups) * width, width, 2 * width) for _ in range(cfg.n_layers))
        self.head = mlp(2 * width + 5 + len(cfg.task_features), 1, 2 * width)
        nn.init.zeros_(last_linear(self.head).weight)  # residual starts at exactly zero
        nn.init.zeros_(last_linear(self.head).bias)
        self.log_scale = base_log_scale(cfg)
        self.base = HEURISTICS[cfg.base_order]

    def _register_structure(self, groups: list[torch.Tensor], peers: torch.Tensor) -> None:
        """The structure matrices of `peer_linear`: `member` (K, L) sums each group's positions (the K groups of
        every kind, kind by kind), `spread` (L, K) hands each position its groups' totals times 1 / peers."""
        scale = 1.0 / peers  # (L, G)
        if not torch.equal(scale, scale[:1].expand_as(scale)):
            raise InputError("policy.encoder: token_axis needs the groups of each kind to be of one size")
        kinds = [torch.nn.functional.one_hot(ids, int(ids.max()) + 1).float() for ids in groups]  # (L, K_g) each
        self.kind_sizes = [kind.shape[1] for kind in kinds]
        self.register_buffer("member", torch.cat(kinds, dim=1).t().contiguous(), persistent=False)
        self.register_buffer(
            "spread", torch.cat([k * scale[:, g, None] for g, k in enumerate(kinds)], 1), persistent=False
        )
        self.register_buffer("peer_scale", scale[0].clone(), persistent=False)  # (G,)

    def peer_linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(L, B, V, O): sum over the group kinds g of (mean of `x` (L, B, V, C) over the position's group-g peers,
        same token) @ weight[:, g].T, for `weight` (O, G, C).

        The peer mean is s * (group total - own value), linear in x, so the weight is applied to the few group
        totals (27 for Sudoku, against 81 positions x 9 tokens), which one matmul spreads back to the positions,
        and the own-value part is one more matmul: the (L, B, V, G x C) concatenation of the peer means, which
        made this layer memory-bound on a CPU, is never built. Positions lead the layout so that both
        structure sums are single matmuls over the position axis."""
        length, batch, vocab, width = x.shape
        totals = self.get_buffer("member") @ x.reshape(length, -1)  # (K, B V C)
        projected = torch.cat(
            [part.reshape(-1, width) @ weight[:, g].t() for g, part in enumerate(totals.split(self.kind_sizes))]
        )  # (K B V, O)
        spread = self.get_buffer("spread") @ projected.view(totals.shape[0], -1)  # (L, B V O)
        own = torch.einsum("ogc,g->oc", weight, self.get_buffer("peer_scale"))
        accumulate(spread, x, own, alpha=-1)
        return spread.view(length, batch, vocab, -1)

    def embed_pairs(
        self, probs: torch.Tensor, revealed: torch.Tensor, masked: torch.Tensor, stats: torch.Tensor
    ) -> torch.Tensor:
        """`embed` of every (position, token) pair, position-major (L, B, V, W). Its input columns are
        [probs if masked, revealed, mask flag, G x revealed peers, G x belief peers, margin, fraction masked];
        the per-position ones are applied once per position, not once per token."""
        first, second = self.embed[0], self.embed[2]
        assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
        n_groups, weight = len(self.group_names), first.weight
        belief = revealed + probs * masked[..., None]  # as in group_probs: revealed peers count as one-hot
        peer_w = weight[:, 3 : 3 + 2 * n_groups].reshape(-1, 2, n_groups).transpose(1, 2)  # (O, G, 2)
        hidden = self.peer_linear(torch.stack([revealed, belief], dim=-1), peer_w)
        own = torch.stack([probs * masked[..., None], revealed], dim=-1)
        accumulate(hidden, own, weight[:, :2])
        per_position = torch.stack([masked.float(), stats[..., 1], stats[..., 4]], dim=-1)
        columns = [2, 3 + 2 * n_groups, 4 + 2 * n_groups]
        per_position = torch.addmm(first.bias, per_position.view(-1, 3), weight[:, columns].t())
        hidden += per_position.view(*masked.shape, 1, -1)
        return second(nn.functional.gelu(hidden))

    def round(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """`h + layer([h, G x peer means of h, mean over tokens, max over tokens])` on h (L, B, V, W), the
        concatenation never built (`peer_linear`), its per-position columns applied once per position."""
        length, batch, vocab, width = h.shape
        assert isinstance(layer, nn.Sequential)
        first, second = layer[0], layer[2]
        assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
        n_groups, weight = len(self.group_names), first.weight
        local = (1 + n_groups) * width
        hidden = self.peer_linear(h, weight[:, width:local].reshape(-1, n_groups, width))
        accumulate(hidden, h, weight[:, :width])
        pooled = torch.cat([h.mean(2), h.amax(2)], dim=-1).view(-1, 2 * width)
        hidden += torch.addmm(first.bias, pooled, weight[:, local:].t()).view(length, batch, 1, -1)
        return h + second(nn.functional.gelu(hidden))

    def forward(self, state: DecodeState) -> torch.Tensor:
        probs, masked = state.probs.float(), state.masked
        vocab = probs.shape[-1]
        revealed = revealed_one_hot(state.tokens, masked, vocab, probs.dtype)
        stats = position_stats(probs, masked)
        h = self.embed_pairs(*(t.transpose(0, 1) for t in (probs, revealed, masked, stats)))
        for layer in self.rounds:
            h = self.round(layer, h)
        readout = [h.mean(2).transpose(0, 1), h.amax(2).transpose(0, 1), stats]
        if self.cfg.task_features:
            readout.append(self.task.policy_features(state.tokens, probs, self.cfg.task_features).float())
        residual = self.head(torch.cat(readout, dim=-1)).squeeze(-1)
        return over_base(self.log_scale, self.base, state, residual)
