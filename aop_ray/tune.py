"""Ray Tune sweeps that compare orders: `python -m aop_ray.tune --config tune_configs/NAME.yaml`.

One trial per (order, seed) and, for `learned`, per hyper-parameter setting. A
heuristic trial decodes the test set with the denoiser checkpoint. A `learned`
trial trains its policy first: it calls `train.run`, which launches a Ray Train
`TorchTrainer` from inside the trial (the Ray 2.60 pattern: a unique
`train-trial_id=<id>` run name and `TuneReportCallback`, so the training curves
reach Tune), then decodes the same test set with the policy.

MLflow: the sweep is a parent run, every trial a child run carrying the trial's
params, curves, result table, heat map and checkpoint path. Trial runs are found
again by their trial id, so a trial restarted after `--resume` continues its own
run instead of leaving a duplicate; the driver closes the run of every trial
that ends (finished, failed or stopped early), so none stays RUNNING. The sweep
ends with a summary (order x metric, mean ± std over seeds, and a bar chart)
that `python -m aop_ray.report` rebuilds from MLflow alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from aop_ray import checkpoints, cli, data, ray_session, report
from aop_ray.allocator import keep_freed_memory
from aop_ray.cli import run_main, say
from aop_ray.config import Config, Domain, SweepConfig, apply_override, load_config, make_task, parse_dataclass
from aop_ray.errors import InputError
from aop_ray.evaluate import compare_orders, load_scorer, numeric, write_results
from aop_ray.locations import check_durable, check_tracking_uri, on_this_node
from aop_ray.orders import get_order, order_names
from aop_ray.outputs import write_atomic
from aop_ray.readers import read_text
from aop_ray.tracking import Tracker, check_reachable, client_for, experiment_id, find_runs, resolve_uri

SWEEP_STATE = "aop_sweep.json"  # in the sweep directory: the resolved config and MLflow ids, for --resume
INTERRUPTED, TERMINATED = 130, 143  # exit codes of a sweep stopped by Ctrl-C, by SIGTERM


@dataclasses.dataclass
class SweepState:
    """Everything a sweep resolved on its driver: written to `aop_sweep.json` for `--resume`, handed to every
    trial. Paths are absolute, since trials run in other directories, maybe on other nodes."""

    spec: SweepConfig
    sweep_dir: str
    denoiser: str
    tracking_uri: str | None
    train_config: Config | None = None  # the learned trials' base config, datasets resolved
    concurrency: int = 1
    eval_data: str = ""
    oracle: str | None = None
    parent_run_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> SweepState:
        """The state saved by `to_json`; anything else is one line naming the file."""
        try:
            return parse_dataclass(cls, json.loads(text), "")
        except json.JSONDecodeError as err:
            raise InputError(f"{where}:{err.lineno}: not a sweep state ({err.msg})") from None
        except InputError as err:
            raise InputError(f"{where}: not this version's sweep state ({err})") from None


# ----------------------------------------------------------------------------- trial side
def group_label(order: str, search: dict[str, Any]) -> str:
    """What seeds are averaged over: the order, plus the searched values of a learned trial.

    Only characters MLflow allows in metric names (the parent run logs `<group>/<metric>`).
    """
    values = [
        f"{key.rsplit('.', 1)[-1]}:{value:.3g}" if isinstance(value, float) else f"{key.rsplit('.', 1)[-1]}:{value}"
        for key, value in sorted(search.items())
    ]
    return " ".join([order, *values])


def learned_config(state: SweepState, seed: int, search: dict[str, Any], trial_id: str) -> Config:
    """The training config of one learned trial: the sweep's resolved base config + its search values and seed.

    The base config was read and its paths made absolute on the driver: a trial runs in
    another working directory, possibly on another node.
    """
    assert state.train_config is not None  # prepare() sets it whenever learned is among the orders
    base = state.train_config.to_dict()
    for key, value in search.items():
        apply_override(base, f"{key}={json.dumps(value)}")
    base["train"]["seed"] = seed
    base["name"] = f"train-trial_id={trial_id}"
    base["ray"]["storage_path"] = str(Path(state.sweep_dir) / "train")
    return Config.from_dict(base)


def run_trial(config: dict[str, Any], state: SweepState, inputs: dict[str, Any]) -> None:
    """One Tune trial: (train a policy, then) decode the test set under the trial's order.

    `inputs` (the test set and the policy's train/validation sets) come from the driver through
    the object store, so a trial on any node reads no dataset path.
    """
    import torch
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from aop_ray.training import driver

    keep_freed_memory()  # a trial runs in its own Ray worker process (aop_ray/allocator.py)
    spec = state.spec
    trial_id = tune.get_context().get_trial_id()
    order, seed, search = config["order"], config["seed"], config.get("search", {})
    torch.set_num_threads(spec.resources.eval_threads)
    group = group_label(order, search)
    tracker = Tracker.start(
        state.tracking_uri,
        spec.mlflow.experiment,
        f"{group}-seed{seed}",
        params={"order": order, "seed": seed, "group": group, **{f"search.{k}": v for k, v in search.items()}},
        tags={
            report.ROLE_TAG: "trial",
            report.ORDER_TAG: order,
            report.GROUP_TAG: group,
            "mlflow.parentRunId": state.parent_run_id or "",
        },
        reuse={report.SWEEP_TAG: state.parent_run_id or "", "aop_ray.trial_id": trial_id},
    )
    status = "FAILED"
    try:
        checkpoint, policy, final = on_this_node(state.denoiser), None, {}
        if order == "learned":
            cfg = learned_config(state, seed, search, trial_id)
            resume = (Path(cfg.ray.storage_path) / cfg.name / driver.RUN_STATE).is_file()
            checkpoint = driver.run(
                cfg, resume=resume, tracker=tracker, callbacks=(TuneReportCallback(),), stage_data=inputs["stage_data"]
            )
        denoiser, task, manifest = checkpoints.load_denoiser(checkpoint)
        if order == "learned":
            policy = checkpoints.load_policy(checkpoint, task, manifest["model"])
            final = manifest.get("metrics", {})
        instances = inputs["eval"]
        ev = spec.evaluate
        instances = instances.take(slice(0, ev.limit)) if ev.limit else instances
        orders = {order: get_order(order, policy=policy, task=task)}
        rows, maps, solved = compare_orders(
            denoiser,
            task,
            instances,
            orders,
            ev,
            seed=seed,
            policy=policy,
            progress=False,
            scorer=load_scorer(state.oracle and str(on_this_node(state.oracle)), task),
        )
        out = Path(state.sweep_dir) / "evaluations" / trial_id
        write_results(out, rows, maps, solved, instances)
        metrics = numeric(rows[0])
        tracker.log_metrics(metrics, step=int(final.get("step", 0)))
        tracker.log_artifact(out, "evaluation")
        tracker.set_tag("aop_ray.checkpoint", str(checkpoint))
        tracker.set_tag("aop_ray.precision", rows[0]["precision"])
        tune.report(
            {
                **{k: v for k, v in final.items() if isinstance(v, (int, float))},
                **metrics,
                "order": order,
                "group": group,
                "precision": rows[0]["precision"],
                "checkpoint": str(checkpoint),
            }
        )
        status = "FINISHED"
    finally:
        tracker.end(status)


def trial_resources(config: dict[str, Any], resources: dict[str, float]) -> Any:
    """A learned trial holds little itself: its Train workers are scheduled by its own TorchTrainer."""
    from ray import tune

    cpus = resources["trainer_cpus"] if config["order"] == "learned" else resources["eval_cpus"]
    return tune.PlacementGroupFactory([{"CPU": cpus}])


# ----------------------------------------------------------------------------- driver side
def _close_trial_runs(
    state: SweepState, status: str, trial_id: str | None = None, replace: tuple[str, ...] = ("RUNNING",)
) -> None:
    """Set the runs of one trial (or of every trial) that are in a `replace` status to `status`.

    The trial could not: Tune killed it (scheduler stop, interrupt), or it died.
    """
    if state.parent_run_id is None:
        return
    client = client_for(state.tracking_uri)
    exp_id = experiment_id(client, state.tracking_uri, state.spec.mlflow.experiment)
    tags = {report.SWEEP_TAG: state.parent_run_id, **({"aop_ray.trial_id": trial_id} if trial_id else {})}
    for run in find_runs(client, exp_id, tags):
        if run.info.status in replace:
            client.set_terminated(run.info.run_id, status=status)


def _trial_run_closer(state: SweepState) -> Any:
    from ray import tune

    class TrialRunCloser(tune.Callback):
        """Driver-side: no trial run stays RUNNING after Tune is done with the trial."""

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if "solve_rate" not in (trial.last_result or {}):  # stopped early by the scheduler
                _close_trial_runs(state, "KILLED", trial.trial_id, replace=("RUNNING", "FAILED"))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            _close_trial_runs(state, "FAILED", trial.trial_id)

    return TrialRunCloser()


def _domain(domain: Domain) -> Any:
    from ray import tune

    kind = domain.kind("search")
    value = getattr(domain, kind)
    return {
        "grid": lambda v: tune.grid_search(v),
        "choice": lambda v: tune.choice(v),
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
    }[kind](value)


def _scheduler(spec: SweepConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sc = spec.scheduler
    if sc.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=sc.metric,
        mode=sc.mode,
        max_t=sc.max_t,
        grace_period=sc.grace_period,
        reduction_factor=sc.reduction_factor,
    )


def _inputs(state: SweepState) -> dict[str, Any]:
    """The datasets every trial reads, loaded once on the driver (from the paths `prepare` resolved)."""
    from aop_ray.training import driver

    task = make_task(checkpoints.read_manifest(state.denoiser)["task"])  # the task only: no weights to load
    stage_data = None
    if state.train_config is not None:
        stage_data = driver.StageData.load(state.train_config, state.train_config.build_task())
    return {"eval": data.load_instances(task, state.eval_data), "stage_data": stage_data}


def _trainable(state: SweepState) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial, state=state, inputs=_inputs(state)),
        functools.partial(trial_resources, resources=dataclasses.asdict(state.spec.resources)),
    )


def prepare(spec: SweepConfig, mlflow: bool) -> dict[str, Any]:
    """Everything checked and built before the first trial: configs, resources, denoiser, datasets, MLflow.

    The checks that cost nothing come first, so a typo or an impossible resource plan
    fails before a denoiser is trained or a directory is written.
    """
    import ray

    from aop_ray.training import driver

    check_durable("storage_path", spec.storage_path)
    sweep_dir = Path(spec.storage_path).expanduser().resolve() / spec.name
    if sweep_dir.exists():
        raise InputError(
            f"name: sweep directory {sweep_dir} already exists; continue it with --resume "
            f"{sweep_dir}, or set name=<new name>"
        )
    denoiser = Path(spec.denoiser_checkpoint).expanduser().resolve()
    if not (denoiser / checkpoints.MANIFEST).is_file():
        if not spec.denoiser_config:
            raise InputError(f"denoiser_checkpoint: no checkpoint at {denoiser} (set denoiser_config to train one)")
        check_durable("denoiser_checkpoint", spec.denoiser_checkpoint, "give the denoiser to train an absolute path")
    cfg = None
    if "learned" in spec.orders:  # validate the base config and every searched value now
        cfg = load_config(
            spec.train_config,
            [
                *spec.train_overrides,
                f"aop.denoiser_checkpoint={denoiser}",
                f"mlflow.experiment={spec.mlflow.experiment}",
            ],
        )
        _check_scheduler_metric(spec, cfg)
        for key, domain in spec.search.items():
            for value in domain.probe_values():
                probe = cfg.to_dict()
                try:
                    apply_override(probe, f"{key}={json.dumps(value)}")
                    Config.from_dict(probe)
                except InputError as err:
                    raise InputError(f"search.{key}: {err}") from None
    uri = resolve_uri(spec.mlflow.tracking_uri) if (mlflow and spec.mlflow.enabled) else None
    check_tracking_uri(uri)
    check_reachable(uri, spec.mlflow.experiment)  # before Ray, a denoiser or any data is spent on it
    state = SweepState(spec=spec, sweep_dir=str(sweep_dir), denoiser=str(denoiser), tracking_uri=uri)
    ray_session.connect()
    state.concurrency = spec.resources.max_concurrent_trials
    if spec.resources.fit_to_cluster:
        per_trial = trial_cpus(spec, cfg)
        state.concurrency = fit_concurrency(state.concurrency, per_trial, ray.cluster_resources().get("CPU", 0))
        if state.concurrency < spec.resources.max_concurrent_trials:
            say(
                f"resources: {state.concurrency} trial(s) at once, not {spec.resources.max_concurrent_trials}: "
                f"each reserves up to {per_trial:g} CPUs"
            )

    if not (denoiser / checkpoints.MANIFEST).is_file():
        say(f"no denoiser at {denoiser}: training it with {spec.denoiser_config}")
        # Its run lives beside the sweep's (the storage the user pointed the sweep at); the final
        # checkpoint is copied to denoiser_checkpoint, where every later sweep finds it.
        driver.run(
            load_config(
                spec.denoiser_config,
                [
                    f"output={denoiser}",
                    f"mlflow.experiment={spec.mlflow.experiment}",
                    f"name={spec.name}-denoiser",
                    f"ray.storage_path={sweep_dir.parent}",
                ],
            ),
            mlflow=mlflow,
        )
    _, task, manifest = checkpoints.load_denoiser(denoiser)
    for name in spec.orders:
        if name not in order_names(task):
            raise InputError(
                f"orders: unknown order {name!r} for task {task.name} (known: {', '.join(order_names(task))})"
            )
    if cfg is not None:  # paths made absolute: trials run in other directories, maybe on other nodes
        checkpoints.check_task(manifest, cfg.build_task(), str(spec.train_config))
        cfg.data.train.path = str(data.dataset_path(cfg.data.train, task, "train"))
        if cfg.data.val is not None:
            cfg.data.val.path = str(data.dataset_path(cfg.data.val, task, "val"))
        state.train_config = cfg
    state.eval_data = str(data.dataset_path(spec.evaluate.data, task, "evaluate"))
    state.oracle = str(Path(spec.evaluate.oracle).expanduser().resolve()) if spec.evaluate.oracle else None
    load_scorer(state.oracle, task)  # refuse a wrong oracle before the first trial
    state.parent_run_id = Tracker.start(
        uri,
        spec.mlflow.experiment,
        spec.name,
        params={
            "orders": ",".join(spec.orders),
            "seeds": " ".join(map(str, spec.seeds)),
            "denoiser": str(denoiser),
            "eval_data": state.eval_data,
            "eval_limit": spec.evaluate.limit,
            "scheduler": spec.scheduler.type,
            "search": json.dumps({k: dataclasses.asdict(d) for k, d in spec.search.items()}),
        },
        tags={report.ROLE_TAG: "sweep", "aop_ray.task": task.name},
    ).run_id
    sweep_dir.mkdir(parents=True)
    write_atomic(sweep_dir / SWEEP_STATE, state.to_json().encode())
    return state


def _check_scheduler_metric(spec: SweepConfig, cfg: Config) -> None:
    """ASHA needs its metric in every report, and must not stop a trial before its final evaluation."""
    if spec.scheduler.type != "asha":
        return
    tc = cfg.train
    if spec.scheduler.metric.startswith("val_") and not (
        tc.eval_every and tc.log_every % tc.eval_every == 0 and tc.checkpoint_every % tc.eval_every == 0
    ):
        raise InputError(
            f"scheduler.metric: {spec.scheduler.metric} is reported only at evaluations; set "
            f"train.eval_every to divide train.log_every and train.checkpoint_every "
            f"(now {tc.eval_every}, {tc.log_every}, {tc.checkpoint_every})"
        )
    reports = sum(
        1
        for step in range(1, tc.steps + 1)
        if step == tc.steps
        or step % tc.log_every == 0
        or step % tc.checkpoint_every == 0
        or (tc.eval_every and step % tc.eval_every == 0)
    )
    if spec.scheduler.max_t < reports + 1:
        raise InputError(
            f"scheduler.max_t: a trial reports {reports} times while training and once more after "
            f"its test-set evaluation; max_t {spec.scheduler.max_t} would cut that off (use "
            f"{reports + 1})"
        )


def expected_trials(spec: SweepConfig) -> int:
    """How many trials the sweep has when complete (Tune creates them lazily, so a result grid may hold fewer)."""
    grid = math.prod(len(d.grid) for d in spec.search.values() if d.grid is not None)
    return len(spec.orders) * len(spec.seeds) * grid * spec.num_samples


def trial_cpus(spec: SweepConfig, cfg: Config | None) -> float:
    """The most CPUs one trial reserves: a heuristic trial, or a learned trial with its Train workers."""
    needs = [spec.resources.eval_cpus] if any(o != "learned" for o in spec.orders) else []
    if cfg is not None:
        per_worker = 1.0 if cfg.ray.use_gpu else cfg.ray.cpus_per_worker  # Ray's default beside a GPU
        needs.append(spec.resources.trainer_cpus + cfg.ray.num_workers * per_worker)
    return max(needs)


def fit_concurrency(wanted: int, per_trial: float, cluster_cpus: float) -> int:
    """How many trials fit the cluster at once (a trial waiting for CPUs another holds would wait forever
    behind a learned trial whose Train workers cannot be placed)."""
    fit = int(cluster_cpus / per_trial + 1e-9)
    if fit < 1:
        raise InputError(
            f"resources: one trial reserves {per_trial:g} CPUs, but the "
            f"cluster has {cluster_cpus:g}; lower resources.trainer_cpus, ray.cpus_per_worker or "
            f"ray.num_workers (train_overrides), or add CPUs"
        )
    return min(wanted, fit)


def run_sweep(state: SweepState, resume: bool = False) -> list[dict[str, Any]]:
    """Run (or continue) the sweep; returns the summary rows. Exits 130 when interrupted."""
    from ray import tune

    spec = state.spec
    sweep_dir = Path(state.sweep_dir)
    parent = Tracker(state.tracking_uri, state.parent_run_id)
    ray_session.connect()
    started = time.perf_counter()
    if resume:
        parent.reopen()
        say(f"resuming sweep {sweep_dir}: finished trials are kept, unfinished and failed ones run again")
        tuner = tune.Tuner.restore(
            str(sweep_dir), trainable=_trainable(state), resume_unfinished=True, restart_errored=True
        )
    else:
        param_space = {
            "order": tune.grid_search(spec.orders),
            "seed": tune.grid_search(spec.seeds),
            "search": {key: _domain(d) for key, d in spec.search.items()},
        }
        tuner = tune.Tuner(
            _trainable(state),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=spec.num_samples,
                scheduler=_scheduler(spec),
                max_concurrent_trials=state.concurrency,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(sweep_dir.parent),
                callbacks=[_trial_run_closer(state)],
                verbose=1,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    errors = [r.error for r in tuner.fit() if r.error is not None]
    trials = tune.ExperimentAnalysis(str(sweep_dir)).trials  # Tune's own record, this run's and earlier ones
    ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
    if len(ended) < expected_trials(spec):  # interrupted: Tune saved its state
        _close_trial_runs(state, "KILLED")
        parent.end("KILLED")
        say(
            f"sweep interrupted with {expected_trials(spec) - len(ended)} of {expected_trials(spec)} trials "
            f"unfinished; continue it with: python -m aop_ray.tune --resume {sweep_dir}"
        )
        raise SystemExit(TERMINATED if cli.terminated() else INTERRUPTED)
    records = [
        {
            "trial_id": t.trial_id,
            "order": t.config["order"],
            "group": t.last_result["group"],
            "seed": t.config["seed"],
            "n": t.last_result.get("n", 0),
            **{k: t.last_result[k] for k in report.METRICS if k in t.last_result},
        }
        for t in ended
        if t.status == "TERMINATED" and "solve_rate" in t.last_result
    ]
    stopped = sum(t.status == "TERMINATED" for t in ended) - len(records)
    if stopped:
        say(f"{stopped} trial(s) stopped early by the scheduler: not in the summary")
    failed = len(ended) - len(records) - stopped
    status = "FAILED"
    try:
        rows = _summarize(spec, state, records, started)
        status = "FAILED" if failed else "FINISHED"
    finally:
        parent.end(status)
    if failed:
        first = str(errors[0]).splitlines()[0][:300] if errors else "see the trials' error.txt"
        raise InputError(
            f"{failed} trial(s) failed, first: {first}; see {sweep_dir}; run them again with --resume {sweep_dir}"
        )
    return rows


def _summarize(
    spec: SweepConfig, state: SweepState, records: list[dict[str, Any]], started: float
) -> list[dict[str, Any]]:
    """The sweep's summary: printed, written to <sweep dir>/summary and logged to the parent run."""
    sweep_dir = Path(state.sweep_dir)
    parent = Tracker(state.tracking_uri, state.parent_run_id)
    rows = report.summarize(records)
    title = f"{spec.name}: {len(records)} trials ({(time.perf_counter() - started) / 60:.1f} min in this run)"
    table = report.write_summary(sweep_dir / "summary", rows, records, title)
    parent.log_artifact(sweep_dir / "summary", "summary")
    parent.log_metrics(
        {
            f"{r['group']}/{k}": v
            for r in rows
            for k, v in r.items()
            if k.endswith(("_mean", "_std")) and isinstance(v, float)
        },
        step=0,
    )
    say(f"sweep {spec.name} ({len(records)} finished trials):\n{table}\nsummary: {sweep_dir / 'summary'}")
    say(f"{parent.where()} (one child run per trial)")
    return rows


def load_state(path: str | Path) -> SweepState:
    state_file = Path(path).expanduser().resolve() / SWEEP_STATE
    if not state_file.is_file():
        raise InputError(f"--resume: {state_file} not found (give the sweep directory <storage_path>/<name>)")
    return SweepState.from_json(read_text(state_file), str(state_file))


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "aop_ray.tune",
        description="Run a Ray Tune sweep that compares unmasking orders (or searches the learned policy's "
        "hyper-parameters), with every trial a run in MLflow.",
        epilog="examples: python -m aop_ray.tune --config tune_configs/smoke.yaml | "
        "python -m aop_ray.tune --resume runs/tune/smoke",
    )
    parser.add_argument("--config", default=None, help="sweep YAML (validated: unknown keys are errors)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="dotted.key=value",
        help="override a sweep config value, e.g. seeds=[0,1] evaluate.limit=100",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="PATH",
        help="continue the interrupted sweep in PATH (<storage_path>/<name>) with Tuner.restore",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return parser


def _dispatch(args: argparse.Namespace) -> list[dict[str, Any]]:
    if (args.config is None) == (args.resume is None):
        raise InputError("give --config FILE to start a sweep or --resume PATH to continue one")
    if args.resume:
        if args.overrides:
            raise InputError("--resume continues a sweep as it was configured: overrides are not allowed")
        return run_sweep(load_state(args.resume), resume=True)
    spec = load_config(args.config, args.overrides, cls=SweepConfig)
    return run_sweep(prepare(spec, mlflow=not args.no_mlflow))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _dispatch(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
