"""Benchmark: the learned order (AOP) against every heuristic and the `singles` rule on 9x9 Sudoku.

    python benchmarks/sudoku9_aop.py                       # evaluate the committed policy checkpoints
    python benchmarks/sudoku9_aop.py --ablation runs/A runs/B ...   # plus an ablation table of runs

Every number comes from `python -m aop_ray.evaluate` on the committed checkpoints (the commands are
in the report), on three kinds of puzzles: 1,000 held-out unique 30-clue puzzles (the core benchmark's
test set), 1,000 unique-solution 24-28-clue puzzles (hard), and the public collections in
../shared/data/sudoku/ when present. The joint checkpoint carries its own, jointly trained denoiser,
so its margin order is re-measured on that denoiser. The ablation table reads each run's final
validation metrics (200 validation puzzles, chosen-cell error on all their margin-trajectory states).
Report: docs/results/sudoku9_aop.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from common import ROOT, commit, evaluate, machine, sh, write_report

POLICY = "benchmarks/checkpoints/sudoku9-policy"
JOINT = "benchmarks/checkpoints/sudoku9-joint"
TASK_FEATURES = "benchmarks/checkpoints/sudoku9-policy-task"
TRANSFORMER = "benchmarks/checkpoints/sudoku9-policy-transformer"  # the headline before the token-axis encoder
PUBLIC = ROOT.parent / "shared" / "data" / "sudoku"
GENERATED = {  # name: (path, generate arguments)
    "held-out 30-clue": ("data/sudoku9/test-unique30-seed2", ["--seed", "2", "--option", "clues=30"]),
    "hard 24-28-clue": ("data/sudoku9/test-unique24-28-seed4", ["--seed", "4", "--option", "clues=[24,28]"]),
}
ALL_ORDERS = "random,confidence,margin,entropy,singles,learned"
JOINT_ORDERS = "margin,learned"  # the jointly trained denoiser's own margin order is the fair reference
ORDERS = {
    "policy": ALL_ORDERS,
    "joint": JOINT_ORDERS,
    "task-features": "learned",  # same denoiser as policy
    "transformer": "learned",
}
REPORT = ROOT / "docs" / "results" / "sudoku9_aop.md"


def evaluation_sets() -> dict[str, str]:
    py = sys.executable
    sets = {}
    for name, (path, gen) in GENERATED.items():
        if not (ROOT / path).exists():
            sh(
                [
                    py,
                    "-m",
                    "aop_ray.data",
                    "generate",
                    "--param",
                    "size=9",
                    "--n",
                    "1000",
                    *gen,
                    "--option",
                    "unique=true",
                    "--out",
                    path,
                ]
            )
        sets[name] = path
    for file in sorted(PUBLIC.glob("*.txt")) if PUBLIC.is_dir() else []:
        sets[f"public {file.stem}"] = os.path.relpath(file, ROOT)  # ../shared/...: the same on every checkout
    return sets


def mixing(policy: dict) -> str:
    """How a policy config mixes positions, as the report names it."""
    if policy.get("encoder") == "token_axis":
        return f"token-axis encoder, {policy['n_layers']} rounds"
    return f"{policy['n_layers']}-layer transformer" if policy["n_layers"] else "per-cell MLP"


def describe(manifest: dict) -> str:
    p, aop = manifest["policy"], manifest.get("aop", {})
    extra = f", task features {'+'.join(p['task_features'])}" if p["task_features"] else ", no task features"
    return (
        f"stage {manifest['stage']}, {mixing(p)}, d{p['d_model']}, features {'+'.join(p['features'])}{extra}, "
        f"base {p['base_order']}, target {aop.get('target', '?')}, states {aop.get('states', '?')}, "
        f"focus {aop.get('focus', 0)}, {manifest['step']} steps"
    )


def _last_evaluated_manifest(run_dir: Path) -> dict:
    """The final checkpoint's manifest, or for a stopped run its latest checkpoint with validation metrics."""
    paths = [run_dir / "final" / "manifest.json"] + sorted(run_dir.glob("checkpoint_*/manifest.json"), reverse=True)
    for path in paths:
        if path.is_file() and "val_solve_rate" in (manifest := json.loads(path.read_text()))["metrics"]:
            return manifest
    raise SystemExit(f"{run_dir}: no checkpoint with validation metrics")


