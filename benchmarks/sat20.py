"""Benchmark: every unmasking order on SATLIB uf20-91 (500 satisfiable 3-SAT formulas, 20 variables).

    python benchmarks/sat20.py [--reuse]   # evaluate the committed checkpoints, write docs/results/sat20.md

The denoiser (benchmarks/checkpoints/sat20) was trained on generated formulas only
(tune_configs/sat20_denoiser.yaml); the policies next to it by tune_configs/sat20_policy.yaml,
with generic features only (sat20-policy) and with the SAT rule features (sat20-policy-task).
Every number comes from `python -m aop_ray.evaluate` on the SATLIB files as shipped; the
commands are in the report. Orders whose checkpoint is missing are left out, and said so.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from common import ROOT, commit, describe_model, evaluate, machine, reuse_arguments, write_report

SATLIB = ROOT.parent / "shared" / "data" / "satlib" / "uf20-91"
DENOISER = "benchmarks/checkpoints/sat20"
POLICIES = {
    "generic features": "benchmarks/checkpoints/sat20-policy",
    "generic + SAT rule features": "benchmarks/checkpoints/sat20-policy-task",
}
HEURISTICS = "random,confidence,margin,entropy,unit"
REPORT = ROOT / "docs" / "results" / "sat20.md"
# Planner NLL would double the ~4 min per order on 2 cores; the SAT target is the error event anyway.
OPTIONS = ("--no-planner-nll",)


def row(label: str, r: dict) -> str:
    return (
        f"| {label} | {r['solve_rate']:.3f} | {r['clause_sat']:.4f} | {r['unit_first']:.3f} | "
        f"{r['cell_accuracy']:.3f} | {r['per_s']:.1f} | {r['n']} |"
    )


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
        ]
    )
    print(table)
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
