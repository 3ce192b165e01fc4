"""Pages for humans: a Billing Portal session's ``url`` and an invoice's ``hosted_invoice_url``."""

from __future__ import annotations

import html
from typing import Any

from flask import Blueprint, Response

from stripe_emulator.api.plumbing import control, state
from stripe_emulator.state.invoices import money

billing_pages = Blueprint("billing_pages", __name__)


def _invoice_row(invoice: dict[str, Any]) -> str:
    link = html.escape(invoice["hosted_invoice_url"] or "")
    return (
        f'<tr><td><a href="{link}">{html.escape(invoice["number"] or invoice["id"])}</a></td>'
        f"<td>{html.escape(money(invoice['total'], invoice['currency']))}</td>"
        f"<td>{html.escape(invoice['status'])}</td><td>{html.escape(invoice['billing_reason'] or '')}</td></tr>"
    )


@control(billing_pages, "/_emulator/billing_portal/<session_id>", "GET")
def portal(session_id: str) -> Response:
    current = state()
    session = current.get("billing_portal.session", session_id, param="session")
    customer = current.objects["customer"].get(session["customer"]) or {}
    methods = [m for m in current.objects["payment_method"].values() if m["customer"] == session["customer"]]
    default = (customer.get("invoice_settings") or {}).get("default_payment_method")
    cards = "".join(
        f"<li>{html.escape(m['card']['brand'].title())} ending {html.escape(m['card']['last4'])}, expires "
        f"{m['card']['exp_month']:02d}/{m['card']['exp_year']}{' (default)' if m['id'] == default else ''}</li>"
        for m in methods
    )
    subs = "".join(
        f"<li>{html.escape(s['items']['data'][0]['price']['id'])}: <b>{html.escape(s['status'])}</b>"
        f"{' (cancels at period end)' if s['cancel_at_period_end'] else ''}</li>"
        for s in current.objects["subscription"].values()
        if s["customer"] == session["customer"]
    )
    invoices = sorted(
        (i for i in current.objects["invoice"].values() if i["customer"] == session["customer"]),
        key=lambda i: i["created"],
        reverse=True,
    )
    rows = "".join(_invoice_row(i) for i in invoices)
    back = html.escape(session["return_url"] or "/")
    page = (
        f"<!doctype html><title>Billing portal</title><h1>Stripe emulator billing portal</h1>"
        f"<p>Customer <code>{html.escape(session['customer'])}</code> {html.escape(customer.get('email') or '')}</p>"
        f"<h2>Payment method</h2><ul>{cards or '<li>None saved.</li>'}</ul>"
        f"<h2>Subscriptions</h2><ul>{subs or '<li>None.</li>'}</ul>"
        f"<h2>Invoices</h2><table><tr><th>Number</th><th>Total</th><th>Status</th><th>Reason</th></tr>{rows}</table>"
        f'<p><a href="{back}">Return</a></p>'
    )
    return Response(page, mimetype="text/html")


@control(billing_pages, "/_emulator/invoices/<invoice_id>", "GET")
def hosted_invoice(invoice_id: str) -> Response:
    invoice = state().get("invoice", invoice_id, param="invoice")
    lines = "".join(
        f"<tr><td>{html.escape(line['description'] or '')}</td>"
        f"<td>{html.escape(money(line['amount'], line['currency']))}</td></tr>"
        for line in invoice["lines"]["data"]
    )
    page = (
        f"<!doctype html><title>Invoice {html.escape(invoice['number'] or invoice['id'])}</title>"
        f"<h1>Invoice {html.escape(invoice['number'] or invoice['id'])}</h1>"
        f"<p>Status: <b>{html.escape(invoice['status'])}</b></p><table>{lines}</table>"
        f"<p>Total: <b>{html.escape(money(invoice['total'], invoice['currency']))}</b></p>"
    )
    return Response(page, mimetype="text/html")
