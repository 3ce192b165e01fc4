"""The HTTP receiver: Stripe webhooks, usage intake and the thin read/hold endpoints (a Flask app factory)."""

from webhook_receiver.app import create_app

__all__ = ["create_app"]
