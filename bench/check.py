"""Latency of the calls an app makes around each model call, at a fixed rate through the real web process:
``POST /v1/check`` and a hold's create + capture.

    .venv/bin/python -m bench.check [--rate 300] [--seconds 30] [--warmup-seconds 3] [--accounts 1000]
                                    [--database-url URL] [--redis-url URL] [--skip-holds] [--skip-check]

Set-up as ``bench.ingest``: a durable throwaway PostgreSQL migrated to head and a throwaway Redis (unless named),
``--accounts`` wallets funded by a grant each, an admin API key, and gunicorn serving
``webhook_receiver:create_app()`` the way the Procfile does (its configuration and worker class, 2 workers,
access log on). The same rate is first sent to a bare Flask endpoint (``bench.bare_app``) served the same way: the
cost of the HTTP stack and of this client alone, the reference the figures compare against.

The load is open loop: request *i* is due at ``start + i / rate`` whatever happened to the ones before, and its
latency is counted from when it was due, so a slow answer that delays the next requests shows in their figures
too (no coordinated omission). ``--senders`` threads with one keep-alive connection each take the due requests.
Holds: a create is due every ``2 / rate`` seconds and its capture follows as soon as the create answers, so that
creates and captures together make ``--rate`` requests per second; each request is reported on its own
(``create``, ``capture``) and together (``hold``).

Each part also reports ``server``: the same requests' times as the web process logged them (the access log's
``duration_ms``, JSON lines as the Procfile's configuration writes them). The difference from the client's
figures is the accept queue, loopback and this client's own threads.

One JSON object goes to stdout, progress to stderr. Goals (reported, never asserted): check p99 < 5 ms, hold
p99 < 10 ms, on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from alembic import command as alembic_command

from bench.ingest import (
    BENCH_DB,
    BIN,
    CpuMeter,
    Processes,
    _terminate,
    account_names,
    fund,
    percentile,
    redis_pid,
    server_info,
    start_web,
)
from billing_cli.dev_stack import web_worker_class
from billing_cli.schema import alembic_config
from billing_cli.throwaway import ThrowawayPostgres, ThrowawayRedis, free_port
from billing_core.accounts.api_keys import create_api_key
from billing_core.db.engine import make_engine, make_session_factory
from billing_core.settings import libpq_url, sqlalchemy_url

CHECK_P99_GOAL_MS = 5.0
HOLD_P99_GOAL_MS = 10.0
# One model call of a typical chat request: what an app checks and reserves before calling the model.
ITEMS = [
    {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300}
]


def log(message: str) -> None:
    print(f"[bench.check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    kind: str
    due: float  # when the request was due (perf_counter)
    sent: float
    done: float
    status: int


@dataclass
class Client:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    host: str
    port: int
    headers: dict[str, str]
    per_connection: int = 0  # requests before the connection is closed (0: kept open)
    conn: http.client.HTTPConnection | None = None
    used: int = 0

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.conn is not None and self.per_connection and self.used >= self.per_connection:
            self.conn.close()
            self.conn = None
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.used = 0
            self.used += 1
            try:
                self.conn.request(method, path, body=body, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return response.status, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


Job = Callable[[Client, float], list[Sample]]


def run_open_loop(
    url: str,
    headers: dict[str, str],
    jobs: Iterator[Job],
    interval: float,
    seconds: float,
    senders: int,
    per_connection: int = 0,
) -> tuple[list[Sample], float]:
    """Due one job every ``interval`` seconds for ``seconds``; returns the samples and the span they took."""
    split = urlsplit(url)
    assert split.hostname is not None and split.port is not None
    due_jobs: queue.Queue[tuple[float, Job] | None] = queue.Queue()
    samples: list[Sample] = []
    lock = threading.Lock()

    def sender() -> None:
        client = Client(split.hostname or "", split.port or 0, headers, per_connection)
        mine: list[Sample] = []
        while True:
            item = due_jobs.get()
            if item is None:
                break
            due, job = item
            mine.extend(job(client, due))
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    count = int(seconds / interval)
    start = time.perf_counter() + 0.05
    for i in range(count):
        due = start + i * interval
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        due_jobs.put((due, next(jobs)))
    for _ in threads:
        due_jobs.put(None)
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - start


def timed(client: Client, kind: str, due: float, method: str, path: str, body: bytes | None) -> tuple[Sample, bytes]:
    sent = time.perf_counter()
    status, data = client.request(method, path, body)
    return Sample(kind, due, sent, time.perf_counter(), status), data


def bare_jobs() -> Iterator[Job]:
    body = b'{"id": "evt_bare"}'

    def job(client: Client, due: float) -> list[Sample]:
        return [timed(client, "bare", due, "POST", "/webhooks/stripe", body)[0]]

    while True:
        yield job


def check_jobs(accounts: list[str]) -> Iterator[Job]:
    bodies = [json.dumps({"account": a, "items": ITEMS, "mode": "system"}).encode() for a in accounts]
    i = 0
    while True:
        body = bodies[i % len(bodies)]
        i += 1

        def job(client: Client, due: float, body: bytes = body) -> list[Sample]:
            return [timed(client, "check", due, "POST", "/v1/check", body)[0]]

        yield job


def hold_jobs(accounts: list[str], run_id: str) -> Iterator[Job]:
    capture = json.dumps({"items": ITEMS}).encode()
    i = 0
    while True:
        account = accounts[i % len(accounts)]
        body = json.dumps({"account": account, "idempotency_key": f"bench-{run_id}-{i}", "items": ITEMS}).encode()
        i += 1

        def job(client: Client, due: float, body: bytes = body) -> list[Sample]:
            created, data = timed(client, "create", due, "POST", "/v1/holds", body)
            if created.status != 201:
                return [created]
            hold_id = json.loads(data)["id"]
            # The capture is due when the create answered: the app settles right after its model call.
            captured, _ = timed(client, "capture", created.done, "POST", f"/v1/holds/{hold_id}/capture", capture)
            return [created, captured]

        yield job


def summarize(samples: list[Sample], span: float, *, warmup: float) -> dict[str, Any]:
    first_due = min((s.due for s in samples), default=0.0)
    kept = [s for s in samples if s.due - first_due >= warmup]
    out: dict[str, Any] = {}
    kinds: dict[str, list[Sample]] = {}
    for s in kept:
        kinds.setdefault(s.kind, []).append(s)
    if {"create", "capture"} <= kinds.keys():
        kinds["hold"] = kinds["create"] + kinds["capture"]
    measured = max(span - warmup, 1e-9)
    for kind, group in kinds.items():
        from_due = [(s.done - s.due) * 1000 for s in group]
        service = [(s.done - s.sent) * 1000 for s in group]
        out[kind] = {
            "requests": len(group),
            "rps": round(len(group) / measured, 1),
            "statuses": dict(Counter(str(s.status) for s in group)),
            "p50_ms": _ms(percentile(from_due, 50)),
            "p90_ms": _ms(percentile(from_due, 90)),
            "p99_ms": _ms(percentile(from_due, 99)),
            "max_ms": _ms(max(from_due, default=None)),
            "service_p50_ms": _ms(percentile(service, 50)),
            "service_p99_ms": _ms(percentile(service, 99)),
        }
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second of each part")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds of each part")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="unmeasured seconds before each part")
    parser.add_argument("--senders", type=int, default=16, help="client threads (one keep-alive connection each)")
    parser.add_argument(
        "--requests-per-connection",
        type=int,
        default=1,
        help="requests a client connection carries before it is closed (0: kept open). A gunicorn worker keeps "
        "the connections it accepted: a few long-lived ones can all land on one worker and leave the other idle, "
        "where many clients would spread over both",
    )
    parser.add_argument("--accounts", type=int, default=1000, help="funded wallets the requests spread over")
    parser.add_argument("--worker-class", default=web_worker_class(), help="gunicorn --worker-class (the Procfile's)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn --workers (the Procfile's default)")
    parser.add_argument("--web-threads", type=int, default=4, help="gunicorn --threads (with gthread)")
    parser.add_argument("--gunicorn-arg", action="append", default=[], help="one more gunicorn argument (repeat)")
    parser.add_argument("--no-access-log", action="store_true", help="run gunicorn without the Procfile's access log")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--skip-holds", action="store_true")
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--database-url", help="use this database (migrated here) instead of a throwaway cluster")
    parser.add_argument("--redis-url", help="use this Redis instead of a throwaway one")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path on stderr)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.warmup_seconds < 0 or args.senders < 1 or args.accounts < 1:
        parser.error("--rate, --seconds, --senders and --accounts must be positive")
    return args


@dataclass
class Stack:
    scratch: Path
    cluster: ThrowawayPostgres | None = None
    redis_server: ThrowawayRedis | None = None
    procs: Processes | None = None
    out: dict[str, Any] = field(default_factory=dict)

    def stop(self, keep_logs: bool) -> None:
        if self.procs is not None:
            log("stopping gunicorn")
            self.procs.stop_all()
        if self.redis_server is not None:
            self.redis_server.stop()
        if self.cluster is not None:
            log("stopping the cluster")
            self.cluster.stop()
        if keep_logs:
            log(f"logs kept in {self.scratch}")
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)


def part(
    name: str,
    url: str,
    headers: dict[str, str],
    jobs: Iterator[Job],
    args: argparse.Namespace,
    cpu: CpuMeter,
    interval: float,
    server_log: Path | None = None,
) -> dict[str, Any]:
    log(f"{name}: {args.rate:g} requests/s for {args.warmup_seconds:g} + {args.seconds:g} s")
    before = cpu.sample()
    measured_from = time.time() + args.warmup_seconds
    samples, span = run_open_loop(
        url, headers, jobs, interval, args.warmup_seconds + args.seconds, args.senders, args.requests_per_connection
    )
    after = cpu.sample()
    result = summarize(samples, span, warmup=args.warmup_seconds)
    result["cpu"] = CpuMeter.usage(before, after, len(samples), "request")
    if server_log is not None:
        result["server"] = server_times(server_log, measured_from, time.time())
    return result


def server_times(path: Path, since: float, until: float) -> dict[str, Any]:
    """The requests' times as the server logged them (the access log's ``duration_ms``, from the request
    read to the response written): what the client measures beyond it is the accept queue, the network and
    the client itself."""
    durations = []
    for line in path.read_text(errors="replace").splitlines():
        if '"gunicorn.access"' not in line:
            continue
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["ts"]).timestamp()
        except (ValueError, KeyError):
            continue
        if since <= at <= until and entry.get("path") != "/healthz" and "duration_ms" in entry:
            durations.append(float(entry["duration_ms"]))
    return {
        "requests": len(durations),
        "p50_ms": _ms(percentile(durations, 50)),
        "p99_ms": _ms(percentile(durations, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    stack = Stack(Path(tempfile.mkdtemp(prefix="bench-check-")))
    out = stack.out
    try:
        if args.database_url:
            url = sqlalchemy_url(args.database_url)
        else:
            log("starting a durable throwaway PostgreSQL cluster")
            stack.cluster = ThrowawayPostgres(durable=True).start()
            stack.cluster.create_database(BENCH_DB)
            url = stack.cluster.url(BENCH_DB)
        if args.redis_url:
            redis_url = args.redis_url
        else:
            log("starting a throwaway Redis")
            stack.redis_server = ThrowawayRedis().start()
            redis_url = stack.redis_server.url
        log("migrating")
        alembic_command.upgrade(alembic_config(url), "head")
        run_id = uuid.uuid4().hex[:10]
        accounts = account_names(args.accounts)
        log(f"funding {len(accounts)} wallets")
        fund(url, accounts, run_id)
        engine = make_engine(url, pool_size=1)
        try:
            _, api_key = create_api_key(make_session_factory(engine), f"bench-check-{run_id}", ["admin"])
        finally:
            engine.dispose()

        (stack.scratch / "metrics").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            DATABASE_URL=libpq_url(url),
            REDIS_URL=redis_url,
            STRIPE_WEBHOOK_SECRET="whsec_bench_check",
            STRIPE_API_KEY="sk_test_bench_check",
            STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}",  # a closed port: nothing here calls Stripe
            PROMETHEUS_MULTIPROC_DIR=str(stack.scratch / "metrics"),
            PYTHONUNBUFFERED="1",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        )
        stack.procs = procs = Processes(stack.scratch, env)
        cpu = CpuMeter()
        if stack.cluster is not None:
            pid = int((stack.cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
            cpu.track("postgres", pid, "children")
        if stack.redis_server is not None:
            cpu.track("redis", redis_pid(redis_url), "children")
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        interval = 1.0 / args.rate

        if not args.skip_bare:
            log("starting the bare endpoint")
            bare_url = start_web(procs, "bare", "bench.bare_app:create_app()", args)
            cpu.track("bare", procs.procs["bare"].pid, "pgrp")
            out["bare"] = part("bare", bare_url, headers, bare_jobs(), args, cpu, interval, procs.scratch / "bare.log")
            procs.stop("bare")
            cpu.forget("bare")
        log(f"starting gunicorn (--worker-class {args.worker_class} --workers {args.web_workers})")
        web_url = start_web(procs, "web", "webhook_receiver:create_app()", args)
        cpu.track("web", procs.procs["web"].pid, "pgrp")
        web_log = procs.scratch / "web.log"
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("ANALYZE")
            info = server_info(conn)
        if not args.skip_check:
            out["check"] = part("check", web_url, headers, check_jobs(accounts), args, cpu, interval, web_log)
            procs.check_alive("web")
        if not args.skip_holds:
            # A create every 2 / rate seconds, each followed by its capture: ``rate`` requests per second in all.
            out["holds"] = part(
                "holds", web_url, headers, hold_jobs(accounts, run_id), args, cpu, 2 * interval, web_log
            )
            procs.check_alive("web")
        out["goals"] = {
            "check_p99_ms": CHECK_P99_GOAL_MS,
            "hold_p99_ms": HOLD_P99_GOAL_MS,
            "check_met": _met(out.get("check", {}).get("check"), CHECK_P99_GOAL_MS),
            "hold_met": _met(out.get("holds", {}).get("hold"), HOLD_P99_GOAL_MS),
        }
        out["params"] = {
            "rate": args.rate,
            "seconds": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "senders": args.senders,
            "requests_per_connection": args.requests_per_connection,
            "accounts": args.accounts,
            "worker_class": args.worker_class,
            "web_workers": args.web_workers,
            "access_log": not args.no_access_log,
        }
        out["machine"] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "postgres": {"throwaway": stack.cluster is not None, **info},
        }
    finally:
        stack.stop(args.keep_logs)
    out["run_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))
    return 0


def _met(figures: dict[str, Any] | None, goal_ms: float) -> bool | None:
    if not figures or figures.get("p99_ms") is None:
        return None
    return bool(figures["p99_ms"] < goal_ms)


if __name__ == "__main__":
    raise SystemExit(main())
