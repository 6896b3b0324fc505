"""The user's path for real, on one machine: `ray start --head`, a second node, `ray job submit --working-dir`.

The second node gets its own Ray temp dir, as a second machine would have: its copy of the job's
working directory is then a different directory from the driver's, which is what broke datasets
written by the driver into its copy. Token authentication stays on: head, second node, job client
and the job's driver all read the same token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH). A client
without the token is refused.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RAY, ROOT, free_port, ray_test, stop_shared_ray

pytestmark = pytest.mark.ray

RAY_ERROR_LINE = re.compile(r"\d E \d+ \d+\]")  # Ray's C++ log format: `[date time E pid tid] file.cc:...`


def _ray(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (2 logical CPUs) and a second node (2 logical CPUs, its own temp dir) on loopback, and a copy
    of the checkout to submit as the job's working directory; the cluster is always stopped again."""
    ray_test()
    stop_shared_ray()  # one Ray cluster on this machine at a time (`ray stop` below stops every one)
    tmp = tmp_path_factory.mktemp("cluster")
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    checkout = tmp / "checkout"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    gcs, dashboard = free_port(), free_port()
    # The second node's sockets live under its temp dir, and a Unix socket path has at most 107 bytes: pytest's
    # own temp paths (longer under xdist, `popen-gw1/`) leave Ray's session path too little room.
    node_tmp = Path(tempfile.mkdtemp(prefix="aop-ray-node2-", dir="/tmp"))
    try:
        head = _ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
            env=env,
        )
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        node = _ray(
            "start",
            f"--address=127.0.0.1:{gcs}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            f"--temp-dir={node_tmp}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
            env=env,
        )
        assert node.returncode == 0, node.stdout[-2000:] + node.stderr[-2000:]
        yield {"env": env, "address": f"http://127.0.0.1:{dashboard}", "checkout": checkout, "tmp": tmp}
    finally:
        _ray("stop", "--force", env=env)
        shutil.rmtree(node_tmp, ignore_errors=True)


def _submit(cluster: dict, env_vars: dict[str, str], *args: str) -> tuple[int, str]:
    """`ray job submit --working-dir <copy of the checkout> --runtime-env-json ... -- python -m aop_ray.train ...`,
    as docs/cluster.md gives it; returns the exit code and the console the user sees."""
    job = _ray(
        "job",
        "submit",
        f"--address={cluster['address']}",
        f"--working-dir={cluster['checkout']}",
        "--runtime-env-json",
        json.dumps({"env_vars": env_vars}),
        "--",
        sys.executable,
        "-m",
        "aop_ray.train",
        *args,
        env=cluster["env"],
        timeout=900,
    )
    return job.returncode, job.stdout + job.stderr


def test_a_client_without_the_token_is_refused(cluster, tmp_path):
    no_token = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    assert _ray("job", "list", f"--address={cluster['address']}", env=no_token).returncode != 0


def test_main_job_runs_on_two_nodes_and_leaves_its_outputs_where_pointed(cluster):
    """`--quick` with the default relative data paths: the data reaches the second node's worker through Ray,
    and the checkpoint, evaluation files and MLflow runs land where the user pointed them."""
    out = cluster["tmp"] / "shared"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    code, console = _submit(
        cluster,
        {"MLFLOW_TRACKING_URI": uri, "AOP_RAY_SOURCE_COMMIT": commit.strip()},
        "--quick",
        f"ray.storage_path={out / 'runs'}",
        "ray.placement_strategy=STRICT_SPREAD",
    )
    assert code == 0 and "succeeded" in console.lower(), console[-5000:]
    assert "2 worker(s) on 2 node(s), device cpu, precision " in console, console[-5000:]
    assert console.count("step 20/20 ") == 1  # one progress line per report, from rank 0 only
    assert "Traceback" not in console and not RAY_ERROR_LINE.search(console), console[-5000:]
    (final,) = (out / "runs").glob("quick-*-policy/final/manifest.json")
    (results,) = (out / "runs").glob("quick-*-evaluate/results.json")
    assert [row["order"] for row in json.loads(results.read_text())][-1] == "learned"
    assert f"final checkpoint: {final.parent}" in console and f"at {uri}" in console
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("aop-ray").experiment_id])
    assert len(runs) == 2 + 6 and all(r.info.status == "FINISHED" for r in runs)  # policy, evaluation, 6 orders
    assert {r.data.tags["mlflow.source.git.commit"] for r in runs} == {commit.strip()}
    assert not list(cluster["checkout"].glob("runs")) and not (cluster["checkout"] / "mlflow.db").exists()


def test_a_job_whose_outputs_would_land_in_rays_copy_is_refused_before_any_work(cluster):
    """The relative defaults resolve into Ray's temporary copy of the working directory: refused in one
    line naming the setting, before any data, run directory or MLflow run is made."""
    uri = f"sqlite:///{cluster['tmp'] / 'refused' / 'mlflow.db'}"
    code, console = _submit(cluster, {"MLFLOW_TRACKING_URI": uri}, "--quick")
    assert code != 0 and "error: ray.storage_path: 'runs' is inside Ray's temporary copy" in console, console[-3000:]
    assert "Traceback" not in console
    code, console = _submit(cluster, {}, "--quick", f"ray.storage_path={cluster['tmp'] / 'refused' / 'runs'}")
    assert code != 0 and "error: MLFLOW_TRACKING_URI: " in console, console[-3000:]
    assert not (cluster["tmp"] / "refused").exists()
