"""Races on real PostgreSQL: many connections at once on the same wallets."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from billing_core.errors import InsufficientCredits
from billing_core.ledger.batch_debit import APPLIED, DUPLICATE, apply_usage_batch
from billing_core.ledger.commands import CaptureHold, DebitUsage, PlaceHold, PurchaseCredits, TransferCredits

pytestmark = pytest.mark.integration


def deadlocks(probe) -> int:
    return probe.scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")


class BalanceWatcher:
    """Polls a wallet's available balance from its own connection while a race runs; keeps the minimum."""

    def __init__(self, probe, account: str) -> None:
        self.probe, self.account = probe, account
        self.minimum: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.probe.available(self.account)
            self.minimum = value if self.minimum is None else min(self.minimum, value)
            self.samples += 1

    def __enter__(self) -> BalanceWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_or_refused(probe, cmd) -> str:
    """``ok``, or ``refused`` when the wallet was short."""
    try:
        probe.run(cmd)
        return "ok"
    except InsufficientCredits:
        return "refused"


def test_64_threads_on_a_wallet_with_enough_for_10_exactly_10_succeed(probe):
    # given a wallet holding exactly ten units of 1,000 mc
    probe.run(PurchaseCredits("hot", 10_000, "buy"))
    start = threading.Barrier(64)

    def attempt(i: int) -> str:
        cmd = PlaceHold("hot", 1_000, f"h{i}") if i % 2 else DebitUsage("hot", 1_000, f"d{i}")
        start.wait()
        return run_or_refused(probe, cmd)

    # when 64 threads place holds and debits at the same instant
    with BalanceWatcher(probe, "hot") as watcher, ThreadPoolExecutor(64) as pool:
        results = list(pool.map(attempt, range(64)))

    # then exactly ten succeed, and the balance ends at zero without ever going below
    assert results.count("ok") == 10
    assert results.count("refused") == 54
    view = probe.wallet("hot")
    held = probe.scalar("SELECT coalesce(sum(amount_mc), 0) FROM holds WHERE status = 'pending'")
    assert view.available_mc == 0
    assert view.held_mc == held
    assert probe.system("usage_revenue") + held == 10_000
    assert watcher.samples > 0 and watcher.minimum >= 0
    probe.assert_consistent()


