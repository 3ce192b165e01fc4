"""Token limits and plan quotas: hourly and daily rate limits and a monthly quota per account, counted in Redis.

What counts: the tokens of a request's items (``count_tokens``): an ``llm_tokens`` item's input, output and
cached input, a ``tokens`` item's tokens; nothing in ``own`` mode (the customer's own provider key does not
use the platform's upstream capacity). Fees, agents and raw credits use no tokens.

Where limits come from (``LimitPolicy``): the account's plan in the catalog (``plans`` of the price file; an
account without one is on ``default_plan``), field by field overridden by the wallet's ``limit_overrides``
(``null`` = unlimited, absent = the plan's).

Counters: one Redis key per account and window, the UTC hour, the UTC day and the UTC calendar month
(``<prefix>:<h|d|m>:<YYYYMMDDHH of the window's start>:<account>``), each expiring two days after its window
ends. ``TokenLimits.admit`` checks and increments every account of a batch in one Lua script (one round trip,
atomic: all or nothing); ``check`` reads the three windows of one account (one ``MGET``); ``record`` counts
usage that was admitted earlier (a hold's settlement) without checking. The script also adds each counter it
touches to a set, from which the hourly ``flush_usage_records`` copies the counters into ``usage_records``
(absolute values, never lowering what is stored: a re-run changes nothing) and then drops the members whose
counter has not moved since it read them.

Refusals: ``RateLimited`` (429: the hour's or the day's limit, ``retry_after`` = seconds until that window
resets) and ``QuotaExceeded`` (402: the month's quota, seed 002's shape). A request is refused when what it
adds would take a window above its limit; a request adding no tokens (a hold of credits alone) only when a
window is already at its limit. The month is checked first, then the day, then the hour: the refusal names
the window that resets last, so that retrying after ``retry_after`` can succeed.

Redis unreachable (connection refused, timeout): the limits fail open (nothing is refused, a warning is
logged at most once every ``WARN_EVERY_SECONDS``) or, with ``fail_closed``, refuse with
``LimitsUnavailable`` (503). The ledger does not depend on these counters either way: it charges exactly
what is reported.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import String, Table, any_, bindparam, cast, func, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.engine import compiled_sql
from billing_core.db.tables import UsageRecord, Wallet
from billing_core.errors import LimitsUnavailable, QuotaExceeded, RateLimited, UnknownPlan
from billing_core.notify.quota import quota_notices
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.plans import LIMIT_FIELDS

log = logging.getLogger(__name__)

METRIC = "tokens"
PERIODS = ("hour", "day", "month")
_SHORT = {"hour": "h", "day": "d", "month": "m"}
_PERIOD_OF = {v: k for k, v in _SHORT.items()}
# The order windows are checked in: the one that resets last first (see the module docstring).
_CHECK_ORDER = ("month", "day", "hour")
DEFAULT_PREFIX = "billing:tokens"
# A counter outlives its window by this much: the hourly flush reads it after the window ended.
GRACE = timedelta(days=2)
WARN_EVERY_SECONDS = 30.0
UNLIMITED = -1  # a limit as the Lua script reads it
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


# -- what counts --------------------------------------------------------------------------------------------
def count_tokens(items: Iterable[Any], mode: str = "system") -> int:
    """Tokens the items use of the platform's capacity: ``llm_tokens`` input + output + cached input, a
    ``tokens`` item's ``tokens``; 0 in ``own`` mode (the customer's own provider key)."""
    if mode == "own":
        return 0
    total = 0
    for item in items:
        kind = getattr(item, "type", None)
        if kind == "llm_tokens":
            total += item.input_tokens + item.output_tokens + getattr(item, "cached_input_tokens", 0)
        elif kind == "tokens":
            total += int(getattr(item, "tokens", 0) or 0)
    return total


# -- windows ------------------------------------------------------------------------------------------------
def window(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC window of ``period`` (hour, day or month) around ``now``: its start and its end (exclusive)."""
    now = now.astimezone(UTC)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"unknown period {period!r}")


def counter_key(prefix: str, account: str, period: str, start: datetime) -> str:
    # The account last: it may contain ':' and is everything after the fourth one.
    return f"{prefix}:{_SHORT[period]}:{start:%Y%m%d%H}:{account}"


def parse_counter_key(prefix: str, key: str) -> tuple[str, str, datetime] | None:
    """(account, period, window start) of a counter key, or None for a key that is not one."""
    if not key.startswith(prefix + ":"):
        return None
    parts = key[len(prefix) + 1 :].split(":", 2)
    if len(parts) != 3 or parts[0] not in _PERIOD_OF or not parts[2]:
        return None
    try:
        start = datetime.strptime(parts[1], "%Y%m%d%H").replace(tzinfo=UTC)
    except ValueError:
        return None
    return parts[2], _PERIOD_OF[parts[0]], start


