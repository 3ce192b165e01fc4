"""Reconciliation's throughput: Stripe objects checked per second by the events pass, against an emulator that
answers at most ``--limit`` requests per second (429 with ``Retry-After`` beyond it, as Stripe's limiter does).

    .venv/bin/python -m bench.reconcile [--database-url URL] [--objects 100000] [--limit 100] [--rps 95]

``URL``: a PostgreSQL database migrated to head (``billing db upgrade``); its ``stripe_events`` and
``reconciliation_*`` rows are emptied first. Without it, a durable (fsync on) throwaway cluster is started,
migrated, and removed at the end. The emulator runs in this process (its HTTP server on threads, sharing the
interpreter with the pass) with ``--objects`` events put straight into its state (a customer each). A first,
unpaced pass stores them all in the inbox (nothing is applied: their type has no handler); the measured pass
then reads the same window again, paced at ``--rps``, where nothing is missing: the steady state of a 15-minute
run, scaled up. The ceiling is ``--limit`` pages of 100 per second; the goal (reported, never asserted) is 80 %
of it (8,000 objects/s for the defaults).

Besides the rate, the JSON reports this process's CPU per page (the pass and the emulator answering it) and
the machine's state during the pass: ``other_cores`` is the CPU used by everything else (PostgreSQL included),
so a figure taken while other work runs on the machine says so. One JSON object goes to stdout, progress to
stderr. The daily objects pass is not measured here (yet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command as alembic_command
from sqlalchemy import text
from werkzeug.serving import make_server

from bench.cpu import machine_jiffies
from billing_cli.schema import alembic_config
from billing_cli.throwaway import ThrowawayPostgres
from billing_core.db.engine import make_engine, make_session_factory
from billing_core.reconcile.events import RunReport, reconcile_events
from billing_core.reconcile.objects import reconcile_objects
from billing_core.reconcile.pacing import pacer
from billing_core.stripe.gateway import StripeGateway
from stripe_emulator import EmulatorState, create_app
from stripe_emulator.app import _QuietRequestHandler
from stripe_emulator.state.store import template

API_KEY = "sk_test_bench_reconcile"
BENCH_DB = "bench_reconcile"


def populate(state: EmulatorState, count: int) -> None:
    with state.lock:
        for n in range(count):
            state.record_event("customer.bench", {"id": f"cus_bench{n:07d}", "object": "customer", "metadata": {}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: a throwaway (durable) cluster, migrated, then removed")
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=100, help="the emulator's requests per second")
    parser.add_argument("--rps", type=float, default=95.0, help="the pass's own pace")
    parser.add_argument(
        "--sessions", type=int, default=0, help="also measure the daily objects pass over this many paid sessions"
    )
    args = parser.parse_args(argv)
    cluster: ThrowawayPostgres | None = None
    try:
        if args.database_url:
            url = args.database_url
        else:
            print("bench.reconcile: starting a durable throwaway PostgreSQL cluster", file=sys.stderr)
            cluster = ThrowawayPostgres(durable=True).start()
            cluster.create_database(BENCH_DB)
            url = cluster.url(BENCH_DB)
            alembic_command.upgrade(alembic_config(url), "head")
        return measure(args, url)
    finally:
        if cluster is not None:
            cluster.stop()


def populate_sessions(state: EmulatorState, count: int) -> None:
    """``count`` paid Checkout Sessions of a 10-credit package, over 100 accounts (the objects pass's input)."""
    with state.lock:
        for n in range(count):
            session = template("checkout.session")
            session.update(
                id=f"cs_bench{n:07d}",
                created=state.now(),
                mode="payment",
                status="complete",
                payment_status="paid",
                amount_total=1000,
                currency="usd",
                customer=None,
                client_reference_id=None,
                payment_intent=f"pi_bench{n:07d}",
                metadata={"account": f"bench-{n % 100:02d}", "package": "bench", "credits": "10"},
            )
            state.add("checkout.session", session)


@dataclass
class Timed:
    counts: dict[str, int]
    seconds: float
    cpu: float
    load_before: tuple[float, float, float]
    jiffies: tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]

    def figures(self, ceiling: int) -> dict[str, Any]:
        read, pages = self.counts.get("read", 0), max(self.counts.get("pages", self.counts.get("requests", 0)), 1)
        rate = read / self.seconds if self.seconds else 0.0
        machine: dict[str, Any] = {"cores": os.cpu_count(), "load_before": [round(v, 2) for v in self.load_before]}
        before, after = self.jiffies
        if before is not None and after is not None:
            busy = (after[0] - before[0]) / max(after[1] - before[1], 1)
            machine["busy_share"] = round(busy, 3)
            # Cores busy with anything but this process (PostgreSQL's share for the pass included): other work.
            machine["other_cores"] = round(busy * (os.cpu_count() or 1) - self.cpu / self.seconds, 2)
        return {
            "read": read,
            "missing": self.counts.get("missing", 0),
            "requests": self.counts.get("requests", 0),
            "rate_limited": self.counts.get("rate_limited", 0),
            "seconds": round(self.seconds, 3),
            "objects_per_second": round(rate, 1),
            "ceiling_objects_per_second": ceiling,
            "fraction_of_ceiling": round(rate / ceiling, 3),
            "goal_met": rate >= 0.8 * ceiling,
            "pages_per_second": round(pages / self.seconds, 1),
            # This process: the pass and the emulator answering it (one interpreter, one GIL).
            "process_cpu_ms_per_page": round(self.cpu * 1000 / pages, 2),
            "process_cores": round(self.cpu / self.seconds, 2),
            "machine": machine,
        }


