"""``GET``/``PUT /v1/accounts/<account>`` and ``GET /v1/accounts/<account>/transactions``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from billing_core.accounts.profile import update_account
from billing_core.errors import UnknownAccount
from billing_core.ledger.balances import read_balance
from billing_core.ledger.commands import check_account
from billing_core.ledger.history import list_transactions
from webhook_receiver.auth import require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import AccountUpdateBody, BalanceAnswer, TransactionsAnswer, TransactionsQuery
from webhook_receiver.spec import endpoint

bp = Blueprint("accounts", __name__)

UNKNOWN = {404: "unknown_account"}


@bp.get("/v1/accounts/<account>")
@require("accounts:read")
@endpoint(answers={200: BalanceAnswer}, errors=UNKNOWN)
def get_account(account: str):
    """The balance: available, held and total credits, the negative flag, and the profile."""
    with runtime().session_factory() as session:
        balance = read_balance(session, account)
    if balance is None:
        raise UnknownAccount.named(account)
    return render(BalanceAnswer.of(balance))


@bp.put("/v1/accounts/<account>")
@require("accounts:write")
@endpoint(body=AccountUpdateBody, answers={200: BalanceAnswer}, errors={409: "stripe_customer_taken"})
def put_account(account: str, body: AccountUpdateBody):
    """Set the profile fields given (``null`` clears one); creates the account if it is new."""
    # The fields sent, as validated (millicredits for the threshold); a field left out is not changed.
    given: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    if "low_balance_threshold" in given:
        given["low_balance_threshold_mc"] = given.pop("low_balance_threshold")
    # A path that cannot name an account must not create a wallet.
    balance = update_account(runtime().session_factory, check_account(account), **given)
    return render(BalanceAnswer.of(balance))


@bp.get("/v1/accounts/<account>/transactions")
@require("accounts:read")
@endpoint(query=TransactionsQuery, answers={200: TransactionsAnswer}, errors={**UNKNOWN, 400: "invalid_cursor"})
def get_transactions(account: str, query: TransactionsQuery):
    """The ledger history, newest first, a page at a time (``next_cursor`` gives the next page)."""
    with runtime().session_factory() as session:
        page = list_transactions(session, account, cursor=query.cursor, limit=query.limit)
    return render(TransactionsAnswer.of(page))
