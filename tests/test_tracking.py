"""MLflow URIs: the driver pins relative stores, because Ray workers run in another directory."""

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
