"""``POST /v1/admin/grants``: an operator grants credits (a promotion, a plan allowance, an admin grant).

Seed 003's ``POST /billing/admin/grant`` (``{user_id, credits, reason}`` → ``{success, new_balance}``), on the
ledger: one ``GrantCredits`` under the client's idempotency key (namespaced ``admin-grant:``), with the source's
public name mapped to the stored one, the expiry and priority given, and the API key that asked recorded on the
entry as its ``actor`` and in the audit log (same transaction). A replay answers the first grant (201,
``replayed: true``); the same key with another body is 409 ``idempotency_conflict``; a refused body writes
nothing.
"""

from __future__ import annotations

from datetime import UTC

from flask import Blueprint

from billing_core.admin.adjustments import grant as audited_grant
from billing_core.db.unit_of_work import utcnow
from billing_core.ledger.balances import read_balance
from billing_core.ledger.commands import GrantCredits, ledger_key
from billing_core.ledger.grant_views import find_grant
from billing_core.ledger.grants import GRANTABLE_SOURCES
from webhook_receiver.auth import key_actor, require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import AdminGrantAnswer, AdminGrantBody, BalanceAnswer, GrantDetailAnswer
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_grants", __name__)

ADMIN_GRANT_KEY_PREFIX = "admin-grant:"


@bp.post("/v1/admin/grants")
@require("admin")
@endpoint(body=AdminGrantBody, answers={201: AdminGrantAnswer}, errors={409: "idempotency_conflict"})
def admin_grant(body: AdminGrantBody):
    """Grant credits to an account (created if new): source promotion, admin (default) or plan, an optional
    expiry and spending priority; answers the grant and the new balance."""
    rt = runtime()
    # In UTC, so that one instant written in two zones fingerprints the same (the handler refuses a past one,
    # after its replay check: a replay is answered even once the first grant's expiry has passed).
    expires_at = body.expires_at.astimezone(UTC) if body.expires_at is not None else None
    cmd = GrantCredits(
        account=body.account,
        amount_mc=body.credits,
        idempotency_key=ledger_key(ADMIN_GRANT_KEY_PREFIX, body.idempotency_key),
        source=GRANTABLE_SOURCES[body.source],  # type: ignore[arg-type]  # public names map to stored sources
        expires_at=expires_at,
        reason=body.reason,
        metadata=body.metadata or {},
        priority=body.priority,
        actor=key_actor(),
    )
    receipt = audited_grant(rt.session_factory, cmd, actor=key_actor(), request_id=body.idempotency_key)
    assert receipt.grant_id is not None, "a grant command answers with its grant"
    with rt.session_factory() as session:
        grant = find_grant(session, receipt.grant_id, utcnow())
        balance = read_balance(session, body.account)
    assert balance is not None, "the grant created the wallet"
    answer = AdminGrantAnswer(
        replayed=receipt.replayed,
        entry_id=receipt.entry_id,
        grant=GrantDetailAnswer.of(grant),
        new_balance=BalanceAnswer.of(balance),
    )
    return render(answer, status=201)
