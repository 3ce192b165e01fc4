"""gunicorn's configuration for the receiver (the Procfile: ``gunicorn -c python:webhook_receiver.gunicorn_conf``).

Loaded by the master, before any worker forks: it imports gunicorn, prometheus' multiprocess helpers and
``billing_core.logs`` only, never the app.

- ``logger_class``: gunicorn's own lines (the master's and the workers' ``gunicorn.error``, the access log) in
  ``LOG_FORMAT``, secrets redacted, like every other line of the stack. In JSON an access line is
  ``{"message": "POST /v1/usage 202", "method", "path", "status", "bytes", "duration_ms", "remote_addr",
  "user_agent"}`` plus the request's context (``request_id``, ``account``, ``idempotency_key``, ``event_id``),
  which the app's request hook set in the same greenlet just before.
- ``child_exit``: a worker that exits is marked dead in ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.glogging import Logger
from prometheus_client import multiprocess

from billing_core import logs


class BillingLogger(Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self._format = logs.log_format()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                logs.prepare(handler, self._format)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if self._format != "json":
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = resp.status_code if hasattr(resp, "status_code") else int(str(resp.status).split()[0])
        method, path = environ.get("REQUEST_METHOD", "-"), environ.get("PATH_INFO", "-")
        self.access_log.log(
            logging.INFO,
            "%s %s %s",
            method,
            path,
            status,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "remote_addr": environ.get("REMOTE_ADDR"),
                "user_agent": environ.get("HTTP_USER_AGENT"),
            },
        )


logger_class = BillingLogger


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
