"""3-SAT through the whole pipeline at a tiny size: Train, Tune + MLflow, the evaluate CLI on CNF files, the env.

One Tune smoke sweep (which first trains the 6-variable denoiser with Ray Train, then a policy
with the SAT task features in a learned trial) provides the checkpoints for the other tests.
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
from aop_ray.tasks import Sat
from envs.agents import OrderAgent

from conftest import ROOT, run_cli

pytestmark = pytest.mark.ray

TASK = Sat(n_vars=6, n_clauses=24)


def write_cnf_dir(out: Path, n: int, seed: int) -> Path:
    """SATLIB-style DIMACS files (comments, clauses split over lines, '%' trailer) of generated formulas."""
    out.mkdir(parents=True)
    inst = TASK.generate(n, seed=seed)
    for row, name in enumerate(inst.ids):
        code = inst.tokens[row, : TASK.n_literals] - 3
        lits = ((code // 2 + 1) * np.where(code % 2 == 0, 1, -1)).reshape(-1, 3)
        body = "".join(f"{a} {b}\n {c} 0\n" for a, b, c in lits)
        (out / f"{name}.cnf").write_text(f"c generated for a test\np cnf {TASK.n_vars} {TASK.n_clauses}\n{body}%\n0\n")
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    # From an empty directory: the sweep finds its training configs beside its own file, trains its denoiser,
    # and writes everything under the working directory.
    workdir = tmp_path_factory.mktemp("sat")
    proc = run_cli(
        "aop_ray.tune", "--config", str(ROOT / "tune_configs" / "sat_smoke_sweep.yaml"), cwd=workdir, timeout=900
    )
    return {
        "workdir": workdir,
        "proc": proc,
        "dir": workdir / "runs" / "tune" / "sat-smoke",
        "denoiser": workdir / "runs" / "sat-smoke" / "final",
    }


def test_sat_sweep_trains_and_compares_unit_margin_and_learned(sweep):
    proc = sweep["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(p.read_text())[0] for p in sweep["dir"].glob("evaluations/*/results.json")]
    assert sorted(r["order"] for r in rows) == ["learned", "margin", "unit"]
    for row in rows:
        assert row["n"] == 64 and 0.0 <= row["solve_rate"] <= row["clause_sat"] <= 1.0
        assert row["forwards_per_instance"] == 6.0  # one value per step, six variables
    unit = next(r for r in rows if r["order"] == "unit")
    assert unit["unit_first"] == 1.0  # by construction: the replay agrees with the order's own choices
    learned = next(r for r in rows if r["order"] == "learned")
    assert "task_features=unit+open_clauses" in learned["policy"]  # reports say which features a policy used
    summary = (sweep["dir"] / "summary" / "summary.md").read_text()
    assert "| unit |" in summary and "| learned |" in summary


def test_evaluate_cli_reads_a_cnf_directory(sweep, tmp_path):
    assert sweep["proc"].returncode == 0
    cnf = write_cnf_dir(tmp_path / "cnf", 8, seed=9)
    out = tmp_path / "out"
    proc = run_cli(
        "aop_ray.evaluate",
        "--checkpoint",
        str(sweep["denoiser"]),
        "--data",
        str(cnf),
        "--orders",
        "random,margin,unit",
        "--out",
        str(out),
        "--no-mlflow",
        "--quiet",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clause_sat" in next(line for line in proc.stdout.splitlines() if line.startswith("order "))
    rows = json.loads((out / "results.json").read_text())
    assert [r["order"] for r in rows] == ["random", "margin", "unit"] and all(r["n"] == 8 for r in rows)
    assert "clause_sat" in (out / "results.csv").read_text().splitlines()[0]
    assert (out / "heatmap_unit.png").read_bytes()[:4] == b"\x89PNG"
    (cnf / "broken.cnf").write_text("p cnf 6 24\n1 2 9 0\n")
    bad_out = tmp_path / "bad"
    proc = run_cli(
        "aop_ray.evaluate",
        "--checkpoint",
        str(sweep["denoiser"]),
        "--data",
        str(cnf),
        "--out",
        str(bad_out),
        "--no-mlflow",
        "--quiet",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0 and not bad_out.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {cnf / 'broken.cnf'}:2: literal 9 out of range")


def test_env_on_sat_passes_check_env_and_pays_the_verifier(sweep, tmp_path):
    assert sweep["proc"].returncode == 0
    cnf = write_cnf_dir(tmp_path / "cnf", 4, seed=10)
    env = gym.make("aop/Unmask-v0", denoiser_checkpoint=str(sweep["denoiser"]), data=str(cnf), render_mode="ansi")
    check_env(env.unwrapped)
    agent = OrderAgent("unit", str(sweep["denoiser"]), seed=0)
    obs, _ = env.reset(seed=1)
    assert obs["action_mask"][: TASK.n_literals].sum() == 0 and obs["action_mask"][TASK.n_literals :].all()
    total, done, steps = 0.0, False, 0
    while not done:
        obs, reward, done, truncated, info = env.step(agent.act(obs))
        total += reward
        steps += 1
    assert steps == TASK.n_vars and not truncated
    tokens = torch.as_tensor(obs["tokens"])[None]
    prompt = tokens.clone()
    prompt[:, TASK.n_literals :] = 2
    fixed = torch.arange(TASK.seq_len)[None] < TASK.n_literals
    assert total == float(TASK.verify(tokens, prompt, fixed)[0])
    assert "clauses satisfied" in env.render()