def timed(run: Callable[[], RunReport]) -> Timed:
    load, jiffies, cpu = os.getloadavg(), machine_jiffies(), time.process_time()
    started = time.perf_counter()
    report = run()
    seconds = time.perf_counter() - started
    return Timed(report.counts, seconds, time.process_time() - cpu, load, (jiffies, machine_jiffies()))


def measure(args: argparse.Namespace, url: str) -> int:
    state = EmulatorState()
    print(f"bench.reconcile: {args.objects} events, {args.sessions} sessions into the emulator", file=sys.stderr)
    populate(state, args.objects)
    populate_sessions(state, args.sessions)
    app = create_app(state)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    gateway = StripeGateway(API_KEY, api_base=base)
    engine = make_engine(url)
    session_factory = make_session_factory(engine)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE stripe_events, discrepancies, reconciliation_runs, reconciliation_checkpoints"))
    since = datetime.now(UTC) - timedelta(days=1)
    out: dict[str, Any] = {"objects": args.objects}
    try:
        print("bench.reconcile: seeding the inbox (unpaced)", file=sys.stderr)
        seed = reconcile_events(session_factory, gateway, since=since, pace=pacer(1e9), process=lambda _id: "ignored")
        out["seeded"] = seed.counts.get("missing", 0)
        with engine.begin() as conn:  # as a worker would leave them: handled (no handler for their type)
            conn.execute(text("UPDATE stripe_events SET status = 'ignored', processed_at = now()"))
        if args.sessions:
            print("bench.reconcile: crediting the sessions (an unpaced objects pass)", file=sys.stderr)
            credited = reconcile_objects(session_factory, gateway, days=1, pace=pacer(1e9))
            out["objects_pass_seeded"] = credited.counts.get("applied", 0)
        app.extensions["stripe_emulator"].api_faults.configure({"requests_per_second": args.limit, "retry_after": 1})
        print(f"bench.reconcile: measured pass ({args.limit} req/s limit, paced at {args.rps})", file=sys.stderr)
        events = timed(lambda: reconcile_events(session_factory, gateway, since=since, pace=pacer(args.rps)))
        out.update(events.figures(args.limit * 100))
        if args.sessions:
            print("bench.reconcile: measured objects pass", file=sys.stderr)
            objects = timed(lambda: reconcile_objects(session_factory, gateway, days=1, pace=pacer(args.rps)))
            out["objects_pass"] = {"sessions": args.sessions, **objects.figures(args.limit * 100)}
    finally:
        server.shutdown()
        engine.dispose()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
