"""The clause-graph policy (3-SAT): exact symmetries of the formula, the base order at start, training signal."""

from __future__ import annotations

import pytest
import torch

from aop_ray.aop import aop_step, free_cost, uniform_states
from aop_ray.config import AopConfig, ModelConfig, PolicyConfig
from aop_ray.errors import InputError
from aop_ray.models.clause_graph import ClauseGraphPolicy
from aop_ray.models.denoiser import Denoiser
from aop_ray.models.policies import make_policy
from aop_ray.orders import DecodeState, margin
from aop_ray.sampling import unmask
from aop_ray.tasks import Sat, Sudoku
from aop_ray.tasks.sat import FIRST_LITERAL, MASK, WIDTH

TASK = Sat(n_vars=7, n_clauses=20)


def graph_policy(base_scale: float = 0.0, seed: int = 0, edge_messages: bool = False) -> ClauseGraphPolicy:
    """A clause-graph policy whose residual head is random (an untrained one scores exactly zero)."""
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        encoder="clause_graph",
        d_model=8,
        n_layers=2,
        features=["probs", "stats"],
        base_scale=base_scale,
        edge_messages=edge_messages,
    )
    policy = make_policy(TASK, 16, cfg)
    assert isinstance(policy, ClauseGraphPolicy)
    torch.nn.init.normal_(policy.head[-1].weight)
    return policy


