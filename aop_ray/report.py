"""The order comparison of a sweep: `python -m aop_ray.report --experiment NAME [--sweep NAME|RUN_ID]`.

The sweep driver and this CLI build the same table from the same records, the
driver from Tune's results and the CLI from MLflow alone, so a comparison can be
rebuilt on any machine that reaches the tracking store (the local sqlite default
or any `MLFLOW_TRACKING_URI`). A record is one finished trial: its order, its
group (the order plus any searched hyper-parameters), its seed and its metrics.
Groups are summarised as mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from aop_ray import cli
from aop_ray.cli import run_main
from aop_ray.errors import InputError
from aop_ray.outputs import write_atomic
from aop_ray.tracking import client_for, experiment_id, find_runs, resolve_uri

METRICS = ("solve_rate", "cell_accuracy", "planner_nll", "forwards_per_instance")
ROLE_TAG, SWEEP_TAG, GROUP_TAG, ORDER_TAG = "aop_ray.role", "aop_ray.sweep_run", "aop_ray.group", "aop_ray.order"
_ORDER_RANK = {name: i for i, name in enumerate(("random", "confidence", "margin", "entropy"))}


def summarize(records: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> list[dict[str, Any]]:
    """One row per group: n_seeds, and the mean and std over seeds of every metric the trials have.

    `eval_se` is the binomial standard error of one trial's solve rate on its n test
    instances: differences between orders smaller than about twice it are test-set noise.
    The std is the sample std (ddof 1); with one seed it is NaN, not a misleading 0.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)
    rows = []
    for group, members in groups.items():
        row: dict[str, Any] = {
            "group": group,
            "order": members[0]["order"],
            "n_seeds": len(members),
            "seeds": " ".join(str(m["seed"]) for m in sorted(members, key=lambda m: m["seed"])),
            "n": int(members[0].get("n", 0)),
        }
        for metric in metrics:
            values = np.array([m[metric] for m in members if m.get(metric) is not None], dtype=float)
            if len(values) == 0:
                continue
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        if "solve_rate_mean" in row and row["n"]:
            p = row["solve_rate_mean"]
            row["eval_se"] = math.sqrt(p * (1 - p) / row["n"])
        rows.append(row)
    return sorted(
        rows, key=lambda r: (r["order"] == "learned", _ORDER_RANK.get(r["order"], len(_ORDER_RANK)), r["group"])
    )


def _cell(row: dict[str, Any], metric: str) -> str:
    if f"{metric}_mean" not in row:
        return "-"
    std = row[f"{metric}_std"]
    return f"{row[f'{metric}_mean']:.4f} ± {std:.4f}" if not math.isnan(std) else f"{row[f'{metric}_mean']:.4f}"


