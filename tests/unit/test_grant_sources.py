"""Grant sources by their public names, and the grant command's fingerprint."""

from __future__ import annotations

import pytest

from billing_core.errors import InvalidCommand
from billing_core.ledger.book import fingerprint
from billing_core.ledger.commands import GrantCredits
from billing_core.ledger.grants import GRANT_SOURCES, GRANTABLE_SOURCES, PUBLIC_SOURCE, public_source


def test_every_stored_source_has_a_public_name_and_the_issue_names_are_used():
    assert set(PUBLIC_SOURCE) >= GRANT_SOURCES
    assert [public_source(s) for s in ("promotional", "adjustment", "plan", "purchase")] == [
        "promotion",
        "admin",
        "plan",
        "purchase",
    ]
    assert set(GRANTABLE_SOURCES.values()) <= GRANT_SOURCES
    # a name an operator may give maps back to itself
    assert all(public_source(stored) == name for name, stored in GRANTABLE_SOURCES.items() if name != "promotional")


def test_a_grant_without_priority_keeps_the_fingerprint_it_had_before_priority_existed():
    # given the body as it was fingerprinted before priority and actor were fields
    cmd = GrantCredits("acme", 1_000, "k", reason="welcome")
    old_body = {
        "account": "acme",
        "amount_mc": 1_000,
        "source": "promotional",
        "expires_at": None,
        "reason": "welcome",
        "external_ref": None,
        "metadata": {},
    }
    # then it fingerprints the same, whoever grants it
    assert fingerprint("grant", cmd.body()) == fingerprint("grant", old_body)
    with_actor = GrantCredits("acme", 1_000, "k", reason="welcome", actor="api_key:1 ops")
    assert with_actor.body() == cmd.body()
    # and a priority is part of the request
    assert GrantCredits("acme", 1_000, "k", reason="welcome", priority=5).body()["priority"] == 5


@pytest.mark.parametrize("priority", [-1, 1001, "5", 2.0, True])
def test_a_priority_out_of_range_is_refused(priority):
    with pytest.raises(InvalidCommand) as refused:
        GrantCredits.validated("acme", 1_000, "k", priority=priority)
    assert refused.value.details["field"] == "priority"
