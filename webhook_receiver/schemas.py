"""The HTTP API's bodies: pydantic models for every request and response, built on the shared types.

The same models validate requests (``webhook_receiver.validation``) and describe them in ``/openapi.json``
(``webhook_receiver.openapi``); responses are rendered through them, so the document cannot drift from what
the views answer. The domain returns domain objects; the ``from_*`` constructors here turn them into JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictStr

from billing_core.intake.usage_inbox import UsageStatus
from billing_core.ledger.balances import AccountBalance
from billing_core.ledger.grant_views import MAX_PAGE as MAX_GRANTS_PAGE
from billing_core.ledger.grant_views import GrantHistory, GrantMove, GrantPage, GrantRecord, OpenGrants
from billing_core.ledger.grants import GrantLot, public_source
from billing_core.ledger.handlers import HoldView, Receipt
from billing_core.ledger.history import MAX_PAGE, TransactionPage
from billing_core.pricing.admission import Admission
from billing_core.pricing.items import Items, KeyMode
from billing_core.pricing.limits import LimitPolicy, LimitState
from billing_core.pricing.packages import Package
from billing_core.pricing.plans import LimitOverrides
from billing_core.pricing.quotes import Quote
from billing_core.reconcile.discrepancies import Found
from billing_core.stripe.auto_recharge import Attempt, AutoRechargeView
from billing_core.stripe.subscription_views import MAX_PAGE as MAX_INVOICES_PAGE
from billing_core.stripe.subscription_views import InvoicePage, SubscriptionView
from billing_core.types import (
    Account,
    ClientKey,
    CreditsNonNegative,
    CreditsPositive,
    CreditString,
    Currency,
    DisplayName,
    Email,
    GrantPriority,
    HttpUrl,
    IdempotencyKey,
    Metadata,
    Name,
    PackageId,
    Reason,
    StripeCustomerId,
    Timestamp,
    TtlSeconds,
)

DEFAULT_TTL_SECONDS = 900
# Times as Python writes them (``+00:00``), as the API always has; pydantic's own JSON would write ``Z``.
Time = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str)]


class Body(BaseModel):
    """A request body: unknown fields are refused (a typo must not be silently ignored in a billing request)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- requests -------------------------------------------------------------------------------------------
class EstimateBody(Body):
    items: Items
    account: Account | None = Field(None, description="also answer what this account can spend")
    mode: KeyMode = Field("system", description="system (tokens charged) or own (your provider key: base fees only)")


class PlaceHoldBody(Body):
    """Exactly one of ``credits`` and ``items``."""

    account: Account
    idempotency_key: IdempotencyKey
    credits: CreditsPositive | None = None
    items: Items | None = None
    ttl_seconds: TtlSeconds | None = Field(None, description=f"default {DEFAULT_TTL_SECONDS}")
    metadata: Metadata | None = None
    mode: KeyMode = Field("system", description="system (tokens charged) or own (your provider key: base fees only)")


class CaptureBody(Body):
    """The actual amount: exactly one of ``credits`` (zero releases everything) and ``items``; no body at all
    captures nothing. ``idempotency_key`` defaults to the hold id."""

    idempotency_key: IdempotencyKey | None = None
    credits: CreditsNonNegative | None = None
    items: Items | None = None
    metadata: Metadata | None = None
    mode: KeyMode = Field("system", description="system (tokens charged) or own (your provider key: base fees only)")


class ReleaseBody(Body):
    idempotency_key: IdempotencyKey | None = None


class CheckoutBody(Body):
    account: Account
    package: PackageId
    success_url: HttpUrl
    cancel_url: HttpUrl
    idempotency_key: ClientKey | None = None


class AccountUpdateBody(Body):
    """The fields to change; ``null`` clears one, a field left out stays as it is."""

    email: Email | None = None
    name: DisplayName | None = None
    low_balance_threshold: CreditsNonNegative | None = None
    stripe_customer_id: StripeCustomerId | None = None


class TransactionsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    limit: int = Field(25, ge=1, le=MAX_PAGE, description=f"at most {MAX_PAGE}")
    cursor: str | None = Field(None, description="next_cursor of the previous page")


# -- answers ------------------------------------------------------------------------------------------
class ErrorDetail(Answer):
    model_config = ConfigDict(extra="allow", frozen=True)
    code: str = Field(description="stable and machine-readable, e.g. insufficient_credits")
    message: str


class ErrorAnswer(Answer):
    """Every error: ``{"error": {"code", "message", ...details}}``."""

    error: ErrorDetail


