"""Random command sequences on the real ledger, checked step by step against a small in-memory model.

The model is a few lists and integers: per account its grants (source, remaining, expiry, priority) spent in
the documented order (soonest expiry first, never-expiring last, then priority, then creation order), its
holds with what each drew from which grant, its debt; the six system balances; the idempotency keys used.
Each step runs one command on PostgreSQL with a simulated clock (``now=``) and asserts that

- the outcome is the model's: success, or exactly the typed error it predicts (nothing written then);
- a replay (same key, same body) answers with the first receipt and changes nothing;
- every wallet (available, held, flag), grant, hold, system balance and the entry count match the model;
- ``billing check`` finds nothing (every entry sums to zero, cached balances equal their postings...).

Hypothesis does not re-run function-scoped fixtures per example, so each example empties the database itself,
exactly as the ``session_factory`` fixture does.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from billing_core.db.tables import SYSTEM_ACCOUNTS
from billing_core.errors import (
    AccountFlagged,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientCredits,
    UnknownAccount,
    UnknownHold,
)
from billing_core.ledger.commands import (
    Adjust,
    CaptureHold,
    ClawBack,
    DebitUsage,
    ExpireGrants,
    ExpireHolds,
    GrantCredits,
    PlaceHold,
    PurchaseCredits,
    ReleaseHold,
    TransferCredits,
)
from billing_core.ledger.grants import PRIORITY_BY_SOURCE
from billing_core.units import format_credits
from tests.integration.conftest import reset_database

pytestmark = pytest.mark.integration

ACCOUNTS = ("acme", "beta", "gamma")
T0 = datetime(2030, 1, 1, tzinfo=UTC)

SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree; failures print their blob instead
    print_blob=True,
    report_multiple_bugs=False,  # shrink one failure, not every distinct one: each re-run costs database time
    # No explain phase: it re-runs failing examples under a tracer, minutes on a database-bound test.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the model -------------------------------------------------------------------------------------------------
class Refused(Exception):
    """The model's prediction that a command fails with ``error`` (and writes nothing)."""

    def __init__(self, error: type[Exception], **details: Any) -> None:
        super().__init__(error.__name__)
        self.error = error
        self.details = details


@dataclass(eq=False)
class MGrant:
    seq: int  # creation order, which is the grants' id order in the database
    account: str
    source: str
    amount: int
    remaining: int
    expires_at: datetime | None
    priority: int
    external_ref: str | None = None

    def spendable(self, now: datetime) -> bool:
        return self.source != "debt" and self.remaining > 0 and (self.expires_at is None or self.expires_at > now)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def spending_order(self) -> tuple[bool, datetime, int, int]:
        # Soonest expiry first, never-expiring after every dated grant, then priority, then creation order.
        return (self.expires_at is None, self.expires_at or T0, self.priority, self.seq)

    def row(self) -> tuple[Any, ...]:
        return (self.source, self.amount, self.remaining, self.expires_at, self.priority, self.external_ref)


@dataclass(eq=False)
class MHold:
    key: str
    account: str
    amount: int
    expires_at: datetime
    allocations: list[tuple[MGrant, int]]  # (grant, amount held from it), in drawing order
    status: str = "pending"
    captured: int | None = None
    hold_id: str | None = None  # known once the database has answered


@dataclass
class Outcome:
    replay_of: str | None = None
    grant: MGrant | None = None
    hold: MHold | None = None
    count: int | None = None  # sweeps


def signature(cmd: Any) -> tuple[str, dict[str, Any]]:
    """What makes two requests the same request: the command type and every field but the key."""
    body = {f.name: getattr(cmd, f.name) for f in dataclasses.fields(cmd) if f.name != "idempotency_key"}
    return type(cmd).__name__, body


