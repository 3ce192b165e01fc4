"""The HTTP receiver: Stripe webhooks, usage intake and the thin read/hold endpoints (a Flask app factory).

``create_app`` is imported on first use, so that gunicorn's master can load ``webhook_receiver.gunicorn_conf``
without importing the app (and ssl, sockets and threads before the gevent workers patch them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webhook_receiver.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from webhook_receiver.app import create_app

        return create_app
    raise AttributeError(f"module 'webhook_receiver' has no attribute {name!r}")
