from pathlib import Path

import pytest
import yaml

from aop_ray.config import Config, TrainConfig, load_config
from aop_ray.errors import InputError
from aop_ray.training.loop import lr_at

BASE = """
name: t
task: {name: sudoku, size: 4}
data: {train: {path: somewhere}}
"""


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.lr=3e-4", "model.d_model=64", "ray.num_workers=1"])
    assert cfg.train.lr == 3e-4 and cfg.model.d_model == 64 and cfg.ray.num_workers == 1
    assert cfg.task == {"name": "sudoku", "size": 4}
    assert Config.from_dict(cfg.to_dict()) == cfg  # the dict that travels to Ray workers


@pytest.mark.reliability
@pytest.mark.parametrize(
    "extra,message",
    [
        ("train: {lrr: 1}", "train.lrr: unknown key"),
        ("train: {lr: fast}", "train.lr: expected float, got str 'fast'"),
        ("train: {steps: 1.5}", "train.steps: expected int"),
        ("train: {steps: -3}", "train.steps: must be > 0, got -3"),
        ("model: {d_model: 30, n_heads: 4}", "model.n_heads: 4 does not divide model.d_model 30"),
        ("train: {loss_weighting: sum}", "train.loss_weighting: must be one of elbo, mean"),
        ("ray: {num_workers: true}", "ray.num_workers: expected int, got bool"),
        ("bogus: 1", "bogus: unknown key"),
        ("aop: {pairwise_k: 0}", "aop.pairwise_k: must be > 0, got 0"),
        (
            "train: {stage: joint}\naop: {denoiser_checkpoint: d, objective: pairwise}",
            "aop.objective: pairwise uses the costs only as labels",
        ),
        (
            "train: {stage: joint}\naop: {denoiser_checkpoint: d, objective: correctness, target: error}",
            "aop.objective: correctness uses the costs only as labels",
        ),
        ("aop: {objective: correctness, target: ce}", "aop.target: objective correctness fits the probability"),
        ("policy: {encoder: token_axis}", "policy.features: encoder token_axis reads exactly"),
        ("policy: {encoder: clause_graph}", "policy.encoder: clause_graph reads a 3-SAT formula; the sudoku task"),
        (
            "policy: {encoder: clause_graph, features: [probs]}",
            "policy.features: encoder clause_graph reads exactly probs, stats",
        ),
        ("aop: {target: dead_end}", "aop.target: dead_end needs a task with a solver \\(sat\\); the sudoku task"),
        (
            "aop: {trajectory_tokens: argmax, target: error}",
            "aop.trajectory_tokens: argmax trajectories leave the reference's path, so they need aop.states "
            "trajectory and a reference-free aop.target \\(dead_end, energy\\), got states 'trajectory', "
            "target 'error'",
        ),
        ("aop: {trajectory_tokens: greedy}", "aop.trajectory_tokens: must be one of reference, argmax, got .greedy."),
        (
            "aop: {token_temperature: 0.5, target: error}",
            "aop.token_temperature: sampled trajectories are scored by target energy only \\(target 'error' runs "
            "at token_temperature 0\\)",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, extra, message):
    with pytest.raises(InputError, match=message) as err:
        load_config(write(tmp_path, BASE + extra + "\n"))
    assert str(err.value).startswith(str(tmp_path / "c.yaml"))


@pytest.mark.reliability
def test_grpo_is_refused_for_a_task_without_a_verifier(tmp_path):
    """A protein 'verifies' every completion, so GRPO's reward would be constant: refused, with the key."""
    text = BASE.replace("task: {name: sudoku, size: 4}", "task: {name: protein, length: 12, family: toy}")
    text += "train: {stage: grpo}\naop: {denoiser_checkpoint: d}\n"
    with pytest.raises(
        InputError, match="train.stage: grpo rewards a rollout by the task's verifier, and task 'protein' has none"
    ):
        load_config(write(tmp_path, text))
    load_config(write(tmp_path, text.replace("stage: grpo", "stage: policy")))  # the AOP stage is fine


@pytest.mark.reliability
def test_bad_task(tmp_path):
    with pytest.raises(InputError, match="task.name: unknown task 'chess'"):
        load_config(write(tmp_path, BASE.replace("sudoku", "chess")))
    with pytest.raises(InputError, match="task.size: Sudoku size must be one of"):
        load_config(write(tmp_path, BASE.replace("size: 4", "size: 5")))
    with pytest.raises(InputError, match="task.colour: unknown key"):
        load_config(write(tmp_path, BASE.replace("size: 4", "colour: 4")))


@pytest.mark.reliability
def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="missing 1 required positional argument: 'data'"):
        load_config(write(tmp_path, "task: {name: sudoku}\n"))
    with pytest.raises(InputError, match=r"c.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "task: {name: sudoku}\ndata: [unclosed\n"))
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.reliability
def test_bad_override(tmp_path):
    with pytest.raises(InputError, match="expected dotted.key=value"):
        load_config(write(tmp_path, BASE), ["train.lr"])
    with pytest.raises(InputError, match="train.lr: expected float"):
        load_config(write(tmp_path, BASE), ["train.lr=[1]"])


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "tune_configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads(path):
    """Stage configs load as `Config`, pipelines as `PipelineConfig`, sweeps as `SweepConfig`, each with
    every config it names."""
    from aop_ray.config import SweepConfig
    from aop_ray.pipeline import load_pipeline

    data = yaml.safe_load(path.read_text())
    if "orders" in data:
        sweep = load_config(path, cls=SweepConfig)
        if sweep.denoiser_config:
            load_config(sweep.denoiser_config)
        if sweep.train_config:
            load_config(sweep.train_config, [*sweep.train_overrides, "aop.denoiser_checkpoint=x"])
        assert sweep.name == data["name"]
        return
    if "policy_config" in data:
        pipeline = load_pipeline(path)
        load_config(pipeline.denoiser_config, pipeline.denoiser_overrides)
        assert load_config(pipeline.policy_config, pipeline.policy_overrides).train.stage == "policy"
        return
    needs_denoiser = data["train"].get("stage", "denoiser") != "denoiser" and not data.get("aop", {}).get(
        "denoiser_checkpoint"
    )
    cfg = load_config(path, ["aop.denoiser_checkpoint=x"] if needs_denoiser else [])
    assert cfg.name == data["name"]


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    cosine = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cosine) == pytest.approx(1e-4) and lr_at(9, cosine) == pytest.approx(1e-3)
    assert lr_at(60, cosine) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way down the cosine
    assert lr_at(110, cosine) == pytest.approx(1e-4) and lr_at(500, cosine) == pytest.approx(1e-4)
    constant = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=1.0)
    assert {lr_at(step, constant) for step in range(10, 200)} == {1e-3}
