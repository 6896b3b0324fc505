"""`aop/Unmask-v0`: choose which masked position the frozen denoiser fills next.

    import envs, gymnasium as gym
    env = gym.make("aop/Unmask-v0", denoiser_checkpoint="benchmarks/checkpoints/sudoku9",
                   data="data/sudoku9/val")
    vec = gym.make_vec("aop/Unmask-v0", num_envs=256, vectorization_mode="vector_entry_point", ...)

Observation (a `Dict`): `tokens` (L,) the board, mask id where masked; `action_mask` (L,)
1 where a position may be picked (masked, never a clue); `features` (L, 3) confidence,
margin and entropy of the denoiser's distribution at every position, from the same
forward that will fill the chosen cell. Action: `Discrete(L)`, the position to reveal; the
denoiser fills it (argmax, or sampled at `token_temperature`). Reward: see
`envs.state.RewardConfig` (the verifier's 1/0 at the end, optional dense terms; an illegal
action pays a penalty by default, or raises with `illegal_action="error"`). An episode is
one instance and ends when nothing is masked (truncated after 2L steps, which only illegal
actions can reach). `device="cuda"` runs the denoiser forward on a GPU; the boards and the
observations stay on the host. `precision` ("auto", "fp32", "bf16") is the forward's, as for
`evaluate --precision` (aop_ray/precision.py); observations are fp32 either way.

The task (Sudoku size, vocabulary) comes from the checkpoint, never from a flag.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from aop_ray import checkpoints, data
from aop_ray.errors import InputError
from aop_ray.precision import resolve
from aop_ray.tasks import Task, input_vocab_size
from envs.state import FEATURES, RewardConfig, UnmaskBatch, feature_bounds

PUZZLE_ORDERS = ("random", "sequential")


def observation_space(task: Task) -> spaces.Dict:
    low, high = feature_bounds(task.vocab_size)
    length = task.seq_len
    return spaces.Dict(
        {
            "tokens": spaces.MultiDiscrete(np.full(length, input_vocab_size(task))),
            "action_mask": spaces.MultiBinary(length),
            "features": spaces.Box(
                np.tile(low, (length, 1)), np.tile(high, (length, 1)), (length, len(FEATURES)), np.float32
            ),
        }
    )


def text_frame(text: str) -> np.ndarray:
    """(H, W, 3) uint8 image of the task's text rendering, for video wrappers such as `RecordVideo`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = text.splitlines()
    fig = Figure(figsize=(0.12 * max(map(len, lines)) + 0.3, 0.22 * len(lines) + 0.3), dpi=100)
    fig.text(0.5, 0.5, text, family="monospace", ha="center", va="center", fontsize=10)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class _Episodes:
    """The frozen denoiser, the instances, and which instance the next episode plays."""

    def __init__(
        self,
        denoiser_checkpoint: str,
        data_path: str,
        n: int,
        *,
        dense_reward: str,
        dense_weight: float,
        illegal_action: str,
        token_temperature: float,
        puzzles: str,
        limit: int | None,
        device: str,
        precision: str,
    ) -> None:
        if puzzles not in PUZZLE_ORDERS:
            raise InputError(f"puzzles: must be one of {', '.join(PUZZLE_ORDERS)}, got {puzzles!r}")
        if token_temperature < 0:
            raise InputError(f"token_temperature: must be >= 0, got {token_temperature}")
        try:
            where = torch.device(device)
        except RuntimeError:
            raise InputError(f"device: not a torch device: {device!r}") from None
        resolve(precision, where)  # refuses a bad value now, not at the first step
        denoiser, self.task, _ = checkpoints.load_denoiser(denoiser_checkpoint, map_location=where)
        instances = data.load_instances(self.task, data_path)
        if limit is not None:
            instances = instances.take(slice(0, limit))
        reward = RewardConfig(dense=dense_reward, dense_weight=dense_weight, illegal=illegal_action)  # type: ignore[arg-type]
        self.batch = UnmaskBatch(denoiser, self.task, instances, n, reward, precision)
        self.token_temperature = token_temperature
        self.puzzles = puzzles
        self.next = 0
        self.generator = torch.Generator()

    def pick(self, count: int, rng: np.random.Generator, options: dict[str, Any] | None) -> np.ndarray:
        """Instance indices for `count` new episodes: `options["index"]`, else in sequence or at random."""
        total = len(self.batch.instances)
        if options and "index" in options:
            index = np.atleast_1d(np.asarray(options["index"], dtype=np.int64))
            if index.shape != (count,) or (index < 0).any() or (index >= total).any():
                raise InputError(
                    f"reset options['index']: need {count} indices in [0, {total}), got {options['index']}"
                )
            return index
        if self.puzzles == "random":
            return rng.integers(total, size=count)
        index = (self.next + np.arange(count)) % total
        self.next += count
        return index

    def start(self, rows: np.ndarray, rng: np.random.Generator, options: dict[str, Any] | None = None) -> np.ndarray:
        index = self.pick(len(rows), rng, options)
        self.batch.load(rows, index)
        return index

    def reset(self, rows: np.ndarray, rng: np.random.Generator, options: dict[str, Any] | None) -> np.ndarray:
        """Start every board, reseed token sampling from `rng`, and run the first forward."""
        index = self.start(rows, rng, options)
        self.generator.manual_seed(int(rng.integers(2**62)))
        self.batch.refresh()
        return index


def _kwargs(
    dense_reward: str,
    dense_weight: float,
    illegal_action: str,
    token_temperature: float,
    puzzles: str,
    limit: int | None,
    device: str,
    precision: str,
) -> dict[str, Any]:
    return {
        "dense_reward": dense_reward,
        "dense_weight": dense_weight,
        "illegal_action": illegal_action,
        "token_temperature": token_temperature,
        "puzzles": puzzles,
        "limit": limit,
        "device": device,
        "precision": precision,
    }