def test_captures_above_their_holds_racing_debits_read_the_grants_each_left(probe):
    # given a wallet of 20 units with ten holds of one unit each (10 units left available)
    probe.run(PurchaseCredits("hot", 20_000, "buy"))
    holds = [probe.run(PlaceHold("hot", 1_000, f"h{i}")).hold.id for i in range(10)]
    start = threading.Barrier(20)

    def attempt(i: int) -> str:
        # a capture of 1.5 units takes its excess from available; a debit takes a whole unit
        cmd = CaptureHold(holds[i // 2], 1_500, f"c{i}") if i % 2 else DebitUsage("hot", 1_000, f"d{i}")
        start.wait()
        return run_or_refused(probe, cmd)

    # when the captures and the debits all run at once (each locks the wallet, then reads its grants in the
    # same round trip: a read from before the lock would spend credits another had just taken)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))

    # then every capture lands (what it finds short is debt); the debits that found a unit took it
    debits_ok = sum(1 for i, r in enumerate(results) if i % 2 == 0 and r == "ok")
    assert all(r == "ok" for i, r in enumerate(results) if i % 2)
    view = probe.wallet("hot")
    assert view.held_mc == 0
    # 20 units = 15 captured + the debits' units + what is left (a capture may run the wallet into debt)
    assert probe.system("usage_revenue") == 15_000 + 1_000 * debits_ok
    assert view.available_mc == 20_000 - 15_000 - 1_000 * debits_ok
    assert view.flagged == (view.available_mc < 0)  # what a capture could not find became debt
    probe.assert_consistent()  # every grant's remaining adds up to its balance: no grant was read stale


def test_opposite_transfers_between_two_wallets_never_deadlock_and_net_to_zero(probe):
    # given two wallets
    probe.run(PurchaseCredits("alice", 1_000_000, "buy-a"))
    probe.run(PurchaseCredits("bob", 1_000_000, "buy-b"))
    deadlocks_before = deadlocks(probe)
    jobs = [("alice", "bob", i) for i in range(500)] + [("bob", "alice", i) for i in range(500)]
    jobs.sort(key=lambda j: (j[2], j[0]))  # interleave the two directions

    def transfer(job: tuple[str, str, int]) -> int:
        src, dst, i = job
        return probe.run(TransferCredits(src, dst, 1_000, f"{src}->{dst}:{i}")).entry_id

    # when 500 transfers go each way, concurrently
    with ThreadPoolExecutor(16) as pool:
        entry_ids = list(pool.map(transfer, jobs))

    # then every transfer landed once, PostgreSQL saw no deadlock, and the two wallets net to zero
    assert len(set(entry_ids)) == 1_000
    assert deadlocks(probe) == deadlocks_before
    assert probe.available("alice") == 1_000_000
    assert probe.available("bob") == 1_000_000
    assert probe.scalar("SELECT count(*) FROM ledger_entries WHERE kind = 'transfer'") == 1_000
    probe.assert_consistent()


def test_the_same_usage_racing_in_two_batches_lands_once(probe, session_factory):
    # given wallets and a batch that two workers both picked up (at-least-once delivery)
    for account in ("a", "b", "c"):
        probe.run(PurchaseCredits(account, 100_000, f"buy-{account}"))
    reports = [DebitUsage(("a", "b", "c")[i % 3], 10 + i, f"u{i}") for i in range(300)]
    start = threading.Barrier(2)
    deadlocks_before = deadlocks(probe)

    def worker(order: list[DebitUsage]):
        start.wait()
        return apply_usage_batch(session_factory, order)

    # when both apply it at once, in different orders
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(worker, [reports, list(reversed(reports))])

    # then each report was applied by exactly one of them and is a duplicate for the other
    statuses = {}
    for outcome in first + second:
        statuses.setdefault(outcome.idempotency_key, []).append(outcome.status)
    assert all(sorted(s) == [APPLIED, DUPLICATE] for s in statuses.values()), statuses
    assert probe.system("usage_revenue") == sum(r.amount_mc for r in reports)
    assert probe.scalar("SELECT count(*) FROM ledger_entries WHERE kind = 'usage'") == 300
    assert deadlocks(probe) == deadlocks_before
    probe.assert_consistent()


def test_first_naming_of_a_new_account_from_many_threads_makes_one_wallet(probe):
    start = threading.Barrier(16)

    def buy(i: int) -> None:
        start.wait()
        probe.run(PurchaseCredits("newcomer", 1_000, f"buy-{i}"))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(buy, range(16)))
    assert probe.scalar("SELECT count(*) FROM wallets WHERE account = 'newcomer'") == 1
    assert probe.available("newcomer") == 16_000
    codes = probe.rows("SELECT code FROM ledger_accounts WHERE code LIKE :pattern ORDER BY code", pattern="%:newcomer")
    assert [c.code for c in codes] == ["available:newcomer", "held:newcomer"]


def test_a_command_survives_its_pooled_connection_being_killed(probe, session_factory):
    # given a pool whose connections the server has since terminated (a restart or failover)
    probe.run(PurchaseCredits("acme", 1_000, "buy"))
    url = probe.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'billing'"
        ).fetchone()[0]
    assert killed >= 1
    # when the next command takes one of them, then it is retried on a fresh connection and lands once
    receipt = probe.run(DebitUsage("acme", 100, "after-restart"))
    assert not receipt.replayed
    assert probe.available("acme") == 900


def test_racing_debits_across_the_low_balance_threshold_notify_once_and_deplete_once(probe):
    # given 2,000 credits, the default 1,000-credit threshold, and 20 threads spending 100 credits each at once
    probe.run(PurchaseCredits("watched", 2_000_000, "buy"))
    start = threading.Barrier(20)

    def spend(i: int) -> None:
        start.wait()
        probe.run(DebitUsage("watched", 100_000, f"spend-{i}"))

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(spend, range(20)))

    # then the one debit that crossed 1,000 wrote the low-balance notice and the one that reached zero the
    # depleted one: each flush compares the balance its own UPDATE returned, never one read before a lock wait
    notices = probe.rows(
        "SELECT kind, payload->>'available' AS available FROM notifications "
        "WHERE account = 'watched' AND channel = 'email' ORDER BY id"
    )
    assert [(n.kind, n.available) for n in notices] == [("low_balance", "900.000"), ("balance_depleted", "0.000")]
    assert probe.wallet("watched").available_mc == 0
    probe.assert_consistent()
