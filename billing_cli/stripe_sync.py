"""``billing stripe``: the catalog in Stripe (``sync-products``: packages and plans)."""

from __future__ import annotations

import click

from billing_cli.environment import fail, sessions, settings_or_exit


@click.group("stripe")
def stripe_group() -> None:
    """Stripe's side of the catalog."""


@stripe_group.command("sync-products")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing in Stripe or the database.")
def sync_products(dry_run: bool) -> None:
    """Create or update a Stripe Product and Price for every credit package, and a Product per plan with a
    recurring Price per interval (the allowance terms in its metadata), and store their ids (checkout and
    subscriptions then sell the stored Prices). Running it again changes nothing; a changed amount gets a new
    Price."""
    from billing_core.pricing.catalog import load_price_table
    from billing_core.pricing.packages import sellable_packages
    from billing_core.pricing.plans import plan_prices
    from billing_core.stripe.catalog_sync import sync_packages, sync_plans
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
            packages = sync_packages(session_factory, gateway, sellable_packages(table), dry_run=dry_run)
            plans = sync_plans(session_factory, gateway, plan_prices(table.spec.plans), dry_run=dry_run)
    except GatewayError as exc:
        fail(f"Stripe: {exc.message}")
    for result in packages:
        click.echo(result.line(dry_run))
    for result in plans:
        click.echo(f"plan {result.line(dry_run)}")
    changed = sum(r.action not in ("unchanged", "pinned") for r in (*packages, *plans))
    what = "would change" if dry_run else "changed"
    click.echo(f"{len(packages)} package(s), {len(plans)} plan price(s), {changed} {what}", err=True)
