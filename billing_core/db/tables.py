"""The ledger's tables (SQLAlchemy 2 declarative). The schema itself changes only through ``migrations/``.

Shape, in billing words:
- ``LedgerAccount``: a balance bucket. Each customer has two (``available`` and ``held``); the system has one
  per counterparty (Stripe clearing, promotional grants, usage revenue, refunds, expiry, adjustments).
  ``balance_mc`` caches the sum of the account's postings; ``billing check`` proves it.
- ``Wallet``: the customer account as the API names it (``user_42``). Its row is the lock every
  command on that customer's money takes first.
- ``Grant``: a lot of credits in a wallet (a purchase, a promotion, a plan allowance...). Every posting to
  the available account names its grant, so a grant's ``remaining_mc`` is the sum of its postings and
  expiry and refunds know exactly which credits they touch. A wallet's debt (a clawback of credits already
  spent) is one grant of source ``debt`` whose remaining is negative.
- ``LedgerEntry`` / ``Posting``: immutable; an entry's postings sum to zero.
- ``Hold``: a reservation, two-phase: credits move from available to held, then are captured or released.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class LedgerAccount(Base):
    __tablename__ = "ledger_accounts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(160), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    balance_mc: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "kind IN ('available', 'held', 'stripe_clearing', 'promotional', 'usage_revenue', "
            "'refunds', 'expiry', 'adjustments')",
            name="ledger_accounts_kind",
        ),
    )


class Wallet(Base):
    __tablename__ = "wallets"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(128), unique=True)
    available_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"), unique=True)
    held_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"), unique=True)
    # Set while the wallet carries debt (a negative balance from a clawback or an over-capture).
    negative_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    low_balance_threshold_mc: Mapped[int | None] = mapped_column(BigInteger)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Token limits (pricing/limits.py): the plan (None: the catalog's default) and per-account overrides.
    plan: Mapped[str | None] = mapped_column(Text)
    limit_overrides: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # Set while the low-balance notice of the current downward crossing is written; cleared by a top-up.
    low_balance_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_wallets_low_balance_notified", "id", postgresql_where=text("low_balance_notified_at IS NOT NULL")),
        # Account search (admin/accounts.py, migration 0012): a name prefix under any collation, an email in any case.
        Index("ix_wallets_account_prefix", "account", postgresql_ops={"account": "text_pattern_ops"}),
        Index("ix_wallets_email_lower", text("lower(email)")),
    )


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    # sha256 of the canonical request body: the same key with another body is a conflict, not a replay.
    fingerprint: Mapped[str] = mapped_column(String(64))
    external_ref: Mapped[str | None] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'::jsonb"))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "kind IN ('purchase', 'grant', 'usage', 'hold', 'capture', 'release', 'hold_expiry', "
            "'grant_expiry', 'clawback', 'adjustment', 'transfer', 'dispute_hold', 'dispute_release', 'rollover')",
            name="ledger_entries_kind",
        ),
        Index("ix_ledger_entries_external_ref", "external_ref", postgresql_where=text("external_ref IS NOT NULL")),
        # What refunds and lost disputes took back for one payment (migration 0007): clawbacks only, so the
        # usage path's inserts pay one predicate and no index entry.
        Index(
            "ix_ledger_entries_clawback_payment",
            text("(metadata ->> 'payment_intent')"),
            postgresql_where=text("kind = 'clawback'"),
        ),
        # The admin stats' windows (migration 0012): a BRIN for usage (cheap on the hottest insert), a partial
        # btree for purchases.
        Index("brin_ledger_entries_occurred", "occurred_at", postgresql_using="brin"),
        Index("ix_ledger_entries_purchase_occurred", "occurred_at", postgresql_where=text("kind = 'purchase'")),
    )


class Grant(Base):
    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    source: Mapped[str] = mapped_column(String(32))
    amount_mc: Mapped[int] = mapped_column(BigInteger)
    remaining_mc: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Lower draws first among grants expiring at the same time: promotional credits before paid ones.
    priority: Mapped[int] = mapped_column(SmallInteger)
    entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entries.id"))
    external_ref: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "source IN ('purchase', 'promotional', 'plan', 'adjustment', 'transfer', 'debt')",
            name="grants_source",
        ),
        CheckConstraint(
            "(source = 'debt' AND remaining_mc <= 0) OR (source <> 'debt' AND remaining_mc >= 0)",
            name="grants_remaining_sign",
        ),
        Index("ix_grants_wallet_open", "wallet_id", postgresql_where=text("remaining_mc <> 0")),
        Index("ix_grants_expiring", "expires_at", postgresql_where=text("remaining_mc > 0")),
        Index("ix_grants_external_ref", "external_ref", postgresql_where=text("external_ref IS NOT NULL")),
        Index("uq_grants_one_debt_per_wallet", "wallet_id", unique=True, postgresql_where=text("source = 'debt'")),
    )


class Posting(Base):
    __tablename__ = "postings"

    # A natural key: an entry's lines, numbered from 1 in the order they were drafted. No sequence and no
    # separate entry index to maintain on the hottest insert of the ledger.
    entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entries.id"), primary_key=True)
    line: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"))
    amount_mc: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("amount_mc <> 0", name="postings_nonzero"),
        Index("ix_postings_account_entry", "account_id", "entry_id"),
    )


class Hold(Base):
    __tablename__ = "holds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    amount_mc: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    placed_entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entries.id"), unique=True)
    settled_entry_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    captured_mc: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'captured', 'released', 'expired')", name="holds_status"),
        CheckConstraint("amount_mc > 0", name="holds_amount_positive"),
        Index("ix_holds_pending_expiry", "expires_at", postgresql_where=text("status = 'pending'")),
        Index("ix_holds_wallet", "wallet_id"),
    )


class Dispute(Base):
    """A chargeback on a purchase, as the ledger handled it (migration 0007; ``ledger/disputes.py``).

    ``open``: ``held_mc`` of the disputed share (``disputed_mc``) sits on the wallet's held account, placed by
    ``hold_entry_id``; the rest (``disputed_mc - held_mc``) was already spent: the shortfall. ``won``: what was
    held went back (``settled_entry_id``). ``lost``: ``taken_mc`` left the wallet (held first, then available,
    then debt). A dispute closed before it was ever seen open is recorded closed, so a late ``created`` event
    holds nothing.
    """

    __tablename__ = "disputes"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # dp_...
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    payment_intent: Mapped[str] = mapped_column(String(255))
    charge: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger)  # disputed, in the payment's minor currency unit
    currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(8))
    disputed_mc: Mapped[int] = mapped_column(BigInteger)
    held_mc: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    taken_mc: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    hold_entry_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    settled_entry_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('open', 'won', 'lost')", name="disputes_status"),
        CheckConstraint(
            "held_mc >= 0 AND held_mc <= disputed_mc AND taken_mc >= 0 AND taken_mc <= disputed_mc",
            name="disputes_amounts",
        ),
        Index("ix_disputes_payment_intent", "payment_intent"),
        Index("ix_disputes_open_wallet", "wallet_id", postgresql_where=text("status = 'open'")),
    )


class PaymentFailure(Base):
    """A payment that failed (an async method that bounced, a declined payment intent): nothing was credited;
    this row is the record (migration 0007). ``wallet_id`` when the account already has a wallet."""

    __tablename__ = "payment_failures"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the failed object: cs_... or pi_...
    object: Mapped[str] = mapped_column(String(32))  # checkout.session | payment_intent
    account: Mapped[str | None] = mapped_column(String(128))
    wallet_id: Mapped[int | None] = mapped_column(ForeignKey("wallets.id"))
    payment_intent: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    payment_method: Mapped[str | None] = mapped_column(String(64))
    code: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_payment_failures_account", "account", "failed_at"),
        Index("ix_payment_failures_payment_intent", "payment_intent"),
        Index("ix_payment_failures_failed_at", "failed_at"),  # the admin stats' window (migration 0012)
    )


# System accounts, created by the first migration. The order here is the lock order (ids ascending).
SYSTEM_ACCOUNTS: tuple[str, ...] = (
    "stripe_clearing",
    "promotional",
    "usage_revenue",
    "refunds",
    "expiry",
    "adjustments",
)


class ApiKey(Base):
    """An API key: only its sha256 is stored; the key itself is shown once, when created."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set on a rotated key: it keeps working until then (the overlap window); NULL never expires.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StripeEvent(Base):
    """A Stripe event as delivered, keyed by Stripe's event id; ``status`` says how far processing got.

    ``pending`` (stored, not yet handled) → ``processed`` | ``ignored`` (a type we do not handle); or
    ``waiting`` (depends on an event not seen yet, e.g. a refund before its purchase) and ``failed`` (an
    error, kept with ``last_error``), both retried at ``next_attempt_at`` until ``dead`` after too many.
    """

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    api_version: Mapped[str | None] = mapped_column(String(32))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # json, not jsonb: the body as Stripe delivered and signed it (migration 0003 says why)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How it reached the inbox: ``webhook`` (delivered), ``reconciliation`` (read back from Stripe's list).
    source: Mapped[str] = mapped_column(String(16), server_default="webhook")

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'waiting', 'failed', 'processed', 'ignored', 'dead')", name="stripe_events_status"
        ),
        CheckConstraint("source IN ('webhook', 'reconciliation', 'replay')", name="stripe_events_source"),
        Index(
            "ix_stripe_events_open",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'waiting', 'failed')"),
        ),
        Index("ix_stripe_events_dead", "received_at", postgresql_where=text("status = 'dead'")),
        Index("ix_stripe_events_received", "received_at"),  # the admin stats' window (migration 0012)
    )


