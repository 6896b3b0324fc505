"""Benchmark: multi-token steps on 9x9 Sudoku, solve rate against denoiser forwards per puzzle.

    python benchmarks/k_per_step.py [--k 1 2 4 8] [--threshold 0.99 0.9 0.7] [--limit 200] [--reuse]

Revealing k positions per step cuts the forwards per puzzle by up to k, at a cost in quality
that depends on the order. A confidence threshold instead reveals, besides the order's pick, every
position the denoiser is at least that sure of, so the number per step adapts to the state.
Every order, including `learned` (the committed sudoku9 policy, whose checkpoint also holds the
denoiser), is evaluated at each setting by `python -m aop_ray.evaluate` on the same generated
unique-solution puzzles (24-28 clues, seed 4: the "hard" set of docs/results/sudoku9_aop.md).
Writes docs/results/k_per_step.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import ROOT, describe_model, evaluate, header, sh, write_report

POLICY = "benchmarks/checkpoints/sudoku9-policy"
ORDERS = "random,confidence,margin,entropy,singles,learned"
DATA = "data/sudoku9/test-unique24-28-seed4"
GENERATE = ["--param", "size=9", "--n", "1000", "--seed", "4", "--option", "clues=[24,28]", "--option", "unique=true"]
REPORT = ROOT / "docs" / "results" / "k_per_step.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="positions revealed per step")
    parser.add_argument("--limit", type=int, default=200, help="puzzles (the first N of the set)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read back evaluations already in out/k_per_step/ that used the same command",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        nargs="*",
        default=[0.99, 0.9, 0.7],
        help="confidence thresholds (each with the order's one pick per step)",
    )
    args = parser.parse_args()
    if not (ROOT / DATA).exists():
        sh([sys.executable, "-m", "aop_ray.data", "generate", *GENERATE, "--out", DATA])
    settings = [(f"k={k}", f"k{k}", ["--k", str(k)]) for k in args.k]
    settings += [(f"p>={t:g}", f"t{t:g}", ["--threshold", str(t)]) for t in args.threshold]
    table = {}  # order -> setting -> row
    commands = []
    for label, out, flags in settings:
        run = evaluate(
            POLICY,
            DATA,
            ORDERS,
            f"out/k_per_step/{out}",
            *flags,
            "--limit",
            str(args.limit),
            "--no-planner-nll",
            reuse=args.reuse,
        )
        commands.append(f"- {run.line()}")
        for row in run.rows:
            table.setdefault(row["order"], {})[label] = row
    labels = [label for label, _, _ in settings]
    lines = [
        "| order | " + " | ".join(f"{label}: solved / forwards" for label in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for order, by in table.items():
        cells = [f"{by[label]['solve_rate']:.3f} / {by[label]['forwards_per_instance']:.1f}" for label in labels]
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    speed = ["| order | " + " | ".join(f"{label} puzzles/s" for label in labels) + " |", "|---|" + "---|" * len(labels)]
    for order, by in table.items():
        speed.append(f"| {order} | " + " | ".join(f"{by[label]['per_s']:.1f}" for label in labels) + " |")
    n = next(iter(table.values()))[labels[0]]["n"]
    manifest = json.loads((ROOT / POLICY / "manifest.json").read_text())
    shown = " ".join(
        [
            "python benchmarks/k_per_step.py --k",
            *map(str, args.k),
            "--threshold",
            *map(str, args.threshold),
            "--limit",
            str(args.limit),
        ]
    )
    report = "\n".join(
        [
            *header("Multi-token steps: solve rate against forwards per puzzle (9x9 Sudoku)", shown),
            "- each evaluation's own commit is listed with its command below",
            f"- denoiser and learned order: `{POLICY}` ({describe_model(manifest)})",
            f"- puzzles: the first {n} of `{DATA}` (generated: `python -m aop_ray.data generate "
            f"{' '.join(GENERATE)} --out {DATA}`), unique solutions, 24-28 clues",
            "- the command ran:",
            *commands,
            "",
            "Each cell: solve rate / mean denoiser forwards per puzzle (one forward per step). `k=K`: a step "
            "reveals the order's K best positions (or the rest when fewer are masked). `p>=T`: a step reveals "
            "the order's best position and every other masked position whose top-1 probability is at least T.",
            "",
            *lines,
            "",
            "Decoding speed (puzzles/s, 2 CPU threads, batch 256):",
            "",
            *speed,
            "",
        ]
    )
    print("\n".join(lines))
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
