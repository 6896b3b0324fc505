"""Benchmark: what the unmasking engine costs beyond its denoiser forwards.

    python benchmarks/sampler_overhead.py [--batch 16 64] [--repeats 3] [--threads 2]

One denoiser forward per step is the floor of any order. For each order, the whole rollout
(`sampling.unmask`: the order's scores, top-k selection, token choice, bookkeeping and the
step/log-prob records) is timed against a replay of exactly the forwards it ran: the same inputs,
in the same sequence, through the bare denoiser. Both are timed in this one process, interleaved,
and the median of `--repeats` is reported, so machine noise hits both sides alike.

The ratio rollout / bare forwards is the overhead; the target is <= 1.10. The learned order runs
a policy network each step on top of the forward, so its ratio includes that network, not only
bookkeeping. Writes benchmarks/sampler_overhead.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from common import ROOT, describe_model, header, write_report

from aop_ray import checkpoints
from aop_ray.orders import get_order
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


@torch.no_grad()
def replay(denoiser: nn.Module, inputs: list) -> None:
    for x, kwargs in inputs:
        denoiser(x, **kwargs)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(denoiser: nn.Module, order, tokens: torch.Tensor, mask_id: int, repeats: int) -> dict:
    recorder = Recorder(denoiser)
    roll = unmask(recorder, order, tokens, mask_id, generator=torch.Generator().manual_seed(0))  # warm-up + record
    inputs = recorder.inputs
    rollout, bare = [], []
    for _ in range(repeats):
        rollout.append(timed(lambda: unmask(denoiser, order, tokens, mask_id,
                                            generator=torch.Generator().manual_seed(0))))
        bare.append(timed(lambda: replay(denoiser, inputs)))
    r, b = statistics.median(rollout), statistics.median(bare)
    return {"rollout": r, "bare": b, "ratio": r / b, "forwards": roll.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64],
                        help="rollout batch sizes (on 2 CPU cores one 9x9 rollout of 64 takes ~10 s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per side (median reported)")
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
            m = measure(denoiser, get_order(name, policy=policy, task=task), tokens, task.vocab_size, args.repeats)
            rows.append(f"| {batch} | {name} | {m['forwards']} | {m['rollout'] * 1e3:.0f} | {m['bare'] * 1e3:.0f} "
                        f"| {m['ratio']:.3f} |")
            print(rows[-1], flush=True)
    table = "\n".join(["| batch | order | forwards | rollout ms | bare forwards ms | ratio |",
                       "|---|---|---|---|---|---|", *rows])
    shown = " ".join(["python benchmarks/sampler_overhead.py", "--batch", *map(str, args.batch), "--repeats",
                      str(args.repeats), "--threads", str(args.threads), "--clues", str(args.clues)])
    report = "\n".join([
        *header("Sampler overhead: whole rollout vs its bare denoiser forwards", shown,
                f", {args.threads} torch threads"),
        f"- denoiser and policy: `{POLICY}` ({describe_model(manifest)}); generated 9x9 puzzles with "
        f"{args.clues} clues ({81 - args.clues} forwards per rollout at k=1)", "",
        table, "",
        "rollout: `sampling.unmask` end to end (order scores, selection, token choice, records); bare "
        "forwards: the same inputs through the denoiser alone, in the same sequence; both medians of "
        f"{args.repeats}, interleaved. Target: ratio <= 1.10 (the learned order's ratio includes its policy "
        "network).", ""])
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