class Flags(Answer):
    negative: bool
    negative_since: Time | None


class BalanceAnswer(Answer):
    account: str
    available: CreditString
    held: CreditString
    total: CreditString
    currency: Literal["credits"] = "credits"
    flags: Flags
    email: str | None
    name: str | None
    low_balance_threshold: CreditString | None
    stripe_customer_id: str | None

    @classmethod
    def of(cls, balance: AccountBalance) -> BalanceAnswer:
        return cls(
            account=balance.account,
            available=balance.available_mc,
            held=balance.held_mc,
            total=balance.total_mc,
            flags=Flags(negative=balance.negative, negative_since=balance.negative_since),
            email=balance.email,
            name=balance.name,
            low_balance_threshold=balance.low_balance_threshold_mc,
            stripe_customer_id=balance.stripe_customer_id,
        )


class Transaction(Answer):
    id: int
    kind: str
    idempotency_key: str
    external_ref: str | None
    available: CreditString = Field(description="what the entry moved on the available balance")
    held: CreditString = Field(description="what the entry moved on the held balance")
    metadata: dict[str, Any]
    occurred_at: Time | None
    created_at: Time


class TransactionsAnswer(Answer):
    data: list[Transaction]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def of(cls, page: TransactionPage) -> TransactionsAnswer:
        return cls(
            data=[
                Transaction(
                    id=e.id,
                    kind=e.kind,
                    idempotency_key=e.idempotency_key,
                    external_ref=e.external_ref,
                    available=e.available_mc,
                    held=e.held_mc,
                    metadata=e.metadata,
                    occurred_at=e.occurred_at,
                    created_at=e.created_at,
                )
                for e in page.entries
            ],
            has_more=page.next_cursor is not None,
            next_cursor=page.next_cursor,
        )


class QuoteLineAnswer(Answer):
    type: str
    description: str
    credits: CreditString
    breakdown: dict[str, Any] = Field(
        default_factory=dict,
        description="how the line was priced: provider, model, tokens by kind and unit prices in credits per 1M "
        "(scheme per_token or token_bundle), or code, unit_credits and quantity",
    )


class EstimateAnswer(Answer):
    credits: CreditString
    lines: list[QuoteLineAnswer]
    available: CreditString | None = Field(None, description="with account: what a hold placed now could reserve")
    sufficient: bool | None = None
    version: str | None = Field(None, description="the price catalog version that priced it")
    mode: KeyMode = "system"

    @classmethod
    def of(cls, quote: Quote, *, available_mc: int | None = None) -> EstimateAnswer:
        lines = [
            QuoteLineAnswer(type=x.type, description=x.description, credits=x.amount_mc, breakdown=dict(x.breakdown))
            for x in quote.lines
        ]
        priced = {"version": quote.version, "mode": quote.mode}
        if available_mc is None:
            return cls(credits=quote.total_mc, lines=lines, **priced)
        return cls(
            credits=quote.total_mc,
            lines=lines,
            available=available_mc,
            sufficient=available_mc >= quote.total_mc,
            **priced,
        )


class HoldAnswer(Answer):
    id: str
    account: str
    credits: CreditString
    status: Literal["pending", "captured", "released", "expired"]
    expires_at: Time
    captured: CreditString | None
    replayed: bool

    @classmethod
    def of(cls, receipt: Receipt) -> HoldAnswer:
        hold: HoldView | None = receipt.hold
        assert hold is not None, "hold commands answer with their hold"
        return cls(
            id=hold.id,
            account=hold.account,
            credits=hold.amount_mc,
            status=hold.status,
            expires_at=hold.expires_at,
            captured=hold.captured_mc,
            replayed=receipt.replayed,
        )


class PackageAnswer(Answer):
    id: str
    name: str
    credits: CreditString = Field(description="the credits sold, bonus not included")
    unit_amount: int = Field(description="the price in minor units of currency")
    currency: str
    bonus_credits: CreditString = Field(0, description="credited on top of credits with the purchase")
    total_credits: CreditString = Field(0, description="what a paid checkout credits: credits + bonus_credits")
    payment_methods: list[str] = Field(default_factory=lambda: ["card"], examples=[["card", "pix"]])
    description: str | None = None
    stripe_price: str | None = Field(None, description="the Stripe Price checkout sells, once synced or pinned")

    @classmethod
    def of(cls, package: Package, stripe_price: str | None = None) -> PackageAnswer:
        return cls(
            id=package.id,
            name=package.name,
            credits=package.credits_mc,
            unit_amount=package.unit_amount,
            currency=package.currency,
            bonus_credits=package.bonus_mc,
            total_credits=package.total_mc,
            payment_methods=list(package.payment_methods),
            description=package.description,
            stripe_price=stripe_price,
        )


