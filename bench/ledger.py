"""Usage-debit throughput of the ledger, next to pgbench on the same PostgreSQL cluster.

    .venv/bin/python -m bench.ledger [--seconds 10] [--threads 4] [--batch-size 500] [--wallets 1000]
                                     [--hot-share 0.2] [--database-url URL] [--diagnose]

Phases, one after the other (a CHECKPOINT before each timed one, so none pays for another's dirty pages):

* seed: ``--wallets`` wallets plus one hot wallet, each funded by a purchase (10^12 mc) and a promotional
  grant (10^6 mc), so debits first drain the promotional lot and then move on to the paid one;
* single: ``--threads`` threads, each looping ``execute(sf, DebitUsage(...))``, one entry per transaction;
* batch_1_worker / batch_2_workers: ``apply_usage_batch`` on batches of ``--batch-size`` reports, built
  before the timed section (their construction cost is reported on its own, per report);
* batch_2_partitions: two worker processes, each applying batches from its own account partition (the
  partitions carry equal shares of the traffic, the hot wallet in the first), as the pipeline's workers
  claim usage; its ``debits_per_s`` is the sustained rate of the whole stream (2 x the slower process);
* pgbench: ``pgbench -N -c 4 -j 2 -T <seconds>`` on a scale-10 database of the same cluster;
* ``check_ledger`` on the bench database.

Every debit picks the hot wallet with probability ``--hot-share``, otherwise one of the ``--wallets`` uniformly.
Without ``--database-url`` a durable (fsync on) throwaway cluster is started and always removed at the end.

Each phase also reports its CPU: cores used by this process ("client") and by the cluster's processes
("server", throwaway cluster only), CPU per debit (per transaction for pgbench), the machine's busy share and
``other_cores``, the load from elsewhere (a test run...), which skews every figure of that phase.
``--diagnose`` adds what the backends were doing (running, waiting on a lock, on I/O, on the client) and
a per-statement time breakdown of one single debit and one batch, from two extra one-worker phases.

One JSON object goes to stdout, progress to stderr. A benchmark prints figures: it never fails on speed
(the exit status is 1 only when the ledger check fails or a batch report is not applied).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from alembic import command as alembic_command
from sqlalchemy import Engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from bench.cpu import machine_jiffies
from billing_cli.schema import alembic_config
from billing_cli.throwaway import ThrowawayPostgres, find_postgres_bin_dir
from billing_core.db.engine import make_engine, make_session_factory
from billing_core.ledger.batch_debit import APPLIED, apply_usage_batch
from billing_core.ledger.checks import check_ledger
from billing_core.ledger.commands import DebitUsage, GrantCredits, PurchaseCredits
from billing_core.ledger.handlers import execute
from billing_core.settings import libpq_url, sqlalchemy_url

BENCH_DB = "bench_ledger"
PGBENCH_DB = "pgbench"
BATCH_PHASES = ("batch_1_worker", "batch_2_workers", "batch_2_partitions")
PGBENCH_SCALE = 10
PURCHASE_MC = 10**12  # a billion credits: no wallet runs dry, whatever the run's length
PROMO_MC = 10**6  # a thousand credits: drained after a few hundred debits, then draws move to the purchase
MAX_DEBIT_MC = 5000
BATCH_GOAL = 3.0  # the goal for the batch form, in multiples of pgbench's TPS (reported, not enforced)


def log(message: str) -> None:
    print(f"[bench.ledger {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


# -- traffic ------------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """The debit stream: the hot wallet with probability ``hot_share``, else a uniform pick."""

    accounts: list[str]
    hot: str
    hot_share: float
    seed: int
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def account(self) -> str:
        if self.rng.random() < self.hot_share:
            return self.hot
        return self.accounts[self.rng.randrange(len(self.accounts))]

    def report(self, key: str) -> DebitUsage:
        return DebitUsage(self.account(), self.rng.randint(1, MAX_DEBIT_MC), key)

    def batch(self, size: int, prefix: str) -> list[DebitUsage]:
        return [self.report(f"{prefix}:{j}") for j in range(size)]


def wallet_names(count: int) -> tuple[list[str], str]:
    width = max(4, len(str(count - 1)))
    return [f"bench-{i:0{width}d}" for i in range(count)], "bench-hot"


# -- database set-up ----------------------------------------------------------------------------------


def migrate(url: str) -> None:
    alembic_command.upgrade(alembic_config(url), "head")


def checkpoint(url: str) -> None:
    """Start each timed phase with no dirty buffers left by the previous one (needs superuser or
    pg_checkpoint; skipped, with a note, when refused)."""
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error as exc:
        log(f"CHECKPOINT refused, continuing without: {exc}".strip())


def ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())


def cluster_info(url: str) -> dict[str, Any]:
    names = (
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
        "shared_buffers",
        "max_wal_size",
        "commit_delay",
    )
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}  # type: ignore[index]


def fdatasync_us(samples: int = 200) -> float | None:
    """Median microseconds of an 8 kB write + fdatasync in the temp dir (where the throwaway cluster lives)."""
    try:
        with tempfile.NamedTemporaryFile(prefix="bench-fsync-") as handle:
            fd = handle.fileno()
            block = b"\0" * 8192
            timings = []
            for _ in range(samples):
                os.pwrite(fd, block, 0)
                started = time.perf_counter()
                os.fdatasync(fd)
                timings.append(time.perf_counter() - started)
        return round(percentile(timings, 50) * 1e6, 1)  # type: ignore[operator]
    except OSError:
        return None


def seed(sf: sessionmaker[Session], accounts: list[str], run_id: str, threads: int) -> dict[str, Any]:
    """Fund every wallet (the batch form cannot create wallets): one purchase and one promotional grant each."""

    def fund(account: str) -> None:
        execute(sf, PurchaseCredits(account, PURCHASE_MC, f"bench-seed:{run_id}:{account}:purchase"))
        execute(sf, GrantCredits(account, PROMO_MC, f"bench-seed:{run_id}:{account}:promo"))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(fund, accounts):
            pass
    elapsed = time.perf_counter() - started
    return {"wallets": len(accounts), "commands": 2 * len(accounts), "seconds": round(elapsed, 2)}


def seed_engine(url: str, pool_size: int) -> Engine:
    """The seeding engine commits asynchronously: seeding is set-up, not what we measure."""
    engine = make_engine(url, pool_size=pool_size)

    @event.listens_for(engine, "connect")
    def _async_commit(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        dbapi_connection.commit()

    return engine


# -- CPU accounting -----------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    wall: float
    client: float  # this process, user + system seconds
    children: float  # waited-for children (pgbench)
    server: dict[int, float] | None  # postmaster and its children, by pid
    machine: tuple[int, int] | None  # busy and total jiffies, all CPUs


def _stat_fields(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


class CpuMeter:
    """CPU time of the client (this process), of the server (the throwaway cluster's processes, read from
    /proc) and of the whole machine, so a phase's figures say which side was saturated."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self.postmaster = postmaster_pid

    def _server(self) -> dict[int, float] | None:
        if self.postmaster is None or not os.path.isdir("/proc"):
            return None
        out: dict[int, float] = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            fields = _stat_fields(pid)
            # fields[1] = ppid, fields[11] = utime, fields[12] = stime (after "pid (comm)")
            if fields and (int(pid) == self.postmaster or int(fields[1]) == self.postmaster):
                out[int(pid)] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return out

    @staticmethod
    def _machine() -> tuple[int, int] | None:
        jiffies = machine_jiffies()
        return None if jiffies is None else jiffies[:2]

    def sample(self) -> CpuSample:
        t = os.times()
        return CpuSample(
            time.perf_counter(),
            t.user + t.system,
            t.children_user + t.children_system,
            self._server(),
            self._machine(),
        )

    @staticmethod
    def usage(a: CpuSample, b: CpuSample, units: int, unit: str) -> dict[str, Any]:
        """Cores used by client and server over the window, CPU per unit of work, machine busy share."""
        wall = b.wall - a.wall
        client_s = b.client - a.client
        out: dict[str, Any] = {
            "client_cores": round(client_s / wall, 2),
            f"client_cpu_us_per_{unit}": round(client_s / units * 1e6, 1) if units else None,
        }
        if a.server is not None and b.server is not None:
            server_s = sum(cpu - a.server.get(pid, 0.0) for pid, cpu in b.server.items())
            out["server_cores"] = round(server_s / wall, 2)
            out[f"server_cpu_us_per_{unit}"] = round(server_s / units * 1e6, 1) if units else None
        if a.machine is not None and b.machine is not None and b.machine[1] > a.machine[1]:
            busy = (b.machine[0] - a.machine[0]) / (b.machine[1] - a.machine[1])
            out["machine_busy"] = round(busy, 3)
            if "server_cores" in out:
                # Cores used by neither side: other load on the machine (a test run...) skews the figures.
                cores = busy * (os.cpu_count() or 1)
                out["other_cores"] = round(max(0.0, cores - out["client_cores"] - out["server_cores"]), 2)
        return out


