"""Protein families through the pipeline at a tiny size: task, oracle CLI, evaluate --oracle, env, Tune.

A synthetic 12-column family (samples of a small random Potts model) stands in for a real one.
The denoiser is untrained: these tests are about plumbing and the oracle's invariants, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401 - registers aop/Unmask-v0
from aop_ray import checkpoints
from aop_ray.config import ModelConfig
from aop_ray.errors import InputError
from aop_ray.models.denoiser import Denoiser
from aop_ray.protein.alignment import decode
from aop_ray.protein.oracle import FamilyOracle
from aop_ray.protein.potts import Potts
from aop_ray.tasks import Protein

from conftest import run_cli

TASK = Protein(length=12, family="toy")


def write_fasta(path: Path, seqs: np.ndarray) -> Path:
    path.write_text("".join(f">seq{i} synthetic\n{decode(s)[:7]}\n{decode(s)[7:]}\n" for i, s in enumerate(seqs)))
    return path


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("protein")
    seqs = TASK.generate(300, seed=0).target
    fasta = write_fasta(root / "toy.fasta", seqs)
    proc = run_cli(
        "aop_ray.protein.oracle",
        "--alignment",
        str(fasta),
        "--family",
        "toy",
        "--out",
        str(root / "toy"),
        "--identity",
        "0.7",
        "--heldout",
        "0.3",
        "--plm-steps",
        "30",
        cwd=root,
        timeout=300,
    )
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)
    ckpt = checkpoints.write_checkpoint(
        root / "denoiser",
        checkpoints.denoiser_manifest(TASK, cfg, step=0),
        {"denoiser": Denoiser.for_task(TASK, cfg).state_dict()},
    )
    test = write_fasta(root / "test.fasta", TASK.generate(16, seed=9).target)
    return {
        "root": root,
        "fasta": fasta,
        "seqs": seqs,
        "oracle_proc": proc,
        "out": root / "toy",
        "ckpt": ckpt,
        "test": test,
    }


def test_reads_the_family_and_refuses_another_length(tmp_path):
    seqs = TASK.generate(5, seed=1).target
    inst = TASK.read(write_fasta(tmp_path / "f.fasta", seqs))
    assert np.array_equal(inst.target, seqs) and (inst.tokens == 21).all() and not inst.fixed.any()
    assert inst.ids[0] == "seq0 synthetic"
    with pytest.raises(InputError, match=r"f\.fasta:1: alignment has 12 match columns; .* task.length=10"):
        Protein(length=10, family="toy").read(tmp_path / "f.fasta")


def test_synthetic_family_is_reproducible_chunk_invariant_and_not_uniform():
    a = TASK.generate(6, seed=3)
    b = TASK.generate(3, seed=3, start=3)
    assert np.array_equal(a.target[3:], b.target)
    assert (a.target < 6).mean() > 0.95  # six residues carry the family
    assert TASK.verify(torch.as_tensor(a.target), torch.as_tensor(a.tokens), torch.as_tensor(a.fixed)).all()


def test_oracle_split_and_scores(family):
    proc = family["oracle_proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = family["out"]
    assert {p.name for p in out.iterdir()} == {"train", "heldout", "oracle", "train_potts.pt"}
    oracle = FamilyOracle.load(out / "oracle", TASK)
    naturals = torch.as_tensor(family["seqs"][:50])
    rng = np.random.default_rng(0)
    shuffled = torch.as_tensor(np.stack([rng.permutation(s) for s in family["seqs"][:50]]))
    nat, shuf = oracle.score(naturals), oracle.score(shuffled)
    assert nat["potts_energy"].mean() < shuf["potts_energy"].mean()  # the oracle prefers the family
    # the training split's own model (what aop.target energy trains against) is another fit of the family
    train_potts = Potts.load(out / "train_potts.pt", L=TASK.length)
    assert train_potts.energy(naturals).mean() < train_potts.energy(shuffled).mean()
    assert not torch.equal(train_potts.h, oracle.potts.h)
    assert nat["hmm_bits"].nanmean() > shuf["hmm_bits"].nanmean()
    train = torch.as_tensor(oracle.train[:10])
    assert (oracle.score(train)["novelty"] == 0).all()  # a training sequence is not novel
    # the threshold is the out-of-sample one: 5% of the training naturals (unseen by the Potts model) lie below it
    below = oracle.score(torch.as_tensor(oracle.train))["below_p5"].mean().item()
    assert below == pytest.approx(0.05, abs=1.5 / len(oracle.train))
    assert set(nat) == {"potts_energy", "below_p5", "hmm_bits", "hmm_hit", "novelty", "batch_identity"}
    with pytest.raises(InputError, match="field 'length' is 12, the checkpoint's task has 13"):
        FamilyOracle.load(out / "oracle", Protein(length=13, family="toy"))


def test_evaluate_with_oracle_compares_orders_at_a_temperature(family, tmp_path):
    assert family["oracle_proc"].returncode == 0
    out = tmp_path / "out"
    args = [
        "--checkpoint",
        str(family["ckpt"]),
        "--data",
        str(family["test"]),
        "--orders",
        "random,margin",
        "--token-temperature",
        "1.0",
        "--oracle",
        str(family["out"] / "oracle"),
        "--out",
        str(out),
        "--no-mlflow",
        "--quiet",
    ]
    proc = run_cli("aop_ray.evaluate", *args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())
    assert [r["order"] for r in rows] == ["random", "margin"]
    for r in rows:
        assert r["n"] == 16 and 0 <= r["novelty"] <= 1 and 0 <= r["below_p5"] <= 1 and r["solve_rate"] == 1.0
    sudoku = run_cli(
        "aop_ray.evaluate",
        "--checkpoint",
        str(family["ckpt"]),
        "--data",
        str(family["test"]),
        "--oracle",
        str(tmp_path),
        "--no-mlflow",
        cwd=tmp_path,
        timeout=120,
    )
    assert sudoku.returncode == 2 and "not a family oracle" in sudoku.stderr


def test_env_on_a_protein_family_passes_check_env(family):
    env = gym.make(
        "aop/Unmask-v0", denoiser_checkpoint=str(family["ckpt"]), data=str(family["test"]), render_mode="ansi"
    )
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert obs["action_mask"].all() and env.render() == "_" * 12


@pytest.mark.ray
def test_tune_sweep_on_a_protein_family(family, tmp_path):
    assert family["oracle_proc"].returncode == 0
    config = tmp_path / "sweep.yaml"
    config.write_text(f"""name: protein-smoke
