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

import dataclasses
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aop_ray.config import ModelConfig, PolicyConfig, make_task, parse_dataclass
from aop_ray.errors import InputError
from aop_ray.models.denoiser import Denoiser
from aop_ray.models.policy import PolicyEnsemble, PolicyNet, make_policy
from aop_ray.tasks import Task, task_params

FORMAT = "aop-ray-checkpoint/1"
MANIFEST = "manifest.json"


def write_checkpoint(path: str | Path, manifest: dict[str, Any], tensors: dict[str, dict[str, Any]]) -> Path:
    """Write `<name>.pt` for each state dict in `tensors` plus the manifest, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        for name, state in tensors.items():
            torch.save(state, tmp / f"{name}.pt")
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, **manifest}, indent=2))
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
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{file}: corrupted manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{file}: unknown checkpoint format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_tensors(path: str | Path, name: str) -> dict[str, Any]:
    """A state dict saved by `write_checkpoint`, loaded onto the CPU without unpickling arbitrary objects."""
    file = Path(path) / f"{name}.pt"
    if not file.is_file():
        raise InputError(f"{file}: missing from checkpoint")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{file}: truncated or corrupted checkpoint ({first})") from None


def check_same(what: str, theirs: dict[str, Any], ours: dict[str, Any], where: str) -> None:
    """Refuse a mismatch of `what` (task, denoiser model), naming the first field that differs."""
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise InputError(
                f"{where}: checkpoint is for {what} {theirs}, not {ours} "
                f"(field {key!r}: {theirs.get(key)!r} != {ours.get(key)!r})"
            )


def check_task(manifest: dict[str, Any], task: Task, where: str) -> None:
    check_same("task", manifest.get("task", {}), task_params(task), where)


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
) -> tuple[Denoiser, Task, dict[str, Any]]:
    """The denoiser at `path` (a denoiser or policy checkpoint), its task and manifest.

    Refuses a checkpoint for another `task`.
    """
    manifest = read_manifest(path)
    if manifest.get("kind") not in ("denoiser", "policy"):
        raise InputError(f"{path}: checkpoint kind is {manifest.get('kind')!r}, expected 'denoiser' or 'policy'")
    ckpt_task = make_task(manifest["task"], where=f"{path}: task")
    if task is not None:
        check_task(manifest, task, str(path))
    model_cfg = parse_dataclass(ModelConfig, manifest["model"], f"{path}: model")
    model = Denoiser.for_task(ckpt_task, model_cfg)
    load_state(model, load_tensors(path, "denoiser"), path)
    model.to(map_location).eval()  # load_state_dict copies into the parameters where they are: move after
    return model, ckpt_task, manifest


def load_state(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit the model in its manifest ({str(err).splitlines()[0]})") from None


def read_policy_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest at `path`, refused unless it is a policy checkpoint's."""
    manifest = read_manifest(path)
    if manifest.get("kind") != "policy":
        raise InputError(f"{path}: checkpoint kind is {manifest.get('kind')!r}, expected 'policy'")
    return manifest


def load_policy(
    path: str | Path, task: Task, denoiser_model: dict[str, Any], map_location: str | torch.device = "cpu"
) -> PolicyNet | PolicyEnsemble:
    """The policy at `path`, checked against the task and denoiser it will run on
    (an ensemble if its manifest lists `members`)."""
    manifest = read_policy_manifest(path)
    check_task(manifest, task, str(path))
    check_same("denoiser model", manifest["model"], denoiser_model, str(path))
    cfg = parse_dataclass(PolicyConfig, manifest["policy"], f"{path}: policy")
    members = manifest.get("members")
    policy = (
        PolicyEnsemble([make_policy(task, denoiser_model["d_model"], cfg) for _ in members])
        if members
        else make_policy(task, denoiser_model["d_model"], cfg)
    )
    load_state(policy, load_tensors(path, "policy"), path)
    policy.to(map_location).eval()
    return policy
