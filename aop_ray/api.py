"""The Python API: a model, an order, and infilling, in a few lines.

    from aop_ray import api

    model = api.load_model("antiberty")  # or "hf:DIR", or any aop-ray checkpoint directory
    order = api.load_order("left_to_right", model)  # a heuristic or rule name, or a policy checkpoint
    chain = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYC"
    [filled] = api.infill(model, [chain + "_" * 12 + "WGQGTLVTVSS"], order, k=1)

A sequence is a string of the task's tokens with `_` at the positions to fill
(all `_`: generation). `k` positions are revealed per denoiser forward.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aop_ray import checkpoints
from aop_ray.config import find_input, make_task
from aop_ray.errors import InputError
from aop_ray.orders import Order, get_order, order_names
from aop_ray.precision import autocast
from aop_ray.sampling import unmask
from aop_ray.tasks import Task, mask_id

MASK_CHAR = "_"


@dataclasses.dataclass
class Model:
    """A denoiser ready for decoding, with its task and the manifest describing it."""

    denoiser: nn.Module
    task: Task
    manifest: dict[str, Any]


def load_model(source: str | Path, task: str | dict[str, Any] = "antibody", device: str = "cpu") -> Model:
    """`antiberty`, `hf:DIR` (a Hugging Face masked LM, for `task`), `py:MODULE:FUNCTION` (a factory), or a
    checkpoint directory (its own task)."""
    text = str(source)
    if text == "antiberty" or text.startswith(("hf:", "py:")):
        from aop_ray.models import pretrained
        from aop_ray.models.denoiser import build_denoiser

        task_obj = make_task({"name": task} if isinstance(task, str) else task)
        cfg = pretrained.model_config(task_obj, text)
        assert cfg.pretrained is not None  # model_config always describes a pretrained model
        state = pretrained.load_weights(cfg.pretrained, task_obj)
        denoiser = checkpoints.materialise(lambda: build_denoiser(task_obj, cfg), state, text)
        manifest = checkpoints.denoiser_manifest(task_obj, cfg)
    else:
        denoiser, task_obj, manifest = checkpoints.load_denoiser(find_input(text))
    return Model(denoiser.to(device).eval(), task_obj, manifest)


def load_order(order: str | Path, model: Model) -> Order:
    """A heuristic or rule order by name, or the learned order of a policy checkpoint trained on `model`."""
    if str(order) in order_names(model.task) and str(order) != "learned":
        return get_order(str(order), task=model.task)
    path = find_input(str(order))
    if not Path(path).is_dir():
        names = ", ".join(n for n in order_names(model.task) if n != "learned")
        raise InputError(f"order {str(order)!r}: neither an order name ({names}) nor a policy checkpoint directory")
    device = next(model.denoiser.parameters()).device
    return checkpoints.load_policy(path, model.task, model.manifest["model"], device)


def encode(model: Model, sequences: list[str]) -> torch.Tensor:
    """Task tokens for `sequences` (`_` = masked), padded to the task's length with its padding token."""
    strings = model.task.model_tokens()
    if strings is None:
        raise InputError(f"task {model.task.name}: has no token strings; decode its Instances instead")
    index = {s: i for i, s in enumerate(strings)} | {MASK_CHAR: mask_id(model.task)}
    pad = model.task.padding_token()
    length = model.task.seq_len
    rows = []
    for n, seq in enumerate(sequences):
        bad = next((c for c in seq if c not in index), None)
        if bad is not None:
            raise InputError(f"sequence {n}: {bad!r} is not a token of task {model.task.name} (or {MASK_CHAR!r})")
        if len(seq) > length or (pad is None and len(seq) != length):
            raise InputError(f"sequence {n}: {len(seq)} tokens; task {model.task.name} holds {length}")
        rows.append([index[c] for c in seq] + [pad if pad is not None else 0] * (length - len(seq)))
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def infill(
    model: Model,
    sequences: list[str],
    order: str | Order = "confidence",
    k: int = 1,
    token_temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    precision: str = "auto",
) -> list[str]:
    """Fill every `_` of each sequence, `k` positions per forward in the order's choice; argmax tokens, or
    sampled at `token_temperature`. `precision` is the forwards' (aop_ray/precision.py)."""
    order_fn = load_order(order, model) if isinstance(order, (str, Path)) else order
    strings = model.task.model_tokens() or []
    tokens = encode(model, sequences)
    device = next(model.denoiser.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out = []
    for lo in range(0, len(sequences), batch_size):
        batch = tokens[lo : lo + batch_size].to(device)
        with autocast(precision, device):
            roll = unmask(
                model.denoiser,
                order_fn,
                batch,
                mask_id(model.task),
                k=k,
                token_temperature=token_temperature,
                generator=generator,
            )
        for row, seq in zip(roll.tokens.cpu().tolist(), sequences[lo : lo + batch_size]):
            out.append("".join(strings[t] for t in row[: len(seq)]))
    return out
