"""``GET``/``PUT /v1/accounts/<account>``, ``GET /v1/accounts/<account>/transactions`` and ``/grants``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from billing_core.accounts.profile import update_account
from billing_core.db.unit_of_work import utcnow
from billing_core.errors import UnknownAccount
from billing_core.ledger.balances import read_balance
from billing_core.ledger.commands import check_account
from billing_core.ledger.grant_views import grant_history, list_grants, open_grants
from billing_core.ledger.history import list_transactions
from billing_core.ledger.wallet_rows import wallet_exists
from billing_core.pricing.limits import check_plan, policies
from billing_core.stripe.subscription_views import current_subscription
from webhook_receiver.auth import require
from webhook_receiver.rate_limits import token_limits
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import (
    AccountAnswer,
    AccountLimitsUpdateBody,
    GrantsAnswer,
    GrantsQuery,
    TransactionsAnswer,
    TransactionsQuery,
    UsageViewAnswer,
)
from webhook_receiver.spec import endpoint

bp = Blueprint("accounts", __name__)

UNKNOWN = {404: "unknown_account"}


@bp.get("/v1/accounts/<account>")
@require("accounts:read")
@endpoint(answers={200: AccountAnswer}, errors=UNKNOWN)
def get_account(account: str):
    """The balance: available, held and total credits, the negative flag, the profile, the plan and limits,
    the spendable grants in the order they will be spent, and the plan subscription."""
    rt = runtime()
    with rt.read_session_factory() as session:
        balance = read_balance(session, account)
        if balance is None:
            raise UnknownAccount.named(account)
        grants = open_grants(session, account, utcnow())
        policy = policies(session, [account], rt.prices.current())[account]
        subscription = current_subscription(session, account)
    return render(AccountAnswer.with_limits(balance, policy, grants, subscription))


@bp.put("/v1/accounts/<account>")
@require("accounts:write")
@endpoint(
    body=AccountLimitsUpdateBody,
    answers={200: AccountAnswer},
    errors={409: "stripe_customer_taken", 422: "unknown_plan · invalid_request"},
)
def put_account(account: str, body: AccountLimitsUpdateBody):
    """Set the profile fields given (``null`` clears one), the plan and limit overrides; creates the account
    if it is new."""
    rt = runtime()
    # The fields sent, as validated (millicredits for the threshold); a field left out is not changed.
    given: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    if "low_balance_threshold" in given:
        given["low_balance_threshold_mc"] = given.pop("low_balance_threshold")
    table = rt.prices.current()
    if given.get("plan") is not None:
        check_plan(table, given["plan"])
    if "limits" in given:
        limits = given.pop("limits")
        given["limit_overrides"] = None if limits is None else limits.given()
    # A path that cannot name an account must not create a wallet.
    balance = update_account(rt.session_factory, check_account(account), **given)
    token_limits().forget(account)  # this process sees the change at once, the others within seconds
    with rt.session_factory() as session:
        policy = policies(session, [account], table)[account]
        grants = open_grants(session, account, utcnow())
        subscription = current_subscription(session, account)
    return render(AccountAnswer.with_limits(balance, policy, grants, subscription))


@bp.get("/v1/accounts/<account>/usage")
@require("accounts:read")
@endpoint(answers={200: UsageViewAnswer}, errors=UNKNOWN)
def get_usage_view(account: str):
    """Tokens used this hour, day and month against the account's limits and quota (seed 002's usage view)."""
    rt = runtime()
    with rt.read_session_factory() as session:
        if not wallet_exists(session, account):
            raise UnknownAccount.named(account)
        policy = policies(session, [account], rt.prices.current())[account]
    state = token_limits().usage_view(account, policy, session_factory=rt.session_factory)
    return render(UsageViewAnswer.of(state, policy))


@bp.get("/v1/accounts/<account>/transactions")
@require("accounts:read")
@endpoint(query=TransactionsQuery, answers={200: TransactionsAnswer}, errors={**UNKNOWN, 400: "invalid_cursor"})
def get_transactions(account: str, query: TransactionsQuery):
    """The ledger history, newest first, a page at a time (``next_cursor`` gives the next page)."""
    with runtime().session_factory() as session:
        page = list_transactions(session, account, cursor=query.cursor, limit=query.limit)
    return render(TransactionsAnswer.of(page))


@bp.get("/v1/accounts/<account>/grants")
@require("accounts:read")
@endpoint(
    query=GrantsQuery,
    answers={200: GrantsAnswer},
    errors={404: "unknown_account · unknown_grant", 400: "invalid_cursor"},
)
def get_grants(account: str, query: GrantsQuery):
    """Every grant (exhausted and expired ones too): the spendable ones first, in the order they will be
    spent, then the others newest first; with ``grant`` (a grant id), that grant and its history, newest first."""
    with runtime().session_factory() as session:
        now = utcnow()
        if query.grant is not None:
            history = grant_history(session, account, query.grant, now, cursor=query.cursor, limit=query.limit)
            return render(GrantsAnswer.of_history(history))
        page = list_grants(session, account, now, cursor=query.cursor, limit=query.limit)
    return render(GrantsAnswer.of(page))
