"""Bad input: a typed error, and nothing written."""

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
    ("zero amount", lambda: DebitUsage("acme", 0, "k"), InvalidAmount),
    ("negative amount", lambda: PurchaseCredits("acme", -5, "k"), InvalidAmount),
    ("float amount", lambda: DebitUsage("acme", 1.5, "k"), InvalidAmount),
    ("float that looks whole", lambda: PurchaseCredits("acme", 1000.0, "k"), InvalidAmount),
    ("bool amount", lambda: PurchaseCredits("acme", True, "k"), InvalidAmount),
    ("Decimal amount", lambda: PurchaseCredits("acme", Decimal("5"), "k"), InvalidAmount),
    ("absurd amount", lambda: PurchaseCredits("acme", 10**19, "k"), InvalidAmount),
    ("zero adjustment", lambda: Adjust("acme", 0, "k", reason="r", actor="a"), InvalidAmount),
    ("overlong key", lambda: DebitUsage("acme", 1, "k" * 256), InvalidCommand),
    ("key with spaces", lambda: DebitUsage("acme", 1, "my key"), InvalidCommand),
    ("empty key", lambda: DebitUsage("acme", 1, ""), InvalidCommand),
    ("overlong account", lambda: DebitUsage("a" * 129, 1, "k"), InvalidCommand),
    ("account with a slash", lambda: DebitUsage("../etc", 1, "k"), InvalidCommand),
    ("ttl zero", lambda: PlaceHold("acme", 1, "k", ttl_seconds=0), InvalidCommand),
    ("ttl a week and a second", lambda: PlaceHold("acme", 1, "k", ttl_seconds=7 * 86400 + 1), InvalidCommand),
    ("bad hold id", lambda: CaptureHold("nothold", 1, "k"), InvalidCommand),
    ("negative capture", lambda: CaptureHold("hold_abc", -1, "k"), InvalidAmount),
    ("grant source purchase", lambda: GrantCredits("acme", 1, "k", source="purchase"), InvalidCommand),
    (
        "naive expiry",
        lambda: GrantCredits("acme", 1, "k", expires_at=__import__("datetime").datetime(2030, 1, 1)),
        InvalidCommand,
    ),
    ("metadata not JSON", lambda: DebitUsage("acme", 1, "k", metadata={"x": object()}), InvalidCommand),
    ("metadata NaN", lambda: DebitUsage("acme", 1, "k", metadata={"x": float("nan")}), InvalidCommand),
    ("metadata too big", lambda: DebitUsage("acme", 1, "k", metadata={"x": "y" * 20_000}), InvalidCommand),
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
