"""Quota notices: ``quota_warning`` at 80 % of an account's monthly token quota, ``quota_exhausted`` at 100 %.

The crossing is seen where the month's counter moves: ``TokenLimits.admit`` (pricing/limits.py) compares each
quota-limited account's counter before and after its increment, in Python, from the Lua script's answer. The
usage gate then calls ``quota_notices`` in the transaction that stores (and counts) the usage reports, so a
notice exists exactly when the usage that crossed the level does: a refused or rolled-back request gives its
tokens back and writes no notice. One notice per account, month and level: the dedupe key
(``quota:<account>:<YYYY-MM>:<level>``) makes a second crossing of the same level in a month (after tokens
were given back, or two racing processes) a no-op, and the next month's counter starts at zero, which re-arms
both levels. A call that crosses both levels at once sends ``quota_exhausted`` alone.

Placing a hold does not cross a level: it checks the quota without counting. Its tokens count when its usage is
reported, or when it is captured over HTTP (``TokenLimits.record_settled``, after the capture's commit, which
writes the crossing's notice in a short transaction of its own).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from billing_core.notify.outbox import notify


class Crossing(Protocol):
    """What a notice reads of a quota level crossed (``pricing.limits.QuotaCrossing``; a protocol so that
    notify, below pricing, does not import it)."""

    @property
    def account(self) -> str: ...
    @property
    def level(self) -> int: ...
    @property
    def current(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def percentage(self) -> float: ...
    @property
    def upgrade_url(self) -> str | None: ...
    @property
    def period_start(self) -> datetime: ...
    @property
    def resets_at(self) -> datetime: ...
    @property
    def at(self) -> datetime: ...


KINDS = {80: "quota_warning", 100: "quota_exhausted"}
METRIC = "tokens_month"  # as the 402 quota_exceeded, the usage view and POST /v1/check name it


def dedupe_key(account: str, period: str, level: int) -> str:
    return f"quota:{account}:{period}:{level}"


def payload(crossing: Crossing) -> dict[str, Any]:
    """Seed 002's quota shape (metric, current, limit, percentage, upgrade_url), with the month it counts."""
    return {
        "account": crossing.account,
        "metric": METRIC,
        "current": crossing.current,
        "limit": crossing.limit,
        "percentage": crossing.percentage,
        "level": crossing.level,
        "upgrade_url": crossing.upgrade_url,
        "period": f"{crossing.period_start:%Y-%m}",
        "resets_at": crossing.resets_at.isoformat(),
    }


def quota_notices(session: Session, crossings: Iterable[Crossing]) -> int:
    """Queue the notice of each crossing in the caller's transaction; how many were new (0: all replays)."""
    written = 0
    for crossing in crossings:
        written += notify(
            session,
            KINDS[crossing.level],
            dedupe_key(crossing.account, f"{crossing.period_start:%Y-%m}", crossing.level),
            account=crossing.account,
            payload=payload(crossing),
            now=crossing.at,
        )
    return written
