"""``billing apikey``: API keys, shown once when created, stored as their hash."""

from __future__ import annotations

import click

from billing_cli.environment import fail, sessions, settings_or_exit
from billing_core.errors import BillingError


@click.group()
def apikey() -> None:
    """API keys: create (shown once), list, revoke."""


@apikey.command("create")
@click.option("--name", required=True, help="Who or what uses the key.")
@click.option("--scopes", required=True, help="Comma-separated: usage:write, usage:read, accounts:read, ...")
def apikey_create(name: str, scopes: str) -> None:
    """Create a key. It is printed once, alone on the last line; only its hash is stored."""
    from billing_core.accounts.api_keys import create_api_key

    with sessions(settings_or_exit()) as session_factory:
        try:
            view, key = create_api_key(session_factory, name, scopes)
        except BillingError as exc:
            fail(f"{exc.code}: {exc.message}")
    click.echo(f"created API key {view.id} ({view.prefix}...) for {name!r} with scopes {','.join(sorted(view.scopes))}")
    click.echo("store it now: it cannot be shown again")
    click.echo(key)


@apikey.command("list")
def apikey_list() -> None:
    """List keys (prefix, name, scopes, whether revoked)."""
    from billing_core.accounts.api_keys import list_api_keys

    with sessions(settings_or_exit()) as session_factory:
        views = list_api_keys(session_factory)
    for view in views:
        state = f"revoked {view.revoked_at.isoformat()}" if view.revoked_at else "active"
        click.echo(f"{view.id}\t{view.prefix}...\t{view.name}\t{','.join(sorted(view.scopes))}\t{state}")


@apikey.command("revoke")
@click.argument("key_id", type=int)
def apikey_revoke(key_id: int) -> None:
    """Revoke key KEY_ID (the receiver stops accepting it within seconds)."""
    from billing_core.accounts.api_keys import revoke_api_key

    with sessions(settings_or_exit()) as session_factory:
        revoked = revoke_api_key(session_factory, key_id)
    if not revoked:
        fail(f"no active key {key_id}")
    click.echo(f"revoked key {key_id}")