def _validation_metrics(run_dir: Path, step: int | None) -> tuple[int, dict]:
    """(step, val_* metrics): from the last evaluated checkpoint, or at `step` from the run's MLflow curves
    (checkpoints are pruned, the curves are not)."""
    if step is None:
        manifest = _last_evaluated_manifest(run_dir)
        return manifest["step"], manifest["metrics"]
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(ROOT))
    from aop_ray.tracking import resolve_uri

    client = MlflowClient(resolve_uri())
    run_id = json.loads((run_dir / "aop_run.json").read_text())["mlflow_run_id"]
    metrics = {
        key: next((m.value for m in client.get_metric_history(run_id, key) if m.step == step), None)
        for key in client.get_run(run_id).data.metrics
        if key.startswith("val_")
    }
    if any(value is None for value in metrics.values()) or not metrics:
        raise SystemExit(f"{run_dir}: no validation metrics at step {step} in MLflow")
    return step, metrics


def ablation_rows(run_dirs: list[str]) -> list[str]:
    lines = [
        "| run | mixing | features | states | target | temperature | focus | val solve | chosen error: learned / "
        "margin / singles | chosen CE: learned / margin |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in run_dirs:  # RUN_DIR, or RUN_DIR@STEP for an intermediate checkpoint
        run_dir, _, at = spec.partition("@")
        cfg = json.loads((Path(run_dir) / "aop_run.json").read_text())["config"]
        step, m = _validation_metrics(Path(run_dir), int(at) if at else None)
        stopped = (
            ""
            if step == cfg["train"]["steps"]
            else f", step {step} of {cfg['train']['steps']}"
            if at
            else f", stopped at step {step}"
        )
        p, a = cfg["policy"], cfg["aop"]
        features = "+".join(p["features"] + p["task_features"])
        refresh = f", DAgger/{a['refresh_every']}" if a["refresh_every"] else ", fixed"
        policy_temperature = a.get("policy_temperature", a.get("temperature"))  # runs from before the rename
        states = a["states"] + (
            f" ({a['trajectory_instances']}/worker{refresh})" if a["states"] == "trajectory" else ""
        )
        lines.append(
            f"| {Path(run_dir).name} ({cfg['train']['stage']}{stopped}) | "
            f"{mixing(p)} | "
            f"{features} | {states} | {a['target']} | {policy_temperature:g} | {a.get('focus', 0)} | "
            f"{m['val_solve_rate']:.3f} | "
            f"{m['val_chosen_error/learned']:.4f} / {m['val_chosen_error/margin']:.4f} / "
            f"{m['val_chosen_error/singles']:.4f} | {m['val_chosen_ce/learned']:.4f} / "
            f"{m['val_chosen_ce/margin']:.4f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=POLICY, help="policy checkpoint (default %(default)s)")
    parser.add_argument("--joint", default=JOINT, help="joint checkpoint, skipped if absent (default %(default)s)")
    parser.add_argument(
        "--task-features",
        default=TASK_FEATURES,
        help="task-feature policy checkpoint, skipped if absent (default %(default)s)",
    )
    parser.add_argument(
        "--transformer",
        default=TRANSFORMER,
        help="transformer-encoder policy checkpoint, skipped if absent (default %(default)s)",
    )
    parser.add_argument(
        "--ablation",
        nargs="*",
        default=[],
        help="run directories for the ablation table (RUN_DIR@STEP: an intermediate checkpoint)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per evaluation (default 2)")
    parser.add_argument(
        "--skip-joint-on",
        nargs="*",
        default=[],
        metavar="SET",
        help="evaluation sets the joint checkpoint skips (e.g. to fit a time budget)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the evaluations already in out/sudoku9_aop/, running none",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read back evaluations already in out/sudoku9_aop/ that used the same command",
    )
    parser.add_argument(
        "--only",
        choices=list(ORDERS),
        default=None,
        help="evaluate one checkpoint only (e.g. while the other trains); no report",
    )
    args = parser.parse_args()
    started = datetime.datetime.now()
    checkpoints = {"policy": args.policy}
    for label, path in (
        ("joint", args.joint),
        ("task-features", args.task_features),
        ("transformer", args.transformer),
    ):
        if (ROOT / path / "manifest.json").is_file():
            checkpoints[label] = path
    if args.only:
        checkpoints = {args.only: checkpoints[args.only]}
    tables, commands = {}, []
    for set_name, data in evaluation_sets().items():
        for label, checkpoint in checkpoints.items():
            if label == "joint" and set_name in args.skip_joint_on:
                continue
            orders = ORDERS[label]
            slug = f"{label}-{set_name.replace(' ', '-')}"
            paired = ["--reference", "learned"] if label == "policy" else []  # McNemar against the headline
            evaluation = evaluate(
                checkpoint,
                data,
                orders,
                f"out/sudoku9_aop/{slug}",
                "--threads",
                str(args.threads),
                "--no-planner-nll",
                *paired,
                reuse=args.reuse or args.report_only,
                run=not args.report_only,
            )
            if evaluation is None:
                continue
            tables[(set_name, label)] = evaluation.rows
            commands.append(evaluation.line())
    if args.only:
        return
    if not tables:
        sys.exit(
            "error: --report-only found no evaluation in out/sudoku9_aop/ run with the current commands; "
            f"{REPORT.relative_to(ROOT)} left as it was"
        )

    manifests = {label: json.loads((ROOT / c / "manifest.json").read_text()) for label, c in checkpoints.items()}
    sets = list(dict.fromkeys(s for s, _ in tables))
    lines = [
        "# 9x9 Sudoku: learned order (AOP) against the heuristics and the `singles` rule",
        "",
        f"- date: {started:%Y-%m-%d %H:%M}",
        f"- machine: {machine()}",
        f"- report written at commit {commit()}; each evaluation's own commit is listed under Commands",
        "- denoiser: `benchmarks/checkpoints/sudoku9/` (the core benchmark's 0.8M-parameter model)",
    ]
    lines += [f"- {label} checkpoint: `{checkpoints[label]}/`: {describe(m)}" for label, m in manifests.items()]
    lines += [
        "- command: `python benchmarks/sudoku9_aop.py"
        + (" --ablation " + " ".join(args.ablation) if args.ablation else "")
        + "`",
        "- orders decode greedily (argmax token, one cell per denoiser forward); solve rate = the grid "
        "is valid and keeps the clues",
        "",
    ]
    columns = [(s, label) for s in sets for label in checkpoints if (s, label) in tables]
    lines += [
        "## Solve rate",
        "",
        "| order | " + " | ".join(f"{s} ({label})" for s, label in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    order_names = list(dict.fromkeys(r["order"] for rows in tables.values() for r in rows))
    for order in order_names:
        cells = []
        for key in columns:
            row = next((r for r in tables[key] if r["order"] == order), None)
            cells.append("-" if row is None else f"{row['solve_rate']:.3f}")
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    lines += ["", "n per set: " + ", ".join(f"{s} {tables[(s, 'policy')][0]['n']}" for s in sets), ""]
    lines += [
        "## Paired with the policy's `learned` (same puzzles)",
        "",
        "Puzzles only that order solves / only `learned` solves, and the exact two-sided McNemar p-value.",
        "",
        "| order | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for order in (o for o in ALL_ORDERS.split(",") if o != "learned"):
        rows = [next(r for r in tables[(s, "policy")] if r["order"] == order) for s in sets]
        lines.append(
            f"| {order} | "
            + " | ".join(f"{r['only_solved']}/{r['only_reference']} p={r['mcnemar_p']:.2g}" for r in rows)
            + " |"
        )
    lines.append("")
    if args.skip_joint_on and "joint" in checkpoints:
        lines += ["The joint checkpoint was not evaluated on: " + ", ".join(args.skip_joint_on) + " (time budget).", ""]
    if args.ablation:
        lines += ["## Ablation (validation metrics at the end of training)", ""] + ablation_rows(args.ablation) + [""]
    lines += ["## Commands", ""] + [f"- {c}" for c in commands] + [""]
    write_report(REPORT, "\n".join(lines))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