def postmaster_pid(cluster: ThrowawayPostgres) -> int | None:
    try:
        return int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


class WaitSampler:
    """Every 20 ms, what the benchmark's backends are doing (pg_stat_activity), as shares of the samples
    taken inside a transaction: running, waiting for a lock, for I/O, or for the client (Python) to send
    the next statement. Enabled by --diagnose."""

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    def start(self, application_name: str) -> WaitSampler:
        self._stop.clear()
        self.counts = collections.Counter()
        self._thread = threading.Thread(target=self._run, args=(application_name,), daemon=True)
        self._thread.start()
        return self

    def _run(self, application_name: str) -> None:
        query = (
            "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid() AND state <> 'idle'"
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.02):
                for state, wait_type, wait_event in conn.execute(query, (application_name,)):
                    if wait_type == "Lock":
                        self.counts[f"lock_wait:{wait_event}"] += 1
                    elif wait_type == "Client" or state.startswith("idle in transaction"):
                        self.counts["client_wait"] += 1
                    elif wait_type in ("IO", "LWLock", "IPC"):
                        self.counts[f"{wait_type.lower()}_wait:{wait_event}"] += 1
                    elif wait_type is None:
                        self.counts["running"] += 1
                    else:
                        self.counts[f"{wait_type}:{wait_event}"] += 1

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        total = sum(self.counts.values())
        return {k: round(v / total, 3) for k, v in self.counts.most_common()} if total else {}