class PackagesAnswer(Answer):
    data: list[PackageAnswer]
    has_more: bool = False
    next_cursor: None = None


class CheckoutAnswer(Answer):
    id: str = Field(description="the Checkout Session, cs_...")
    url: str


class UsageAccepted(Answer):
    accepted: int
    duplicates: list[str] = Field(description="keys stored before with the same body")
    duplicate_statuses: dict[str, Literal["pending", "applied", "rejected"]] = Field(
        description="each duplicate's own status, as GET /v1/usage/<key> would answer it"
    )
    status: Literal["pending"] = Field("pending", description="the status of the reports this request stored")


class UsageReason(Answer):
    code: str | None
    message: str | None


class UsageStatusAnswer(Answer):
    idempotency_key: str
    status: Literal["pending", "applied", "rejected"]
    credits: CreditString
    reason: UsageReason | None
    entry_id: int | None
    received_at: Time
    applied_at: Time | None
    processing: Literal["pending", "failed", "dead"] | None = Field(None, description="while pending")
    attempts: int | None = Field(None, description="while pending")

    @classmethod
    def of(cls, status: UsageStatus) -> UsageStatusAnswer:
        # A failing row keeps its error for operators; the client sees a reason only once a report is refused.
        rejected = status.status == "rejected"
        reason = UsageReason(code=status.reason_code, message=status.reason) if rejected else None
        pending = status.status == "pending"
        return cls(
            idempotency_key=status.idempotency_key,
            status=status.status,
            credits=status.amount_mc,
            reason=reason,
            entry_id=status.entry_id,
            received_at=status.received_at,
            applied_at=None if pending else status.applied_at,
            processing=status.processing if pending else None,
            attempts=status.attempts if pending else None,
        )

    @property
    def hidden(self) -> set[str]:
        """Fields only a pending report shows."""
        return set() if self.status == "pending" else {"processing", "attempts"}


class StripeEvent(BaseModel):
    """A Stripe event as Stripe signs it (checked by ``billing_core.intake.stripe_events.check_event``)."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(examples=["evt_1"])
    object: Literal["event"]
    type: str = Field(examples=["checkout.session.completed"])
    created: int
    data: dict[str, Any]


class WebhookAnswer(Answer):
    received: Literal[True]
    duplicate: bool


class Health(Answer):
    status: Literal["ok", "ready", "unavailable"]
    checks: dict[str, str] | None = Field(None, description="readyz: the database and the broker")


def quote_json(quote: Quote) -> dict[str, Any]:
    return EstimateAnswer.of(quote).model_dump(mode="json", exclude_none=True)


# -- packages and the sales guard (the sales part of the pricing work) -------------------------------------
class PackagesQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    currency: Currency | None = Field(None, description="only the packages sold in this currency, e.g. brl")


# -- limits: plans, per-account limits, the usage view (billing_core/pricing/limits.py) ----------------------
class AccountLimitsUpdateBody(AccountUpdateBody):
    """The profile fields, and the account's plan and limit overrides."""

    plan: Name | None = Field(None, description="a plan of the catalog; null: back to the default plan")
    limits: LimitOverrides | None = Field(
        None,
        description="overrides of the plan's limits, merged into those stored (a field set to null: unlimited); "
        "null clears every override",
    )


class LimitsAnswer(Answer):
    """The limits in effect (the plan's, with the account's overrides); null = unlimited."""

    hourly_tokens: int | None
    daily_tokens: int | None
    monthly_tokens: int | None
    upgrade_url: str | None

    @classmethod
    def of(cls, policy: LimitPolicy) -> LimitsAnswer:
        return cls(
            hourly_tokens=policy.hourly,
            daily_tokens=policy.daily,
            monthly_tokens=policy.monthly,
            upgrade_url=policy.upgrade_url,
        )


# -- grants (the credit lifecycle: grants you can see) ----------------------------------------------------------
PublicSource = Literal["purchase", "plan", "promotion", "admin", "transfer", "refund_credit"]
_SOURCE_HELP = (
    "purchase (bought through Stripe) · plan (a plan's allowance) · promotion · admin (granted by an operator) · "
    "transfer (moved in from another account) · refund_credit (a refund paid back as credits)"
)


