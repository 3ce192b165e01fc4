"""Wake-up flags: at most one pending message per queue of stored work, however many rows arrive.

Work is stored in PostgreSQL first (the inbox tables); a message only tells a worker that there is something
to drain. Sending one message per stored row costs a broker round trip and a task run per row, and most of
those tasks then find their rows already taken by the task before them. Instead the sender sets a Redis key
with ``SET NX`` after its commit and sends a message only when the key was free; the task deletes the key
*before* it claims rows. Whatever was committed before a failed ``SET NX`` is therefore seen by the claim of
the task that deletes the key next, and anything committed after the delete sets the key again and wakes
another task. The key expires after ``TTL_SECONDS`` so that a message lost with its key still set delays
work by at most that long; the beat sweeper covers the rest (DESIGN.md rule 6).
"""

from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)

TTL_SECONDS = 30
STRIPE_EVENTS = "billing:wake:stripe-events"
# How long a wake-up message for Stripe events waits before it runs: events arriving in the meantime find
# the flag set and ride along, so a busy receiver's events are handled a batch per message instead of a
# message per few events, for at most this much latency. Usage needs no linger: one request already
# carries up to 1,000 reports.
STRIPE_EVENTS_LINGER_SECONDS = 0.1


def usage_partition(partition: int) -> str:
    return f"billing:wake:usage:{partition}"


def redis_client(url: str) -> redis.Redis:
    # Short timeouts: a broker that is down must cost a request a second at most (the row is already safe).
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)


class Wakeups:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def arm(self, key: str) -> bool:
        """True when the caller must send the wake-up message (no other is pending)."""
        return bool(self.client.set(key, b"1", nx=True, ex=TTL_SECONDS))

    def disarm(self, key: str) -> None:
        """Called by the task before it claims rows. Never raises: a key left set only delays a wake-up."""
        try:
            self.client.delete(key)
        except redis.RedisError as exc:
            log.warning("could not clear wake-up key %s (%s); it expires by itself", key, type(exc).__name__)