# -- policies -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LimitPolicy:
    """An account's limits in tokens; None = unlimited."""

    plan: str
    hourly: int | None
    daily: int | None
    monthly: int | None
    upgrade_url: str | None = None

    def limit(self, period: str) -> int | None:
        return {"hour": self.hourly, "day": self.daily, "month": self.monthly}[period]


def policy_of(table: PriceTable, plan: str | None, overrides: Mapping[str, Any] | None) -> LimitPolicy:
    """The limits of ``plan`` (the catalog's default when None or no longer in the catalog) with the account's
    ``overrides`` (a key present overrides, ``None`` meaning unlimited)."""
    spec = table.spec
    name = plan if plan in spec.plans else spec.default_plan
    chosen = spec.plans[name]
    values: dict[str, int | None] = {field: getattr(chosen, field) for field in LIMIT_FIELDS}
    for field, value in (overrides or {}).items():
        if field in values and (value is None or (isinstance(value, int) and not isinstance(value, bool))):
            values[field] = value
    return LimitPolicy(
        plan=name,
        hourly=values["hourly_tokens"],
        daily=values["daily_tokens"],
        monthly=values["monthly_tokens"],
        upgrade_url=chosen.upgrade_url,
    )


_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_PLANS = select(_WALLETS.c.account, _WALLETS.c.plan, _WALLETS.c.limit_overrides).where(
    _WALLETS.c.account == any_(bindparam("a", type_=ARRAY(String)))
)


_PLAN_OF = select(_WALLETS.c.plan, _WALLETS.c.limit_overrides).where(_WALLETS.c.account == bindparam("account"))
_PLAN_OF_SQL = compiled_sql(_PLAN_OF)  # one account's, on a driver connection (``db.engine.raw_read``)


def plan_row(conn: psycopg.Connection[Any], account: str) -> tuple[str | None, dict[str, Any]]:
    """The plan and overrides stored for ``account`` ((None, {}) without a wallet), on a driver connection."""
    row = conn.execute(_PLAN_OF_SQL, {"account": account}).fetchone()
    return (None, {}) if row is None else (row[0], dict(row[1] or {}))


def plan_rows(session: Session, accounts: Sequence[str]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """The plan and overrides stored for each account that has a wallet (one query)."""
    rows = session.execute(_PLANS, {"a": sorted(set(accounts))}).all()
    return {row.account: (row.plan, dict(row.limit_overrides or {})) for row in rows}


def policies(session: Session, accounts: Sequence[str], table: PriceTable) -> dict[str, LimitPolicy]:
    """Each account's ``LimitPolicy`` (an account without a wallet: the default plan's), in one query."""
    stored = plan_rows(session, accounts)
    return {account: policy_of(table, *stored.get(account, (None, {}))) for account in accounts}


def check_plan(table: PriceTable, plan: str) -> str:
    """``plan`` if the catalog has it, else ``UnknownPlan`` (422) naming the known plans."""
    if plan not in table.spec.plans:
        known = sorted(table.spec.plans)
        raise UnknownPlan(f"unknown plan {plan!r}; known plans: {', '.join(known)}", plan=plan, known_plans=known)
    return plan


_KEEP = object()  # "not given": neither set nor cleared


def store_account_limits(session: Session, wallet_id: int, *, plan: Any = _KEEP, overrides: Any = _KEEP) -> None:
    """Set the wallet's plan (None: back to the default) and merge ``overrides`` (a dict of
    ``LIMIT_FIELDS``; a None value is unlimited) into those stored; ``overrides=None`` clears them all. The
    caller holds the wallet's lock and has checked the plan (``check_plan``). An operator's edit, rare: the
    statement is built for what is given."""
    values: dict[str, Any] = {}
    if plan is not _KEEP:
        values["plan"] = plan
    if overrides is not _KEEP:
        if overrides is None:
            values["limit_overrides"] = cast(literal("{}"), JSONB)
        else:
            unknown = set(overrides) - set(LIMIT_FIELDS)
            if unknown:
                raise ValueError(f"not limit fields: {sorted(unknown)}")
            values["limit_overrides"] = _WALLETS.c.limit_overrides.op("||")(cast(literal(json.dumps(overrides)), JSONB))
    if values:
        session.execute(update(_WALLETS).where(_WALLETS.c.id == wallet_id).values(**values, updated_at=func.now()))


# -- states and answers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowState:
    period: str  # hour | day | month
    current: int
    limit: int | None  # None: unlimited
    resets_at: datetime

    @property
    def metric(self) -> str:
        return f"{METRIC}_{self.period}"

    @property
    def unlimited(self) -> bool:
        return self.limit is None

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.current, 0)

    @property
    def percentage(self) -> float:
        """Used share of the limit, in percent, two decimals (100 for a zero limit; 0 when unlimited)."""
        if self.limit is None:
            return 0.0
        if self.limit == 0:
            return 100.0
        return round(self.current * 100 / self.limit, 2)


