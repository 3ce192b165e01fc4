"""The operators' console at ``/admin``: server-rendered pages (Jinja) over the same ``billing_core`` functions
the admin API calls, so every action an operator takes here is audited the same way.

Sign-in takes an admin-scope API key and keeps only the key's id in Flask's signed session cookie (Secure,
HttpOnly, SameSite=Strict, scoped to ``/admin``, with a lifetime); every request reloads the key by id, so a
revoked key ends its sessions at once. Every form carries a CSRF token (Flask-WTF), checked for this
blueprint only: the JSON API authenticates each request with a key and has no cookie to ride on.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from flask import Flask, Response, current_app, render_template
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.wrappers import Response as BaseResponse

from billing_core.settings import Settings
from webhook_receiver.console import actions, pages, reports, signin  # noqa: F401  (their routes register on ``bp``)
from webhook_receiver.console.blueprint import bp

__all__ = ["bp", "install"]

_csrf = CSRFProtect()

# The console's own pages only: scripts, styles and the chart library come from this package, never a CDN,
# and no page may be framed (its forms move money).
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def install(app: Flask, settings: Settings) -> None:
    """Register the console on ``app`` at ``/admin`` with its cookie and CSRF settings."""
    secret = settings.console_secret.get_secret_value() if settings.console_secret else None
    # Without a configured secret the console is closed (503): a per-process random one would sign cookies
    # that the deployment's other web processes reject. The random key only keeps Flask from refusing to run.
    app.config["BILLING_CONSOLE_ENABLED"] = secret is not None
    app.secret_key = secret or secrets.token_urlsafe(32)
    app.config.update(
        SESSION_COOKIE_NAME="billing_console",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_SECURE=settings.console_cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.console_session_minutes),
        # Checked by the console's before_request only, not on every POST of the app (the JSON API has none).
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_SSL_STRICT=settings.console_cookie_secure,
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as the session that holds it
    )
    _csrf.init_app(app)
    app.register_blueprint(bp)


@bp.before_request
def _guard() -> BaseResponse | tuple[str, int] | None:
    return signin.guard(_csrf)


@bp.after_request
def _headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.context_processor
def _endpoints() -> dict[str, Any]:
    # The navigation links only the pages this build registered.
    return {"console_endpoints": frozenset(current_app.view_functions)}


@bp.errorhandler(CSRFError)
def _csrf_refused(exc: CSRFError) -> tuple[str, int]:
    return render_template("console/refused.html", reason=exc.description), 400
