"""Property-based fuzzing: the Sudoku readers on arbitrary text, and the environment on arbitrary actions.

(The CNF and FASTA readers and the sampler's invariants are fuzzed next to their other tests, in
test_sat.py, test_protein_oracles.py and test_orders_sampling.py.)
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import envs  # noqa: F401 - registers aop/Unmask-v0
from aop_ray import checkpoints, data
from aop_ray.config import ModelConfig
from aop_ray.errors import InputError
from aop_ray.models.denoiser import Denoiser
from aop_ray.tasks import Sudoku

pytestmark = pytest.mark.reliability
SOLUTION = "1234341221434321"
fuzz = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def near_valid_lines(draw: st.DrawFn) -> str:
    """A puzzle line close to a valid one (blanked, mutated, cut or extended), so the deep checks run too."""
    cells = list(SOLUTION)
    for i in draw(st.sets(st.integers(0, 15), min_size=4)):
        cells[i] = draw(st.sampled_from("0.0"))
    for i, ch in draw(st.lists(st.tuples(st.integers(0, 15), st.sampled_from("0123456789.x -,")), max_size=2)):
        cells[i] = ch
    line = "".join(cells)
    return draw(st.sampled_from([line, line[:-1], line + "1", line, f"{line},{SOLUTION}", "puzzle,solution"]))


@fuzz
@given(
    lines=st.lists(st.one_of(st.just(""), near_valid_lines(), st.text(max_size=20)), min_size=1, max_size=6),
    suffix=st.sampled_from([".txt", ".csv"]),
)
@example(lines=["\x1e0"], suffix=".txt")  # str.splitlines ends a line at \x1e; an editor does not (found in CI)
def test_sudoku_reader_parses_or_names_file_and_line(tmp_path, lines, suffix):
    """Any text either parses into boards whose clues agree with their solutions, or is one InputError that
    starts with `file:line:` (a line that exists) and never any other exception."""
    path = tmp_path / f"fuzz{suffix}"
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    n_lines = text.replace("\r\n", "\n").replace("\r", "\n").count("\n")  # as text mode reads them
    try:
        instances = Sudoku(4).read(path)
    except InputError as err:
        message = str(err)
        assert message.startswith(f"{path}") and len(message.splitlines()) == 1
        where = message[len(str(path)) :].split(":")
        if len(where) > 2 and where[1].isdigit():
            assert 1 <= int(where[1]) <= n_lines
        return
    known = instances.target >= 0
    fixed = instances.fixed
    assert (instances.tokens[fixed] == instances.target[fixed]).all() | (~known.any())
    assert ((instances.tokens == 4) == ~fixed).all()  # every non-clue cell is the mask token


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-env")
    task, small = Sudoku(4), ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)
    torch.manual_seed(0)
    model = Denoiser(task.vocab_size, task.position_groups(), small)
    ckpt = checkpoints.write_checkpoint(
        root / "denoiser", checkpoints.denoiser_manifest(task, small, step=0), {"denoiser": model.state_dict()}
    )
    data.write_shards(task.generate(8, seed=3, clues=[4, 12]), task, root / "puzzles")
    return gym.make("aop/Unmask-v0", denoiser_checkpoint=str(ckpt), data=str(root / "puzzles"))


@fuzz
@given(seed=st.integers(0, 2**16), actions=st.lists(st.integers(0, 15), min_size=1, max_size=40))
def test_any_action_sequence_keeps_clues_and_reveals_only_masked_cells(world, seed, actions):
    """Random boards (the seed picks the puzzle) and random positions, legal or not: a clue never changes,
    a revealed cell never changes again, and an illegal action changes nothing at all."""
    obs, _ = world.reset(seed=seed)
    clues = obs["tokens"] != 4
    start = obs["tokens"].copy()
    for action in actions:
        before = obs["tokens"].copy()
        legal = bool(obs["action_mask"][action])
        obs, _, terminated, truncated, info = world.step(action)
        assert info["illegal"] == (not legal)
        changed = np.flatnonzero(obs["tokens"] != before)
        assert changed.tolist() == ([action] if legal else [])
        assert np.array_equal(obs["tokens"][clues], start[clues])
        assert np.array_equal(obs["action_mask"].astype(bool), obs["tokens"] == 4)
        if terminated or truncated:
            break
