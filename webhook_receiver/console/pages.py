"""The console's read-only pages: health, an account, dead letters, discrepancies, settings. Thin: each reads
through one ``billing_core`` function and renders a template."""

from __future__ import annotations

import uuid

from flask import abort, render_template, request

from billing_core.admin.settings import list_settings
from billing_core.db.unit_of_work import utcnow
from billing_core.intake.dead_letters import list_dead
from billing_core.intake.health import pipeline_health
from billing_core.ledger.balances import read_balance
from billing_core.ledger.grant_views import open_grants
from billing_core.ledger.history import InvalidCursor, list_transactions
from billing_core.reconcile.discrepancies import listed
from billing_core.stripe.subscription_views import current_subscription
from billing_core.units import format_credits
from webhook_receiver.console.blueprint import bp
from webhook_receiver.runtime import runtime

HISTORY_PAGE = 25


@bp.app_template_filter("credits")
def _credits(millicredits: int | None) -> str:
    return "" if millicredits is None else format_credits(millicredits)


@bp.app_template_filter("duration")
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "none waiting"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@bp.get("/")
def health() -> str:
    """Console: the pipeline's health (inbox lag, dead letters, outbox, last reconciliation)."""
    now = utcnow()
    with runtime().read_session_factory() as session:
        state = pipeline_health(session, now)
    return render_template("console/health.html", health=state, now=now)


@bp.get("/accounts/<account>")
def account(account: str) -> str:
    """Console: an account's balance, grants, subscription, history and the adjust form."""
    rt = runtime()
    now = utcnow()
    with rt.session_factory() as session:
        balance = read_balance(session, account)
        if balance is None:
            abort(404)
        grants = open_grants(session, account, now)
        subscription = current_subscription(session, account)
        try:
            history = list_transactions(session, account, cursor=request.args.get("cursor"), limit=HISTORY_PAGE)
        except InvalidCursor:
            abort(400)
    return render_template(
        "console/account.html",
        balance=balance,
        grants=grants,
        subscription=subscription,
        history=history,
        now=now,
        # One key per rendered form: a double submit (or a reload) adjusts once.
        adjust_key=f"console:{uuid.uuid4().hex}",
    )


@bp.get("/dead-letters")
def dead_letters() -> str:
    """Console: the dead letters, each with a replay button."""
    return render_template("console/dead_letters.html", letters=list_dead(runtime().session_factory, limit=200))


@bp.get("/discrepancies")
def discrepancies() -> str:
    """Console: what reconciliation found and did not heal, with a resolve form."""
    show_all = request.args.get("status") == "all"
    found = listed(runtime().session_factory, include_resolved=show_all, limit=200)
    return render_template("console/discrepancies.html", found=found, show_all=show_all)


@bp.get("/settings")
def settings() -> str:
    """Console: the database settings and a form to change each."""
    with runtime().read_session_factory() as session:
        return render_template("console/settings.html", settings=list_settings(session))