@dataclass
class Model:
    now: datetime = T0
    grants: dict[str, list[MGrant]] = field(default_factory=dict)  # the wallets that exist, and their grants
    debt: dict[str, MGrant] = field(default_factory=dict)
    holds: list[MHold] = field(default_factory=list)
    hold_by_id: dict[str, MHold] = field(default_factory=dict)
    system: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SYSTEM_ACCOUNTS, 0))
    keys: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    refs: list[str] = field(default_factory=list)  # external refs given to grants so far
    entries: int = 0
    next_seq: int = 0
    touched: set[str] = field(default_factory=set)

    # -- views -----------------------------------------------------------------------------------------------
    def available(self, account: str) -> int:
        return sum(g.remaining for g in self.grants[account])

    def held(self, account: str) -> int:
        return sum(h.amount for h in self.holds if h.account == account and h.status == "pending")

    def flagged(self, account: str) -> bool:
        debt = self.debt.get(account)
        return debt is not None and debt.remaining < 0

    def spendable_lots(self, account: str) -> list[MGrant]:
        return sorted((g for g in self.grants[account] if g.spendable(self.now)), key=MGrant.spending_order)

    def spendable(self, account: str) -> int:
        return sum(g.remaining for g in self.spendable_lots(account))

    # -- primitives ------------------------------------------------------------------------------------------
    def wallet(self, account: str) -> list[MGrant]:
        if account not in self.grants:
            raise Refused(UnknownAccount, account=account)
        return self.grants[account]

    def post(self, grant: MGrant, amount: int) -> None:
        if amount:
            grant.remaining += amount
            self.touched.add(grant.account)

    def new_grant(
        self,
        account: str,
        source: str,
        amount: int,
        expires_at: datetime | None,
        *,
        priority: int | None = None,
        ref: str | None = None,
    ) -> MGrant:
        self.grants.setdefault(account, [])
        priority = PRIORITY_BY_SOURCE[source] if priority is None else priority
        grant = MGrant(self.next_seq, account, source, amount, 0, expires_at, priority, ref)
        self.next_seq += 1
        self.grants[account].append(grant)
        self.post(grant, amount)
        if ref is not None:
            self.refs.append(ref)
        return grant

    def require(self, account: str, amount: int) -> None:
        available = self.spendable(account)
        if available < amount:
            raise Refused(
                InsufficientCredits,
                account=account,
                required=format_credits(amount),
                available=format_credits(available),
            )

    def draw(self, account: str, amount: int) -> tuple[list[tuple[MGrant, int]], int]:
        draws, left = [], amount
        for grant in self.spendable_lots(account):
            if left == 0:
                break
            take = min(grant.remaining, left)
            self.post(grant, -take)
            draws.append((grant, take))
            left -= take
        return draws, left

    def into_debt(self, account: str, amount: int) -> None:
        if amount == 0:
            return
        debt = self.debt.get(account)
        if debt is None:
            debt = self.debt[account] = self.new_grant(account, "debt", 0, None)
        self.post(debt, -amount)

    def settle_debt(self, account: str) -> None:
        """Credits arriving in a wallet that owes pay the debt first, in spending order."""
        debt = self.debt.get(account)
        if debt is None or debt.remaining == 0:
            return
        draws, _ = self.draw(account, -debt.remaining)
        self.post(debt, sum(take for _, take in draws))

    def settle_hold(self, hold: MHold, capture: int) -> None:
        """The first ``capture`` of the hold, in drawing order, is consumed; the rest goes back to its grants
        (or to expiry, for a grant that has expired meanwhile); a capture above the hold draws the excess."""
        left = capture
        for grant, held in hold.allocations:
            used = min(held, left)
            left -= used
            if held - used:
                if grant.expired(self.now):
                    self.system["expiry"] += held - used
                else:
                    self.post(grant, held - used)
        if left:
            _, shortfall = self.draw(hold.account, left)
            self.into_debt(hold.account, shortfall)
        self.system["usage_revenue"] += capture

    # -- commands --------------------------------------------------------------------------------------------
    def apply(self, cmd: Any) -> Outcome:
        """Apply ``cmd`` to this model (a throwaway copy) or raise ``Refused``."""
        self.touched = set()
        if isinstance(cmd, ExpireHolds):
            outcome = self.expire_holds()
        elif isinstance(cmd, ExpireGrants):
            outcome = self.expire_grants()
        else:
            sig = signature(cmd)
            first = self.keys.get(cmd.idempotency_key)
            if first is not None:
                if first != sig:
                    raise Refused(IdempotencyConflict, idempotency_key=cmd.idempotency_key)
                return Outcome(replay_of=cmd.idempotency_key)
            outcome = getattr(self, "do_" + type(cmd).__name__)(cmd)
            self.keys[cmd.idempotency_key] = sig
            self.entries += 1
        for account in sorted(self.touched):
            self.settle_debt(account)
        return outcome

    def do_PurchaseCredits(self, cmd: PurchaseCredits) -> Outcome:
        grant = self.new_grant(cmd.account, "purchase", cmd.amount_mc, cmd.expires_at, ref=cmd.external_ref)
        self.system["stripe_clearing"] -= cmd.amount_mc
        return Outcome(grant=grant)

    def do_GrantCredits(self, cmd: GrantCredits) -> Outcome:
        grant = self.new_grant(cmd.account, cmd.source, cmd.amount_mc, cmd.expires_at, ref=cmd.external_ref)
        self.system["promotional"] -= cmd.amount_mc
        return Outcome(grant=grant)

    def do_DebitUsage(self, cmd: DebitUsage) -> Outcome:
        self.wallet(cmd.account)
        self.require(cmd.account, cmd.amount_mc)
        self.draw(cmd.account, cmd.amount_mc)
        self.system["usage_revenue"] += cmd.amount_mc
        return Outcome()

    def do_PlaceHold(self, cmd: PlaceHold) -> Outcome:
        self.wallet(cmd.account)
        if self.flagged(cmd.account):
            raise Refused(AccountFlagged, account=cmd.account)
        self.require(cmd.account, cmd.amount_mc)
        draws, _ = self.draw(cmd.account, cmd.amount_mc)
        hold = MHold(
            cmd.idempotency_key, cmd.account, cmd.amount_mc, self.now + timedelta(seconds=cmd.ttl_seconds), draws
        )
        self.holds.append(hold)
        return Outcome(hold=hold)

    def pending_hold(self, hold_id: str) -> MHold:
        hold = self.hold_by_id.get(hold_id)
        if hold is None:
            raise Refused(UnknownHold, hold_id=hold_id)
        if hold.status != "pending":
            raise Refused(HoldNotPending, hold_id=hold_id, status=hold.status)
        return hold

    def do_CaptureHold(self, cmd: CaptureHold) -> Outcome:
        hold = self.pending_hold(cmd.hold_id)
        if hold.expires_at <= self.now:
            raise Refused(HoldNotPending, hold_id=cmd.hold_id, status="expired")
        self.settle_hold(hold, cmd.amount_mc)
        hold.status, hold.captured = "captured", cmd.amount_mc
        return Outcome(hold=hold)

    def do_ReleaseHold(self, cmd: ReleaseHold) -> Outcome:
        hold = self.pending_hold(cmd.hold_id)
        self.settle_hold(hold, 0)
        hold.status = "released"
        return Outcome(hold=hold)

    def do_ClawBack(self, cmd: ClawBack) -> Outcome:
        grants = self.wallet(cmd.account)
        left = cmd.amount_mc
        if cmd.grant_ref:  # first the grants the refunded payment bought, oldest first, if still spendable
            for grant in grants:
                if grant.source != "debt" and grant.external_ref == cmd.grant_ref and grant.spendable(self.now):
                    take = min(grant.remaining, left)
                    self.post(grant, -take)
                    left -= take
        _, shortfall = self.draw(cmd.account, left)
        self.into_debt(cmd.account, shortfall)
        self.system["refunds"] += cmd.amount_mc
        return Outcome()

    def do_Adjust(self, cmd: Adjust) -> Outcome:
        if cmd.amount_mc > 0:
            grant = self.new_grant(cmd.account, "adjustment", cmd.amount_mc, None)
            self.system["adjustments"] -= cmd.amount_mc
            return Outcome(grant=grant)
        self.wallet(cmd.account)
        self.require(cmd.account, -cmd.amount_mc)
        self.draw(cmd.account, -cmd.amount_mc)
        self.system["adjustments"] -= cmd.amount_mc
        return Outcome()

    def do_TransferCredits(self, cmd: TransferCredits) -> Outcome:
        self.wallet(cmd.from_account)
        self.require(cmd.from_account, cmd.amount_mc)
        draws, _ = self.draw(cmd.from_account, cmd.amount_mc)
        self.grants.setdefault(cmd.to_account, [])
        for grant, take in draws:  # what arrives keeps the expiry and priority of the grant it came from
            self.credit_transfer(cmd.to_account, take, grant.expires_at, grant.priority)
        return Outcome()

    def credit_transfer(self, account: str, amount: int, expires_at: datetime | None, priority: int) -> None:
        """Transferred credits join an open transfer lot of the same expiry and priority, else a new one."""
        same = ("transfer", expires_at, priority)
        open_lots = [
            g for g in self.grants[account] if (g.source, g.expires_at, g.priority) == same and g.remaining > 0
        ]
        if not open_lots:
            self.new_grant(account, "transfer", amount, expires_at, priority=priority)
            return
        lot = open_lots[0]  # the oldest: the ledger loads lots in id order
        lot.amount += amount
        self.post(lot, amount)

    def expire_holds(self) -> Outcome:
        due = [h for h in self.holds if h.status == "pending" and h.expires_at <= self.now]
        for hold in due:
            self.settle_hold(hold, 0)
            hold.status = "expired"
        self.entries += len(due)
        return Outcome(count=len(due))

    def expire_grants(self) -> Outcome:
        due = [
            g
            for grants in self.grants.values()
            for g in grants
            if g.source != "debt" and g.expired(self.now) and g.remaining > 0
        ]
        for grant in due:
            self.system["expiry"] += grant.remaining
            self.post(grant, -grant.remaining)
        self.entries += len(due)
        return Outcome(count=len(due))


