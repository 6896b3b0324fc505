"""A size-free SAT denoiser (`model.size_free`): no weight tied to the number of variables or clauses, so a
checkpoint trained on small formulas runs, with its clause-graph policy, on larger ones."""

from __future__ import annotations

import json

import pytest
import torch

from aop_ray import checkpoints, data
from aop_ray.config import ModelConfig, PolicyConfig, PretrainedConfig, load_config
from aop_ray.errors import InputError
from aop_ray.models.denoiser import Denoiser
from aop_ray.models.policies import make_policy
from aop_ray.tasks import Sat, Sudoku
from aop_ray.tasks.sat import FIRST_LITERAL, MASK

from conftest import ROOT, call_cli, run_cli

SMALL, LARGE = Sat(n_vars=5, n_clauses=12), Sat(n_vars=8, n_clauses=20)
FREE = ModelConfig(d_model=16, n_layers=2, n_heads=2, ff_mult=2, size_free=True)
TIED = ModelConfig(d_model=16, n_layers=2, n_heads=2, ff_mult=2)


def denoiser(task: Sat, cfg: ModelConfig, seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser.for_task(task, cfg).eval()


def state(task: Sat, seed: int) -> torch.Tensor:
    """Generated formulas with some variables revealed."""
    tokens = torch.as_tensor(task.generate(3, seed=seed).tokens)
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 2, (3, task.n_vars), generator=g)
    tokens[:, task.n_literals :] = torch.where(torch.rand(3, task.n_vars, generator=g) < 0.5, MASK, values)
    return tokens


