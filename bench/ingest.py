"""Intake throughput of the real processes: usage reports end to end, and signed Stripe webhooks per second.

    .venv/bin/python -m bench.ingest [--events 100000] [--seconds 8] [--rounds 3] [--skip-usage] [--skip-webhooks]
                                     [--database-url URL] [--redis-url URL] [--no-access-log] ...

Set-up: a durable (fsync on) throwaway PostgreSQL, migrated to head, and a throwaway Redis (unless
``--database-url`` / ``--redis-url`` name existing ones); an admin API key; ``--accounts`` wallets funded by an
admin grant each. Then the production processes, as the Procfile runs them: gunicorn serving
``webhook_receiver:create_app()`` (the Procfile's worker class and default of 2 workers, access log on unless
``--no-access-log``) and a Celery worker
(``--concurrency 2 --without-mingle --without-gossip``); no beat (the sweeper only repairs lost messages).

* usage: ``--client-threads`` threads (``requests.Session`` each) POST pre-serialized batches of ``--batch-size``
  reports to ``/v1/usage`` until ``--events`` reports are stored; the run ends when the last one is applied
  (polled on the open-rows index, confirmed with ``count(*) ... status = 'applied'``). Figures: events/s from
  the first POST to the last applied, the receiver's own accept rate (the POSTs alone), latency from
  acceptance to applied (``applied_at - received_at``, both ``now()`` of their transactions, so the apply
  transaction's own length is not in it), and the CPU of every process group.
* webhooks: signed ``customer.updated`` events (unique ids, ``Stripe-Signature`` made before the timed part)
  POSTed for ``--seconds`` to a bare Flask endpoint (``bench.bare_app``) served the same way, then to the
  receiver, taking turns for ``--rounds`` rounds with the worker paused (SIGSTOP) throughout: ``ratio`` is
  the receiver's requests over the bare endpoint's, all rounds together (the web process's own figure), and
  ``ratio_by_round`` each round's. First the database is vacuumed and checkpointed, so that what the usage
  part left to do in the background lands in neither side's windows. Then the backlog left is drained by the
  worker alone (``worker_events_per_s``), then the receiver runs with the worker handling events as they
  come on the same cores (``ratio_with_worker``). ``--receiver-only`` stops after the rounds.
  The client is ``--client-procs`` processes x
  ``--client-conns`` connections, each sending pre-built raw HTTP/1.1 requests on a socket (gunicorn's sync
  workers close the connection after each response, so every request opens one); its CPU is reported so that
  a saturated client shows.

CPU is read from /proc (utime + stime of each process group, plus what their leaders reaped from exited
children): ``web`` (gunicorn), ``bare``, ``worker`` (celery), ``postgres``, ``redis`` (throwaway servers only)
and ``client`` (this process and its client processes), as cores used over the window and CPU per event or
request; ``machine_busy`` is the whole machine's share, ``elsewhere_cores`` what processes this benchmark did
not start used meanwhile (another test run skews every figure), ``interrupts_cores`` the kernel's irq/softirq.

One JSON object goes to stdout, progress to stderr. Goals (reported, never asserted): usage >= 10,000 events/s,
webhooks ratio >= 0.5. Every process and server started here is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import requests
import stripe
from alembic import command as alembic_command
from sqlalchemy import event

from bench.cpu import machine_jiffies
from billing_cli.dev_stack import web_worker_class
from billing_cli.schema import alembic_config
from billing_cli.throwaway import ThrowawayPostgres, ThrowawayRedis, free_port
from billing_core.accounts.api_keys import create_api_key
from billing_core.db.engine import make_engine, make_session_factory
from billing_core.ledger.commands import GrantCredits
from billing_core.ledger.handlers import execute
from billing_core.settings import libpq_url, sqlalchemy_url

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BENCH_DB = "bench_ingest"
GRANT_MC = 10**12  # a billion credits per wallet: no report is ever refused for want of credits
USAGE_GOAL = 10_000  # events/s (reported, not enforced)
RATIO_GOAL = 0.5  # web_rps / bare_rps (reported, not enforced)
WEBHOOK_PATH = "/webhooks/stripe"
FIXTURES = ROOT.parent / "shared" / "stripe" / "fixtures3.json"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def log(message: str) -> None:
    print(f"[bench.ingest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# -- CPU accounting -----------------------------------------------------------------------------------


def _proc_stats() -> dict[int, tuple[int, int, float, float]]:
    """pid -> (ppid, process group, own user+system seconds, reaped children's user+system seconds)."""
    out: dict[int, tuple[int, int, float, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "pid (comm)": [0] state, [1] ppid, [2] pgrp, [11] utime, [12] stime, [13] cutime, [14] cstime
        own = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        reaped = (int(fields[13]) + int(fields[14])) / _CLK_TCK
        out[int(name)] = (int(fields[1]), int(fields[2]), own, reaped)
    return out


@dataclass(frozen=True)
class CpuSample:
    wall: float
    groups: dict[str, float]
    machine: tuple[int, int, int] | None


@dataclass
class CpuMeter:
    """CPU seconds by process group. A group is a leader pid plus its members; what the leader reaped from
    exited members (cutime + cstime) is added, so a backend that exits mid-window still counts."""

    leaders: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (pid, "pgrp" | "children")

    def track(self, name: str, pid: int | None, how: str) -> None:
        if pid is not None:
            self.leaders[name] = (pid, how)

    def forget(self, name: str) -> None:
        self.leaders.pop(name, None)

    def sample(self) -> CpuSample:
        stats = _proc_stats() if os.path.isdir("/proc") else {}
        me, my_group = os.getpid(), os.getpgrp()
        totals: dict[str, float] = {name: 0.0 for name in self.leaders}
        totals["client"] = 0.0
        elsewhere = 0.0
        for pid, (ppid, pgrp, own, reaped) in stats.items():
            for name, (leader, how) in self.leaders.items():
                member = pgrp == leader if how == "pgrp" else pid == leader or ppid == leader
                if member:
                    totals[name] += own + (reaped if pid == leader else 0.0)
                    break
            else:
                if pid == me or (ppid == me and pgrp == my_group):
                    totals["client"] += own
                else:
                    elsewhere += own + reaped  # other users of the machine (a test run...), kernel threads
        t = os.times()
        totals["client"] += t.children_user + t.children_system  # client processes already reaped
        return CpuSample(time.perf_counter(), {**totals, "elsewhere": elsewhere}, machine_jiffies())

    @staticmethod
    def usage(a: CpuSample, b: CpuSample, units: int, unit: str) -> dict[str, Any]:
        """Cores used by each group over the window and its CPU per unit of work; ``elsewhere`` is every
        process this benchmark did not start, ``interrupts`` the kernel's irq + softirq time (not charged to
        any process), ``unaccounted`` what is left of the machine's busy time."""
        wall = b.wall - a.wall
        out: dict[str, Any] = {}
        used = 0.0
        for name, cpu in b.groups.items():
            if name not in a.groups:
                continue
            seconds = max(0.0, cpu - a.groups[name])
            used += seconds
            if name == "elsewhere":
                out["elsewhere_cores"] = round(seconds / wall, 2)
                continue
            out[name] = {
                "cores": round(seconds / wall, 2),
                "machine_share": round(seconds / wall / (os.cpu_count() or 1), 3),
                f"cpu_us_per_{unit}": round(seconds / units * 1e6, 1) if units else None,
            }
        if a.machine is not None and b.machine is not None and b.machine[1] > a.machine[1]:
            cpus = os.cpu_count() or 1
            span = b.machine[1] - a.machine[1]
            busy = (b.machine[0] - a.machine[0]) / span
            irq = (b.machine[2] - a.machine[2]) / span * cpus
            out["machine_busy"] = round(busy, 3)
            out["interrupts_cores"] = round(irq, 2)
            out["unaccounted_cores"] = round(max(0.0, busy * cpus - irq - used / wall), 2)
        return out


# -- processes ----------------------------------------------------------------------------------------


@dataclass
class Processes:
    """Child processes, each in its own session (its own process group), logging to the scratch dir."""

    scratch: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.scratch / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.scratch / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def stop(self, name: str, grace: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {grace:.0f}s: SIGKILL")
        # Whatever is left of the group (a pool process that outlived its parent) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            try:
                self.stop(name)
            except Exception as exc:  # keep stopping the others
                log(f"stopping {name} failed: {exc!r}")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def gunicorn_argv(app: str, port: int, args: argparse.Namespace) -> list[str]:
    # The Procfile's web line (its configuration: the access log's format and redaction), bound to loopback on a
    # free port.
    argv = [str(BIN / "gunicorn"), "-c", "python:webhook_receiver.gunicorn_conf", "--bind", f"127.0.0.1:{port}"]
    argv += ["--worker-class", args.worker_class]
    argv += ["--workers", str(args.web_workers), *args.gunicorn_arg]
    if args.worker_class == "gthread":
        argv += ["--threads", str(args.web_threads)]
    if not args.no_access_log:
        argv += ["--access-logfile", "-"]
    return [*argv, "--graceful-timeout", "20", app]


def start_web(procs: Processes, name: str, app: str, args: argparse.Namespace) -> str:
    port = free_port()
    procs.spawn(name, gunicorn_argv(app, port, args))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        procs.check_alive(name)
        try:
            return requests.get(url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(up, 60, f"{name} at {url}", poll=0.2)
    return url


def start_worker(procs: Processes, concurrency: int) -> None:
    argv = [
        str(BIN / "celery"),
        "-A",
        "worker",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    procs.spawn("worker", argv)

    def ready() -> bool:
        procs.check_alive("worker")
        return " ready." in procs.log_tail("worker", 200)

    wait_until(ready, 60, "the celery worker", poll=0.2)


# -- set-up -------------------------------------------------------------------------------------------


def account_names(count: int) -> list[str]:
    width = max(4, len(str(count - 1)))
    return [f"bench-{i:0{width}d}" for i in range(count)]


def fund(url: str, accounts: list[str], run_id: str) -> float:
    """One admin grant per wallet (creating it); commits are asynchronous: seeding is not what we measure."""
    engine = make_engine(url, pool_size=4)

    @event.listens_for(engine, "connect")
    def _async_commit(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        dbapi_connection.commit()

    sf = make_session_factory(engine)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in pool.map(
                lambda a: execute(sf, GrantCredits(a, GRANT_MC, f"bench-ingest:{run_id}:{a}", source="promotional")),
                accounts,
            ):
                pass
    finally:
        engine.dispose()
    return time.perf_counter() - started


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.execute("CHECKPOINT")
    except psycopg.Error as exc:
        log(f"CHECKPOINT refused, continuing without: {exc}".strip())


# -- usage end to end ---------------------------------------------------------------------------------


def usage_bodies(run_id: str, tag: str, accounts: list[str], events: int, batch_size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    item = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}
    bodies = []
    for start in range(0, events, batch_size):
        reports = [
            {"idempotency_key": f"bench:{run_id}:{tag}:{i}", "account": rng.choice(accounts), "items": [item]}
            for i in range(start, min(events, start + batch_size))
        ]
        bodies.append(json.dumps({"events": reports}, separators=(",", ":")).encode())
    return bodies


@dataclass
class PostLog:
    lock: threading.Lock = field(default_factory=threading.Lock)
    first_start: float | None = None
    last_end: float | None = None
    accepted: int = 0
    durations: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def post_usage(url: str, api_key: str, bodies: list[bytes], threads: int) -> PostLog:
    """``threads`` sessions take the next pre-serialized body until none is left."""
    result = PostLog()
    todo: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for body in bodies:
        todo.put(body)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def client() -> None:
        with requests.Session() as session:
            while True:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                try:
                    response = session.post(url + "/v1/usage", data=body, headers=headers, timeout=120)
                    status, payload = response.status_code, response.content
                except requests.RequestException as exc:
                    status, payload = 0, repr(exc).encode()
                ended = time.perf_counter()
                with result.lock:
                    result.first_start = started if result.first_start is None else min(result.first_start, started)
                    result.last_end = ended if result.last_end is None else max(result.last_end, ended)
                    result.durations.append(ended - started)
                    result.statuses[status] += 1
                    if status == 202:
                        result.accepted += int(json.loads(payload)["accepted"])
                    elif len(result.errors) < 5:
                        result.errors.append(f"{status}: {payload[:300]!r}")

    pool = [threading.Thread(target=client, name=f"usage-client-{i}", daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return result


def open_rows(conn: psycopg.Connection[Any], base_id: int) -> int:
    # Served by the partial index on open rows: cheap however many rows are already applied.
    row = conn.execute(
        "SELECT count(*) FROM usage_inbox WHERE status IN ('pending', 'failed') AND id > %s", (base_id,)
    ).fetchone()
    return int(row[0]) if row else 0


def any_open(conn: psycopg.Connection[Any], base_id: int) -> bool:
    """Whether a report is still open: the drain's check, every 0.1 s. ``EXISTS`` stops at the first open row,
    where ``open_rows`` counts them all: near the end of a run its scan of the open index visits every entry of
    the rows applied since the last vacuum (~15 ms of PostgreSQL's CPU a call at 100,000 events), which the
    benchmark would take from the pipeline it measures while PostgreSQL is its busiest process."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM usage_inbox WHERE status IN ('pending', 'failed') AND id > %s)", (base_id,)
    ).fetchone()
    return bool(row and row[0])


def open_timeline(
    conn: psycopg.Connection[Any], base_id: int, prefix: str, start: datetime, end: datetime
) -> list[tuple[float, int]]:
    """Reports open (received, not yet applied) every 0.5 s from ``start`` to ``end`` (the posting), and at
    ``end`` itself: from ``received_at`` and ``applied_at``, after the run."""
    rows = conn.execute(
        "WITH r AS (SELECT received_at, applied_at FROM usage_inbox WHERE id > %(base)s AND idempotency_key LIKE "
        "%(prefix)s), at AS (SELECT t FROM generate_series(%(start)s, %(end)s, interval '0.5 second') AS t "
        "UNION SELECT %(end)s) "
        "SELECT extract(epoch FROM at.t - %(start)s), (SELECT count(*) FROM r WHERE r.received_at <= at.t "
        "AND (r.applied_at IS NULL OR r.applied_at > at.t)) FROM at ORDER BY at.t",
        {"base": base_id, "prefix": prefix + "%", "start": start, "end": end},
    ).fetchall()
    return [(float(t), int(n)) for t, n in rows]


def run_usage(
    args: argparse.Namespace,
    conn: psycopg.Connection[Any],
    web_url: str,
    api_key: str,
    accounts: list[str],
    cpu: CpuMeter,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:10]
    prefix = f"bench:{run_id}:run:"
    log(f"usage: building {args.events} reports in batches of {args.batch_size}")
    build_started = time.perf_counter()
    bodies = usage_bodies(run_id, "run", accounts, args.events, args.batch_size, seed=1)
    build_seconds = time.perf_counter() - build_started

    log("usage: warm-up (2 batches, waiting until applied)")
    warm = usage_bodies(run_id, "warm", accounts, 2 * args.batch_size, args.batch_size, seed=2)
    warm_log = post_usage(web_url, api_key, warm, args.client_threads)
    if warm_log.accepted != 2 * args.batch_size:
        raise RuntimeError(f"usage warm-up not accepted: {dict(warm_log.statuses)} {warm_log.errors}")
    wait_until(lambda: open_rows(conn, 0) == 0, 120, "the warm-up reports to be applied", poll=0.2)
    base_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM usage_inbox").fetchone()[0])  # type: ignore[index]
    checkpoint(conn)

    log(f"usage: {len(bodies)} POSTs of {args.batch_size} reports, {args.client_threads} client threads")
    poster: dict[str, PostLog] = {}
    thread = threading.Thread(
        target=lambda: poster.setdefault("log", post_usage(web_url, api_key, bodies, args.client_threads)),
        name="usage-poster",
        daemon=True,
    )
    # Nothing is asked of PostgreSQL while the pipeline runs but the drain's cheap check: how many reports were
    # open when is worked out afterwards from the rows' own times (``open_timeline``), on the database's clock.
    db_t0 = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    before = cpu.sample()
    t0 = time.perf_counter()
    thread.start()
    thread.join()
    posted = poster["log"]
    at_posting_end = cpu.sample()
    db_posted = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + args.drain_timeout
    while any_open(conn, base_id):
        if time.monotonic() > deadline:
            log(f"usage: {open_rows(conn, base_id)} reports still open after {args.drain_timeout}s: giving up")
            break
        time.sleep(0.1)
    t_end = time.perf_counter()
    after = cpu.sample()

    first = posted.first_start if posted.first_start is not None else t0
    last_post = posted.last_end if posted.last_end is not None else t0
    statuses = dict(
        conn.execute(
            "SELECT status, count(*) FROM usage_inbox WHERE id > %s AND idempotency_key LIKE %s GROUP BY status",
            (base_id, prefix + "%"),
        ).fetchall()
    )
    applied = int(statuses.get("applied", 0))
    lat = conn.execute(
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - received_at)),"
        " max(extract(epoch FROM applied_at - received_at)),"
        " extract(epoch FROM max(applied_at) - min(received_at))"
        " FROM usage_inbox WHERE id > %s AND idempotency_key LIKE %s AND status = 'applied'",
        (base_id, prefix + "%"),
    ).fetchone()
    quantiles, worst, db_span = (lat or (None, None, None))[:3]
    timeline = open_timeline(conn, base_id, prefix, db_t0, db_posted)
    open_at_posting_end = timeline[-1][1] if timeline else 0
    total_seconds = t_end - first
    post_seconds = last_post - first
    rate = applied / total_seconds if total_seconds > 0 else None
    durations_ms = [d * 1000 for d in posted.durations]
    out = {
        "events": args.events,
        "applied": applied,
        "statuses": statuses,
        "events_per_s": rounded(rate),
        "goal_events_per_s": USAGE_GOAL,
        "goal_met": bool(rate and rate >= USAGE_GOAL),
        "seconds": round(total_seconds, 2),
        "latency_ms": {
            "p50": rounded(float(quantiles[0]) * 1000) if quantiles else None,
            "p99": rounded(float(quantiles[1]) * 1000) if quantiles else None,
            "max": rounded(float(worst) * 1000) if worst is not None else None,
            "measured_as": "applied_at - received_at (now() of the apply and of the intake transaction)",
        },
        "accept": {
            "events_per_s": rounded(posted.accepted / post_seconds) if post_seconds > 0 else None,
            "seconds": round(post_seconds, 2),
            "accepted": posted.accepted,
            "requests": sum(posted.statuses.values()),
            "http_statuses": {str(k): v for k, v in posted.statuses.items()},
            "request_ms_p50": rounded(percentile(durations_ms, 50)),
            "request_ms_p99": rounded(percentile(durations_ms, 99)),
            **({"errors": posted.errors} if posted.errors else {}),
        },
        "applied_during_posting": posted.accepted - open_at_posting_end,
        "apply_rate_during_posting": rounded((posted.accepted - open_at_posting_end) / post_seconds)
        if post_seconds > 0
        else None,
        "drain_seconds_after_posting": round(t_end - last_post, 2),
        "db_span_seconds": rounded(float(db_span), 2) if db_span is not None else None,
        "open_rows_timeline": [[round(t, 1), n] for t, n in timeline],
        "cpu": CpuMeter.usage(before, after, max(1, applied), "event"),
        "cpu_while_posting": CpuMeter.usage(before, at_posting_end, max(1, posted.accepted), "event"),
        "client": {
            "threads": args.client_threads,
            "batch_size": args.batch_size,
            "build_seconds": round(build_seconds, 2),
        },
    }
    log(
        f"usage: {out['events_per_s']} events/s end to end ({applied} applied in {total_seconds:.1f}s); accept "
        f"{out['accept']['events_per_s']} events/s; latency p50 {out['latency_ms']['p50']} ms, "
        f"p99 {out['latency_ms']['p99']} ms"
    )
    return out


# -- signed webhooks ----------------------------------------------------------------------------------


def customer_event_template() -> dict[str, Any]:
    """A ``customer.updated`` event shaped like Stripe's (fixtures3.json's event and customer), with the fields
    a real customer carries filled in; ids and the account are placeholders filled per request."""
    try:
        resources = json.loads(FIXTURES.read_text())["resources"]
        event_shape, customer = dict(resources["event"]), dict(resources["customer"])
    except (OSError, KeyError, ValueError):
        event_shape, customer = {"object": "event", "api_version": None, "pending_webhooks": 1}, {"object": "customer"}
    customer.update(
        id="@@CUSTOMER@@",
        created=1721948530,
        email="@@ACCOUNT@@@example.com",
        name="Bench Customer @@ACCOUNT@@",
        phone="+15555550123",
        description="Customer of the ingest benchmark",
        address={
            "city": "San Francisco",
            "country": "US",
            "line1": "510 Townsend Street",
            "line2": "Floor 3",
            "postal_code": "94103",
            "state": "CA",
        },
        shipping={
            "address": {
                "city": "San Francisco",
                "country": "US",
                "line1": "510 Townsend Street",
                "line2": "Floor 3",
                "postal_code": "94103",
                "state": "CA",
            },
            "name": "Bench Customer",
            "phone": "+15555550123",
        },
        invoice_settings={
            "custom_fields": [{"name": "VAT", "value": "FR12345678901"}],
            "default_payment_method": "pm_1PgafmB7WZ01zgkWbenchpm01",
            "footer": "Thank you for your business.",
            "rendering_options": {"amount_tax_display": "exclude_tax", "template": None},
        },
        metadata={
            "account": "@@ACCOUNT@@",
            "plan": "pro",
            "signup_source": "web",
            "crm_id": "crm_000123456",
            "team_id": "team_8f14e45fceea167a",
            "referral_code": "SPRING-2024-AI",
        },
        preferred_locales=["en-US", "fr-FR"],
        tax_exempt="none",
        tax={"automatic_tax": "supported", "ip_address": None, "location": {"country": "US", "state": "CA"}},
        invoice_credit_balance={"usd": 0},
        cash_balance={
            "available": {"usd": 0},
            "customer": "@@CUSTOMER@@",
            "livemode": False,
            "object": "cash_balance",
            "settings": {"reconciliation_mode": "automatic", "using_merchant_default": True},
        },
    )
    shape = {k: v for k, v in event_shape.items() if k not in ("data", "id", "type")}
    return {
        **shape,
        "id": "@@EVENT@@",
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1721948531,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": "req_benchRequest01", "idempotency_key": "@@EVENT@@-idem"},
        "type": "customer.updated",
        "data": {
            "object": customer,
            "previous_attributes": {
                "email": "old-@@ACCOUNT@@@example.com",
                "metadata": {"plan": "starter"},
                "address": {"line1": "1 Old Street", "postal_code": "94016"},
            },
        },
    }


@dataclass(frozen=True)
class ClientSpec:
    host: str
    port: int
    secret: str
    prefix: str  # event ids: evt_<prefix><n>
    accounts: list[str]
    requests_per_proc: int
    conns: int


def build_requests(spec: ClientSpec, index: int) -> list[bytes]:
    """Complete raw HTTP requests (headers, signature, body), built before anything is timed."""
    template = json.dumps(customer_event_template(), separators=(",", ":"))
    timestamp = int(time.time())
    out = []
    for n in range(spec.requests_per_proc):
        account_index = (index * spec.requests_per_proc + n) % len(spec.accounts)
        account = spec.accounts[account_index]
        payload = (
            template.replace("@@EVENT@@", f"evt_{spec.prefix}{index}x{n}")
            .replace("@@CUSTOMER@@", f"cus_bench{account_index:06d}")
            .replace("@@ACCOUNT@@", account)
        )
        header = stripe.WebhookSignature.generate_signature_header(payload, spec.secret, timestamp=timestamp)
        body = payload.encode()
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nUser-Agent: Stripe/1.0\r\n"
            f"Content-Type: application/json; charset=utf-8\r\nStripe-Signature: {header}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


class RawConnection:
    """One HTTP/1.1 connection with the least client work per request: send pre-built bytes, read the status,
    Content-Length and body. Reconnects when the server closes (gunicorn's sync workers always do)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.connects = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, request: bytes) -> int:
        fresh = self.sock is None
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connects += 1
        try:
            return self._exchange(self.sock, request)
        except (ConnectionError, TimeoutError, OSError):
            self.close()
            if fresh:
                raise
            return self.exchange(request)  # a kept-alive connection the server had closed: once more, fresh

    def _exchange(self, sock: socket.socket, request: bytes) -> int:
        sock.sendall(request)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before the response")
            buf += chunk
        head, body = buf[:end].decode("latin-1"), buf[end + 4 :]
        status = int(head[9:12])
        length, close = 0, False
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed mid-body")
            body += chunk
        if close:
            self.close()
        return status


def client_process(spec: ClientSpec, index: int, ready: Any, go: Any, window: Any, results: Any) -> None:
    """One load process: build its requests, say ready, then ``spec.conns`` threads send them in the window
    [start, stop] (wall clock, set by the parent), each on its own connection."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    try:
        reqs = build_requests(spec, index)
    except Exception as exc:
        ready.put((index, repr(exc)))
        return
    ready.put((index, None))
    go.wait()
    start, stop = window[0], window[1]
    counter = itertools.count()
    lock = threading.Lock()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    connects = [0]

    def sender() -> None:
        conn = RawConnection(spec.host, spec.port)
        local: Counter[int] = Counter()
        local_lat: list[float] = []
        try:
            while time.time() < start:
                time.sleep(0.001)
            while True:
                began = time.perf_counter()
                if time.time() >= stop:
                    break
                request = reqs[next(counter) % len(reqs)]
                try:
                    status = conn.exchange(request)
                except OSError as exc:
                    status = 0
                    if len(errors) < 5:
                        errors.append(repr(exc))
                    time.sleep(0.01)
                if time.time() <= stop:
                    local[status] += 1
                    local_lat.append(time.perf_counter() - began)
        finally:
            conn.close()
            with lock:
                statuses.update(local)
                latencies.extend(local_lat)
                connects[0] += conn.connects

    while time.time() < start:
        time.sleep(0.001)
    cpu_started = time.process_time()
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(spec.conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu_seconds = time.process_time() - cpu_started
    sample = latencies if len(latencies) <= 20_000 else random.Random(index).sample(latencies, 20_000)
    results.put(
        {
            "index": index,
            "statuses": dict(statuses),
            "sent": next(counter),
            "cpu_seconds": cpu_seconds,
            "latencies": sample,
            "connects": connects[0],
            "errors": errors,
        }
    )


def run_load(
    host: str,
    port: int,
    secret: str,
    prefix: str,
    accounts: list[str],
    seconds: float,
    procs: int,
    conns: int,
    requests_per_proc: int,
    cpu: CpuMeter | None,
    on_window_end: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``procs`` client processes x ``conns`` connections against ``host:port`` for ``seconds``."""
    ctx = multiprocessing.get_context("spawn")  # no fork of this process's database connections and threads
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    window = ctx.Array("d", 2)
    spec = ClientSpec(host, port, secret, prefix, accounts, requests_per_proc, conns)
    workers = [
        ctx.Process(target=client_process, args=(spec, i, ready, go, window, results), daemon=True)
        for i in range(procs)
    ]
    built = time.perf_counter()
    try:
        for proc in workers:
            proc.start()
        for _ in workers:
            index, problem = ready.get(timeout=600)
            if problem:
                raise RuntimeError(f"client process {index} failed to build its requests: {problem}")
        build_seconds = time.perf_counter() - built
        start = time.time() + 0.3
        window[0], window[1] = start, start + seconds
        go.set()
        time.sleep(max(0.0, start - time.time()))
        before = cpu.sample() if cpu else None
        time.sleep(max(0.0, start + seconds - time.time()))
        after = cpu.sample() if cpu else None
        if on_window_end is not None:
            on_window_end()
        reports = [results.get(timeout=seconds + 120) for _ in workers]
        for proc in workers:
            proc.join(timeout=30)
    finally:
        for proc in workers:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    for report in reports:
        statuses.update({int(k): v for k, v in report["statuses"].items()})
        latencies.extend(report["latencies"])
        errors.extend(report["errors"])
    done = sum(statuses.values())
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    client_cpu = sum(r["cpu_seconds"] for r in reports)
    out: dict[str, Any] = {
        "rps": round(ok / seconds, 1),
        "requests": done,
        "ok": ok,
        "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": seconds,
        "latency_ms_p50": rounded(1000 * (percentile(latencies, 50) or 0), 2),
        "latency_ms_p99": rounded(1000 * (percentile(latencies, 99) or 0), 2),
        "connections_opened": sum(r["connects"] for r in reports),
        "bodies_reused": max(0, sum(r["sent"] for r in reports) - procs * requests_per_proc),
        "client_cores": round(client_cpu / seconds, 2),
        "client_cpu_us_per_request": round(client_cpu / done * 1e6, 1) if done else None,
        "build_seconds": round(build_seconds, 1),
        **({"errors": errors[:5]} if errors else {}),
    }
    if before is not None and after is not None:
        out["cpu"] = CpuMeter.usage(before, after, max(1, ok), "request")
    return out


def webhook_events(conn: psycopg.Connection[Any], prefix: str) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT status, count(*) FROM stripe_events WHERE id LIKE %s GROUP BY status", (f"evt_{prefix}%",)
        ).fetchall()
    )


def run_side(
    name: str,
    url: str,
    secret: str,
    accounts: list[str],
    args: argparse.Namespace,
    cpu: CpuMeter,
    on_window_end: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], str]:
    host, port = url.removeprefix("http://").split(":")
    tag = uuid.uuid4().hex[:8]
    log(f"webhooks/{name}: warm-up {args.warmup_seconds}s")
    warm = run_load(
        host,
        int(port),
        secret,
        f"bw{tag}",
        accounts,
        args.warmup_seconds,
        args.client_procs,
        args.client_conns,
        max(500, int(args.max_rps * args.warmup_seconds / args.client_procs)),
        None,
    )
    # Enough unique requests for the measured window at 1.5x the warm-up's rate (never reused on the web side).
    per_proc = math.ceil(max(warm["rps"], 200) * 1.5 * args.seconds / args.client_procs) + 200
    per_proc = min(per_proc, math.ceil(args.max_rps * args.seconds / args.client_procs))
    prefix = f"bm{tag}"
    log(f"webhooks/{name}: warm-up {warm['rps']} req/s; measuring {args.seconds}s ({per_proc} requests per process)")
    figures = run_load(
        host,
        int(port),
        secret,
        prefix,
        accounts,
        args.seconds,
        args.client_procs,
        args.client_conns,
        per_proc,
        cpu,
        on_window_end,
    )
    figures["warmup_rps"] = warm["rps"]
    log(
        f"webhooks/{name}: {figures['rps']} req/s, p50 {figures['latency_ms_p50']} ms, client "
        f"{figures['client_cores']} cores, statuses {figures['http_statuses']}"
    )
    return figures, prefix


def drain_backlog(
    conn: psycopg.Connection[Any], prefix: str, timeout: float, cpu: CpuMeter | None = None
) -> dict[str, Any]:
    """Wait until the worker has handled every stored event of ``prefix``; with ``cpu``, the worker's rate and
    CPU per event over the drain (the machine otherwise idle)."""
    before = cpu.sample() if cpu is not None else None
    started = time.perf_counter()
    open_at_start = sum(v for k, v in webhook_events(conn, prefix).items() if k in OPEN_EVENT_STATUSES)

    def drained() -> bool:
        return not any(k in OPEN_EVENT_STATUSES for k in webhook_events(conn, prefix))

    with contextlib.suppress(RuntimeError):
        wait_until(drained, timeout, "the webhook events to be processed", poll=0.05)
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "events": open_at_start,
        "seconds": round(seconds, 2),
        "statuses": webhook_events(conn, prefix),
    }
    if before is not None and open_at_start:
        out["events_per_s"] = round(open_at_start / seconds, 1)
        out["cpu"] = CpuMeter.usage(before, cpu.sample(), open_at_start, "event")
    return out


OPEN_EVENT_STATUSES = ("pending", "waiting", "failed")


def run_webhooks(
    args: argparse.Namespace,
    conn: psycopg.Connection[Any],
    procs: Processes,
    web_url: str,
    secret: str,
    accounts: list[str],
    cpu: CpuMeter,
) -> dict[str, Any]:
    """``--rounds`` rounds of two windows, the bare endpoint then the receiver, with the worker paused
    (SIGSTOP) throughout so that the receiver's figure is the web process's own, as the goal asks; taking
    turns cancels the drift of a shared machine between two long windows. Then the backlog they left, drained
    by the worker with the machine otherwise idle (the worker's own rate); and a last window with the receiver
    and the worker handling events as they come, all on the same two cores."""
    body_bytes = len(json.dumps(customer_event_template(), separators=(",", ":")))
    # What the usage part left to do in the background (autovacuum of its inbox, a checkpoint) must not land
    # in these windows, on either side.
    conn.execute("VACUUM (ANALYZE)")
    checkpoint(conn)
    log("webhooks/bare: starting gunicorn 'bench.bare_app:create_app()'")
    bare_url = start_web(procs, "bare", "bench.bare_app:create_app()", args)
    cpu.track("bare", procs.procs["bare"].pid, "pgrp")
    worker_group = procs.procs["worker"].pid
    log("webhooks: the worker is paused (SIGSTOP) for the bare and receiver windows")
    rounds: list[dict[str, Any]] = []
    os.killpg(worker_group, signal.SIGSTOP)
    try:
        for n in range(1, args.rounds + 1):
            bare, _ = run_side(f"bare {n}/{args.rounds}", bare_url, secret, accounts, args, cpu)
            web, _ = run_side(f"web {n}/{args.rounds}", web_url, secret, accounts, args, cpu)
            rounds.append(
                {"bare": bare, "web": web, "ratio": round(web["rps"] / bare["rps"], 3) if bare["rps"] else None}
            )
    finally:
        os.killpg(worker_group, signal.SIGCONT)
        procs.stop("bare")
        cpu.forget("bare")
    bare_rps = sum(r["bare"]["ok"] for r in rounds) / sum(r["bare"]["seconds"] for r in rounds)
    web_rps = sum(r["web"]["ok"] for r in rounds) / sum(r["web"]["seconds"] for r in rounds)
    ratio = web_rps / bare_rps if bare_rps else None
    log(
        f"webhooks: web {web_rps:.1f} vs bare {bare_rps:.1f} req/s, ratio {ratio:.3f}"
        if ratio
        else "webhooks: no ratio"
    )
    summary = {
        "web_rps": round(web_rps, 1),
        "bare_rps": round(bare_rps, 1),
        "ratio": round(ratio, 3) if ratio is not None else None,
        "ratio_by_round": [r["ratio"] for r in rounds],
        "goal_ratio": RATIO_GOAL,
        "goal_met": bool(ratio and ratio >= RATIO_GOAL),
        "cpu_us_per_request": {
            side: {
                group: round(statistics.median(r[side]["cpu"][group]["cpu_us_per_request"] for r in rounds), 1)
                for group in (("bare", "client") if side == "bare" else ("web", "postgres", "client"))
            }
            for side in ("bare", "web")
        },
        "machine_busy": {
            side: round(statistics.median(r[side]["cpu"]["machine_busy"] for r in rounds), 3)
            for side in ("bare", "web")
        },
    }
    if args.receiver_only:
        return {**summary, "rounds": rounds}
    log("webhooks/worker: draining the backlog of the receiver's windows")
    backlog = drain_backlog(conn, "", args.drain_timeout, cpu)
    log(f"webhooks/worker: {backlog['events']} events in {backlog['seconds']}s")

    checkpoint(conn)
    window_end: dict[str, Any] = {}
    shared, shared_prefix = run_side(
        "web+worker", web_url, secret, accounts, args, cpu, lambda: window_end.setdefault("t", time.perf_counter())
    )
    at_window_end = webhook_events(conn, shared_prefix)
    after = drain_backlog(conn, shared_prefix, args.drain_timeout)
    processed_in_window = at_window_end.get("processed", 0) + at_window_end.get("ignored", 0)
    shared_ratio = shared["rps"] / bare_rps if bare_rps else None
    return {
        **summary,
        "worker_events_per_s": backlog.get("events_per_s"),
        "web_with_worker_rps": shared["rps"],
        "ratio_with_worker": round(shared_ratio, 3) if shared_ratio is not None else None,
        "event_type": "customer.updated",
        "body_bytes": body_bytes,
        "client": {
            "kind": "raw HTTP/1.1 over sockets, pre-built signed requests",
            "processes": args.client_procs,
            "connections_per_process": args.client_conns,
            "concurrency": args.client_procs * args.client_conns,
            "seconds": args.seconds,
        },
        "gunicorn": {
            "worker_class": args.worker_class,
            "workers": args.web_workers,
            "threads": args.web_threads if args.worker_class == "gthread" else 1,
            "access_log": not args.no_access_log,
        },
        "rounds": rounds,
        "worker_backlog": backlog,
        "web_with_worker": {
            **shared,
            "statuses_at_window_end": at_window_end,
            "processed_per_s_during_window": round(processed_in_window / args.seconds, 1),
            "drain_seconds_after_window": round(time.perf_counter() - window_end.get("t", time.perf_counter()), 1)
            if window_end
            else None,
            "statuses_final": after["statuses"],
        },
    }


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="usage reports to apply end to end")
    parser.add_argument("--batch-size", type=int, default=1000, help="usage reports per POST (at most 1000)")
    parser.add_argument("--client-threads", type=int, default=4, help="usage client threads")
    parser.add_argument("--accounts", type=int, default=1000, help="funded wallets the traffic spreads over")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window of each webhook side")
    parser.add_argument("--rounds", type=int, default=3, help="webhooks: rounds of a bare and a receiver window")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="unmeasured warm-up of each webhook side")
    parser.add_argument("--client-procs", type=int, default=2, help="webhook client processes")
    parser.add_argument("--client-conns", type=int, default=8, help="connections (threads) per client process")
    parser.add_argument(
        "--max-rps", type=float, default=20_000, help="cap on the pre-built webhook requests (rate x seconds)"
    )
    parser.add_argument(
        "--worker-class",
        choices=["gevent", "sync", "gthread"],
        default=web_worker_class(),
        help="gunicorn --worker-class (web and bare; the Procfile's)",
    )
    parser.add_argument(
        "--web-workers",
        type=int,
        default=2,
        help="gunicorn --workers (web and bare; the Procfile's default)",
    )
    parser.add_argument("--web-threads", type=int, default=4, help="gunicorn --threads (with --worker-class gthread)")
    parser.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        help="one more gunicorn argument for web and bare alike (repeat; e.g. --gunicorn-arg=--preload)",
    )
    parser.add_argument("--worker-concurrency", type=int, default=2, help="celery --concurrency")
    parser.add_argument("--no-access-log", action="store_true", help="run gunicorn without the Procfile's access log")
    parser.add_argument("--drain-timeout", type=float, default=600, help="seconds to wait for the workers to finish")
    parser.add_argument("--skip-usage", action="store_true")
    parser.add_argument("--skip-webhooks", action="store_true")
    parser.add_argument(
        "--receiver-only",
        action="store_true",
        help="webhooks: only the bare and receiver windows (no worker backlog, no shared window)",
    )
    parser.add_argument("--database-url", help="use this database (migrated here) instead of a throwaway cluster")
    parser.add_argument("--redis-url", help="use this Redis instead of a throwaway one")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path on stderr)")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be 1..1000")
    if min(args.events, args.client_threads, args.accounts, args.client_procs, args.client_conns, args.rounds) < 1:
        parser.error(
            "--events, --client-threads, --accounts, --client-procs, --client-conns and --rounds must be positive"
        )
    if args.seconds <= 0 or args.warmup_seconds <= 0:
        parser.error("--seconds and --warmup-seconds must be positive")
    return args


