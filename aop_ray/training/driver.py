"""The Ray Train driver: checks, data and MLflow on the driver, then a `TorchTrainer` of `train_loop`.

The driver validates the config, refuses outputs that would be lost, reads or generates the
datasets, opens the MLflow run (failing fast if the store is unreachable), and launches the
trainer. Everything the workers read (datasets, the denoiser's weights) reaches them through
Ray's object store. With no `RAY_ADDRESS` a local Ray is started; under `ray job submit` (or
with `RAY_ADDRESS` set) the run goes to that cluster.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from aop_ray import checkpoints, cli, data, ray_session
from aop_ray.cli import say
from aop_ray.config import Config, ModelConfig, flatten, parse_dataclass
from aop_ray.errors import InputError, Terminated
from aop_ray.locations import check_durable, check_tracking_uri, on_this_node
from aop_ray.models.denoiser import frozen_pretrained
from aop_ray.orders import order_names
from aop_ray.outputs import write_atomic
from aop_ray.protein.potts import Potts
from aop_ray.readers import read_json_object
from aop_ray.tasks import Instances
from aop_ray.tracking import Tracker, check_reachable, ended_status, resolve_uri
from aop_ray.training.loop import train_loop

RUN_STATE = "aop_run.json"  # in the run directory: the MLflow run id and config, for --resume


def _run_dir(cfg: Config) -> Path:
    return Path(cfg.ray.storage_path).expanduser().resolve() / cfg.name


def _strip_optimizer(src: Path, dst: Path) -> Path:
    """The final, inference-only checkpoint: the manifest and the model weights, no optimizer state."""
    manifest = checkpoints.read_manifest(src)
    manifest.pop("format", None)
    model = parse_dataclass(ModelConfig, manifest["model"], f"{src}: model")
    frozen = frozen_pretrained(model, manifest.get("stage", "denoiser"))  # the loop saved no copy of it
    names = (["denoiser"] if not frozen else []) + (["policy"] if manifest["kind"] == "policy" else [])
    return checkpoints.write_checkpoint(dst, manifest, {n: checkpoints.load_tensors(src, n) for n in names})


@dataclasses.dataclass
class StageData:
    """A stage's train and validation sets, read (or generated) on the driver.

    They go to the workers through Ray's object store, never as paths: a path the driver
    can read may not exist on another node, or in another node's copy of a job's working
    directory. A sweep reads them once and hands them to every trial the same way.
    """

    train: Instances
    train_path: Path
    val: Instances | None = None
    val_path: Path | None = None

    @classmethod
    def load(cls, cfg: Config, task: Any) -> StageData:
        train_path = data.dataset_path(cfg.data.train, task, "train")
        val_path = data.dataset_path(cfg.data.val, task, "val") if cfg.data.val is not None else None
        return cls(
            data.load_instances(task, train_path),
            train_path,
            data.load_instances(task, val_path) if val_path else None,
            val_path,
        )


def run(
    cfg: Config,
    resume: bool = False,
    mlflow: bool = True,
    tracker: Tracker | None = None,
    callbacks: tuple = (),
    stage_data: StageData | None = None,
) -> Path:
    """Train as configured; returns the final checkpoint directory.

    A caller that owns the MLflow run (a Tune trial) passes its `tracker`: the
    curves go there and the run is left open for the caller to end. `callbacks`
    are Ray Train callbacks (a trial passes `TuneReportCallback`). `stage_data`,
    when given, replaces reading `cfg.data` (a trial gets it from the sweep's driver).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    task = cfg.build_task()
    check_durable("ray.storage_path", cfg.ray.storage_path)
    check_durable("output", cfg.output, "set output to an absolute path")
    if cfg.output:  # checked now, not after the training: a checkpoint only replaces a checkpoint
        checkpoints.check_replaceable(Path(cfg.output).expanduser().resolve(), "output")
    run_dir = _run_dir(cfg)
    state_file = run_dir / RUN_STATE
    if run_dir.exists() and not resume:
        raise InputError(
            f"name: run directory {run_dir} already exists; pass --resume to continue it, or set name=<new name>"
        )
    # The state file is the run's first write: a run directory without it never reached its first step.
    restart = resume and not state_file.is_file()
    if restart:
        if not run_dir.is_dir():
            raise InputError(f"--resume: no run to resume at {run_dir}")
        say(f"{run_dir} holds no run state (stopped before it started): starting it from step 0")
        resume = False
    if resume and (run_dir / "final" / checkpoints.MANIFEST).is_file():
        say(f"run {run_dir} already finished: final checkpoint {run_dir / 'final'}")
        return run_dir / "final"

    saved_state = read_json_object(state_file, "run state") if resume else {}  # refused before any work
    if resume and not (
        isinstance(saved_state.get("config"), dict) and isinstance(saved_state.get("mlflow_run_id"), (str, type(None)))
    ):
        raise InputError(f"{state_file}: corrupted run state (expected a 'config' object and an 'mlflow_run_id')")
    owns_run = tracker is None
    uri = resolve_uri(cfg.mlflow.tracking_uri) if (mlflow and cfg.mlflow.enabled) else None
    if owns_run:
        check_tracking_uri(uri)
        check_reachable(uri, cfg.mlflow.experiment)

    denoiser_state = None
    if cfg.aop.denoiser_checkpoint:  # the denoiser's architecture comes from its checkpoint
        denoiser, _, manifest = checkpoints.load_denoiser(on_this_node(cfg.aop.denoiser_checkpoint), task)
        cfg = dataclasses.replace(cfg, model=parse_dataclass(ModelConfig, manifest["model"], "model"))
        denoiser_state = denoiser.state_dict()
        if cfg.train.stage == "denoiser":
            say(f"continuing the denoiser {cfg.aop.denoiser_checkpoint} (its step {manifest.get('step', '?')})")
    energy_model = None  # (h, J) of the Potts model that aop.target energy scores draws with
    if cfg.aop.energy_model:
        potts = Potts.load(on_this_node(cfg.aop.energy_model), L=task.seq_len)
        energy_model = (potts.h, potts.J)
    if cfg.train.stage != "denoiser":
        if cfg.aop.trajectory_order not in order_names(task) or cfg.aop.trajectory_order == "learned":
            raise InputError(
                f"aop.trajectory_order: unknown order {cfg.aop.trajectory_order!r} "
                f"(known: {', '.join(n for n in order_names(task) if n != 'learned')})"
            )
    stage_data = stage_data or StageData.load(cfg, task)
    train_set, train_path, val_path = stage_data.train, stage_data.train_path, stage_data.val_path
    val = None if stage_data.val is None else _val_arrays(stage_data.val.take(slice(0, cfg.train.eval_instances)))

    if resume:
        _check_resumed_config(saved_state["config"], cfg, state_file)
    if not owns_run:
        if not resume:
            tracker.log_params(cfg.to_dict())
    elif resume:
        tracker = Tracker(uri, saved_state.get("mlflow_run_id"))
        if tracker.enabled and tracker.run_id is None:
            raise InputError(f"--resume: {state_file} has no MLflow run id; rerun with --no-mlflow")
        tracker.reopen()  # a run stopped by Ctrl-C was marked KILLED; it is running again
    else:
        tracker = Tracker.start(
            uri,
            cfg.mlflow.experiment,
            cfg.name,
            params=cfg.to_dict(),
            tags={"aop_ray.stage": cfg.train.stage, "aop_ray.task": task.name},
        )
    if not resume:
        tracker.log_dataset(_val_arrays(train_set), train_path.name, train_path, "training")
        if val is not None:
            tracker.log_dataset(val, val_path.name, val_path, "validation")
        run_dir.mkdir(parents=True, exist_ok=restart)
        write_atomic(
            state_file, json.dumps({"mlflow_run_id": tracker.run_id, "config": cfg.to_dict()}, indent=2).encode()
        )

    ray_session.connect()
    ray_session.warm_train()
    # Everything the workers read travels through the object store: no worker opens a path
    # that only the driver's node (or the driver's copy of a job's working directory) has.
    inputs = ray.put(
        {
            "train": {"fixed": train_set.fixed, "target": train_set.target},
            "val": val,
            "denoiser_state": denoiser_state,
            "energy_model": energy_model,
        }
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": cfg.to_dict(),
            "tracking_uri": tracker.uri,
            "run_id": tracker.run_id,
            "inputs": inputs,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            placement_strategy=cfg.ray.placement_strategy,
            resources_per_worker=None if cfg.ray.use_gpu else {"CPU": cfg.ray.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=str(run_dir.parent),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.checkpoint_keep),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
            callbacks=list(callbacks),
        ),
    )
    status = "FAILED"
    try:
        try:
            result = trainer.fit()
        except SystemExit:  # Ray Train turns Ctrl-C (or our SIGTERM) during fit into an aborted run and this
            raise (Terminated() if cli.terminated() else KeyboardInterrupt()) from None
        final = _strip_optimizer(Path(result.checkpoint.path), run_dir / "final")
        _prune_checkpoints(run_dir, cfg.train.checkpoint_keep)
        if cfg.output and Path(cfg.output).expanduser().resolve() != final:
            _strip_optimizer(final, Path(cfg.output).expanduser().resolve())
        tracker.log_artifact(final, "checkpoint")
        tracker.set_tag("aop_ray.checkpoint", str(final))
        status = "FINISHED"
    except BaseException as err:
        status = ended_status(err)
        if status == "KILLED":
            say(f"stopped; continue from the last checkpoint with --resume ({run_dir})")
        raise
    finally:
        if owns_run:
            tracker.end(status)
    say(f"final checkpoint: {final}" + (f" (copied to {cfg.output})" if cfg.output else ""))
    if owns_run:
        say(tracker.where())
    return final


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints: Ray Train prunes only those its current session registered, so a
    run stopped and resumed would otherwise keep the stopped session's too. Their names sort by time."""
    for old in sorted(run_dir.glob("checkpoint_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _check_resumed_config(saved: dict[str, Any], cfg: Config, state_file: Path) -> None:
    """A resumed run must be the run that was started: a changed value would silently mix two experiments."""
    ours, theirs = flatten(json.loads(json.dumps(cfg.to_dict()))), flatten(saved)
    changed = [
        key
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key) and not (key not in theirs and _is_default(cfg, key))
    ]
    if changed:
        key = changed[0]
        raise InputError(
            f"--resume: {key} is {ours.get(key)!r} but the run was started with {theirs.get(key)!r} "
            f"({state_file}); rerun the original command, or start a new run with name=<new name>"
        )


def _is_default(cfg: Config, key: str) -> bool:
    """Whether the dotted config field `key` holds its default: a field added since a run was started (missing
    from its saved config) does not stop it from resuming unless it was set."""
    *parents, name = key.split(".")
    node: Any = cfg
    for part in parents:
        node = getattr(node, part, None)
    field = (
        next((f for f in dataclasses.fields(node) if f.name == name), None) if dataclasses.is_dataclass(node) else None
    )
    return field is not None and field.default is not dataclasses.MISSING and getattr(node, name) == field.default


def _val_arrays(instances: Instances) -> dict[str, np.ndarray]:
    return {"tokens": instances.tokens, "fixed": instances.fixed, "target": instances.target}
