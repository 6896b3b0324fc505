"""The Gymnasium environments (envs/): conformance, semantics, agents against `aop_ray.evaluate`."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401 - registers aop/Unmask-v0
from aop_ray import checkpoints, data, evaluate
from aop_ray.config import ModelConfig, PolicyConfig
from aop_ray.errors import InputError
from aop_ray.models.denoiser import Denoiser
from aop_ray.models.policy import Policy
from aop_ray.tasks import Sudoku
from envs.agents import OrderAgent
from envs.state import IllegalAction
from envs.unmask import UnmaskEnv, UnmaskVectorEnv

SMALL = ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)
ORDERS = ["random", "confidence", "margin", "entropy", "singles", "learned"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained 4x4 denoiser checkpoint and 12 puzzles: enough for conformance and semantics."""
    root = tmp_path_factory.mktemp("env")
    task = Sudoku(4)
    torch.manual_seed(0)
    model = Denoiser(task.vocab_size, task.position_groups(), SMALL)
    ckpt = checkpoints.write_checkpoint(
        root / "denoiser", checkpoints.denoiser_manifest(task, SMALL, step=0), {"denoiser": model.state_dict()}
    )
    data.write_shards(task.generate(12, seed=7, clues=6), task, root / "puzzles")
    return ckpt, root / "puzzles"


def make(world, **kwargs) -> gym.Env:
    ckpt, puzzles = world
    return gym.make("aop/Unmask-v0", denoiser_checkpoint=str(ckpt), data=str(puzzles), **kwargs)


def test_single_env_passes_gymnasium_check_env(world):
    env = make(world, render_mode="ansi")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert obs["features"].shape == (16, 3) and obs["tokens"].dtype == np.int64
    assert np.array_equal(obs["action_mask"].astype(bool), obs["tokens"] == 4)
    assert np.array_equal(env.unwrapped.action_masks(), obs["action_mask"].astype(bool))
    board = env.render()
    assert board.count("\n") == 4 and board.count(".") == 10  # 4 rows + separator, 10 blanks
    frames = make(world, render_mode="rgb_array")
    frames.reset(seed=0)
    frame = frames.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.min() < frame.max()


def test_episode_fills_the_board_keeps_the_clues_and_pays_the_verifier(world):
    env = make(world, puzzles="sequential", dense_reward="correct", dense_weight=0.25)
    obs, info = env.reset(seed=0)
    clues = obs["tokens"] != 4
    start = obs["tokens"].copy()
    agent = OrderAgent("margin")
    total, steps, done = 0.0, 0, False
    while not done:
        obs, reward, done, truncated, info = env.step(agent.act(obs))
        total += reward
        steps += 1
        assert not truncated and not info["illegal"]
    assert steps == 10 and (obs["tokens"] < 4).all() and np.array_equal(obs["tokens"][clues], start[clues])
    target = env.unwrapped.episodes.batch.target[0].numpy()
    correct = int((obs["tokens"] == target)[~clues].sum())
    solved = (
        Sudoku(4)
        .verify(torch.as_tensor(obs["tokens"][None]), torch.as_tensor(start[None]), torch.as_tensor(clues[None]))
        .item()
    )
    assert info["solved"] == solved
    assert total == pytest.approx(float(solved) + 0.25 * correct)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)


@pytest.mark.reliability
def test_illegal_actions_are_refused_loudly_or_penalised_never_applied(world):
    env = make(world, illegal_action="error")
    obs, _ = env.reset(seed=1)
    clue = int(np.flatnonzero(obs["action_mask"] == 0)[0])
    with pytest.raises(IllegalAction, match=rf"action {clue} .* not a masked position: it is a clue"):
        env.step(clue)
    env = make(world)  # default: penalty
    obs, _ = env.reset(seed=1)
    after, reward, terminated, truncated, info = env.step(clue)
    assert reward == -1.0 and info["illegal"] and not terminated and not truncated
    assert np.array_equal(after["tokens"], obs["tokens"])
    for _ in range(31):  # 2L = 32 steps in all, every one illegal: the episode is truncated
        after, reward, terminated, truncated, info = env.step(clue)
    assert truncated and not terminated