class UsageInboxRow(Base):
    """A usage report as accepted (priced at intake), until a worker applies or rejects it.

    ``pending`` → ``applied`` (``entry_id``) | ``rejected`` (``reason_code``, ``reason``); a batch that fails
    marks its rows ``failed`` (retried at ``next_attempt_at``) and, after too many attempts, ``dead``.
    """

    __tablename__ = "usage_inbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    account: Mapped[str] = mapped_column(String(128))
    partition: Mapped[int] = mapped_column(SmallInteger)
    amount_mc: Mapped[int] = mapped_column(BigInteger)
    hold_id: Mapped[str | None] = mapped_column(String(40))
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    report: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source: Mapped[str] = mapped_column(String(8), server_default="http")
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    entry_id: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'failed', 'applied', 'rejected', 'dead')", name="usage_inbox_status"),
        CheckConstraint("amount_mc >= 0", name="usage_inbox_amount"),
        Index("ix_usage_inbox_open", "partition", "id", postgresql_where=text("status IN ('pending', 'failed')")),
        Index("ix_usage_inbox_dead", "received_at", postgresql_where=text("status = 'dead'")),
    )


# -- packages, Stripe catalog sync and the sales guard (the sales part of the pricing work) ---------------------
class StripeCatalogRow(Base):
    """The Stripe Product and Price ``billing stripe sync-products`` made for one catalog item."""

    __tablename__ = "stripe_catalog"

    kind: Mapped[str] = mapped_column(Text, primary_key=True)  # 'package' (plans come next)
    ref: Mapped[str] = mapped_column(Text, primary_key=True)  # the package id
    stripe_product_id: Mapped[str] = mapped_column(String(255))
    stripe_price_id: Mapped[str] = mapped_column(String(255))
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (CheckConstraint("kind IN ('package', 'plan')", name="stripe_catalog_kind"),)


