"""The console's reports over ``billing_core.admin``: revenue and usage by day (charts), account search, low
balances, the audit log. The queries are the admin API's; here they are only shaped for a page."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from flask import render_template, request

from billing_core.admin.accounts import search_accounts
from billing_core.admin.audit import list_audit
from billing_core.admin.stats import DaySales, DayUsage, circulation, credits_sold_by_day, low_balances, usage_by_day
from billing_core.db.unit_of_work import utcnow
from billing_core.units import MC_PER_CREDIT
from webhook_receiver.console.blueprint import bp
from webhook_receiver.runtime import runtime

CHART_DAYS = 30
AUDIT_PAGE = 50


def chart_data(sold: list[DaySales], used: list[DayUsage], today: date, days: int = CHART_DAYS) -> dict[str, Any]:
    """Every day of the window (a day without sales is a zero, not a gap), credits as numbers for the chart
    library; usage stacked by provider (fees and agents' flat prices under "other")."""
    labels = [(today - timedelta(days=days - 1 - i)) for i in range(days)]
    index = {day: i for i, day in enumerate(labels)}
    revenue = [0] * days
    for row in sold:
        if row.day in index:
            revenue[index[row.day]] += row.credits_mc
    by_provider: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    for line in used:
        if line.day in index:
            by_provider[line.provider or "other"][index[line.day]] += line.credits_mc
    return {
        "labels": [day.isoformat() for day in labels],
        # Chart.js plots numbers; credits to 3 decimals are exact enough to draw (the tables show the strings).
        "revenue": [mc / MC_PER_CREDIT for mc in revenue],
        "usage": [
            {"label": provider, "data": [mc / MC_PER_CREDIT for mc in series]}
            for provider, series in sorted(by_provider.items())
        ],
    }


@bp.get("/charts")
def charts() -> str:
    """Console: credits sold and credits used per day (charts)."""
    now = utcnow()
    with runtime().read_session_factory() as session:
        sold = credits_sold_by_day(session, days=CHART_DAYS, now=now)
        used = usage_by_day(session, days=CHART_DAYS, now=now)
        money = circulation(session, now=now)
    return render_template("console/charts.html", data=chart_data(sold, used, now.date()), sold=sold, circulation=money)


@bp.get("/accounts")
def accounts() -> str:
    """Console: search accounts by account, email or Stripe customer."""
    q = request.args.get("q", "").strip()
    found = []
    if q:
        with runtime().read_session_factory() as session:
            found = search_accounts(session, q, limit=50)
    return render_template("console/accounts.html", q=q, found=found)


@bp.get("/low-balances")
def low_balances_page() -> str:
    """Console: accounts below their low-balance threshold."""
    with runtime().read_session_factory() as session:
        rows = low_balances(session, limit=200)
    return render_template("console/low_balances.html", rows=rows)


@bp.get("/audit")
def audit() -> str:
    """Console: the audit log, newest first."""
    before = request.args.get("before", type=int)
    action = request.args.get("action") or None
    target = request.args.get("target") or None
    with runtime().read_session_factory() as session:
        rows = list_audit(session, limit=AUDIT_PAGE, before_id=before, action=action, target=target)
    return render_template("console/audit.html", rows=rows, action=action, target=target, more=len(rows) == AUDIT_PAGE)
