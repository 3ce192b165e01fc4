"""Reconciliation's pacing: the token bucket keeps to its rate; a 429 sleeps its Retry-After, halves the rate
and is tried again; the rate recovers after calls that pass; too many 429s in a row give up."""

from __future__ import annotations

import pytest

from billing_core.reconcile.pacing import Paced, Pacer, TokenBucket
from billing_core.stripe.gateway import StripeRateLimited


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_bucket_keeps_to_its_rate():
    time = FakeTime()
    bucket = TokenBucket(80.0, clock=time.clock, sleep=time.sleep)
    for _ in range(801):
        bucket.acquire()
    assert time.now == pytest.approx(10.0)  # 800 requests after the first: 10 s at 80/s


def test_a_429_sleeps_its_retry_after_slows_down_and_retries():
    time = FakeTime()
    pace = Pacer(TokenBucket(100.0, clock=time.clock, sleep=time.sleep), recover_after=3)
    answers: list[object] = [StripeRateLimited("slow down", retry_after=2.0), StripeRateLimited("again"), "page"]

    def call() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert pace.call(call) == "page"
    assert pace.rate_limited == 2 and pace.requests == 3
    assert time.sleeps == [2.0, 1.0]  # Retry-After; then, none said, the backoff (doubled once by then)
    assert pace.bucket.rate == 25.0
    for _ in range(3):
        pace.call(lambda: None)
    assert pace.bucket.rate == 31.25  # recovering, a quarter at a time, up to the configured rate


def test_too_many_429s_in_a_row_give_up():
    time = FakeTime()
    pace = Pacer(TokenBucket(10.0, clock=time.clock, sleep=time.sleep), max_retries=2)

    def limited() -> None:
        raise StripeRateLimited("no", retry_after=0.0)

    with pytest.raises(StripeRateLimited):
        pace.call(limited)
    assert pace.rate_limited == 3


def test_paced_wraps_every_method_of_its_target():
    time = FakeTime()
    pace = Pacer(TokenBucket(1.0, clock=time.clock, sleep=time.sleep))

    class Target:
        name = "gateway"

        def read(self, value: int) -> int:
            return value * 2

    paced = Paced(Target(), pace)
    assert paced.read(2) == 4 and paced.read(3) == 6
    assert paced.name == "gateway"
    assert pace.requests == 2 and time.now == pytest.approx(1.0)
