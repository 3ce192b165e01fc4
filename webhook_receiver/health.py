"""Liveness, readiness (the database and the broker answer) and Prometheus metrics; no key needed."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from webhook_receiver.metrics import database_collector, render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import Health
from webhook_receiver.spec import endpoint

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@endpoint(answers={200: Health}, keyed=False, tags=("meta",))
def healthz():
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@endpoint(answers={200: Health, 503: Health}, keyed=False, tags=("meta",))
def readyz():
    """Readiness: the database answers (503 if not); the broker's state is reported, not required."""
    rt = runtime()
    checks: dict[str, str] = {}
    try:
        with rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(rt.settings.redis_url or "", socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        # Not fatal to intake (rows are swept later), but an operator wants to know.
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = checks["database"] == "ok"
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics")
@endpoint(answers={200: None}, keyed=False, tags=("meta",), media_type="text/plain")
def metrics() -> Response:
    """Prometheus metrics of every web and worker process sharing ``PROMETHEUS_MULTIPROC_DIR``, and the
    database's figures (text exposition format)."""
    body, content_type = render(database_collector())
    return Response(body, content_type=content_type)