def random_state(seed: int, batch: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated formulas with some variables revealed (to arbitrary values) and random value probabilities."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.as_tensor(TASK.generate(batch, seed=seed).tokens)
    values = torch.randint(0, 2, (batch, TASK.n_vars), generator=g)
    hidden = torch.rand(batch, TASK.n_vars, generator=g) < 0.6
    tokens[:, TASK.n_literals :] = torch.where(hidden, MASK, values)
    logits = torch.randn(batch, TASK.seq_len, 2, generator=g)
    return tokens, logits


def scores(policy: ClauseGraphPolicy, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    state = DecodeState(tokens=tokens, masked=tokens == MASK, logits=logits, hidden=None, step=0)
    with torch.no_grad():
        return policy(state)


def relabel(
    tokens: torch.Tensor, logits: torch.Tensor, new_of_old: torch.Tensor, flip: torch.Tensor, clauses: torch.Tensor,
    slots: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The same formula and state with variable v renamed new_of_old[v] (its polarity flipped where `flip`),
    clause j of the result being clause clauses[j], its literals in the order slots[j]."""
    n_lit = TASK.n_literals
    code = tokens[:, :n_lit] - FIRST_LITERAL
    var, negative = code // 2, code % 2
    code = 2 * new_of_old[var] + (negative ^ flip[var].long())
    occurrence = (clauses[:, None] * WIDTH + slots).flatten()
    literals = (FIRST_LITERAL + code)[:, occurrence]
    old_of_new = torch.argsort(new_of_old)
    values = tokens[:, n_lit:][:, old_of_new]
    flipped = flip[old_of_new]
    values = torch.where(flipped & (values != MASK), 1 - values, values)
    value_logits = logits[:, n_lit:][:, old_of_new]
    value_logits = torch.where(flipped[None, :, None], value_logits.flip(-1), value_logits)
    return torch.cat([literals, values], 1), torch.cat([logits[:, :n_lit][:, occurrence], value_logits], 1)


@pytest.mark.parametrize("edge_messages", [False, True])
@pytest.mark.parametrize("symmetry", ["rename", "polarity", "clauses", "slots", "all"])
def test_the_score_is_exactly_equivariant_under_the_formulas_symmetries(symmetry, edge_messages):
    policy = graph_policy(edge_messages=edge_messages)
    tokens, logits = random_state(seed=1)
    g = torch.Generator().manual_seed(2)
    n, m = TASK.n_vars, TASK.n_clauses
    new_of_old = torch.randperm(n, generator=g) if symmetry in ("rename", "all") else torch.arange(n)
    flip = torch.rand(n, generator=g) < 0.5 if symmetry in ("polarity", "all") else torch.zeros(n, dtype=torch.bool)
    clauses = torch.randperm(m, generator=g) if symmetry in ("clauses", "all") else torch.arange(m)
    slots = torch.argsort(torch.rand(m, WIDTH, generator=g), -1) if symmetry in ("slots", "all") else None
    slots = torch.arange(WIDTH).expand(m, -1) if slots is None else slots
    before = scores(policy, tokens, logits)[:, TASK.n_literals :]
    after = scores(policy, *relabel(tokens, logits, new_of_old, flip, clauses, slots))[:, TASK.n_literals :]
    assert before.abs().max() > 0.1  # a random head: the symmetry is not a constant's
    torch.testing.assert_close(after[:, new_of_old], before, rtol=1e-5, atol=1e-5)


def test_the_score_reads_the_formula_not_only_the_variables_own_probabilities():
    """Changing one clause (not the probabilities) moves the scores of variables outside it."""
    policy = graph_policy()
    tokens, logits = random_state(seed=3)
    changed = tokens.clone()
    changed[:, :WIDTH] = torch.tensor([FIRST_LITERAL, FIRST_LITERAL + 3, FIRST_LITERAL + 4])  # x1 v -x2 v x3
    assert not torch.allclose(scores(policy, tokens, logits), scores(policy, changed, logits))


def test_untrained_it_is_its_base_order_and_scores_no_prompt_position():
    policy = graph_policy(base_scale=50.0)
    torch.nn.init.zeros_(policy.head[-1].weight)  # as constructed: the residual head starts at zero
    tokens, logits = random_state(seed=4)
    state = DecodeState(tokens=tokens, masked=tokens == MASK, logits=logits, hidden=None, step=0)
    with torch.no_grad():
        torch.testing.assert_close(policy(state), 50.0 * margin(state).float())
    trained = graph_policy(base_scale=0.0)
    assert (scores(trained, tokens, logits)[:, : TASK.n_literals] == 0).all()


def test_a_rollout_reveals_every_variable_and_leaves_the_formula_alone():
    torch.manual_seed(0)
    denoiser = Denoiser.for_task(TASK, ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)).eval()
    policy = graph_policy()
    prompt = torch.as_tensor(TASK.generate(6, seed=5).tokens)
    with torch.no_grad():
        rollout = unmask(denoiser, policy, prompt, MASK)
    assert torch.equal(rollout.tokens[:, : TASK.n_literals], prompt[:, : TASK.n_literals])
    assert ((rollout.tokens[:, TASK.n_literals :] == 0) | (rollout.tokens[:, TASK.n_literals :] == 1)).all()


@pytest.mark.parametrize("edge_messages", [False, True])
def test_the_aop_loss_trains_every_part_of_it(edge_messages):
    torch.manual_seed(0)
    denoiser = Denoiser.for_task(TASK, ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)).eval()
    policy = graph_policy(base_scale=50.0, edge_messages=edge_messages)
    inst = TASK.generate(8, seed=6)
    x0, fixed = torch.as_tensor(inst.target), torch.as_tensor(inst.fixed)
    xt = uniform_states(x0, fixed, 2, torch.Generator().manual_seed(0))
    loss, _ = aop_step(
        denoiser,
        policy,
        xt,
        x0,
        MASK,
        AopConfig(target="error", objective="pairwise"),
        joint=False,
        shortlist=policy.base,
    )
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in policy.named_parameters():
        if name == "head.2.bias":  # shifts every score alike: the softmax over positions cannot see it
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_it_refuses_a_task_without_a_formula_and_features_it_does_not_read():
    cfg = PolicyConfig(encoder="clause_graph", d_model=8, features=["probs", "stats"])
    with pytest.raises(InputError, match="policy.encoder: clause_graph reads a 3-SAT formula; the sudoku task"):
        make_policy(Sudoku(size=4), 16, cfg)
    with pytest.raises(InputError, match="policy.features: encoder clause_graph reads exactly probs, stats"):
        PolicyConfig(encoder="clause_graph", features=["probs", "stats", "group_probs"])
    with pytest.raises(InputError, match="policy.edge_messages: only encoder clause_graph has clauses"):
        PolicyConfig(encoder="token_axis", features=["probs", "stats"], edge_messages=True)


def test_the_dead_end_target_is_the_solvers_verdict_on_the_argmax_not_the_reference():
    """On formulas with several solutions, differing from the reference is not a dead end."""
    from aop_ray.aop import state_costs

    inst = TASK.generate(16, seed=7)
    x0, fixed = torch.as_tensor(inst.target), torch.as_tensor(inst.fixed)
    xt = uniform_states(x0, fixed, MASK, torch.Generator().manual_seed(1))
    logits = torch.randn(*xt.shape, 2, generator=torch.Generator().manual_seed(2))
    dead = state_costs(xt, logits, x0, "dead_end", free_cost("dead_end", TASK, MASK))
    assert torch.equal(dead, TASK.dead_ends(xt, logits.argmax(-1)).float())
    error = state_costs(xt, logits, x0, "error") * (xt == MASK)
    assert (dead <= error).all()  # a dead end always differs from the reference (which is a solution) ...
    assert (error > dead).any()  # ... but most differences are other solutions
    policy = graph_policy(base_scale=50.0)
    loss, _ = aop_step(
        None,
        policy,
        xt,
        x0,
        MASK,
        AopConfig(target="dead_end"),
        joint=False,
        logits=logits,
        free_cost=free_cost("dead_end", TASK, MASK),
    )
    loss.backward()
    assert torch.isfinite(loss) and policy.head[-1].weight.grad.abs().sum() > 0