class GrantAnswer(Answer):
    """A grant in the balance: credits that can be spent now."""

    id: int
    source: PublicSource = Field(description=_SOURCE_HELP)
    remaining: CreditString = Field(description="what is left to spend")
    original: CreditString = Field(description="what was granted")
    expires_at: Time | None = Field(description="null: never expires")
    priority: int = Field(description="lower is spent first among grants expiring at the same time")

    @classmethod
    def of(cls, lot: GrantLot) -> GrantAnswer:
        assert lot.id is not None, "a grant read from its row"
        return cls(
            id=lot.id,
            source=public_source(lot.source),
            remaining=lot.remaining_mc,
            original=lot.amount_mc,
            expires_at=lot.expires_at,
            priority=lot.priority,
        )


def _stripe_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(int(value), UTC)


class SubscriptionAnswer(Answer):
    """A plan subscription: as mirrored from Stripe (the balance), or as Stripe just answered a change."""

    id: str = Field(description="the Stripe subscription, sub_...")
    plan: str
    interval: str = Field(description="month · year")
    status: str = Field(description="Stripe's: trialing · active · past_due · canceled · incomplete · unpaid ...")
    current_period_start: Time | None
    current_period_end: Time | None
    cancel_at_period_end: bool
    trial_end: Time | None

    @classmethod
    def of(cls, view: SubscriptionView) -> SubscriptionAnswer:
        return cls(
            id=view.id,
            plan=view.plan,
            interval=view.interval,
            status=view.status,
            current_period_start=view.current_period_start,
            current_period_end=view.current_period_end,
            cancel_at_period_end=view.cancel_at_period_end,
            trial_end=view.trial_end,
        )

    @classmethod
    def of_stripe(cls, subscription: dict[str, Any], *, plan: str, interval: str) -> SubscriptionAnswer:
        """Stripe's subscription in our shape; the plan and interval from its Price's metadata (written by
        ``billing stripe sync-products``), else from the subscription's metadata, else the ones given."""
        items = (subscription.get("items") or {}).get("data") or [{}]
        item = items[0]
        price = item.get("price") or {}
        price_metadata = price.get("metadata") or {}
        metadata = subscription.get("metadata") or {}
        recurring = price.get("recurring") or {}
        start = subscription.get("current_period_start", item.get("current_period_start"))
        end = subscription.get("current_period_end", item.get("current_period_end"))
        return cls(
            id=subscription["id"],
            plan=price_metadata.get("billing_plan") or metadata.get("plan") or plan,
            interval=recurring.get("interval") or price_metadata.get("interval") or interval,
            status=subscription["status"],
            current_period_start=_stripe_time(start),
            current_period_end=_stripe_time(end),
            cancel_at_period_end=bool(subscription.get("cancel_at_period_end")),
            trial_end=_stripe_time(subscription.get("trial_end")),
        )


class AccountAnswer(BalanceAnswer):
    plan: str
    limits: LimitsAnswer
    grants: list[GrantAnswer] = Field(
        description="the credits that can be spent now, by grant, in the order they will be spent "
        "(GET /v1/accounts/<account>/grants lists every grant, with its history)"
    )
    debt: CreditString = Field(
        description="credits owed (a refund or dispute of credits already spent); 0 unless flags.negative"
    )
    subscription: SubscriptionAnswer | None = Field(
        None,
        description="the plan subscription now: the newest one not canceled, else the newest canceled one; "
        "null: never subscribed",
    )

    @classmethod
    def with_limits(
        cls,
        balance: AccountBalance,
        policy: LimitPolicy,
        grants: OpenGrants,
        subscription: SubscriptionView | None = None,
    ) -> AccountAnswer:
        base = BalanceAnswer.of(balance)
        # The validated values (millicredits), not their JSON (credit strings).
        fields = {name: getattr(base, name) for name in BalanceAnswer.model_fields}
        return cls(
            **fields,
            plan=policy.plan,
            limits=LimitsAnswer.of(policy),
            grants=[GrantAnswer.of(lot) for lot in grants.lots],
            debt=grants.debt_mc,
            subscription=None if subscription is None else SubscriptionAnswer.of(subscription),
        )


class UsageLine(Answer):
    metric: str = Field(examples=["tokens_hour"], description="tokens_hour · tokens_day · tokens_month")
    current: int
    limit: int | None
    percentage: float = Field(description="current / limit in percent, two decimals; 0 when unlimited")
    unlimited: bool
    remaining: int | None
    resets_at: Time


