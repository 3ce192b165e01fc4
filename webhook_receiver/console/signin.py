"""Signing in with an admin API key, the session that remembers it, and the check every console request makes."""

from __future__ import annotations

from flask import current_app, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response

from billing_core.accounts.api_keys import ApiKeyView, find_api_key, live_api_key
from billing_core.types import MAX_ACTOR_LEN
from webhook_receiver.console.blueprint import bp
from webhook_receiver.runtime import runtime

_OPEN_ENDPOINTS = frozenset({"console.sign_in", "console.static"})
SESSION_KEY = "key_id"


def guard(csrf: CSRFProtect) -> Response | tuple[str, int] | None:
    """Before every console request: the console is configured, a form carries its CSRF token, and the
    session's key is still a live admin key (else back to the sign-in page)."""
    if request.endpoint == "console.static":
        return None
    if not current_app.config.get("BILLING_CONSOLE_ENABLED"):
        return render_template("console/refused.html", reason="set BILLING_CONSOLE_SECRET to open the console"), 503
    csrf.protect()
    if request.endpoint in _OPEN_ENDPOINTS:
        return None
    key = _session_key()
    if key is None:
        session.clear()
        return redirect(url_for("console.sign_in"))
    g.operator = key
    return None


def _session_key() -> ApiKeyView | None:
    key_id = session.get(SESSION_KEY)
    if not isinstance(key_id, int):
        return None
    # Read on every request, not from the API's key cache: a revoked key must end its sessions at once.
    with runtime().read_session_factory() as db:
        key = live_api_key(db, key_id)
    return key if key is not None and key.allows("admin") else None


def operator() -> ApiKeyView:
    """The admin key this request was signed in with."""
    key: ApiKeyView = g.operator
    return key


def actor() -> str:
    """Who did it, as the audit log and the ledger record it (the admin API's form, marked as the console's)."""
    key = operator()
    return f"api_key:{key.id} {key.name} (console)"[:MAX_ACTOR_LEN]


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response | str | tuple[str, int]:
    """The console's sign-in form (GET) and sign-in with an admin API key (POST; a session cookie)."""
    if request.method == "GET":
        return render_template("console/sign_in.html", error=None)
    presented = request.form.get("api_key", "").strip()
    with runtime().read_session_factory() as db:
        key = find_api_key(db, presented) if presented else None
    if key is None or not key.allows("admin"):
        # One answer for unknown, revoked and under-scoped keys: the form does not help anyone guess.
        return render_template("console/sign_in.html", error="That is not a live admin API key."), 401
    # A fresh session (and CSRF token) at sign-in: nothing set before it carries over.
    session.clear()
    session.permanent = True
    session[SESSION_KEY] = key.id
    return redirect(url_for("console.health"))


@bp.post("/sign-out")
def sign_out() -> Response:
    """Sign out of the console (clears the session cookie)."""
    session.clear()
    return redirect(url_for("console.sign_in"))