class UnmaskEnv(gym.Env):
    """One instance at a time. See the module docstring for spaces and rewards."""

    metadata = {"render_modes": ["ansi", "human", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        denoiser_checkpoint: str,
        data: str,
        *,
        dense_reward: Literal["none", "logp", "correct"] = "none",
        dense_weight: float = 0.1,
        illegal_action: Literal["penalty", "error"] = "penalty",
        token_temperature: float = 0.0,
        puzzles: Literal["random", "sequential"] = "random",
        limit: int | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        precision: Literal["auto", "fp32", "bf16"] = "auto",
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InputError(f"render_mode: must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.episodes = _Episodes(
            str(denoiser_checkpoint),
            str(data),
            1,
            **_kwargs(dense_reward, dense_weight, illegal_action, token_temperature, puzzles, limit, device, precision),
        )
        self.task = self.episodes.task
        self.render_mode = render_mode
        self.observation_space = observation_space(self.task)
        self.action_space = spaces.Discrete(self.task.seq_len)
        self._row = np.zeros(1, dtype=np.int64)
        self._over = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        index = self.episodes.reset(self._row, self.np_random, options)
        self._over = False
        return self.episodes.batch.observe(0), self._info(int(index[0]))

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._over:
            raise gym.error.ResetNeeded("the episode is over (nothing left to unmask): call reset()")
        batch = self.episodes.batch
        out = batch.reveal(self._row, np.array([int(action)]), self.episodes.token_temperature, self.episodes.generator)
        batch.refresh()
        terminated, truncated = bool(out.terminated[0]), bool(out.truncated[0])
        self._over = terminated or truncated
        info = {**self._info(int(batch.index[0])), "illegal": bool(out.illegal[0])}
        if terminated:
            info["solved"] = bool(out.solved[0])
        if self.render_mode == "human":
            self.render()
        return batch.observe(0), float(out.reward[0]), terminated, truncated, info

    def _info(self, index: int) -> dict[str, Any]:
        return {"instance": self.episodes.batch.instances.ids[index], "index": index}

    def action_masks(self) -> np.ndarray:
        """(L,) bool: the legal actions (sb3-contrib MaskablePPO reads this)."""
        return self.episodes.batch.masked[0].numpy().copy()

    def render(self) -> str | np.ndarray | None:
        board = self.task.render(self.episodes.batch.tokens[0].numpy())
        if self.render_mode == "human":
            print(board, end="\n\n")
            return None
        return text_frame(board) if self.render_mode == "rgb_array" else board


class UnmaskVectorEnv(VectorEnv):
    """`num_envs` instances stepped together with one denoiser forward per step.

    Gymnasium 1.x next-step autoreset: the step that ends an episode returns its final
    observation, and the next step restarts that sub-environment (ignoring its action,
    reward 0, not terminated). `infos["solved"]` (masked by `infos["_solved"]`) reports
    the verifier's verdict on the step that terminates; `infos["illegal"]` marks refused
    actions.
    """

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        denoiser_checkpoint: str,
        data: str,
        *,
        dense_reward: Literal["none", "logp", "correct"] = "none",
        dense_weight: float = 0.1,
        illegal_action: Literal["penalty", "error"] = "penalty",
        token_temperature: float = 0.0,
        puzzles: Literal["random", "sequential"] = "random",
        limit: int | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        precision: Literal["auto", "fp32", "bf16"] = "auto",
    ) -> None:
        if num_envs < 1:
            raise InputError(f"num_envs: must be >= 1, got {num_envs}")
        self.episodes = _Episodes(
            str(denoiser_checkpoint),
            str(data),
            num_envs,
            **_kwargs(dense_reward, dense_weight, illegal_action, token_temperature, puzzles, limit, device, precision),
        )
        self.task = self.episodes.task
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space = observation_space(self.task)
        self.single_action_space = spaces.Discrete(self.task.seq_len)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rows = np.arange(num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        index = self.episodes.reset(self._rows, self.np_random, options)
        self._autoreset[:] = False
        return self.episodes.batch.observe(), {"index": index, "_index": np.ones(self.num_envs, dtype=bool)}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        batch = self.episodes.batch
        reward = np.zeros(self.num_envs)
        terminated, truncated, solved, illegal = (np.zeros(self.num_envs, dtype=bool) for _ in range(4))
        live = self._rows[~self._autoreset]
        if live.size:
            out = batch.reveal(live, actions[live], self.episodes.token_temperature, self.episodes.generator)
            reward[live], terminated[live], truncated[live] = out.reward, out.terminated, out.truncated
            solved[live], illegal[live] = out.solved, out.illegal
        infos: dict[str, Any] = {}
        restarting = self._rows[self._autoreset]
        if restarting.size:
            index = np.zeros(self.num_envs, dtype=np.int64)
            index[restarting] = self.episodes.start(restarting, self.np_random)
            infos.update(index=index, _index=self._autoreset.copy())
        batch.refresh()
        if terminated.any():
            infos.update(solved=solved, _solved=terminated.copy())
        if illegal.any():
            infos.update(illegal=illegal, _illegal=illegal.copy())
        self._autoreset = terminated | truncated
        return batch.observe(), reward, terminated, truncated, infos

    def action_masks(self) -> np.ndarray:
        """(num_envs, L) bool: the legal actions of every sub-environment."""
        return self.episodes.batch.masked.numpy().copy()

    def render(self) -> tuple[str, ...] | None:
        return tuple(self.task.render(row) for row in self.episodes.batch.tokens.numpy())
