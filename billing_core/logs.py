"""One logging setup for the receiver, the workers and the CLI: JSON lines or text, with the context of the
request or task at hand, and secrets redacted as a safety net.

``LOG_FORMAT`` chooses: ``json`` (one object a line: ``ts``, ``level``, ``logger``, ``message``, the context
fields that are set, ``exc_info`` for a traceback, and any ``extra``) or ``text`` (one readable line, the context
fields appended). The servers default to json, the CLI to text; ``billing dev`` sets text.

The context lives in one context variable holding a small dict: the receiver's request hook and the workers'
``task_prerun`` start a fresh one (a few hundred nanoseconds), views and tasks add what they already have in
hand (``bind``): ``request_id``, ``event_id``, ``idempotency_key``, ``account``, ``task``, ``task_id``. Under
gevent every greenlet has its own context, so concurrent requests never see each other's fields.

Redaction is a filter on every handler, so it applies whoever logs (gunicorn, Celery, a library, our code):
Stripe secret and restricted keys, webhook signing secrets, our API keys, signature header values and URL
passwords are replaced by ``[redacted]`` in the message, its arguments and the extra fields. Nothing should
log them in the first place; this catches the day something does.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

FORMATS = ("json", "text")
CONTEXT_FIELDS = ("request_id", "event_id", "idempotency_key", "account", "task", "task_id")
REDACTED = "[redacted]"

_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("billing_log_context", default=None)

# What a secret looks like. Our API keys are ``bk_`` + 43 URL-safe characters (accounts/api_keys.py); Stripe's
# are ``sk_``/``rk_`` (live or test) and ``whsec_``; signature headers are ``t=<unix>,v1=<hex>`` (Stripe's
# ``Stripe-Signature`` and our ``Billing-Signature``); a URL's password is what sits between ``user:`` and ``@``.
_SECRET = re.compile(
    r"\b(?:bk_[A-Za-z0-9_-]{16,}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]+|whsec_[A-Za-z0-9_+/=-]+)"
    r"|\bt=\d+,(?:v\d+=[0-9a-fA-F]+,?)+"
    r"|(?<=://)([^:/@\s]*):[^@/\s]+(?=@)"
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a secret replaced by ``[redacted]`` (a URL keeps its user)."""
    if not any(marker in text for marker in ("bk_", "sk_", "rk_", "whsec_", "t=", "@")):
        return text  # the common case: one scan for markers, no regex
    return _SECRET.sub(_replacement, text)


def _replacement(match: re.Match[str]) -> str:
    user = match.group(1)
    return f"{user}:{REDACTED}" if user is not None else REDACTED


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


# -- context ---------------------------------------------------------------------------------------------------
def new_context(**fields: Any) -> None:
    """Start the context of a request or a task: ``fields`` alone (``None`` values left out), nothing inherited."""
    _CONTEXT.set({name: value for name, value in fields.items() if value is not None})


def bind(**fields: Any) -> None:
    """Add ``fields`` to the current context (``None`` values are left out)."""
    context = _CONTEXT.get()
    if context is None:
        context = {}
        _CONTEXT.set(context)
    for name, value in fields.items():
        if value is not None:
            context[name] = value


def clear_context() -> None:
    _CONTEXT.set(None)


def context() -> dict[str, Any]:
    """The current context's fields (a ``request_id`` is made on first use if the request came without one)."""
    found = _CONTEXT.get()
    if not found:
        return {}
    if found.get("request_id") is True:
        found["request_id"] = uuid.uuid4().hex
    return found


# -- formatting ------------------------------------------------------------------------------------------------
# The attributes every LogRecord has: anything else on a record came from ``extra`` and is shown.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class RedactSecrets(logging.Filter):
    """Redacts the record in place (message, arguments, extra fields) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, as logging itself would
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        for name, value in _extra(record).items():
            if isinstance(value, str | Mapping | list | tuple):
                setattr(record, name, _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``message``, the context, extra fields, ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        line.update(context())
        for name, value in _extra(record).items():
            line.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = record.stack_info
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """``time level logger message`` and the context as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = context()
        if not fields:
            return text
        head, _, rest = text.partition("\n")
        joined = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} [{joined}]" + (f"\n{rest}" if rest else "")


def log_format(default: str = "json") -> str:
    """``LOG_FORMAT`` (json or text), else ``default``; anything else stops start-up with one line."""
    chosen = (os.environ.get("LOG_FORMAT") or default).strip().lower()
    if chosen not in FORMATS:
        raise SystemExit(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {chosen!r}")
    return chosen


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def prepare(handler: logging.Handler, fmt: str) -> logging.Handler:
    """``handler`` with the chosen format and the redaction filter (once)."""
    handler.setFormatter(formatter(fmt))
    if not any(isinstance(f, RedactSecrets) for f in handler.filters):
        handler.addFilter(RedactSecrets())
    return handler


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]  # generic under --strict only
    """Writes to whatever ``sys.stderr`` is when a line is logged (a test runner swaps it, gunicorn redirects it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(*, default: str = "json", level: int | str | None = None, stream: Any = None) -> str:
    """Route every logger to one handler on ``stream`` (stderr) in the chosen format; warnings too.

    Idempotent: a second call replaces the handler it installed. Returns the format in use.
    """
    fmt = log_format(default)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_billing", False):
            root.removeHandler(handler)
    handler = prepare(logging.StreamHandler(stream) if stream is not None else _Stderr(), fmt)
    handler._billing = True  # type: ignore[attr-defined]  # ours, to be replaced by the next configure
    root.addHandler(handler)
    chosen = level if level is not None else os.environ.get("LOG_LEVEL", "INFO").upper()
    root.setLevel(chosen)
    logging.captureWarnings(True)
    return fmt
