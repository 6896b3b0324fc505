"""The README's Python example runs as written, from a directory that is not the checkout."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env


def test_the_readme_example_runs_from_another_directory(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Comparing orders from Python") :]
    command = re.search(r"```bash\n(python -m aop_ray\.data generate[^\n]*)\n```", section).group(1)
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    env = cli_env(tmp_path, ray=False)  # the example decodes in its own process, without Ray
    made = subprocess.run(
        shlex.split(command.replace("python", sys.executable, 1)),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    printed = ast.literal_eval(ran.stdout.strip().splitlines()[-1])  # the last line: {order: solve rate}
    assert set(printed) == {"confidence", "margin", "learned"} and all(0 <= v <= 1 for v in printed.values())


@pytest.mark.skipif(
    importlib.util.find_spec("antiberty") is None, reason="needs the antibody extra (pip install -e '.[antibody]')"
)
def test_the_readme_own_model_example_runs_from_another_directory(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your own masked model") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["left_to_right", "confidence", "antiberty-cdrh3-policy"]
    for line in lines:  # twelve residues in place of the twelve masks
        loop = line.split()[1]
        assert len(loop) == 12 and set(loop) <= set("ACDEFGHIKLMNPQRSTVWY")