@dataclass(frozen=True)
class LimitState:
    """One account's three windows, and the refusal admitting ``tokens`` more would raise (or None).
    ``counted`` is False when Redis could not be asked (the windows then read 0, or ``usage_records``)."""

    account: str
    tokens: int
    windows: tuple[WindowState, ...]
    refusal: RateLimited | QuotaExceeded | None
    counted: bool = True

    def window(self, period: str) -> WindowState:
        return next(w for w in self.windows if w.period == period)


# The levels of the monthly quota that notify (percent of the limit): a warning, then exhausted.
QUOTA_LEVELS = (80, 100)


@dataclass(frozen=True)
class QuotaCrossing:
    """An account whose monthly counter went from below ``level`` percent of its quota to at or above it in one
    ``admit`` (the highest level crossed, when one call crosses both)."""

    account: str
    level: int  # 80 or 100 (QUOTA_LEVELS)
    before: int
    current: int  # the month's tokens after the increment
    limit: int
    period_start: datetime  # the month's window (UTC)
    resets_at: datetime
    upgrade_url: str | None
    at: datetime  # the time the counters were taken at

    @property
    def percentage(self) -> float:
        return WindowState("month", self.current, self.limit, self.resets_at).percentage


def crossed_level(before: int, after: int, limit: int) -> int | None:
    """The highest quota level (percent) that ``before`` -> ``after`` tokens crossed upwards, or None. Integer
    arithmetic: ``after * 100 >= level * limit`` is "at or above level percent" without a float's rounding."""
    for level in reversed(QUOTA_LEVELS):
        if before * 100 < level * limit <= after * 100:
            return level
    return None


@dataclass(frozen=True)
class Admitted:
    """What ``admit``/``record`` added, to be given back by ``release`` if the work it admitted is not kept."""

    stems: tuple[str, ...]  # the windows' key stems at the time
    added: tuple[tuple[str, int], ...]  # (account, tokens added to each of its windows)
    crossings: tuple[QuotaCrossing, ...] = ()  # monthly quota levels crossed by this call (usually none)

    @property
    def keys(self) -> tuple[tuple[str, int], ...]:
        """(counter key, tokens added): built only when a release needs them, which is rare."""
        return tuple((stem + account, tokens) for account, tokens in self.added for stem in self.stems)


def refusal_for(
    account: str, period: str, current: int, limit: int, tokens: int, policy: LimitPolicy, now: datetime
) -> RateLimited | QuotaExceeded:
    """The error for ``account`` whose ``period`` window, at ``current`` of ``limit``, cannot take ``tokens``."""
    state = WindowState(period, current, limit, window(period, now)[1])
    if period == "month":
        return QuotaExceeded(
            f"account {account!r} has used {current:,} of its {limit:,} monthly tokens; upgrade to continue",
            metric=state.metric,  # tokens_month, as the usage view and POST /v1/check name it
            current=current,
            limit=limit,
            percentage=state.percentage,
            upgrade_url=policy.upgrade_url,
            account=account,
            requested=tokens,
            resets_at=state.resets_at.isoformat(),
        )
    retry_after = max(1, math.ceil((state.resets_at - now.astimezone(UTC)).total_seconds()))
    return RateLimited(
        f"account {account!r} has used {current:,} of its {limit:,} tokens this {period}; "
        f"retry in {retry_after} seconds",
        retry_after=retry_after,
        limit=limit,
        window=period,
        current=current,
        requested=tokens,
        account=account,
    )


def _exceeds(current: int, tokens: int, limit: int | None) -> bool:
    # Adding nothing is refused only at the limit: max(tokens, 1) makes "current + 0 > limit" "current >= limit".
    return limit is not None and current + max(tokens, 1) > limit


