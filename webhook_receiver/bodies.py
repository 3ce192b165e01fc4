"""Reading request bodies within a size limit, and JSON that fails cleanly."""

from __future__ import annotations

from typing import Any

import orjson
from flask import request

from webhook_receiver.errors import ApiError


def read_body(limit: int) -> bytes:
    """The raw body, refused with 413 above ``limit`` (declared or, for chunked bodies, actually sent)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes", limit=limit)
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes", limit=limit)
    return body


def parse_json(body: bytes) -> Any:
    # orjson: strict RFC 8259 (no NaN, no lone surrogates, integers within 64 bits) and several times faster
    # than the standard library on the 2 KB events and 8 MB usage batches this parses.
    try:
        return orjson.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_payload", f"the body is not valid JSON: {exc}") from None


def json_body(limit: int = 64 * 1024) -> dict[str, Any]:
    payload = parse_json(read_body(limit))
    if not isinstance(payload, dict):
        raise ApiError(400, "malformed_payload", "the body must be a JSON object")
    return payload


def optional_json_body(limit: int = 64 * 1024) -> dict[str, Any]:
    """A JSON object, or ``{}`` for a request sent with no body at all (capture, release)."""
    raw = read_body(limit)
    payload = parse_json(raw) if raw.strip() else {}
    if not isinstance(payload, dict):
        raise ApiError(400, "malformed_payload", "the body must be a JSON object")
    return payload
