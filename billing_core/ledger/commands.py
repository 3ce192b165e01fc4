"""Commands: small frozen dataclasses, one per thing the ledger does.

Their fields carry the shared constrained types (``billing_core.types``), and commands trust their input:
code that builds one from data it has validated (an API body, a stored usage report, a Stripe object
checked on arrival) constructs it directly; code holding unchecked values (the CLI, tests) builds it with
``Command.validated(...)``, which checks every field against those types and answers ``InvalidCommand`` or
``InvalidAmount`` naming the field. Only invariants between fields stay in ``__post_init__``.

Amounts are integer millicredits (see ``units``); credit strings are parsed at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Literal, Self

from pydantic import TypeAdapter, ValidationError

from billing_core.errors import InvalidCommand, from_validation_error
from billing_core.types import (
    MAX_KEY_LEN,
    Account,
    Actor,
    ExternalRef,
    GrantPriority,
    HoldId,
    IdempotencyKey,
    Metadata,
    Millicredits,
    MillicreditsNonNegative,
    MillicreditsSigned,
    Reason,
    Timestamp,
    TtlSeconds,
)

_ACCOUNT: TypeAdapter[str] = TypeAdapter(Account)

# Client keys are namespaced before they reach the ledger: its keys are global, and a client key must never
# be able to claim the key of a Stripe purchase (``checkout:cs_...``) or of a usage report and so block it
# as a conflict.
HOLD_KEY_PREFIX = "hold:"
CAPTURE_KEY_PREFIX = "capture:"
RELEASE_KEY_PREFIX = "release:"


def check_account(value: object, field_name: str = "account") -> str:
    """An account name from outside a validated body (a Stripe object's metadata), or ``InvalidCommand``."""
    try:
        return _ACCOUNT.validate_python(value)
    except ValidationError:
        raise InvalidCommand(
            f"{field_name} must be 1-128 characters of letters, digits and _.:@+- starting with a letter or digit",
            field=field_name,
        ) from None


@cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


_NOT_FINGERPRINTED = frozenset({"idempotency_key", "pricing"})


class Command:
    """Shared parts: the fingerprint body, and validated construction."""

    kind: ClassVar[str]
    idempotency_key: str

    @classmethod
    def validated(cls, *args: Any, **kwargs: Any) -> Self:
        """The command built from unchecked values, positional or by name, each checked against its type."""
        names = list(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        fields = {**dict(zip(names, args, strict=False)), **kwargs}
        try:
            command: Self = _adapter(cls).validate_python(fields)  # type: ignore[arg-type]  # a class is hashable
        except ValidationError as exc:
            raise from_validation_error(exc, allowed=names) from None
        return command

    def body(self) -> dict[str, Any]:
        """The request as fingerprinted: every field but the key and ``pricing`` (how the amount was priced is
        recorded, not compared: a hold retried after a new price version took effect, at the same amount, is
        the same hold). Shallow on purpose: ``dataclasses.asdict`` deep-copies metadata, and that copy was a
        third of the batch path's Python time."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in _NOT_FINGERPRINTED}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PurchaseCredits(Command):
    """Credits bought through Stripe: a paid grant, funded from Stripe clearing."""

    account: Account
    amount_mc: Millicredits
    idempotency_key: IdempotencyKey
    external_ref: ExternalRef | None = None
    expires_at: Timestamp | None = None
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "purchase"


@dataclass(frozen=True)
class GrantCredits(Command):
    """Credits given, not bought: a promotion, a plan allowance, an operator's grant (``adjustment``, shown as
    ``admin``). ``priority`` overrides the source's default spending priority; ``actor`` (who granted: an API
    key, an operator) is recorded on the entry but not fingerprinted: the same grant retried by another key
    is a replay."""

    account: Account
    amount_mc: Millicredits
    idempotency_key: IdempotencyKey
    source: Literal["promotional", "plan", "adjustment"] = "promotional"
    expires_at: Timestamp | None = None
    reason: Reason | None = None
    external_ref: ExternalRef | None = None
    metadata: Metadata = field(default_factory=dict)
    priority: GrantPriority | None = None
    actor: Actor | None = None
    kind: ClassVar[str] = "grant"

    def body(self) -> dict[str, Any]:
        body = super().body()
        del body["actor"]
        if self.priority is None:  # grants written before priority existed keep their fingerprint
            del body["priority"]
        return body


@dataclass(frozen=True)
class DebitUsage(Command):
    """Priced usage taken from the wallet; refused, with nothing written, when spendable credits are short."""

    account: Account
    amount_mc: Millicredits
    idempotency_key: IdempotencyKey
    external_ref: ExternalRef | None = None
    occurred_at: Timestamp | None = None
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "usage"


@dataclass(frozen=True)
class PlaceHold(Command):
    account: Account
    amount_mc: Millicredits
    idempotency_key: IdempotencyKey
    ttl_seconds: TtlSeconds = 900
    metadata: Metadata = field(default_factory=dict)
    # How ``amount_mc`` was priced (price_version, mode, breakdown): recorded in the entry's metadata.
    pricing: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "hold"


@dataclass(frozen=True)
class CaptureHold(Command):
    """Settle a hold at the actual amount: below the hold returns the rest, above it takes the excess."""

    hold_id: HoldId
    amount_mc: MillicreditsNonNegative
    idempotency_key: IdempotencyKey
    metadata: Metadata = field(default_factory=dict)
    pricing: Metadata = field(default_factory=dict)  # as PlaceHold's
    kind: ClassVar[str] = "capture"


@dataclass(frozen=True)
class ReleaseHold(Command):
    hold_id: HoldId
    idempotency_key: IdempotencyKey
    kind: ClassVar[str] = "release"


@dataclass(frozen=True)
class ClawBack(Command):
    """A refund or dispute takes credits back. It draws first from the grant the payment bought
    (``grant_ref``: the purchase's external reference), then from other grants in spending order, and may
    leave the wallet negative: that debt is flagged and blocks new holds until credits arrive."""

    account: Account
    amount_mc: Millicredits
    idempotency_key: IdempotencyKey
    reason: Literal["refund", "dispute"] = "refund"
    grant_ref: ExternalRef | None = None
    external_ref: ExternalRef | None = None
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "clawback"


@dataclass(frozen=True)
class HoldDisputed(Command):
    """A chargeback opened on a purchase: its disputed share (``amount_mc``) is held back from spending, not
    yet taken (``ledger/disputes.py``). Idempotent by ``dispute_id``: the dispute's row, not the fingerprint,
    says whether it was handled, so a later event carrying other figures replays instead of conflicting."""

    account: Account
    dispute_id: ExternalRef
    payment_intent: ExternalRef
    amount_mc: MillicreditsNonNegative  # the disputed share of the purchase
    purchase_mc: Millicredits  # what the purchase bought: the most refunds and disputes may take back together
    amount: int = 0  # disputed, in the payment's minor currency unit
    currency: str | None = None
    charge: ExternalRef | None = None
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "dispute_hold"

    @property
    def idempotency_key(self) -> str:  # type: ignore[override]  # derived, never chosen
        return f"dispute:{self.dispute_id}"


@dataclass(frozen=True)
class SettleDispute(Command):
    """A dispute closed: ``won`` gives back what it held; ``lost`` takes the disputed share (held credits
    first, then spendable ones, then debt), capped so refunds and disputes never take back more than the
    purchase bought. Once per dispute, whatever arrives later."""

    account: Account
    dispute_id: ExternalRef
    payment_intent: ExternalRef
    outcome: Literal["won", "lost"]
    amount_mc: MillicreditsNonNegative
    purchase_mc: Millicredits
    amount: int = 0
    currency: str | None = None
    charge: ExternalRef | None = None
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "dispute_settle"

    @property
    def idempotency_key(self) -> str:  # type: ignore[override]
        return f"dispute_{self.outcome}:{self.dispute_id}"


@dataclass(frozen=True)
class Adjust(Command):
    """An operator's correction, signed: positive adds an adjustment grant, negative takes spendable credits."""

    account: Account
    amount_mc: MillicreditsSigned
    idempotency_key: IdempotencyKey
    reason: Reason
    actor: Actor
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "adjustment"


@dataclass(frozen=True)
class TransferCredits(Command):
    """Move spendable credits between wallets; the receiving grants keep each source grant's expiry."""

    from_account: Account
    to_account: Account
    amount_mc: Millicredits
    idempotency_key: IdempotencyKey
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "transfer"

    def __post_init__(self) -> None:
        # Not input validation: a transfer to itself would lock one wallet twice and move nothing.
        if self.from_account == self.to_account:
            raise InvalidCommand("cannot transfer to the same account", field="to_account")


@dataclass(frozen=True)
class RollOver(Command):
    """The end of a plan period: what is left of the subscription's plan grants that ended by ``ended_by`` (the
    last period's allowance and what it had carried over) moves, up to ``cap_mc``, into one new plan grant
    expiring at ``expires_at`` (the new period's end); the rest expires. One entry, kind ``rollover``."""

    account: Account
    idempotency_key: IdempotencyKey
    subscription: ExternalRef
    ended_by: Timestamp
    cap_mc: MillicreditsNonNegative
    expires_at: Timestamp
    metadata: Metadata = field(default_factory=dict)
    kind: ClassVar[str] = "rollover"


@dataclass(frozen=True)
class ExpireHolds:
    """Release every pending hold whose TTL ended at ``now`` (a sweep; each hold gets its own entry)."""

    now: Timestamp | None = None
    limit: int = 500

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10_000:
            raise InvalidCommand("limit must be from 1 to 10000", field="limit")


@dataclass(frozen=True)
class ExpireGrants:
    """Expire what is left of every grant whose expiry passed at ``now``."""

    now: Timestamp | None = None
    limit: int = 500

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10_000:
            raise InvalidCommand("limit must be from 1 to 10000", field="limit")


def ledger_key(prefix: str, client_key: str) -> str:
    """A client's idempotency key as the ledger stores it (``hold:<key>``); ``InvalidCommand`` when the
    prefixed key would be longer than a ledger key may be."""
    key = prefix + client_key
    if len(key) > MAX_KEY_LEN:
        raise InvalidCommand(
            f"idempotency_key must be 1-{MAX_KEY_LEN - len(prefix)} printable ASCII characters without spaces",
            field="idempotency_key",
        )
    return key
