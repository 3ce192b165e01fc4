"""Sending work to the Celery workers, by task name only (the receiver never imports the worker code).

Called after the row is committed. A broker that is down must not turn an accepted request into an error:
the row is safe in PostgreSQL and the beat sweeper enqueues it later, so a failed send is logged and counted,
never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from celery import Celery

log = logging.getLogger(__name__)


class Enqueue(Protocol):
    def __call__(self, task: str, args: list[Any]) -> bool: ...


class CelerySender:
    def __init__(self, broker_url: str) -> None:
        self.app = Celery("billing-sender", broker=broker_url)
        self.app.conf.update(
            task_default_queue="billing",
            task_serializer="json",
            # Fail fast when Redis is down: the request has already been stored, the sweeper catches up.
            broker_connection_timeout=1,
            broker_connection_retry=False,
            broker_connection_max_retries=0,
            broker_transport_options={"socket_connect_timeout": 1, "socket_timeout": 2, "max_retries": 0},
        )
        self.failures = 0

    def __call__(self, task: str, args: list[Any]) -> bool:
        try:
            self.app.send_task(task, args=args, retry=False)
            return True
        except Exception as exc:  # any broker trouble: the sweeper will enqueue the stored row
            self.failures += 1
            log.warning("enqueue %s failed (%s); the inbox sweeper will pick it up", task, type(exc).__name__)
            return False

    def many(self, task: str, arg_lists: Iterable[list[Any]]) -> int:
        return sum(1 for args in arg_lists if self(task, args))
