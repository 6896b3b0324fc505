"""Benchmark: how far can any order go on 3-SAT with this denoiser? A dead-end oracle as the ceiling.

    python benchmarks/sat_oracle.py [--limit N]   # writes docs/results/sat20_oracle.md

Every order here writes the denoiser's argmax value at the variable it picks; the order only picks. So the
best any order can do is to pick, at each step, a variable whose argmax value still leaves the formula
satisfiable (MiniSat under assumptions, `Sat.dead_ends`, the label the clause-graph policy is trained on). The
`oracle` order does exactly that, by margin among the safe variables, and by margin alone once none is safe.
It is the ceiling of the learned order's target, not an order a user can run (it calls a SAT solver at every
step). A formula the oracle loses is one where, at some step, every open variable's argmax is a dead end.

For each denoiser (the 600-step `sat20` and the 1,600-step `sat20-long`), on SATLIB uf20-91: margin, the
committed clause-graph policy trained on that denoiser, and the oracle, paired. Decoding runs in this process
(no Ray, no MLflow), greedy, one variable per forward.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import ROOT, header, write_report

from aop_ray import checkpoints, data
from aop_ray.config import DecodeConfig
from aop_ray.orders import DecodeState, margin
from aop_ray.sampling import decode_dataset
from aop_ray.stats import mcnemar
from aop_ray.tasks import Sat

SATLIB = ROOT.parent / "shared" / "data" / "satlib" / "uf20-91"
POLICIES = {
    "sat20": "benchmarks/checkpoints/sat20-policy-reference-states",
    "sat20-long": "benchmarks/checkpoints/sat20-long-policy",
}
REPORT = ROOT / "docs" / "results" / "sat20_oracle.md"
DECODE = DecodeConfig(batch_size=100, precision="fp32")  # greedy, one variable per forward, as measured


class DeadEndOracle:
    """Margin among the variables whose argmax value is not a dead end. `stuck` holds, per batch decoded, the
    rows that met a state where no open variable was safe (lost whatever the order); every formula has the same
    number of variables, so no row leaves its batch early."""

    def __init__(self, task: Sat) -> None:
        self.task = task
        self.stuck: list[torch.Tensor] = []

    def __call__(self, state: DecodeState) -> torch.Tensor:
        proposal = torch.where(state.masked, state.probs.argmax(-1), state.tokens)
        dead = self.task.dead_ends(state.tokens, proposal) & state.masked
        no_safe = (dead | ~state.masked).all(1)
        if state.step == 0:  # a new batch
            self.stuck.append(no_safe)
        else:
            self.stuck[-1] = self.stuck[-1] | no_safe
        return margin(state) - 2.0 * dead.float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="the first N formulas only (a quick look)")
    args = parser.parse_args()
    if not SATLIB.is_dir():
        print(f"error: {SATLIB} not found (the SATLIB uf20-91 instances)", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    task = Sat(n_vars=20, n_clauses=91)
    inst = data.load_instances(task, SATLIB)
    tokens, fixed, target = (torch.as_tensor(a[: args.limit]) for a in (inst.tokens, inst.fixed, inst.target))
    rows: list[str] = []
    stuck_notes: list[str] = []
    for name, path in POLICIES.items():
        denoiser, _, manifest = checkpoints.load_denoiser(ROOT / path, task)
        policy = checkpoints.load_policy(ROOT / path, task, manifest["model"])
        solved: dict[str, torch.Tensor] = {}
        oracle = DeadEndOracle(task)
        for order_name, order in (("margin", margin), ("learned", policy), ("oracle", oracle)):
            start = time.perf_counter()
            solved[order_name] = decode_dataset(denoiser, task, tokens, fixed, target, order, DECODE).solved
            rate = float(solved[order_name].float().mean())
            print(f"{name} {order_name}: {rate:.1%} ({time.perf_counter() - start:.0f} s)", flush=True)
        for order_name in ("margin", "learned", "oracle"):
            cell = "-"
            if order_name != "oracle":
                only_oracle, only_it, p = mcnemar(solved["oracle"], solved[order_name])
                cell = f"{only_it} / {only_oracle}, p = {p:.2g}"
            rows.append(f"| {name} | {order_name} | {float(solved[order_name].float().mean()):.1%} | {cell} |")
        lost, stuck = ~solved["oracle"], torch.cat(oracle.stuck)
        stuck_notes.append(
            f"- {name}: the oracle lost {int(lost.sum())} formulas; at {int((stuck & lost).sum())} of them some state "
            "had no open variable whose argmax value was safe"
        )
    command = "python benchmarks/sat_oracle.py" + (f" --limit {args.limit}" if args.limit else "")
    lines = header("3-SAT: the dead-end oracle, the ceiling of any order on this denoiser", command)
    lines += [
        f"- test set: SATLIB uf20-91 ({len(tokens)} formulas); greedy argmax values, one variable per forward",
        "- oracle: margin among the open variables whose argmax value leaves the formula satisfiable (MiniSat), "
        "margin alone when none does",
        "",
        "| denoiser | order | solve rate | only it / only oracle, McNemar p |",
        "|---|---|---|---|",
        *rows,
        "",
        *stuck_notes,
        "",
    ]
    write_report(REPORT, "\n".join(lines))
    print(f"wrote {REPORT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
