"""``billing notifications``: the outbox as the operators see it: list by status, replay one row."""

from __future__ import annotations

import click

from billing_cli.environment import fail, sessions, settings_or_exit
from billing_core.notify.outbox import STATUSES


@click.group(invoke_without_command=True)
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only the rows in this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_context
def notifications(ctx: click.Context, status: str | None, limit: int) -> None:
    """List notifications (newest first): id, kind, channel, status, attempts, next attempt, account, error."""
    if ctx.invoked_subcommand is not None:
        return
    from billing_core.notify.outbox import list_notifications

    with sessions(settings_or_exit()) as session_factory:
        found = list_notifications(session_factory, status=status, limit=limit)
    for row in found:
        click.echo(
            "\t".join(
                [
                    str(row.id),
                    row.kind,
                    row.channel,
                    row.status,
                    f"{row.attempts} attempts",
                    (row.sent_at or row.next_attempt_at).isoformat(),
                    row.account or f"({row.audience})",
                    row.dedupe_key,
                    row.last_error or "",
                ]
            )
        )
    click.echo(f"{len(found)} notification(s)", err=True)


@notifications.command("replay")
@click.argument("notification_id", type=int)
def replay(notification_id: int) -> None:
    """Send notification NOTIFICATION_ID again (dead, sent or skipped), with a fresh attempt count."""
    from billing_core.notify.outbox import replay as replay_row

    with sessions(settings_or_exit()) as session_factory:
        found = replay_row(session_factory, notification_id)
    if not found:
        fail(f"no notification {notification_id}")
    click.echo(f"{notification_id}: pending")
