"""Stripe-style request parameters: bracketed form keys into nested values, typed reads, Stripe's error shape.

The SDK form-encodes everything: ``metadata[account]=a``, ``line_items[0][price_data][unit_amount]=500``,
``types[0]=charge.refunded``; curl users write ``types[]=...``. ``decode`` turns those pairs into dicts and
lists so the emulator works on the same nested structure that Stripe's docs describe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_KEY_PART = re.compile(r"\[([^\]]*)\]")


class StripeError(Exception):
    """An API error answered in Stripe's shape: ``{"error": {"type", "code", "message", "param"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str = "invalid_request_error",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.extra = extra or {}  # more fields of the error: a card error's ``decline_code``, ``payment_intent``
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


def missing(param: str) -> StripeError:
    return StripeError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def no_such(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def decode(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``[("a[b][0]", "x"), ("c[]", "y")]`` -> ``{"a": {"b": ["x"]}, "c": ["y"]}``."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        parts = [head, *_KEY_PART.findall(key[len(head) :])]
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # ``x[]``: append, as many PHP-style clients send arrays
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):  # ``a=1&a[b]=2``: the nested form wins over the scalar
                    child = node[part] = {}
                node = child
    return _lists(root)


def _lists(value: Any) -> Any:
    """Dicts keyed only by integers become lists in index order (``types[0]``, ``types[1]`` ...)."""
    if not isinstance(value, dict):
        return value
    converted = {k: _lists(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def get_str(params: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str | int | float | bool):
        raise StripeError(400, f"Invalid string: {name}", code="parameter_invalid_string", param=name)
    return str(value).lower() if isinstance(value, bool) else str(value)


def get_int(
    params: Mapping[str, Any],
    name: str,
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    label: str | None = None,
) -> int | None:
    """An integer parameter; ``label`` names it in errors when it is nested (``line_items[0][quantity]``)."""
    label = label or name
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise missing(label)
        return None
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or str(value).strip() != str(number):
        raise StripeError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=label)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise StripeError(
            400, f"Invalid integer: {label} must be {bounds}", code="parameter_invalid_integer", param=label
        )
    return number


def get_bool(params: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("true", "1", "yes", "on")


def get_dict(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise StripeError(400, f"Invalid object: {name}", code="parameter_invalid_empty", param=name)
    return value


def get_list(params: Mapping[str, Any], name: str) -> list[Any]:
    value = params.get(name)
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def metadata(params: Mapping[str, Any], name: str = "metadata") -> dict[str, str]:
    """Stripe metadata: string keys and string values (numbers arrive as strings from forms anyway)."""
    return {str(k): str(v) for k, v in get_dict(params, name).items()}
