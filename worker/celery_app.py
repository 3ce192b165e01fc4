"""The Celery app, its delivery guarantees and the beat schedule.

At-least-once delivery with exactly-once effects (DESIGN.md rule 6): a message is acknowledged only after
its task returns (``acks_late``), a worker killed mid-task gets its message redelivered
(``reject_on_worker_lost``), and every task is safe to repeat because the inbox row and the ledger entry
are written in one transaction under a unique key. The beat sweeper makes the broker optional for
correctness: whatever a lost message should have done, the sweep does within a minute.
"""

from __future__ import annotations

import os

from celery import Celery

from billing_core.errors import MissingSetting

# How often the sweeper runs, and how old a pending row must be before the sweeper, not its message, is
# trusted to get it applied. Tunable for tests that stop the broker on purpose.
SWEEP_SECONDS = float(os.environ.get("BILLING_SWEEP_SECONDS", "10"))
STALE_SECONDS = int(os.environ.get("BILLING_SWEEP_STALE_SECONDS", "30"))


def _broker_url() -> str:
    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        raise SystemExit(MissingSetting("missing required setting REDIS_URL: set it in the environment").message)
    return url


app = Celery("billing", broker=_broker_url(), include=["worker.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One message at a time per process: a long batch must not sit on messages another process could take.
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue="billing",
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # Redis, minus the restore-on-close path that crashes a worker when Redis restarts (see worker.broker).
    broker_transport="worker.broker:Transport",
    # A message unacknowledged this long (its worker died with it) is delivered again; the sweeper usually
    # gets there first.
    broker_transport_options={"visibility_timeout": 600},
    worker_hijack_root_logger=False,
    beat_schedule={
        "sweep-inbox": {"task": "billing.sweep_inbox", "schedule": SWEEP_SECONDS},
        # Both sweeps are one indexed query when there is nothing to do, so they run as often as the inbox's:
        # a hold's reservation returns to the wallet within seconds of its TTL.
        "expire-holds": {"task": "billing.expire_holds", "schedule": SWEEP_SECONDS},
        "expire-grants": {"task": "billing.expire_grants", "schedule": SWEEP_SECONDS},
    },
    timezone="UTC",
)
