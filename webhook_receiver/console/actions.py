"""The console's actions: adjust a balance, replay a dead letter, resolve a discrepancy, change a setting.
Each is the audited ``billing_core.admin`` function the admin API calls, under the operator's key; the page
answers with a redirect (so a reload never posts twice) and a one-line flash."""

from __future__ import annotations

from flask import current_app, flash, redirect, request, url_for
from werkzeug.wrappers import Response

from billing_core.admin.adjustments import adjust as adjust_balance
from billing_core.admin.operations import replay_dead_letter as replay_audited
from billing_core.admin.operations import resolve_discrepancy as resolve_audited
from billing_core.admin.settings import update_setting
from billing_core.db.config import parse_value
from billing_core.errors import BillingError
from billing_core.units import format_credits, parse_credits
from webhook_receiver.console.blueprint import bp
from webhook_receiver.console.signin import actor
from webhook_receiver.runtime import runtime


@bp.post("/accounts/<account>/adjust")
def adjust(account: str) -> Response:
    """Console form: adjust an account's balance (audited)."""
    form = request.form
    try:
        result = adjust_balance(
            runtime().session_factory,
            account=account,
            credits_mc=parse_credits(form.get("credits", "")),
            reason=form.get("reason", ""),
            actor=actor(),
            idempotency_key=form.get("idempotency_key", ""),
        )
    except BillingError as exc:
        flash(f"Not adjusted: {exc.message}", "error")
    else:
        done = "Already adjusted" if result.replayed else "Adjusted"
        flash(f"{done}: {format_credits(result.new_balance_mc)} credits available now.", "ok")
    return redirect(url_for("console.account", account=account))


@bp.post("/dead-letters/replay")
def replay_dead_letter() -> Response:
    """Console form: replay a dead letter (audited)."""
    letter_id = request.form.get("letter_id", "")
    rt = runtime()
    done = replay_audited(rt.session_factory, rt.gateway, letter_id, actor=actor())
    if done is None:
        flash(f"{letter_id} is not a dead letter (replayed already?).", "error")
    else:
        flash(f"Replayed {done.id} ({done.kind}): {done.status}.", "ok")
    return redirect(url_for("console.dead_letters"))


@bp.post("/discrepancies/<int:discrepancy_id>/resolve")
def resolve_discrepancy(discrepancy_id: int) -> Response:
    """Console form: resolve a discrepancy with a note (audited)."""
    try:
        resolve_audited(runtime().session_factory, discrepancy_id, note=request.form.get("note", ""), actor=actor())
    except BillingError as exc:
        flash(f"Not resolved: {exc.message}", "error")
    else:
        flash(f"Discrepancy {discrepancy_id} resolved.", "ok")
    return redirect(url_for("console.discrepancies"))


@bp.post("/settings/<key>")
def set_setting_value(key: str) -> Response:
    """Console form: change a database setting (audited)."""
    try:
        stored = update_setting(
            runtime().session_factory, key, parse_value(request.form.get("value", "")), actor=actor()
        )
    except BillingError as exc:
        flash(f"Not saved: {exc.message}", "error")
    else:
        guard = current_app.extensions.get("billing_sales_guard")
        if guard is not None:
            guard.invalidate()  # as the admin API: this process sees its own change at once
        flash(f"{key} is now {stored.value!r}.", "ok")
    return redirect(url_for("console.settings"))
