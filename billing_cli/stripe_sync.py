"""``billing stripe``: the catalog in Stripe (``sync-products``)."""

from __future__ import annotations

import click

from billing_cli.environment import fail, sessions, settings_or_exit


@click.group("stripe")
def stripe_group() -> None:
    """Stripe's side of the catalog."""


@stripe_group.command("sync-products")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing in Stripe or the database.")
def sync_products(dry_run: bool) -> None:
    """Create or update a Stripe Product and Price for every credit package and store their ids (checkout then
    sells the stored Price). Running it again changes nothing; a changed amount gets a new Price."""
    from billing_core.pricing.catalog import load_price_table
    from billing_core.pricing.packages import sellable_packages
    from billing_core.stripe.catalog_sync import sync_packages
    from billing_core.stripe.gateway import GatewayError, StripeGateway

    settings = settings_or_exit()
    if settings.stripe_api_key is None:
        fail("STRIPE_API_KEY is not set: there is no Stripe to sync with", exit_code=2)
    try:
        table = load_price_table(settings.billing_pricing_file)
    except ValueError as exc:
        fail(str(exc), exit_code=2)
    gateway = StripeGateway(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
    try:
        with sessions(settings) as session_factory:
            results = sync_packages(session_factory, gateway, sellable_packages(table), dry_run=dry_run)
    except GatewayError as exc:
        fail(f"Stripe: {exc.message}")
    for result in results:
        click.echo(result.line(dry_run))
    changed = sum(r.action not in ("unchanged", "pinned") for r in results)
    what = "would change" if dry_run else "changed"
    click.echo(f"{len(results)} package(s), {changed} {what}", err=True)