# -- the machine -----------------------------------------------------------------------------------------------
accounts = st.sampled_from(ACCOUNTS)
# Coarse amounts, so balances often run out exactly; spending is smaller than funding on average.
amounts = st.integers(1, 40).map(lambda n: n * 250)
spend = st.integers(1, 20).map(lambda n: n * 250)
expiry_hours = st.one_of(st.none(), st.integers(1, 4))  # on the hour: grants often expire together
HOLD_CHOICE = st.sampled_from(["pending"] * 6 + ["any"] * 3 + ["unknown"])
PAIRS = [(a, b) for a in ACCOUNTS for b in ACCOUNTS if a != b]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, probe: Any) -> None:
        super().__init__()
        self.probe = probe
        reset_database(probe.engine)
        self.model = Model()
        self.receipts: dict[str, Any] = {}  # key -> the receipt of its first success
        self.history: list[Any] = []  # every keyed command issued, for replays and conflicting reuses
        self.succeeded: list[Any] = []  # those that succeeded
        self.entry_ids: set[int] = set()
        self.counter = 0

    def next_key(self) -> str:
        self.counter += 1
        return f"k{self.counter}"

    def expiry(self, hours: int | None) -> datetime | None:
        if hours is None:
            return None
        return self.model.now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)

    def issue(self, cmd: Any) -> Any:
        trial = copy.deepcopy(self.model)
        try:
            outcome, refused = trial.apply(cmd), None
        except Refused as exc:
            outcome, refused = None, exc
        changes_nothing = refused is not None or outcome.replay_of is not None  # type: ignore[union-attr]
        before = self.probe.snapshot() if changes_nothing else None
        try:
            result = self.probe.run(cmd, now=self.model.now)
        except Exception as exc:
            expected = refused.error.__name__ if refused else "success"
            if refused is None or type(exc) is not refused.error:
                raise AssertionError(
                    f"{cmd!r}: the model expected {expected}, got {type(exc).__name__}: {exc}"
                ) from exc
            details = getattr(exc, "details", {})
            for name, value in refused.details.items():
                assert details.get(name) == value, f"{cmd!r}: {name} is {details.get(name)!r}, expected {value!r}"
            assert self.probe.snapshot() == before, f"{cmd!r} failed with {type(exc).__name__} but wrote something"
            return None
        assert refused is None, f"{cmd!r}: the model expected {refused.error.__name__}, but it succeeded: {result!r}"
        assert outcome is not None
        self.model = trial
        if outcome.count is not None:  # a sweep
            assert result.count == outcome.count, f"{cmd!r} swept {result.count}, expected {outcome.count}"
            assert not self.entry_ids & set(result.entry_ids)
            self.entry_ids.update(result.entry_ids)
        elif outcome.replay_of is not None:
            first = self.receipts[outcome.replay_of]
            assert result.replayed, f"{cmd!r} was not answered as a replay"
            assert (result.entry_id, result.kind, result.grant_id) == (first.entry_id, first.kind, first.grant_id)
            assert (result.hold and result.hold.id) == (first.hold and first.hold.id)
            assert self.probe.snapshot() == before, f"the replay of {cmd!r} changed the ledger"
        else:
            assert not result.replayed and result.entry_id not in self.entry_ids, result
            self.entry_ids.add(result.entry_id)
            self.receipts[cmd.idempotency_key] = result
            self.succeeded.append(cmd)
            assert (result.grant_id is not None) == (outcome.grant is not None), result
            if isinstance(cmd, PlaceHold):
                assert outcome.hold is not None
                assert (result.hold.amount_mc, result.hold.status, result.hold.expires_at) == (
                    outcome.hold.amount,
                    "pending",
                    outcome.hold.expires_at,
                )
                outcome.hold.hold_id = result.hold.id
                self.model.hold_by_id[result.hold.id] = outcome.hold
            elif isinstance(cmd, (CaptureHold, ReleaseHold)):
                assert outcome.hold is not None
                assert (result.hold.id, result.hold.status, result.hold.captured_mc) == (
                    outcome.hold.hold_id,
                    outcome.hold.status,
                    outcome.hold.captured,
                )
        return result

    def issue_new(self, cmd: Any) -> Any:
        self.history.append(cmd)
        return self.issue(cmd)

    @initialize(acme=amounts, beta=amounts, hours=expiry_hours)
    def fund(self, acme: int, beta: int, hours: int | None) -> None:
        """Two accounts start with credits (a purchase, a promotion); the third exists only once credited."""
        key = self.next_key()
        self.issue_new(PurchaseCredits("acme", acme, key, external_ref=f"cs_{key}"))
        self.issue_new(GrantCredits("beta", beta, self.next_key(), expires_at=self.expiry(hours)))

    # -- credits in ------------------------------------------------------------------------------------------
    @rule(account=accounts, amount=amounts, hours=expiry_hours, with_ref=st.booleans())
    def purchase(self, account: str, amount: int, hours: int | None, with_ref: bool) -> None:
        key = self.next_key()
        ref = f"cs_{key}" if with_ref else None
        self.issue_new(PurchaseCredits(account, amount, key, external_ref=ref, expires_at=self.expiry(hours)))

    @rule(
        account=accounts,
        amount=amounts,
        source=st.sampled_from(["promotional", "plan"]),
        hours=expiry_hours,
        with_ref=st.booleans(),
    )
    def grant(self, account: str, amount: int, source: str, hours: int | None, with_ref: bool) -> None:
        key = self.next_key()
        ref = f"promo_{key}" if with_ref else None
        self.issue_new(
            GrantCredits(account, amount, key, source=source, expires_at=self.expiry(hours), external_ref=ref)
        )

    @rule(account=accounts, amount=amounts, negative=st.booleans())
    def adjust(self, account: str, amount: int, negative: bool) -> None:
        signed = -amount if negative else amount
        self.issue_new(Adjust(account, signed, self.next_key(), reason="correction", actor="ops@example.com"))

    # -- credits out -----------------------------------------------------------------------------------------
    @rule(account=accounts, amount=spend)
    def debit(self, account: str, amount: int) -> None:
        self.issue_new(DebitUsage(account, amount, self.next_key()))

    @rule(
        account=accounts,
        amount=amounts,
        pick=st.integers(0, 2**16),
        use_ref=st.booleans(),
        reason=st.sampled_from(["refund", "dispute"]),
    )
    def claw_back(self, account: str, amount: int, pick: int, use_ref: bool, reason: str) -> None:
        refs = [*self.model.refs, "cs_never_used"]
        ref = refs[pick % len(refs)] if use_ref else None
        self.issue_new(ClawBack(account, amount, self.next_key(), reason=reason, grant_ref=ref))

    @rule(pair=st.sampled_from(PAIRS), amount=spend)
    def transfer(self, pair: tuple[str, str], amount: int) -> None:
        self.issue_new(TransferCredits(pair[0], pair[1], amount, self.next_key()))

    # -- holds -----------------------------------------------------------------------------------------------
    @rule(account=accounts, amount=spend, ttl=st.sampled_from([60, 1800, 3600, 4 * 3600]))
    def place_hold(self, account: str, amount: int, ttl: int) -> None:
        self.issue_new(PlaceHold(account, amount, self.next_key(), ttl_seconds=ttl))

    def pick_hold(self, pick: int, which: str) -> tuple[str, int]:
        """A hold id and its amount: mostly a pending hold, sometimes any hold, rarely one that does not exist."""
        pending = [h for h in self.model.holds if h.status == "pending"]
        if which == "unknown":
            return "hold_unknown", 1_000
        candidates = pending if which == "pending" and pending else self.model.holds
        hold = candidates[pick % len(candidates)]
        assert hold.hold_id is not None
        return hold.hold_id, hold.amount

    @precondition(lambda self: self.model.holds)
    @rule(
        pick=st.integers(0, 2**16),
        which=HOLD_CHOICE,
        how=st.sampled_from(["zero", "below", "equal", "above", "far_above"]),
    )
    def capture(self, pick: int, which: str, how: str) -> None:
        hold_id, held = self.pick_hold(pick, which)
        amount = {"zero": 0, "below": held // 2, "equal": held, "above": held + 250, "far_above": held + 5_000}[how]
        self.issue_new(CaptureHold(hold_id, amount, self.next_key()))

    @precondition(lambda self: self.model.holds)
    @rule(pick=st.integers(0, 2**16), which=HOLD_CHOICE)
    def release(self, pick: int, which: str) -> None:
        hold_id, _ = self.pick_hold(pick, which)
        self.issue_new(ReleaseHold(hold_id, self.next_key()))

    # -- time ------------------------------------------------------------------------------------------------
    @rule(minutes=st.sampled_from([10, 30, 60, 90, 180]))
    def advance_clock(self, minutes: int) -> None:
        self.model.now += timedelta(minutes=minutes)

    @rule(minutes=st.sampled_from([0, 30, 60, 240]))
    def expire_holds(self, minutes: int) -> None:
        self.model.now += timedelta(minutes=minutes)
        self.issue(ExpireHolds(now=self.model.now))

    @rule(minutes=st.sampled_from([0, 30, 60, 240]))
    def expire_grants(self, minutes: int) -> None:
        self.model.now += timedelta(minutes=minutes)
        self.issue(ExpireGrants(now=self.model.now))

    # -- idempotency -----------------------------------------------------------------------------------------
    def earlier(self, pick: int, succeeded: bool) -> Any:
        commands = self.succeeded if succeeded and self.succeeded else self.history
        return commands[pick % len(commands)]

    @precondition(lambda self: self.history)
    @rule(pick=st.integers(0, 2**16), succeeded=st.booleans())
    def replay(self, pick: int, succeeded: bool) -> None:
        """The same key and body again: a replay if it succeeded the first time, else simply run again."""
        self.issue(self.earlier(pick, succeeded))

    @precondition(lambda self: self.history)
    @rule(pick=st.integers(0, 2**16), succeeded=st.booleans())
    def reuse_key(self, pick: int, succeeded: bool) -> None:
        """The same key with another body: a conflict if the key was used, else a new command."""
        cmd = self.earlier(pick, succeeded)
        self.counter += 1
        if isinstance(cmd, ReleaseHold):
            other: Any = CaptureHold(cmd.hold_id, 0, cmd.idempotency_key)
        else:
            other = dataclasses.replace(cmd, metadata={"variant": self.counter})
        self.issue_new(other)

    # -- after every step ------------------------------------------------------------------------------------
    @invariant()
    def ledger_matches_model(self) -> None:
        m, probe = self.model, self.probe
        for account in ACCOUNTS:
            view = probe.wallet(account)
            if account not in m.grants:
                assert view is None, f"{account} has a wallet the model does not know"
                continue
            assert view is not None, f"{account} has no wallet"
            expected = (m.available(account), m.held(account), m.flagged(account))
            assert (view.available_mc, view.held_mc, view.flagged) == expected, (
                f"{account}: (available, held, flagged) is {(view.available_mc, view.held_mc, view.flagged)}, "
                f"the model says {expected}"
            )
        rows = probe.rows(
            "SELECT w.account, g.source, g.amount_mc, g.remaining_mc, g.expires_at, g.priority, g.external_ref "
            "FROM grants g JOIN wallets w ON w.id = g.wallet_id ORDER BY g.id"
        )
        for account in ACCOUNTS:
            actual = [tuple(r[1:]) for r in rows if r[0] == account]
            expected_rows = [g.row() for g in m.grants.get(account, [])]
            assert actual == expected_rows, f"{account}: grants\n{actual}\nthe model says\n{expected_rows}"
        holds = probe.rows("SELECT id, amount_mc, status, captured_mc, expires_at FROM holds ORDER BY id")
        expected_holds = sorted((h.hold_id, h.amount, h.status, h.captured, h.expires_at) for h in m.holds)
        assert [tuple(h) for h in holds] == expected_holds, f"holds\n{holds}\nthe model says\n{expected_holds}"
        for kind in SYSTEM_ACCOUNTS:
            assert probe.system(kind) == m.system[kind], f"system:{kind} is {probe.system(kind)}, not {m.system[kind]}"
        assert probe.scalar("SELECT count(*) FROM ledger_entries") == m.entries
        probe.assert_consistent()


def test_random_command_sequences_match_the_model(probe):
    # The model spends in the documented order; make sure the priorities it reads still say that order.
    order = ["promotional", "plan", "adjustment", "transfer", "purchase"]
    assert sorted(order, key=PRIORITY_BY_SOURCE.__getitem__) == order
    run_state_machine_as_test(lambda: LedgerMachine(probe), settings=SETTINGS)


def test_fixed_walk_through_paths_random_runs_reach_rarely(probe):
    """The same machine, driven by hand: a transfer that could join either of two open lots (the oldest takes
    it), a hold whose grant expires before it is settled, a capture refused past the hold's TTL, and
    a wallet that goes into debt, is paid off, and is clawed back again. The model is checked after each step."""
    m = LedgerMachine(probe)
    steps: list[tuple[Callable[[], None], Callable[[Model], bool]]] = [
        (lambda: m.fund(acme=10_000, beta=1_000, hours=1), lambda model: True),
        (lambda: m.transfer(("acme", "gamma"), 1_000), lambda model: True),  # gamma: transfer lot A
        (lambda: m.place_hold("gamma", 1_000, 3600), lambda model: True),  # A all held: remaining 0
        (lambda: m.transfer(("acme", "gamma"), 1_000), lambda model: True),  # no open lot to join: lot B
        (  # A open again
            lambda: m.release(0, "pending"),
            lambda model: [g.remaining for g in model.grants["gamma"]] == [1_000, 1_000],
        ),
        (  # could join A or B: A, the older, takes it
            lambda: m.transfer(("acme", "gamma"), 500),
            lambda model: [g.remaining for g in model.grants["gamma"]] == [1_500, 1_000],
        ),
        (lambda: m.place_hold("beta", 1_000, 4 * 3600), lambda model: True),  # beta's promotion, expiring at 01:00
        (lambda: m.advance_clock(90), lambda model: True),
        (  # the 500 not captured go to expiry: their grant has expired
            lambda: m.capture(0, "pending", "below"),
            lambda model: model.system["expiry"] == 500,
        ),
        (lambda: m.place_hold("acme", 1_000, 60), lambda model: True),
        (lambda: m.advance_clock(10), lambda model: True),
        (  # past its TTL but not swept yet: refused, the hold stays pending until the sweeper releases it
            lambda: m.capture(0, "pending", "above"),
            lambda model: model.holds[-1].status == "pending",
        ),
        (lambda: m.claw_back("gamma", 5_000, 0, False, "refund"), lambda model: model.flagged("gamma")),
        (lambda: m.purchase("gamma", 5_000, None, False), lambda model: not model.flagged("gamma")),
        (  # into debt again
            lambda: m.claw_back("gamma", 5_000, 0, False, "dispute"),
            lambda model: model.flagged("gamma"),
        ),
        (lambda: m.expire_grants(0), lambda model: True),
        (lambda: m.expire_holds(0), lambda model: True),
    ]
    m.ledger_matches_model()
    for number, (action, expectation) in enumerate(steps, 1):
        action()
        m.ledger_matches_model()
        assert expectation(m.model), f"step {number}"
    m.teardown()
