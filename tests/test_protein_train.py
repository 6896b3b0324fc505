"""The protein path end to end on a synthetic 10-column family: a denoiser, a policy trained on the energy
target over sampled states, a GRPO policy rewarded by energy, and `evaluate` sampling with each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aop_ray.protein.potts import Potts
from aop_ray.tasks.protein import Protein

from conftest import ROOT, run_cli

SMOKE = ROOT / "tune_configs" / "protein_smoke.yaml"
POLICY = ROOT / "tune_configs" / "protein_policy_smoke.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding the smoke denoiser (runs/protein-smoke) and the family's own Potts model."""
    work = tmp_path_factory.mktemp("protein")
    proc = run_cli("aop_ray.train", "--config", str(SMOKE), "--no-mlflow", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h, J = Protein(length=10, family="synthetic").synthetic_family()
    Potts(h=h.float(), J=J.float()).save(work / "potts.pt")
    return work


def metrics(work: Path, name: str) -> dict:
    return json.loads((work / "runs" / name / "final" / "manifest.json").read_text())["metrics"]


def test_energy_policy_trains_on_sampled_states_and_samples(workdir):
    proc = run_cli(
        "aop_ray.train", "--config", str(POLICY), "--no-mlflow",
        "aop.denoiser_checkpoint=runs/protein-smoke/final", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = metrics(workdir, "protein-policy-smoke")
    # sampled validation states have no reference: only the energy cost is reported, for every order
    assert {k for k in found if k.startswith("val_chosen_")} == {
        f"val_chosen_energy/{o}" for o in ("random", "confidence", "margin", "entropy", "learned")
    }
    assert all(found[f"val_chosen_energy/{o}"] >= 0 for o in ("random", "margin", "learned"))
    out = workdir / "eval-energy"
    proc = run_cli(
        "aop_ray.evaluate", "--checkpoint", "runs/protein-policy-smoke/final", "--data", "data/protein10/val",
        "--orders", "random,learned", "--token-temperature", "0.5", "--out", str(out), "--no-mlflow", "--quiet",
        cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert [r["order"] for r in rows] == ["random", "learned"] and all(r["n"] == 32 for r in rows)


def test_grpo_rewarded_by_energy(workdir):
    proc = run_cli(
        "aop_ray.train", "--config", str(POLICY), "--no-mlflow", "name=protein-grpo-smoke", "train.stage=grpo",
        "grpo.reward=energy", "grpo.token_temperature=0.5", "grpo.group_size=4", "aop.target=ce",
        "aop.token_temperature=0", "train.steps=4", "train.log_every=2", "train.eval_every=4",
        "aop.denoiser_checkpoint=runs/protein-smoke/final", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = metrics(workdir, "protein-grpo-smoke")
    assert "reward" in found and "reward=" in proc.stdout + proc.stderr  # the progress line shows it