def renamed(task: Sat, tokens: torch.Tensor, new_of_old: torch.Tensor) -> torch.Tensor:
    """The same formula and state with variable v called new_of_old[v]."""
    code = tokens[:, : task.n_literals] - FIRST_LITERAL
    literals = FIRST_LITERAL + 2 * new_of_old[code // 2] + code % 2
    return torch.cat([literals, tokens[:, task.n_literals :][:, torch.argsort(new_of_old)]], dim=1)


def test_its_weights_are_the_same_at_every_size_and_a_tied_denoisers_are_not():
    shapes = [{k: v.shape for k, v in denoiser(task, FREE).state_dict().items()} for task in (SMALL, LARGE)]
    assert shapes[0] == shapes[1]
    tied = [{k: v.shape for k, v in denoiser(task, TIED).state_dict().items()} for task in (SMALL, LARGE)]
    assert tied[0] != tied[1]  # a literal token per variable number, an embedding per clause and variable


@pytest.mark.parametrize("cfg, equivariant", [(FREE, True), (TIED, False)])
def test_renaming_the_variables_permutes_its_output_exactly(cfg, equivariant):
    """Variable names carry no meaning in a formula; the size-free denoiser cannot read them at all."""
    model, tokens = denoiser(LARGE, cfg), state(LARGE, seed=1)
    new_of_old = torch.randperm(LARGE.n_vars, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before, after = model(tokens), model(renamed(LARGE, tokens, new_of_old))
    n = LARGE.n_literals
    same = torch.allclose(after[:, n:], before[:, n:][:, torch.argsort(new_of_old)], atol=1e-5) and torch.allclose(
        after[:, :n], before[:, :n], atol=1e-5
    )
    assert same == equivariant


def test_a_size_free_checkpoint_runs_at_another_size_and_a_tied_one_is_refused(tmp_path):
    model = denoiser(SMALL, FREE)
    manifest = checkpoints.denoiser_manifest(SMALL, FREE, step=3)
    path = checkpoints.write_checkpoint(tmp_path / "free", manifest, {"denoiser": model.state_dict()})
    loaded, task, _ = checkpoints.load_denoiser(path, LARGE)
    assert task == LARGE
    direct = Denoiser.for_task(LARGE, FREE).eval()
    direct.load_state_dict(model.state_dict())
    tokens = state(LARGE, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), direct(tokens))
    with pytest.raises(InputError, match="task"):
        checkpoints.load_denoiser(path, Sudoku(4))  # size-free, not task-free

    tied = checkpoints.write_checkpoint(
        tmp_path / "tied", checkpoints.denoiser_manifest(SMALL, TIED), {"denoiser": denoiser(SMALL, TIED).state_dict()}
    )
    with pytest.raises(InputError, match=r"field 'n_clauses': 12 != 20"):
        checkpoints.load_denoiser(tied, LARGE)


def test_size_free_is_refused_where_it_cannot_hold():
    with pytest.raises(InputError, match="model.size_free: task sudoku has no size-free form"):
        Denoiser.for_task(Sudoku(4), FREE)
    with pytest.raises(InputError, match="model.size_free: a pretrained model"):
        ModelConfig(size_free=True, pretrained=PretrainedConfig(source="antiberty"))


def policy_checkpoint(tmp_path, encoder: str):
    cfg = PolicyConfig(encoder=encoder, d_model=8, n_layers=1, features=["probs", "stats"])
    torch.manual_seed(0)
    policy = make_policy(SMALL, FREE.d_model, cfg)
    manifest = checkpoints.policy_manifest(SMALL, FREE, cfg, "policy", "test")
    tensors = {"denoiser": denoiser(SMALL, FREE).state_dict(), "policy": policy.state_dict()}
    return checkpoints.write_checkpoint(tmp_path / encoder, manifest, tensors)


def test_evaluate_runs_a_clause_graph_policy_on_larger_formulas_and_refuses_other_policies(tmp_path):
    path = policy_checkpoint(tmp_path, "clause_graph")
    shards = tmp_path / "large"
    data.write_shards(LARGE.generate(6, seed=4), LARGE, shards)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(path), "--data", str(shards), "--orders", "margin,unit,learned", "--no-mlflow"]
    argv += ["--quiet", "--no-planner-nll", "--out", str(out)]
    refused = call_cli("aop_ray.evaluate", *argv, cwd=tmp_path)
    assert refused.returncode == 2 and "shard is for task" in refused.stderr  # the data is for 8 variables

    done = call_cli("aop_ray.evaluate", *argv, "--param", "n_vars=8", "--param", "n_clauses=20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "results.json").read_text())
    assert [(row["order"], row["n"]) for row in rows] == [("margin", 6), ("unit", 6), ("learned", 6)]

    transformer = policy_checkpoint(tmp_path, "transformer")
    argv[1] = str(transformer)
    again = call_cli("aop_ray.evaluate", *argv, "--param", "n_vars=8", "--param", "n_clauses=20", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "checkpoint is for task" in again.stderr


def test_evaluate_task_is_refused_for_a_tied_checkpoint():
    committed = ROOT / "benchmarks" / "checkpoints" / "sat20"
    result = call_cli(
        "aop_ray.evaluate", "--checkpoint", str(committed), "--data", "x", "--param", "n_vars=50", cwd=ROOT
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "has weights tied to its task's size" in result.stderr


@pytest.mark.ray
def test_a_size_free_denoiser_trained_by_the_cli_decodes_larger_formulas(tmp_path):
    """The user's path: `train` with model.size_free on Ray (6 variables), then `evaluate --param` at 8."""
    config = ROOT / "tune_configs" / "sat_smoke.yaml"
    args = ["--config", str(config), "model.size_free=true", "train.steps=10", "train.log_every=5", "name=free"]
    trained = run_cli("aop_ray.train", *args, "train.checkpoint_every=10", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    final = tmp_path / "runs" / "free" / "final"
    assert json.loads((final / "manifest.json").read_text())["model"]["size_free"] is True
    shards = tmp_path / "large"
    data.write_shards(LARGE.generate(4, seed=5), LARGE, shards)
    argv = ["--checkpoint", str(final), "--data", str(shards), "--orders", "random,margin", "--no-mlflow", "--quiet"]
    argv += ["--param", "n_vars=8", "--param", "n_clauses=20", "--out", str(tmp_path / "out")]
    done = call_cli("aop_ray.evaluate", *argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(row["order"], row["n"], row["forwards_per_instance"]) for row in rows] == [
        ("random", 4, 8.0),
        ("margin", 4, 8.0),
    ]


def test_checkpoints_and_runs_from_before_the_field_still_match_new_ones(tmp_path):
    """`model.size_free` is new: a manifest or a run's saved config without it means its default, so a run
    started before it still resumes and an old policy still joins an ensemble with a new one."""
    from aop_ray.ensemble import check_members
    from aop_ray.training.driver import _check_resumed_config

    cfg = load_config(ROOT / "tune_configs" / "sat_smoke.yaml")
    saved = json.loads(json.dumps(cfg.to_dict()))
    del saved["model"]["size_free"]
    _check_resumed_config(saved, cfg, tmp_path / "state.json")  # no refusal
    with pytest.raises(InputError, match="--resume: model.size_free is True but the run was started with None"):
        _check_resumed_config(
            saved, load_config(ROOT / "tune_configs" / "sat_smoke.yaml", ["model.size_free=true"]), tmp_path
        )

    cfg = PolicyConfig(encoder="clause_graph", d_model=8, n_layers=1, features=["probs", "stats"])
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        manifest = checkpoints.policy_manifest(SMALL, TIED, cfg, "policy", "test")
        if seed == 0:
            del manifest["model"]["size_free"]  # written before the field existed
        tensors = {"denoiser": denoiser(SMALL, TIED).state_dict(), "policy": make_policy(SMALL, 16, cfg).state_dict()}
        paths.append(str(checkpoints.write_checkpoint(tmp_path / f"m{seed}", manifest, tensors)))
    assert len(check_members(paths)[0]) == 2
