"""Orders and the batched sampler: invariants on random states, exact values on small cases."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from aop_ray.config import DecodeConfig
from aop_ray.orders import HEURISTICS, DecodeState, get_order, select
from aop_ray.sampling import decode_dataset, unmask


class FixedBelief(nn.Module):
    """A stand-in denoiser: at position i it puts probability conf[i] on target[i], the rest uniform."""

    def __init__(self, target: torch.Tensor, conf: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        other = (1 - conf) / (vocab - 1)
        probs = other[..., None].expand(*conf.shape, vocab).clone()
        probs.scatter_(-1, target[..., None], conf[..., None])
        self.register_buffer("logits", probs.log())
        self.calls = 0

    def forward(self, tokens, return_hidden=False):
        self.calls += 1
        logits = self.logits.expand(tokens.shape[0], -1, -1) if self.logits.shape[0] == 1 else self.logits
        logits = logits[: tokens.shape[0]]
        return (logits, torch.zeros(*tokens.shape, 4)) if return_hidden else logits


@pytest.mark.reliability
@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 4),
    order=st.sampled_from(sorted(HEURISTICS)),
    temperature=st.sampled_from([0.0, 1.0]),
)
def test_select_only_ever_picks_masked_positions(seed, k, order, temperature):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab = 5, 12, 4
    masked = torch.rand(batch, length, generator=g) < 0.4
    masked[0] = False
    masked[1, :] = False
    masked[1, 3] = True  # a row with one masked position
    logits = torch.randn(batch, length, vocab, generator=g) * 5
    tokens = torch.where(masked, vocab, torch.randint(0, vocab, (batch, length), generator=g))
    state = DecodeState(tokens=tokens, masked=masked, logits=logits, hidden=None, step=0, generator=g)
    positions, valid = select(get_order(order)(state), masked, k, temperature, g)
    assert positions.shape == (batch, k)
    assert torch.gather(masked, 1, positions)[valid].all()
    # every masked position is available up to k per row
    assert torch.equal(valid.sum(1), masked.sum(1).clamp(max=k))
    assert not valid[0].any() and valid[1].sum() == 1 and positions[1, 0] == 3


@pytest.mark.reliability
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3), order=st.sampled_from(sorted(HEURISTICS)))
def test_sampler_keeps_prompt_and_fills_every_mask(seed, k, order):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab = 4, 10, 5
    target = torch.randint(0, vocab, (1, length), generator=g).expand(batch, -1)
    conf = torch.rand(1, length, generator=g) * 0.8 + 0.15
    model = FixedBelief(target[:1], conf, vocab)
    fixed = torch.rand(batch, length, generator=g) < 0.3
    prompt = torch.randint(0, vocab, (batch, length), generator=g)
    tokens = torch.where(fixed, prompt, vocab)
    roll = unmask(model, get_order(order), tokens, vocab, k=k, generator=g, token_temperature=1.0)
    assert torch.equal(roll.tokens[fixed], prompt[fixed])
    assert (roll.tokens < vocab).all()
    assert ((roll.step_of >= 0) == ~fixed).all()
    # at most k per step, and steps = ceil(max masked / k)
    for row in range(batch):
        counts = torch.bincount(roll.step_of[row][roll.step_of[row] >= 0])
        assert counts.max() <= k
    assert roll.steps == math.ceil(int((~fixed).sum(1).max()) / k)


def test_margin_order_reveals_most_confident_first_and_planner_nll_is_exact():
    vocab, length = 4, 5
    target = torch.tensor([[2, 0, 3, 1, 2]])
    conf = torch.tensor([[0.5, 0.9, 0.3, 0.7, 0.6]])
    model = FixedBelief(target, conf, vocab)
    tokens = torch.full((1, length), vocab)
    tokens[0, 4] = 2  # a prompt position
    for name in ("confidence", "margin", "entropy"):
        roll = unmask(model, get_order(name), tokens, vocab, target=target)
        # by confidence among free positions 0..3: 1 (0.9), 3 (0.7), 0 (0.5), 2 (0.3)
        assert roll.step_of.tolist() == [[2, 0, 3, 1, -1]], name
        assert torch.equal(roll.tokens, target)
        expected_nll = -(math.log(0.5) + math.log(0.9) + math.log(0.3) + math.log(0.7)) / 4
        assert math.isclose(roll.planner_nll().item(), expected_nll, rel_tol=1e-5)


def test_teacher_forcing_reveals_the_reference():
    vocab = 3
    target = torch.tensor([[0, 1, 2, 0]])
    wrong = torch.tensor([[1, 2, 0, 1]])
    model = FixedBelief(wrong, torch.full((1, 4), 0.9), vocab)
    tokens = torch.full((1, 4), vocab)
    free = unmask(model, get_order("margin"), tokens, vocab, target=target)
    forced = unmask(model, get_order("margin"), tokens, vocab, target=target, teacher_force=True)
    assert torch.equal(free.tokens, wrong)
    assert torch.equal(forced.tokens, target)
    assert math.isclose(forced.planner_nll().item(), -math.log(0.05), rel_tol=1e-5)


def test_one_forward_per_step_and_finished_rows_are_not_recomputed():
    vocab = 3
    target = torch.zeros(2, 6, dtype=torch.long)
    model = FixedBelief(target, torch.full((2, 6), 0.8), vocab)
    tokens = torch.full((2, 6), vocab)
    tokens[1, :4] = 0  # row 1 has only 2 masks
    roll = unmask(model, get_order("confidence"), tokens, vocab, k=2)
    assert roll.steps == 3 and model.calls == 3


def leftmost(state: DecodeState) -> torch.Tensor:
    """An order that reveals the leftmost masked position, whatever the denoiser believes."""
    return -torch.arange(state.masked.shape[1], dtype=torch.float).expand_as(state.masked)


def test_threshold_reveals_the_orders_pick_and_every_position_that_confident():
    vocab = 3
    target = torch.tensor([[2, 0, 1, 1, 0, 2]])
    conf = torch.tensor([[0.95, 0.5, 0.9, 0.4, 0.99, 0.6]])
    model = FixedBelief(target, conf, vocab)
    tokens = torch.full((1, 6), vocab)
    roll = unmask(model, leftmost, tokens, vocab, threshold=0.9)
    # step 0: the order's pick (0) and the other positions >= 0.9 (2, 4); then one per step, below 0.9
    assert roll.step_of.tolist() == [[0, 1, 0, 2, 0, 3]]
    assert roll.steps == 4 and model.calls == 4
    assert torch.equal(roll.tokens, target)
    assert torch.allclose(roll.logp_token, conf.log())
    forced = unmask(model, leftmost, tokens, vocab, threshold=0.9, target=target, teacher_force=True)
    assert torch.equal(forced.step_of, roll.step_of)
    assert math.isclose(forced.planner_nll().item(), -conf.log().mean().item(), rel_tol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), order=st.sampled_from(sorted(HEURISTICS)))
def test_threshold_above_every_confidence_is_plain_decoding_and_one_reveals_all_at_once(seed, order):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab = 3, 9, 4
    target = torch.randint(0, vocab, (batch, length), generator=g)
    model = FixedBelief(target, torch.rand(batch, length, generator=g) * 0.7 + 0.2, vocab)
    tokens = torch.where(torch.rand(batch, length, generator=g) < 0.3, target, vocab)
    plain = unmask(model, get_order(order), tokens, vocab, generator=torch.Generator().manual_seed(seed))
    high = unmask(model, get_order(order), tokens, vocab, threshold=0.95, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(plain.step_of, high.step_of) and torch.equal(plain.tokens, high.tokens)
    low = unmask(model, get_order(order), tokens, vocab, threshold=0.1, generator=torch.Generator().manual_seed(seed))
    assert low.steps == 1 and torch.equal(low.step_of, torch.where(tokens == vocab, 0, -1))


@pytest.mark.reliability
def test_learned_order_needs_a_policy_and_unknown_orders_fail():
    with pytest.raises(ValueError, match="needs a policy"):
        get_order("learned")
    with pytest.raises(ValueError, match="unknown order 'best'"):
        get_order("best")

    def scores(state):
        return -torch.arange(state.masked.shape[1], dtype=torch.float).expand_as(state.masked)

    assert get_order("learned", policy=scores) is scores


def test_decode_dataset_solves_with_a_perfect_denoiser(sudoku4):
    inst = sudoku4.generate(12, seed=0, clues=6)
    tokens, fixed, target = (torch.as_tensor(a) for a in (inst.tokens, inst.fixed, inst.target))
    conf = torch.rand(12, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.4
    model = FixedBelief(target, conf, 4)
    decoded = decode_dataset(
        model, sudoku4, tokens, fixed, target, get_order("margin"), DecodeConfig(batch_size=12, planner_nll=True)
    )
    assert decoded.solved.all() and torch.allclose(decoded.cell_accuracy, torch.ones(12))
    assert (decoded.planner_nll > 0).all()
