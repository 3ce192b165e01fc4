"""The Celery app, its delivery guarantees and the beat schedule.

At-least-once delivery with exactly-once effects (DESIGN.md rule 6): a message is acknowledged only after
its task returns (``acks_late``), a worker killed mid-task gets its message redelivered
(``reject_on_worker_lost``), and every task is safe to repeat because the inbox row and the ledger entry
are written in one transaction under a unique key. The beat sweeper makes the broker optional for
correctness: whatever a lost message should have done, the sweep does within a minute.
"""

from __future__ import annotations

import logging

from celery import Celery, signals
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.schedules import crontab

from billing_core import logs
from billing_core.errors import MissingSetting
from billing_core.settings import Settings, load_settings
from worker import metrics  # noqa: F401  # the task metrics and log context, connected to Celery's signals


def _settings() -> Settings:
    # Read once, when ``celery -A worker`` imports the app: a missing variable stops start-up with one line.
    try:
        return load_settings().require("redis_url")
    except MissingSetting as exc:
        raise SystemExit(exc.message) from None


SETTINGS = _settings()
# Before Celery starts: its start-up warnings (running as root, say) go through the same handler as the rest.
logs.configure()
# The age after which the sweeper re-enqueues a pending row (worker.tasks reads it here).
STALE_SECONDS = SETTINGS.sweep_stale_seconds

app = Celery("billing", broker=SETTINGS.redis_url, include=["worker.tasks"])
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
        "sweep-inbox": {"task": "billing.sweep_inbox", "schedule": SETTINGS.sweep_seconds},
        # Both sweeps are one indexed query when there is nothing to do, so they run as often as the inbox's:
        # a hold's reservation returns to the wallet within seconds of its TTL.
        "expire-holds": {"task": "billing.expire_holds", "schedule": SETTINGS.sweep_seconds},
        "expire-grants": {"task": "billing.expire_grants", "schedule": SETTINGS.sweep_seconds},
        # The token counters into usage_records, a minute past each hour: the hour just closed is final.
        "flush-usage-records": {"task": "billing.flush_usage_records", "schedule": crontab(minute=1)},
        # A yearly plan's next month of allowance, when it begins (one indexed query when none is due).
        "grant-due-allowances": {"task": "billing.grant_due_allowances", "schedule": 60.0},
        # Auto-recharge's safety net (the usage drain triggers crossings at once): every minute.
        "auto-recharge-sweep": {"task": "billing.auto_recharge_sweep", "schedule": 60.0},
        # Reconciliation: Stripe's events since the checkpoint against the inbox, every 15 minutes.
        "reconcile-events": {"task": "billing.reconcile_events", "schedule": crontab(minute="*/15")},
        # ...and Stripe's paid objects of the last days against the ledger, daily at 02:00 UTC.
        "reconcile-objects": {"task": "billing.reconcile_objects", "schedule": crontab(minute=0, hour=2)},
        # The notifications outbox: due emails and webhooks, and new admin alerts (one indexed query when idle).
        "deliver-notifications": {"task": "billing.deliver_notifications", "schedule": 10.0},
        # Internal checks: the ledger's invariants, inbox lag, the outbox's backlog (admin alerts, once each).
        "health-checks": {"task": "billing.health_checks", "schedule": crontab(minute="*/5")},
    },
    timezone="UTC",
)


class QuietSweeps(logging.Filter):
    """Drops the INFO lines of the routine sweeps: beat sending them, a worker receiving them, their success.

    An idle stack would otherwise print nine lines every ten seconds. Their retries, warnings and failures
    still show, and so does every other task's line.
    """

    def __init__(self, tasks: frozenset[str]) -> None:
        super().__init__()
        self.tasks = tasks

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        # celery's worker lines carry their task in ``data``; beat's "Sending due task %s (%s)" in its args.
        data = getattr(record, "data", None)
        if isinstance(data, dict) and record.msg in (LOG_RECEIVED, LOG_SUCCESS):
            return data.get("name") not in self.tasks
        if record.name == "celery.beat" and str(record.msg).startswith("Scheduler: Sending due task"):
            args = record.args if isinstance(record.args, tuple) else ()
            return not (args and args[-1] in self.tasks)
        return True


def _quiet_sweeps() -> None:
    quiet = QuietSweeps(frozenset(entry["task"] for entry in app.conf.beat_schedule.values()))
    # A filter on a logger sees only the records logged on it: the three that write these lines.
    for name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).addFilter(quiet)


if SETTINGS.quiet_sweeps:
    _quiet_sweeps()


@signals.setup_logging.connect
def _setup_logging(loglevel: int | None = None, **_: object) -> None:
    # Connected, so Celery leaves logging alone: one handler, LOG_FORMAT (json by default), secrets redacted.
    logs.configure(level=loglevel or logging.INFO)


@signals.celeryd_after_setup.connect
def _banner(sender: str, instance: object, **_: object) -> None:
    # The worker's banner is printed, not logged: in JSON it would be the log's only lines that are not JSON.
    if logs.log_format() == "json":
        instance.quiet = True  # type: ignore[attr-defined]
        logging.getLogger("worker").info("worker %s starting", sender)
