"""The workers' metrics and log context, through Celery's signals.

Counters are written to ``PROMETHEUS_MULTIPROC_DIR`` (shared with the receiver, whose ``/metrics`` shows them):
each pool process writes its own file, and a process that exits is marked dead so that its live gauges go
(its counters stay, as Prometheus expects of counters).

Each task starts a fresh log context with its name and id, plus what its arguments say in billing words: a
Stripe event's id, a usage report's idempotency key and account (``billing_core.logs``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import signals
from prometheus_client import Counter, Histogram, multiprocess

from billing_core import logs

TASKS_PROCESSED = Counter("billing_tasks_processed_total", "Celery tasks that returned, by task", ["task"])
TASKS_FAILED = Counter(
    "billing_tasks_failed_total",
    "Celery tasks that raised (after any retries), by task and exception",
    ["task", "exception"],
)
TASKS_RETRIED = Counter("billing_tasks_retried_total", "Celery task retries scheduled, by task", ["task"])
TASK_SECONDS = Histogram(
    "billing_task_duration_seconds",
    "Celery task run time, by task",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

_started: dict[str, float] = {}  # task id -> perf_counter at prerun (this process's running tasks)


def _name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or "unknown")


@signals.task_prerun.connect
def _prerun(sender: Any = None, task_id: str | None = None, args: Any = None, **_: Any) -> None:
    if task_id is not None:
        _started[task_id] = time.perf_counter()
    logs.new_context(task=_name(sender), task_id=task_id, **_context_of(_name(sender), args))


@signals.task_postrun.connect
def _postrun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id is not None else None
    if started is not None:
        TASK_SECONDS.labels(_name(sender)).observe(time.perf_counter() - started)
    logs.clear_context()


@signals.task_success.connect
def _success(sender: Any = None, **_: Any) -> None:
    TASKS_PROCESSED.labels(_name(sender)).inc()


@signals.task_failure.connect
def _failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    TASKS_FAILED.labels(_name(sender), type(exception).__name__ if exception else "unknown").inc()


@signals.task_retry.connect
def _retry(sender: Any = None, **_: Any) -> None:
    TASKS_RETRIED.labels(_name(sender)).inc()


@signals.worker_process_shutdown.connect
def _process_exit(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())


def _context_of(task: str, args: Any) -> dict[str, Any]:
    """The log fields a task's arguments carry (only the tasks whose arguments name one thing)."""
    if not args:
        return {}
    first = args[0]
    if task == "billing.process_stripe_event" and isinstance(first, str):
        return {"event_id": first}
    if task == "billing.record_usage" and isinstance(first, dict):
        key, account = first.get("idempotency_key"), first.get("account")
        return {"idempotency_key": key, "account": account} if isinstance(key, str) else {}
    return {}
