"""Typed errors of the domain.

Every error carries a stable machine-readable ``code`` so the HTTP layer and the CLI can map it without
parsing messages, and ``details`` with the figures a caller needs (required vs available credits, ...).
"""

from __future__ import annotations

from typing import Any


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
    """A usage item names a provider or model the price table does not price (details: provider, model, field)."""

    code = "unknown_model"


class UnknownPriceCode(BillingError):
    """A fee or agent code missing from the price table (details: kind, code, field)."""

    code = "unknown_price_code"


class UnknownPackage(BillingError):
    """A credit package id missing from the price table (details: package, field)."""

    code = "unknown_package"
