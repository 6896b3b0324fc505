"""MLflow, behind one small class that addresses runs by id.

Runs are addressed through `MlflowClient` and an explicit run id rather than
MLflow's process-global "active run", because a run is opened by the driver
and then written to from a Ray worker in another process (or node).

Local default: `sqlite:///mlflow.db` in the working directory with artifacts in
`./mlartifacts`, both as absolute paths so Ray workers running in other
directories write to the same place. `MLFLOW_TRACKING_URI` or the config's
`mlflow.tracking_uri` point elsewhere (a tracking server on a cluster).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from aop_ray.config import flatten
from aop_ray.errors import InputError, Terminated
from aop_ray.outputs import exclusive

for _noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI, with a relative sqlite or file path made absolute.

    Ray workers run in another working directory, so `sqlite:///mlflow.db`
    must be pinned to the driver's before it travels to them.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path.cwd() / uri[len("sqlite:///") :])
    if "://" not in uri and not uri.startswith("/"):  # a bare path means a file store
        return str(Path.cwd() / uri)
    return uri


# Ours are model-training experiments. An earlier MLflow 3 UI opened an untagged experiment in its GenAI view;
# 3.18 follows its GenAI / Model training switch instead (docs/cluster.md) and shows the tag as the kind.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
PARENT_TAG = "mlflow.parentRunId"


SOURCE_COMMIT_ENV = "AOP_RAY_SOURCE_COMMIT"


@functools.cache
def source_tags() -> dict[str, str]:
    """The code a run came from: the git commit of this checkout (and whether it had local changes).

    Read from the package's own directory. Ray's working-directory copy of a job leaves `.git`
    behind, so a job passes its commit in `AOP_RAY_SOURCE_COMMIT` (docs/cluster.md's submit command
    does); with neither, the run has no commit tag, and that is never an error.
    """
    main = sys.modules.get("__main__")
    entry = getattr(getattr(main, "__spec__", None), "name", "") or ""
    tags = {"mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_ID") else "LOCAL"}
    if entry.startswith("aop_ray."):
        tags["mlflow.source.name"] = f"python -m {entry}"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        commit = status = None
    if commit is not None and commit.returncode == 0 and commit.stdout.strip():
        tags["mlflow.source.git.commit"] = commit.stdout.strip()
        tags["aop_ray.source.dirty"] = str(bool(status.stdout.strip())).lower()
    elif os.environ.get(SOURCE_COMMIT_ENV):
        tags["mlflow.source.git.commit"] = os.environ[SOURCE_COMMIT_ENV].strip()
    return tags


def _local_artifact_root(uri: str) -> str | None:
    """Artifact root beside a local sqlite store; None lets a server decide."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _writes_finish() -> Iterator[None]:
    """Act on a Ctrl-C or SIGTERM that arrives during an MLflow write after the write, not inside it.

    Interrupted mid-transaction, a sqlite store's connection is left holding its write lock, and the
    `end("KILLED")` that follows in a `finally` then waits on it: an interrupted evaluation hung instead
    of exiting. Python signal handlers run in the main thread only, so this guards writes made there
    (a CLI's); Ray Train workers log from another thread, where signals never land."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _: caught.append(number)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)  # Python's KeyboardInterrupt, the CLI's Terminated
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def _uninterrupted(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _writes_finish():
            return method(*args, **kwargs)

    return wrapper


class Tracker:
    """One MLflow run. A disabled tracker (`uri=None`) accepts every call and does nothing. Its writes
    finish before a Ctrl-C or SIGTERM is acted on (`_writes_finish`)."""

    def __init__(self, uri: str | None, run_id: str | None = None) -> None:
        self.uri = uri
        self.run_id = run_id
        self._client = None
        self._logged_through = -1  # steps up to here are already in the run's history (a resumed run)
        if uri is not None:
            self._client = client_for(uri)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @classmethod
    def start(
        cls,
        uri: str | None,
        experiment: str,
        run_name: str,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        reuse: dict[str, str] | None = None,
        parent: str | None = None,
    ) -> Tracker:
        """Open a new run (the MLflow store must be reachable: checked before any compute).

        With `reuse` (identifying tags, also set on the new run), a run that already carries
        them is reopened instead: a Tune trial restarted after a restore continues its own
        run rather than leaving a duplicate behind.
        """
        tracker = cls(uri)
        if tracker._client is None:
            return tracker
        client = tracker._client
        exp_id = experiment_id(client, uri, experiment, create=True)
        tags = {**source_tags(), **(tags or {}), **(reuse or {}), **({PARENT_TAG: parent} if parent else {})}
        found = find_runs(client, exp_id, reuse) if reuse else []
        if found:
            tracker.run_id = found[0].info.run_id
            tracker.reopen()
            return tracker
        with _writes_finish():
            run = client.create_run(exp_id, run_name=run_name, tags=tags)
            tracker.run_id = run.info.run_id
            tracker.log_params(params or {})
        return tracker

    @_uninterrupted
    def log_params(self, params: dict[str, Any]) -> None:
        if self._client is None or not params:
            return
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[start : start + 100])

    def continue_history(self) -> None:
        """For a resumed run, which recomputes the steps since its last checkpoint: later `log_metrics`
        calls skip the steps MLflow already holds, so every step appears once in a metric's history."""
        if self._client is None or self.run_id is None:
            return
        keys = self._client.get_run(self.run_id).data.metrics
        steps = [m.step for key in keys for m in self._client.get_metric_history(self.run_id, key)]
        self._logged_through = max(steps, default=-1)

    @_uninterrupted
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._client is None or step <= self._logged_through:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        if items:
            self._client.log_batch(self.run_id, metrics=items)

    @_uninterrupted
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._client is None:
            return
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    @_uninterrupted
    def log_artifact_bytes(self, content: bytes, name: str) -> None:
        """One in-memory file (a heat map) as an artifact at the run's root."""
        if self._client is None:
            return
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_bytes(content)
            self._client.log_artifact(self.run_id, str(Path(tmp) / name))

    @_uninterrupted
    def log_dataset(self, arrays: dict[str, np.ndarray], name: str, source: str | Path, context: str) -> None:
        """Record a dataset as the run's input (MLflow's Datasets panel): its name, source path and a
        content digest, so two runs can be checked to have seen the same instances."""
        if self._client is None:
            return
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # MLflow registers two equal local-file sources and warns about it
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(arrays, source=Path(source).absolute().as_uri(), name=name)
        self._client.log_inputs(
            self.run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])]
        )

    @_uninterrupted
    def set_tag(self, key: str, value: str) -> None:
        if self._client is not None:
            self._client.set_tag(self.run_id, key, value)

    def where(self) -> str:
        """Where to find this run: its id and tracking URI (what `mlflow ui --backend-store-uri` takes)."""
        if self._client is None:
            return "MLflow: off (--no-mlflow)"
        return f"MLflow run {self.run_id} at {self.uri}"

    @_uninterrupted
    def reopen(self) -> None:
        """Mark an ended run RUNNING again: a resumed sweep continues its parent run."""
        if self._client is not None and self.run_id is not None:
            self._client.update_run(self.run_id, status="RUNNING")

    @_uninterrupted
    def end(self, status: str = "FINISHED") -> None:
        if self._client is not None and self.run_id is not None:
            self._client.set_terminated(self.run_id, status=status)


