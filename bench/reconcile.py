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
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command as alembic_command
from sqlalchemy import text
from werkzeug.serving import make_server

from bench.cpu import machine_jiffies
from billing_cli.schema import alembic_config
from billing_cli.throwaway import ThrowawayPostgres
from billing_core.db.engine import make_engine, make_session_factory
from billing_core.reconcile.events import reconcile_events
from billing_core.reconcile.pacing import pacer
from billing_core.stripe.gateway import StripeGateway
from stripe_emulator import EmulatorState, create_app
from stripe_emulator.app import _QuietRequestHandler

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


def measure(args: argparse.Namespace, url: str) -> int:

    state = EmulatorState()
    print(f"bench.reconcile: {args.objects} events into the emulator", file=sys.stderr)
    populate(state, args.objects)
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
    try:
        print("bench.reconcile: seeding the inbox (unpaced)", file=sys.stderr)
        seed = reconcile_events(session_factory, gateway, since=since, pace=pacer(1e9), process=lambda _id: "ignored")
        with engine.begin() as conn:  # as a worker would leave them: handled (no handler for their type)
            conn.execute(text("UPDATE stripe_events SET status = 'ignored', processed_at = now()"))
        app.extensions["stripe_emulator"].api_faults.configure({"requests_per_second": args.limit, "retry_after": 1})
        print(f"bench.reconcile: measured pass ({args.limit} req/s limit, paced at {args.rps})", file=sys.stderr)
        pace = pacer(args.rps)
        load_before, jiffies_before, cpu_before = os.getloadavg(), machine_jiffies(), time.process_time()
        started = time.perf_counter()
        run = reconcile_events(session_factory, gateway, since=since, pace=pace)
        seconds = time.perf_counter() - started
        cpu, jiffies_after = time.process_time() - cpu_before, machine_jiffies()
    finally:
        server.shutdown()
        engine.dispose()
    ceiling = args.limit * 100
    pages = max(run.counts.get("pages", 0), 1)
    machine: dict[str, Any] = {"cores": os.cpu_count(), "load_before": [round(v, 2) for v in load_before]}
    if jiffies_before is not None and jiffies_after is not None:
        busy = (jiffies_after[0] - jiffies_before[0]) / max(jiffies_after[1] - jiffies_before[1], 1)
        machine["busy_share"] = round(busy, 3)
        # Cores busy with anything but this process (PostgreSQL's share for the pass included): other work.
        machine["other_cores"] = round(busy * (os.cpu_count() or 1) - cpu / seconds, 2)
    rate = run.counts.get("read", 0) / seconds if seconds else 0.0
    print(
        json.dumps(
            {
                "objects": args.objects,
                "seeded": seed.counts.get("missing", 0),
                "read": run.counts.get("read", 0),
                "missing": run.counts.get("missing", 0),
                "requests": run.counts.get("requests", 0),
                "rate_limited": run.counts.get("rate_limited", 0),
                "seconds": round(seconds, 3),
                "objects_per_second": round(rate, 1),
                "ceiling_objects_per_second": ceiling,
                "fraction_of_ceiling": round(rate / ceiling, 3),
                "goal_met": rate >= 0.8 * ceiling,
                "pages_per_second": round(run.counts.get("pages", 0) / seconds, 1),
                # This process: the pass and the emulator answering it (one interpreter, one GIL).
                "process_cpu_ms_per_page": round(cpu * 1000 / pages, 2),
                "process_cores": round(cpu / seconds, 2),
                "machine": machine,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
