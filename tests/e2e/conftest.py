"""End to end: real processes. The Stripe emulator, gunicorn serving the receiver, a Celery worker and beat,
on their own database (cloned from the migrated template) and their own Redis (so a test can stop it).

The stack is started once per session and shared; tests keep out of each other's way by using their own
account names and idempotency keys rather than by emptying tables under running workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import stripe
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from billing_cli.dev_stack import web_worker_class
from billing_cli.throwaway import ThrowawayRedis, free_port, stop_process
from billing_core.accounts.api_keys import create_api_key
from billing_core.db.engine import make_engine, make_session_factory
from billing_core.settings import sqlalchemy_url
from tests.waiting import wait_until as wait_until  # the e2e tests import it from here

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    scratch: Path
    env: dict[str, str]
    database_url: str
    redis: ThrowawayRedis
    web_url: str
    emulator_url: str
    webhook_secret: str
    api_key: str
    engine: Engine
    session_factory: sessionmaker[Session]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # -- processes ---------------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.scratch / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            env={**self.env, **(extra_env or {})},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killing it takes its children too
        )
        self.procs[name] = proc
        return proc

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self.spawn(
            "worker",
            [
                str(BIN / "celery"),
                "-A",
                "worker",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"e2e-{uuid.uuid4().hex[:6]}@%h",
            ],
        )

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool processes at once: no chance to finish or acknowledge anything."""
        proc = self.procs.pop("worker")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.scratch / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs.values():
            stop_process(proc, grace=15)

    # -- talking to it -----------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return requests.request(method, self.web_url + path, headers=headers, timeout=30, **kwargs)

    def emulator(self, path: str, **body: Any) -> dict[str, Any]:
        response = requests.post(self.emulator_url + path, json=body, timeout=30)
        assert response.status_code < 300, response.text
        return response.json()

    def signed_post(
        self,
        event: dict[str, Any] | bytes | str,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        header: str | None = None,
    ) -> requests.Response:
        payload = event if isinstance(event, str | bytes) else json.dumps(event)
        text_payload = payload.decode() if isinstance(payload, bytes) else payload
        if header is None:
            header = stripe.WebhookSignature.generate_signature_header(
                text_payload, secret or self.webhook_secret, timestamp=timestamp or int(time.time())
            )
        return requests.post(
            self.web_url + "/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            timeout=30,
        )

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def available_mc(self, account: str) -> int | None:
        return self.scalar(
            "SELECT a.balance_mc FROM wallets w JOIN ledger_accounts a ON a.id = w.available_account_id "
            "WHERE w.account = :a",
            a=account,
        )

    def billing_check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_cli.main", "check"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


def _wait_http(url: str, proc: subprocess.Popen[bytes], stack: Stack, name: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{stack.log_tail(name)}")
        try:
            return requests.get(url, timeout=2).status_code < 500
        except requests.RequestException:
            return False

    wait_until(up, timeout=60, what=f"{name} at {url}")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with launch_stack("e2e") as running:
        yield running


@contextmanager
def launch_stack(name: str, extra_env: dict[str, str] | None = None, web_args: tuple[str, ...] = ()) -> Iterator[Stack]:
    """A stack of its own (database ``billing_<name>_<xdist worker>``, Redis, processes), stopped on exit;
    ``extra_env`` on top of the stack's environment, ``web_args`` added to gunicorn's."""
    admin_url = os.environ.get("BILLING_TEST_PG_ADMIN_URL")
    template = os.environ.get("BILLING_TEST_TEMPLATE_DB")
    if not admin_url or not template:
        pytest.exit("end-to-end tests run through scripts/test", returncode=2)
    libpq_admin = sqlalchemy_url(admin_url).replace("postgresql+psycopg://", "postgresql://")
    # One database per pytest-xdist worker: each worker that runs end-to-end tests starts a stack of its own.
    database = f"billing_{name}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    with psycopg.connect(libpq_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')
    database_url = libpq_admin.rsplit("/", 1)[0] + "/" + database
    scratch = Path(tempfile.mkdtemp(prefix="billing-e2e-"))
    redis = ThrowawayRedis(scratch).start()
    engine = make_engine(database_url, pool_size=4)
    session_factory = make_session_factory(engine)
    web_port, emulator_port = free_port(), free_port()
    secret = "whsec_e2e_" + uuid.uuid4().hex
    (scratch / "metrics").mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "STRIPE_API_KEY": "sk_test_e2e",
        "STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
        # The previous secret first: rotation means any configured secret may have signed.
        "STRIPE_WEBHOOK_SECRET": f"whsec_e2e_previous,{secret}",
        "BILLING_SWEEP_SECONDS": "1",
        "BILLING_SWEEP_STALE_SECONDS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics"),
        # gunicorn's control socket defaults to one path per user, which a dev stack or another run would share.
        "GUNICORN_CMD_ARGS": "--no-control-socket",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    stack = Stack(
        scratch=scratch,
        env=env,
        database_url=database_url,
        redis=redis,
        web_url=f"http://127.0.0.1:{web_port}",
        emulator_url=f"http://127.0.0.1:{emulator_port}",
        webhook_secret=secret,
        api_key=create_api_key(session_factory, "e2e", ["admin"])[1],
        engine=engine,
        session_factory=session_factory,
    )
    try:
        emulator = stack.spawn(
            "emulator", [sys.executable, "-m", "stripe_emulator", "--host", "127.0.0.1", "--port", str(emulator_port)]
        )
        web = stack.spawn(
            "web",
            [
                str(BIN / "gunicorn"),
                "-c",  # as the Procfile: gunicorn's lines in LOG_FORMAT, dead workers marked in the metrics
                "python:webhook_receiver.gunicorn_conf",
                *web_args,
                "--bind",
                f"127.0.0.1:{web_port}",
                "--worker-class",  # as the Procfile
                web_worker_class(),
                "--workers",
                "2",
                "webhook_receiver:create_app()",
            ],
        )
        stack.start_worker()
        stack.spawn(
            "beat",
            [str(BIN / "celery"), "-A", "worker", "--quiet", "beat", "--schedule", str(scratch / "beat-schedule")],
        )
        _wait_http(f"{stack.emulator_url}/_emulator/webhook_endpoints", emulator, stack, "emulator")
        stack.emulator("/_emulator/webhook_endpoints", url=f"{stack.web_url}/webhooks/stripe", secret=secret)
        _wait_http(f"{stack.web_url}/healthz", web, stack, "web")
        yield stack
    finally:
        stack.stop()
        engine.dispose()
        redis.stop()
        with psycopg.connect(libpq_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if os.environ.get("BILLING_E2E_KEEP_LOGS"):
            print(f"e2e logs kept in {scratch}")
        else:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def run_id() -> str:
    """A fresh suffix for this test's accounts and keys."""
    return uuid.uuid4().hex[:10]
