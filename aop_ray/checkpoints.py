"""Checkpoints: a directory of tensor-only state dicts plus a JSON manifest.

    <dir>/manifest.json   kind (denoiser | policy), task, sizes, model (and policy) config, step
    <dir>/denoiser.pt     state_dict (tensors only)
    <dir>/policy.pt       policy checkpoints: the order policy, or an ensemble's members (its denoiser sits beside it)
    <dir>/optimizer.pt    optional, for resuming training

Loading uses `torch.load(weights_only=True)`: a checkpoint can never run code.
Writes go to a temporary sibling directory that is renamed into place, so a
crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from aop_ray.config import SIZE_FREE_ENCODERS, ModelConfig, PolicyConfig, make_task, parse_dataclass
from aop_ray.errors import InputError
from aop_ray.models.denoiser import build_denoiser
from aop_ray.models.policies import PolicyEnsemble, PolicyNet, make_policy
from aop_ray.models.pretrained import identity
from aop_ray.outputs import exclusive
from aop_ray.readers import read_json_object, short
from aop_ray.tasks import Task, task_params

FORMAT = "aop-ray-checkpoint/1"
MANIFEST = "manifest.json"
MANIFEST_FIELDS = {"kind": str, "task": dict, "model": dict}  # every checkpoint has these; a policy's also `policy`


def write_checkpoint(path: str | Path, manifest: dict[str, Any], tensors: dict[str, dict[str, Any]]) -> Path:
    """Write `<name>.pt` for each state dict in `tensors` plus the manifest, atomically."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        for name, state in tensors.items():
            torch.save(state, tmp / f"{name}.pt")
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, **manifest}, indent=2))
        with exclusive(path.parent, str(path), wait=True):  # two writers of one path take turns
            check_replaceable(path)
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def check_replaceable(path: Path, setting: str | None = None) -> None:
    """A checkpoint may replace a checkpoint or an empty directory, never anything else a user has there."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            return
        if (path / MANIFEST).is_file():
            with contextlib.suppress(InputError):
                read_manifest(path)
                return
    where = f"{setting}: {path}" if setting else str(path)
    raise InputError(f"{where}: exists and is not an aop-ray checkpoint; refusing to replace it (choose another path)")


def denoiser_manifest(task: Task, model_cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "denoiser",
        "task": task_params(task),
        "vocab_size": task.vocab_size,
        "seq_len": task.seq_len,
        "model": dataclasses.asdict(model_cfg),
        **extra,
    }


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise InputError(f"{path}: not a checkpoint directory (no {MANIFEST})")
    manifest = read_json_object(file, "manifest")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{file}: unknown checkpoint format {short(manifest.get('format'))}, expected {FORMAT!r}")
    for key, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise InputError(f"{file}: field {key!r} must be a JSON {kind.__name__}, got {short(manifest.get(key))}")
    return manifest


def load_tensors(path: str | Path, name: str) -> dict[str, Any]:
    """A state dict saved by `write_checkpoint`, loaded onto the CPU without unpickling arbitrary objects."""
    file = Path(path) / f"{name}.pt"
    if not file.is_file():
        raise InputError(f"{file}: missing from checkpoint")
    try:  # memory-mapped: tensors are read when copied into a model whose shapes were checked
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # whatever a damaged file raises (RuntimeError, OSError, UnpicklingError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{file}: truncated or corrupted checkpoint ({short(first, 160)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{file}: not a state dict (a {type(state).__name__})")
    return state


def check_same(what: str, theirs: dict[str, Any], ours: dict[str, Any], where: str) -> None:
    """Refuse a mismatch of `what` (task, denoiser model), naming the first field that differs."""
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise InputError(
                f"{where}: checkpoint is for {what} {short(theirs, 300)}, not {short(ours, 300)} "
                f"(field {short(key)}: {short(theirs.get(key))} != {short(ours.get(key))})"
            )


def check_task(manifest: dict[str, Any], task: Task, where: str, size_free: bool = False) -> None:
    """Refuse a checkpoint for another task; a `size_free` one runs on its task at any size."""
    theirs = manifest.get("task", {})
    if size_free and isinstance(theirs, dict) and theirs.get("name") == task.name:
        return
    check_same("task", theirs, task_params(task), where)


def is_size_free(model: dict[str, Any]) -> bool:
    """Whether a manifest's denoiser model has no weight tied to the task's size (`model.size_free`)."""
    return model.get("size_free") is True


def policy_manifest(
    task: Task, model_cfg: ModelConfig, policy_cfg: PolicyConfig, stage: str, denoiser_source: str, **extra: Any
) -> dict[str, Any]:
    """A policy checkpoint holds its denoiser too (a copy, or the jointly trained one)."""
    return {
        **denoiser_manifest(task, model_cfg, **extra),
        "kind": "policy",
        "stage": stage,
        "policy": dataclasses.asdict(policy_cfg),
        "denoiser_source": denoiser_source,
    }


def load_denoiser(
    path: str | Path, task: Task | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Task, dict[str, Any]]:
    """The denoiser at `path` (a denoiser or policy checkpoint), its task and manifest.

    Refuses a checkpoint for another `task`; a size-free one (`model.size_free`) is built for `task`'s size.
    """
    manifest = read_manifest(path)
    if manifest.get("kind") not in ("denoiser", "policy"):
        raise InputError(f"{path}: checkpoint kind is {short(manifest['kind'])}, expected 'denoiser' or 'policy'")
    ckpt_task = make_task(manifest["task"], where=f"{path}: task")
    model_cfg = parse_dataclass(ModelConfig, manifest["model"], f"{path}: model")
    if task is not None:
        check_task(manifest, task, str(path), model_cfg.size_free)
        ckpt_task = task  # the checkpoint's own, or another size of it for a size-free model
    if model_cfg.pretrained is not None and not (Path(path) / "denoiser.pt").is_file():
        from aop_ray.models import pretrained  # a frozen pretrained LM: its weights stay where they are

        state = pretrained.load_weights(model_cfg.pretrained, ckpt_task)
    else:
        state = load_tensors(path, "denoiser")
    model = materialise(lambda: build_denoiser(ckpt_task, model_cfg), state, path)
    model.to(map_location).eval()  # load_state_dict copies into the parameters where they are: move after
    return model, ckpt_task, manifest


def materialise(build: Callable[[], nn.Module], state: dict[str, Any], path: str | Path) -> nn.Module:
    """The model `build` makes, holding `state`; its shapes are checked on the meta device first, so a
    manifest claiming a huge model allocates nothing unless the file's tensors are that big too."""
    with torch.device("meta"):
        check_fits(build().state_dict(), state, path)
    model = build()
    model.load_state_dict(state)
    return model


