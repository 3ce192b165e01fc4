"""Usage reports as apps send them: validated, priced and fingerprinted before anything is stored.

One request is all or nothing: every problem of every report is collected (with the report's index and the
field), and a single problem refuses the whole request, so a client never has to work out which half of a
batch went in. The HTTP receiver and the Celery ``billing.record_usage`` task both come through here.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from billing_core.errors import BillingError
from billing_core.ledger.commands import ACCOUNT_RE, HOLD_ID_RE, KEY_RE, MAX_METADATA_BYTES
from billing_core.pricing.catalog import PriceTable, price_items

MAX_EVENTS_PER_REQUEST = 1000
MAX_ITEMS_PER_REPORT = 100
# Workers claim one partition at a time; more partitions than worker processes keeps them all busy.
PARTITIONS = 8

Tokens = Annotated[StrictInt, Field(ge=0, le=1_000_000_000)]
Quantity = Annotated[StrictInt, Field(ge=1, le=1_000_000)]
Code = Annotated[StrictStr, Field(min_length=1, max_length=100)]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlmTokensItem(_Item):
    type: Literal["llm_tokens"]
    provider: Code
    model: Code
    input_tokens: Tokens
    output_tokens: Tokens
    cached_input_tokens: Tokens = 0


class FeeItem(_Item):
    type: Literal["fee"]
    code: Code
    quantity: Quantity = 1


class AgentItem(_Item):
    type: Literal["agent"]
    code: Code
    quantity: Quantity = 1


class CreditsItem(_Item):
    type: Literal["credits"]
    credits: Annotated[StrictStr, Field(min_length=1, max_length=32)]


Item = Annotated[LlmTokensItem | FeeItem | AgentItem | CreditsItem, Field(discriminator="type")]


class UsageReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: Annotated[StrictStr, Field(pattern=KEY_RE.pattern)]
    account: Annotated[StrictStr, Field(pattern=f"^{ACCOUNT_RE.pattern}$")]
    occurred_at: AwareDatetime | None = None
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS_PER_REPORT)]
    hold_id: Annotated[StrictStr, Field(pattern=f"^{HOLD_ID_RE.pattern}$")] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class UsageBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)]


_REPORT = TypeAdapter(UsageReport)


class InvalidUsage(BillingError):
    """One or more reports of a request are invalid; ``problems`` lists each (index, field, code, message)."""

    code = "invalid_usage"


@dataclass(frozen=True)
class AcceptedReport:
    """A report ready for the inbox: priced, assigned to a partition, fingerprinted."""

    idempotency_key: str
    account: str
    partition: int
    amount_mc: int
    hold_id: str | None
    occurred_at: datetime | None
    report_json: str  # the report as validated, canonical JSON (sorted keys): what the fingerprint hashes
    fingerprint: str


def partition_of(account: str) -> int:
    # crc32 rather than hash(): stable across processes and restarts (PYTHONHASHSEED).
    return zlib.crc32(account.encode()) % PARTITIONS


_ITEM_TAGS = frozenset({"llm_tokens", "fee", "agent", "credits"})


def _field(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a client writes the path: ``items[0].input_tokens``. A discriminated
    union puts the item's type tag into the location (``items, 0, llm_tokens, ...``); the client never wrote
    that, so it is dropped."""
    out = ""
    for i, part in enumerate(loc):
        if part in _ITEM_TAGS and i >= 2 and loc[i - 2] == "items" and isinstance(loc[i - 1], int):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(index: int, field: str, code: str, message: str) -> dict[str, Any]:
    return {"index": index, "field": field, "code": code, "message": message}


def accept_reports(payload: object, table: PriceTable) -> list[AcceptedReport]:
    """Validate and price one report (a dict with ``idempotency_key``) or ``{"events": [...]}``.

    Raises ``InvalidUsage`` listing every problem; returns the reports in request order otherwise.
    """
    if isinstance(payload, dict) and "events" in payload:
        try:
            raw_reports = UsageBatch.model_validate(payload).events
        except ValidationError as exc:
            problems = [_problem(-1, _field(e["loc"]), e["type"], e["msg"]) for e in exc.errors()]
            raise InvalidUsage("the request is not a list of 1 to 1000 usage reports", problems=problems) from None
    elif isinstance(payload, dict):
        raw_reports = [payload]
    else:
        raise InvalidUsage(
            'the body must be a usage report or {"events": [...]}',
            problems=[_problem(-1, "", "type_error", "expected a JSON object")],
        )

    problems: list[dict[str, Any]] = []
    accepted: list[AcceptedReport] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_reports):
        try:
            report = _REPORT.validate_python(raw)
        except ValidationError as exc:
            problems.extend(_problem(index, _field(e["loc"]), e["type"], e["msg"]) for e in exc.errors())
            continue
        metadata_size = len(json.dumps(report.metadata, separators=(",", ":"), default=str))
        if metadata_size > MAX_METADATA_BYTES:
            problems.append(_problem(index, "metadata", "too_large", f"metadata exceeds {MAX_METADATA_BYTES} bytes"))
            continue
        items = [item.model_dump() for item in report.items]
        try:
            quote = price_items(table, items)
        except BillingError as exc:
            field = str(exc.details.get("field", "items"))
            problems.append(_problem(index, field, exc.code, exc.message))
            continue
        body = report.model_dump(mode="json")
        body["items"] = items
        # The canonical text is both what is fingerprinted and what is stored: serialised once per report.
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        fp = hashlib.sha256(canonical.encode()).hexdigest()
        key = report.idempotency_key
        # The same key twice in one request: identical copies are duplicates (the store keeps the first);
        # another body under the key is a problem of this request.
        if key in seen and accepted[seen[key]].fingerprint != fp:
            problems.append(
                _problem(index, "idempotency_key", "idempotency_conflict", "key repeated with another body")
            )
            continue
        seen.setdefault(key, len(accepted))
        accepted.append(
            AcceptedReport(
                idempotency_key=key,
                account=report.account,
                partition=partition_of(report.account),
                amount_mc=quote.total_mc,
                hold_id=report.hold_id,
                occurred_at=report.occurred_at,
                report_json=canonical,
                fingerprint=fp,
            )
        )
    if problems:
        noun = "report is" if len(raw_reports) == 1 else "reports are"
        raise InvalidUsage(
            f"{len({p['index'] for p in problems})} {noun} invalid; nothing was stored", problems=problems
        )
    return accepted
