"""Compare unmasking orders on a dataset with a trained denoiser.

    python -m aop_ray.evaluate --checkpoint CKPT --data PATH --orders random,confidence,margin,entropy

Prints one row per order (solve rate, cell accuracy, planner NLL, puzzles/s),
writes `results.csv` / `results.json`, `solved.csv` and one heat map PNG per
order (mean reveal step per position) into `--out`, and logs all of it to MLflow.
`results.json` is a contract read by other tools: a list of objects with at
least order, solve_rate, cell_accuracy, planner_nll, per_s, n. With
`--reference ORDER` every other row also carries the paired comparison against
it on the same instances: only_solved, only_reference, mcnemar_p.
`solved.csv` keeps each instance's outcome (a content id, then one 0/1 column
per order), so evaluations of *different* checkpoints on the same data can be
paired after the fact: `python -m aop_ray.paired`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aop_ray import checkpoints, cli, data, precision
from aop_ray.cli import run_main, say
from aop_ray.config import DecodeConfig, find_input, make_task, parse_assignments
from aop_ray.errors import InputError
from aop_ray.locations import check_durable, check_tracking_uri
from aop_ray.models.policies import PolicyEnsemble, PolicyNet
from aop_ray.orders import Order, get_order, order_names
from aop_ray.outputs import claim, write_atomic
from aop_ray.paired import SOLVED_CSV, solved_csv
from aop_ray.precision import PRECISIONS
from aop_ray.readers import short
from aop_ray.sampling import Decoded, decode_dataset
from aop_ray.stats import mcnemar
from aop_ray.tasks import Instances, Task, task_params
from aop_ray.tracking import Tracker, ended_status, resolve_uri

FIELDS = (
    "order",
    "solve_rate",
    "cell_accuracy",
    "planner_nll",
    "per_s",
    "n",
    "k",
    "threshold",
    "forwards_per_instance",
    "precision",
    "policy",
    "reference",
    "only_solved",
    "only_reference",
    "mcnemar_p",
)


def summarize(order: str, decoded: Decoded, k: int, threshold: float | None = None) -> dict[str, Any]:
    n = len(decoded.solved)
    nll = decoded.planner_nll
    nll_mean = float(torch.nanmean(nll)) if nll is not None and not torch.isnan(nll).all() else None
    steps = decoded.step_of.max(dim=1).values + 1
    return {
        "order": order,
        "solve_rate": float(decoded.solved.float().mean()),
        "cell_accuracy": float(decoded.cell_accuracy.mean()),
        "planner_nll": nll_mean,
        "per_s": n / decoded.seconds if decoded.seconds > 0 else math.inf,
        "n": n,
        "k": k,
        "threshold": threshold,
        "forwards_per_instance": float(steps.float().mean()),
        "precision": decoded.precision,
        **{name: float(torch.nanmean(value)) for name, value in decoded.metrics.items()},
    }


def task_metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """The task's own metrics in the rows (beyond `FIELDS`), in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row if key not in FIELDS))