# -- phases -------------------------------------------------------------------------------------------


@dataclass
class WorkerResult:
    done: int = 0  # debits applied
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    first_error: str | None = None
    finished_at: float = 0.0  # set by run_threads when the worker returns

    def fail(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class Probe:
    """What is measured around each timed phase besides the figures: CPU, and backend states if asked."""

    meter: CpuMeter
    waits: WaitSampler | None = None


def run_threads(
    count: int, target: Callable[[int, WorkerResult], None], probe: Probe
) -> tuple[list[WorkerResult], float, Callable[[int], dict[str, Any]]]:
    """Run ``count`` workers; returns their results, the elapsed time and a maker of the phase's CPU (per
    debit) and backend-state report."""
    results = [WorkerResult() for _ in range(count)]

    def runner(index: int) -> None:
        try:
            target(index, results[index])
        finally:
            results[index].finished_at = time.perf_counter()

    threads = [threading.Thread(target=runner, args=(i,), daemon=True) for i in range(count)]
    if probe.waits:
        probe.waits.start("billing")
    before = probe.meter.sample()
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = probe.meter.sample()
    states = probe.waits.stop() if probe.waits else None
    elapsed = max(r.finished_at for r in results) - started

    def report(units: int) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu": CpuMeter.usage(before, after, units, "debit")}
        if states is not None:
            out["backend_states"] = states
        return out

    return results, elapsed, report


def merge(results: list[WorkerResult]) -> tuple[int, list[float], collections.Counter[str], str | None]:
    errors: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    for r in results:
        errors.update(r.errors)
        latencies.extend(r.latencies)
    first = next((r.first_error for r in results if r.first_error), None)
    return sum(r.done for r in results), latencies, errors, first


def run_single(
    sf: sessionmaker[Session],
    traffic: Callable[[int], Traffic],
    threads: int,
    seconds: float,
    prefix: str,
    probe: Probe,
) -> dict[str, Any]:
    deadline = time.perf_counter() + seconds

    def worker(index: int, result: WorkerResult) -> None:
        gen = traffic(index)
        n = 0
        while time.perf_counter() < deadline:
            cmd = gen.report(f"{prefix}:{index}:{n}")
            n += 1
            started = time.perf_counter()
            try:
                execute(sf, cmd)
            except Exception as exc:
                result.fail(exc)
                continue
            result.latencies.append(time.perf_counter() - started)
            result.done += 1

    results, elapsed, cpu = run_threads(threads, worker, probe)
    done, latencies, errors, first = merge(results)
    return {
        "threads": threads,
        "seconds": round(elapsed, 2),
        "debits": done,
        "debits_per_s": rounded(done / elapsed),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies, default=None)),
        "errors": dict(errors),
        **cpu(done),
        **({"first_error": first} if first else {}),
    }


def build_batches(gen: Traffic, count: int, size: int, prefix: str) -> tuple[list[list[DebitUsage]], float]:
    started = time.perf_counter()
    batches = [gen.batch(size, f"{prefix}:{i}") for i in range(count)]
    return batches, time.perf_counter() - started