class UsageViewAnswer(Answer):
    account: str
    plan: str
    upgrade_url: str | None
    counted: bool = Field(description="false: the counters could not be read; figures as of the last flush")
    usage: list[UsageLine]

    @classmethod
    def of(cls, state: LimitState, policy: LimitPolicy) -> UsageViewAnswer:
        return cls(
            account=state.account,
            plan=policy.plan,
            upgrade_url=policy.upgrade_url,
            counted=state.counted,
            usage=[
                UsageLine(
                    metric=w.metric,
                    current=w.current,
                    limit=w.limit,
                    percentage=w.percentage,
                    unlimited=w.unlimited,
                    remaining=w.remaining,
                    resets_at=w.resets_at,
                )
                for w in state.windows
            ],
        )


# -- the pricing catalog ----------------------------------------------------------------------------------------
class AgentCostAnswer(Answer):
    code: str
    name: str
    credits: CreditString = Field(description="flat credits per run")
    description: str | None


class AgentCostsAnswer(Answer):
    """``GET /v1/agent-costs``: the flat cost of each agent in the catalog version in effect."""

    data: list[AgentCostAnswer]
    version: str | None


# -- POST /v1/check -------------------------------------------------------------------------------------------
class CheckBody(Body):
    """Exactly one of ``credits`` and ``items``. With ``reserve``, an allowed check places a hold (scope
    ``holds:write``; ``idempotency_key`` then required), as ``POST /v1/holds`` would."""

    account: Account
    credits: CreditsPositive | None = None
    items: Items | None = None
    mode: KeyMode = Field("system", description="system (tokens charged) or own (your provider key: base fees only)")
    reserve: bool = Field(False, description="place a hold for the estimate when the work is allowed")
    idempotency_key: IdempotencyKey | None = Field(None, description="the hold's key (required with reserve)")
    ttl_seconds: TtlSeconds | None = Field(None, description=f"the hold's TTL, default {DEFAULT_TTL_SECONDS}")
    metadata: Metadata | None = None


class QuotaAnswer(UsageLine):
    """The monthly quota (seed 002's shape), with the plan's upgrade URL."""

    upgrade_url: str | None


class CheckLimitsAnswer(Answer):
    hour: UsageLine
    day: UsageLine


class CheckAnswer(Answer):
    allowed: bool
    reason_code: str | None = Field(
        description="null when allowed; else insufficient_credits · account_negative · rate_limited · "
        "quota_exceeded · key_mode_not_allowed · limits_unavailable"
    )
    message: str | None
    account: str
    mode: KeyMode
    available: CreditString = Field(description="what a hold placed now could reserve")
    estimate: CreditString | None = Field(description="the price of the items (or the credits asked for)")
    shortfall: CreditString = Field(description="estimate - available when short, else 0")
    tokens: int = Field(description="tokens the items count against the limits (0 in own mode)")
    price_version: str | None
    retry_after: int | None = Field(None, description="seconds until a rate-limited window resets")
    counted: bool = Field(description="false: the limit counters could not be read (limits not checked)")
    limits: CheckLimitsAnswer
    quota: QuotaAnswer
    hold: HoldAnswer | None = None
    details: dict[str, Any] = Field(default_factory=dict, description="the refusal's details, as its error has")

    @classmethod
    def of(cls, admission: Admission, *, version: str | None, hold: HoldAnswer | None = None) -> CheckAnswer:
        reason = admission.reason
        lines = {
            w.period: UsageLine(
                metric=w.metric,
                current=w.current,
                limit=w.limit,
                percentage=w.percentage,
                unlimited=w.unlimited,
                remaining=w.remaining,
                resets_at=w.resets_at,
            )
            for w in admission.limits.windows
        }
        month = lines["month"]
        retry_after = reason.details.get("retry_after") if reason is not None else None
        return cls(
            allowed=reason is None,
            reason_code=None if reason is None else reason.code,
            message=None if reason is None else reason.message,
            account=admission.account,
            mode=admission.mode,
            available=admission.available_mc,
            estimate=admission.estimate_mc,
            shortfall=admission.shortfall_mc,
            tokens=admission.tokens,
            price_version=version,
            retry_after=retry_after if isinstance(retry_after, int) else None,
            counted=admission.limits.counted,
            limits=CheckLimitsAnswer(hour=lines["hour"], day=lines["day"]),
            quota=QuotaAnswer(**month.model_dump(), upgrade_url=admission.policy.upgrade_url),
            hold=hold,
            details={} if reason is None else dict(reason.details),
        )


# -- grants: the list with history, and the admin grant --------------------------------------------------------
class GrantsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    limit: int = Field(
        25, ge=1, le=MAX_GRANTS_PAGE, description=f"at most {MAX_GRANTS_PAGE} (grants, or history lines)"
    )
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    grant: int | None = Field(
        None, ge=1, description="one grant, with its history (then limit and cursor page through the history)"
    )


