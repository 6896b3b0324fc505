"""CLI surface: every option is documented, and bad input is one line on stderr with exit code 2."""

import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from aop_ray import evaluate, report, train, tune

from conftest import ROOT, call_cli


@pytest.mark.reliability
@pytest.mark.parametrize(
    "module,config,extra",
    [
        ("aop_ray.train", "sudoku4_smoke.yaml", []),
        (
            "aop_ray.tune",
            "smoke.yaml",
            [
                f"{key}={ROOT / 'tune_configs' / name}"
                for key, name in (
                    ("train_config", "sudoku4_policy_smoke.yaml"),
                    ("denoiser_config", "sudoku4_smoke.yaml"),
                )
            ],
        ),
    ],
)
def test_unreachable_mlflow_is_refused_before_any_compute(tmp_path, module, config, extra):
    """A bad MLFLOW_TRACKING_URI: one line naming it and --no-mlflow, exit 2, and no data generated, no
    run or sweep directory, no denoiser trained, no Ray started (both configs would do all of that first)."""
    (tmp_path / "afile").write_text("")
    uri = f"sqlite:///{tmp_path}/afile/mlflow.db"  # a store under a regular file cannot be opened
    proc = call_cli(
        module, "--config", str(ROOT / "tune_configs" / config), *extra, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith(f"error: MLflow tracking URI {uri!r} is unreachable")
    assert "--no-mlflow" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("module", [train, evaluate, tune, report])
def test_every_option_has_help(module):
    parser = module.build_parser()
    for action in parser._actions:
        assert action.help, f"{module.__name__}: option {action.option_strings or action.dest} has no help"
    text = parser.format_help()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text


@pytest.mark.parametrize("module", ["aop_ray.train", "aop_ray.evaluate", "aop_ray.tune", "aop_ray.report"])
def test_help_runs(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: python -m " + module in proc.stdout


def test_bad_config_key_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: {name: sudoku, size: 4}\ndata: {train: {path: x}}\ntrain: {stepz: 3}\n")
    proc = call_cli("aop_ray.train", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: {cfg}: train.stepz: unknown key")
    assert proc.stderr.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == [cfg]  # nothing written


BENCH_CKPT = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoints" / "sudoku9"


@pytest.mark.parametrize(
    "checkpoint,extra,message",
    [
        (BENCH_CKPT, ["--orders", "best"], "--orders: unknown order 'best' (known: random, confidence, margin, "),
        (BENCH_CKPT, ["--orders", "learned"], "--orders: 'learned' needs a policy checkpoint"),
        (
            BENCH_CKPT,
            ["--orders", "margin", "--reference", "random"],
            "--reference: 'random' is not one of --orders (margin)",
        ),
        (None, ["--k", "0"], "--k: must be >= 1"),
        (None, ["--threshold", "1.5"], "--threshold: a probability in (0, 1], got 1.5"),
        (None, [], "nowhere: not a checkpoint directory"),
    ],
)
def test_evaluate_bad_arguments(tmp_path, checkpoint, extra, message):
    argv = ["--checkpoint", str(checkpoint or tmp_path / "nowhere"), "--data", str(tmp_path), *extra, "--no-mlflow"]
    proc = call_cli("aop_ray.evaluate", *argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0


@pytest.mark.reliability
@pytest.mark.parametrize(
    "checkpoint,name,text,where",
    [
        ("sudoku9", "bad.txt", "0" * 80 + "x\n", 1),
        ("sat20", "bad.cnf", "c SATLIB-style\np cnf 20 91\n1 -2 3 0\n4 21 -5 0\n", 4),
        ("pf00014", "bad.fasta", ">a\n" + "A" * 53 + "\n>b\n" + "A" * 50 + "*!?\n", 4),
    ],
)
def test_malformed_files_are_refused_by_evaluate_naming_file_and_line(tmp_path, checkpoint, name, text, where):
    """Through the CLI, for every task: one line `FILE:LINE: ...`, exit 2, and no --out directory."""
    bad = tmp_path / name
    bad.write_text(text)
    proc = call_cli(
        "aop_ray.evaluate",
        "--checkpoint",
        str(BENCH_CKPT.parent / checkpoint),
        "--data",
        str(bad),
        "--out",
        str(tmp_path / "out"),
        "--no-mlflow",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith(f"error: {bad}:{where}: ") and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--config", "x.yaml", "--quick"], "--config runs one stage; --quick and --pipeline run a pipeline"),
        (["--resume"], "--resume continues one stage: give its --config"),
        (["--quick", "--pipeline", "p.yaml"], "--quick is a preset pipeline: give --quick or --pipeline, not both"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--config"], "expected one argument"),
    ],
)
def test_contradictory_train_arguments_are_one_line(tmp_path, argv, message):
    proc = call_cli("aop_ray.train", *argv, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    if "expected one" not in message:  # argparse's own errors come after its usage lines
        assert proc.stderr.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


def test_data_cli_generate_convert_and_refusals(tmp_path, capsys, sudoku4):
    from aop_ray import data

    out = tmp_path / "gen"
    assert data.main(["generate", "--param", "size=4", "--n", "5", "--option", "clues=6", "--out", str(out)]) == 0
    assert len(data.load_instances(sudoku4, out)) == 5
    assert data.main(["generate", "--param", "size=4", "--n", "5", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        data.main(["generate", "--param", "size=4", "--n", "5", "--option", "clue=3", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "unexpected keyword argument 'clue'" in capsys.readouterr().err
    text = tmp_path / "p.txt"
    text.write_text("1000040000400001\n")
    assert data.main(["convert", "--param", "size=4", "--input", str(text), "--out", str(tmp_path / "conv")]) == 0
    assert data.load_instances(sudoku4, tmp_path / "conv").ids == ["p:1"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("signum, code, line", [(None, 130, "interrupted (Ctrl-C)"), (15, 143, "terminated (SIGTERM)")])
def test_a_stopped_command_leaves_ray_before_its_last_line(monkeypatch, capsys, signum, code, line):
    """Until the driver leaves Ray it echoes its actors' logs, and Ray's own cleanup actors log as a stopped
    local cluster goes down; so Ray is left first and the `error:` line is the last thing printed."""
    from aop_ray import cli

    events = []
    fake = types.SimpleNamespace(is_initialized=lambda: True, shutdown=lambda: events.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(write=lambda s: events.append(s), flush=lambda: None))

    def body():
        if signum is None:
            raise KeyboardInterrupt
        cli._terminate(signum, None)  # as the SIGTERM handler would, outside a Ray Train fit

    monkeypatch.setattr(cli, "_terminated", threading.Event())
    assert cli.run_main(body) == code
    assert events[0] == "shutdown" and f"error: {line}" in "".join(events[1:])
