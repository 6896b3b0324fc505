"""Benchmark: what the unmasking engine costs beyond its denoiser forwards.

    python benchmarks/sampler_overhead.py [--batch 16 64] [--repeats 5] [--threads 2] [--device cpu]

One denoiser forward per step is the floor of any order. For each order, the whole rollout
(`sampling.unmask`: the order's scores, top-k selection, token choice, bookkeeping and the
step/log-prob records) is timed end to end, and inside it every denoiser forward is timed where it
runs. The ratio rollout / its forwards is the overhead (target <= 1.10). Timing the forwards in
place, rather than replaying them later, puts both sides of the ratio in the same seconds of the
same run: on a shared 2-core VM a replay a few seconds later differed from the original by up to
25% either way. The learned order runs a policy network each step too; its calls are timed the
same way, so its last ratio is the sampler's own overhead beyond both networks.
rollouts/s = batch / rollout time. Writes docs/results/sampler_overhead.md
(`sampler_overhead_<device>.md` for another device).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import ROOT, describe_model, header, write_report

from aop_ray import checkpoints
from aop_ray.orders import get_order
from aop_ray.sampling import unmask

POLICY = "benchmarks/checkpoints/sudoku9-policy"  # holds the sudoku9 denoiser and the learned order
ORDERS = ["random", "confidence", "margin", "entropy", "singles", "learned"]


class Stopwatch:
    """Wraps a callable and adds up the seconds spent in it (synchronising a GPU, whose calls return
    before the work is done)."""

    def __init__(self, fn, device: torch.device) -> None:
        self.fn, self.device, self.seconds = fn, device, 0.0
        self.needs_hidden = getattr(fn, "needs_hidden", False)  # the sampler asks an order this

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, *args, **kwargs):
        self._sync()
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self._sync()
        self.seconds += time.perf_counter() - start
        return out


def measure(denoiser, order, tokens: torch.Tensor, mask_id: int, repeats: int, timed_order: bool) -> dict:
    """Medians over `repeats` rollouts (after one warm-up) of the rollout time, its forwards' time, and
    their ratio; with `timed_order`, the order's own calls (a policy network) are timed as well."""
    runs = []
    for rep in range(repeats + 1):
        forwards = Stopwatch(denoiser, tokens.device)
        scored = Stopwatch(order, tokens.device) if timed_order else order
        start = time.perf_counter()
        roll = unmask(forwards, scored, tokens, mask_id, generator=torch.Generator().manual_seed(0))
        if tokens.device.type == "cuda":
            torch.cuda.synchronize(tokens.device)
        total = time.perf_counter() - start
        networks = forwards.seconds + (scored.seconds if timed_order else 0.0)
        if rep:  # the first is the warm-up
            runs.append(
                {
                    "rollout": total,
                    "forwards": forwards.seconds,
                    "ratio": total / forwards.seconds,
                    "policy": networks - forwards.seconds,
                    "floor_ratio": total / networks,
                }
            )
    return {**{key: statistics.median(r[key] for r in runs) for key in runs[0]}, "steps": roll.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[16, 64],
        help="rollout batch sizes (on 2 CPU cores one 9x9 rollout of 64 takes ~10 s)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rollouts per row after a warm-up (medians)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--clues", type=int, default=30, help="clues per generated 9x9 puzzle")
    parser.add_argument("--device", default="cpu", help="torch device (cuda: bf16 is not used here; fp32 forwards)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    denoiser, task, manifest = checkpoints.load_denoiser(ROOT / POLICY, map_location=device)
    policy = checkpoints.load_policy(ROOT / POLICY, task, manifest["model"], device)
    instances = task.generate(max(args.batch), seed=5, clues=args.clues)
    rows = []
    for batch in args.batch:
        tokens = torch.as_tensor(instances.tokens[:batch]).to(device)
        for name in ORDERS:
            m = measure(
                denoiser,
                get_order(name, policy=policy, task=task),
                tokens,
                task.vocab_size,
                args.repeats,
                timed_order=name == "learned",
            )
            floor = f"{m['policy'] * 1e3:.0f} | {m['floor_ratio']:.3f}" if name == "learned" else "- | -"
            rows.append(
                f"| {batch} | {name} | {m['steps']} | {m['rollout'] * 1e3:.0f} | {m['forwards'] * 1e3:.0f} "
                f"| **{m['ratio']:.3f}** | {floor} | {batch / m['rollout']:.1f} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| batch | order | forwards | rollout ms | in denoiser forwards ms | ratio | in policy ms "
            "| ratio to both networks | rollouts/s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    shown = " ".join(
        [
            "python benchmarks/sampler_overhead.py",
            "--batch",
            *map(str, args.batch),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
            "--clues",
            str(args.clues),
            *(["--device", args.device] if device.type != "cpu" else []),
        ]
    )
    report = "\n".join(
        [
            *header(
                "Sampler overhead: whole rollout vs its denoiser forwards",
                shown,
                f", {args.threads} torch threads, device {args.device}",
            ),
            f"- denoiser and policy: `{POLICY}` ({describe_model(manifest)}); generated 9x9 puzzles with "
            f"{args.clues} clues ({81 - args.clues} forwards per rollout at k=1)",
            "",
            table,
            "",
            "rollout: `sampling.unmask` end to end (order scores, selection, token choice, records); in denoiser "
            "forwards: the time spent inside the denoiser's calls during that same rollout; ratio: rollout / in "
            f"denoiser forwards. Medians of {args.repeats} rollouts after a warm-up. Target: ratio <= 1.10. The "
            "learned order also runs its policy network every step, timed likewise (in policy); the ratio to both "
            "networks is the sampler's own overhead for that order.",
            "",
        ]
    )
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    out = ROOT / "docs" / "results" / f"sampler_overhead{suffix}.md"
    write_report(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
