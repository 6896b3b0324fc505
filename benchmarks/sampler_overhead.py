"""Benchmark: what the unmasking engine costs beyond its denoiser forwards.

    python benchmarks/sampler_overhead.py [--batch 16 64] [--repeats 5] [--threads 2]

One denoiser forward per step is the floor of any order. For each order, the whole rollout
(`sampling.unmask`: the order's scores, top-k selection, token choice, bookkeeping and the
step/log-prob records) is timed against a replay of exactly the forwards it ran: the same inputs,
in the same sequence, through the bare denoiser. Both are timed in this one process, back to back
in a rotating order, and the median of the per-repetition ratios is reported, so machine noise
and drift hit both sides alike.

The ratio rollout / bare forwards is the overhead; the target is <= 1.10. The learned order runs
a policy network each step on top of the forward; its row also replays the denoiser and policy
forwards together, which separates the network's cost from the sampler's bookkeeping.
Writes benchmarks/sampler_overhead.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch
from torch import nn

from common import ROOT, describe_model, header, write_report

from aop_ray import checkpoints
from aop_ray.orders import DecodeState, get_order
from aop_ray.sampling import unmask

POLICY = "benchmarks/checkpoints/sudoku9-policy"  # holds the sudoku9 denoiser and the learned order
ORDERS = ["random", "confidence", "margin", "entropy", "singles", "learned"]
REPORT = ROOT / "benchmarks" / "sampler_overhead.md"


class Recorder(nn.Module):
    """The denoiser, keeping every input it is given: the replay runs exactly those forwards."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser, self.inputs = denoiser, []

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.inputs.append((x.clone(), kwargs))
        return self.denoiser(x, **kwargs)


def recording(order, states: list):
    """`order`, keeping every state it scores (tokens copied: the sampler updates them in place)."""
    def scored(state: DecodeState) -> torch.Tensor:
        states.append(dataclasses.replace(state, tokens=state.tokens.clone(), generator=None))
        return order(state)
    return scored


@torch.no_grad()
def replay(denoiser: nn.Module, inputs: list, policy: nn.Module | None = None, states: list | None = None) -> None:
    """The recorded forwards; with `policy`, each step's policy forward too, on a fresh copy of its state
    (so no cached softmax carries over between repetitions)."""
    for step, (x, kwargs) in enumerate(inputs):
        denoiser(x, **kwargs)
        if policy is not None:
            policy(dataclasses.replace(states[step]))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(denoiser: nn.Module, order, tokens: torch.Tensor, mask_id: int, repeats: int,
            policy: nn.Module | None = None) -> dict:
    """Median times and median per-repetition ratios; the sides run in a rotating order each repetition
    (rollout first, then bare first, ...) so a drift of the machine's speed does not favour one side."""
    recorder, states = Recorder(denoiser), []
    roll = unmask(recorder, recording(order, states), tokens, mask_id,
                  generator=torch.Generator().manual_seed(0))  # warm-up + record
    sides = {"rollout": lambda: unmask(denoiser, order, tokens, mask_id, generator=torch.Generator().manual_seed(0)),
             "bare": lambda: replay(denoiser, recorder.inputs)}
    if policy is not None:
        sides["floor"] = lambda: replay(denoiser, recorder.inputs, policy, states)
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            times[name].append(timed(sides[name]))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["ratio"] = statistics.median(r / b for r, b in zip(times["rollout"], times["bare"]))
    if policy is not None:
        result["floor_ratio"] = statistics.median(r / f for r, f in zip(times["rollout"], times["floor"]))
    return {**result, "forwards": roll.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64],
                        help="rollout batch sizes (on 2 CPU cores one 9x9 rollout of 64 takes ~10 s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per side (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--clues", type=int, default=30, help="clues per generated 9x9 puzzle")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    denoiser, task, manifest = checkpoints.load_denoiser(ROOT / POLICY)
    policy = checkpoints.load_policy(ROOT / POLICY, task, manifest["model"])
    instances = task.generate(max(args.batch), seed=5, clues=args.clues)
    rows = []
    for batch in args.batch:
        tokens = torch.as_tensor(instances.tokens[:batch])
        for name in ORDERS:
            m = measure(denoiser, get_order(name, policy=policy, task=task), tokens, task.vocab_size, args.repeats,
                        policy=policy if name == "learned" else None)
            floor = (f"{m['floor'] * 1e3:.0f} | {m['floor_ratio']:.3f}" if "floor" in m else "- | -")
            rows.append(f"| {batch} | {name} | {m['forwards']} | {m['rollout'] * 1e3:.0f} | {m['bare'] * 1e3:.0f} "
                        f"| **{m['ratio']:.3f}** | {floor} |")
            print(rows[-1], flush=True)
    table = "\n".join(["| batch | order | forwards | rollout ms | denoiser forwards ms | ratio | denoiser + policy "
                       "forwards ms | ratio to denoiser + policy |", "|---|---|---|---|---|---|---|---|", *rows])
    shown = " ".join(["python benchmarks/sampler_overhead.py", "--batch", *map(str, args.batch), "--repeats",
                      str(args.repeats), "--threads", str(args.threads), "--clues", str(args.clues)])
    report = "\n".join([
        *header("Sampler overhead: whole rollout vs its bare denoiser forwards", shown,
                f", {args.threads} torch threads"),
        f"- denoiser and policy: `{POLICY}` ({describe_model(manifest)}); generated 9x9 puzzles with "
        f"{args.clues} clues ({81 - args.clues} forwards per rollout at k=1)", "",
        table, "",
        "rollout: `sampling.unmask` end to end (order scores, selection, token choice, records); denoiser "
        "forwards: the same inputs through the denoiser alone, in the same sequence; ratio: rollout / "
        f"denoiser forwards, the median of {args.repeats} repetitions, each timing the sides back to back in a "
        "rotating order (times: medians). Target: ratio <= 1.10. The learned order also runs its policy network "
        "every step: its last two columns replay the denoiser *and* the policy forwards, so the last ratio is "
        "the sampler's own overhead for that order.", ""])
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
