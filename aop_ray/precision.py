"""Numeric precision of the network forwards: fp32, or bf16 autocast where the device runs it fast.

bf16 halves the bytes every matmul moves and, on hardware with bf16 units (CUDA since Ampere, Intel
CPUs with AVX512-BF16 or AMX), runs matmuls 2-3x faster. On a CPU without those units oneDNN
*emulates* bf16, and the same matmul is several times slower than fp32 (measured 60 against 241
GFLOP/s on a 2-core Xeon that hides AVX512-BF16; docs/results/precision.md). So `auto` cannot be
"bf16 on every CPU": it asks the processor's feature flags. What the flags say is reported in the
run's first line and in its results, so a number is never read without its precision.

Only the network forwards (and their backward) run in bf16. Every consumer casts back before it
reduces: logits are `.float()`ed before softmax and cross-entropy, policy scores before the softmax
over positions, and the AOP cost is computed from fp32 log-probabilities. Weights and checkpoints stay
fp32 (autocast casts per op; nothing is stored in bf16).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Literal, get_args

import torch

from aop_ray.errors import InputError

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
FAST_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of the bf16 units


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (empty if it has none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm64
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def host_cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where /proc/cpuinfo does not exist: macOS, Windows)."""
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def bf16_reason(device: torch.device, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """(whether `device` runs bf16 matmuls faster than fp32, the evidence in a few words)."""
    if device.type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return fast, "this GPU has bf16 units" if fast else "this GPU lacks bf16 units"
    if device.type == "cpu":
        units = sorted(FAST_BF16_CPU_FLAGS & (host_cpu_flags() if flags is None else flags))
        if units:
            return True, f"this CPU has {'/'.join(units)}"
        return False, "this CPU lacks avx512_bf16 and amx_bf16, so bf16 would be emulated"
    return False, f"bf16 autocast is not measured on {device.type}"


def resolve(precision: str, device: torch.device, flags: frozenset[str] | None = None) -> Literal["fp32", "bf16"]:
    """The precision a run uses: `auto` becomes bf16 where the device has bf16 units, fp32 elsewhere;
    an explicit choice is kept (bf16 on a CPU without the units is allowed: slow, but it is asked for)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_reason(device, flags)[0] else "fp32"
    return precision  # type: ignore[return-value]  # "fp32" or "bf16", checked above


def describe(precision: str, device: torch.device) -> str:
    """`precision fp32 (auto: this CPU lacks ...)`: what a run prints first and records."""
    used = resolve(precision, device)
    if precision != "auto":
        return f"precision {used}"
    return f"precision {used} (auto: {bf16_reason(device)[1]})"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the network forwards run in: bf16 autocast, or nothing (fp32)."""
    if resolve(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
