"""Webhook delivery as Stripe does it: signed JSON POSTs, retried with backoff, at least once, in no fixed order.

One background thread per emulator sends every new event to every registered endpoint that wants its type.
Fault settings let tests make delivery as hostile as the real thing can be: each event sent several times
(``duplicates``), a burst of events sent in random order (``shuffle``), events never sent (``drop_rate``),
and latency (``delay_ms``). Dropped events stay in ``/v1/events``: that is what reconciliation reads.

The sender waits on a condition built on the state's lock. Operations hold that lock while they record their
events, so everything one operation records arrives as one burst, which ``shuffle`` then reorders. No lock is
held while an HTTP request is in flight, so an endpoint may call the emulator's API while handling an event.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import requests
import stripe

from stripe_emulator.state import EmulatorState


@dataclass
class DeliverySettings:
    """Fault injection and retry policy; ``POST /_emulator/delivery`` changes any of these."""

    duplicates: int = 1  # copies of each event sent to each endpoint
    shuffle: bool = False  # send a burst of queued events in random order
    drop_rate: float = 0.0  # probability that an event is never sent (to a given endpoint)
    delay_ms: int = 0  # wait before the first attempt
    max_attempts: int = 6
    retry_base_ms: int = 200  # first retry after this long, doubling each time
    timeout_s: float = 5.0  # per HTTP attempt

    def validate(self) -> None:
        if self.duplicates < 1:
            raise ValueError("duplicates must be >= 1")
        if not 0.0 <= self.drop_rate <= 1.0:
            raise ValueError("drop_rate must be between 0 and 1")
        if self.delay_ms < 0 or self.retry_base_ms < 0 or self.max_attempts < 1 or self.timeout_s <= 0:
            raise ValueError("delay_ms and retry_base_ms must be >= 0, max_attempts >= 1, timeout_s > 0")


@dataclass(order=True)
class _Job:
    due: float  # time.monotonic() when it may be sent
    seq: int  # keeps the (possibly shuffled) order of jobs due at the same moment
    event_id: str = field(compare=False)
    endpoint_id: str = field(compare=False)
    copy: int = field(compare=False, default=1)
    attempt: int = field(compare=False, default=1)


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``payload``: ``t=<unix time>,v1=<HMAC-SHA256 hex>``."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)


def post_event(
    http: requests.Session, event: dict[str, Any], endpoint: dict[str, Any], timeout_s: float
) -> tuple[int | None, str | None]:
    """Send one signed event; ``(status code, None)`` or ``(None, connection error)``."""
    payload = json.dumps(event, indent=2)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": sign(payload, endpoint["secret"], int(time.time())),  # wall time: receivers check it
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    try:
        response = http.post(endpoint["url"], data=payload.encode("utf-8"), headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return response.status_code, None


class WebhookSender:
    """The delivery queue and its background thread, with a log of every attempt."""

    def __init__(self, state: EmulatorState, rng: random.Random | None = None) -> None:
        self.state = state
        self.rng = rng or random.Random()
        self._cond = threading.Condition(state.lock)
        self._http = requests.Session()
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()
        self._stopping = False
        self.reset()
        state.add_listener(self._on_event)

    def reset(self) -> None:
        """Default settings, empty queue and log. A request already in flight finishes but is not logged."""
        with self._cond:
            self.settings = DeliverySettings()
            self.log: list[dict[str, Any]] = []
            self._burst: list[str] = []  # ids of events recorded since the thread last looked
            self._jobs: list[_Job] = []  # heap by due time
            self._in_flight = 0
            self._generation = getattr(self, "_generation", 0) + 1
            self._cond.notify_all()

    def configure(self, changes: dict[str, Any]) -> DeliverySettings:
        """Apply ``changes`` (names of ``DeliverySettings`` fields) all or nothing; ValueError when invalid."""
        known = {f.name: f.type for f in fields(DeliverySettings)}
        unknown = set(changes) - set(known)
        if unknown:
            raise ValueError(f"unknown delivery settings: {', '.join(sorted(unknown))}")
        with self._cond:
            merged = asdict(self.settings)
            for name, value in changes.items():
                current = merged[name]
                if isinstance(current, bool):
                    merged[name] = value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
                else:
                    merged[name] = type(current)(value)
            candidate = DeliverySettings(**merged)
            candidate.validate()
            self.settings = candidate
            return candidate

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="stripe-emulator-webhooks", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._http.close()

    def idle(self) -> bool:
        return not self._burst and not self._jobs and self._in_flight == 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every queued delivery (retries included) is done; False if ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(self.idle, timeout)

    def counts(self) -> dict[str, int]:
        with self._cond:
            outcomes = [entry["outcome"] for entry in self.log]
            return {
                "queued": len(self._burst) + len(self._jobs) + self._in_flight,
                "delivered": outcomes.count("delivered"),
                "failed": outcomes.count("failed"),
                "dropped": outcomes.count("dropped"),
            }

    def deliver_now(self, event_id: str) -> list[dict[str, Any]]:
        """Send one event again, at once, to every endpoint that wants it; no faults, no retries."""
        with self._cond:
            event = self.state.get("event", event_id)
            payload = json.loads(json.dumps(event))
            endpoints = [dict(e) for e in self.state.endpoints_for(event["type"])]
            timeout_s = self.settings.timeout_s
        results = []
        for endpoint in endpoints:
            with requests.Session() as http:  # the sender thread owns self._http; sessions are not thread-safe
                status, error = post_event(http, payload, endpoint, timeout_s)
            entry = self._entry(payload, endpoint, copy=1, attempt=1, status=status, error=error, manual=True)
            with self._cond:
                self.log.append(entry)
            results.append(entry)
        return results

    # -- the background thread -----------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        # Called by the state with its lock held, i.e. with this condition's lock held.
        self._burst.append(event["id"])
        self._cond.notify_all()

    def _schedule_burst(self) -> None:
        """Turn newly recorded events into jobs: drop some, copy some, maybe shuffle, then queue them."""
        settings = self.settings
        jobs: list[tuple[str, str, int]] = []
        for event_id in self._burst:
            event = self.state.objects["event"].get(event_id)
            if event is None:
                continue
            for endpoint in self.state.endpoints_for(event["type"]):
                if self.rng.random() < settings.drop_rate:
                    self.log.append(self._entry(event, endpoint, copy=1, attempt=0, outcome="dropped"))
                    continue
                jobs.extend((event_id, endpoint["id"], n) for n in range(1, settings.duplicates + 1))
        self._burst = []
        if settings.shuffle:
            self.rng.shuffle(jobs)
        due = time.monotonic() + settings.delay_ms / 1000
        for event_id, endpoint_id, n in jobs:
            heapq.heappush(self._jobs, _Job(due, next(self._seq), event_id, endpoint_id, copy=n))

    def _next_job(self) -> _Job | None:
        """Wait (lock held) until a job is due; None when stopping."""
        while not self._stopping:
            if self._burst:
                self._schedule_burst()
            if self._jobs and self._jobs[0].due <= time.monotonic():
                return heapq.heappop(self._jobs)
            self._cond.wait(self._jobs[0].due - time.monotonic() if self._jobs else None)
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._next_job()
                if job is None:
                    return
                event = self.state.objects["event"].get(job.event_id)
                endpoint = self.state.webhook_endpoints.get(job.endpoint_id)
                if event is None or endpoint is None:  # reset since it was queued
                    self._cond.notify_all()
                    continue
                payload, endpoint = json.loads(json.dumps(event)), dict(endpoint)
                generation, settings = self._generation, self.settings
                self._in_flight += 1
            status, error = post_event(self._http, payload, endpoint, settings.timeout_s)
            with self._cond:
                if generation == self._generation:  # else a reset cleared the queue (and this count) meanwhile
                    self._in_flight -= 1
                    self._finish(job, payload, endpoint, status, error, settings)
                self._cond.notify_all()

    def _finish(
        self,
        job: _Job,
        event: dict[str, Any],
        endpoint: dict[str, Any],
        status: int | None,
        error: str | None,
        settings: DeliverySettings,
    ) -> None:
        entry = self._entry(event, endpoint, copy=job.copy, attempt=job.attempt, status=status, error=error)
        self.log.append(entry)
        if entry["outcome"] == "delivered":
            stored = self.state.objects["event"].get(job.event_id)
            if stored is not None and job.copy == 1 and stored["pending_webhooks"] > 0:
                stored["pending_webhooks"] -= 1
        elif job.attempt < settings.max_attempts:
            delay = settings.retry_base_ms / 1000 * 2 ** (job.attempt - 1)
            job.due, job.seq, job.attempt = time.monotonic() + delay, next(self._seq), job.attempt + 1
            heapq.heappush(self._jobs, job)

    @staticmethod
    def _entry(
        event: dict[str, Any],
        endpoint: dict[str, Any],
        *,
        copy: int,
        attempt: int,
        status: int | None = None,
        error: str | None = None,
        outcome: str | None = None,
        manual: bool = False,
    ) -> dict[str, Any]:
        if outcome is None:
            outcome = "delivered" if status is not None and 200 <= status < 300 else "failed"
        return {
            "event_id": event["id"],
            "event_type": event["type"],
            "endpoint_id": endpoint["id"],
            "url": endpoint["url"],
            "copy": copy,
            "attempt": attempt,
            "status_code": status,
            "error": error,
            "outcome": outcome,
            "manual": manual,
            "at": time.time(),
        }