@pytest.mark.reliability
def test_bad_constructor_arguments_name_the_argument(world):
    with pytest.raises(InputError, match="dense_reward"):
        make(world, dense_reward="bonus")
    with pytest.raises(InputError, match="puzzles"):
        make(world, puzzles="shuffled")
    with pytest.raises(InputError, match="no such file"):
        gym.make("aop/Unmask-v0", denoiser_checkpoint=str(world[0]), data="/nonexistent")
    with pytest.raises(InputError, match="device: not a torch device: 'gpu0'"):
        make(world, device="gpu0")
    with pytest.raises(InputError, match="precision: must be one of auto, fp32, bf16, got 'fp16'"):
        make(world, precision="fp16")


def test_a_bf16_env_plays_the_same_episode_interface(world):
    """`precision="bf16"` runs the forward under bf16 autocast; observations stay float32 and in their space."""
    env = make(world, precision="bf16", puzzles="sequential")
    obs, _ = env.reset(seed=0)
    assert obs["features"].dtype == np.float32 and env.observation_space.contains(obs)
    done = False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
        assert env.observation_space.contains(obs)
        done = terminated or truncated
    assert terminated and not obs["action_mask"].any()


def test_vector_env_matches_single_envs_step_for_step(world):
    ckpt, puzzles = world
    n = 3
    vec = UnmaskVectorEnv(n, str(ckpt), str(puzzles), puzzles="sequential", dense_reward="logp")
    singles = [UnmaskEnv(str(ckpt), str(puzzles), puzzles="sequential", dense_reward="logp") for _ in range(n)]
    vobs, info = vec.reset(seed=0, options={"index": [4, 5, 6]})
    assert vec.observation_space.contains(vobs) and list(info["index"]) == [4, 5, 6]
    sobs = [env.reset(options={"index": 4 + i})[0] for i, env in enumerate(singles)]
    agent = OrderAgent("entropy")
    finished = np.zeros(n, dtype=bool)
    while not finished.all():
        for key in ("tokens", "action_mask"):
            assert np.array_equal(vobs[key], np.stack([o[key] for o in sobs]))
        assert np.allclose(vobs["features"], np.stack([o["features"] for o in sobs]), atol=1e-5)
        actions = agent.act(vobs)
        vobs, vrew, vterm, vtrunc, vinfo = vec.step(actions)
        for i, env in enumerate(singles):
            if finished[i]:
                continue
            sobs[i], rew, term, _, _ = env.step(int(actions[i]))
            assert vrew[i] == pytest.approx(rew, abs=1e-5) and vterm[i] == term
        finished |= vterm
    # Next-step autoreset: the following step restarts the finished boards, ignoring their actions.
    vobs, vrew, vterm, vtrunc, vinfo = vec.step(np.zeros(n, dtype=np.int64))
    assert (vrew == 0).all() and not vterm.any() and vinfo["_index"].all()
    assert list(vinfo["index"]) == [0, 1, 2]  # the sequence continues after the explicit indices
    assert (vobs["action_mask"].sum(1) == 10).all()


def test_make_vec_builds_the_native_vector_env_and_batched_spaces_hold_its_observations(world):
    ckpt, puzzles = world
    vec = gym.make_vec(
        "aop/Unmask-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        denoiser_checkpoint=str(ckpt),
        data=str(puzzles),
    )
    assert isinstance(vec.unwrapped, UnmaskVectorEnv) and vec.num_envs == 3
    obs, _ = vec.reset(seed=0)
    assert vec.observation_space.contains(obs) and vec.action_space.shape == (3,)
    obs, reward, terminated, truncated, _ = vec.step(vec.action_space.sample())
    assert vec.observation_space.contains(obs) and reward.dtype == np.float64 and terminated.dtype == bool
    vec.close()