class GrantCause(Answer):
    """The ledger entry that created the grant."""

    entry_id: int
    kind: str = Field(description="purchase · grant · adjustment · transfer")
    idempotency_key: str
    reason: str | None = Field(description="the reason given with a grant or adjustment")
    actor: str | None = Field(description="who granted it: an operator, an API key")


class GrantMoveAnswer(Answer):
    """One ledger posting that moved the grant's remaining."""

    entry_id: int
    line: int
    kind: str = Field(description="the entry's kind: grant, purchase, usage, hold, release, capture, grant_expiry, ...")
    amount: CreditString = Field(description="signed: what the posting added to (or took from) the grant")
    idempotency_key: str = Field(description="the entry's")
    external_ref: str | None
    at: Time = Field(description="when the ledger wrote it")
    occurred_at: Time | None

    @classmethod
    def of(cls, move: GrantMove) -> GrantMoveAnswer:
        return cls(
            entry_id=move.entry_id,
            line=move.line,
            kind=move.kind,
            amount=move.amount_mc,
            idempotency_key=move.idempotency_key,
            external_ref=move.external_ref,
            at=move.created_at,
            occurred_at=move.occurred_at,
        )


class GrantDetailAnswer(Answer):
    id: int
    source: PublicSource = Field(description=_SOURCE_HELP)
    status: Literal["active", "exhausted", "expired"] = Field(
        description="active: spendable now · exhausted: nothing left (spent, held, clawed back) · "
        "expired: past its expiry with credits left, or credits taken by the expiry"
    )
    remaining: CreditString
    original: CreditString
    expired: CreditString = Field(description="credits the expiry took")
    expires_at: Time | None
    priority: int
    created_at: Time
    external_ref: str | None = Field(description="the cause outside the ledger, e.g. the Stripe payment")
    cause: GrantCause
    history: list[GrantMoveAnswer] | None = Field(
        None, description="with ?grant=<id>: the postings that moved it, newest first"
    )

    @classmethod
    def of(cls, grant: GrantRecord, history: tuple[GrantMove, ...] | None = None) -> GrantDetailAnswer:
        return cls(
            id=grant.id,
            source=grant.source,
            status=grant.status,
            remaining=grant.remaining_mc,
            original=grant.amount_mc,
            expired=grant.expired_mc,
            expires_at=grant.expires_at,
            priority=grant.priority,
            created_at=grant.created_at,
            external_ref=grant.external_ref,
            cause=GrantCause(
                entry_id=grant.entry_id,
                kind=grant.entry_kind,
                idempotency_key=grant.entry_key,
                reason=grant.reason,
                actor=grant.actor,
            ),
            history=None if history is None else [GrantMoveAnswer.of(m) for m in history],
        )


class GrantsAnswer(Answer):
    """Every grant (open ones first, in spending order, then the rest newest first), or with ``?grant=`` that
    one grant with a page of its history (``has_more``/``next_cursor`` then page the history)."""

    data: list[GrantDetailAnswer]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def of(cls, page: GrantPage) -> GrantsAnswer:
        return cls(
            data=[GrantDetailAnswer.of(g) for g in page.grants],
            has_more=page.next_cursor is not None,
            next_cursor=page.next_cursor,
        )

    @classmethod
    def of_history(cls, history: GrantHistory) -> GrantsAnswer:
        return cls(
            data=[GrantDetailAnswer.of(history.grant, history.moves)],
            has_more=history.next_cursor is not None,
            next_cursor=history.next_cursor,
        )


class AdminGrantBody(Body):
    """Credits given by an operator (seed 003's admin grant): a promotion, a plan allowance or an admin grant.
    The account is created if it is new."""

    account: Account
    credits: CreditsPositive
    reason: Reason = Field(description="why: recorded on the entry")
    idempotency_key: IdempotencyKey = Field(description="the same key and body again answers the first grant")
    source: Literal["promotion", "admin", "plan"] = "admin"
    expires_at: Timestamp | None = Field(None, description="ISO 8601 with a zone; in the future; null: never")
    priority: GrantPriority | None = Field(None, description="overrides the source's default spending priority")
    metadata: Metadata | None = None


class AdminGrantAnswer(Answer):
    success: Literal[True] = True
    replayed: bool = Field(description="true: this key was granted before; the answer is that grant")
    entry_id: int
    grant: GrantDetailAnswer
    new_balance: BalanceAnswer


