"""The learned order for 3-SAT: message passing over the formula's literal-clause graph (encoder `clause_graph`).

The token-axis encoder pools over fixed position groups, and a formula's groups differ per instance;
the transformer policy sees the formula only as attention biases over 293 tokens. This encoder reads
the formula as the graph it is (NeuroSAT's layout): a node per literal (x_v and not-x_v) and per clause,
an edge per occurrence. Each literal node reads the denoiser's probability that the literal is true, whether
it is already true or false, and its variable's margin and entropy; each clause node reads whether it is
satisfied, how many of its literals are still open and the probability that all of them come out false.
Rounds then pass messages clause <- its literals and literal <- its clauses and its negation. With
`policy.edge_messages` a clause tells each of its literals something of its own, read from the clause and its
other two literals: whether the rest of the clause can still be satisfied without this literal is what makes a
value a dead end, and one message shared by all three literals cannot say it.

No weight belongs to a variable number, a clause number, a literal slot or a polarity, so the score is
exactly equivariant under renaming variables, shuffling clauses and the literals inside them, and flipping
a variable's polarity (`tests/test_clause_graph.py` checks each). A variable's score reads both of its
literal nodes in both orders, so it does not depend on which polarity is called positive.

As in `models/policy.py`, the score is `scale * base_order(state) + residual`, the residual starting at zero.
"""

from __future__ import annotations

import typing

import torch
from torch import nn

from aop_ray.config import PolicyConfig
from aop_ray.errors import InputError
from aop_ray.models.policy import base_log_scale, last_linear, mlp, over_base, position_stats
from aop_ray.orders import HEURISTICS, DecodeState
from aop_ray.tasks import Task
from aop_ray.tasks.sat import TRUE, Sat

LITERAL_INPUTS = 9  # p(true), revealed true, revealed false, mask flag, max, margin, entropy, fraction masked, degree
CLAUSE_INPUTS = 7  # satisfied, open literals one-hot (0..3), p(all open literals false), expected true literals


def literal_nodes(var: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """(B, m, 3) literal node of each occurrence: 2v for x_v, 2v + 1 for not-x_v."""
    return 2 * var + (~positive).long()


def literal_inputs(
    probs: torch.Tensor, values: torch.Tensor, masked: torch.Tensor, stats: torch.Tensor, degree: torch.Tensor
) -> torch.Tensor:
    """(B, 2n, LITERAL_INPUTS) from the value positions' probs (B, n, 2), tokens (B, n), mask (B, n), their
    `position_stats` (B, n, 5) and the literal degrees (B, 2n) over their mean. Node 2v is x_v, 2v + 1 its
    negation."""
    open_ = masked.float()
    p_true = torch.stack([probs[..., 1], probs[..., 0]], dim=-1) * open_[..., None]  # (B, n, 2): x_v, not-x_v
    value_true = (values == TRUE) & ~masked
    revealed_true = torch.stack([value_true, ~value_true & ~masked], dim=-1).float()
    shared = stats[..., [3, 0, 1, 2, 4]][..., None, :].expand(*p_true.shape, 5)  # the same for both literals
    node = torch.cat([p_true[..., None], revealed_true[..., None], revealed_true.flip(-1)[..., None], shared], -1)
    return torch.cat([node.flatten(1, 2), degree[..., None]], dim=-1)


def clause_inputs(lit_true: torch.Tensor, lit_assigned: torch.Tensor, lit_p: torch.Tensor) -> torch.Tensor:
    """(B, m, CLAUSE_INPUTS) from each occurrence's (B, m, 3) truth, assignment and p(true) (0 once assigned)."""
    satisfied = lit_true.any(-1)
    open_ = ~lit_assigned
    n_open = torch.nn.functional.one_hot(open_.sum(-1), 4).float()
    all_false = torch.where(open_, 1 - lit_p, torch.ones_like(lit_p)).prod(-1) * ~satisfied
    expected_true = (lit_p * open_).sum(-1)
    return torch.cat([satisfied.float()[..., None], n_open, all_false[..., None], expected_true[..., None]], -1)


def gather_nodes(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, m, 3, W): node states h (B, N, W) at the occurrences' node index (B, m, 3)."""
    flat = index.flatten(1)[..., None].expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, flat).view(*index.shape, h.shape[-1])