class BillingConfigRow(Base):
    """One database setting (``billing_core/db/config.py`` knows the keys, their types and defaults)."""

    __tablename__ = "billing_config"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str | None] = mapped_column(Text)


class AdminAlert(Base):
    """An alert for the operators, once per occurrence (``dedupe_key``); delivered by the notifications outbox."""

    __tablename__ = "admin_alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str] = mapped_column(Text, unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_admin_alerts_kind_id", "kind", "id"),
        Index("ix_admin_alerts_undelivered", "id", postgresql_where=text("delivered_at IS NULL")),
    )


# -- limits: durable copies of the Redis token counters (pricing/limits.py) ------------------------------
class UsageRecord(Base):
    """A token counter of one account and window (``period``: hour, day or month, starting at
    ``period_start``), copied from Redis by the hourly flush; never lowered."""

    __tablename__ = "usage_records"

    account: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("period IN ('hour', 'day', 'month')", name="usage_records_period"),
        CheckConstraint("quantity >= 0", name="usage_records_quantity"),
    )


# -- the pricing catalog's versions (migration 0004) ----------------------------------------------------------
class PriceVersion(Base):
    """One version of the price catalog, in effect from ``effective_at`` until the next one's (versions.py)."""

    __tablename__ = "price_versions"

    version: Mapped[str] = mapped_column(Text, primary_key=True)
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    catalog: Mapped[dict[str, Any]] = mapped_column(JSONB)
    sha256: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_price_versions_effective_at", "effective_at"),)