# -- the Lua script -----------------------------------------------------------------------------------------
# KEYS: the touched set. ARGV: the three TTLs in seconds (set when a counter is created); the three windows'
# key stems (``<prefix>:h:2026120213:``, day, month: a counter's key is its stem and the account); then every
# account in ONE argument, a line each: ``account TAB checked TAB recorded TAB hour TAB day TAB month`` (the
# limits, -1: unlimited). One string rather than six arguments per account: a request of 1,000 reports names up
# to 1,000 accounts, and redis-py encoding 6,000 arguments cost the receiver more than pricing the reports
# (about 11 us a report, measured); accounts cannot hold a tab or a newline (``types.Account``). The keys are
# built here rather than sent, for the same reason. Each account's counters take checked + recorded tokens at
# once (INCRBY answers the new value: no GET first, half the commands); an account whose checked tokens take a
# window over its limit (month, day, hour: the refusal names the window that resets last) undoes every increment
# of the call and refuses. Redis runs a script alone: nobody sees the undone increments.
# Returns {account line (1-based), window (1 hour, 2 day, 3 month), current} when refused; when admitted, {0}
# followed by (account line, month counter after the increment) for each account with a monthly quota that
# took tokens: the caller compares before (after - added) and after against its levels (quota notices), so the
# common answer, accounts without a quota, stays {0}.
ADMIT_LUA = r"""
local done = {}
local touched = {}
local months = {0}
local function undo()
  for _, d in ipairs(done) do redis.call('DECRBY', d[1], d[2]) end
end
local i = 0
for a, c, r, h, d, m in string.gmatch(ARGV[7], "([^\t\n]+)\t(%d+)\t(%d+)\t(-?%d+)\t(-?%d+)\t(-?%d+)") do
  i = i + 1
  local checked, add = tonumber(c), tonumber(c) + tonumber(r)
  if add > 0 then
    local limits = {tonumber(h), tonumber(d), tonumber(m)}
    local now = {}
    for w = 1, 3 do
      local key = ARGV[3 + w] .. a
      local value = redis.call('INCRBY', key, add)
      if value == add then
        redis.call('EXPIRE', key, ARGV[w])  -- a new counter: it expires GRACE after its window ends
      end
      done[#done + 1] = {key, add}
      touched[#touched + 1] = key
      now[w] = value
    end
    if checked > 0 then
      for w = 3, 1, -1 do  -- the month first: the refusal names the window that resets last
        if limits[w] >= 0 and now[w] - add + checked > limits[w] then
          undo()
          return {i, w, now[w] - add}
        end
      end
    end
    if limits[3] >= 0 then
      months[#months + 1] = i
      months[#months + 1] = now[3]
    end
  end
end
for k = 1, #touched, 1000 do  -- in chunks (Lua's unpack limit)
  redis.call('SADD', KEYS[1], unpack(touched, k, math.min(k + 999, #touched)))
end
return months
"""
# KEYS: counters; ARGV: the tokens to take back from each (a compensation: never below zero).
RELEASE_LUA = """
for i, key in ipairs(KEYS) do
  local left = redis.call('DECRBY', key, ARGV[i])
  if left < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
end
return 0
"""
# KEYS: the touched set, then counters; ARGV: the values the flush stored, one per counter. A member leaves
# the set only if its counter still holds that value (or is gone): a counter that moved since stays for the
# next flush. The next increment adds it again anyway.
FORGET_FLUSHED_LUA = """
local removed = 0
for i = 2, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if (not value) or value == ARGV[i - 1] then
    removed = removed + redis.call('SREM', KEYS[1], KEYS[i])
  end
end
return removed
"""


# KEYS: the account's three counters (hour, day, month), then request counters; ARGV: each request counter's
# window in seconds and its limit. Reads the token windows and takes one request from each request counter in
# one round trip (``TokenLimits.check`` with ``requests``): the HTTP API's per-key counter of the endpoints
# that read the token windows anyway, kept as flask-limiter keeps it for the others (INCRBY, EXPIRE when new).
# Returns the three windows, then 0, or the 1-based request counter over its limit and its PTTL.
CHECK_LUA = r"""
local out = {}
for w = 1, 3 do out[w] = tonumber(redis.call('GET', KEYS[w]) or 0) end
for i = 4, #KEYS do
  local n = redis.call('INCRBY', KEYS[i], 1)
  local j = (i - 4) * 2
  if n == 1 then redis.call('EXPIRE', KEYS[i], ARGV[j + 1]) end
  if n > tonumber(ARGV[j + 2]) then
    out[4], out[5] = i - 3, redis.call('PTTL', KEYS[i])
    return out
  end
end
out[4] = 0
return out
"""


NOTICE_POLICY_STALE_SECONDS = 300.0


@dataclass(frozen=True)
class RequestWindow:
    """A fixed-window request counter taken in the same round trip as a token check: ``key`` is counted
    once per call, expiring ``seconds`` after it was created; above ``limit`` the call is refused."""

    key: str
    seconds: int
    limit: int
    label: str  # the limit as the 429 names it ("1000 per 1 second")


class ReportLike(Protocol):
    """What the gate reads of an accepted usage report."""

    @property
    def account(self) -> str: ...
    @property
    def hold_id(self) -> str | None: ...
    @property
    def items(self) -> Sequence[Any]: ...
    @property
    def mode(self) -> str: ...