def paired_cell(row: dict[str, Any]) -> str:
    """`only it / only reference, p` of a row, '-' for the reference itself."""
    if row.get("mcnemar_p") is None:
        return "-"
    return f"{row['only_solved']}/{row['only_reference']} p={row['mcnemar_p']:.2g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a person reads it: `*` marks the best solve rate, a footnote says what the paired
    column counts."""
    extra = task_metric_names(rows)
    reference = next((r["reference"] for r in rows if r.get("reference")), None)
    paired = f"vs {reference}" if reference else None
    width = max([len(paired)] + [len(paired_cell(r)) for r in rows]) if paired else 0
    best = max(r["solve_rate"] for r in rows)
    header = (
        f"{'order':<13} {'solve_rate':>10} {'cell_acc':>9} {'planner_nll':>11} "
        + "".join(f"{name:>{max(10, len(name))}} " for name in extra)
        + f"{'per_s':>8} {'n':>6}"
        + (f"  {paired:<{width}}" if paired else "")
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        nll = f"{r['planner_nll']:.4f}" if r["planner_nll"] is not None else "-"
        extras = "".join(f"{r.get(name, float('nan')):>{max(10, len(name))}.4f} " for name in extra)
        name = r["order"] + ("*" if r["solve_rate"] == best else "")
        lines.append(
            f"{name:<13} {r['solve_rate']:>10.4f} {r['cell_accuracy']:>9.4f} {nll:>11} "
            f"{extras}{r['per_s']:>8.1f} {r['n']:>6}" + (f"  {paired_cell(r):<{width}}" if paired else "")
        )
    lines.append(
        "* best solve rate"
        + (
            f"; '{paired}': instances only this order solves / only {reference} "
            f"solves, exact McNemar p of that paired difference"
            if paired
            else ""
        )
    )
    return "\n".join(lines)


def heatmap_png(task: Task, step_of: torch.Tensor, title: str) -> bytes:
    """PNG of the mean reveal step per position (prompt positions excluded).

    A task without a 2-D layout (SAT) is drawn as one row of its free positions only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    revealed = (step_of >= 0).float()
    mean_step = (step_of.clamp(min=0) * revealed).sum(0) / revealed.sum(0)
    if len(task.grid_shape) == 2:
        grid = mean_step.reshape(task.grid_shape).numpy()
    else:
        grid = mean_step[revealed.sum(0) > 0].reshape(1, -1).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5) if grid.shape[0] > 1 else (10, 2))
    image = ax.imshow(grid, cmap="viridis")
    fig.colorbar(image, ax=ax, label="mean reveal step")
    if grid.size <= 100:
        for (r, c), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def results_csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*FIELDS, *task_metric_names(rows)], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def parse_orders(text: str, task: Task, policy: PolicyNet | PolicyEnsemble | None) -> dict[str, Order]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError("--orders: no order given")
    orders = {}
    for name in names:
        if name not in order_names(task):
            raise InputError(f"--orders: unknown order {name!r} (known: {', '.join(order_names(task))})")
        if name == "learned" and policy is None:
            raise InputError("--orders: 'learned' needs a policy checkpoint (--checkpoint of a policy, or --policy)")
        orders[name] = get_order(name, policy=policy, task=task)
    return orders


def policy_description(policy: PolicyNet | PolicyEnsemble) -> str:
    cfg = policy.cfg
    ensemble = f"mean of {len(policy.members)} policies, each: " if isinstance(policy, PolicyEnsemble) else ""
    plural = "s" if cfg.n_layers != 1 else ""
    if cfg.encoder == "token_axis":
        mixing = f"token-axis encoder, {cfg.n_layers} pooling round{plural}"
    elif cfg.encoder == "clause_graph":
        mixing = f"clause-graph encoder, {cfg.n_layers} message-passing round{plural}"
        mixing += ", a message per clause and literal" if cfg.edge_messages else ""
    else:
        mixing = f"{cfg.n_layers}-layer transformer" if cfg.n_layers else "per-position MLP"
    return (
        f"{ensemble}{mixing}, features={'+'.join(cfg.features)}"
        + (f", task_features={'+'.join(cfg.task_features)}" if cfg.task_features else "")
        + f", base={cfg.base_order if cfg.base_scale else 'none'}"
    )  # base_scale 0: the residual alone


def load_scorer(oracle: str | None, task: Task) -> Any:
    """The family oracle's `score` for a protein task (`--oracle`), else None."""
    if oracle is None:
        return None
    if task.name != "protein":
        raise InputError(f"--oracle: only protein tasks have a family oracle (this checkpoint is {task.name})")
    from aop_ray.protein.oracle import FamilyOracle

    return FamilyOracle.load(oracle, task).score


