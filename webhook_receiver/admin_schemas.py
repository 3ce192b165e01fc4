"""The admin API's bodies and answers (``/v1/admin/...`` beyond grants, refunds and discrepancies, whose models
live in ``schemas``): pydantic models on the shared types, rendered by the views and described in
``/openapi.json`` as the rest of the API. Amounts are credit strings; rates are basis points (integers)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from billing_core.accounts.api_keys import MAX_OVERLAP_SECONDS, SCOPES, ApiKeyView
from billing_core.admin.accounts import MAX_RESULTS, AccountMatch
from billing_core.admin.audit import MAX_LIST, AuditRow
from billing_core.admin.stats import (
    MAX_DAYS,
    Circulation,
    DaySales,
    DayUsage,
    FailedPayment,
    LowBalance,
    Spender,
    WebhookRate,
)
from billing_core.intake.dead_letters import DeadLetter
from billing_core.types import Account, Credits, CreditString, IdempotencyKey, Reason
from webhook_receiver.schemas import Answer, Body, Time


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- adjustments --------------------------------------------------------------------------------------------
class AdjustmentBody(Body):
    """Seed 003's ``{user_id, credits, reason}``: positive adds an admin grant (the account is created if new),
    negative takes spendable credits (402 ``insufficient_credits`` when short)."""

    account: Account = Field(validation_alias=AliasChoices("account", "user_id"), description="alias: user_id")
    credits: Credits = Field(description='signed, not zero: a credit string such as "-12.5" or a whole number')
    reason: Reason = Field(description="why: recorded on the entry and in the audit log")
    idempotency_key: IdempotencyKey = Field(description="the same key and body again answers the first adjustment")


class AdjustmentAnswer(Answer):
    success: Literal[True] = True
    account: str
    credits: CreditString
    new_balance: CreditString = Field(description="available credits after the adjustment (now, on a replay)")
    entry_id: int
    grant_id: int | None = Field(description="the admin grant a positive adjustment made")
    replayed: bool


# -- stats --------------------------------------------------------------------------------------------------
class DaysQuery(Query):
    days: int = Field(30, ge=1, le=MAX_DAYS, description="UTC days, today included")


class WebhookDaysQuery(Query):
    days: int = Field(1, ge=1, le=MAX_DAYS, description="a rolling window of days back from now")


class TopSpendersQuery(Query):
    days: int = Field(30, ge=1, le=MAX_DAYS)
    limit: int = Field(10, ge=1, le=100)


class LimitQuery(Query):
    limit: int = Field(100, ge=1, le=1000)


class CirculationAnswer(Answer):
    outstanding: CreditString = Field(description="what customers hold, available and held (debts negative)")
    outstanding_tokens: int
    tokens_per_credit: int
    capacity_tokens: int | None = Field(description="the upstream monthly capacity; null: no sales guard")
    threshold_percent: int
    threshold_tokens: int | None
    capacity_used_bp: int | None = Field(description="outstanding tokens over capacity, in basis points")
    sales_paused: bool
    wallets: int
    checked_at: Time

    @classmethod
    def of(cls, c: Circulation) -> CirculationAnswer:
        return cls(
            outstanding=c.outstanding_mc,
            outstanding_tokens=c.outstanding_tokens,
            tokens_per_credit=c.tokens_per_credit,
            capacity_tokens=c.capacity_tokens,
            threshold_percent=c.threshold_percent,
            threshold_tokens=c.threshold_tokens,
            capacity_used_bp=c.capacity_used_bp,
            sales_paused=c.sales_paused,
            wallets=c.wallets,
            checked_at=c.checked_at,
        )


class DaySalesAnswer(Answer):
    day: date
    currency: str | None
    purchases: int
    credits: CreditString
    amount: int = Field(description="paid, in the currency's minor unit")

    @classmethod
    def of(cls, s: DaySales) -> DaySalesAnswer:
        return cls(day=s.day, currency=s.currency, purchases=s.purchases, credits=s.credits_mc, amount=s.amount)


class SalesAnswer(Answer):
    data: list[DaySalesAnswer]


class DayUsageAnswer(Answer):
    day: date
    provider: str | None = Field(description="null for fees and agents")
    model: str | None
    credits: CreditString
    lines: int = Field(description="priced items counted")

    @classmethod
    def of(cls, u: DayUsage) -> DayUsageAnswer:
        return cls(day=u.day, provider=u.provider, model=u.model, credits=u.credits_mc, lines=u.lines)


class UsageStatsAnswer(Answer):
    data: list[DayUsageAnswer]


class SpenderAnswer(Answer):
    account: str
    email: str | None
    spent: CreditString
    entries: int

    @classmethod
    def of(cls, s: Spender) -> SpenderAnswer:
        return cls(account=s.account, email=s.email, spent=s.spent_mc, entries=s.entries)


class TopSpendersAnswer(Answer):
    data: list[SpenderAnswer]


class LowBalanceAnswer(Answer):
    account: str
    email: str | None
    available: CreditString
    threshold: CreditString
    notified: bool

    @classmethod
    def of(cls, b: LowBalance) -> LowBalanceAnswer:
        return cls(
            account=b.account, email=b.email, available=b.available_mc, threshold=b.threshold_mc, notified=b.notified
        )


class LowBalancesAnswer(Answer):
    data: list[LowBalanceAnswer]


class FailedPaymentAnswer(Answer):
    id: str
    object: str
    account: str | None
    payment_intent: str | None
    amount: int | None
    currency: str | None
    payment_method: str | None
    code: str | None
    message: str | None
    failed_at: Time

    @classmethod
    def of(cls, f: FailedPayment) -> FailedPaymentAnswer:
        return cls(**f.__dict__)


class FailedPaymentsAnswer(Answer):
    data: list[FailedPaymentAnswer]


class WebhooksAnswer(Answer):
    since: Time
    received: int
    succeeded: int
    failed: int
    pending: int
    by_status: dict[str, int]
    success_rate_bp: int | None = Field(description="succeeded over settled, in basis points; null: none settled")

    @classmethod
    def of(cls, w: WebhookRate) -> WebhooksAnswer:
        return cls(**w.__dict__)


# -- accounts -----------------------------------------------------------------------------------------------
class AccountSearchQuery(Query):
    q: str = Field(min_length=1, max_length=320, description="an account name prefix, an email, a cus_ id")
    limit: int = Field(20, ge=1, le=MAX_RESULTS)


class AccountMatchAnswer(Answer):
    account: str
    email: str | None
    name: str | None
    stripe_customer_id: str | None
    available: CreditString
    held: CreditString
    negative_since: Time | None
    created_at: Time
    matched_by: Literal["account", "email", "stripe_customer_id"]

    @classmethod
    def of(cls, m: AccountMatch) -> AccountMatchAnswer:
        return cls(
            account=m.account,
            email=m.email,
            name=m.name,
            stripe_customer_id=m.stripe_customer_id,
            available=m.available_mc,
            held=m.held_mc,
            negative_since=m.negative_since,
            created_at=m.created_at,
            matched_by=m.matched_by,
        )


class AccountSearchAnswer(Answer):
    data: list[AccountMatchAnswer]


# -- dead letters -------------------------------------------------------------------------------------------
class DeadLetterAnswer(Answer):
    id: str = Field(description="a Stripe event id, or a usage report's idempotency key")
    kind: str = Field(description="the event type, or usage")
    attempts: int
    error: str | None
    received_at: Time

    @classmethod
    def of(cls, d: DeadLetter) -> DeadLetterAnswer:
        return cls(id=d.id, kind=d.kind, attempts=d.attempts, error=d.error, received_at=d.received_at)


class DeadLettersAnswer(Answer):
    data: list[DeadLetterAnswer]


class ReplayAnswer(Answer):
    id: str
    kind: str
    status: str = Field(description="after the replay: processed, ignored, waiting, failed, applied, rejected...")


# -- settings -----------------------------------------------------------------------------------------------
class SettingAnswer(Answer):
    key: str
    value: Any
    default: Any
    description: str | None
    updated_at: Time | None
    updated_by: str | None


class SettingsAnswer(Answer):
    data: list[SettingAnswer]


class SettingBody(Body):
    value: Any = Field(description="JSON: a number, a string, or null for the default where allowed")


# -- API keys -----------------------------------------------------------------------------------------------
class ApiKeyAnswer(Answer):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: Time
    revoked_at: Time | None
    expires_at: Time | None

    @classmethod
    def of(cls, v: ApiKeyView) -> ApiKeyAnswer:
        return cls(
            id=v.id,
            name=v.name,
            prefix=v.prefix,
            scopes=sorted(v.scopes),
            created_at=v.created_at,
            revoked_at=v.revoked_at,
            expires_at=v.expires_at,
        )


class ApiKeysAnswer(Answer):
    data: list[ApiKeyAnswer]


class CreateApiKeyBody(Body):
    name: StrictStr = Field(min_length=1, max_length=200, pattern=r"\S")
    scopes: list[Literal[SCOPES]] = Field(min_length=1, description="admin implies every scope")  # type: ignore[valid-type]


class CreatedApiKeyAnswer(ApiKeyAnswer):
    key: str = Field(description="the key itself, shown here once and never again")


class RotateApiKeyBody(Body):
    overlap_seconds: StrictInt = Field(
        3600, ge=0, le=MAX_OVERLAP_SECONDS, description="how long the old key keeps working; 0: it stops now"
    )


class RotatedApiKeyAnswer(Answer):
    new: CreatedApiKeyAnswer
    old: ApiKeyAnswer


# -- audit --------------------------------------------------------------------------------------------------
class AuditQuery(Query):
    limit: int = Field(50, ge=1, le=MAX_LIST - 1)
    cursor: str | None = Field(None, pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")
    # Bounded so that any query, percent-encoded (up to 9 bytes a character), fits the server's request line
    # (gunicorn: 4,094 bytes) and is refused here with a 422 rather than by the server with a 414.
    actor: str | None = Field(None, max_length=100)
    action: str | None = Field(None, max_length=64)
    target: str | None = Field(None, max_length=200)


class AuditAnswer(Answer):
    id: int
    at: Time
    actor: str
    action: str
    target: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    note: str | None

    @classmethod
    def of(cls, r: AuditRow) -> AuditAnswer:
        return cls(**r.__dict__)


class AuditPageAnswer(Answer):
    data: list[AuditAnswer]
    has_more: bool
    next_cursor: str | None
