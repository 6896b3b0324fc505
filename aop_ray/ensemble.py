"""Combine policy checkpoints trained apart into one `learned` order.

    python -m aop_ray.ensemble --out benchmarks/checkpoints/sudoku9-policy-ensemble \\
        benchmarks/checkpoints/sudoku9-policy runs/sudoku9-policy-s1/final runs/sudoku9-policy-s2/final

The members must be policies of one config on one denoiser: the same task,
denoiser model and policy config, and denoiser weights equal tensor for tensor
(a member trained on another denoiser would score states it never saw). The
result is an ordinary policy checkpoint, whose manifest lists its members, so
`evaluate`, Tune and the environments load it as `learned` unchanged
(`models.policy.PolicyEnsemble`: the mean of the members' scores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aop_ray import checkpoints, cli
from aop_ray.cli import run_main, say
from aop_ray.errors import InputError
from aop_ray.models.pretrained import identity

MEMBER_FIELDS = ("step", "aop")  # per member: what may differ between members, kept as provenance


def check_members(paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Every member's manifest and the shared denoiser weights, once every member is shown to match the first."""
    if len(paths) < 2:
        raise InputError(f"ensemble: needs at least two policy checkpoints, got {len(paths)}")
    if len({Path(path).resolve() for path in paths}) < len(paths):
        raise InputError("ensemble: a checkpoint is given twice (it would count double in the mean)")
    manifests, denoiser = [], None
    for path in paths:
        manifest = checkpoints.read_policy_manifest(path)
        if "members" in manifest:
            raise InputError(f"{path}: is itself an ensemble; give its members instead")
        weights = checkpoints.load_tensors(path, "denoiser")
        if manifests:
            for what in ("task", "model", "policy"):
                ours, first = manifest[what], manifests[0][what]
                if what == "model":  # compared as a policy's check compares it (pretrained.identity)
                    ours, first = identity(ours, f"{path}: model"), identity(first, f"{paths[0]}: model")
                checkpoints.check_same(what, ours, first, f"{path} (against {paths[0]})")
            different = next(
                (
                    k
                    for k in sorted(set(weights) | set(denoiser))
                    if k not in weights or k not in denoiser or not torch.equal(weights[k], denoiser[k])
                ),
                None,
            )
            if different is not None:
                raise InputError(f"{path}: trained on another denoiser than {paths[0]} (tensor {different!r} differs)")
        else:
            denoiser = weights
        manifests.append(manifest)
    return manifests, denoiser


def build(paths: list[str], out: str | Path) -> Path:
    """Write the ensemble checkpoint of `paths` to `out` (atomically)."""
    checkpoints.check_replaceable(Path(out), "--out")  # before reading any member: never over a user's directory
    members, denoiser = check_members(paths)
    policies = {
        f"members.{i}.{key}": value
        for i, path in enumerate(paths)
        for key, value in checkpoints.load_tensors(path, "policy").items()
    }
    manifest = {key: value for key, value in members[0].items() if key not in ("format", "metrics", *MEMBER_FIELDS)}
    manifest["members"] = [
        {"path": str(path), **{k: m.get(k) for k in MEMBER_FIELDS}} for path, m in zip(paths, members)
    ]
    return checkpoints.write_checkpoint(out, manifest, {"denoiser": denoiser, "policy": policies})


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("aop_ray.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", help="policy checkpoint directories (at least two)")
    parser.add_argument("--out", required=True, help="the ensemble checkpoint directory to write")
    args = parser.parse_args(argv)
    return run_main(
        lambda: say(f"wrote {build(args.members, args.out)}: the mean of {len(args.members)} policies"), args.debug
    )


if __name__ == "__main__":
    raise SystemExit(main())
