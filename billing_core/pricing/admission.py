"""Admission: may an account run a piece of work now? What ``POST /v1/check`` answers before each model call.

Everything that would refuse the work, read in one pass and without a side effect: the price of the items in
the key mode (the same ``price_items`` as estimates, holds and charges), what the wallet could reserve now and
whether it is flagged negative, with the wallet's plan and limit overrides (one query, on the driver's
connection: a per-process cache of plans missed for most of a thousand accounts checked in turn), and the
account's token windows with the API key's request counter (one Redis round trip). A refusal is an answer
here, not an error: the caller asked a question, and ``reason`` says why not, with the same codes the hold
and usage endpoints raise.

Reasons are checked in the order a caller can act on them: the key mode (the request itself cannot be
served), the account's negative flag, the token limits (``limits_unavailable`` when they fail closed and Redis
is down, then the monthly quota, the day and the hour), and last the credits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from billing_core.db.engine import raw_read
from billing_core.errors import (
    AccountFlagged,
    BillingError,
    InsufficientCredits,
    KeyModeNotAllowed,
    LimitsUnavailable,
)
from billing_core.ledger.balances import spendable_state_and_plan
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.items import Item
from billing_core.pricing.limits import LimitPolicy, LimitState, RequestWindow, TokenLimits, count_tokens
from billing_core.pricing.quotes import Quote, price_items


@dataclass(frozen=True)
class Admission:
    """The answer: ``reason`` is None when the work may run, else the error that running it would raise."""

    account: str
    mode: str
    estimate_mc: int | None  # None when the items cannot be priced in this mode (key_mode_not_allowed)
    quote: Quote | None  # with items
    tokens: int
    available_mc: int
    limits: LimitState
    policy: LimitPolicy
    reason: BillingError | None

    @property
    def allowed(self) -> bool:
        return self.reason is None

    @property
    def shortfall_mc(self) -> int:
        return max((self.estimate_mc or 0) - self.available_mc, 0)


def admit(
    engine: Engine,
    table: PriceTable,
    limits: TokenLimits,
    *,
    account: str,
    items: Sequence[Item] | None,
    credits_mc: int | None,
    mode: str,
    now: datetime,
    requests: Sequence[RequestWindow] = (),
) -> Admission:
    """May ``account`` run work priced by ``items`` (or costing ``credits_mc``) in key ``mode`` at ``now``?

    Malformed or unpriceable items raise as they do everywhere (``InvalidCommand``, ``UnknownModel``,
    ``UnknownPriceCode``, ``InvalidAmount``), and so does a ``requests`` counter over its limit (the API
    key's, counted in the same round trip as the token windows); every other refusal is the ``reason``."""
    reason: BillingError | None = None
    quote: Quote | None = None
    estimate: int | None = credits_mc
    if items is not None:
        try:
            quote = price_items(table, items, mode=mode)
            estimate = quote.total_mc
        except KeyModeNotAllowed as exc:
            reason, estimate = exc, None
    tokens = count_tokens(items or (), mode)
    with raw_read(engine) as conn:
        wallet = spendable_state_and_plan(conn, account, now)
    available, flagged = wallet.spendable_mc, wallet.flagged
    policy = limits.policy_of_row(table, account, wallet.plan, wallet.limit_overrides)
    try:
        state = limits.check(account, tokens, policy, now, requests=requests)
    except LimitsUnavailable as exc:
        state = limits.unknown_state(account, tokens, policy, now)
        reason = reason or exc
    if reason is None and flagged:
        reason = AccountFlagged(
            f"account {account!r} has a negative balance; new holds wait until it is settled", account=account
        )
    if reason is None and state.refusal is not None:
        reason = state.refusal
    if reason is None and estimate is not None and available < estimate:
        reason = InsufficientCredits.short(account, estimate, available)
    return Admission(account, mode, estimate, quote, tokens, available, state, policy, reason)