def format_summary(rows: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> str:
    """A markdown table: group x metric, mean ± std over seeds."""
    shown = [m for m in metrics if any(f"{m}_mean" in r for r in rows)]
    header = ["group", "seeds", *(f"{m} (mean ± std)" for m in shown), "eval_se", "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        se = f"{r['eval_se']:.4f}" if "eval_se" in r else "-"
        lines.append(
            "| " + " | ".join([r["group"], str(r["n_seeds"]), *(_cell(r, m) for m in shown), se, str(r["n"])]) + " |"
        )
    return "\n".join(lines)


def summary_csv(rows: list[dict[str, Any]]) -> bytes:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows)
    return buf.getvalue().encode()


def bar_chart_png(
    rows: list[dict[str, Any]], records: list[dict[str, Any]], metric: str = "solve_rate", title: str = ""
) -> bytes:
    """Mean per group with a ±std bar, and every seed's value as a dot (the spread is the point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.8))
    xs = np.arange(len(rows))
    means = [r.get(f"{metric}_mean", math.nan) for r in rows]
    stds = [0.0 if math.isnan(r.get(f"{metric}_std", math.nan)) else r[f"{metric}_std"] for r in rows]
    ax.bar(xs, means, yerr=stds, capsize=4, color="#7a9cc6", edgecolor="#33506e")
    for x, row in zip(xs, rows):
        values = [r[metric] for r in records if r["group"] == row["group"] and r.get(metric) is not None]
        ax.scatter(
            np.full(len(values), x) + np.linspace(-0.15, 0.15, len(values)), values, s=12, color="black", zorder=3
        )
    ax.set_xticks(xs, [r["group"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_summary(out: Path, rows: list[dict[str, Any]], records: list[dict[str, Any]], title: str) -> str:
    """summary.csv, summary.md and summary.png in `out` (each atomic); returns the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    table = format_summary(rows)
    write_atomic(out / "summary.csv", summary_csv(rows))
    write_atomic(out / "summary.md", f"# {title}\n\n{table}\n".encode())
    write_atomic(out / "summary.png", bar_chart_png(rows, records, title=title))
    return table


# ----------------------------------------------------------------------------- MLflow side
def sweep_run(client: Any, exp_id: str, sweep: str | None) -> Any:
    """The sweep's parent run: by run id, by run name (the newest), or the newest sweep of the experiment."""
    sweeps = find_runs(client, exp_id, {ROLE_TAG: "sweep"})
    if sweep is not None:
        sweeps = [r for r in sweeps if sweep in (r.info.run_id, r.info.run_name)]
    if not sweeps:
        raise InputError(
            f"--sweep: no sweep {sweep!r} in this experiment"
            if sweep
            else "--experiment: the experiment holds no sweep (runs tagged aop_ray.role=sweep)"
        )
    return sweeps[-1]


def records_from_mlflow(uri: str, experiment: str, sweep: str | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """The sweep's parent run and one record per FINISHED trial run, read from MLflow alone."""
    client = client_for(uri)
    exp_id = experiment_id(client, uri, experiment)
    if exp_id is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise InputError(f"--experiment: no experiment {experiment!r} at {uri} (there: {', '.join(names) or 'none'})")
    parent = sweep_run(client, exp_id, sweep)
    records = []
    for run in find_runs(client, exp_id, {ROLE_TAG: "trial", SWEEP_TAG: parent.info.run_id}, status="FINISHED"):
        metrics, params = run.data.metrics, run.data.params
        records.append(
            {
                "trial_id": run.data.tags.get("aop_ray.trial_id"),
                "order": run.data.tags[ORDER_TAG],
                "group": run.data.tags[GROUP_TAG],
                "seed": int(params["seed"]),
                "n": metrics.get("n", 0),
                **{m: metrics[m] for m in METRICS if m in metrics},
            }
        )
    if not records:
        raise InputError(f"--sweep: sweep {parent.info.run_name!r} ({parent.info.run_id}) has no finished trial")
    return parent, records


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "aop_ray.report",
        description="Rebuild a sweep's order comparison (mean ± std over seeds) from MLflow alone: the table "
        "to stdout, summary.csv / summary.md / summary.png to --out.",
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    parser.add_argument(
        "--sweep", default=None, help="the sweep's run name or run id (default: the newest sweep in the experiment)"
    )
    parser.add_argument("--out", default=None, help="output directory (default: report-<experiment>)")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    return parser


def report(args: argparse.Namespace) -> list[dict[str, Any]]:
    uri = resolve_uri(args.tracking_uri)
    parent, records = records_from_mlflow(uri, args.experiment, args.sweep)
    rows = summarize(records)
    out = Path(args.out or f"report-{args.experiment}")
    title = f"{parent.info.run_name}: {len(records)} finished trials"
    print(f"sweep {parent.info.run_name} ({parent.info.run_id}, {parent.info.status}) in {args.experiment}")
    print(write_summary(out, rows, records, title))
    print(f"wrote {out / 'summary.csv'}, {out / 'summary.md'} and {out / 'summary.png'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: report(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
