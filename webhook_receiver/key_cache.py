"""The receiver's short cache of API key lookups, one per app (``Runtime.key_cache``)."""

from __future__ import annotations

from billing_core.accounts.api_keys import ApiKeyView


class KeyCache:
    """Keys are looked up on every request; a short cache, one per app, keeps that off the database. A
    revoked key stops working within ``seconds``."""

    MAX_ENTRIES = 10_000

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._entries: dict[str, tuple[float, ApiKeyView | None]] = {}

    def get(self, digest: str, now: float) -> tuple[bool, ApiKeyView | None]:
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return True, cached[1]
        return False, None

    def put(self, digest: str, view: ApiKeyView | None, now: float) -> None:
        if len(self._entries) > self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (now + self.seconds, view)

    def forget(self, digest: str) -> None:
        self._entries.pop(digest, None)