def run_batches(
    sf: sessionmaker[Session],
    traffic: Callable[[int], Traffic],
    workers: int,
    seconds: float,
    batch_size: int,
    per_batch_estimate: float,
    prefix: str,
    before_timing: Callable[[], None],
    probe: Probe,
) -> dict[str, Any]:
    # Enough pre-built batches for the run at the warm-up's pace and then some; a worker that runs out
    # builds the rest inside the timed loop (reported as built_in_loop_batches).
    count = math.ceil((1 + 0.5 * workers) * seconds / max(per_batch_estimate, 1e-3)) + workers
    count = min(count, max(workers, 2_000_000 // batch_size))
    log(f"  building {count} batches of {batch_size} reports")
    batches, build_seconds = build_batches(traffic(1000 + workers), count, batch_size, f"{prefix}:pre")
    queue = collections.deque(batches)
    del batches
    built_in_loop = [0] * workers
    before_timing()
    deadline = time.perf_counter() + seconds

    def worker(index: int, result: WorkerResult) -> None:
        gen = traffic(2000 + 10 * workers + index)
        n = 0
        while time.perf_counter() < deadline:
            try:
                batch = queue.popleft()
            except IndexError:
                batch = gen.batch(batch_size, f"{prefix}:loop:{index}:{n}")
                built_in_loop[index] += 1
                n += 1
            started = time.perf_counter()
            try:
                outcomes = apply_usage_batch(sf, batch)
            except Exception as exc:
                result.fail(exc)
                continue
            result.latencies.append(time.perf_counter() - started)
            for outcome in outcomes:
                result.statuses[outcome.status] += 1
                if outcome.status != APPLIED and result.first_error is None and outcome.error is not None:
                    result.first_error = f"{outcome.status}: {outcome.error}"[:500]
            result.done += sum(1 for o in outcomes if o.status == APPLIED)

    results, elapsed, cpu = run_threads(workers, worker, probe)
    done, latencies, errors, first = merge(results)
    statuses: collections.Counter[str] = collections.Counter()
    for r in results:
        statuses.update(r.statuses)
    built = count * batch_size
    build_per_report = build_seconds / built
    rate = done / elapsed
    return {
        "workers": workers,
        "batch_size": batch_size,
        "seconds": round(elapsed, 2),
        "batches": len(latencies),
        "debits": done,
        "debits_per_s": rounded(rate),
        # The same pipeline if this process also had to build each report (serially, it holds the GIL).
        "debits_per_s_incl_build": rounded(1 / (1 / rate + build_per_report)) if rate else None,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies, default=None)),
        "statuses": dict(statuses),
        "all_applied": set(statuses) == {APPLIED} and not errors,
        "errors": dict(errors),
        "build_us_per_report": round(build_per_report * 1e6, 2),
        "built_in_loop_batches": sum(built_in_loop),
        **cpu(done),
        **({"first_error": first} if first else {}),
    }


# -- partitioned worker processes ---------------------------------------------------------------------
def partitions(accounts: list[str], hot: str, hot_share: float, count: int) -> list[tuple[list[str], float, float]]:
    """Split the wallets into ``count`` partitions carrying equal shares of the traffic, the hot wallet in the
    first. This is how the pipeline's workers claim usage: by account partition, so two batches never wait on
    each other's wallet locks (and each account's reports stay in order). Returns, per partition, its
    wallets, the hot wallet's share within the partition's traffic, and the partition's share of all traffic."""
    share = 1 / count
    per_wallet = (1 - hot_share) / len(accounts)
    first = max(0, round((share - hot_share) / per_wallet))  # wallets that, with the hot one, make one share
    rest = accounts[first:]
    chunk = math.ceil(len(rest) / max(count - 1, 1))
    parts = [accounts[:first]] + [rest[i : i + chunk] for i in range(0, len(rest), chunk)]
    out = []
    for i, wallets in enumerate(parts[:count]):
        traffic = len(wallets) * per_wallet + (hot_share if i == 0 else 0)
        out.append((wallets, (hot_share / traffic) if i == 0 else 0.0, traffic))
    return out