def compare_orders(
    denoiser: torch.nn.Module,
    task: Task,
    instances: Instances,
    orders: dict[str, Order],
    decode: DecodeConfig,
    *,
    seed: int = 0,
    policy: PolicyNet | PolicyEnsemble | None = None,
    progress: bool = True,
    scorer: Any = None,
    reference: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, bytes], dict[str, torch.Tensor]]:
    """Decode `instances` under each order as `decode` says: one summary row, one heat-map PNG and
    the per-instance solved flags per order.

    Every order sees the same puzzles and the same seed, so the rows are a paired comparison;
    with `reference` (one of `orders`) each other row gets its McNemar counts against it.
    """
    # Copies: instances a Tune trial got through Ray's object store are read-only arrays.
    tokens, fixed, target = (torch.tensor(a) for a in (instances.tokens, instances.fixed, instances.target))
    rows, maps, solved = [], {}, {}
    bars = progress and sys.stderr.isatty()  # a log file (a Ray job's) gets one line per order instead
    for name, order in orders.items():
        with tqdm(total=len(instances), desc=f"{name:<10}", unit="inst", file=sys.stderr, disable=not bars) as bar:
            decoded = decode_dataset(
                denoiser,
                task,
                tokens,
                fixed,
                target,
                order,
                decode,
                generator=torch.Generator().manual_seed(seed),
                on_batch=bar.update,
                scorer=scorer,
            )
        row = summarize(name, decoded, decode.k, decode.threshold)
        if progress and not bars:
            say(f"{name}: {row['n']} instances decoded, {row['per_s']:.1f}/s")
        solved[name] = decoded.solved
        if name == "learned" and policy is not None:
            row["policy"] = policy_description(policy)
        rows.append(row)
        step_rule = f"k={decode.k}" + (f", threshold {decode.threshold:g}" if decode.threshold is not None else "")
        maps[name] = heatmap_png(task, decoded.step_of, f"{name}: mean reveal step ({step_rule})")
    if reference:
        for row in rows:
            paired = (
                (None, None, None) if row["order"] == reference else mcnemar(solved[row["order"]], solved[reference])
            )
            row.update(zip(("reference", "only_solved", "only_reference", "mcnemar_p"), (reference, *paired)))
    return rows, maps, solved


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The row's numeric fields: what goes to MLflow as metrics."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_results(
    out: Path, rows: list[dict[str, Any]], maps: dict[str, bytes], solved: dict[str, torch.Tensor], instances: Instances
) -> None:
    """results.json, results.csv, solved.csv and heatmap_<order>.png, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(rows, indent=2).encode())
    write_atomic(out / "results.csv", results_csv(rows))
    write_atomic(out / SOLVED_CSV, solved_csv(instances, solved))
    for name, png in maps.items():
        write_atomic(out / f"heatmap_{name}.png", png)


@dataclasses.dataclass(kw_only=True)
class Evaluation(DecodeConfig):
    """One evaluation: the evaluate CLI and the main job both build this and call `run_evaluation`."""

    checkpoint: str
    data: str
    orders: str = "random,confidence,margin,entropy"  # comma-separated, as on the command line
    policy: str | None = None
    reference: str | None = None
    oracle: str | None = None
    out: str | None = None
    seed: int = 0
    # task parameters in place of the checkpoint's (`--param n_vars=50`): a size-free denoiser at another size
    task: dict[str, Any] = dataclasses.field(default_factory=dict)
    planner_nll: bool = True
    device: str = "cpu"
    threads: int | None = None
    experiment: str = "aop-ray-eval"
    run_name: str | None = None
    mlflow: bool = True
    progress: bool = True

    def key(self, name: str) -> str:
        return "--" + name.replace("_", "-")

    def check(self) -> None:
        """The output checks, before any checkpoint or data is read (the decoding knobs were checked
        when the object was built)."""
        if self.out is not None:
            check_durable("--out", self.out, "give --out an absolute path")


def run_evaluation(ev: Evaluation) -> list[dict[str, Any]]:
    """Decode, print the table, write `--out`, and log a parent MLflow run with one child run per order.

    `--out` is checked writable and held by this process before anything is decoded: two evaluations
    into one directory are refused, not interleaved."""
    ev.check()
    if ev.out is None:
        return _evaluate(ev)
    with claim(Path(ev.out), "--out"):
        return _evaluate(ev)


def _evaluate(ev: Evaluation) -> list[dict[str, Any]]:
    torch.set_num_threads(ev.threads or torch.get_num_threads())
    uri = resolve_uri() if ev.mlflow else None
    check_tracking_uri(uri)
    device = torch.device(ev.device)
    say(f"device {device.type}, {precision.describe(ev.precision, device)}")
    checkpoint = find_input(ev.checkpoint)  # a committed checkpoint is found from any directory
    resized = resized_task(checkpoint, ev.task) if ev.task else None
    denoiser, task, manifest = checkpoints.load_denoiser(checkpoint, resized, map_location=device)
    policy_path = find_input(ev.policy) if ev.policy else (checkpoint if manifest["kind"] == "policy" else None)
    policy = checkpoints.load_policy(policy_path, task, manifest["model"], device) if policy_path else None
    orders = parse_orders(ev.orders, task, policy)
    if ev.reference is not None and ev.reference not in orders:
        raise InputError(f"--reference: {ev.reference!r} is not one of --orders ({', '.join(orders)})")
    scorer = load_scorer(ev.oracle, task)
    instances = data.load_instances(task, ev.data)
    if ev.limit is not None:
        instances = instances.take(slice(0, ev.limit))
    if ev.samples > 1:  # each instance's completions side by side, never split across batches
        instances = instances.take(list(np.repeat(np.arange(len(instances)), ev.samples)))
        ev = dataclasses.replace(ev, batch_size=ev.batch_size // ev.samples * ev.samples)
    params = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "policy": str(Path(policy_path).resolve()) if policy_path else None,
        "policy_description": policy_description(policy) if policy else None,
        "data": str(Path(ev.data).resolve()),
        "orders": ",".join(orders),
        "k": ev.k,
        "threshold": ev.threshold,
        "n": len(instances),
        "seed": ev.seed,
        "token_temperature": ev.token_temperature,
        "order_temperature": ev.order_temperature,
        "task": task_params(task),
        "reference": ev.reference,
        "precision": precision.resolve(ev.precision, device),
    }
    tags = {"aop_ray.stage": "evaluate", "aop_ray.task": task.name}
    parent = Tracker.start(
        uri, ev.experiment, ev.run_name or f"evaluate-{Path(ev.data).name}", params=params, tags=tags
    )
    arrays = {"tokens": instances.tokens, "fixed": instances.fixed, "target": instances.target}
    parent.log_dataset(arrays, Path(ev.data).name, ev.data, "evaluation")
    status = "FAILED"
    try:
        rows, maps, solved = compare_orders(
            denoiser,
            task,
            instances,
            orders,
            ev,
            seed=ev.seed,
            policy=policy,
            progress=ev.progress,
            scorer=scorer,
            reference=ev.reference,
        )
        for row in rows:
            child = Tracker.start(
                uri,
                ev.experiment,
                row["order"],
                params={**params, "order": row["order"]},
                tags={**tags, "aop_ray.order": row["order"]},
                parent=parent.run_id,
            )
            child.log_dataset(arrays, Path(ev.data).name, ev.data, "evaluation")
            child.log_metrics(order_metrics(row), step=0)
            child.log_artifact_bytes(maps[row["order"]], "heatmap.png")
            child.end("FINISHED")
        print(format_table(rows))
        if ev.out:
            write_results(Path(ev.out), rows, maps, solved, instances)
            parent.log_artifact(ev.out, "evaluation")
            say(f"wrote {Path(ev.out).resolve() / 'results.json'}, results.csv, solved.csv and {len(maps)} heat maps")
        status = "FINISHED"
    except BaseException as err:
        status = ended_status(err)
        raise
    finally:
        parent.end(status)
    if parent.enabled:
        say(f"{parent.where()} (one child run per order)")
    return rows


def order_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One order's MLflow metrics, with the same names in every order's run so MLflow can chart them side by
    side: the reference order's comparison with itself is exact (no discordant instances, p = 1)."""
    metrics = numeric(row)
    if row.get("reference") == row["order"]:
        metrics.update(only_solved=0, only_reference=0, mcnemar_p=1.0)
    return metrics