UsageGate = Callable[[Session, Sequence[Any]], "Callable[[], None] | None"]


class TokenLimits:
    """The token counters of one process, on one Redis client (``redis_client``: short socket timeouts)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        fail_closed: bool = False,
        prefix: str = DEFAULT_PREFIX,
        policy_cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.fail_closed = fail_closed
        self.prefix = prefix
        self.touched = f"{prefix}:touched"
        self.policy_cache_seconds = policy_cache_seconds
        self._clock = clock
        self._admit = client.register_script(ADMIT_LUA)  # EVALSHA, loading the script when Redis lacks it
        self._check = client.register_script(CHECK_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._forget = client.register_script(FORGET_FLUSHED_LUA)
        self._cache: dict[str, tuple[float, str | None, dict[str, Any]]] = {}
        self._policies: dict[tuple[Any, ...], LimitPolicy] = {}
        self._lock = threading.Lock()
        self._last_warning = -math.inf

    # -- policies (cached a few seconds per process) --
    def policies(
        self, session: Session, accounts: Iterable[str], table: PriceTable, *, stale_ok_seconds: float = 0.0
    ) -> dict[str, LimitPolicy]:
        """Each account's policy; the plan and overrides are read from the database at most once every
        ``policy_cache_seconds`` per account (a change made elsewhere takes effect within that time), or that
        plus ``stale_ok_seconds`` for a caller that only notifies (``record_settled``)."""
        wanted = sorted(set(accounts))
        now = self._clock()
        rows: dict[str, tuple[str | None, dict[str, Any]]] = {}
        missing = []
        with self._lock:
            for account in wanted:
                cached = self._cache.get(account)
                if cached is not None and cached[0] + stale_ok_seconds > now:
                    rows[account] = (cached[1], cached[2])
                else:
                    missing.append(account)
        if missing:
            found = plan_rows(session, missing)
            with self._lock:
                if len(self._cache) > 100_000:  # a bound, not an LRU: entries are seconds old at most
                    self._cache.clear()
                for account in missing:
                    plan, overrides = found.get(account, (None, {}))
                    rows[account] = (plan, overrides)
                    if self.policy_cache_seconds > 0:
                        self._cache[account] = (now + self.policy_cache_seconds, plan, overrides)
        return {account: self._policy(table, *rows[account]) for account in wanted}

    def _policy(self, table: PriceTable, plan: str | None, overrides: dict[str, Any]) -> LimitPolicy:
        # Most accounts share a handful of (plan, overrides): one LimitPolicy each, not one per account per
        # request (a usage request names up to 1,000 accounts; building each cost ~10 us).
        key = (table.sha256, plan, tuple(sorted(overrides.items())) if overrides else ())
        found = self._policies.get(key)
        if found is None:
            found = policy_of(table, plan, overrides)
            if len(self._policies) > 10_000:  # a bound, not an LRU: plans and overrides are few
                self._policies.clear()
            self._policies[key] = found
        return found

    def cached_policy(self, table: PriceTable, account: str) -> LimitPolicy | None:
        """The account's policy if this process read its plan less than ``policy_cache_seconds`` ago."""
        with self._lock:
            cached = self._cache.get(account)
        if cached is None or cached[0] <= self._clock():
            return None
        return self._policy(table, cached[1], cached[2])

    def policy_of_row(
        self, table: PriceTable, account: str, plan: str | None, overrides: Mapping[str, Any] | None
    ) -> LimitPolicy:
        """The policy of the plan and overrides the caller just read from the account's wallet (None, {}: no
        wallet); fresher than the cache, so it refreshes it."""
        stored = dict(overrides or {})
        if self.policy_cache_seconds > 0:
            with self._lock:
                self._cache[account] = (self._clock() + self.policy_cache_seconds, plan, stored)
        return self._policy(table, plan, stored)

    def forget(self, account: str) -> None:
        """Drop the cached plan of ``account`` (this process changed it)."""
        with self._lock:
            self._cache.pop(account, None)

    # -- reads --
    def _stems(self, now: datetime) -> list[str]:
        # A counter's key is its window's stem and the account (``counter_key``): computed once per call.
        return [counter_key(self.prefix, "", p, window(p, now)[0]) for p in PERIODS]

    def _keys(self, account: str, now: datetime) -> list[str]:
        return [stem + account for stem in self._stems(now)]

    def check(
        self,
        account: str,
        tokens: int,
        policy: LimitPolicy,
        now: datetime | None = None,
        *,
        requests: Sequence[RequestWindow] = (),
    ) -> LimitState:
        """The three windows of ``account`` and the refusal admitting ``tokens`` would raise; one round trip
        that writes nothing but the ``requests`` counters it takes one from (``RateLimited`` at once when one
        is over its limit). Redis down: no refusal and nothing counted (fail open), or ``LimitsUnavailable``
        (fail closed)."""
        now = now or datetime.now(UTC)
        keys = self._keys(account, now)
        try:
            if requests:
                args = [v for r in requests for v in (r.seconds, r.limit)]
                values = self._check(keys=[*keys, *(r.key for r in requests)], args=args)
            else:
                values = self.client.mget(keys)
        except _REDIS_DOWN as exc:
            self._unreachable(exc)
            return self._state(account, tokens, policy, now, [0, 0, 0], counted=False)
        if requests and values[3]:
            over = requests[int(values[3]) - 1]
            retry_after = max(1, math.ceil(int(values[4]) / 1000))
            raise RateLimited(
                f"too many requests with this API key (limit {over.label})", retry_after=retry_after, limit=over.label
            )
        return self._state(account, tokens, policy, now, [int(v or 0) for v in values[:3]])

    def unknown_state(self, account: str, tokens: int, policy: LimitPolicy, now: datetime) -> LimitState:
        """The windows when the counters could not be read: zeros, ``counted`` False, no refusal."""
        return self._state(account, tokens, policy, now, [0, 0, 0], counted=False)

    def _state(
        self,
        account: str,
        tokens: int,
        policy: LimitPolicy,
        now: datetime,
        currents: list[int],
        *,
        counted: bool = True,
    ) -> LimitState:
        windows = tuple(
            WindowState(period, current, policy.limit(period), window(period, now)[1])
            for period, current in zip(PERIODS, currents, strict=True)
        )
        refusal = None
        if counted:
            for period in _CHECK_ORDER:
                w = next(x for x in windows if x.period == period)
                if w.limit is not None and _exceeds(w.current, tokens, w.limit):
                    refusal = refusal_for(account, period, w.current, w.limit, tokens, policy, now)
                    break
        return LimitState(account, tokens, windows, refusal, counted)

    def usage_view(
        self,
        account: str,
        policy: LimitPolicy,
        now: datetime | None = None,
        *,
        session_factory: sessionmaker[Session] | None = None,
    ) -> LimitState:
        """The three windows as the usage view shows them. With Redis down they are read from
        ``usage_records`` (as of the last flush) when ``session_factory`` is given; never refused for it."""
        now = now or datetime.now(UTC)
        try:
            values = self.client.mget(self._keys(account, now))
        except _REDIS_DOWN as exc:
            self._unreachable(exc, raise_closed=False)
            currents = [0, 0, 0]
            if session_factory is not None:
                with session_factory() as session:
                    currents = recorded_usage(session, account, now)
            return self._state(account, 0, policy, now, currents, counted=False)
        return self._state(account, 0, policy, now, [int(v or 0) for v in values])

    # -- writes --
    def admit(
        self,
        batch: Mapping[str, int],
        policies: Mapping[str, LimitPolicy],
        now: datetime | None = None,
        *,
        record: Mapping[str, int] | None = None,
    ) -> Admitted | None:
        """Check and count ``batch`` (account → tokens) atomically, in one script call: if any account would
        exceed a limit, nothing is counted and its refusal is raised. ``record`` (account → tokens) is counted
        in the same call without being checked (usage settling an admitted hold). Returns what was added
        (for ``release``), or None when nothing was (nothing to count, or Redis down and failing open)."""
        now = now or datetime.now(UTC)
        checked = {a: t for a, t in batch.items() if t > 0}
        recorded = {a: t for a, t in (record or {}).items() if t > 0}
        accounts = sorted(set(checked) | set(recorded))
        if not accounts:
            return None
        stems = self._stems(now)
        args: list[int | str] = []
        for period in PERIODS:
            end = window(period, now)[1]
            args.append(math.ceil((end - now.astimezone(UTC) + GRACE).total_seconds()))
        args += stems
        lines: list[str] = []
        added: list[tuple[str, int]] = []
        for account in accounts:
            policy = policies.get(account)
            checked_tokens, recorded_tokens = checked.get(account, 0), recorded.get(account, 0)
            limits = _UNLIMITED_LINE if policy is None else _limits_line(policy)
            lines.append(f"{account}\t{checked_tokens}\t{recorded_tokens}\t{limits}")
            added.append((account, checked_tokens + recorded_tokens))
        args.append("\n".join(lines))
        try:
            result = self._admit(keys=[self.touched], args=args)
        except _REDIS_DOWN as exc:
            self._unreachable(exc)
            return None
        if int(result[0]) != 0:
            account = accounts[int(result[0]) - 1]
            period = PERIODS[int(result[1]) - 1]
            policy = policies[account]
            limit = policy.limit(period)
            assert limit is not None, "only a limited window refuses"
            raise refusal_for(account, period, int(result[2]), limit, checked[account], policy, now)
        crossings: tuple[QuotaCrossing, ...] = ()
        if len(result) > 1:  # accounts with a monthly quota took tokens: did one cross a level?
            crossings = self._crossings(result, accounts, added, policies, now)
        return Admitted(tuple(stems), tuple(added), crossings)

    @staticmethod
    def _crossings(
        result: Sequence[Any],
        accounts: Sequence[str],
        added: Sequence[tuple[str, int]],
        policies: Mapping[str, LimitPolicy],
        now: datetime,
    ) -> tuple[QuotaCrossing, ...]:
        # Pairs (account line, month counter after) follow the 0; a counter that was below a level before this
        # call's tokens and is at or above it after crossed it here, and only here (INCRBY is atomic).
        found: list[QuotaCrossing] = []
        month: tuple[datetime, datetime] | None = None
        for k in range(1, len(result) - 1, 2):
            line, after = int(result[k]) - 1, int(result[k + 1])
            policy = policies.get(accounts[line])
            limit = None if policy is None else policy.monthly
            if policy is None or limit is None:
                continue
            before = after - added[line][1]
            level = crossed_level(before, after, limit)
            if level is not None:
                month = month or window("month", now)
                found.append(
                    QuotaCrossing(
                        accounts[line], level, before, after, limit, month[0], month[1], policy.upgrade_url, now
                    )
                )
        return tuple(found)

    def record(self, batch: Mapping[str, int], now: datetime | None = None) -> Admitted | None:
        """Count ``batch`` without checking (its usage was admitted before, when its hold was placed)."""
        return self.admit({}, {}, now, record=batch)

    def record_settled(
        self,
        session_factory: sessionmaker[Session],
        batch: Mapping[str, int],
        table: PriceTable,
        now: datetime | None = None,
        *,
        read_session_factory: sessionmaker[Session] | None = None,
    ) -> int:
        """Count the tokens of holds settled outside a usage request (a capture over HTTP, after its commit)
        and notify the quota levels they crossed, in a short transaction of their own: the capture is done
        whatever happens here. The policies come from the same cache as the checks'; a plan not cached is read
        on ``read_session_factory`` when given (autocommit: one round trip, not a BEGIN and a ROLLBACK around
        it). How many notices were new."""
        batch = {a: t for a, t in batch.items() if t > 0}
        if not batch:
            return 0
        with (read_session_factory or session_factory)() as session:
            # Only the notice of a quota level depends on the policy here (the tokens are counted whatever
            # it says): a plan read up to NOTICE_POLICY_STALE_SECONDS ago will do, so that a capture served by
            # another process than its hold's does not read the plan again.
            policies = self.policies(session, batch, table, stale_ok_seconds=NOTICE_POLICY_STALE_SECONDS)
        admitted = self.admit({}, policies, now, record=batch)
        if admitted is None or not admitted.crossings:
            return 0
        with session_factory.begin() as session:
            return quota_notices(session, admitted.crossings)

    def release(self, admitted: Admitted | None) -> None:
        """Take back what ``admit`` added (the work it admitted was not stored). Never raises: a counter left
        too high refuses too early for at most its window, which is the safe side."""
        if admitted is None or not admitted.keys:
            return
        try:
            self._release(keys=[k for k, _ in admitted.keys], args=[t for _, t in admitted.keys])
        except redis.RedisError as exc:
            log.warning("could not give back admitted tokens (%s); the counters read high", type(exc).__name__)

    def _unreachable(self, exc: Exception, *, raise_closed: bool = True) -> None:
        if self.fail_closed and raise_closed:
            raise LimitsUnavailable(
                "the token limits cannot be checked right now; try again shortly", retry_after=1
            ) from None
        now = self._clock()
        with self._lock:
            due = now - self._last_warning >= WARN_EVERY_SECONDS
            if due:
                self._last_warning = now
        if due:
            log.warning(
                "token limits: Redis is unreachable (%s); limits are not enforced (fail open) until it is back",
                type(exc).__name__,
            )

    # -- usage intake --
    def gate(self, table: PriceTable, now: datetime | None = None) -> UsageGate:
        """The admission of a request's new usage reports, for ``store_usage(admit=...)``: called inside its
        transaction with the reports it inserted (duplicates of stored reports are never counted again).
        Reports settling a hold are recorded, the others admitted, in one script call; a refusal raises (the
        transaction rolls back: nothing stored). Returns the compensation to run if the commit fails."""

        def admit_reports(session: Session, reports: Sequence[ReportLike]) -> Callable[[], None] | None:
            checked: dict[str, int] = {}
            recorded: dict[str, int] = {}
            for report in reports:
                tokens = count_tokens(report.items, getattr(report, "mode", "system"))
                if tokens:
                    target = recorded if report.hold_id is not None else checked
                    target[report.account] = target.get(report.account, 0) + tokens
            if not checked and not recorded:
                return None
            # Recorded accounts' policies too (the same one query): their limits are not checked, but their
            # monthly quota is what a settled hold's tokens may cross.
            found = self.policies(session, [*checked, *recorded], table)
            admitted = self.admit(checked, found, now, record=recorded)
            if admitted is None:
                return None
            if admitted.crossings:
                # In this transaction, with the reports that crossed: rolled back with them (and the counters
                # given back), so a level is notified exactly when its usage is stored. No statement otherwise.
                quota_notices(session, admitted.crossings)
            return lambda: self.release(admitted)

        return admit_reports


