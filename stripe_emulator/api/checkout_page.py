"""``/_emulator/checkout/<id>``: the page a Checkout Session's ``url`` opens, for humans following the README."""

from __future__ import annotations

import html
from typing import Any

from flask import Blueprint, Response

from stripe_emulator.api.plumbing import control, state

checkout_page = Blueprint("checkout_page", __name__)


@control(checkout_page, "/_emulator/checkout/<session_id>", "GET")
def show(session_id: str) -> Response:
    session = state().get("checkout.session", session_id, param="session")
    return Response(_checkout_html(session, state().line_items.get(session_id, [])), mimetype="text/html")


def _checkout_html(session: dict[str, Any], items: list[dict[str, Any]]) -> str:
    """A bare page for humans following the README: the basket, then Pay and Decline buttons."""
    sid = html.escape(session["id"])
    rows = "".join(
        f"<li>{html.escape(i['description'] or '')} &times; {i['quantity']}: "
        f"{i['amount_total'] / 100:.2f} {i['currency'].upper()}</li>"
        for i in items
    )
    total = f"{session['amount_total'] / 100:.2f} {str(session['currency']).upper()}"
    if session["status"] == "complete" and session["payment_status"] == "unpaid":
        # Paid by a delayed method (PIX, a bank debit): the bank's side, settling or bouncing it.
        actions = "<p>Payment processing.</p>" + "".join(
            f'<form method="post" action="/_emulator/checkout/sessions/{sid}/{action}"><button>{label}</button></form>'
            for action, label in (("async_succeed", "Payment arrives"), ("async_fail", "Payment fails"))
        )
    elif session["status"] != "open":
        actions = f"<p>This session is <b>{html.escape(session['status'])}</b>.</p>"
    else:
        pix = "pix" in session["payment_method_types"]
        delayed = "Pay with PIX (settles later)" if pix else "Pay (bank debit, settles later)"
        actions = "".join(
            f'<form method="post" action="/_emulator/checkout/sessions/{sid}/{action}">'
            f'<input type="hidden" name="redirect" value="1">{extra}<button>{label}</button></form>'
            for action, label, extra in (
                ("pay", "Pay", ""),
                ("pay", delayed, '<input type="hidden" name="async" value="true">'),
                ("fail", "Decline card", ""),
            )
        )
        if session.get("cancel_url"):
            actions += f'<p><a href="{html.escape(session["cancel_url"])}">Cancel</a></p>'
    return (
        f"<!doctype html><title>Checkout {sid}</title><h1>Stripe emulator checkout</h1>"
        f"<p>Session <code>{sid}</code></p><ul>{rows}</ul><p>Total: <b>{total}</b></p>{actions}"
    )
