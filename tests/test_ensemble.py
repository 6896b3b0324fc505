"""Policy ensembles: `python -m aop_ray.ensemble` and loading the result as the `learned` order."""

import re

import pytest
import torch

from aop_ray import checkpoints, ensemble
from aop_ray.config import TOKEN_AXIS_FEATURES, ModelConfig, PolicyConfig
from aop_ray.evaluate import policy_description
from aop_ray.models.denoiser import Denoiser
from aop_ray.models.policies import PolicyEnsemble, make_policy
from aop_ray.orders import DecodeState
from aop_ray.sampling import unmask

SMALL = ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)
CFG = PolicyConfig(encoder="token_axis", d_model=8, n_layers=1, features=list(TOKEN_AXIS_FEATURES))


def member(tmp_path, task, name, policy_seed, denoiser_seed=0, cfg=CFG):
    """A policy checkpoint whose residual head is random (an untrained one scores its base order alone)."""
    torch.manual_seed(denoiser_seed)
    denoiser = Denoiser(task.vocab_size, task.position_groups(), SMALL)
    torch.manual_seed(policy_seed)
    policy = make_policy(task, SMALL.d_model, cfg)
    with torch.no_grad():
        policy.head[-1].weight.normal_()
    manifest = checkpoints.policy_manifest(task, SMALL, cfg, "policy", "somewhere", step=10 + policy_seed)
    return checkpoints.write_checkpoint(
        tmp_path / name, manifest, {"denoiser": denoiser.state_dict(), "policy": policy.state_dict()}
    )


def decode_state(task, seed):
    g = torch.Generator().manual_seed(seed)
    inst = task.generate(4, seed=seed, clues=task.size + 2)
    masked = (torch.rand(inst.target.shape, generator=g) < 0.6) & ~torch.as_tensor(inst.fixed)
    tokens = torch.where(masked, task.vocab_size, torch.as_tensor(inst.target))
    logits = torch.randn(*tokens.shape, task.vocab_size, generator=g) * 3
    return DecodeState(tokens=tokens, masked=masked, logits=logits, hidden=None, step=0)


def test_ensemble_checkpoint_scores_the_mean_of_its_members(tmp_path, sudoku4):
    paths = [member(tmp_path, sudoku4, f"m{i}", policy_seed=i) for i in range(3)]
    assert ensemble.main(["--out", str(tmp_path / "ens"), *map(str, paths)]) == 0
    denoiser, task, manifest = checkpoints.load_denoiser(tmp_path / "ens")
    loaded = checkpoints.load_policy(tmp_path / "ens", task, manifest["model"])
    assert isinstance(loaded, PolicyEnsemble) and len(loaded.members) == 3
    assert policy_description(loaded).startswith("mean of 3 policies, each: token-axis encoder, 1 pooling round")
    assert [m["path"] for m in manifest["members"]] == list(map(str, paths))
    assert [m["step"] for m in manifest["members"]] == [10, 11, 12] and "step" not in manifest
    assert manifest["stage"] == "policy" and manifest["denoiser_source"] == "somewhere"
    singles = [checkpoints.load_policy(p, task, manifest["model"]) for p in paths]
    state = decode_state(sudoku4, 5)
    with torch.no_grad():
        scores = [p(state) for p in singles]
        assert not torch.allclose(scores[0], scores[1])  # the members differ, so the mean is not any one of them
        assert torch.allclose(loaded(state), sum(scores) / 3, atol=1e-6)
    inst = sudoku4.generate(5, seed=1, clues=6)
    roll = unmask(denoiser, loaded, torch.as_tensor(inst.tokens), 4)
    assert (roll.tokens < 4).all()


@pytest.mark.reliability
@pytest.mark.parametrize(
    "case, message",
    [
        ("other_denoiser", "m1: trained on another denoiser than .*m0 \\(tensor '.*' differs\\)"),
        ("other_config", "m1 \\(against .*m0\\): checkpoint is for policy .*field 'base_order': 'entropy' != 'margin'"),
        ("one", "needs at least two policy checkpoints, got 1"),
        ("twice", "a checkpoint is given twice"),
        ("denoiser", "m1: checkpoint kind is 'denoiser', expected 'policy'"),
        ("nested", "ens0: is itself an ensemble; give its members instead"),
    ],
)
def test_ensemble_refuses_members_that_do_not_belong_together(tmp_path, sudoku4, capsys, case, message):
    first = member(tmp_path, sudoku4, "m0", policy_seed=0)
    if case == "other_denoiser":
        paths = [first, member(tmp_path, sudoku4, "m1", policy_seed=1, denoiser_seed=1)]
    elif case == "other_config":
        other = PolicyConfig(**{**CFG.__dict__, "base_order": "entropy"})
        paths = [first, member(tmp_path, sudoku4, "m1", policy_seed=1, cfg=other)]
    elif case == "one":
        paths = [first]
    elif case == "twice":
        paths = [first, tmp_path / "." / "m0"]
    elif case == "denoiser":
        paths = [
            first,
            checkpoints.write_checkpoint(
                tmp_path / "m1",
                checkpoints.denoiser_manifest(sudoku4, SMALL),
                {"denoiser": checkpoints.load_tensors(first, "denoiser")},
            ),
        ]
    else:
        ensemble.build([first, member(tmp_path, sudoku4, "m1", policy_seed=1)], tmp_path / "ens0")
        paths = [tmp_path / "ens0", first]
    assert ensemble.main(["--out", str(tmp_path / "ens"), *map(str, paths)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "ens").exists()  # nothing half-written
