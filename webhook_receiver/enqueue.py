"""Sending work to the Celery workers, by task name only (the receiver never imports the worker code).

Called after the rows are committed. A broker that is down must not turn an accepted request into an
error: the rows are safe in PostgreSQL and the beat sweeper enqueues them later, so a failed send is logged
and counted, never raised.

Stored work is announced with ``wake``: one message per queue while one is pending, not one per row (see
``billing_core.db.wakeups``). The request only notes what to wake; a thread of the receiver process talks to
Redis, at most once per queue every ``COALESCE_SECONDS``, so a burst of requests costs one round trip rather
than one each. A process that dies with a wake-up still noted loses nothing: the rows are committed and the
sweeper enqueues them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any, Protocol

import redis
from celery import Celery

from billing_core.db.wakeups import Wakeups, redis_client
from webhook_receiver.metrics import ENQUEUE_FAILURES

log = logging.getLogger(__name__)

# The waker thread's pause between two rounds: the most a wake-up waits for a round to start, and what
# bounds the Redis round trips of a busy process.
COALESCE_SECONDS = 0.05


class Enqueue(Protocol):
    def __call__(self, task: str, args: list[Any], *, countdown: float | None = None) -> bool: ...
    def wake(self, task: str, args: list[Any], key: str, *, countdown: float | None = None) -> None: ...


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
        self.wakeups = Wakeups(redis_client(broker_url))
        self._noted: dict[str, tuple[str, list[Any], float | None]] = {}  # key -> (task, args, countdown)
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one round at a time: a flush returns when everything noted is sent
        self._due = threading.Event()
        self._waker_pid: int | None = None

    def __call__(self, task: str, args: list[Any], *, countdown: float | None = None) -> bool:
        try:
            self.app.send_task(task, args=args, countdown=countdown, retry=False)
            return True
        except Exception as exc:  # any broker trouble: the sweeper will enqueue the stored row
            self._failed(task, exc)
            return False

    def wake(self, task: str, args: list[Any], key: str, *, countdown: float | None = None) -> None:
        """Note that ``task`` must run (``countdown`` seconds after it is sent) unless a message for ``key``
        is already pending; the waker thread sends it shortly."""
        with self._lock:
            self._noted[key] = (task, args, countdown)
        if self._waker_pid != os.getpid():
            self._start_waker()
        self._due.set()

    def flush(self) -> None:
        """Send every wake-up noted so far, now, in the calling thread (at exit; in tests)."""
        with self._sending:
            with self._lock:
                noted, self._noted = self._noted, {}
            for key, (task, args, countdown) in noted.items():
                self._wake_now(task, args, key, countdown)

    def _wake_now(self, task: str, args: list[Any], key: str, countdown: float | None) -> None:
        try:
            if not self.wakeups.arm(key):
                return
        except redis.RedisError as exc:
            self._failed(task, exc)
            return
        if not self(task, args, countdown=countdown):
            # The flag is set but no message went out: clear it so that the next commit tries again.
            self.wakeups.disarm(key)

    def _start_waker(self) -> None:
        # Started on first use in each process: a thread does not survive gunicorn's fork.
        with self._lock:
            if self._waker_pid == os.getpid():
                return
            self._waker_pid = os.getpid()
            threading.Thread(target=self._run_waker, name="billing-waker", daemon=True).start()
            atexit.register(self.flush)

    def _run_waker(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            try:
                self.flush()
            except Exception:  # never let the thread die: the next wake-up must still go out
                log.exception("the waker thread failed a round; the sweeper covers what it missed")
            time.sleep(COALESCE_SECONDS)

    def _failed(self, task: str, exc: Exception) -> None:
        ENQUEUE_FAILURES.inc()
        log.warning("enqueue %s failed (%s); the inbox sweeper will pick it up", task, type(exc).__name__)
