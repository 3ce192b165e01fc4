"""Usage reports as apps send them: validated, priced and fingerprinted before anything is stored.

One request is all or nothing: every problem of every report is collected (with the report's index and the
field), and a single problem refuses the whole request, so a client never has to work out which half of a
batch went in. The HTTP receiver and the Celery ``billing.record_usage`` task both come through here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from billing_core.errors import BillingError, error_field, error_message
from billing_core.partitions import partition_of
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.items import Item, Items, KeyMode
from billing_core.pricing.quotes import SYSTEM, price_items
from billing_core.types import MAX_REPORTS_PER_REQUEST, Account, HoldId, IdempotencyKey, Metadata, Timestamp


class UsageReport(BaseModel):
    """One priced call (or several items of one) to debit from ``account``, once per ``idempotency_key``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: IdempotencyKey
    account: Account
    occurred_at: Timestamp | None = None
    items: Items
    hold_id: HoldId | None = Field(None, description="capture this hold at the reported amount")
    metadata: Metadata = Field(default_factory=dict)
    mode: KeyMode = Field(
        SYSTEM,
        description="whose provider key paid for the tokens: system (charged) or own (the customer's key: base "
        "fees only; refused on tiers that require system credits)",
    )


class UsageEnvelope(BaseModel):
    """Reports are validated one by one (``accept_reports``), so that every problem is named with its index."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_REPORTS_PER_REQUEST)]


class UsageBatch(BaseModel):
    """``{"events": [...]}`` as ``/openapi.json`` shows it: up to 1,000 usage reports."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[UsageReport], Field(min_length=1, max_length=MAX_REPORTS_PER_REQUEST)]


_REPORT = TypeAdapter(UsageReport)
# Built once: ``json.dumps`` with arguments builds an encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


class InvalidUsage(BillingError):
    """One or more reports of a request are invalid; ``problems`` lists each (index, field, code, message, and
    for an unknown model ``known_models``)."""

    code = "invalid_usage"


class UsageKeyModeNotAllowed(InvalidUsage):
    """A request of one report refused only because its ``own`` key mode is not allowed on a tier: answered as
    the contract's ``key_mode_not_allowed`` (403) rather than a batch's ``invalid_usage``, since that is the
    whole of the refusal; it stays an ``InvalidUsage`` (with ``problems``) for the callers that handle those."""

    code = "key_mode_not_allowed"


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
    items: tuple[Item, ...] = ()
    mode: str = "system"


def _problem(index: int, field: str, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"index": index, "field": field, "code": code, "message": message, **extra}


# Details of a pricing refusal a client needs in a batch's problem too (the models it could have named).
_PROBLEM_DETAILS = ("known_models", "known_providers", "tier")


def accept_reports(payload: object, table: PriceTable) -> list[AcceptedReport]:
    """Validate and price one report (a dict with ``idempotency_key``) or ``{"events": [...]}``.

    Raises ``InvalidUsage`` listing every problem; returns the reports in request order otherwise.
    """
    if isinstance(payload, dict) and "events" in payload:
        try:
            raw_reports = UsageEnvelope.model_validate(payload).events
        except ValidationError as exc:
            found = [_problem(-1, error_field(e["loc"], e["type"]), e["type"], error_message(e)) for e in exc.errors()]
            message = f"the request is not a list of 1 to {MAX_REPORTS_PER_REQUEST} usage reports"
            raise InvalidUsage(message, problems=found) from None
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
            problems.extend(
                _problem(index, error_field(e["loc"], e["type"]), e["type"], error_message(e)) for e in exc.errors()
            )
            continue
        items = [item.model_dump() for item in report.items]
        try:
            quote = price_items(table, report.items, mode=report.mode)
        except BillingError as exc:
            field = str(exc.details.get("field", "items"))
            extra = {k: exc.details[k] for k in _PROBLEM_DETAILS if k in exc.details}
            problems.append(_problem(index, field, exc.code, exc.message, **extra))
            continue
        body = report.model_dump(mode="json")
        body["items"] = items
        if body["mode"] == SYSTEM:
            # The default is left out of what is fingerprinted: a report stored before key modes existed and
            # sent again is the same report, not a conflict.
            del body["mode"]
        canonical = _CANONICAL.encode(body)
        fp = hashlib.sha256(canonical.encode()).hexdigest()
        # The price is added after fingerprinting: the same report sent again after a new price version took
        # effect is a duplicate (the first pricing stands), not a conflict. Spliced into the canonical text
        # rather than dumped again: one serialisation of the report, on the intake's hot path.
        # The items are stored beside it: each line records the catalog's prices only (breakdown[i] prices items[i]).
        # orjson: the pricing is not fingerprinted, so its bytes need not be the standard library's.
        pricing = orjson.dumps(quote.as_metadata(with_usage=False)).decode()
        stored = f'{canonical[:-1]},"pricing":{pricing}}}'

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
                report_json=stored,
                fingerprint=fp,
                items=tuple(report.items),
                mode=report.mode,
            )
        )
    if problems and len(raw_reports) == 1 and all(p["code"] == "key_mode_not_allowed" for p in problems):
        first = problems[0]
        raise UsageKeyModeNotAllowed(
            str(first["message"]), field=first["field"], tier=first.get("tier"), mode="own", problems=problems
        )
    if problems:
        invalid = len({p["index"] for p in problems})
        noun = "report is" if invalid == 1 else "reports are"
        raise InvalidUsage(f"{invalid} {noun} invalid; nothing was stored", problems=problems)
    return accepted