def _partition_worker(
    url: str,
    wallets: list[str],
    hot: str,
    hot_share: float,
    seed: int,
    seconds: float,
    batch_size: int,
    prefix: str,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    engine = make_engine(url, pool_size=2)
    sf = make_session_factory(engine)
    gen = Traffic(wallets, hot, hot_share, seed)
    apply_usage_batch(sf, gen.batch(batch_size, f"{prefix}:warm"))
    per_batch_guess = 0.05
    batches = [gen.batch(batch_size, f"{prefix}:{i}") for i in range(math.ceil(2 * seconds / per_batch_guess))]
    ready.set()
    go.wait()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    done, latencies, statuses = 0, [], collections.Counter()
    for batch in batches:
        if time.perf_counter() >= deadline:
            break
        t = time.perf_counter()
        outcomes = apply_usage_batch(sf, batch)
        latencies.append(time.perf_counter() - t)
        statuses.update(o.status for o in outcomes)
        done += sum(1 for o in outcomes if o.status == APPLIED)
    elapsed = time.perf_counter() - started
    engine.dispose()
    results.put({"debits": done, "seconds": elapsed, "latencies": latencies, "statuses": dict(statuses)})


def run_partitioned(
    url: str,
    accounts: list[str],
    hot: str,
    hot_share: float,
    processes: int,
    seconds: float,
    batch_size: int,
    prefix: str,
    seed: int,
    before_timing: Callable[[], None],
) -> dict[str, Any]:
    """One worker process per partition, all at once. The sustained rate of the whole stream is set by the
    slowest partition relative to its share of the traffic (its worker cannot borrow another's wallets)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parts = partitions(accounts, hot, hot_share, processes)
    go, results = ctx.Event(), ctx.Queue()
    readies, procs = [], []
    for i, (wallets, hot_within, _) in enumerate(parts):
        ready = ctx.Event()
        args = (
            url,
            wallets or [hot],
            hot,
            hot_within,
            seed + i,
            seconds,
            batch_size,
            f"{prefix}:p{i}",
            ready,
            go,
            results,
        )
        proc = ctx.Process(target=_partition_worker, args=args, daemon=True)
        proc.start()
        readies.append(ready)
        procs.append(proc)
    for ready in readies:
        ready.wait(timeout=300)
    before_timing()
    go.set()
    outs = [results.get(timeout=seconds + 300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    rates = [o["debits"] / o["seconds"] for o in outs]
    statuses: collections.Counter[str] = collections.Counter()
    for o in outs:
        statuses.update(o["statuses"])
    latencies = [x for o in outs for x in o["latencies"]]
    # Results arrive in completion order; match each to its partition's share by size is not needed: every
    # partition carries the same share, so the sustained rate is processes x the slowest worker's rate.
    sustained = min(rates) * processes
    return {
        "processes": processes,
        "batch_size": batch_size,
        "partition_traffic_shares": [round(p[2], 3) for p in parts],
        "per_process_debits_per_s": [rounded(r) for r in rates],
        "debits_per_s": rounded(sustained),
        "debits_per_s_sum": rounded(sum(rates)),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "statuses": dict(statuses),
        "all_applied": set(statuses) == {APPLIED},
    }


# -- statement timing (--diagnose) --------------------------------------------------------------------


class SqlTimer:
    """Wall time per SQL statement (first words, normalised), commit and pool pre-ping, via engine events."""

    def __init__(self, engine: Engine, sf: sessionmaker[Session]) -> None:
        self.enabled = False
        self.lock = threading.Lock()
        self.local = threading.local()
        self.totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._before_commit)
        event.listen(sf, "after_commit", self._after_commit)
        dialect = engine.dialect
        original_ping = dialect.do_ping

        def timed_ping(dbapi_connection: Any) -> bool:
            started = time.perf_counter()
            try:
                return original_ping(dbapi_connection)
            finally:
                self._add("(pool pre-ping: SELECT 1)", time.perf_counter() - started)

        dialect.do_ping = timed_ping  # type: ignore[method-assign]

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        self.totals.clear()
        self.enabled = True
        try:
            yield
        finally:
            self.enabled = False

    def _add(self, key: str, seconds: float) -> None:
        if not self.enabled:
            return
        with self.lock:
            slot = self.totals[key]
            slot[0] += 1
            slot[1] += seconds

    @staticmethod
    def label(statement: str) -> str:
        words = " ".join(statement.split())
        words = re.sub(r"\(SELECT .*", "(SELECT ...", words)
        return words[:90]

    def _before(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        self.local.started = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        self._add(self.label(statement), time.perf_counter() - self.local.started)

    def _before_commit(self, conn: Any) -> None:
        self.local.commit_started = time.perf_counter()

    def _after_commit(self, session: Session) -> None:
        started = getattr(self.local, "commit_started", None)
        if started is not None:
            self._add("(COMMIT)", time.perf_counter() - started)
            self.local.commit_started = None

    def report(self, wall_seconds: float, units: int, unit: str) -> dict[str, Any]:
        """``unit`` is singular ("debit", "batch"); the figures are per unit and shares of the wall time."""
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1][1])
        in_db = sum(total for _, (_, total) in rows)
        return {
            "wall_seconds": round(wall_seconds, 3),
            f"{unit}es" if unit.endswith("ch") else f"{unit}s": units,
            f"python_and_other_ms_per_{unit}": ms((wall_seconds - in_db) / units) if units else None,
            "python_and_other_share": round(1 - in_db / wall_seconds, 3) if wall_seconds else None,
            "statements": [
                {
                    "statement": key,
                    "calls": int(calls),
                    "total_ms": ms(total),
                    "mean_ms": ms(total / calls) if calls else None,
                    "share_of_wall": round(total / wall_seconds, 3) if wall_seconds else None,
                }
                for key, (calls, total) in rows
            ],
        }


def sql_breakdown(
    timer: SqlTimer,
    sf: sessionmaker[Session],
    traffic: Callable[[int], Traffic],
    seconds: float,
    batch_size: int,
    prefix: str,
) -> dict[str, Any]:
    """One worker, no contention: where the time of one debit (single) and one batch goes."""
    out: dict[str, Any] = {}
    gen = traffic(3000)
    with timer.measuring():
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        n = 0
        while time.perf_counter() < deadline:
            execute(sf, gen.report(f"{prefix}:single:{n}"))
            n += 1
        out["single_1_thread"] = timer.report(time.perf_counter() - started, n, "debit")
    batches, _ = build_batches(gen, max(3, int(seconds * 20)), batch_size, f"{prefix}:batch")
    with timer.measuring():
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        n = 0
        for batch in batches:
            if time.perf_counter() >= deadline:
                break
            apply_usage_batch(sf, batch)
            n += 1
        out["batch_1_worker"] = timer.report(time.perf_counter() - started, n, "batch")
    return out


# -- pgbench ------------------------------------------------------------------------------------------

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(([^)]*)\)", re.MULTILINE)


def find_pgbench() -> str | None:
    with contextlib.suppress(RuntimeError):
        candidate = find_postgres_bin_dir() / "pgbench"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("pgbench")


def run_pgbench(pgbench: str, url: str, seconds: int, probe: Probe, clients: int = 4, jobs: int = 2) -> dict[str, Any]:
    u = make_url(sqlalchemy_url(url))
    conn_args = ["-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]
    env = clean_env(**({"PGPASSWORD": u.password} if u.password else {}))
    database = u.database or PGBENCH_DB

    started = time.perf_counter()
    init = subprocess.run(
        [pgbench, "-i", "-s", str(PGBENCH_SCALE), "-q", *conn_args, database],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed ({init.returncode}): {init.stderr.strip()}")
    init_seconds = time.perf_counter() - started
    checkpoint(url)

    args = ["-N", "-c", str(clients), "-j", str(jobs), "-T", str(seconds)]
    proc = subprocess.Popen(
        [pgbench, *args, *conn_args, database],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        # The server side is sampled while pgbench runs: its backends take their CPU time with them on exit.
        if probe.waits:
            probe.waits.start("pgbench")
        before = probe.meter.sample()
        time.sleep(max(0.5, seconds - 0.5))
        during = probe.meter.sample()
        states = probe.waits.stop() if probe.waits else None
        output, _ = proc.communicate(timeout=seconds * 3 + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = probe.meter.sample()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed ({proc.returncode}): {output.strip()[-2000:]}")
    tps = {kind: float(value) for value, kind in TPS_RE.findall(output)}
    # PG >= 14 prints one line "(without initial connection time)"; older ones print both
    # "(including connections establishing)" and "(excluding connections establishing)".
    chosen = next(
        (v for k, v in tps.items() if "without" in k or "excluding" in k),
        next(iter(tps.values()), None),
    )
    latency = re.search(r"^latency average = ([0-9.]+) ms", output, re.MULTILINE)
    processed = re.search(r"^number of transactions actually processed: (\d+)", output, re.MULTILINE)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.MULTILINE)
    return {
        "tps": chosen,
        "command": f"pgbench {' '.join(args)}",
        "scale": PGBENCH_SCALE,
        "init_seconds": round(init_seconds, 1),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "transactions": int(processed.group(1)) if processed else None,
        "failed": int(failed.group(1)) if failed else None,
        "tps_lines": tps,
        "cpu": cpu_for_pgbench(before, during, after, chosen),
        **({"backend_states": states} if states is not None else {}),
    }


def cpu_for_pgbench(before: CpuSample, during: CpuSample, after: CpuSample, tps: float | None) -> dict[str, Any]:
    """pgbench's own CPU (a waited child: known once it exits) and the server's and machine's (sampled
    while it ran), per transaction at the reported TPS."""
    client_cores = (after.children - before.children) / (after.wall - before.wall)
    out: dict[str, Any] = {"client_cores": round(client_cores, 2)}
    if tps:
        out["client_cpu_us_per_tx"] = round(client_cores / tps * 1e6, 1)
    window = CpuMeter.usage(before, during, 1, "tx")
    if "server_cores" in window:
        out["server_cores"] = window["server_cores"]
        if tps:
            out["server_cpu_us_per_tx"] = round(window["server_cores"] / tps * 1e6, 1)
    if "machine_busy" in window:
        out["machine_busy"] = window["machine_busy"]
        if "server_cores" in window:
            cores = window["machine_busy"] * (os.cpu_count() or 1)
            out["other_cores"] = round(max(0.0, cores - client_cores - window["server_cores"]), 2)
    return out


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each timed phase and of pgbench -T")
    parser.add_argument("--threads", type=int, default=4, help="threads of the one-entry-per-transaction phase")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--wallets", type=int, default=1000, help="ordinary wallets (plus one hot wallet)")
    parser.add_argument("--hot-share", type=float, default=0.2, help="share of debits on the hot wallet")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the debit stream")
    parser.add_argument(
        "--database-url",
        help="use this (migrated here, if needed) database instead of a throwaway cluster; pgbench then "
        "uses database 'pgbench' on the same server (created if missing)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="sample backend states (running / lock / I/O / waiting for the client) during each phase, and "
        "add a per-statement time breakdown of single and batch debits (two extra single-worker phases)",
    )
    parser.add_argument("--skip-pgbench", action="store_true")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.threads < 1 or args.batch_size < 1 or args.wallets < 1:
        parser.error("--seconds, --threads, --batch-size and --wallets must be positive")
    if not 0 <= args.hot_share <= 1:
        parser.error("--hot-share must be between 0 and 1")
    return args


def run(args: argparse.Namespace, url: str, admin_url: str, probe: Probe) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:10]
    accounts, hot = wallet_names(args.wallets)

    def traffic(stream: int) -> Traffic:
        return Traffic(accounts, hot, args.hot_share, args.seed * 100_003 + stream)

    def checkpoint_bench() -> None:
        checkpoint(admin_url)

    result: dict[str, Any] = {"run_id": run_id}

    log(f"migrating {BENCH_DB}")
    migrate(url)
    seeding = seed_engine(url, pool_size=8)
    try:
        log(f"seeding {args.wallets} + 1 wallets")
        result["seed"] = seed(make_session_factory(seeding), [*accounts, hot], run_id, threads=4)
    finally:
        seeding.dispose()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("ANALYZE")

    engine = make_engine(url, pool_size=max(10, args.threads + 2))
    sf = make_session_factory(engine)
    try:
        # Warm-up: fills the connection pool and the statement/system-account caches, and paces the build.
        log("warm-up")
        warm = traffic(999)
        for i in range(2 * args.threads):
            execute(sf, warm.report(f"bench:{run_id}:warm:single:{i}"))
        warm_batches, _ = build_batches(warm, 3, args.batch_size, f"bench:{run_id}:warm:batch")
        started = time.perf_counter()
        for batch in warm_batches:
            apply_usage_batch(sf, batch)
        per_batch = (time.perf_counter() - started) / len(warm_batches)

        checkpoint_bench()
        log(f"single: {args.threads} threads x {args.seconds}s")
        single = run_single(sf, traffic, args.threads, args.seconds, f"bench:{run_id}:single", probe)
        result["single"] = single
        log(f"  {single['debits_per_s']} debits/s, p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms")

        for workers in (1, 2):
            name = f"batch_{workers}_worker{'s' if workers > 1 else ''}"
            log(f"{name}: batches of {args.batch_size} x {args.seconds}s")
            figures = run_batches(
                sf,
                traffic,
                workers,
                args.seconds,
                args.batch_size,
                per_batch,
                f"bench:{run_id}:b{workers}",
                before_timing=checkpoint_bench,
                probe=probe,
            )
            result[name] = figures
            rate, p50, statuses = figures["debits_per_s"], figures["p50_ms"], figures["statuses"]
            log(f"  {rate} debits/s, p50 {p50} ms/batch, statuses {statuses}")

        log(f"batch_2_partitions: 2 worker processes, one account partition each, {args.seconds}s")
        figures = run_partitioned(
            url,
            accounts,
            hot,
            args.hot_share,
            2,
            args.seconds,
            args.batch_size,
            f"bench:{run_id}:bp",
            args.seed,
            before_timing=checkpoint_bench,
        )
        result["batch_2_partitions"] = figures
        log(f"  {figures['debits_per_s']} debits/s sustained (per process {figures['per_process_debits_per_s']})")

        if args.diagnose:
            seconds = min(args.seconds, 5)
            log(f"statement timing: single and batch, 1 worker, {seconds}s each")
            timer = SqlTimer(engine, sf)
            checkpoint_bench()
            result["sql_timing"] = sql_breakdown(timer, sf, traffic, seconds, args.batch_size, f"bench:{run_id}:t")

        log("check_ledger")
        report = check_ledger(engine)
        result["ledger_check_ok"] = report.ok
        result["ledger_entries"] = report.entries
        if not report.ok:
            result["ledger_findings"] = [str(f) for f in report.findings[:10]]
    finally:
        engine.dispose()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall_started = time.perf_counter()
    load_before = os.getloadavg()
    cluster: ThrowawayPostgres | None = None
    out: dict[str, Any] = {}
    try:
        if args.database_url:
            url = sqlalchemy_url(args.database_url)
            admin_url = url
            pgbench_url = make_url(url).set(database=PGBENCH_DB).render_as_string(hide_password=False)
            durable = None
        else:
            log("starting a durable throwaway PostgreSQL cluster")
            cluster = ThrowawayPostgres(durable=True).start()
            cluster.create_database(BENCH_DB)
            url, admin_url, pgbench_url, durable = (
                cluster.url(BENCH_DB),
                cluster.url(),
                cluster.url(PGBENCH_DB),
                True,
            )

        probe = Probe(
            CpuMeter(postmaster_pid(cluster) if cluster is not None else None),
            WaitSampler(admin_url) if args.diagnose else None,
        )
        figures = run(args, url, admin_url, probe)

        pgbench = find_pgbench()
        pg: dict[str, Any] | None = None
        if args.skip_pgbench:
            log("pgbench skipped")
        elif pgbench is None:
            log("pgbench not found: no pgbench figure")
        else:
            ensure_database(admin_url, PGBENCH_DB)
            log(f"pgbench: init scale {PGBENCH_SCALE}, then -N -c 4 -j 2 -T {args.seconds}")
            pg = run_pgbench(pgbench, pgbench_url, args.seconds, probe)
            log(f"  {pg['tps']} tps")

        pg_tps = pg["tps"] if pg else None
        batch_best = max(figures[k]["debits_per_s"] or 0 for k in BATCH_PHASES)
        single_rate = figures["single"]["debits_per_s"] or 0
        info = cluster_info(admin_url)
        out = {
            "pgbench_tps": pg_tps,
            "single": figures["single"],
            "batch_1_worker": figures["batch_1_worker"],
            "batch_2_workers": figures["batch_2_workers"],
            "batch_2_partitions": figures["batch_2_partitions"],
            "ratio_batch_vs_pgbench": round(batch_best / pg_tps, 2) if pg_tps else None,
            "ratio_single_vs_pgbench": round(single_rate / pg_tps, 2) if pg_tps else None,
            "ratio_batch_vs_single": round(batch_best / single_rate, 2) if single_rate else None,
            "goal": {"batch_vs_pgbench": BATCH_GOAL, "met": bool(pg_tps and batch_best >= BATCH_GOAL * pg_tps)},
            "pgbench": pg,
            "seed": figures["seed"],
            **({"sql_timing": figures["sql_timing"]} if "sql_timing" in figures else {}),
            "params": {
                "seconds": args.seconds,
                "threads": args.threads,
                "batch_size": args.batch_size,
                "wallets": args.wallets,
                "hot_wallets": 1,
                "hot_share": args.hot_share,
                "debit_mc": [1, MAX_DEBIT_MC],
                "seed": args.seed,
            },
            "cluster": {
                "durable": durable,
                "throwaway": cluster is not None,
                **info,
                "fdatasync_us_p50": fdatasync_us() if cluster is not None else None,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            },
            "ledger_check_ok": figures["ledger_check_ok"],
            "ledger_entries": figures["ledger_entries"],
            **({"ledger_findings": figures["ledger_findings"]} if "ledger_findings" in figures else {}),
        }
    finally:
        if cluster is not None:
            log("stopping the cluster")
            cluster.stop()
    out["run_seconds"] = round(time.perf_counter() - wall_started, 1)
    print(json.dumps(out, indent=2))
    correct = out["ledger_check_ok"] and all(out[k]["all_applied"] for k in BATCH_PHASES)
    if not correct:
        log("correctness problem: see ledger_check_ok / all_applied in the JSON")
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