# -- admin refunds (``POST /v1/admin/refunds``) -------------------------------------------------------------
class AdminRefundBody(Body):
    """Exactly one of ``credits`` (converted to an amount in proportion to the purchase) and ``amount`` (minor
    units of the payment's currency)."""

    account: Account
    payment: str = Field(
        pattern=r"^(cs|pi)_[A-Za-z0-9_]{1,250}$",
        description="the purchase's Checkout Session (cs_...) or payment intent (pi_...)",
        examples=["cs_test_a1b2c3", "pi_3Nabc"],
    )
    credits: CreditsPositive | None = Field(None, description="the credits to take back")
    amount: int | None = Field(None, ge=1, description="the amount to refund, in the currency's minor unit")
    reason: str = Field(min_length=1, max_length=500, description="why: kept on the Stripe refund and the clawback")
    idempotency_key: ClientKey


class RefundObject(Answer):
    id: str = Field(description="the Stripe refund, re_...")
    status: str = Field(description="Stripe's: succeeded, pending, failed, canceled")
    amount: int = Field(description="minor units of currency")
    currency: str


class AdminRefundAnswer(Answer):
    refund: RefundObject
    credits: CreditString = Field(description="what the clawback will take when the refund's webhook arrives")
    payment: str = Field(description="the payment intent refunded, pi_...")
    checkout_session: str | None = None
    replayed: bool = Field(description="true: this idempotency key made the refund before")


# -- auto-recharge (billing_core/stripe/auto_recharge.py, docs/auto-recharge.md) ------------------------------
class AutoRechargeBody(Body):
    """The whole setting, every field required: saving it re-arms auto-recharge (after a failure too)."""

    enabled: bool
    threshold: CreditsNonNegative = Field(description="recharge when the available balance falls below this")
    package: PackageId = Field(description="the credit package (GET /v1/packages) charged to the saved card")


class AutoRechargeAttemptAnswer(Answer):
    id: int
    status: Literal["pending", "succeeded", "failed", "requires_action"]
    package: str
    credits: CreditString
    amount: int = Field(description="charged, in the currency's minor unit")
    currency: str
    payment_intent: str | None
    failure_code: str | None = Field(description="no_payment_method, card_declined, authentication_required...")
    failure_message: str | None
    created_at: Time
    updated_at: Time

    @classmethod
    def of(cls, attempt: Attempt) -> AutoRechargeAttemptAnswer:
        return cls(
            id=attempt.id,
            status=attempt.status,
            package=attempt.package,
            credits=attempt.credits_mc,
            amount=attempt.amount,
            currency=attempt.currency,
            payment_intent=attempt.payment_intent_id,
            failure_code=attempt.failure_code,
            failure_message=attempt.failure_message,
            created_at=attempt.created_at,
            updated_at=attempt.updated_at,
        )


class AutoRechargeAnswer(Answer):
    account: str
    enabled: bool
    threshold: CreditString | None = Field(description="null: never configured")
    package: str | None
    state: Literal["armed", "pending", "charged", "failed"] | None = Field(
        description="armed: waiting for a crossing · pending: a charge in flight · charged: recharged, armed again "
        "once the balance is back at the threshold · failed: stopped until the setting is saved again"
    )
    updated_at: Time | None
    last_attempt: AutoRechargeAttemptAnswer | None

    @classmethod
    def of(cls, account: str, view: AutoRechargeView | None) -> AutoRechargeAnswer:
        if view is None:
            return cls(
                account=account,
                enabled=False,
                threshold=None,
                package=None,
                state=None,
                updated_at=None,
                last_attempt=None,
            )
        return cls(
            account=view.account,
            enabled=view.enabled,
            threshold=view.threshold_mc,
            package=view.package,
            state=view.state,
            updated_at=view.updated_at,
            last_attempt=AutoRechargeAttemptAnswer.of(view.last_attempt) if view.last_attempt else None,
        )


# -- subscriptions, the billing portal, invoices (the credit lifecycle: plans) -----------------------------------
PlanInterval = Annotated[
    StrictStr,
    Field(pattern=r"^[a-z]{1,16}$", description="month or year (the plan's prices say which)", examples=["month"]),
]


class SubscriptionBody(Body):
    """Subscribe ``account`` to ``plan``, billed every ``interval``, through a Stripe Checkout Session."""

    account: Account
    plan: Name = Field(examples=["pro"])
    interval: PlanInterval = "month"
    success_url: HttpUrl
    cancel_url: HttpUrl
    idempotency_key: ClientKey | None = None


