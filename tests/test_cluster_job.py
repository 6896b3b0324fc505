"""The cluster path for real, on one machine: `ray start --head`, a second node, `ray job submit`.

Token authentication stays on: head, second node, job client and the job's driver all read the
same token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH), the consistent set-up that avoids the
"job client fails token auth" trap. A client without the token is refused.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOKE

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head (2 logical CPUs) and a worker node (2 logical CPUs) on loopback; always stopped again."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = _free_port(), _free_port()
    try:
        head = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
                    "--disable-usage-stats", env=env)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        node = _ray("start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                    f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats", env=env)
        assert node.returncode == 0, node.stdout[-2000:] + node.stderr[-2000:]
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        _ray("stop", "--force", env=env)


def test_ray_job_submit_trains_on_two_nodes_with_token_auth(two_node_cluster, tmp_path):
    env, address = two_node_cluster
    run = tmp_path / "job"
    overrides = [f"data.train.path={run / 'train'}", f"data.val.path={run / 'val'}", f"ray.storage_path={run / 'runs'}",
                 "name=two-nodes", "train.steps=20", "train.log_every=10", "train.checkpoint_every=10",
                 "ray.placement_strategy=STRICT_SPREAD"]
    entrypoint = [sys.executable, "-m", "aop_ray.train", "--config", str(SMOKE), *overrides, "--no-mlflow"]

    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    refused = _ray("job", "list", f"--address={address}", env=no_token)
    assert refused.returncode != 0

    job = _ray("job", "submit", f"--address={address}", "--", *entrypoint, env=env, timeout=600)
    output = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in output.lower(), output[-4000:]
    assert "2 worker(s) on 2 node(s)" in output, output[-4000:]
    assert (run / "runs" / "two-nodes" / "final" / "manifest.json").is_file()