def ended_status(err: BaseException) -> str:
    """The MLflow status of a run ended by `err`: KILLED when the user stopped it (Ctrl-C, SIGTERM)."""
    return "KILLED" if isinstance(err, (KeyboardInterrupt, Terminated)) else "FAILED"


def _unreachable(uri: str, err: Exception) -> InputError:
    first = (str(err).splitlines() or [""])[0][:200]
    return InputError(
        f"MLflow tracking URI {uri!r} is unreachable ({type(err).__name__}: {first}); "
        f"fix MLFLOW_TRACKING_URI or pass --no-mlflow"
    )


def client_for(uri: str) -> Any:
    """An `MlflowClient`; a store that cannot even be opened (e.g. a sqlite file under a regular
    file) is an `InputError` naming the URI, not a traceback."""
    from mlflow.tracking import MlflowClient

    try:
        if not uri.startswith("sqlite:///"):
            return MlflowClient(tracking_uri=uri)
        # MLflow creates a new sqlite store's schema when a client first opens it, and two processes doing
        # that at once collide ("table already exists"): opening is serialised by a lock beside the file.
        database = Path(uri[len("sqlite:///") :])
        lock = database.with_name(database.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
        with exclusive(lock, uri, wait=True):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        return client
    except Exception as err:  # any store failure means "unreachable" to the user
        raise _unreachable(uri, err) from None


def experiment_id(client: Any, uri: str, name: str, create: bool = False) -> str | None:
    """The experiment's id (created if asked); an unreachable store is an `InputError`, not a traceback."""
    try:
        exp = client.get_experiment_by_name(name)
        if exp is None and create:
            return client.create_experiment(name, artifact_location=_local_artifact_root(uri), tags=EXPERIMENT_TAGS)
        if exp is not None and create:
            for key, value in EXPERIMENT_TAGS.items():
                if exp.tags.get(key) != value:  # made by an older version, or by another tool
                    client.set_experiment_tag(exp.experiment_id, key, value)
    except Exception as err:  # any store failure means "unreachable" to the user
        raise _unreachable(uri, err) from None
    return exp.experiment_id if exp else None


def check_reachable(uri: str | None, experiment: str) -> None:
    """Refuse an unreachable store before any compute (data generation, training), creating nothing."""
    if uri is not None:
        experiment_id(client_for(uri), uri, experiment)


def find_runs(client: Any, exp_id: str, tags: dict[str, str], status: str | None = None) -> list[Any]:
    """Every run of the experiment carrying all `tags` (values are ids: no quoting needed), oldest first."""
    clauses = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp_id], " and ".join(clauses), max_results=1000, page_token=token, order_by=["attributes.start_time ASC"]
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
