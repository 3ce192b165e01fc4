"""The signature of outbound notification webhooks: ``Billing-Signature: t=<unix>,v1=<hex>``.

``v1`` is the hex HMAC-SHA256, keyed with ``NOTIFY_WEBHOOK_SECRET``, of ``"<t>.<body>"`` (the raw body bytes).
A receiver recomputes it over the body it received and refuses a timestamp older than its tolerance
(a replayed request); ``verify`` is that check, and docs/notifications.md shows it standalone.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Billing-Signature"
DEFAULT_TOLERANCE = 300


class SignatureError(ValueError):
    """The header is missing, malformed, stale, or no ``v1`` matches."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The header's value for ``body`` sent at ``timestamp`` (default: now)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify(
    header: str | None, body: bytes, secret: str, tolerance: int = DEFAULT_TOLERANCE, *, now: float | None = None
) -> int:
    """Check ``header`` against ``body``: the signed timestamp, or ``SignatureError``."""
    if not header:
        raise SignatureError(f"no {HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("malformed timestamp") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("the header names no timestamp or no v1 signature")
    current = time.time() if now is None else now
    if tolerance and abs(current - timestamp) > tolerance:
        raise SignatureError("timestamp outside the tolerance")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("no signature matches")
    return timestamp
