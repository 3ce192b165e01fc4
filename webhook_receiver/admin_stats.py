"""``GET /v1/admin/stats/...``: the operators' figures (seed 000's monitoring queries, seed 001's capacity).

Thin: each view reads one ``billing_core.admin.stats`` function on the read pool and renders it.
"""

from __future__ import annotations

from flask import Blueprint

from billing_core.admin import stats
from webhook_receiver.admin_schemas import (
    CirculationAnswer,
    DaySalesAnswer,
    DaysQuery,
    DayUsageAnswer,
    FailedPaymentAnswer,
    FailedPaymentsAnswer,
    LimitQuery,
    LowBalanceAnswer,
    LowBalancesAnswer,
    SalesAnswer,
    SpenderAnswer,
    TopSpendersAnswer,
    TopSpendersQuery,
    UsageStatsAnswer,
    WebhookDaysQuery,
    WebhooksAnswer,
)
from webhook_receiver.auth import require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_stats", __name__)


@bp.get("/v1/admin/stats/circulation")
@require("admin")
@endpoint(answers={200: CirculationAnswer}, tags=("admin",))
def circulation():
    """Credits customers hold, in upstream tokens, against the sales guard's capacity."""
    with runtime().read_session_factory() as session:
        return render(CirculationAnswer.of(stats.circulation(session)))


@bp.get("/v1/admin/stats/sales")
@require("admin")
@endpoint(query=DaysQuery, answers={200: SalesAnswer}, tags=("admin",))
def sales(query: DaysQuery):
    """Credits sold per UTC day and currency: purchases, credits, amount paid."""
    with runtime().read_session_factory() as session:
        rows = stats.credits_sold_by_day(session, query.days)
    return render(SalesAnswer(data=[DaySalesAnswer.of(r) for r in rows]))


@bp.get("/v1/admin/stats/usage")
@require("admin")
@endpoint(query=DaysQuery, answers={200: UsageStatsAnswer}, tags=("admin",))
def usage(query: DaysQuery):
    """Credits spent per UTC day, provider and model."""
    with runtime().read_session_factory() as session:
        rows = stats.usage_by_day(session, query.days)
    return render(UsageStatsAnswer(data=[DayUsageAnswer.of(r) for r in rows]))


@bp.get("/v1/admin/stats/top-spenders")
@require("admin")
@endpoint(query=TopSpendersQuery, answers={200: TopSpendersAnswer}, tags=("admin",))
def top_spenders(query: TopSpendersQuery):
    """The accounts that spent most on usage in the window."""
    with runtime().read_session_factory() as session:
        rows = stats.top_spenders(session, query.days, query.limit)
    return render(TopSpendersAnswer(data=[SpenderAnswer.of(r) for r in rows]))


@bp.get("/v1/admin/stats/low-balances")
@require("admin")
@endpoint(query=LimitQuery, answers={200: LowBalancesAnswer}, tags=("admin",))
def low_balances(query: LimitQuery):
    """Accounts whose available credits are below their low-balance threshold, lowest first."""
    with runtime().read_session_factory() as session:
        rows = stats.low_balances(session, query.limit)
    return render(LowBalancesAnswer(data=[LowBalanceAnswer.of(r) for r in rows]))


@bp.get("/v1/admin/stats/failed-payments")
@require("admin")
@endpoint(query=DaysQuery, answers={200: FailedPaymentsAnswer}, tags=("admin",))
def failed_payments(query: DaysQuery):
    """Payments that failed in the window (nothing was credited for them), newest first."""
    with runtime().read_session_factory() as session:
        rows = stats.failed_payments(session, query.days)
    return render(FailedPaymentsAnswer(data=[FailedPaymentAnswer.of(r) for r in rows]))


@bp.get("/v1/admin/stats/webhooks")
@require("admin")
@endpoint(query=WebhookDaysQuery, answers={200: WebhooksAnswer}, tags=("admin",))
def webhooks(query: WebhookDaysQuery):
    """Stripe events received in the window by status, and the share handled successfully."""
    with runtime().read_session_factory() as session:
        return render(WebhooksAnswer.of(stats.webhook_success_rate(session, query.days)))
