"""Commands: small frozen dataclasses, validated when built, so bad input never reaches the database.

Amounts are integer millicredits (see ``units``); credit strings are parsed at the edges.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from billing_core.errors import InvalidAmount, InvalidCommand
from billing_core.ledger.grants import GRANT_SOURCES
from billing_core.units import MAX_MC, validate_mc

ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}")
# Printable ASCII without spaces: keys are built from causes (``checkout:cs_123``) and travel in URLs.
KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
HOLD_ID_RE = re.compile(r"hold_[0-9a-z]{1,34}")
MAX_METADATA_BYTES = 16 * 1024
MAX_TTL_SECONDS = 7 * 24 * 3600


def check_account(value: object, field_name: str = "account") -> str:
    if not isinstance(value, str) or not ACCOUNT_RE.fullmatch(value):
        raise InvalidCommand(
            f"{field_name} must be 1-128 characters of letters, digits and _.:@+- starting with a letter or digit",
            field=field_name,
        )
    return value


def check_key(value: object, field_name: str = "idempotency_key") -> str:
    if not isinstance(value, str) or not KEY_RE.fullmatch(value):
        raise InvalidCommand(f"{field_name} must be 1-255 printable ASCII characters without spaces", field=field_name)
    return value


def check_text(value: object, field_name: str, *, max_len: int, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidCommand(
            f"{field_name} must be a non-empty string of at most {max_len} characters", field=field_name
        )
    return value


def check_metadata(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidCommand("metadata must be a JSON object", field="metadata")
    try:
        encoded = json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidCommand(f"metadata is not plain JSON: {exc}", field="metadata") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidCommand(f"metadata exceeds {MAX_METADATA_BYTES} bytes", field="metadata")
    return value


def check_time(value: object, field_name: str, *, required: bool = False) -> datetime | None:
    if value is None and not required:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidCommand(f"{field_name} must be a timezone-aware datetime", field=field_name)
    return value


class Command:
    """Shared parts: the fingerprint body, and the validation run by each dataclass after init."""

    kind: ClassVar[str]
    idempotency_key: str

    def body(self) -> dict[str, Any]:
        """The request as fingerprinted: every field but the key. Shallow on purpose: ``dataclasses.asdict``
        deep-copies metadata, and that copy was a third of the batch path's Python time."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "idempotency_key"}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PurchaseCredits(Command):
    """Credits bought through Stripe: a paid grant, funded from Stripe clearing."""

    account: str
    amount_mc: int
    idempotency_key: str
    external_ref: str | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "purchase"

    def __post_init__(self) -> None:
        check_account(self.account)
        validate_mc(self.amount_mc, field="amount_mc")
        check_key(self.idempotency_key)
        check_text(self.external_ref, "external_ref", max_len=255, required=False)
        check_time(self.expires_at, "expires_at")
        check_metadata(self.metadata)


@dataclass(frozen=True)
class GrantCredits(Command):
    """Credits given, not bought: a promotion, a plan allowance, a goodwill grant."""

    account: str
    amount_mc: int
    idempotency_key: str
    source: str = "promotional"
    expires_at: datetime | None = None
    reason: str | None = None
    external_ref: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "grant"

    def __post_init__(self) -> None:
        check_account(self.account)
        validate_mc(self.amount_mc, field="amount_mc")
        check_key(self.idempotency_key)
        if self.source not in GRANT_SOURCES - {"purchase", "transfer", "adjustment"}:
            raise InvalidCommand("source must be 'promotional' or 'plan'", field="source")
        check_time(self.expires_at, "expires_at")
        check_text(self.reason, "reason", max_len=500, required=False)
        check_text(self.external_ref, "external_ref", max_len=255, required=False)
        check_metadata(self.metadata)


@dataclass(frozen=True)
class DebitUsage(Command):
    """Priced usage taken from the wallet; refused, with nothing written, when spendable credits are short."""

    account: str
    amount_mc: int
    idempotency_key: str
    external_ref: str | None = None
    occurred_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "usage"

    def __post_init__(self) -> None:
        check_account(self.account)
        validate_mc(self.amount_mc, field="amount_mc")
        check_key(self.idempotency_key)
        check_text(self.external_ref, "external_ref", max_len=255, required=False)
        check_time(self.occurred_at, "occurred_at")
        check_metadata(self.metadata)


