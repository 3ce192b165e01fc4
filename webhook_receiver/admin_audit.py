"""``GET /v1/admin/audit``: the audit log of admin actions, newest first, filtered by actor, action or target."""

from __future__ import annotations

from flask import Blueprint

from billing_core.admin.audit import list_audit
from webhook_receiver.admin_schemas import AuditAnswer, AuditPageAnswer, AuditQuery
from webhook_receiver.auth import require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_audit", __name__)


@bp.get("/v1/admin/audit")
@require("admin")
@endpoint(query=AuditQuery, answers={200: AuditPageAnswer}, tags=("admin",))
def audit_log(query: AuditQuery):
    """Who did what, on what, when, with the state before and after; ``cursor`` pages to older rows."""
    with runtime().read_session_factory() as session:
        rows = list_audit(
            session,
            limit=query.limit + 1,  # one more: whether there is a next page
            before_id=int(query.cursor) if query.cursor is not None else None,
            actor=query.actor,
            action=query.action,
            target=query.target,
        )
    page, more = rows[: query.limit], len(rows) > query.limit
    answer = AuditPageAnswer(
        data=[AuditAnswer.of(r) for r in page], has_more=more, next_cursor=str(page[-1].id) if more else None
    )
    return render(answer)
