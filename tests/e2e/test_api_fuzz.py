"""The API described and fuzzed: schemathesis (its CLI, as an operator would run it) against the running web
process, every operation of ``/openapi.json`` including the admin ones, with an admin key. No answer may be a
5xx, and every answer must match the document: a status it lists for that operation, the content type it
names, a body that validates against its schema.

The web process has a database and a Redis of its own (cloned from the migrated template): the fuzzer writes
settings, grants and keys at random, which must not reach the shared end-to-end stack's tests. Stripe is the
project's emulator, as everywhere in the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests

from billing_cli.dev_stack import web_worker_class
from billing_cli.throwaway import ThrowawayRedis, free_port, stop_process
from billing_core.accounts.api_keys import create_api_key
from billing_core.db.engine import make_engine, make_session_factory
from billing_core.ledger.commands import GrantCredits
from billing_core.ledger.handlers import execute
from billing_core.settings import sqlalchemy_url
from tests.e2e.conftest import BIN, ROOT, wait_until

pytestmark = pytest.mark.integration

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@dataclass
class Web:
    url: str
    admin_key: str
    log: Path


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    admin_url = os.environ.get("BILLING_TEST_PG_ADMIN_URL")
    template = os.environ.get("BILLING_TEST_TEMPLATE_DB")
    if not admin_url or not template:
        pytest.exit("end-to-end tests run through scripts/test", returncode=2)
    libpq_admin = sqlalchemy_url(admin_url).replace("postgresql+psycopg://", "postgresql://")
    database = f"billing_fuzz_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    with psycopg.connect(libpq_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')
    database_url = libpq_admin.rsplit("/", 1)[0] + "/" + database
    scratch = Path(tempfile.mkdtemp(prefix="billing-fuzz-"))
    redis = ThrowawayRedis(scratch).start()
    engine = make_engine(database_url, pool_size=2)
    session_factory = make_session_factory(engine)
    admin_key = create_api_key(session_factory, "fuzz", ["admin"])[1]
    # A funded account, so that operations on "acme" reach past the balance checks some of the time.
    execute(session_factory, GrantCredits("acme", 5_000_000, "fuzz-fund"))
    port, stripe_port = free_port(), free_port()
    log = scratch / "web.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "STRIPE_API_KEY": "sk_test_fuzz",
        "STRIPE_API_BASE": f"http://127.0.0.1:{stripe_port}",
        "STRIPE_WEBHOOK_SECRET": "whsec_fuzz_" + uuid.uuid4().hex,
        "GUNICORN_CMD_ARGS": "--no-control-socket",
        # The fuzzer's own pace is the point: the per-key request limit would answer 429 to most of it.
        "BILLING_API_RATE_LIMIT": "100000/second",
    }
    with log.open("ab") as out:
        emulator = subprocess.Popen(
            [sys.executable, "-m", "stripe_emulator", "--host", "127.0.0.1", "--port", str(stripe_port)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "--bind",
                f"127.0.0.1:{port}",
                "--worker-class",
                web_worker_class(),
                "--workers",
                "2",
                "webhook_receiver:create_app()",
            ],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"web exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                return requests.get(url + "/healthz", timeout=2).status_code < 500
            except requests.RequestException:
                return False

        wait_until(up, timeout=60, what="the web process")
        wait_until(lambda: _answers(f"http://127.0.0.1:{stripe_port}/_emulator/webhook_endpoints"), what="Stripe")
        yield Web(url, admin_key, log)
    finally:
        stop_process(proc, grace=10)
        stop_process(emulator, grace=10)
        engine.dispose()
        redis.stop()
        with psycopg.connect(libpq_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def test_every_operation_answers_what_the_document_says_and_never_5xx(web: Web, tmp_path: Path) -> None:
    # given the running app's own document, every operation in it, and an admin key
    document = requests.get(web.url + "/openapi.json", timeout=10).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert operations >= 30 and any(p.startswith("/v1/admin/") for p in document["paths"])
    # when schemathesis generates requests for each (examples, boundary cases, then random ones)
    done = _fuzz(web, tmp_path)
    if done.returncode != 0 and _INTERPRETER_BUG in done.stdout:
        # CPython 3.11's ast.parse now and then raises this SystemError (its recursion-depth bookkeeping) when
        # hypothesis describes one of its own lambdas, seen once in CI: a crash of the fuzzer, not an answer of ours.
        # The same seed is run again; a second crash, or any other failure, fails the test.
        done = _fuzz(web, tmp_path)
    # then it found nothing: no 5xx, no status, content type or body the document does not describe
    report = done.stdout[-12000:] + done.stderr[-2000:]
    assert done.returncode == 0, report + "\n--- web log ---\n" + web.log.read_text(errors="replace")[-4000:]
    assert "No issues found" in done.stdout or " passed" in done.stdout, report


_INTERPRETER_BUG = "AST constructor recursion depth mismatch"


def _fuzz(web: Web, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "st"),
            "run",
            web.url + "/openapi.json",
            "--checks",
            CHECKS,
            "--header",
            f"Authorization: Bearer {web.admin_key}",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--seed",
            "20261207",
            "--workers",
            "2",
            "--request-timeout",
            "20",
            "--suppress-health-check",
            "all",
            "--warnings",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=tmp_path,  # its cache of found failures goes there, not into the repository
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
