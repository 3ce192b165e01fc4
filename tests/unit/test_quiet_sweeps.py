"""``billing dev``'s quiet sweeps: the routine INFO lines of beat's sweeps go, everything else stays."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery.app.trace import LOG_FAILURE, LOG_RECEIVED, LOG_RETRY, LOG_SUCCESS

from worker.celery_app import QuietSweeps

SWEEP, USAGE = "billing.sweep_inbox", "billing.apply_usage"


def record(logger: str, level: int, msg: str, args: Any = None, data: dict[str, Any] | None = None) -> Any:
    made = logging.LogRecord(logger, level, __file__, 1, msg, args, None)
    if data is not None:
        made.data = data
    return made


def worker_line(msg: str, task: str, level: int = logging.INFO):
    context = {"id": "1", "name": task}
    return record("celery.app.trace", level, msg, context, context)


@pytest.fixture
def quiet() -> QuietSweeps:
    return QuietSweeps(frozenset({SWEEP}))


def test_the_routine_lines_of_a_sweep_are_dropped(quiet):
    assert not quiet.filter(record("celery.beat", logging.INFO, "Scheduler: Sending due task %s (%s)", ("s", SWEEP)))
    assert not quiet.filter(worker_line(LOG_RECEIVED, SWEEP))
    assert not quiet.filter(worker_line(LOG_SUCCESS, SWEEP))


def test_retries_failures_and_other_tasks_still_show(quiet):
    assert quiet.filter(worker_line(LOG_RETRY, SWEEP))
    assert quiet.filter(worker_line(LOG_FAILURE, SWEEP, logging.ERROR))
    assert quiet.filter(worker_line(LOG_RECEIVED, USAGE))
    assert quiet.filter(worker_line(LOG_SUCCESS, USAGE))
    assert quiet.filter(record("celery.beat", logging.INFO, "Scheduler: Sending due task %s (%s)", ("u", USAGE)))
    assert quiet.filter(record("celery.beat", logging.INFO, "beat: Starting..."))
