"""``GET /v1/admin/accounts?q=``: find accounts by name prefix, email or Stripe customer id."""

from __future__ import annotations

from flask import Blueprint

from billing_core.admin.accounts import search_accounts
from webhook_receiver.admin_schemas import AccountMatchAnswer, AccountSearchAnswer, AccountSearchQuery
from webhook_receiver.auth import require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_accounts", __name__)


@bp.get("/v1/admin/accounts")
@require("admin")
@endpoint(query=AccountSearchQuery, answers={200: AccountSearchAnswer}, tags=("admin",))
def search(query: AccountSearchQuery):
    """Accounts matching ``q``: an exact Stripe customer id or email first, then account names starting with it."""
    with runtime().read_session_factory() as session:
        found = search_accounts(session, query.q, query.limit)
    return render(AccountSearchAnswer(data=[AccountMatchAnswer.of(m) for m in found]))
