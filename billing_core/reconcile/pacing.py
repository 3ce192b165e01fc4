"""Stripe's limits, kept from our side: a token bucket in front of every request of a reconciliation run, and a
429 answered by sleeping its ``Retry-After`` and slowing down. Clock and sleep are injectable (tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from billing_core.stripe.gateway import StripeRateLimited

T = TypeVar("T")


@dataclass
class TokenBucket:
    """At most ``rate`` requests per second, ``burst`` of them at once."""

    rate: float
    burst: float = 1.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = field(default=-1.0, init=False)
    _at: float = field(default=0.0, init=False)

    def acquire(self) -> None:
        now = self.clock()
        if self._tokens < 0:
            self._tokens, self._at = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            wait = (1 - self._tokens) / self.rate
            self.sleep(wait)
            self._tokens, self._at = 1.0, self._at + wait
        self._tokens -= 1


@dataclass
class Pacer:
    """Calls Stripe through the bucket; on 429 sleeps what Stripe asked (else a doubling backoff), halves the
    rate (back up by a quarter every ``recover_after`` calls that pass, up to the configured one) and tries
    again, up to ``max_retries`` times in a row."""

    bucket: TokenBucket
    max_retries: int = 20
    recover_after: int = 50
    min_rate: float = 1.0
    requests: int = 0
    rate_limited: int = 0
    _ceiling: float = field(default=0.0, init=False)
    _ok_streak: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._ceiling = self.bucket.rate

    def call(self, request: Callable[[], T]) -> T:
        backoff = 0.5
        for attempt in range(self.max_retries + 1):
            self.bucket.acquire()
            self.requests += 1
            try:
                answer = request()
            except StripeRateLimited as limited:
                self.rate_limited += 1
                if attempt == self.max_retries:
                    raise
                self._ok_streak = 0
                self.bucket.rate = max(self.min_rate, self.bucket.rate / 2)
                self.bucket.sleep(limited.retry_after if limited.retry_after is not None else backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self._ok_streak += 1
            if self._ok_streak >= self.recover_after and self.bucket.rate < self._ceiling:
                self.bucket.rate = min(self._ceiling, self.bucket.rate * 1.25)
                self._ok_streak = 0
            return answer
        raise AssertionError("unreachable")


def pacer(
    requests_per_second: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Pacer:
    return Pacer(TokenBucket(requests_per_second, clock=clock, sleep=sleep))


class Paced:
    """Any gateway whose every method call goes through ``pace`` (the reads handlers make while a reconciliation
    run applies what it found share the run's budget and its 429 handling)."""

    def __init__(self, target: Any, pace: Pacer) -> None:
        self._target = target
        self._pace = pace

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def paced(*args: Any, **kwargs: Any) -> Any:
            return self._pace.call(lambda: attribute(*args, **kwargs))

        return paced
