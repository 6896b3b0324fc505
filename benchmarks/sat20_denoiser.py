"""Does the 3-SAT denoiser's curve still climb? Continue it, then read its validation curve and SATLIB.

    python benchmarks/sat20_denoiser.py --steps 1000   # writes docs/results/sat20_denoiser.md

Continues `benchmarks/checkpoints/sat20` (600 steps) with the stage denoiser (`aop.denoiser_checkpoint`), reads
the run's validation history from MLflow (margin's solve rate on the 200 validation formulas, every 200
steps), and evaluates margin and `unit` with the continued denoiser on SATLIB uf20-91, paired with the
committed denoiser's margin (`python -m aop_ray.paired`). `--run DIR` reads an existing run instead of training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import ROOT, evaluate, header, sh, write_report

SOURCE = "benchmarks/checkpoints/sat20"
SATLIB = ROOT.parent / "shared" / "data" / "satlib" / "uf20-91"
REPORT = ROOT / "docs" / "results" / "sat20_denoiser.md"
OPTIONS = ("--no-planner-nll",)


def history(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, val_solve_rate, loss) at each validation step of the run, from its MLflow run."""
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "aop_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{ROOT / 'mlflow.db'}")
    solve = {m.step: m.value for m in client.get_metric_history(run_id, "val_solve_rate")}
    loss = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    return [(step, solve[step], loss.get(step, float("nan"))) for step in sorted(solve)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="steps to continue for")
    parser.add_argument("--run", type=Path, default=None, help="an existing continuation run directory")
    args = parser.parse_args()
    if not SATLIB.is_dir():
        print(f"error: {SATLIB} not found (the SATLIB uf20-91 instances)", file=sys.stderr)
        return 1
    run_dir = (args.run or ROOT / "runs" / f"sat20-denoiser-continued-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    train_cmd = (
        f"python -m aop_ray.train --config tune_configs/sat20_denoiser.yaml aop.denoiser_checkpoint={SOURCE} "
        f"train.steps={args.steps} train.lr=1e-3 train.warmup_steps=20 train.eval_every=200 "
        f"train.checkpoint_every=200 name={run_dir.name}"
    )
    if args.run is None:
        sh([sys.executable, *train_cmd.split()[1:]])
    final = str((run_dir / "final").relative_to(ROOT))
    before = evaluate(SOURCE, str(SATLIB), "margin", "out/sat20_denoiser/before", *OPTIONS)
    after = evaluate(final, str(SATLIB), "margin,unit", "out/sat20_denoiser/after", *OPTIONS)
    assert before is not None and after is not None
    from aop_ray.paired import format_table, read_outcomes

    os.chdir(ROOT)  # the table names the evaluations by their paths: keep them relative
    paired = format_table(
        read_outcomes("out/sat20_denoiser/before:margin"),
        [read_outcomes(f"out/sat20_denoiser/after:{order}") for order in ("margin", "unit")],
    )
    source_step = json.loads((ROOT / SOURCE / "manifest.json").read_text())["metrics"]
    lines = header("3-SAT: the denoiser trained further", "python benchmarks/sat20_denoiser.py")
    lines += [
        f"- training: `{train_cmd}`",
        f"- evaluations: {before.line()}; {after.line()}",
        "",
        "## Validation curve (margin's solve rate on the 200 validation formulas)",
        "",
        "| total steps | val solve rate (margin) | training loss |",
        "|---|---|---|",
        f"| 600 (the committed checkpoint) | {source_step['val_solve_rate']:.3f} | {source_step['loss']:.4f} |",
        *(f"| {600 + step} | {solve:.3f} | {loss:.4f} |" for step, solve, loss in history(run_dir)),
        "",
        "## SATLIB uf20-91 (500 formulas)",
        "",
        "| denoiser | order | solve rate | clauses satisfied | n |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {r['order']} | {r['solve_rate']:.3f} | {r['clause_sat']:.4f} | {r['n']} |"
            for name, e in (("committed (600 steps)", before), (f"continued (+{args.steps})", after))
            for r in e.rows
        ),
        "",
        "Paired with the committed denoiser's margin on the same formulas (`python -m aop_ray.paired "
        "out/sat20_denoiser/before:margin out/sat20_denoiser/after:margin out/sat20_denoiser/after:unit`):",
        "",
        "```",
        paired,
        "```",
        "",
    ]
    write_report(REPORT, "\n".join(lines))
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
