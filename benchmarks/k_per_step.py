"""Benchmark: multi-token steps on 9x9 Sudoku, solve rate against denoiser forwards per puzzle.

    python benchmarks/k_per_step.py [--k 1 2 4 8] [--limit 200] [--reuse]

Revealing k positions per step cuts the forwards per puzzle by up to k, at a cost in quality
that depends on the order. Every order, including `learned` (the committed sudoku9 policy, whose
checkpoint also holds the denoiser), is evaluated at each k by `python -m aop_ray.evaluate` on
the same generated unique-solution puzzles (24-28 clues, seed 4: the "hard" set of
benchmarks/sudoku9_aop.md). Writes benchmarks/k_per_step.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from common import ROOT, commit, describe_model, evaluate, machine, sh, write_report

POLICY = "benchmarks/checkpoints/sudoku9-policy"
ORDERS = "random,confidence,margin,entropy,singles,learned"
DATA = "data/sudoku9/test-unique24-28-seed4"
GENERATE = ["--param", "size=9", "--n", "1000", "--seed", "4", "--option", "clues=[24,28]", "--option",
            "unique=true"]
REPORT = ROOT / "benchmarks" / "k_per_step.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="positions revealed per step")
    parser.add_argument("--limit", type=int, default=200, help="puzzles (the first N of the set)")
    parser.add_argument("--reuse", action="store_true",
                        help="read back evaluations already in out/k_per_step/ that used the same command")
    args = parser.parse_args()
    if not (ROOT / DATA).exists():
        sh([sys.executable, "-m", "aop_ray.data", "generate", *GENERATE, "--out", DATA])
    table = {}  # order -> k -> row
    commands = []
    for k in args.k:
        run = evaluate(POLICY, DATA, ORDERS, f"out/k_per_step/k{k}", "--k", str(k), "--limit", str(args.limit),
                       "--no-planner-nll", reuse=args.reuse)
        commands.append(f"- {run.line()}")
        for row in run.rows:
            table.setdefault(row["order"], {})[k] = row
    header = "| order | " + " | ".join(f"k={k}: solved / forwards" for k in args.k) + " |"
    lines = [header, "|---|" + "---|" * len(args.k)]
    for order, by_k in table.items():
        cells = [f"{by_k[k]['solve_rate']:.3f} / {by_k[k]['forwards_per_instance']:.1f}" for k in args.k]
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    speed = ["| order | " + " | ".join(f"k={k} puzzles/s" for k in args.k) + " |", "|---|" + "---|" * len(args.k)]
    for order, by_k in table.items():
        speed.append(f"| {order} | " + " | ".join(f"{by_k[k]['per_s']:.1f}" for k in args.k) + " |")
    n = next(iter(table.values()))[args.k[0]]["n"]
    manifest = json.loads((ROOT / POLICY / "manifest.json").read_text())
    report = "\n".join([
        "# Multi-token steps: solve rate against forwards per puzzle (9x9 Sudoku)", "",
        f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        f"- machine: {machine()}",
        f"- report written at commit {commit()}; each evaluation's own commit is listed with its command",
        f"- denoiser and learned order: `{POLICY}` ({describe_model(manifest)})",
        f"- puzzles: the first {n} of `{DATA}` (generated: `python -m aop_ray.data generate "
        f"{' '.join(GENERATE)} --out {DATA}`), unique solutions, 24-28 clues",
        f"- command: `python benchmarks/k_per_step.py --k {' '.join(map(str, args.k))} --limit {args.limit}`, "
        "which ran:", *commands, "",
        "Each cell: solve rate / mean denoiser forwards per puzzle (one forward per step; a step reveals "
        "k positions, or the rest when fewer are masked).", "",
        *lines, "",
        "Decoding speed (puzzles/s, 2 CPU threads, batch 256):", "",
        *speed, ""])
    print("\n".join(lines))
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