@dataclass(frozen=True)
class PlaceHold(Command):
    account: str
    amount_mc: int
    idempotency_key: str
    ttl_seconds: int = 900
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "hold"

    def __post_init__(self) -> None:
        check_account(self.account)
        validate_mc(self.amount_mc, field="amount_mc")
        check_key(self.idempotency_key)
        ttl = self.ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECONDS:
            raise InvalidCommand(f"ttl_seconds must be an integer from 1 to {MAX_TTL_SECONDS}", field="ttl_seconds")
        check_metadata(self.metadata)


def _check_hold_id(value: object) -> None:
    if not isinstance(value, str) or not HOLD_ID_RE.fullmatch(value):
        raise InvalidCommand("hold_id is not a hold id", field="hold_id")


@dataclass(frozen=True)
class CaptureHold(Command):
    """Settle a hold at the actual amount: below the hold returns the rest, above it takes the excess."""

    hold_id: str
    amount_mc: int
    idempotency_key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "capture"

    def __post_init__(self) -> None:
        _check_hold_id(self.hold_id)
        validate_mc(self.amount_mc, field="amount_mc", allow_zero=True)
        check_key(self.idempotency_key)
        check_metadata(self.metadata)


@dataclass(frozen=True)
class ReleaseHold(Command):
    hold_id: str
    idempotency_key: str
    kind: ClassVar[str] = "release"

    def __post_init__(self) -> None:
        _check_hold_id(self.hold_id)
        check_key(self.idempotency_key)


@dataclass(frozen=True)
class ClawBack(Command):
    """A refund or dispute takes credits back. It draws first from the grant the payment bought
    (``grant_ref``: the purchase's external reference), then from other grants in spending order, and may
    leave the wallet negative: that debt is flagged and blocks new holds until credits arrive."""

    account: str
    amount_mc: int
    idempotency_key: str
    reason: str = "refund"
    grant_ref: str | None = None
    external_ref: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "clawback"

    def __post_init__(self) -> None:
        check_account(self.account)
        validate_mc(self.amount_mc, field="amount_mc")
        check_key(self.idempotency_key)
        if self.reason not in ("refund", "dispute"):
            raise InvalidCommand("reason must be 'refund' or 'dispute'", field="reason")
        check_text(self.grant_ref, "grant_ref", max_len=255, required=False)
        check_text(self.external_ref, "external_ref", max_len=255, required=False)
        check_metadata(self.metadata)


@dataclass(frozen=True)
class Adjust(Command):
    """An operator's correction, signed: positive adds an adjustment grant, negative takes spendable credits."""

    account: str
    amount_mc: int
    idempotency_key: str
    reason: str
    actor: str
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "adjustment"

    def __post_init__(self) -> None:
        check_account(self.account)
        amount = self.amount_mc
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InvalidAmount("amount_mc must be an integer number of millicredits", field="amount_mc")
        if amount == 0 or abs(amount) > MAX_MC:
            raise InvalidAmount("adjustment must be non-zero and within range", field="amount_mc", value=amount)
        check_key(self.idempotency_key)
        check_text(self.reason, "reason", max_len=500, required=True)
        check_text(self.actor, "actor", max_len=200, required=True)
        check_metadata(self.metadata)


@dataclass(frozen=True)
class TransferCredits(Command):
    """Move spendable credits between wallets; the receiving grants keep each source grant's expiry."""

    from_account: str
    to_account: str
    amount_mc: int
    idempotency_key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "transfer"

    def __post_init__(self) -> None:
        check_account(self.from_account, "from_account")
        check_account(self.to_account, "to_account")
        if self.from_account == self.to_account:
            raise InvalidCommand("cannot transfer to the same account", field="to_account")
        validate_mc(self.amount_mc, field="amount_mc")
        check_key(self.idempotency_key)
        check_metadata(self.metadata)


@dataclass(frozen=True)
class ExpireHolds:
    """Release every pending hold whose TTL ended at ``now`` (a sweep; each hold gets its own entry)."""

    now: datetime | None = None
    limit: int = 500

    def __post_init__(self) -> None:
        check_time(self.now, "now")
        if not 1 <= self.limit <= 10_000:
            raise InvalidCommand("limit must be from 1 to 10000", field="limit")


@dataclass(frozen=True)
class ExpireGrants:
    """Expire what is left of every grant whose expiry passed at ``now``."""

    now: datetime | None = None
    limit: int = 500

    def __post_init__(self) -> None:
        check_time(self.now, "now")
        if not 1 <= self.limit <= 10_000:
            raise InvalidCommand("limit must be from 1 to 10000", field="limit")
