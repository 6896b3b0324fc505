import math

import torch

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
