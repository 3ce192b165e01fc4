"""``POST /v1/check``: one call before an AI call. May this account run this work now, and what would it cost?

No side effect, unless ``"reserve": true``: then an allowed check places the hold in the same request.
"""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, g

from billing_core import logs
from billing_core.db.unit_of_work import utcnow
from billing_core.errors import AccountFlagged, InsufficientCredits, InvalidAmount, InvalidCommand
from billing_core.ledger.handlers import execute
from billing_core.pricing.admission import Admission, admit
from webhook_receiver.auth import require
from webhook_receiver.errors import ApiError
from webhook_receiver.holds import hold_command
from webhook_receiver.metrics import limit_hit
from webhook_receiver.rate_limits import request_windows, token_limits
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import CheckAnswer, CheckBody, HoldAnswer
from webhook_receiver.spec import endpoint

bp = Blueprint("check", __name__)


@bp.post("/v1/check")
@require()
@endpoint(
    body=CheckBody,
    answers={200: CheckAnswer, 201: CheckAnswer},
    errors={
        403: "insufficient_scope (reserve needs holds:write)",
        409: "idempotency_conflict",
        422: "invalid_request · invalid_amount · unknown_model · unknown_price_code",
        429: "rate_limited (the API key's request limit)",
    },
)
def check(body: CheckBody):
    """May the account run this work now? ``allowed``, or ``reason_code``; the estimate, what the account can
    spend, its token windows and quota. 201 with ``hold`` when ``reserve`` placed one."""
    if (body.credits is None) == (body.items is None):
        raise InvalidCommand("send exactly one of credits or items", field="credits")
    if body.reserve:
        if not g.api_key.allows("holds:write"):
            raise ApiError(403, "insufficient_scope", "reserving needs the 'holds:write' scope", required="holds:write")
        if body.idempotency_key is None:
            raise InvalidCommand("reserve needs an idempotency_key (the hold's)", field="idempotency_key")
    logs.bind(account=body.account, idempotency_key=body.idempotency_key)
    rt = runtime()
    now = utcnow()
    table = rt.prices.current(now)
    admission = admit(
        rt.engine,
        table,
        token_limits(),
        account=body.account,
        items=body.items,
        credits_mc=body.credits,
        mode=body.mode,
        now=now,
        requests=request_windows(),
    )
    if admission.reason is not None:
        limit_hit(admission.reason)  # a refusal answered 200 is still a limit hit (when it is one)
    if not (body.reserve and admission.allowed):
        return render(CheckAnswer.of(admission, version=table.version))
    return _reserve(body, admission, table.version)


def _reserve(body: CheckBody, admission: Admission, version: str | None):
    assert body.idempotency_key is not None and admission.estimate_mc is not None  # checked, and allowed
    if admission.estimate_mc == 0:
        raise InvalidAmount("items must come to a positive amount of credits to reserve", field="items")
    cmd = hold_command(
        body.account, admission.estimate_mc, admission.quote, body.idempotency_key, body.ttl_seconds, body.metadata
    )
    try:
        receipt = execute(runtime().session_factory, cmd)
    except (InsufficientCredits, AccountFlagged) as exc:
        # Spent or flagged between the read and the hold: the hold's own check under the wallet lock decides.
        refused = replace(admission, reason=exc)
        return render(CheckAnswer.of(refused, version=version))
    return render(CheckAnswer.of(admission, version=version, hold=HoldAnswer.of(receipt)), status=201)
