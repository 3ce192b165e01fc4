"""``billing``: the operators' command line. Each group of commands lives in its own module; this is the
group that gathers them (``python -m billing_cli`` and ``python -m billing_cli.main`` run it too)."""

from __future__ import annotations

import click

from billing_cli import config, keys, notifications, ops, pricing, reconcile, schema, serve, stripe_sync
from billing_cli.limits import limits
from billing_core import logs


@click.group()
@click.version_option(package_name="credit-billing", prog_name="billing")
def main() -> None:
    """Credit billing pipeline: operators' commands."""
    # The commands print their results; the log (warnings, mostly) is text unless LOG_FORMAT says json.
    logs.configure(default="text", level="WARNING")


for command in (
    schema.db,
    ops.check,
    ops.grant,
    ops.balance,
    keys.apikey,
    ops.dead,
    ops.replay,
    serve.stripe_emulator,
    serve.dev,
    config.config,  # packages and the sales guard
    config.sales_guard,
    stripe_sync.stripe_group,
    limits,
    pricing.pricing,
    reconcile.reconcile,
    reconcile.discrepancies,
    reconcile.health,
    notifications.notifications,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
