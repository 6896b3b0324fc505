"""What `ray_session.connect` asks of Ray: the runtime env every run's controller and workers inherit."""

from __future__ import annotations

import pytest
import ray

from aop_ray import ray_session


@pytest.fixture
def captured(monkeypatch) -> dict:
    calls: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.update(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_the_controller_polls_every_0_2_s_and_the_preemption_watcher_is_off(captured, monkeypatch):
    for key in ray_session.DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    ray_session.connect()
    assert captured["runtime_env"] == {
        "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    }
    assert captured["address"] is None  # a local Ray unless the environment names a cluster


def test_the_users_environment_wins(captured, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    ray_session.connect()
    assert captured["runtime_env"] is None and captured["address"] == "10.0.0.1:6379"


def test_warm_train_starts_the_coordinator_that_ray_train_asks_for(monkeypatch):
    """Train's client must find by name the actor `warm_train` started: both go through one constructor."""
    from ray.data._internal.cluster_autoscaler import default_autoscaling_coordinator as data_side
    from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client as train_side

    assert train_side.get_or_create_autoscaling_coordinator is data_side.get_or_create_autoscaling_coordinator
    started: list = []
    monkeypatch.setattr(data_side, "get_or_create_autoscaling_coordinator", lambda: started.append(1))
    monkeypatch.setattr(ray, "get", lambda *a, **k: pytest.fail("warm_train must not wait for the actor"))
    ray_session.warm_train()
    assert started == [1]
