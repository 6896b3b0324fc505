"""Precision (fp32 or bf16 autocast) and the allocator setting: what `auto` picks, that bf16 decodes like fp32
within a stated tolerance, that losses, scores and weights stay fp32, and that results say which ran."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_bad_input import PUZZLE, tiny_checkpoint

from aop_ray import checkpoints, precision
from aop_ray.aop import aop_step, uniform_states
from aop_ray.config import AopConfig, PolicyConfig, TrainConfig, parse_dataclass
from aop_ray.errors import InputError
from aop_ray.losses import denoiser_loss
from aop_ray.models.policies import make_policy
from aop_ray.orders import DecodeState, get_order
from aop_ray.sampling import unmask
from aop_ray.tasks import mask_id

from conftest import ROOT, call_cli

CPU = torch.device("cpu")
SUDOKU9 = ROOT / "benchmarks" / "checkpoints" / "sudoku9"
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx512f avx512_vnni avx512_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""


def test_cpu_flags_are_read_from_the_first_processor():
    assert precision.cpu_flags(CPUINFO) == {"fpu", "sse2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}
    assert precision.cpu_flags("Features\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert precision.cpu_flags("") == frozenset()


@pytest.mark.parametrize(
    "flags,auto",
    [
        ({"avx512f", "avx512_bf16"}, "bf16"),
        ({"amx_bf16"}, "bf16"),
        ({"avx512f", "avx512_vnni"}, "fp32"),
        (set(), "fp32"),
    ],
)
def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(flags, auto):
    assert precision.resolve("auto", CPU, frozenset(flags)) == auto
    assert precision.resolve("fp32", CPU, frozenset(flags)) == "fp32"  # an explicit choice is kept either way
    assert precision.resolve("bf16", CPU, frozenset(flags)) == "bf16"
    assert precision.resolve("auto", torch.device("meta"), frozenset(flags)) == "fp32"  # unmeasured: fp32


def test_a_bad_precision_is_refused_by_name():
    with pytest.raises(InputError, match=r"^precision: must be one of auto, fp32, bf16, got 'fp16'$"):
        precision.resolve("fp16", CPU)
    with pytest.raises(InputError, match=r"^train.precision: must be one of auto, fp32, bf16, got 'half'$"):
        parse_dataclass(TrainConfig, {"precision": "half"}, "train")


def test_bf16_forwards_decode_like_fp32_within_the_stated_tolerance():
    """The committed 9x9 denoiser on 32 generated hard puzzles: under bf16 autocast every probability is
    within 0.05 of fp32's, and the argmax is the same wherever fp32's top-2 margin exceeds 0.05 (measured:
    0.017 and 1.0; the 1.2% of cells whose argmax moves are near-ties with margins under 0.012)."""
    denoiser, task, _ = checkpoints.load_denoiser(SUDOKU9)
    instances = task.generate(32, seed=3, clues=[24, 28])
    tokens = torch.as_tensor(instances.tokens)
    masked = tokens == mask_id(task)
    with torch.no_grad():
        fp32 = denoiser(tokens).float().softmax(-1)
        with precision.autocast("bf16", CPU):
            logits = denoiser(tokens)
        bf16 = logits.float().softmax(-1)
    assert logits.dtype == torch.bfloat16  # bf16 did run
    assert (fp32 - bf16).abs().max() < 0.05
    top2 = fp32.topk(2, dim=-1).values
    clear = masked & (top2[..., 0] - top2[..., 1] > 0.05)
    assert clear.sum() > 1000
    assert torch.equal(fp32.argmax(-1)[clear], bf16.argmax(-1)[clear])


def test_losses_scores_and_weights_stay_fp32_under_bf16(sudoku4):
    """The MDM loss, the AOP loss over the policy's softmax, the policy's scores and every gradient are fp32
    when the forwards run in bf16; the weights are never cast (a checkpoint is fp32)."""
    from aop_ray.config import ModelConfig
    from aop_ray.models.denoiser import Denoiser

    torch.manual_seed(0)
    model = ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)
    denoiser = Denoiser.for_task(sudoku4, model)
    g = torch.Generator().manual_seed(0)
    inst = sudoku4.generate(8, seed=0, clues=6)
    x0, fixed = torch.as_tensor(inst.target).long(), torch.as_tensor(inst.fixed)
    with precision.autocast("bf16", CPU):
        assert denoiser(x0).dtype == torch.bfloat16
        loss = denoiser_loss(denoiser, x0, fixed, mask_id(sudoku4), "elbo", g)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in denoiser.parameters() if p.grad is not None)
    for encoder in ("transformer", "token_axis"):
        features = ["probs", "stats"] if encoder == "transformer" else ["probs", "stats", "group_probs", "group_tokens"]
        policy = make_policy(sudoku4, 16, PolicyConfig(encoder=encoder, d_model=8, n_heads=2, features=features))
        xt = uniform_states(x0, fixed, mask_id(sudoku4), g)
        with precision.autocast("bf16", CPU):
            aop, _ = aop_step(denoiser, policy, xt, x0, mask_id(sudoku4), AopConfig(), joint=True)
            logits = denoiser(xt).float()
            scores = policy(DecodeState(tokens=xt, masked=xt == mask_id(sudoku4), logits=logits, hidden=None, step=0))
        assert aop.dtype == scores.dtype == torch.float32, encoder
        aop.backward()
        assert all(p.dtype == torch.float32 for p in [*policy.parameters(), *denoiser.parameters()])
        assert all(p.grad.dtype == torch.float32 for p in policy.parameters() if p.grad is not None)


def test_a_bf16_rollout_only_reveals_masked_positions(sudoku4):
    """The sampler reads fp32 logits whatever the forward ran in: a bf16 rollout is a valid rollout."""
    from aop_ray.config import ModelConfig
    from aop_ray.models.denoiser import Denoiser

    torch.manual_seed(1)
    denoiser = Denoiser.for_task(sudoku4, ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2))
    inst = sudoku4.generate(6, seed=2, clues=6)
    tokens = torch.as_tensor(inst.tokens)
    with precision.autocast("bf16", CPU):
        roll = unmask(denoiser, get_order("margin"), tokens, mask_id(sudoku4))
    masked = tokens == mask_id(sudoku4)
    assert torch.equal(roll.step_of >= 0, masked) and torch.equal(roll.tokens[~masked], tokens[~masked])
    assert roll.logp_token.dtype == torch.float32


def test_evaluate_says_and_records_its_precision(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "puzzles.txt").write_text(PUZZLE + "\n")
    argv = ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "puzzles.txt"), "--no-mlflow", "--quiet"]
    proc = call_cli("aop_ray.evaluate", *argv, "--precision", "bf16", "--out", str(tmp_path / "bf16"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "[aop-ray] device cpu, precision bf16"
    rows = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert [row["precision"] for row in rows] == ["bf16"] * 4
    proc = call_cli("aop_ray.evaluate", *argv, "--out", str(tmp_path / "auto"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    used = precision.resolve("auto", CPU)
    assert proc.stdout.splitlines()[0].startswith(f"[aop-ray] device cpu, precision {used} (auto: this CPU ")
    assert {row["precision"] for row in json.loads((tmp_path / "auto" / "results.json").read_text())} == {used}
    proc = call_cli("aop_ray.evaluate", *argv, "--precision", "fp16", cwd=tmp_path)
    assert proc.returncode == 2 and "argument --precision: invalid choice: 'fp16'" in proc.stderr


FAULTS = """
import resource, sys
from aop_ray.allocator import keep_freed_memory
kept = keep_freed_memory()
import torch
x = torch.ones(64, 1024, 1024 // 4)  # 64 MB: glibc would mmap every result of this size
for _ in range(20):  # the heap settles around the interpreter's small objects within about a dozen ops
    (x + 1).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    (x + 1).sum()  # a fresh 64 MB result each time, freed at once
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_reused_without_page_faults(tmp_path):
    """With glibc's defaults every large result is a fresh mmap: 64 MB is 16,384 pages faulted in and zeroed,
    per op. Kept, the freed block is reused and (almost) nothing faults. `AOP_RAY_MALLOC=default` opts out."""
    counts = {}
    for mode in ("default", "keep"):
        env = {"PATH": "/usr/bin:/bin", "AOP_RAY_MALLOC": mode}
        out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        kept, faults = out.stdout.split()
        counts[mode] = (kept, int(faults))
    assert counts["default"][0] == "False" and counts["default"][1] > 15_000
    assert counts["keep"][0] == "True" and counts["keep"][1] < counts["default"][1] / 8
