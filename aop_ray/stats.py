"""Paired significance for order comparisons.

Every order decodes the same instances, so two orders' solve rates are a paired
comparison: the instances both solve or both miss say nothing about which is
better, and the discordant ones carry all the evidence. A difference of a few
points on a thousand puzzles can be decisive (all discordant pairs one way) or
noise (many both ways); the unpaired binomial error cannot tell these apart.
"""

from __future__ import annotations

import math

import torch


def mcnemar(first: torch.Tensor, second: torch.Tensor) -> tuple[int, int, float]:
    """(instances only `first` solves, instances only `second` solves, exact two-sided McNemar p).

    Exact binomial on the discordant pairs rather than the chi-square approximation,
    because with strong orders the discordant counts are small.
    """
    if first.shape != second.shape:
        raise ValueError(
            f"paired comparison needs the same instances, got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    first, second = first.bool(), second.bool()
    only_first, only_second = int((first & ~second).sum()), int((~first & second).sum())
    n = only_first + only_second
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1)) / 2**n if n else 1.0
    return only_first, only_second, min(1.0, 2 * tail)


def paired_permutation(first: torch.Tensor, second: torch.Tensor, rounds: int = 20_000, seed: int = 0) -> float:
    """Two-sided p of the mean per-instance difference `first - second` (a score such as amino-acid
    recovery), by random sign flips of the differences: under no difference each sign is a coin."""
    if first.shape != second.shape:
        raise ValueError(
            f"paired comparison needs the same instances, got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    diff = (first.double() - second.double()).flatten()
    observed = diff.mean().abs()
    signs = torch.randint(0, 2, (rounds, diff.numel()), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    extreme = ((signs * diff).mean(1).abs() >= observed - 1e-12).sum()
    return float((extreme + 1) / (rounds + 1))
