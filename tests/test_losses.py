import math

import torch
import torch.nn.functional as F

from aop_ray.losses import mask_free_positions, mdm_loss, sample_t


def test_forward_process_never_masks_fixed_positions():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 4, (64, 16), generator=g)
    fixed = torch.rand(64, 16, generator=g) < 0.3
    t = sample_t(64, g)
    xt, masked = mask_free_positions(x0, fixed, t, mask_id=4, generator=g)
    assert not (masked & fixed).any()
    assert torch.equal(xt[~masked], x0[~masked])
    assert (xt[masked] == 4).all()
    # t near 1 masks every free position; t near 0 almost none
    xt1, m1 = mask_free_positions(x0, fixed, torch.ones(64), 4, g)
    assert torch.equal(m1, ~fixed)


def test_sample_t_is_stratified():
    t = sample_t(8, torch.Generator().manual_seed(1))
    assert t.min() >= 1e-3 and t.max() < 1
    gaps = torch.sort(t).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 8), atol=1e-5)


def test_mdm_loss_exact_values():
    # uniform logits over 4 tokens: CE = log 4 at every position
    logits = torch.zeros(2, 3, 4)
    x0 = torch.tensor([[0, 1, 2], [3, 0, 1]])
    masked = torch.tensor([[True, False, False], [True, True, False]])
    fixed = torch.tensor([[False, False, True], [False, False, False]])
    t = torch.tensor([0.5, 0.25])
    ce = math.log(4)
    mean = mdm_loss(logits, x0, masked, t, fixed, "mean")
    assert math.isclose(mean.item(), ce, rel_tol=1e-6)
    elbo = mdm_loss(logits, x0, masked, t, fixed, "elbo")
    # row 0: 1 masked / t=0.5 / 2 free; row 1: 2 masked / t=0.25 / 3 free
    expected = (ce * 1 / 0.5 / 2 + ce * 2 / 0.25 / 3) / 2
    assert math.isclose(elbo.item(), expected, rel_tol=1e-6)


from aop_ray.losses import aop_loss, masked_log_softmax, position_costs  # noqa: E402


def test_aop_loss_gives_unmasked_positions_zero_probability_and_exact_value():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    masked = torch.tensor([[True, True, False, True]])
    cost = torch.tensor([[1.0, 2.0, 100.0, 4.0]])
    pi = masked_log_softmax(scores, masked).exp()
    assert pi[0, 2] == 0 and torch.isclose(pi.sum(), torch.tensor(1.0))
    weights = torch.tensor([1.0, math.e, math.e**3])
    weights = weights / weights.sum()
    expected = (weights * torch.tensor([1.0, 2.0, 4.0])).sum()
    loss, stats = aop_loss(scores, masked, cost)
    assert torch.isclose(loss, expected) and torch.isclose(stats["expected_cost"], expected)
    entropy = -(weights * weights.log()).sum()
    loss_b, _ = aop_loss(scores, masked, cost, entropy_beta=0.5)
    assert torch.isclose(loss_b, expected - 0.5 * entropy)


def test_aop_gradients_go_only_where_they_should():
    logits = torch.randn(2, 5, 4, requires_grad=True)  # denoiser output
    scores = torch.randn(2, 5, requires_grad=True)  # policy output
    x0 = torch.randint(0, 4, (2, 5))
    masked = torch.tensor([[True, False, True, True, False], [False, True, True, False, False]])
    # policy-only: the cost is detached, nothing reaches the denoiser
    loss, _ = aop_loss(scores, masked, position_costs(logits, x0, "ce").detach())
    loss.backward()
    assert logits.grad is None
    assert (scores.grad[~masked] == 0).all() and (scores.grad[masked] != 0).any()
    # joint: the same loss reaches the denoiser through CE, at masked positions only
    scores.grad = None
    loss, _ = aop_loss(scores, masked, position_costs(logits, x0, "ce"))
    loss.backward()
    assert (logits.grad.abs().sum(-1)[~masked] == 0).all() and (logits.grad.abs().sum(-1)[masked] > 0).all()


