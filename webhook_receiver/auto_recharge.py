"""``GET``/``PUT /v1/accounts/<account>/auto-recharge``: the account's auto-recharge setting, its state and
its last attempt (``billing_core.stripe.auto_recharge``; docs/auto-recharge.md)."""

from __future__ import annotations

from flask import Blueprint

from billing_core.errors import UnknownAccount, UnknownPackage
from billing_core.ledger.commands import check_account
from billing_core.ledger.wallet_rows import wallet_exists
from billing_core.pricing.packages import find_package
from billing_core.stripe.auto_recharge import read_settings, save_settings
from webhook_receiver.auth import require
from webhook_receiver.errors import ApiError
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import AutoRechargeAnswer, AutoRechargeBody
from webhook_receiver.spec import endpoint

bp = Blueprint("auto_recharge", __name__)


@bp.get("/v1/accounts/<account>/auto-recharge")
@require("accounts:read")
@endpoint(answers={200: AutoRechargeAnswer}, errors={404: "unknown_account"})
def get_auto_recharge(account: str):
    """The setting (``enabled: false`` and nulls when never set), its state and the last attempt."""
    with runtime().read_session_factory() as session:
        view = read_settings(session, account)
        if view is None and not wallet_exists(session, account):
            raise UnknownAccount.named(account)
    return render(AutoRechargeAnswer.of(account, view))


@bp.put("/v1/accounts/<account>/auto-recharge")
@require("accounts:write")
@endpoint(
    body=AutoRechargeBody,
    answers={200: AutoRechargeAnswer},
    errors={422: "unknown_package · invalid_request · invalid_amount"},
)
def put_auto_recharge(account: str, body: AutoRechargeBody):
    """Set auto-recharge (creating the account if it is new). Saving re-arms it: a ``failed`` state (a
    declined card) starts again, so the next fall below the threshold charges the saved card anew."""
    rt = runtime()
    try:
        package = find_package(rt.prices.current(), body.package)
    except UnknownPackage as exc:
        # A body naming a package that does not exist is an invalid request here (a checkout answers 404).
        raise ApiError(422, exc.code, exc.message, **exc.details) from None
    view = save_settings(
        rt.session_factory,
        check_account(account),  # a path that cannot name an account must not create a wallet
        enabled=body.enabled,
        threshold_mc=body.threshold,
        package=package,
    )
    return render(AutoRechargeAnswer.of(account, view))