def resized_task(checkpoint: str | Path, fields: dict[str, Any]) -> Task:
    """The checkpoint's task with `fields` replaced, refused unless its denoiser is size-free: other weights
    are tied to the size they were trained at (a SAT literal embedding per variable number)."""
    manifest = checkpoints.read_manifest(checkpoint)
    if not checkpoints.is_size_free(manifest["model"]):
        raise InputError(
            f"--param: {checkpoint} has weights tied to its task's size (its model is not size_free); "
            f"it runs on {short(manifest['task'], 200)} only"
        )
    if "name" in fields and fields["name"] != manifest["task"].get("name"):
        raise InputError(f"--param name: {checkpoint} is a {short(manifest['task'].get('name'))} checkpoint")
    return make_task({**manifest["task"], **fields}, where="--param")


def evaluation_from_args(args: argparse.Namespace) -> Evaluation:
    if args.renamed_temperature is not None:
        raise InputError("--temperature: renamed to --token-temperature (--order-temperature samples positions)")
    return Evaluation(
        checkpoint=args.checkpoint,
        data=args.data,
        orders=args.orders,
        policy=args.policy,
        reference=args.reference,
        oracle=args.oracle,
        k=args.k,
        threshold=args.threshold,
        limit=args.limit,
        out=args.out,
        batch_size=args.batch_size,
        seed=args.seed,
        task=parse_assignments(args.param, "--param"),
        token_temperature=args.token_temperature,
        order_temperature=args.order_temperature,
        samples=args.samples,
        planner_nll=not args.no_planner_nll,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        experiment=args.experiment,
        run_name=args.run_name,
        mlflow=not args.no_mlflow,
        progress=not args.quiet,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "aop_ray.evaluate",
        description="Decode a dataset with a trained denoiser under several unmasking orders and compare "
        "them: solve rate, cell accuracy, planner NLL (teacher-forced NLL of the reference "
        "under the order), and throughput.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="denoiser or policy checkpoint directory (has manifest.json); a policy checkpoint "
        "brings its own denoiser and enables the 'learned' order",
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="a policy checkpoint to run as 'learned' on the --checkpoint denoiser (must match "
        "its task and model size)",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="a file or directory: Parquet shards, or the task's text format. Sudoku: 81-char "
        "lines ('0'/'.' blanks, optional '// comment'), puzzle,solution CSV, or Project Euler "
        "'Grid NN' files. SAT: DIMACS CNF, one formula per file (SATLIB's as shipped). Protein: "
        "aligned FASTA or A2M of the family",
    )
    parser.add_argument(
        "--orders",
        default="random,confidence,margin,entropy",
        help="comma-separated orders to compare: random, confidence, margin, entropy, the "
        "task's rules (Sudoku: singles) and learned; default: %(default)s",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="ORDER",
        help="one of --orders: every other row also shows the instances only it solves, "
        "only ORDER solves, and the exact McNemar p-value of that paired difference",
    )
    parser.add_argument(
        "--oracle",
        default=None,
        help="protein families: the oracle directory from python -m aop_ray.protein.oracle; adds Potts "
        "energy, below_p5, HMM bits, novelty and batch identity to every row",
    )
    parser.add_argument("--k", type=int, default=1, help="positions revealed per denoiser forward (default 1)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="confidence-threshold decoding: each step also reveals every masked position whose "
        "top-1 probability is >= T (the order's k best are revealed regardless)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N instances")
    parser.add_argument(
        "--samples",
        type=cli.positive_int,
        default=1,
        help="completions per instance (with --token-temperature > 0): rows and solve rates count each "
        "completion; antibody results add `diversity` between the completions of one chain",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="directory for results.csv, results.json, solved.csv (per-instance outcomes, for "
        "python -m aop_ray.paired) and heatmap_<order>.png",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="instances decoded together (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random order and sampling")
    parser.add_argument(
        "--token-temperature", type=float, default=0.0, help="token sampling temperature; 0 = argmax (default)"
    )
    parser.add_argument(
        "--temperature", dest="renamed_temperature", default=None, help="renamed to --token-temperature (refused)"
    )
    parser.add_argument(
        "--order-temperature",
        type=float,
        default=0.0,
        help="0 (default): reveal the best-scored position; > 0: sample positions from "
        "softmax(score / T), e.g. to draw diverse orders from a learned policy",
    )
    parser.add_argument(
        "--no-planner-nll", action="store_true", help="skip the teacher-forced planner-NLL pass (halves the cost)"
    )
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="task parameter in place of the checkpoint's, repeatable, e.g. --param n_vars=50 --param "
        "n_clauses=218: a size-free denoiser (model.size_free) and its clause-graph policy run on formulas "
        "of another size",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="network forwards in fp32 or bf16 autocast; auto (default): bf16 where the device has bf16 units "
        "(a GPU with them, a CPU with avx512_bf16 or amx_bf16), else fp32",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--experiment", default="aop-ray-eval", help="MLflow experiment (default %(default)s)")
    parser.add_argument("--run-name", default=None, help="MLflow run name (default evaluate-<data name>)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run_evaluation(evaluation_from_args(args)), args.debug)


if __name__ == "__main__":
    sys.exit(main())
