"""Benchmark: the size-free 3-SAT denoiser against the tied one, and its orders on 50-variable formulas.

    python benchmarks/sat_size_free.py [--reuse]   # writes docs/results/sat20_size_free.md

Checkpoints: `benchmarks/checkpoints/sat20-size-free` (tune_configs/sat20_denoiser_size_free.yaml: the tied
denoiser's data, size and 600 steps, with `model.size_free`) and `sat20-size-free-policy`
(tune_configs/sat20_policy_graph.yaml with aop.denoiser_checkpoint=benchmarks/checkpoints/sat20-size-free), both
trained on 20-variable formulas only.

1. SATLIB uf20-91 (500 formulas): margin, `unit` and learned on the size-free checkpoints, each paired with the
   same order on the tied ones (`benchmarks/checkpoints/sat20-policy-reference-states`), `python -m aop_ray.paired`.
2. 200 generated satisfiable formulas of uf50-218's shape (50 variables, 218 clauses): margin, `unit` and learned
   of the same checkpoints (`evaluate --param n_vars=50 --param n_clauses=218`), learned paired with each.
"""

from __future__ import annotations

import json
import os
import sys

from common import ROOT, describe_model, evaluate, header, reuse_arguments, sh, versus, write_report

SATLIB = ROOT.parent / "shared" / "data" / "satlib" / "uf20-91"
TIED = "benchmarks/checkpoints/sat20-policy-reference-states"  # the tied denoiser (sat20) and its clause-graph policy
FREE = "benchmarks/checkpoints/sat20-size-free-policy"  # the size-free denoiser and its policy
OUT = "out/sat_size_free"
LARGE = ("--param", "n_vars=50", "--param", "n_clauses=218")
N_LARGE, SEED_LARGE = 200, 7
ORDERS = "margin,unit,learned"
# Planner NLL would double each evaluation; a 704-token formula's attention bias is B x 4 x 704 x 704 floats
# per layer, so the 50-variable batches are smaller than the default.
OPTIONS = ("--no-planner-nll", "--reference", "learned")
LARGE_OPTIONS = (*OPTIONS, "--batch-size", "64")


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| order | solve rate | clauses satisfied | unit first | formulas/s | n | only it / only learned, McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['order']} | {r['solve_rate']:.3f} | {r['clause_sat']:.4f} | {r['unit_first']:.3f} | "
            f"{r['per_s']:.2f} | {r['n']} | {versus(r)} |"
        )
    return lines


def main() -> int:
    args = reuse_arguments(__doc__, OUT)
    if not SATLIB.is_dir():
        print(f"error: {SATLIB} not found (the SATLIB uf20-91 instances)", file=sys.stderr)
        return 1
    for path in (TIED, FREE):
        if not (ROOT / path / "manifest.json").is_file():
            print(f"error: {path} not found (see this script's docstring for how it is trained)", file=sys.stderr)
            return 1
    tied = evaluate(TIED, str(SATLIB), ORDERS, f"{OUT}/satlib-tied", *OPTIONS, reuse=args.reuse)
    free = evaluate(FREE, str(SATLIB), ORDERS, f"{OUT}/satlib-size-free", *OPTIONS, reuse=args.reuse)
    large_data = ROOT / OUT / "sat50-218"
    generate = (
        f"python -m aop_ray.data generate --task sat --param n_vars=50 --param n_clauses=218 --n {N_LARGE} "
        f"--seed {SEED_LARGE} --out {large_data.relative_to(ROOT)}"
    )
    if not large_data.is_dir():
        sh([sys.executable, *generate.split()[1:]])
    large = evaluate(
        FREE, str(large_data.relative_to(ROOT)), ORDERS, f"{OUT}/sat50-size-free", *LARGE, *LARGE_OPTIONS,
        reuse=args.reuse,
    )  # fmt: skip
    assert tied is not None and free is not None and large is not None
    from aop_ray.paired import format_table, read_outcomes

    os.chdir(ROOT)  # the paired table names the evaluations by their paths: keep them relative
    paired = "\n\n".join(
        format_table(read_outcomes(f"{OUT}/satlib-tied:{order}"), [read_outcomes(f"{OUT}/satlib-size-free:{order}")])
        for order in ORDERS.split(",")
    )
    manifests = {path: json.loads((ROOT / path / "manifest.json").read_text()) for path in (TIED, FREE)}
    title = "3-SAT: a size-free denoiser, and what it does on 50-variable formulas"
    lines = header(title, "python benchmarks/sat_size_free.py")
    lines += [
        f"- tied checkpoints: `{TIED}` ({describe_model(manifests[TIED])}; denoiser `benchmarks/checkpoints/sat20`)",
        f"- size-free checkpoints: `{FREE}` ({describe_model(manifests[FREE])}; its denoiser "
        "`benchmarks/checkpoints/sat20-size-free`), trained on 20-variable formulas only",
        f"- 50-variable test set: `{generate}` (satisfiable, MiniSat-labelled, 218 clauses: uf50-218's shape)",
        f"- evaluations: {tied.line()}; {free.line()}; {large.line()}",
        "",
        "## SATLIB uf20-91: the tied denoiser and the size-free one, each with its own clause-graph policy",
        "",
        "Tied (`sat20` + `sat20-policy-reference-states`):",
        "",
        *table(tied.rows),
        "",
        "Size-free (`sat20-size-free` + `sat20-size-free-policy`):",
        "",
        *table(free.rows),
        "",
        "Each order paired across the two denoisers, the tied one as the reference "
        f"(`python -m aop_ray.paired {OUT}/satlib-tied:ORDER {OUT}/satlib-size-free:ORDER`):",
        "",
        "```",
        paired,
        "```",
        "",
        f"## {N_LARGE} generated 50-variable, 218-clause formulas, checkpoints trained at 20 variables",
        "",
        *table(large.rows),
        "",
        "The tied denoiser cannot run here: its weights are tied to 20 variables and 91 clauses "
        "(`evaluate --param` refuses it).",
        "",
    ]
    write_report(ROOT / "docs" / "results" / "sat20_size_free.md", "\n".join(lines))
    print((ROOT / "docs" / "results" / "sat20_size_free.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
