"""Benchmark: every unmasking order on SATLIB uf20-91 (500 satisfiable 3-SAT formulas, 20 variables).

    python benchmarks/sat20.py [--reuse]   # evaluate the committed checkpoints, write docs/results/sat20.md

The denoiser (benchmarks/checkpoints/sat20) was trained on generated formulas only
(tune_configs/sat20_denoiser.yaml). The policies next to it: sat20-policy, the clause-graph encoder with the
solver's dead_end target and DAgger over the states a greedy decoder meets (tune_configs/sat20_policy_graph.yaml);
the same on the reference's teacher-forced states for 2,000 steps (sat20-policy-reference-states:
aop.trajectory_tokens=reference train.steps=2000), and from one fixed pool of margin's teacher-forced trajectories
(sat20-policy-graph-fixed: that and aop.trajectory_instances=1000 aop.refresh_every=0 train.eval_every=500); the
transformer policies of
tune_configs/sat20_policy.yaml, with generic features only (sat20-policy-transformer) and with the SAT rule
features (sat20-policy-task).
Every number comes from `python -m aop_ray.evaluate` on the SATLIB files as shipped; the
commands are in the report. Orders whose checkpoint is missing are left out, and said so.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from common import ROOT, commit, describe_model, evaluate, machine, reuse_arguments, versus, write_report

SATLIB = ROOT.parent / "shared" / "data" / "satlib" / "uf20-91"
DENOISER = "benchmarks/checkpoints/sat20"
POLICIES = {
    "transformer, generic features": "benchmarks/checkpoints/sat20-policy-transformer",
    "transformer, generic + SAT rule features": "benchmarks/checkpoints/sat20-policy-task",
    "clause graph, dead_end target, one fixed pool": "benchmarks/checkpoints/sat20-policy-graph-fixed",
    "clause graph, dead_end target, DAgger, reference states": "benchmarks/checkpoints/sat20-policy-reference-states",
    "clause graph, dead_end target, DAgger, argmax states": "benchmarks/checkpoints/sat20-policy",
}
GRAPH = "benchmarks/checkpoints/sat20-policy"  # paired with margin and `unit` on SATLIB and on unsat formulas
UNSAT = "out/sat20/unsat-cnf"  # generated uf20-91-shaped formulas that have no solution
N_UNSAT = 200
HEURISTICS = "random,confidence,margin,entropy,unit"
REPORT = ROOT / "docs" / "results" / "sat20.md"
# Planner NLL would double the ~4 min per order on 2 cores; the SAT target is the error event anyway.
OPTIONS = ("--no-planner-nll",)


def row(label: str, r: dict) -> str:
    return (
        f"| {label} | {r['solve_rate']:.3f} | {r['clause_sat']:.4f} | {r['unit_first']:.3f} | "
        f"{r['cell_accuracy']:.3f} | {r['per_s']:.1f} | {r['n']} |"
    )


def paired_row(r: dict) -> str:
    return f"| {r['order']} | {r['solve_rate']:.3f} | {r['clause_sat']:.4f} | {r['n']} | {versus(r)} |"


def write_unsat(out: Path, n: int) -> Path:
    """`n` random 20-variable, 91-clause formulas that MiniSat proves unsatisfiable, as DIMACS files."""
    import random

    from aop_ray.tasks import Sat
    from aop_ray.tasks.sat import satisfying_assignment

    task = Sat(n_vars=20, n_clauses=91)
    out.mkdir(parents=True, exist_ok=True)
    rng, found = random.Random("sat20/unsat"), 0
    while found < n:
        formula = task.random_formula(rng)
        if satisfying_assignment(formula, task.n_vars) is None:
            body = "".join(f"{a} {b} {c} 0\n" for a, b, c in formula)
            (out / f"uuf20-91-{found:03d}.cnf").write_text(f"c unsatisfiable (MiniSat)\np cnf 20 91\n{body}")
            found += 1
    return out


def main() -> int:
    args = reuse_arguments(__doc__, "out/sat20")
    if not SATLIB.is_dir():
        print(f"error: {SATLIB} not found (the SATLIB uf20-91 instances)", file=sys.stderr)
        return 1
    rows, commands = [], []
    heuristics = evaluate(DENOISER, str(SATLIB), HEURISTICS, "out/sat20/heuristics", *OPTIONS, reuse=args.reuse)
    rows += [row(r["order"], r) for r in heuristics.rows]
    commands.append(f"- {heuristics.line()}")
    missing = []
    for label, path in POLICIES.items():
        if not (ROOT / path / "manifest.json").is_file():
            missing.append(f"{label} ({path})")
            continue
        learned = evaluate(path, str(SATLIB), "learned", f"out/sat20/{Path(path).name}", *OPTIONS, reuse=args.reuse)
        rows.append(row(f"learned, {label}", learned.rows[0]))
        commands.append(f"- {learned.line()}; policy: {learned.rows[0].get('policy', '-')}")
    paired_lines: list[str] = []
    if (ROOT / GRAPH / "manifest.json").is_file():
        satlib = evaluate(
            GRAPH, str(SATLIB), "margin,unit,learned", "out/sat20/paired", *OPTIONS, "--reference", "learned",
            reuse=args.reuse,
        )  # fmt: skip
        unsat_dir = write_unsat(ROOT / UNSAT, N_UNSAT)
        unsat = evaluate(
            GRAPH,
            str(unsat_dir.relative_to(ROOT)),
            "margin,unit,learned",
            "out/sat20/unsat",
            *OPTIONS,
            reuse=args.reuse,
        )
        header_row = "| order | solve rate | clauses satisfied | n | only it / only learned, McNemar p |"
        paired_lines = [
            "## The clause-graph policy, paired on the same formulas",
            "",
            f"SATLIB uf20-91: {satlib.line()}",
            "",
            header_row,
            "|---|---|---|---|---|",
            *(paired_row(r) for r in satlib.rows),
            "",
            f"{N_UNSAT} unsatisfiable uf20-91-shaped formulas (generated, MiniSat-proved; every order must fail, "
            f"so the measure is the fraction of clauses the decoded assignment satisfies): {unsat.line()}",
            "",
            header_row,
            "|---|---|---|---|---|",
            *(paired_row(r) for r in unsat.rows),
            "",
        ]
    manifest = json.loads((ROOT / DENOISER / "manifest.json").read_text())
    table = "\n".join(
        [
            "| order | solve rate | clauses satisfied | unit first | value accuracy | formulas/s | n |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    report = "\n".join(
        [
            "# 3-SAT: every order on SATLIB uf20-91",
            "",
            f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
            f"- machine: {machine()}",
            f"- report written at commit {commit()}; each evaluation's own commit is listed with its command",
            f"- denoiser: `{DENOISER}` ({describe_model(manifest)}), trained on "
            "generated satisfiable formulas only (`tune_configs/sat20_denoiser.yaml`)",
            "- test set: the 500 SATLIB uf20-91 instances as shipped (`../shared/data/satlib/uf20-91`)",
            "- command: `python benchmarks/sat20.py`, which ran:",
            *commands,
            *([f"- not measured (no checkpoint): {', '.join(missing)}"] if missing else []),
            "",
            table,
            "",
            "solve rate: the decoded assignment satisfies every clause; clauses satisfied: mean fraction; "
            "unit first: of the steps at which a unit clause forced some variable, the fraction at which the "
            "order revealed a forced one (1 for `unit` by construction); "
            "value accuracy: values equal to MiniSat's reference solution (any satisfying assignment counts "
            "as solved, so this is only a proxy); formulas/s: decoding only, one denoiser forward per revealed "
            "variable, 2 CPU threads.",
            "",
            *paired_lines,
        ]
    )
    print(table)
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
