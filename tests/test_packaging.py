"""An installed package carries the shipped configs, the committed checkpoints and the commands."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from aop_ray import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=build,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    (path,) = out.glob("aop_ray-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_ships_configs_checkpoints_and_every_package(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    configs = {f"aop_ray/tune_configs/{p.name}" for p in (ROOT / "tune_configs").glob("*.yaml")}
    assert configs and configs <= names
    checkpoints = {
        "aop_ray/checkpoints/" + p.relative_to(ROOT / "benchmarks/checkpoints").as_posix()
        for p in (ROOT / "benchmarks/checkpoints").rglob("*")
        if p.is_file()
    }
    assert len(checkpoints) >= 40 and checkpoints <= names, sorted(checkpoints - names)
    modules = {p.relative_to(ROOT).as_posix() for d in ("aop_ray", "envs") for p in (ROOT / d).rglob("*.py")}
    assert modules <= names, sorted(modules - names)


def test_wheel_declares_every_command(wheel: zipfile.ZipFile) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry).decode()
    for name, target in scripts.items():
        assert f"{name} = {target}" in text


def test_shipped_inputs_are_found_inside_the_package_without_a_checkout(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "site-packages" / "aop_ray"
    (package / "checkpoints" / "sudoku9").mkdir(parents=True)
    (package / "checkpoints" / "sudoku9" / "manifest.json").write_text("{}")
    (package / "tune_configs").mkdir()
    (package / "tune_configs" / "main.yaml").write_text("name: x\n")
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(config, "PACKAGE_DIR", package)
    monkeypatch.chdir(tmp_path)
    assert config.shipped("tune_configs/main.yaml") == package / "tune_configs" / "main.yaml"
    assert config.find_input("benchmarks/checkpoints/sudoku9") == str(package / "checkpoints" / "sudoku9")
    # the working directory's own copy wins, and what is nowhere is left for the caller to refuse by name
    (tmp_path / "benchmarks" / "checkpoints" / "sudoku9").mkdir(parents=True)
    assert config.find_input("benchmarks/checkpoints/sudoku9") == "benchmarks/checkpoints/sudoku9"
    assert config.find_input("benchmarks/checkpoints/nope") == "benchmarks/checkpoints/nope"
