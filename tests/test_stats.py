"""The paired significance test on small cases worked by hand."""

import pytest
import torch

from aop_ray.stats import mcnemar


def test_mcnemar_exact_values():
    first = torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool)
    second = torch.tensor([0, 0, 0, 0, 1, 0], dtype=torch.bool)
    # 3 discordant pairs, all one way: p = 2 * (1/2)^3
    assert mcnemar(first, second) == (3, 0, 0.25)
    assert mcnemar(second, first) == (0, 3, 0.25)
    # 1 vs 4 discordant: p = 2 * (C(5,0) + C(5,1)) / 2^5 = 0.375
    assert mcnemar(torch.tensor([1, 0, 0, 0, 0]), torch.tensor([0, 1, 1, 1, 1])) == (1, 4, 0.375)


def test_mcnemar_agreement_and_balance_give_p_one():
    same = torch.tensor([1, 0, 1], dtype=torch.bool)
    assert mcnemar(same, same) == (0, 0, 1.0)
    assert mcnemar(torch.tensor([1, 0]), torch.tensor([0, 1])) == (1, 1, 1.0)  # capped at 1


def test_mcnemar_refuses_unpaired_inputs():
    with pytest.raises(ValueError, match="same instances"):
        mcnemar(torch.ones(3), torch.ones(4))


def test_paired_permutation_p_is_small_for_a_consistent_gain_and_one_for_none():
    from aop_ray.stats import paired_permutation

    base = torch.linspace(0, 1, 40)
    assert paired_permutation(base + 0.1, base) < 1e-3  # every instance gains: all 2^40 sign patterns but one smaller
    assert paired_permutation(base, base) == 1.0
    swapped = torch.tensor([0.1, -0.1] * 20)  # gains and losses cancel
    assert paired_permutation(base + swapped, base) > 0.5
