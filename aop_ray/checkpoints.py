"""Checkpoints: a directory of tensor-only state dicts plus a JSON manifest.

    <dir>/manifest.json   kind, task, vocab/sequence sizes, model config, step
    <dir>/denoiser.pt     state_dict (tensors only)
    <dir>/optimizer.pt    optional, for resuming training

Loading uses `torch.load(weights_only=True)`: a checkpoint can never run code.
Writes go to a temporary sibling directory that is renamed into place, so a
crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

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

from aop_ray.config import ModelConfig, make_task, parse_dataclass
from aop_ray.models.denoiser import Denoiser
from aop_ray.tasks import InputError, Task, task_params

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
    return {"kind": "denoiser", "task": task_params(task), "vocab_size": task.vocab_size,
            "seq_len": task.seq_len, "model": model_cfg.__dict__.copy(), **extra}


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


def load_tensors(path: str | Path, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A state dict saved by `write_checkpoint`, loaded without unpickling arbitrary objects."""
    file = Path(path) / f"{name}.pt"
    if not file.is_file():
        raise InputError(f"{file}: missing from checkpoint")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{file}: truncated or corrupted checkpoint ({first})") from None


def check_task(manifest: dict[str, Any], task: Task, where: str) -> None:
    """Refuse a checkpoint for another task, naming the first field that differs."""
    theirs, ours = manifest.get("task", {}), task_params(task)
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise InputError(f"{where}: checkpoint is for task {theirs}, not {ours} "
                             f"(field {key!r}: {theirs.get(key)!r} != {ours.get(key)!r})")


def load_denoiser(path: str | Path, task: Task | None = None,
                  map_location: str | torch.device = "cpu") -> tuple[Denoiser, Task, dict[str, Any]]:
    """The denoiser at `path`, its task and manifest; refuses a checkpoint for another `task`."""
    manifest = read_manifest(path)
    if manifest.get("kind") != "denoiser":
        raise InputError(f"{path}: checkpoint kind is {manifest.get('kind')!r}, expected 'denoiser'")
    ckpt_task = make_task(manifest["task"], where=f"{path}: task")
    if task is not None:
        check_task(manifest, task, str(path))
    model_cfg = parse_dataclass(ModelConfig, manifest["model"], f"{path}: model")
    model = Denoiser(ckpt_task.vocab_size, ckpt_task.position_groups(), model_cfg)
    load_state(model, load_tensors(path, "denoiser", map_location), path)
    model.eval()
    return model, ckpt_task, manifest


def load_state(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit the model in its manifest ({str(err).splitlines()[0]})") \
            from None
