"""The main job's pipeline on 4x4: denoiser -> policy -> evaluation of every order, one command."""

from __future__ import annotations

import json
import re

from mlflow.tracking import MlflowClient

from conftest import ROOT, SMOKE, call_cli, run_cli


def test_pipeline_trains_the_policy_on_a_denoiser_checkpoint_and_evaluates_every_order(trained, tmp_path):
    """The main job's default path: the denoiser checkpoint exists (the committed one, here the smoke run's),
    so stage 1 uses it; stage 2 trains the policy on Ray; stage 3 evaluates every order. (Stage 1's other
    branch is an ordinary `train.run` of the denoiser config, the path every other Train test takes.)
    The policy validates on one puzzle over its two workers: one worker's slice is empty, and its decoding
    and chosen-cell diagnostics must add nothing rather than crash (both did once)."""
    denoiser = trained / "runs" / "sudoku4-smoke" / "final"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"""
name: tiny
denoiser_config: {SMOKE}
denoiser_checkpoint: {denoiser}
policy_config: {ROOT / "tune_configs" / "sudoku4_policy_smoke.yaml"}
policy_overrides: [train.steps=20, train.eval_instances=1]
evaluate:
  data: {{path: data/sudoku4/test, generate: {{n: 32, seed: 9, options: {{clues: 6, unique: true}}}}}}
""")
    proc = run_cli("aop_ray.train", "--pipeline", str(pipeline), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"stage 1/3: using the denoiser checkpoint {denoiser}" in proc.stdout
    assert "stage 3/3: evaluating" in proc.stdout
    (out,) = (tmp_path / "runs").glob("tiny-*-evaluate")
    rows = json.loads((out / "results.json").read_text())
    assert [r["order"] for r in rows] == ["random", "confidence", "margin", "entropy", "singles", "learned"]
    assert all(r["n"] == 32 for r in rows)
    assert all(r["reference"] == "learned" for r in rows) and rows[-1]["mcnemar_p"] is None  # paired vs the policy
    assert all(r["only_solved"] + r["only_reference"] <= 32 for r in rows[:-1])
    for r in rows:  # the table reached stdout
        assert re.search(rf"\n{r['order']}\*? +{r['solve_rate']:.4f} ", proc.stdout)
    policy_run = next((tmp_path / "runs").glob("tiny-*-policy"))
    manifest = json.loads((policy_run / "final" / "manifest.json").read_text())
    assert manifest["denoiser_source"] == str(denoiser)
    assert manifest["metrics"]["val_solve_rate"] in (0.0, 1.0)  # exactly one validation puzzle
    assert 0 <= manifest["metrics"]["val_chosen_error/learned"] <= 1

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aop-ray")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow's GenAI view
    runs = client.search_runs([experiment.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name.rsplit("-", 1)[1] for r in top) == ["evaluate", "policy"]
    evaluation = next(r for r in top if r.info.run_name.endswith("evaluate"))
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == evaluation.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(r["order"] for r in rows)
    assert len({frozenset(r.data.metrics) for r in children}) == 1  # MLflow charts the orders side by side
    learned = next(r for r in children if r.info.run_name == "learned")
    assert learned.data.metrics["solve_rate"] == rows[-1]["solve_rate"]
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id, "evaluation")}
    assert "evaluation/heatmap_learned.png" in artifacts and "evaluation/results.json" in artifacts
    assert {a.path for a in client.list_artifacts(learned.info.run_id)} == {"heatmap.png"}
    policy_run = next(r for r in top if r.info.run_name.endswith("policy"))
    contexts = {i.tags[0].value for i in client.get_run(policy_run.info.run_id).inputs.dataset_inputs}
    assert contexts == {"training", "validation"}
    assert client.get_run(learned.info.run_id).inputs.dataset_inputs[0].dataset.digest


def test_pipeline_refuses_a_bad_key_before_any_compute(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"denoiser_config: {SMOKE}\npolicy_config: {SMOKE}\nevaluate: {{data: {{path: x}}}}\npolicy_overides: []\n"
    )
    proc = call_cli("aop_ray.train", "--pipeline", str(pipeline), cwd=tmp_path)
    assert proc.returncode == 2 and "policy_overides: unknown key" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]