# -- subscriptions and invoices, mirrored from Stripe (migration 0008; billing_core/stripe/subscriptions.py) -----
class SubscriptionRow(Base):
    """A plan subscription as Stripe last showed it, tied to its wallet; its allowance terms come from the
    plan's Stripe Price (metadata written by ``billing stripe sync-products``)."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # sub_...
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    plan: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(Text)  # month | year
    stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(Text)  # Stripe's: trialing, active, past_due, canceled, ...
    current_period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trial_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    latest_invoice: Mapped[str | None] = mapped_column(String(255))
    # Per month of the plan, in millicredits; a yearly plan granted monthly has its next grant due then.
    allowance_mc: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    rollover_cap_mc: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    next_allowance_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("interval IN ('month', 'year')", name="subscriptions_interval"),
        Index("ix_subscriptions_wallet", "wallet_id"),
        Index(
            "ix_subscriptions_allowance_due",
            "next_allowance_at",
            postgresql_where=text("next_allowance_at IS NOT NULL"),
        ),
    )


class InvoiceRow(Base):
    """A Stripe invoice of one of our customers, as Stripe last showed it (``GET /v1/accounts/<a>/invoices``)."""

    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # in_...
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    subscription_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(Text)  # draft, open, paid, uncollectible, void
    billing_reason: Mapped[str | None] = mapped_column(Text)
    number: Mapped[str | None] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(Text)
    amount_due: Mapped[int] = mapped_column(BigInteger)
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    # The service period (its lines'), not Stripe's ``period_start/end`` (the previous period for a renewal).
    period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempt_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_payment_attempt: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_payment_error: Mapped[str | None] = mapped_column(Text)  # the decline code of the last failed attempt
    stripe_created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_invoices_wallet_created", "wallet_id", "stripe_created", "id"),)


# -- auto-recharge (migration 0009; billing_core/stripe/auto_recharge.py) ---------------------------------------
class AutoRecharge(Base):
    """A wallet's auto-recharge settings and where it stands: ``armed`` (waiting for the available balance to
    fall below ``threshold_mc``), ``pending`` (one attempt in flight), ``charged`` (recharged; re-armed once the
    balance is back at or above the threshold) or ``failed`` (stopped until the settings are saved again)."""

    __tablename__ = "auto_recharge"

    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    threshold_mc: Mapped[int] = mapped_column(BigInteger)
    package: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), server_default="armed")
    partition: Mapped[int] = mapped_column(SmallInteger)
    last_attempt_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("state IN ('armed', 'pending', 'charged', 'failed')", name="auto_recharge_state"),
        CheckConstraint("threshold_mc >= 0", name="auto_recharge_threshold"),
        Index("ix_auto_recharge_armed", "partition", postgresql_where=text("enabled AND state = 'armed'")),
        Index("ix_auto_recharge_charged", "wallet_id", postgresql_where=text("state = 'charged'")),
    )


class AutoRechargeAttempt(Base):
    """One off-session charge of a package: ``pending`` until its PaymentIntent answers, then ``succeeded``,
    ``failed`` or ``requires_action`` (the bank wants the customer: 3-D Secure)."""

    __tablename__ = "auto_recharge_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    package: Mapped[str] = mapped_column(Text)
    credits_mc: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(Text)
    threshold_mc: Mapped[int] = mapped_column(BigInteger)
    available_mc: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    failure_code: Mapped[str | None] = mapped_column(Text)
    failure_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'requires_action')", name="auto_recharge_attempts_status"
        ),
        CheckConstraint("credits_mc >= 0 AND amount >= 0", name="auto_recharge_attempts_amounts"),
        Index("ix_auto_recharge_attempts_wallet", "wallet_id", "id"),
        Index(
            "uq_auto_recharge_attempts_one_pending",
            "wallet_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_auto_recharge_attempts_pending", "updated_at", postgresql_where=text("status = 'pending'")),
    )


# -- reconciliation against Stripe (migration 0011) -----------------------------------------------------------


class ReconciliationRun(Base):
    """One reconciliation pass: ``kind`` ``events`` (Stripe's event list against the inbox) or ``objects``
    (Stripe's paid objects against the ledger); ``checkpoint`` is how far it got, for a resumed run."""

    __tablename__ = "reconciliation_runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    counts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("kind IN ('events', 'objects')", name="reconciliation_runs_kind"),
        CheckConstraint("status IN ('running', 'done', 'failed')", name="reconciliation_runs_status"),
        Index("ix_reconciliation_runs_kind", "kind", "id"),
    )


class ReconciliationCheckpoint(Base):
    """Per kind, the newest Stripe event time (and id) a finished pass reached."""

    __tablename__ = "reconciliation_checkpoints"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_event_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Discrepancy(Base):
    """Something Stripe and the ledger disagree on that a pass must not heal by itself: found once
    (``dedupe_key``), open until an operator resolves it with a note."""

    __tablename__ = "discrepancies"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    stripe_id: Mapped[str | None] = mapped_column(String(255))
    account: Mapped[str | None] = mapped_column(Text)
    expected: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    found: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    dedupe_key: Mapped[str] = mapped_column(Text, unique=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("reconciliation_runs.id"))
    found_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_discrepancies_open", "found_at", postgresql_where=text("resolved_at IS NULL")),)


# -- notifications: the outbox (billing_core/notify/outbox.py) -----------------------------------------------
class Notification(Base):
    """One message on one channel (``email``, ``webhook``), once per ``(dedupe_key, channel)``."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(16))
    account: Mapped[str | None] = mapped_column(String(128))
    audience: Mapped[str] = mapped_column(String(16), server_default="account")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("channel IN ('email', 'webhook')", name="notifications_channel"),
        CheckConstraint("audience IN ('account', 'admins')", name="notifications_audience"),
        CheckConstraint("status IN ('pending', 'sent', 'dead', 'skipped')", name="notifications_status"),
        UniqueConstraint("dedupe_key", "channel", name="uq_notifications_dedupe_channel"),
        Index("ix_notifications_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("ix_notifications_status_id", "status", "id"),
    )


# -- the admin API's audit log (migration 0012; billing_core/admin/audit.py) ---------------------------------
class AdminAuditRow(Base):
    """One mutating admin action: who (``actor``), what (``action``), on what (``target``), the state before and
    after, and the request's idempotency key; written in the action's own transaction. Append-only."""

    __tablename__ = "admin_audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_admin_audit_actor", "actor", "id"),
        Index("ix_admin_audit_action", "action", "id"),
        Index("ix_admin_audit_target", "target", "id"),
    )
