"""Bad input: a typed error, and nothing written. Commands built from unchecked values go through
``Command.validated`` (the shared types); an invariant between fields holds however a command is built."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing_core.errors import BillingError, InvalidAmount, InvalidCommand, UnknownAccount
from billing_core.ledger.commands import (
    Adjust,
    CaptureHold,
    DebitUsage,
    GrantCredits,
    PlaceHold,
    PurchaseCredits,
    TransferCredits,
)

pytestmark = pytest.mark.integration

BAD = [
    ("zero amount", lambda: DebitUsage.validated("acme", 0, "k"), InvalidAmount),
    ("negative amount", lambda: PurchaseCredits.validated("acme", -5, "k"), InvalidAmount),
    ("float amount", lambda: DebitUsage.validated("acme", 1.5, "k"), InvalidAmount),
    ("float that looks whole", lambda: PurchaseCredits.validated("acme", 1000.0, "k"), InvalidAmount),
    ("bool amount", lambda: PurchaseCredits.validated("acme", True, "k"), InvalidAmount),
    ("Decimal amount", lambda: PurchaseCredits.validated("acme", Decimal("5"), "k"), InvalidAmount),
    ("absurd amount", lambda: PurchaseCredits.validated("acme", 10**19, "k"), InvalidAmount),
    ("zero adjustment", lambda: Adjust.validated("acme", 0, "k", reason="r", actor="a"), InvalidAmount),
    ("overlong key", lambda: DebitUsage.validated("acme", 1, "k" * 256), InvalidCommand),
    ("key with spaces", lambda: DebitUsage.validated("acme", 1, "my key"), InvalidCommand),
    ("empty key", lambda: DebitUsage.validated("acme", 1, ""), InvalidCommand),
    ("overlong account", lambda: DebitUsage.validated("a" * 129, 1, "k"), InvalidCommand),
    ("account with a slash", lambda: DebitUsage.validated("../etc", 1, "k"), InvalidCommand),
    ("ttl zero", lambda: PlaceHold.validated("acme", 1, "k", ttl_seconds=0), InvalidCommand),
    ("ttl a week and a second", lambda: PlaceHold.validated("acme", 1, "k", ttl_seconds=7 * 86400 + 1), InvalidCommand),
    ("bad hold id", lambda: CaptureHold.validated("nothold", 1, "k"), InvalidCommand),
    ("negative capture", lambda: CaptureHold.validated("hold_abc", -1, "k"), InvalidAmount),
    ("grant source purchase", lambda: GrantCredits.validated("acme", 1, "k", source="purchase"), InvalidCommand),
    (
        "naive expiry",
        lambda: GrantCredits.validated("acme", 1, "k", expires_at=__import__("datetime").datetime(2030, 1, 1)),
        InvalidCommand,
    ),
    ("metadata not JSON", lambda: DebitUsage.validated("acme", 1, "k", metadata={"x": object()}), InvalidCommand),
    ("metadata NaN", lambda: DebitUsage.validated("acme", 1, "k", metadata={"x": float("nan")}), InvalidCommand),
    ("metadata too big", lambda: DebitUsage.validated("acme", 1, "k", metadata={"x": "y" * 20_000}), InvalidCommand),
    ("transfer to self", lambda: TransferCredits("acme", "acme", 1, "k"), InvalidCommand),
]


@pytest.mark.parametrize(("name", "build", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_command_is_refused_with_a_typed_error_and_nothing_is_written(probe, name, build, error):
    probe.run(PurchaseCredits("acme", 1_000, "setup"))
    before = probe.snapshot()
    with pytest.raises(error) as err:
        probe.run(build())
    assert isinstance(err.value, BillingError)
    assert err.value.as_dict()["code"] == error.code
    assert probe.snapshot() == before


@pytest.mark.parametrize(
    "cmd",
    [DebitUsage("ghost", 1, "k"), PlaceHold("ghost", 1, "k"), Adjust("ghost", -1, "k", reason="r", actor="a")],
    ids=["debit", "hold", "adjust-down"],
)
def test_spending_from_an_unknown_account_is_refused_and_creates_no_wallet(probe, cmd):
    before = probe.snapshot()
    with pytest.raises(UnknownAccount):
        probe.run(cmd)
    assert probe.snapshot() == before
