"""MLflow URIs: the driver pins relative stores, because Ray workers run in another directory."""

import pytest

from aop_ray.tracking import resolve_uri


def test_relative_tracking_uris_are_pinned_to_the_driver_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_uri("sqlite:///x/m.db") == f"sqlite:///{tmp_path}/x/m.db"
    assert resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_uri("http://host:5000") == "http://host:5000"
    assert resolve_uri("mlruns") == str(tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_uri() == f"sqlite:///{tmp_path}/env.db"


def test_processes_opening_a_new_sqlite_store_together_all_succeed(tmp_path):
    """MLflow creates a sqlite store's schema on first open; several processes doing it at once used to
    collide ("table already exists"), refusing all but one."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = f"from aop_ray.tracking import Tracker\nTracker.start({uri!r}, 'race', 'r').end()\nprint('ok')\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-500:] for _, err in results]


def test_a_ctrl_c_during_an_mlflow_write_is_acted_on_after_the_write():
    """Interrupted mid-transaction, a sqlite store stays locked and the run cannot be marked KILLED: the
    write finishes first, then the KeyboardInterrupt is raised (and a second one nests the same way)."""
    import signal

    from aop_ray.tracking import _writes_finish

    done = []
    with pytest.raises(KeyboardInterrupt):
        with _writes_finish():
            signal.raise_signal(signal.SIGINT)
            with _writes_finish():
                signal.raise_signal(signal.SIGINT)
                done.append("inner write")
            done.append("outer write")
    assert done == ["inner write", "outer write"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