def load_state(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Copy `state` into `model`, refused in one line unless every name and shape matches."""
    check_fits(model.state_dict(), state, path)
    model.load_state_dict(state)


def check_fits(ours: dict[str, Any], theirs: dict[str, Any], path: str | Path) -> None:
    """Refuse weights whose names or shapes differ from the model the manifest describes."""
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs or key not in ours:
            where = "missing from the weights" if key not in theirs else "not in the model"
            raise InputError(f"{path}: weights do not fit the model in its manifest ({key!r} {where})")
        if not isinstance(theirs[key], torch.Tensor) or tuple(ours[key].shape) != tuple(theirs[key].shape):
            got = tuple(theirs[key].shape) if isinstance(theirs[key], torch.Tensor) else type(theirs[key]).__name__
            raise InputError(
                f"{path}: weights do not fit the model in its manifest ({key!r}: the manifest's model has shape "
                f"{tuple(ours[key].shape)}, the weights {got})"
            )


def read_policy_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest at `path`, refused unless it is a policy checkpoint's."""
    manifest = read_manifest(path)
    if manifest.get("kind") != "policy":
        raise InputError(f"{path}: checkpoint kind is {short(manifest.get('kind'))}, expected 'policy'")
    if not isinstance(manifest.get("policy"), dict):
        raise InputError(
            f"{Path(path) / MANIFEST}: field 'policy' must be a JSON dict, got {short(manifest.get('policy'))}"
        )
    return manifest


def load_policy(
    path: str | Path, task: Task, denoiser_model: dict[str, Any], map_location: str | torch.device = "cpu"
) -> PolicyNet | PolicyEnsemble:
    """The policy at `path`, checked against the task and denoiser it will run on
    (an ensemble if its manifest lists `members`)."""
    manifest = read_policy_manifest(path)
    check_same("denoiser model", identity(manifest["model"], f"{path}: model"), identity(denoiser_model), str(path))
    cfg = parse_dataclass(PolicyConfig, manifest["policy"], f"{path}: policy")
    check_task(manifest, task, str(path), is_size_free(denoiser_model) and cfg.encoder in SIZE_FREE_ENCODERS)
    members = manifest.get("members")
    if members is not None and not (isinstance(members, list) and members):
        raise InputError(f"{Path(path) / MANIFEST}: field 'members' must be a non-empty list, got {short(members)}")

    def build() -> nn.Module:
        if members:
            return PolicyEnsemble([make_policy(task, denoiser_model["d_model"], cfg) for _ in members])
        return make_policy(task, denoiser_model["d_model"], cfg)

    policy = materialise(build, load_tensors(path, "policy"), path)
    policy.to(map_location).eval()
    return typing.cast(PolicyNet | PolicyEnsemble, policy)
