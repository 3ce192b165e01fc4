"""``billing reconcile`` (the events pass, now) and ``billing discrepancies`` (list, resolve)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from billing_cli.environment import fail, sessions, settings_or_exit
from billing_cli.ops import _operator, _utc_time


def print_run(run: Any) -> None:
    """A recorded run as the CLI shows it: window, counts, duration."""
    window_end = run.window_end.isoformat() if run.window_end else "-"
    window_start = run.window_start.isoformat() if run.window_start else "-"
    duration = f"{run.duration_seconds:.2f}s" if run.duration_seconds is not None else "-"
    resumed = " (resumed)" if run.resumed else ""
    click.echo(f"run {run.id} {run.kind}: {run.status}{resumed}")
    click.echo(f"  window   {window_start} .. {window_end}")
    click.echo(f"  duration {duration}")
    click.echo("  counts   " + json.dumps(dict(sorted(run.counts.items()))))
    if run.error:
        click.echo(f"  error    {run.error}")


@click.command()
@click.option(
    "--since",
    callback=_utc_time,
    help="Read Stripe's events from this time (ISO 8601) instead of the stored checkpoint minus the overlap.",
)
@click.option("--runs", "show_runs", is_flag=True, help="Show the recent runs instead of running one.")
@click.option(
    "--objects",
    "objects",
    is_flag=True,
    help="Run the objects pass instead: the last --days days' paid sessions and invoices, refunds and disputes "
    "against the ledger.",
)
@click.option("--days", type=click.IntRange(1, 90), help="The objects pass's window (default BILLING_RECONCILE_DAYS).")
def reconcile(since: datetime | None, show_runs: bool, objects: bool, days: int | None) -> None:
    """Read Stripe's events since the checkpoint; store and apply those the webhooks missed; print the run.
    With --objects: compare Stripe's paid sessions and invoices, refunds and disputes with the ledger instead
    (see ``billing discrepancies``)."""
    from billing_core.reconcile.events import AnotherRunInProgress, recent_runs, reconcile_events
    from billing_core.reconcile.objects import reconcile_objects
    from billing_core.stripe.gateway import GatewayError, StripeGateway

    settings = settings_or_exit()
    if show_runs:
        with sessions(settings) as session_factory:
            for run in recent_runs(session_factory):
                print_run(run)
        return
    if settings.stripe_api_key is None:
        fail("STRIPE_API_KEY is not set: reconciliation reads Stripe")
    gateway = StripeGateway(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
    with sessions(settings) as session_factory:
        try:
            if objects:
                run = reconcile_objects(
                    session_factory,
                    gateway,
                    days=days or settings.reconcile_days,
                    requests_per_second=settings.reconcile_requests_per_second,
                )
            else:
                run = reconcile_events(
                    session_factory,
                    gateway,
                    since=since,
                    overlap=timedelta(seconds=settings.reconcile_overlap_seconds),
                    requests_per_second=settings.reconcile_requests_per_second,
                )
        except AnotherRunInProgress as exc:
            fail(str(exc))
        except GatewayError as exc:
            fail(f"Stripe: {exc.message} (the run is kept and resumes next time)")
    print_run(run)


@click.group(invoke_without_command=True)
@click.option("--all", "include_resolved", is_flag=True, help="Resolved ones too.")
@click.pass_context
def discrepancies(ctx: click.Context, include_resolved: bool) -> None:
    """What reconciliation found and did not heal by itself: list them (open ones by default)."""
    if ctx.invoked_subcommand is not None:
        return
    from billing_core.reconcile.discrepancies import listed

    with sessions(settings_or_exit()) as session_factory:
        found = listed(session_factory, include_resolved=include_resolved)
    for item in found:
        state = f"resolved by {item.resolved_by}: {item.note}" if item.resolved_at else "open"
        click.echo(
            f"{item.id}\t{item.kind}\t{item.stripe_id or '-'}\t{item.account or '-'}\t"
            f"expected={json.dumps(item.expected)}\tfound={json.dumps(item.found)}\t{state}"
        )
    click.echo(f"{len(found)} discrepancies" + ("" if include_resolved else " open"))


@discrepancies.command("resolve")
@click.argument("discrepancy_id", type=int)
@click.option("--note", required=True, help="How it was resolved: recorded with who resolved it.")
def resolve_command(discrepancy_id: int, note: str) -> None:
    """Close a discrepancy with a note."""
    from billing_core.errors import BillingError
    from billing_core.reconcile.discrepancies import resolve

    with sessions(settings_or_exit()) as session_factory:
        try:
            item = resolve(session_factory, discrepancy_id, note=note, by=_operator())
        except BillingError as exc:
            fail(exc.message)
    when = item.resolved_at.astimezone(UTC).isoformat() if item.resolved_at else "-"
    click.echo(f"discrepancy {item.id} resolved by {item.resolved_by} at {when}: {item.note}")


@click.command()
@click.option("--record", is_flag=True, help="Also record each problem as an admin alert (as beat's run does).")
def health(record: bool) -> None:
    """The internal checks beat runs every 5 minutes: the ledger's invariants, inbox lag, the outbox's backlog
    (thresholds from BILLING_HEALTH_*); exit 0 when healthy, 1 with the problems."""
    from billing_core.reconcile.health import Thresholds, find_problems, run_health_checks

    settings = settings_or_exit()
    thresholds = Thresholds(
        inbox_lag=timedelta(seconds=settings.health_inbox_lag_seconds),
        outbox_backlog=settings.health_outbox_backlog,
        outbox_age=timedelta(seconds=settings.health_outbox_age_seconds),
    )
    with sessions(settings) as session_factory:
        check = run_health_checks if record else find_problems
        report = check(session_factory, thresholds=thresholds)
    for problem in report.problems:
        click.echo(str(problem))
    alerted = f", {len(report.alerted)} new alert(s)" if record else ""
    click.echo(f"health {'ok' if report.ok else f'FAILED ({len(report.problems)} problems)'}{alerted}")
    raise SystemExit(0 if report.ok else 1)
