"""Where a run's outputs may go: never into Ray's temporary copy of the working directory.

`ray job submit --working-dir .` runs the entry point inside a copy of the directory
(`<session>/runtime_resources/working_dir_files/_ray_pkg_<hash>/`) that Ray deletes when
the cluster goes, and that other nodes do not see. A relative default (`runs/`,
`sqlite:///mlflow.db`, `--out results`) resolves into that copy. Such a setting is refused
before any compute, naming the setting and how to point it somewhere durable; a job never
loses its outputs silently. Inputs in the copy are fine: every node has the same copy of
committed files, and datasets reach the workers through Ray's object store.
"""

from __future__ import annotations

import os
from pathlib import Path

from aop_ray.errors import InputError


def working_copy_root(path: str | Path) -> Path | None:
    """The root of Ray's working-directory copy that `path` lies in, or None."""
    parts = Path(path).parts
    for i in range(1, len(parts) - 1):
        if (
            parts[i] == "working_dir_files"
            and parts[i - 1] == "runtime_resources"
            and parts[i + 1].startswith("_ray_pkg_")
        ):
            return Path(*parts[: i + 2])
    return None


def is_remote(location: str) -> bool:
    """A URI such as s3:// or gs:// (never inside a local copy)."""
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> Path:
    """An output location as an absolute local path, relative ones against the working directory."""
    return Path(location.removeprefix("file://")).expanduser().absolute()


def check_durable(setting: str, location: str | Path | None, how: str | None = None) -> None:
    """Refuse an output `location` inside Ray's working-directory copy, naming `setting` and `how` to set it."""
    how = how or f"set {setting} to an absolute path every node sees (shared storage) or s3://"
    if location is None or is_remote(str(location)):
        return
    path = local_path(str(location))
    root = working_copy_root(path)
    if root is not None:
        raise InputError(
            f"{setting}: {str(location)!r} is inside Ray's temporary copy of the job's working "
            f"directory (deleted with the job, unseen by other nodes); {how}"
        )


def check_tracking_uri(uri: str | None) -> None:
    """Refuse a local MLflow store (sqlite file or file store) inside Ray's working-directory copy."""
    if uri is None:
        return
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
    elif "://" not in uri or uri.startswith("file://"):
        path = uri
    else:
        return  # a tracking server, database or remote store
    check_durable(
        "MLFLOW_TRACKING_URI",
        path if Path(path).is_absolute() else os.path.join(os.getcwd(), path),
        "set it in --runtime-env-json's env_vars to a tracking server or an absolute "
        "sqlite:////shared/mlflow.db, or pass --no-mlflow",
    )


def on_this_node(path: str | Path) -> Path:
    """A path the driver resolved inside its copy of the job's working directory, as the same file in this
    process's copy: every node unpacks its own copy, under its own Ray temp dir."""
    path = Path(path)
    root, here = working_copy_root(path), working_copy_root(Path(__file__).resolve())
    if root is None or here is None or root == here:
        return path
    return here / path.relative_to(root)