def _lua_limit(limit: int | None) -> int:
    return UNLIMITED if limit is None else limit


_UNLIMITED_LINE = f"{UNLIMITED}\t{UNLIMITED}\t{UNLIMITED}"


def _limits_line(policy: LimitPolicy) -> str:
    return f"{_lua_limit(policy.hourly)}\t{_lua_limit(policy.daily)}\t{_lua_limit(policy.monthly)}"


# -- durable records ----------------------------------------------------------------------------------------
_RECORDS: Table = UsageRecord.__table__  # type: ignore[assignment]
_records = _RECORDS.c
_insert = insert(_RECORDS).values(
    account=bindparam("account"),
    metric=bindparam("metric"),
    period=bindparam("period"),
    period_start=bindparam("start"),
    quantity=bindparam("quantity"),
)
# Absolute values, never lower than what is stored: a re-run, or a flush reading an older value, changes nothing.
_UPSERT = _insert.on_conflict_do_update(
    index_elements=[_records.account, _records.metric, _records.period, _records.period_start],
    set_={"quantity": func.greatest(_records.quantity, _insert.excluded.quantity), "updated_at": func.now()},
    where=_insert.excluded.quantity > _records.quantity,
)
_RECORDED = select(_records.period, _records.period_start, _records.quantity).where(
    _records.account == bindparam("account"),
    _records.metric == METRIC,
    _records.period_start == any_(bindparam("starts", type_=ARRAY(_records.period_start.type))),
)


