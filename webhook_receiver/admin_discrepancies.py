"""``/v1/admin/discrepancies``: what reconciliation found and did not heal (``billing discrepancies`` on the
command line), and closing one with a note.

Thin: the query and body are validated here, the work is ``billing_core.reconcile.discrepancies``.
"""

from __future__ import annotations

from flask import Blueprint

from billing_core.admin.operations import resolve_discrepancy as resolve_audited
from billing_core.errors import BillingError
from billing_core.reconcile.discrepancies import DiscrepancyResolved, UnknownDiscrepancy, listed
from webhook_receiver.auth import key_actor, require
from webhook_receiver.errors import ApiError
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import (
    DiscrepanciesAnswer,
    DiscrepanciesQuery,
    DiscrepancyAnswer,
    ResolveDiscrepancyBody,
)
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_discrepancies", __name__)

STATUS_BY_ERROR: dict[type[BillingError], int] = {UnknownDiscrepancy: 404, DiscrepancyResolved: 409}


@bp.get("/v1/admin/discrepancies")
@require("admin")
@endpoint(query=DiscrepanciesQuery, answers={200: DiscrepanciesAnswer}, tags=("admin",))
def list_discrepancies(query: DiscrepanciesQuery):
    """The discrepancies reconciliation recorded, oldest first: the open ones (``status=open``, the default)
    or all of them (``status=all``)."""
    found = listed(
        runtime().session_factory,
        include_resolved=query.status == "all",
        limit=query.limit + 1,  # one more: whether there is a next page
        after=int(query.cursor) if query.cursor is not None else None,
    )
    page, more = found[: query.limit], len(found) > query.limit
    answer = DiscrepanciesAnswer(
        data=[DiscrepancyAnswer.of(item) for item in page],
        has_more=more,
        next_cursor=str(page[-1].id) if more else None,
    )
    return render(answer)


@bp.post("/v1/admin/discrepancies/<int:discrepancy_id>/resolve")
@require("admin")
@endpoint(
    body=ResolveDiscrepancyBody,
    answers={200: DiscrepancyAnswer},
    errors={
        404: "unknown_discrepancy",
        409: "discrepancy_resolved (resolved_by, resolved_at, note)",
        422: "invalid_request (a blank note)",
    },
    tags=("admin",),
)
def resolve_discrepancy(discrepancy_id: int, body: ResolveDiscrepancyBody):
    """Close an open discrepancy with a note; the API key that resolved it is recorded and audited. A resolved
    one is not resolved again (409, with the first resolution)."""
    try:
        item = resolve_audited(runtime().session_factory, discrepancy_id, note=body.note, actor=key_actor())
    except (UnknownDiscrepancy, DiscrepancyResolved) as exc:
        raise ApiError(STATUS_BY_ERROR[type(exc)], exc.code, exc.message, **exc.details) from None
    return render(DiscrepancyAnswer.of(item))