def test_with_a_fixed_cost_the_optimum_concentrates_on_the_cheapest_position():
    cost = torch.tensor([[0.7, 0.2, 0.05, 0.9, 0.5]])
    masked = torch.tensor([[True, True, False, True, True]])  # the cheapest, 0.05, is not masked
    scores = torch.zeros(1, 5, requires_grad=True)
    opt = torch.optim.SGD([scores], lr=5.0)
    for _ in range(300):
        loss, _ = aop_loss(scores, masked, cost)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = masked_log_softmax(scores.detach(), masked).exp()
    assert pi[0, 1] > 0.99 and pi[0, 2] == 0
    assert math.isclose(loss.item(), 0.2, abs_tol=0.01)


def test_position_costs():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]]))
    x0 = torch.tensor([[0, 2]])
    ce = position_costs(logits, x0, "ce")
    assert torch.allclose(ce, -torch.log(torch.tensor([[0.7, 0.3]])))
    assert position_costs(logits, x0, "error").tolist() == [[0.0, 1.0]]
    assert torch.allclose(position_costs(logits, x0, "both"), ce + torch.tensor([[0.0, 1.0]]))


from aop_ray.losses import pairwise_rank_loss  # noqa: E402


def test_pairwise_rank_loss_exact_on_the_shortlist_of_masked_positions():
    scores = torch.tensor([[0.0, 1.0, 2.0, 5.0, -1.0]], requires_grad=True)
    masked = torch.tensor([[True, True, True, False, True]])
    cost = torch.tensor([[0.0, 1.0, 0.0, 9.0, 1.0]], requires_grad=True)
    shortlist = torch.tensor([[3.0, 2.0, 1.0, 9.0, 0.0]])  # top 3 masked: positions 0, 1, 2 (3 is revealed)
    loss = pairwise_rank_loss(scores, masked, cost, shortlist, k=3)
    # pairs (better, worse): (0, 1) and (2, 1); position 4 is off the shortlist, 3 is not masked
    expected = (F.softplus(torch.tensor(1.0 - 0.0)) + F.softplus(torch.tensor(1.0 - 2.0))) / 2
    assert torch.isclose(loss, expected)
    loss.backward()
    assert cost.grad is None  # the costs only form pairs
    assert scores.grad[0, 1] > 0 and scores.grad[0, 0] < 0 and scores.grad[0, 2] < 0  # the costly one goes down
    assert scores.grad[0, 3] == 0 and scores.grad[0, 4] == 0


def test_pairwise_rank_loss_is_zero_without_a_costlier_candidate_and_ranks_the_cheapest_first():
    masked = torch.tensor([[True, True, True, True]])
    same = pairwise_rank_loss(torch.randn(1, 4), masked, torch.zeros(1, 4), torch.randn(1, 4), k=4)
    assert same.item() == 0.0
    cost = torch.tensor([[0.7, 0.2, 0.9, 0.5]])
    scores = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([scores], lr=1.0)
    for _ in range(200):
        loss = pairwise_rank_loss(scores, masked, cost, torch.zeros(1, 4), k=4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert scores.detach().argsort(descending=True).tolist() == [[1, 3, 0, 2]]


from aop_ray.losses import correctness_loss  # noqa: E402
from aop_ray.orders import select  # noqa: E402


def test_correctness_loss_exact_over_masked_positions_only():
    scores = torch.tensor([[2.0, -1.0, 7.0, 0.0]], requires_grad=True)
    masked = torch.tensor([[True, True, False, True]])
    cost = torch.tensor([[0.0, 1.0, 1.0, 0.0]], requires_grad=True)  # greedy error indicator
    loss = correctness_loss(scores, masked, cost)
    # right at 0 and 3 (label 1), wrong at 1 (label 0); position 2 is revealed
    expected = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(0.0))) / 3
    assert torch.isclose(loss, expected)
    loss.backward()
    assert cost.grad is None and scores.grad[0, 2] == 0  # labels only; revealed positions untouched
    assert scores.grad[0, 1] > 0 and scores.grad[0, 0] < 0 and scores.grad[0, 3] < 0


def test_correctness_loss_optimum_ranks_right_positions_first():
    masked = torch.tensor([[True, True, True, False]])
    cost = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    scores = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([scores], lr=1.0)
    for _ in range(100):
        loss = correctness_loss(scores, masked, cost)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert select(scores.detach(), masked, 1)[0].item() == 1
