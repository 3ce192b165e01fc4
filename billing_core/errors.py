"""Typed errors of the domain.

Every error carries a stable machine-readable ``code`` so the HTTP layer and the CLI can map it without
parsing messages, and ``details`` with the figures a caller needs (required vs available credits, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError


class BillingError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "billing_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidAmount(BillingError):
    code = "invalid_amount"


class InvalidCommand(BillingError):
    """A command field is malformed (overlong key, bad account name, bad TTL, missing reason...)."""

    code = "invalid_request"


class UnknownAccount(BillingError):
    code = "unknown_account"

    @classmethod
    def named(cls, account: str) -> UnknownAccount:
        return cls(f"unknown account {account!r}", account=account)


class UnknownHold(BillingError):
    code = "unknown_hold"


class UnknownGrant(BillingError):
    code = "unknown_grant"


class InsufficientCredits(BillingError):
    code = "insufficient_credits"

    @classmethod
    def short(cls, account: str, required_mc: int, available_mc: int) -> InsufficientCredits:
        """The refusal carries both figures, as credit strings, so a client can show or top up the gap."""
        from billing_core.units import format_credits

        required, available = format_credits(required_mc), format_credits(available_mc)
        return cls(
            f"account {account!r} has {available} credits available, {required} required",
            account=account,
            required=required,
            available=available,
        )


class AccountFlagged(BillingError):
    """The wallet carries a negative balance from a clawback; new holds wait until it is settled."""

    code = "account_negative"


class HoldNotPending(BillingError):
    code = "hold_not_pending"


class IdempotencyConflict(BillingError):
    """The idempotency key was used before with a different request body."""

    code = "idempotency_conflict"


class MissingSetting(BillingError):
    code = "missing_setting"


class UnknownModel(BillingError):
    """A usage item names a provider or model the price table does not price (details: provider, model, field,
    ``known_models``: the provider's models, and for an unknown provider ``known_providers``)."""

    code = "unknown_model"


class UnknownPriceCode(BillingError):
    """A fee or agent code missing from the price table (details: kind, code, field)."""

    code = "unknown_price_code"


class UnknownPackage(BillingError):
    """A credit package id missing from the price table (details: package, field)."""

    code = "unknown_package"


class KeyModeNotAllowed(BillingError):
    """Work done with the customer's own provider key (``mode: own``) on a tier that requires system credits
    (details: field, tier, mode)."""

    code = "key_mode_not_allowed"


class PaymentsUnavailable(BillingError):
    """Stripe cannot be reached (or this server has no key for it); nothing was charged, try again later."""

    code = "stripe_unavailable"


class PaymentsRefused(BillingError):
    """Stripe refused the request (details: ``stripe_code``)."""

    code = "stripe_error"


# -- pydantic's errors as the domain's ----------------------------------------------------------------------
# Type codes of the shared types (``billing_core.types``) that are about money: they become ``InvalidAmount``.
_AMOUNT_ERRORS = frozenset({"invalid_amount"})


def error_field(loc: tuple[int | str, ...], kind: str = "") -> str:
    """pydantic's error location as a client writes the path: ``items[0].input_tokens``. A discriminated union
    puts the item's type tag into the location (``items, 0, llm_tokens, ...``); the client never wrote that,
    so a string right after a list index that names no field of the item is dropped."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, str) and i >= 1 and isinstance(loc[i - 1], int) and part in _UNION_TAGS:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    # A missing or unknown tag is the item's ``type`` field, which pydantic's location leaves out.
    return f"{out}.type" if kind in ("union_tag_not_found", "union_tag_invalid") else out


# The item types' tags (``billing_core.pricing.items``); kept here so that this module imports nothing.
_UNION_TAGS = frozenset({"llm_tokens", "fee", "agent", "credits", "tokens", "tier"})


# What a value that fails a shared type's pattern should have been, by pattern; ``billing_core.types``
# registers its own (this module imports nothing of the domain). pydantic would say "String should match
# pattern '^[A-Za-z0-9][A-Za-z0-9_.:@+\\-]{0,127}$'", which a client should not have to read.
PATTERN_MESSAGES: dict[str, str] = {}


def error_message(error: Mapping[str, Any]) -> str:
    """The message of one pydantic error, with the shared types' patterns said in words."""
    if error.get("type") == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        if pattern in PATTERN_MESSAGES:
            return PATTERN_MESSAGES[pattern]
    return str(error.get("msg", ""))


def from_validation_error(exc: ValidationError, *, allowed: Iterable[str] = ()) -> BillingError:
    """The one translation of a pydantic refusal into the contract's errors: a money field is
    ``invalid_amount``, an unknown field ``invalid_request`` with ``allowed`` (the fields the body may have),
    anything else ``invalid_request``; each names the first problem's ``field``."""
    errors = exc.errors(include_url=False, include_input=False)
    unknown = sorted(error_field(e["loc"]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return InvalidCommand(f"unknown fields: {', '.join(unknown)}", field=unknown[0], allowed=sorted(allowed))
    first = errors[0]
    field = error_field(first["loc"], first["type"])
    message = f"{field}: {error_message(first)}" if field else error_message(first)
    if first["type"] in _AMOUNT_ERRORS:
        return InvalidAmount(message, field=field)
    return InvalidCommand(message, field=field)


# -- packages, Stripe catalog sync and the sales guard (the sales part of the pricing work) ---------------------
class SalesPaused(BillingError):
    """Credits sold and not yet used have passed the alert threshold of the upstream monthly token capacity:
    no new sales until they fall back (details: outstanding_tokens, capacity_tokens, threshold_percent)."""

    code = "sales_paused"


class UnknownSetting(BillingError):
    """A database setting (``billing config``) that does not exist (details: key, known)."""

    code = "unknown_setting"


class InvalidSetting(BillingError):
    """A value a database setting does not accept (details: key)."""

    code = "invalid_setting"


# -- limits (pricing/limits.py) -----------------------------------------------------------------------------
class RateLimited(BillingError):
    """An hourly or daily token limit would be exceeded (details: account, window, limit, current, requested,
    retry_after: seconds until the window resets), or the API key's request limit (details: limit, retry_after)."""

    code = "rate_limited"


class QuotaExceeded(BillingError):
    """The monthly token quota would be exceeded (details: metric, current, limit, percentage, upgrade_url)."""

    code = "quota_exceeded"


class LimitsUnavailable(BillingError):
    """The limit counters cannot be reached and the limits are configured to fail closed."""

    code = "limits_unavailable"


class UnknownPlan(BillingError):
    """A plan name the catalog does not have (details: plan, known_plans)."""

    code = "unknown_plan"