def recorded_usage(session: Session, account: str, now: datetime) -> list[int]:
    """The hour's, day's and month's tokens of ``account`` as last flushed into ``usage_records``."""
    starts = {p: window(p, now)[0] for p in PERIODS}
    rows = session.execute(_RECORDED, {"account": account, "starts": list(starts.values())}).all()
    # A day's start is also an hour's: match each row on its period and start both.
    found = {(row.period, row.period_start): int(row.quantity) for row in rows}
    return [found.get((p, starts[p]), 0) for p in PERIODS]


@dataclass(frozen=True)
class FlushResult:
    counters: int  # counters read and upserted
    forgotten: int  # members dropped from the touched set (unchanged since read, or expired)


def flush_usage_records(
    limits: TokenLimits, session_factory: sessionmaker[Session], *, chunk: int = 1000
) -> FlushResult:
    """Copy every touched counter into ``usage_records`` (upsert, never lowering), then drop from the touched
    set the counters that have not moved since they were read. Idempotent: running it twice in a row
    changes nothing the second time. Raises ``redis.RedisError`` when Redis is down (beat runs it again)."""
    counters = forgotten = 0
    cursor = 0
    while True:
        cursor, members = limits.client.sscan(limits.touched, cursor, count=chunk)
        keys = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        if keys:
            values = limits.client.mget(keys)
            rows, seen = [], []
            for key, value in zip(keys, values, strict=True):
                parsed = parse_counter_key(limits.prefix, key)
                if parsed is None:
                    continue
                seen.append((key, value))
                if value is None:  # expired before a flush saw it: nothing left to copy
                    continue
                account, period, start = parsed
                rows.append(
                    {"account": account, "metric": METRIC, "period": period, "start": start, "quantity": int(value)}
                )
            if rows:
                with session_factory() as session, session.begin():
                    session.execute(_UPSERT, rows)
            counters += len(rows)
            if seen:
                forgotten += int(
                    limits._forget(
                        keys=[limits.touched, *(k for k, _ in seen)],
                        args=[v if v is not None else b"" for _, v in seen],
                    )
                )
        if int(cursor) == 0:
            return FlushResult(counters, forgotten)