def server_info(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    names = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_connections")
    return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}  # type: ignore[index]


def redis_pid(url: str) -> int | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        pid = int(client.info("server")["process_id"])
        client.close()
    except Exception:
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    wall_started = time.perf_counter()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    cluster: ThrowawayPostgres | None = None
    redis_server: ThrowawayRedis | None = None
    procs: Processes | None = None
    out: dict[str, Any] = {}
    try:
        if args.database_url:
            url = sqlalchemy_url(args.database_url)
        else:
            log("starting a durable throwaway PostgreSQL cluster")
            cluster = ThrowawayPostgres(durable=True).start()
            cluster.create_database(BENCH_DB)
            url = cluster.url(BENCH_DB)
        if args.redis_url:
            redis_url = args.redis_url
        else:
            log("starting a throwaway Redis")
            redis_server = ThrowawayRedis().start()
            redis_url = redis_server.url
        log("migrating")
        alembic_command.upgrade(alembic_config(url), "head")

        run_id = uuid.uuid4().hex[:10]
        accounts = account_names(args.accounts)
        log(f"funding {len(accounts)} wallets")
        fund_seconds = fund(url, accounts, run_id)
        engine = make_engine(url, pool_size=1)
        try:
            _, api_key = create_api_key(make_session_factory(engine), f"bench-ingest-{run_id}", ["admin"])
        finally:
            engine.dispose()

        secret = "whsec_bench_" + secrets.token_hex(16)
        (scratch / "metrics").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            DATABASE_URL=libpq_url(url),
            REDIS_URL=redis_url,
            STRIPE_WEBHOOK_SECRET=secret,
            # The worker wants a key; nothing here calls Stripe (customer.updated needs no fetch), and a closed
            # local port makes sure nothing could reach the real one.
            STRIPE_API_KEY="sk_test_bench_ingest",
            STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}",
            PROMETHEUS_MULTIPROC_DIR=str(scratch / "metrics"),
            PYTHONUNBUFFERED="1",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        )
        procs = Processes(scratch, env)
        cpu = CpuMeter()
        if cluster is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
                cpu.track("postgres", pid, "children")
        if redis_server is not None:
            cpu.track("redis", redis_pid(redis_url), "children")

        log(
            f"starting gunicorn (--worker-class {args.worker_class} --workers {args.web_workers}) "
            f"and celery (--concurrency {args.worker_concurrency})"
        )
        web_url = start_web(procs, "web", "webhook_receiver:create_app()", args)
        cpu.track("web", procs.procs["web"].pid, "pgrp")
        start_worker(procs, args.worker_concurrency)
        cpu.track("worker", procs.procs["worker"].pid, "pgrp")

        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("ANALYZE")
            info = server_info(conn)
            if not args.skip_usage:
                out["usage"] = run_usage(args, conn, web_url, api_key, accounts, cpu)
                procs.check_alive("web")
                procs.check_alive("worker")
            if not args.skip_webhooks:
                checkpoint(conn)
                out["webhooks"] = run_webhooks(args, conn, procs, web_url, secret, accounts, cpu)
                procs.check_alive("web")
                procs.check_alive("worker")

        out["params"] = {
            "events": args.events,
            "batch_size": args.batch_size,
            "accounts": args.accounts,
            "seconds": args.seconds,
            "web_workers": args.web_workers,
            "web_threads": args.web_threads,
            "worker_concurrency": args.worker_concurrency,
            "access_log": not args.no_access_log,
            "fund_seconds": round(fund_seconds, 1),
        }
        out["machine"] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "postgres": {"throwaway": cluster is not None, **info},
            "redis_throwaway": redis_server is not None,
        }
    finally:
        if procs is not None:
            log("stopping gunicorn and celery")
            procs.stop_all()
        if redis_server is not None:
            redis_server.stop()
        if cluster is not None:
            log("stopping the cluster")
            cluster.stop()
        if args.keep_logs:
            log(f"logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    out["run_seconds"] = round(time.perf_counter() - wall_started, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: everything started here was stopped")
        sys.exit(130)
