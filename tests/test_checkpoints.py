import os
import pickle
from pathlib import Path

import pytest
import torch

from aop_ray import checkpoints
from aop_ray.config import ModelConfig
from aop_ray.errors import InputError
from aop_ray.models.denoiser import Denoiser

pytestmark = pytest.mark.reliability
SMALL = ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)


def save(tmp_path, task, name="ckpt"):
    torch.manual_seed(0)
    model = Denoiser(task.vocab_size, task.position_groups(), SMALL)
    path = checkpoints.write_checkpoint(
        tmp_path / name, checkpoints.denoiser_manifest(task, SMALL, step=7), {"denoiser": model.state_dict()}
    )
    return model, path


def test_models_load_onto_the_requested_device():
    """`map_location` must move the model, not only the tensors it is loaded from: a denoiser left on the
    CPU would make `evaluate --device cuda` decode on the CPU. The meta device stands in for a GPU."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoints" / "sudoku9-policy"
    denoiser, task, manifest = checkpoints.load_denoiser(path, map_location="meta")
    policy = checkpoints.load_policy(path, task, manifest["model"], "meta")
    assert {t.device.type for m in (denoiser, policy) for t in [*m.parameters(), *m.buffers()]} == {"meta"}


def test_round_trip_gives_identical_outputs(tmp_path, sudoku4):
    model, path = save(tmp_path, sudoku4)
    loaded, task, manifest = checkpoints.load_denoiser(path, sudoku4)
    assert task == sudoku4 and manifest["step"] == 7
    x = torch.randint(0, 5, (3, 16))
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert sorted(os.listdir(path)) == ["denoiser.pt", "manifest.json"]


def test_checkpoint_for_other_task_is_refused(tmp_path, sudoku4, sudoku9):
    _, path = save(tmp_path, sudoku4)
    with pytest.raises(InputError, match="field 'size': 4 != 9"):
        checkpoints.load_denoiser(path, sudoku9)


def test_truncated_checkpoint_names_the_file(tmp_path, sudoku4):
    _, path = save(tmp_path, sudoku4)
    weights = path / "denoiser.pt"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(InputError, match=f"{weights}: truncated or corrupted"):
        checkpoints.load_denoiser(path)


def test_arbitrary_pickles_are_never_loaded(tmp_path, sudoku4):
    _, path = save(tmp_path, sudoku4)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    with open(path / "denoiser.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(InputError, match="truncated or corrupted"):
        checkpoints.load_denoiser(path)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_manifest_problems(tmp_path, sudoku4):
    with pytest.raises(InputError, match="not a checkpoint directory"):
        checkpoints.load_denoiser(tmp_path)
    _, path = save(tmp_path, sudoku4)
    (path / "manifest.json").write_text("{broken")
    with pytest.raises(InputError, match="corrupted manifest"):
        checkpoints.load_denoiser(path)


def test_weights_that_do_not_fit_the_manifest(tmp_path, sudoku4):
    _, path = save(tmp_path, sudoku4)
    other = Denoiser(4, sudoku4.position_groups(), ModelConfig(d_model=32, n_layers=1, n_heads=2))
    torch.save(other.state_dict(), path / "denoiser.pt")
    with pytest.raises(InputError, match="weights do not fit"):
        checkpoints.load_denoiser(path)


def test_rewrite_is_atomic_and_replaces(tmp_path, sudoku4):
    _, path = save(tmp_path, sudoku4)
    manifest = {k: v for k, v in checkpoints.read_manifest(path).items() if k != "format"}
    checkpoints.write_checkpoint(path, {**manifest, "step": 9}, {})
    assert checkpoints.read_manifest(path)["step"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("fail_at", [1, 2])  # the first tensor file, or the second after one was written
def test_a_write_that_fails_midway_leaves_the_old_checkpoint_and_no_debris(tmp_path, sudoku4, monkeypatch, fail_at):
    """A full disk or a kill during the write: the previous checkpoint stays whole and loadable."""
    model, path = save(tmp_path, sudoku4)
    real_save, calls = torch.save, []

    def failing_save(obj, file, *args, **kwargs):
        calls.append(file)
        if len(calls) == fail_at:
            open(file, "wb").write(b"half")  # a partial file, then the error
            raise OSError(28, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.write_checkpoint(
            path, {"kind": "denoiser", "step": 8}, {"optimizer": {"x": torch.zeros(2)}, "denoiser": model.state_dict()}
        )
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory left behind
    assert checkpoints.read_manifest(path)["step"] == 7
    loaded, _, _ = checkpoints.load_denoiser(path, sudoku4)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