def scatter_to_nodes(messages: torch.Tensor, index: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """(B, n_nodes, W): the sum of per-occurrence messages (B, m, 3, W) at their node index (B, m, 3)."""
    width = messages.shape[-1]
    out = messages.new_zeros(messages.shape[0], n_nodes, width)
    return out.scatter_add_(1, index.flatten(1)[..., None].expand(-1, -1, width), messages.flatten(1, 2))


class ClauseGraphPolicy(nn.Module):
    """An `Order` over a 3-SAT formula's literal-clause graph (module docstring). `d_model` is the node width,
    `n_layers` the message-passing rounds; `features` must be `[probs, stats]`, what the nodes read."""

    def __init__(self, task: Task, hidden_dim: int, cfg: PolicyConfig) -> None:
        super().__init__()
        if task.name != Sat.name:
            raise InputError(
                f"policy.encoder: clause_graph reads a 3-SAT formula; the {task.name} task has none, "
                "use encoder transformer or token_axis"
            )
        self.task = typing.cast(Sat, task)
        self.cfg = cfg
        self.needs_hidden = False
        width = cfg.d_model
        self.embed_literal = mlp(LITERAL_INPUTS, width, 2 * width)
        self.embed_clause = mlp(CLAUSE_INPUTS, width, 2 * width)
        self.clause_rounds = nn.ModuleList(mlp(3 * width, width, 2 * width) for _ in range(cfg.n_layers))
        self.literal_rounds = nn.ModuleList(mlp(3 * width, width, 2 * width) for _ in range(cfg.n_layers))
        edges = cfg.n_layers if cfg.edge_messages else 0
        self.edge_rounds = nn.ModuleList(mlp(2 * width, width, 2 * width) for _ in range(edges))
        self.head = mlp(2 * width + 5 + len(cfg.task_features), 1, 2 * width)
        nn.init.zeros_(last_linear(self.head).weight)  # residual starts at exactly zero
        nn.init.zeros_(last_linear(self.head).bias)
        self.log_scale = base_log_scale(cfg)
        self.base = HEURISTICS[cfg.base_order]

    def encode(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        """Final literal node states (B, 2n, W) and the value positions' stats (B, n, 5)."""
        task, n_lit = self.task, self.task.n_literals
        probs, masked, values = state.probs[:, n_lit:].float(), state.masked[:, n_lit:], state.tokens[:, n_lit:]
        var, positive, assigned, true = task.literal_state(state.tokens)
        index = literal_nodes(var, positive)  # (B, m, 3)
        n_nodes = 2 * task.n_vars
        degree = scatter_to_nodes(torch.ones_like(index, dtype=probs.dtype)[..., None], index, n_nodes)[..., 0]
        stats = position_stats(probs, masked)
        lit = self.embed_literal(literal_inputs(probs, values, masked, stats, degree / (n_lit / n_nodes)))
        p_var = torch.gather(probs[..., 1], 1, var.flatten(1)).view_as(var)
        lit_p = torch.where(positive, p_var, 1 - p_var) * ~assigned
        clause = self.embed_clause(clause_inputs(true, assigned, lit_p))
        occurrences = degree.clamp(min=1)[..., None]
        for round_, (to_clause, to_literal) in enumerate(zip(self.clause_rounds, self.literal_rounds)):
            members = gather_nodes(lit, index)  # (B, m, 3, W)
            clause = clause + to_clause(torch.cat([clause, members.mean(2), members.amax(2)], dim=-1))
            to_members = clause[:, :, None].expand_as(members)
            if self.edge_rounds:  # each occurrence hears the clause and the mean of the clause's other two
                others = (members.sum(2, keepdim=True) - members) / 2
                to_members = self.edge_rounds[round_](torch.cat([to_members, others], dim=-1))
            incoming = scatter_to_nodes(to_members, index, n_nodes) / occurrences
            negation = lit.view(lit.shape[0], -1, 2, lit.shape[-1]).flip(2).flatten(1, 2)
            lit = lit + to_literal(torch.cat([lit, incoming, negation], dim=-1))
        return lit, stats

    def forward(self, state: DecodeState) -> torch.Tensor:
        lit, stats = self.encode(state)
        pair = lit.view(lit.shape[0], -1, 2, lit.shape[-1])  # (B, n, 2, W): x_v, not-x_v
        extra = [stats]
        if self.cfg.task_features:
            n_lit = self.task.n_literals
            features = self.task.policy_features(state.tokens, state.probs, self.cfg.task_features)
            extra.append(features[:, n_lit:].float())
        both = [torch.cat([pair[:, :, a], pair[:, :, 1 - a], *extra], dim=-1) for a in (0, 1)]
        residual_vars = (self.head(both[0]) + self.head(both[1])).squeeze(-1)  # either polarity first
        residual = torch.cat([residual_vars.new_zeros(residual_vars.shape[0], self.task.n_literals), residual_vars], 1)
        return over_base(self.log_scale, self.base, state, residual)
