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
    waited: list = []

    class Actor:
        class __ray_ready__:  # noqa: N801 (Ray's name)
            @staticmethod
            def remote() -> str:
                return "ready-ref"

    monkeypatch.setattr(data_side, "get_or_create_autoscaling_coordinator", Actor)
    monkeypatch.setattr(ray, "get", lambda ref, timeout: waited.append((ref, timeout)))
    ray_session.warm_train(timeout_s=7.0)
    assert waited == [("ready-ref", 7.0)]  # it waits for the actor, as long as it is told, not Train's 5 s

    def too_slow(ref, timeout):
        raise ray.exceptions.GetTimeoutError("not up")

    monkeypatch.setattr(ray, "get", too_slow)
    ray_session.warm_train(timeout_s=0.1)  # a coordinator still not up is left to Train: no error here