class SubscriptionCheckoutAnswer(Answer):
    id: str = Field(description="the Checkout Session, cs_...")
    url: str
    trial_days: int | None = Field(
        None, description="the trial the session offers; null: none (the plan has none, or the account had one)"
    )


class SubscriptionChangeBody(Body):
    """Move the subscription to another plan (and interval; default: the one it has)."""

    plan: Name = Field(examples=["business"])
    interval: PlanInterval | None = None
    idempotency_key: ClientKey | None = None


class SubscriptionChangeAnswer(SubscriptionAnswer):
    change: Literal["upgrade", "downgrade", "none"] = Field(
        description="upgrade: applied now, the prorated difference invoiced at once · downgrade: the new price "
        "from the next renewal · none: already on that plan and interval"
    )


class CancelQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    at_period_end: bool = Field(True, description="true: at the end of the period paid for; false: now")


class BillingPortalBody(Body):
    account: Account
    return_url: HttpUrl


class BillingPortalAnswer(Answer):
    url: str


class InvoicesQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    limit: int = Field(25, ge=1, le=MAX_INVOICES_PAGE, description=f"at most {MAX_INVOICES_PAGE}")
    cursor: str | None = Field(None, description="next_cursor of the previous page")


class InvoiceAnswer(Answer):
    id: str = Field(description="the Stripe invoice, in_...")
    number: str | None
    status: str = Field(description="draft · open · paid · uncollectible · void")
    currency: str
    amount_due: int = Field(description="minor units of currency")
    amount_paid: int
    total: int
    billing_reason: str | None = Field(
        description="subscription_create · subscription_cycle · subscription_update · manual ..."
    )
    subscription: str | None
    period_start: Time | None = Field(description="the service period its lines bill")
    period_end: Time | None
    hosted_invoice_url: str | None
    created: Time
    paid_at: Time | None
    attempt_count: int
    next_payment_attempt: Time | None


class InvoicesAnswer(Answer):
    data: list[InvoiceAnswer]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def of(cls, page: InvoicePage) -> InvoicesAnswer:
        return cls(
            data=[
                InvoiceAnswer(
                    id=i.id,
                    number=i.number,
                    status=i.status,
                    currency=i.currency,
                    amount_due=i.amount_due,
                    amount_paid=i.amount_paid,
                    total=i.total,
                    billing_reason=i.billing_reason,
                    subscription=i.subscription,
                    period_start=i.period_start,
                    period_end=i.period_end,
                    hosted_invoice_url=i.hosted_invoice_url,
                    created=i.created,
                    paid_at=i.paid_at,
                    attempt_count=i.attempt_count,
                    next_payment_attempt=i.next_payment_attempt,
                )
                for i in page.invoices
            ],
            has_more=page.next_cursor is not None,
            next_cursor=page.next_cursor,
        )


# -- admin discrepancies (``/v1/admin/discrepancies``, billing_core/reconcile/discrepancies.py) ---------------
MAX_DISCREPANCIES_PAGE = 100


class DiscrepanciesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["open", "all"] = Field("open", description="open ones only (default), or resolved ones too")
    limit: int = Field(50, ge=1, le=MAX_DISCREPANCIES_PAGE, description=f"at most {MAX_DISCREPANCIES_PAGE}")
    cursor: str | None = Field(None, pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")


class ResolveDiscrepancyBody(Body):
    note: str = Field(min_length=1, max_length=2000, description="how it was resolved; recorded with who resolved it")


class DiscrepancyAnswer(Answer):
    id: int
    kind: str = Field(description="amount_differs · state_differs · missing_in_stripe")
    status: Literal["open", "resolved"]
    stripe_id: str | None = Field(description="the Stripe object: cs_, in_, re_, dp_...")
    account: str | None
    expected: Any = Field(description="what Stripe shows (credits_mc, amount, status)")
    found: Any = Field(description="what the ledger holds")
    found_at: Time
    resolved_at: Time | None
    resolved_by: str | None
    note: str | None

    @classmethod
    def of(cls, item: Found) -> DiscrepancyAnswer:
        return cls(
            id=item.id,
            kind=item.kind,
            status="open" if item.resolved_at is None else "resolved",
            stripe_id=item.stripe_id,
            account=item.account,
            expected=item.expected,
            found=item.found,
            found_at=item.found_at,
            resolved_at=item.resolved_at,
            resolved_by=item.resolved_by,
            note=item.note,
        )


class DiscrepanciesAnswer(Answer):
    data: list[DiscrepancyAnswer]
    has_more: bool
    next_cursor: str | None