@pytest.mark.reliability
def test_agents_only_ever_pick_masked_positions(world):
    ckpt, puzzles = world
    vec = UnmaskVectorEnv(4, str(ckpt), str(puzzles), illegal_action="error")  # an illegal pick would raise
    obs, _ = vec.reset(seed=2)
    for name in ("random", "confidence", "margin", "entropy", "singles"):
        agent = OrderAgent(name, str(ckpt), seed=1, order_temperature=0.5 if name == "margin" else 0.0)
        for _ in range(25):  # crosses episode ends and autoresets
            actions = agent.act(obs)
            live = obs["action_mask"].any(1)
            assert obs["action_mask"][live, actions[live]].all()
            obs, *_ = vec.step(actions)


def _policy_checkpoint(denoiser_dir: Path, out: Path) -> Path:
    """A policy with a random (non-zero) residual on the trained smoke denoiser, so `learned` is not margin."""
    denoiser, task, manifest = checkpoints.load_denoiser(denoiser_dir)
    model_cfg = ModelConfig(**manifest["model"])
    cfg = PolicyConfig(d_model=16, n_heads=2, features=["probs", "stats", "group_probs"])
    torch.manual_seed(1)
    policy = Policy(task, model_cfg.d_model, cfg)
    with torch.no_grad():
        policy.head[-1].weight.normal_(std=3.0)
    return checkpoints.write_checkpoint(
        out,
        checkpoints.policy_manifest(task, model_cfg, cfg, "policy", str(denoiser_dir), step=1),
        {"denoiser": denoiser.state_dict(), "policy": policy.state_dict()},
    )


def test_agent_returns_equal_evaluate_solve_rates(trained, tmp_path):
    """Same puzzles, same seed: every order's episode returns on the vector env = evaluate's solve count."""
    policy = _policy_checkpoint(trained / "runs" / "sudoku4-smoke" / "final", tmp_path / "policy")
    task = Sudoku(4)
    data.write_shards(task.generate(40, seed=11, clues=5), task, tmp_path / "puzzles")  # one clue count: the
    # boards finish together, so evaluate's batch and the vector env's stay the same rows at every step
    rows = evaluate.run_evaluation(
        evaluate.Evaluation(
            checkpoint=str(policy),
            data=str(tmp_path / "puzzles"),
            orders=",".join(ORDERS),
            seed=5,
            planner_nll=False,
            mlflow=False,
            progress=False,
        )
    )
    expected = {row["order"]: round(row["solve_rate"] * 40) for row in rows}
    measured = {}
    for name in ORDERS:
        vec = UnmaskVectorEnv(40, str(policy), str(tmp_path / "puzzles"), puzzles="sequential")
        obs, _ = vec.reset(seed=0)
        agent = OrderAgent(name, str(policy), seed=5)
        returns = np.zeros(40)
        for _ in range(11):  # 16 cells - 5 clues
            obs, reward, terminated, _, _ = vec.step(agent.act(obs))
            returns += reward
        assert terminated.all()
        measured[name] = int(returns.sum())
    assert measured == expected
    assert max(expected.values()) > 0  # the trained smoke denoiser solves some: the comparison is not 0 == 0
    assert len(set(expected.values())) > 1  # and the orders differ


def test_maskable_ppo_trains_on_the_env_with_no_glue(world):
    """sb3-contrib's MaskablePPO (the `test` extra) runs a few updates on `gym.make` envs, masks included."""
    sb3_contrib = pytest.importorskip("sb3_contrib")
    from stable_baselines3.common.env_util import make_vec_env

    ckpt, puzzles = world
    vec = make_vec_env(
        "aop/Unmask-v0", n_envs=2, seed=0, env_kwargs={"denoiser_checkpoint": str(ckpt), "data": str(puzzles)}
    )
    model = sb3_contrib.MaskablePPO(
        "MultiInputPolicy", vec, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu"
    )
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=128)
    assert model.num_timesteps == 128
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    obs = vec.reset()
    for _ in range(30):  # the trained policy, masked, never picks a clue or a revealed cell
        masks = np.stack(vec.env_method("action_masks"))
        actions, _ = model.predict(obs, action_masks=masks, deterministic=False)
        assert masks[np.arange(2), actions].all()
        obs, *_ = vec.step(actions)