orders: [random, entropy]
seeds: [0]
denoiser_checkpoint: {family["ckpt"]}
evaluate:
  data: {{path: {family["test"]}}}
  token_temperature: 1.0
  oracle: {family["out"] / "oracle"}
resources: {{max_concurrent_trials: 1, eval_cpus: 0.5}}
storage_path: {tmp_path / "tune"}
mlflow: {{experiment: aop-ray-protein-smoke}}
""")
    proc = run_cli("aop_ray.tune", "--config", str(config), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [
        json.loads(p.read_text())[0] for p in (tmp_path / "tune" / "protein-smoke").glob("evaluations/*/results.json")
    ]
    assert sorted(r["order"] for r in rows) == ["entropy", "random"]
    assert all("potts_energy" in r and "novelty" in r for r in rows)


@pytest.mark.ray
def test_a_policy_trains_on_the_energy_of_draws_at_a_temperature(family, tmp_path):
    """The protein user's path for an order at temperature T: the split's own `train_potts.pt` (never the
    oracle), states sampled at T, the energy target; validation reports only the reference-free cost."""
    assert family["oracle_proc"].returncode == 0
    config = tmp_path / "policy.yaml"
    config.write_text(f"""name: protein-energy
task: {{name: protein, length: {TASK.length}, family: toy}}
data: {{train: {{path: {family["out"] / "train"}}}, val: {{path: {family["out"] / "heldout"}}}}}
policy: {{d_model: 16, n_layers: 1, n_heads: 2, features: [probs, stats], base_scale: 0.0}}
aop: {{denoiser_checkpoint: {family["ckpt"]}, target: energy, energy_model: {family["out"] / "train_potts.pt"},
      token_temperature: 0.5, trajectory_order: random, trajectory_instances: 16, refresh_every: 2}}
train: {{stage: policy, steps: 4, batch_size: 16, warmup_steps: 1, augment: false, log_every: 2,
        checkpoint_every: 4, eval_every: 4, eval_instances: 8}}
ray: {{num_workers: 1, cpus_per_worker: 0.5}}
""")
    proc = run_cli("aop_ray.train", "--config", str(config), "--no-mlflow", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "protein-energy" / "final" / "manifest.json").read_text())["metrics"]
    assert {k for k in metrics if k.startswith("val_chosen_")} == {
        f"val_chosen_energy/{o}" for o in ("random", "confidence", "margin", "entropy", "learned")
    }
    assert all(metrics[k] >= 0 for k in metrics if k.startswith("val_chosen_"))
