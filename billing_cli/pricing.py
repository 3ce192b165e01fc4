"""``billing pricing``: the price catalog's versions. Load one ahead of time (it takes effect at its time in
every running process, without a deploy), show the one in effect at a time, diff two."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from billing_cli.environment import fail, sessions, settings_or_exit
from billing_core.errors import BillingError

if TYPE_CHECKING:
    from billing_core.pricing.catalog import PriceTable
    from billing_core.pricing.versions import PriceBook, ScheduledVersion


def _time(value: str, option: str) -> datetime:
    """An ISO 8601 time (``2027-01-01T00:00:00+00:00``, ``...Z``, or ``now``); without a zone it is UTC."""
    if value.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"invalid_request: {option}: not an ISO 8601 time: {value!r}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _book(session_factory: Any) -> PriceBook:
    from billing_core.pricing.catalog import load_price_table
    from billing_core.pricing.versions import PriceBook

    settings = settings_or_exit()
    try:
        base = load_price_table(settings.billing_pricing_file)
    except ValueError as exc:
        fail(str(exc))
    return PriceBook(base, session_factory=session_factory, refresh_seconds=0)


@click.group()
def pricing() -> None:
    """The price catalog: load a version ahead of time, show the one in effect, diff two."""


@pricing.command("load")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--effective-at", "effective_at", default=None, help="ISO 8601 time (default: the file's effective_at).")
@click.option("--note", default=None, help="Why: kept with the version.")
@click.option("--force", is_flag=True, help="Accept an effective time in the past.")
def load(file: str, effective_at: str | None, note: str | None, force: bool) -> None:
    """Validate FILE and schedule it as a catalog version taking effect at --effective-at."""
    from billing_core.pricing.catalog import PriceTable, load_price_table
    from billing_core.pricing.versions import load_version

    try:
        table = PriceTable.from_file(file)
    except ValueError as exc:
        fail(f"invalid_catalog: {exc}")
    when = _time(effective_at, "--effective-at") if effective_at else table.effective_at
    if when is None:
        fail("invalid_request: --effective-at is required (the file has no effective_at)")
    settings = settings_or_exit()
    try:
        base = load_price_table(settings.billing_pricing_file)
        with sessions(settings) as session_factory:
            result = load_version(session_factory, table, effective_at=when, note=note, force=force, base=base)
    except BillingError as exc:
        fail(f"{exc.code}: {exc.message}")
    except ValueError as exc:
        fail(str(exc))
    models = sum(len(table.models(p)) for p in table.providers)
    if result.created:
        click.echo(
            f"loaded price version {result.version} ({len(table.providers)} providers, {models} models) "
            f"effective at {result.effective_at.isoformat()}"
        )
    else:
        click.echo(f"price version {result.version} already loaded, effective at {result.effective_at.isoformat()}")
    click.echo(f"sha256 {table.sha256}")


@pricing.command("show")
@click.option("--at", "at", default=None, help="ISO 8601 time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def show(at: str | None, as_json: bool) -> None:
    """The catalog version in effect (now or --at): its models and prices, tiers, fees and agents."""
    when = _time(at, "--at") if at else datetime.now(UTC)
    with sessions(settings_or_exit()) as session_factory:
        book = _book(session_factory)
        scheduled = book.in_effect(when)
        following = [v for v in book.schedule() if v.effective_at > when]
    if as_json:
        click.echo(json.dumps(_as_json(scheduled, following[0] if following else None), indent=2))
        return
    for line in _as_text(scheduled, following[0] if following else None):
        click.echo(line)


@pricing.command("diff")
@click.argument("from_version", metavar="[FROM]", required=False)
@click.argument("to_version", metavar="[TO]", required=False)
def diff(from_version: str | None, to_version: str | None) -> None:
    """Prices added, removed and changed from version FROM to TO. By default: the version in effect against the
    next scheduled one, or, when none is scheduled, the previous one against the version in effect."""
    from billing_core.pricing.versions import diff_tables

    now = datetime.now(UTC)
    with sessions(settings_or_exit()) as session_factory:
        book = _book(session_factory)
        schedule = book.schedule()
        current = book.in_effect(now)
    by_id = {v.version: v for v in schedule}
    if from_version is not None:
        old = by_id.get(from_version) or fail(f"unknown_version: no price version {from_version!r}")
        if to_version is not None:
            new = by_id.get(to_version) or fail(f"unknown_version: no price version {to_version!r}")
        else:
            new = current
    else:
        position = schedule.index(current)
        if position + 1 < len(schedule):
            old, new = current, schedule[position + 1]
        elif position > 0:
            old, new = schedule[position - 1], current
        else:
            click.echo(f"only one price version ({current.version}): nothing to compare")
            return
    changes = diff_tables(old.table, new.table)
    click.echo(f"price version {old.version} ({_when(old)}) -> {new.version} ({_when(new)})")
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for change in changes:
        if change.kind == "changed":
            click.echo(f"~ {change.path}: {change.old} -> {change.new}")
        else:
            click.echo(f"{marks[change.kind]} {change.path}: {change.new if change.old is None else change.old}")
    counts = {kind: sum(1 for c in changes if c.kind == kind) for kind in marks}
    click.echo(f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed")


# -- rendering ------------------------------------------------------------------------------------------------
def _when(version: ScheduledVersion) -> str:
    from billing_core.pricing.versions import BEGINNING

    return "from the beginning" if version.effective_at == BEGINNING else f"from {version.effective_at.isoformat()}"


def _models(table: PriceTable) -> list[dict[str, Any]]:
    rows = []
    for provider, models in table.spec.llm_tokens.items():
        for model in models:
            price = table.model_price(provider, model)
            row: dict[str, Any] = {"provider": provider, "model": model, "scheme": price.scheme}
            if price.model != model:
                row["alias_of"] = price.model
            if price.input_usd_per_1m is not None:
                row["input_usd_per_1m"] = str(price.input_usd_per_1m)
                row["output_usd_per_1m"] = str(price.output_usd_per_1m)
                row["cached_input_usd_per_1m"] = (
                    None if price.cached_input_usd_per_1m is None else str(price.cached_input_usd_per_1m)
                )
            if price.scheme != "per_token":
                row["tokens_per_credit"] = table.tokens_per_credit
            row["input_per_1m"] = price.breakdown.get("input_per_1m")
            row["output_per_1m"] = price.breakdown.get("output_per_1m")
            row["cached_input_per_1m"] = price.breakdown.get("cached_input_per_1m")
            row["as_of"] = price.as_of.isoformat() if price.as_of else None
            rows.append(row)
    return rows


def _as_json(version: ScheduledVersion, following: ScheduledVersion | None) -> dict[str, Any]:
    table = version.table
    return {
        "version": version.version,
        "effective_at": version.effective_at.isoformat(),
        "source": version.source,
        "note": version.note,
        "next": None
        if following is None
        else {"version": following.version, "effective_at": following.effective_at.isoformat()},
        "credit": {"usd_per_credit": str(table.usd_per_credit), "markup": str(table.markup)},
        "token_bundle": {"tokens_per_credit": table.tokens_per_credit},
        "models": _models(table),
        "tiers": [
            {
                "tier": t.code,
                "name": t.name,
                "fee": str(t.fee),
                "unit": t.unit,
                "requires_system_credits": t.requires_system_credits,
            }
            for t in table.tiers
        ],
        "fees": {code: str(table.fee(code)) for code in table.fee_codes},
        "agents": [{"code": a.code, "name": a.name, "credits": str(a.credits)} for a in table.agents],
        "sha256": table.sha256,
    }


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()] + [
        fmt.format(*r).rstrip() for r in rows
    ]


def _as_text(version: ScheduledVersion, following: ScheduledVersion | None) -> list[str]:
    table = version.table
    out = [
        f"price version {version.version} ({version.source}), in effect {_when(version)}"
        + (f"; note: {version.note}" if version.note else ""),
        f"next: {following.version} {_when(following)}" if following else "next: none scheduled",
        f"1 credit = {table.usd_per_credit} USD, markup {table.markup}; token bundle: {table.tokens_per_credit} "
        "tokens per credit",
        "",
        "token prices per 1M tokens: USD list price -> credits",
    ]
    rows = []
    for m in _models(table):
        if "alias_of" in m:
            rows.append([m["provider"], m["model"], f"= {m['alias_of']}", "", "", ""])
        elif m["scheme"] != "per_token":
            per_credit = f"{table.tokens_per_credit} tokens/credit"
            rows.append([m["provider"], m["model"], "token bundle", per_credit, per_credit, m["as_of"] or ""])
        else:
            cached = m["cached_input_usd_per_1m"]
            rows.append(
                [
                    m["provider"],
                    m["model"],
                    f"${m['input_usd_per_1m']} -> {m['input_per_1m']}",
                    f"${m['output_usd_per_1m']} -> {m['output_per_1m']}",
                    "-" if cached is None else f"${cached} -> {m['cached_input_per_1m']}",
                    m["as_of"] or "",
                ]
            )
    out += _table(["provider", "model", "input", "output", "cached input", "as of"], rows)
    out += ["", "tiers (credits)"]
    out += _table(
        ["tier", "name", "fee", "per", "requires system credits"],
        [[t.code, t.name, str(t.fee), t.unit, "yes" if t.requires_system_credits else "no"] for t in table.tiers],
    )
    out += ["", "agents (credits per run)"]
    out += _table(["agent", "name", "credits"], [[a.code, a.name, str(a.credits)] for a in table.agents])
    out += ["", "fees (credits)"]
    out += _table(["fee", "credits"], [[code, str(table.fee(code))] for code in table.fee_codes])
    return out
