"""Reconciliation's objects pass beyond Checkout Sessions, against the Stripe emulator: paid subscription invoices,
refunds and disputes the webhooks never brought are applied through the normal path, once; what no event would
heal (an amount altered in the ledger, a ledger entry Stripe does not know) is a discrepancy with an admin alert,
once; and the admin API lists and resolves discrepancies."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from sqlalchemy import text

from billing_core.intake.stripe_events import PROCESSED
from billing_core.reconcile.discrepancies import record
from billing_core.reconcile.objects import reconcile_objects
from tests.integration import paying_stack as _paying
from tests.integration.test_reconcile import PRO_MC, URLS, _fast
from tests.integration.test_stripe_handlers import charge, dispute, receive, refund, stripe_event

paying_stack, shop = _paying.paying_stack, _paying.shop

pytestmark = pytest.mark.integration

PRO_CENTS = 5_000  # the "pro" package's price
PLAN = {"billing_plan": "pro", "interval": "month", "allowance_mc": "1000000", "rollover_cap_mc": "500000"}
ALLOWANCE_MC = 1_000_000


def _ledger(probe: Any) -> tuple[Any, ...]:
    return (
        probe.scalar("SELECT count(*) FROM ledger_entries"),
        tuple(tuple(r) for r in probe.rows("SELECT code, balance_mc FROM ledger_accounts ORDER BY code")),
    )


def _alerts(probe: Any) -> int:
    return int(probe.scalar("SELECT count(*) FROM admin_alerts WHERE kind = 'reconciliation_discrepancy'"))


def _subscribe(stack: Any, account: str) -> str:
    """A customer subscribed to a plan Price through a paid Checkout Session, none of its events delivered
    (all lost on the way); its first invoice, paid."""
    price = requests.post(
        f"{stack.emulator_url}/v1/prices",
        headers={"Authorization": f"Bearer {_paying.API_KEY}"},
        data={
            "currency": "usd",
            "unit_amount": 2900,
            "recurring[interval]": "month",
            "product_data[name]": "Pro plan",
            **{f"metadata[{k}]": v for k, v in PLAN.items()},
        },
        timeout=10,
    )
    assert price.status_code == 200, price.text
    customer = stack.gateway.create_customer(account=account, email=f"{account}@example.com")
    session = stack.gateway.create_subscription_checkout_session(
        customer=customer["id"],
        price=price.json()["id"],
        client_reference_id=account,
        metadata={"account": account},
        subscription_metadata={"account": account},
        **URLS,
    )
    stack.control(f"checkout/sessions/{session['id']}/pay")
    sub_id = stack.gateway.retrieve_checkout_session(session["id"])["subscription"]
    invoice = stack.gateway.retrieve_invoice(stack.gateway.retrieve_subscription(sub_id)["latest_invoice"])
    assert invoice["status"] == "paid"
    return str(invoice["id"])


def _buy_pro(stack: Any, api: Any, session_factory: Any, account: str) -> tuple[str, str]:
    """The pro package bought and credited through its delivered webhook: (payment intent, charge)."""
    answer = api.post(
        "/v1/checkout", key=api.key("checkout:write"), json={"account": account, "package": "pro", **URLS}
    )
    assert answer.status_code == 201, answer.get_data(as_text=True)
    session_id = answer.get_json()["id"]
    stack.control(f"checkout/sessions/{session_id}/pay")
    (completed,) = stack.events("checkout.session.completed", session_id)
    assert stack.deliver(session_factory, completed) == PROCESSED
    pi = stack.gateway.retrieve_checkout_session(session_id)["payment_intent"]
    return pi, stack.gateway.retrieve_payment_intent(pi)["latest_charge"]


# -- invoices ----------------------------------------------------------------------------------------------------


def test_a_paid_invoice_without_its_grant_is_granted_once(shop, session_factory, probe):
    # given a subscription whose events were all lost: the ledger knows nothing of it
    stack, _ = shop
    invoice = _subscribe(stack, "sub_ana")
    assert probe.wallet("sub_ana") is None

    # when the objects pass runs
    run = reconcile_objects(session_factory, stack.gateway, pace=_fast())

    # then its invoice's allowance is granted through the invoice.paid handler, once
    assert run.status == "done"
    assert run.counts["checked_invoices"] == 1
    assert run.counts["missing_invoices"] == run.counts["applied_invoices"] == 1
    assert run.counts.get("checked_sessions", 0) == 0  # a subscription's session is not a package's
    assert run.counts.get("discrepancies", 0) == 0
    assert probe.available("sub_ana") == ALLOWANCE_MC
    grants = probe.rows(
        "SELECT e.kind, g.source, g.amount_mc FROM ledger_entries e JOIN grants g ON g.entry_id = e.id "
        "WHERE e.idempotency_key = :k",
        k=f"invoice:{invoice}",
    )
    assert [tuple(g) for g in grants] == [("grant", "plan", ALLOWANCE_MC)]
    assert probe.scalar("SELECT status FROM invoices WHERE id = :i", i=invoice) == "paid"  # mirrored too
    probe.assert_consistent()

    # and a second run changes nothing
    before = _ledger(probe)
    again = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    assert again.counts["checked_invoices"] == 1 and again.counts.get("applied_invoices", 0) == 0
    assert _ledger(probe) == before
    assert probe.available("sub_ana") == ALLOWANCE_MC


def test_an_altered_invoice_grant_is_reported_once(shop, session_factory, probe):
    # given an invoice granted by the pass, then its grant altered behind the pipeline's back
    stack, _ = shop
    invoice = _subscribe(stack, "sub_ben")
    reconcile_objects(session_factory, stack.gateway, pace=_fast())
    with session_factory.begin() as session:
        session.execute(
            text(
                "UPDATE grants SET amount_mc = amount_mc - 1000 WHERE entry_id = "
                "(SELECT id FROM ledger_entries WHERE idempotency_key = :k)"
            ),
            {"k": f"invoice:{invoice}"},
        )
    before = _ledger(probe)

    # when the pass runs twice
    second = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    third = reconcile_objects(session_factory, stack.gateway, pace=_fast())

    # then one discrepancy and one alert, nothing "healed"
    assert second.counts["discrepancies"] == second.counts["discrepancies_invoices"] == 1
    assert second.counts.get("applied_invoices", 0) == 0
    assert third.counts.get("discrepancies", 0) == 0
    assert _ledger(probe) == before
    found = probe.rows("SELECT kind, stripe_id, account, expected, found, resolved_at FROM discrepancies")
    assert [tuple(r) for r in found] == [
        (
            "amount_differs",
            invoice,
            "sub_ben",
            {"credits_mc": ALLOWANCE_MC},
            {"credits_mc": ALLOWANCE_MC - 1000},
            None,
        )
    ]
    assert _alerts(probe) == 1


# -- refunds -----------------------------------------------------------------------------------------------------


def test_a_refund_missing_in_the_ledger_is_clawed_back_through_the_normal_path(shop, session_factory, probe):
    # given a purchase, then a partial refund in Stripe whose webhook never came
    stack, client = shop
    pi, _ = _buy_pro(stack, client, session_factory, "ref_cy")
    made = stack.gateway.create_refund(payment_intent=pi, amount=2_000)
    assert probe.available("ref_cy") == PRO_MC

    # when the objects pass runs
    run = reconcile_objects(session_factory, stack.gateway, pace=_fast())

    # then the refund's share is taken back (2,000 of 5,000 cents: 2/5 of the credits), once
    assert run.counts["checked_refunds"] == 1
    assert run.counts["missing_refunds"] == run.counts["applied_refunds"] == 1
    assert run.counts.get("discrepancies", 0) == 0
    taken = PRO_MC * 2_000 // PRO_CENTS
    assert probe.available("ref_cy") == PRO_MC - taken
    assert probe.system("refunds") == taken
    rows = probe.rows(
        "SELECT kind, external_ref, (metadata->>'amount')::int FROM ledger_entries WHERE idempotency_key = :k",
        k=f"refund:{made['id']}",
    )
    assert [tuple(r) for r in rows] == [("clawback", made["id"], 2_000)]
    assert probe.scalar("SELECT count(DISTINCT dedupe_key) FROM notifications WHERE kind = 'refund_processed'") == 1
    probe.assert_consistent()

    before = _ledger(probe)
    again = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    assert again.counts["checked_refunds"] == 1 and again.counts.get("applied_refunds", 0) == 0
    assert _ledger(probe) == before


# -- disputes ----------------------------------------------------------------------------------------------------


def test_a_dispute_lost_in_stripe_while_the_ledger_holds_it_is_settled_through_the_normal_path(
    shop, session_factory, probe
):
    # given a purchase disputed, its opening delivered (the ledger holds the credits), its loss never delivered
    stack, client = shop
    _, charge_id = _buy_pro(stack, client, session_factory, "dis_dee")
    opened = stack.control(f"charges/{charge_id}/dispute")
    (created,) = stack.events("charge.dispute.created", opened["id"])
    assert stack.deliver(session_factory, created) == PROCESSED
    assert (probe.wallet("dis_dee").available_mc, probe.wallet("dis_dee").held_mc) == (0, PRO_MC)
    stack.control(f"disputes/{opened['id']}/close", status="lost")

    # when the objects pass runs
    run = reconcile_objects(session_factory, stack.gateway, pace=_fast())

    # then the loss takes the held credits, as the charge.dispute.closed handler does
    assert run.counts["checked_disputes"] == 1
    assert run.counts["missing_disputes"] == run.counts["applied_disputes"] == 1
    assert run.counts.get("discrepancies", 0) == 0
    wallet = probe.wallet("dis_dee")
    assert (wallet.available_mc, wallet.held_mc) == (0, 0)
    assert probe.system("refunds") == PRO_MC
    assert probe.scalar("SELECT status FROM disputes WHERE id = :d", d=opened["id"]) == "lost"
    assert probe.scalar(
        "SELECT kind FROM ledger_entries WHERE idempotency_key = :k", k=f"dispute_lost:{opened['id']}"
    ) == ("clawback")
    probe.assert_consistent()

    before = _ledger(probe)
    again = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    assert again.counts.get("applied_disputes", 0) == 0 and again.counts.get("discrepancies", 0) == 0
    assert _ledger(probe) == before


# -- the ledger's entries Stripe does not know ---------------------------------------------------------------


def test_ledger_entries_without_their_stripe_object_are_discrepancies_once(shop, session_factory, probe):
    # given a purchase, then a refund and a dispute the ledger applied from forged payloads Stripe never made
    stack, client = shop
    pi, charge_id = _buy_pro(stack, client, session_factory, "gho_eve")
    ghost_refund = charge([refund("re_ghost", 1_000, charge=charge_id)], charge_id=charge_id, payment_intent=pi)
    assert receive(session_factory, None, stripe_event("evt_ghost_1", "charge.refunded", ghost_refund)) == PROCESSED
    ghost_dispute = dispute("dp_ghost", amount=1_000, payment_intent=pi)
    assert receive(session_factory, None, stripe_event("evt_ghost_2", "charge.dispute.created", ghost_dispute)) == (
        PROCESSED
    )
    before = _ledger(probe)

    # when the pass runs twice
    run = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    again = reconcile_objects(session_factory, stack.gateway, pace=_fast())

    # then each is one discrepancy with one alert; the ledger is left as it is
    assert run.counts["discrepancies"] == 2
    assert run.counts["discrepancies_refunds"] == run.counts["discrepancies_disputes"] == 1
    assert again.counts.get("discrepancies", 0) == 0
    assert _ledger(probe) == before
    found = probe.rows("SELECT kind, stripe_id, account, found FROM discrepancies ORDER BY stripe_id")
    assert [tuple(r) for r in found] == [
        ("missing_in_stripe", "dp_ghost", "gho_eve", None),
        ("missing_in_stripe", "re_ghost", "gho_eve", None),
    ]
    assert _alerts(probe) == 2


def test_a_purchase_and_a_plan_grant_stripe_never_made_are_discrepancies_once(shop, session_factory, probe):
    # given a purchase and an invoice's plan grant the ledger holds under Stripe ids Stripe never issued
    from billing_core.ledger.commands import GrantCredits, PurchaseCredits

    stack, _client = shop
    probe.run(PurchaseCredits("gho_ann", 5_000_000, "checkout:cs_ghost"))
    probe.run(GrantCredits("gho_ann", 3_000_000, "invoice:in_ghost", source="plan"))
    before = _ledger(probe)

    # when the pass runs twice
    run = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    again = reconcile_objects(session_factory, stack.gateway, pace=_fast())

    # then each is one missing_in_stripe discrepancy, with what the ledger holds as expected; nothing changes
    assert run.counts["discrepancies_sessions"] == run.counts["discrepancies_invoices"] == 1
    assert again.counts.get("discrepancies", 0) == 0
    assert _ledger(probe) == before
    found = probe.rows("SELECT kind, stripe_id, account, expected, found FROM discrepancies ORDER BY stripe_id")
    assert [tuple(r) for r in found] == [
        ("missing_in_stripe", "cs_ghost", "gho_ann", {"credits_mc": 5_000_000, "status": "paid"}, None),
        ("missing_in_stripe", "in_ghost", "gho_ann", {"credits_mc": 3_000_000, "status": "paid"}, None),
    ]


# -- the admin API -------------------------------------------------------------------------------------------------


def _record_two(session_factory: Any) -> tuple[int, int]:
    with session_factory.begin() as session:
        first = record(
            session,
            kind="amount_differs",
            dedupe_key="amount:invoice:in_1",
            stripe_id="in_1",
            account="ana",
            expected={"credits_mc": 1_000_000},
            found={"credits_mc": 999_000},
        )
        second = record(session, kind="missing_in_stripe", dedupe_key="missing:refund:re_1", stripe_id="re_1")
    assert first is not None and second is not None
    return first, second


def test_admin_api_lists_and_resolves_discrepancies(api, session_factory):
    first, second = _record_two(session_factory)
    admin = api.key("admin")

    listed = api.get("/v1/admin/discrepancies", key=admin)
    assert listed.status_code == 200, listed.get_data(as_text=True)
    body = listed.get_json()
    assert [(d["id"], d["kind"], d["status"], d["stripe_id"]) for d in body["data"]] == [
        (first, "amount_differs", "open", "in_1"),
        (second, "missing_in_stripe", "open", "re_1"),
    ]
    assert body["data"][0]["expected"] == {"credits_mc": 1_000_000} and body["has_more"] is False

    resolved = api.post(f"/v1/admin/discrepancies/{first}/resolve", key=admin, json={"note": "granted by hand"})
    assert resolved.status_code == 200, resolved.get_data(as_text=True)
    answer = resolved.get_json()
    assert (answer["id"], answer["status"], answer["note"]) == (first, "resolved", "granted by hand")
    assert answer["resolved_by"].startswith("api_key:") and answer["resolved_at"]

    open_only = api.get("/v1/admin/discrepancies?status=open", key=admin).get_json()
    assert [d["id"] for d in open_only["data"]] == [second]
    every = api.get("/v1/admin/discrepancies?status=all", key=admin).get_json()
    assert [(d["id"], d["status"]) for d in every["data"]] == [(first, "resolved"), (second, "open")]
    paged = api.get("/v1/admin/discrepancies?status=all&limit=1", key=admin).get_json()
    assert [d["id"] for d in paged["data"]] == [first] and paged["has_more"] is True
    rest = api.get(f"/v1/admin/discrepancies?status=all&cursor={paged['next_cursor']}", key=admin).get_json()
    assert [d["id"] for d in rest["data"]] == [second] and rest["next_cursor"] is None


def test_admin_api_refuses_what_it_cannot_resolve(api, session_factory):
    first, _ = _record_two(session_factory)
    admin = api.key("admin")

    def resolve(discrepancy_id: int, body: Any, key: str = admin) -> Any:
        return api.post(f"/v1/admin/discrepancies/{discrepancy_id}/resolve", key=key, json=body)

    unknown = resolve(987_654, {"note": "x"})
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "unknown_discrepancy"
    for blank in ({"note": ""}, {"note": "   "}, {}):
        refused = resolve(first, blank)
        assert refused.status_code == 422, blank
        assert refused.get_json()["error"]["code"] == "invalid_request"
    assert resolve(first, {"note": "checked with finance"}).status_code == 200
    again = resolve(first, {"note": "another note"})
    assert again.status_code == 409
    error = again.get_json()["error"]
    assert error["code"] == "discrepancy_resolved" and error["note"] == "checked with finance"
    assert resolve(2**70, {"note": "x"}).status_code == 404
    assert api.get("/v1/admin/discrepancies?status=closed", key=admin).status_code == 422
    assert api.get("/v1/admin/discrepancies", key=api.key("accounts:read")).status_code == 403
    assert resolve(first, {"note": "x"}, key=api.key("accounts:read")).status_code == 403


def test_the_discrepancy_endpoints_are_in_the_openapi_document(receiver_app):
    doc = receiver_app.test_client().get("/openapi.json").get_json()
    assert "get" in doc["paths"]["/v1/admin/discrepancies"]
    resolve = doc["paths"]["/v1/admin/discrepancies/{discrepancy_id}/resolve"]["post"]
    assert {"200", "404", "409", "422"} <= set(resolve["responses"])
    assert "ResolveDiscrepancyBody" in doc["components"]["schemas"]
