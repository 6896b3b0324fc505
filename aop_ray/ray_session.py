"""Joining Ray: the job's cluster under `ray job submit` (or `RAY_ADDRESS`), else a local one."""

from __future__ import annotations

import os
import signal
import threading

# Ray Train 2.60 starts a PreemptionWatcher actor per run whose creation logs an `E` line
# ("constructor arguments in the object store and max_restarts > 0") on every successful run.
# It only observes spot preemptions (recovery is FailureConfig's job), so it is off unless a
# user turns it on in the environment.
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Ray Train 2.60's controller polls its workers every 2 s, and a worker's `ray.train.report` waits until
# the controller has taken the previous report (a queue of one): every report after the first stalled
# training for up to 2 s. The 4x4 smoke policy trained at 155 samples/s with 80% of its time in that
# wait, and 3,000 samples/s with a 0.2 s poll (docs/design.md). A poll is one small remote call per worker.
POLL_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
DEFAULTS = {PREEMPTION_WATCHER: "0", POLL_INTERVAL: "0.2"}


def connect() -> None:
    """`ray.init` once per process, quietly; tasks and actors inherit the env vars set here."""
    import ray

    if ray.is_initialized():
        return
    env_vars = {key: value for key, value in DEFAULTS.items() if key not in os.environ}  # the user's win
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(
        address=os.environ.get("RAY_ADDRESS"),
        logging_level="WARNING",
        runtime_env={"env_vars": env_vars} if env_vars else None,
    )
    if main_thread and sigterm not in (None, signal.SIG_DFL):
        # A driver's `ray.init` replaces the SIGTERM handler with one that just exits; keep the entry
        # point's (cli.run_main), which ends the run as KILLED with exit code 143.
        signal.signal(signal.SIGTERM, sigterm)


def warm_train() -> None:
    """Start Ray Train's cluster-wide AutoscalingCoordinator actor now, without waiting for it.

    Ray Train 2.60 creates this detached actor on a run's first resource request and gives that request 5 s;
    on a loaded 2-core machine a fresh actor process took longer, and the run's console got a traceback that
    Ray itself calls safe to ignore (a CI rehearsal failed on it: docs/reliability.md). Started here, as the
    driver joins Ray, the actor comes up while the driver ships its inputs and Train starts its controller,
    so Train's request (by name, through the same constructor) finds it up or nearly. Waiting for it here
    instead cost every run on a fresh cluster 5-6 s on 2 cores. The constructor is Ray Data's internal one: a
    Ray without it has nothing to warm, and a run goes on as before.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()
