"""The console's actions: adjust a balance, replay a dead letter, resolve a discrepancy, change a setting.
Each is the ``billing_core`` call the admin API makes, with its audit row under the operator's key; the page
answers with a redirect (so a reload never posts twice) and a one-line flash."""

from __future__ import annotations

from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response

from billing_core.admin.adjustments import adjust as adjust_balance
from billing_core.admin.audit import record_audit
from billing_core.db.config import parse_value, set_setting, setting_source
from billing_core.db.unit_of_work import utcnow
from billing_core.errors import BillingError
from billing_core.intake.dead_letters import replay
from billing_core.reconcile.discrepancies import resolve
from billing_core.units import format_credits, parse_credits
from webhook_receiver.console.blueprint import bp
from webhook_receiver.console.signin import actor
from webhook_receiver.runtime import runtime

REPLAY_ACTION = "dead_letter.replay"
RESOLVE_ACTION = "discrepancy.resolve"
SETTING_ACTION = "setting.update"


@bp.post("/accounts/<account>/adjust")
def adjust(account: str) -> Response:
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
    letter_id = request.form.get("letter_id", "")
    rt = runtime()
    status = replay(rt.session_factory, rt.gateway, letter_id)
    if status is None:
        flash(f"{letter_id} is not a dead letter (replayed already?).", "error")
    else:
        # The replay commits in its own transactions (a handler may call Stripe first); the audit row follows.
        with rt.session_factory.begin() as session:
            record_audit(
                session,
                actor=actor(),
                action=REPLAY_ACTION,
                target=f"dead_letter:{letter_id}",
                before={"status": "dead"},
                after={"status": status},
            )
        flash(f"Replayed {letter_id}: {status}.", "ok")
    return redirect(url_for("console.dead_letters"))


@bp.post("/discrepancies/<int:discrepancy_id>/resolve")
def resolve_discrepancy(discrepancy_id: int) -> Response:
    rt = runtime()
    who = actor()
    try:
        found = resolve(rt.session_factory, discrepancy_id, note=request.form.get("note", ""), by=who)
    except BillingError as exc:
        flash(f"Not resolved: {exc.message}", "error")
    else:
        with rt.session_factory.begin() as session:
            record_audit(
                session,
                actor=who,
                action=RESOLVE_ACTION,
                target=f"discrepancy:{discrepancy_id}",
                before={"resolved": False},
                after={"resolved": True, "kind": found.kind, "account": found.account},
                note=found.note,
            )
        flash(f"Discrepancy {discrepancy_id} resolved.", "ok")
    return redirect(url_for("console.discrepancies"))


@bp.post("/settings/<key>")
def set_setting_value(key: str) -> Response:
    rt = runtime()
    who = actor()
    try:
        # The change and its audit row in one transaction: neither without the other.
        with rt.session_factory.begin() as session:
            before, _, _ = setting_source(session, key)
            stored = set_setting(session, key, parse_value(request.form.get("value", "")), now=utcnow(), actor=who)
            record_audit(
                session,
                actor=who,
                action=SETTING_ACTION,
                target=f"setting:{key}",
                before={key: before},
                after={key: stored},
            )
    except BillingError as exc:
        flash(f"Not saved: {exc.message}", "error")
    else:
        flash(f"{key} is now {stored!r}.", "ok")
    return redirect(url_for("console.settings"))
