"""The catalog in Stripe: a Product and a Price per credit package, created or updated by
``billing stripe sync-products`` and remembered in ``stripe_catalog`` so checkout sells the stored Price.

How it finds what it made before, the way Stripe recommends it (and dj-stripe does it):
- the Product has our own stable id, ``billing_package_<package id>`` (Stripe accepts an id on create), so
  it is retrieved by id, never searched for; a changed name or description is updated in place;
- the Price carries the lookup key ``billing_package_<package id>``. A Price's amount and currency never
  change in Stripe: when the package's differ, a new Price is created with ``transfer_lookup_key`` (the key
  moves to it in the same call) and the old one is deactivated, so links and reports that name the old one
  keep working and nothing can buy at the old amount.

Every create carries an idempotency key derived from what it creates (and from the Price it replaces), so a
sync that dies half way and runs again gets the same objects back instead of duplicates; a second run
finds everything as wanted and changes nothing, in Stripe or in the database. A package with a pinned
``stripe_price`` in the price file is left alone: the file's Price wins.

Plans with prices get the same treatment (``sync_plans``): a Product ``billing_plan_<plan>``, and a recurring
Price per interval with the lookup key ``billing_plan_<plan>_<interval>`` whose metadata carries the allowance
terms (``plan_price_metadata``); a change of those terms alone updates that metadata in place.

Stripe is called outside any transaction (DESIGN rule 10); the ids are stored afterwards, in one short one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import StripeCatalogRow
from billing_core.db.unit_of_work import utcnow
from billing_core.pricing.packages import Package
from billing_core.pricing.plans import PlanPrice
from billing_core.stripe.gateway import StripeNotFound
from billing_core.units import format_credits

PACKAGE = "package"
_CATALOG: Table = StripeCatalogRow.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
catalog = _CATALOG.c
_READ_ALL = select(
    catalog.ref,
    catalog.stripe_product_id,
    catalog.stripe_price_id,
    catalog.unit_amount,
    catalog.currency,
    catalog.fingerprint,
).where(catalog.kind == bindparam("kind"))
_READ_PRICE = select(catalog.stripe_price_id).where(
    catalog.kind == bindparam("kind"),
    catalog.ref == bindparam("ref"),
    catalog.unit_amount == bindparam("unit_amount"),
    catalog.currency == bindparam("currency"),
)
_UPSERT = pg_insert(_CATALOG).values(
    kind=bindparam("kind"),
    ref=bindparam("ref"),
    stripe_product_id=bindparam("product"),
    stripe_price_id=bindparam("price"),
    unit_amount=bindparam("unit_amount"),
    currency=bindparam("currency"),
    fingerprint=bindparam("fingerprint"),
    synced_at=bindparam("now"),
)
_UPSERT = _UPSERT.on_conflict_do_update(
    index_elements=[catalog.kind, catalog.ref],
    set_={
        name: getattr(_UPSERT.excluded, name)
        for name in ("stripe_product_id", "stripe_price_id", "unit_amount", "currency", "fingerprint", "synced_at")
    },
)


class CatalogGateway(Protocol):
    """What the sync needs of Stripe (``StripeGateway``)."""

    def create_product(
        self,
        *,
        name: str,
        product_id: str | None = None,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...
    def retrieve_product(self, product_id: str) -> dict[str, Any]: ...
    def update_product(self, product_id: str, **fields: Any) -> dict[str, Any]: ...
    def create_price(
        self,
        *,
        product: str,
        unit_amount: int,
        currency: str,
        lookup_key: str | None = None,
        transfer_lookup_key: bool = False,
        nickname: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...
    def update_price(self, price_id: str, **fields: Any) -> dict[str, Any]: ...
    def list_prices(
        self,
        *,
        lookup_keys: list[str] | None = None,
        product: str | None = None,
        active: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class StoredPrice:
    product: str
    price: str
    unit_amount: int
    currency: str
    fingerprint: str


@dataclass(frozen=True)
class SyncResult:
    """What the sync did (or, dry, would do) for one package: ``action`` is ``created`` (a new Product and
    Price), ``updated`` (Product details), ``replaced`` (a new Price for a new amount), ``unchanged`` or
    ``pinned``; ``notes`` says what changed."""

    package: str
    action: str
    product: str | None
    price: str | None
    notes: tuple[str, ...] = ()

    def line(self, dry_run: bool = False) -> str:
        verb = f"would be {self.action}" if dry_run and self.action not in ("unchanged", "pinned") else self.action
        ids = " ".join(x for x in (self.product, self.price) if x)
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.package}: {verb} {ids}{notes}".rstrip()


def product_id_for(package: Package) -> str:
    return f"billing_package_{package.id}"


def lookup_key_for(package: Package) -> str:
    return f"billing_package_{package.id}"


def fingerprint(package: Package) -> str:
    """What the Stripe objects of ``package`` show, hashed: unchanged means nothing to do."""
    shown = [package.name, package.description, package.unit_amount, package.currency, package.credits_mc]
    shown.append(package.bonus_mc)
    return hashlib.sha256(json.dumps(shown, separators=(",", ":")).encode()).hexdigest()


def _metadata(package: Package) -> dict[str, str]:
    return {
        "billing_package": package.id,
        "credits": format_credits(package.total_mc),
        "bonus_credits": format_credits(package.bonus_mc),
    }


def _key(kind: str, package: Package, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return f"billing-sync:{kind}:{package.id}:{digest}"


def stored_prices(session: Session) -> dict[str, StoredPrice]:
    """Every package's stored Stripe ids, by package id."""
    return {
        ref: StoredPrice(product, price, unit_amount, currency, digest)
        for ref, product, price, unit_amount, currency, digest in session.execute(_READ_ALL, {"kind": PACKAGE})
    }


def price_for(session: Session, package: Package) -> str | None:
    """The Stripe Price that sells ``package``: the one pinned in the price file, else the synced one while it
    still charges the package's amount in its currency; None: sell it inline (``price_data``)."""
    if package.stripe_price:
        return package.stripe_price
    params = {"kind": PACKAGE, "ref": package.id, "unit_amount": package.unit_amount, "currency": package.currency}
    found: str | None = session.execute(_READ_PRICE, params).scalar()
    return found


def synced_price(stored: dict[str, StoredPrice], package: Package) -> str | None:
    """From ``stored_prices``: the synced Price of ``package`` while it charges the package's amount."""
    found = stored.get(package.id)
    if found is None or (found.unit_amount, found.currency) != (package.unit_amount, package.currency):
        return None
    return found.price


def _sync_product(gateway: CatalogGateway, package: Package, dry_run: bool) -> tuple[str, list[str], bool]:
    """The package's Product (created or brought up to date): its id, what changed, whether it is new."""
    product_id = product_id_for(package)
    try:
        product = gateway.retrieve_product(product_id)
    except StripeNotFound:
        if not dry_run:
            params = {"name": package.name, "description": package.description, "metadata": _metadata(package)}
            gateway.create_product(
                product_id=product_id,
                name=package.name,
                description=package.description,
                metadata=_metadata(package),
                idempotency_key=_key("product", package, params),
            )
        return product_id, [], True
    changes: dict[str, Any] = {}
    if product.get("name") != package.name:
        changes["name"] = package.name
    if package.description is not None and product.get("description") != package.description:
        changes["description"] = package.description
    if not product.get("active", True):
        changes["active"] = True
    wanted = _metadata(package)
    if any((product.get("metadata") or {}).get(k) != v for k, v in wanted.items()):
        changes["metadata"] = wanted
    if changes and not dry_run:
        gateway.update_product(product_id, **changes)
    return product_id, [f"product {name}" for name in changes], False


def _sync_price(
    gateway: CatalogGateway, package: Package, product_id: str, product_is_new: bool, dry_run: bool
) -> tuple[str | None, str | None, bool]:
    """The package's Price: ``(price id, the Price it replaced, whether it is new)``; the id is None when a
    dry run would create one."""
    lookup_key = lookup_key_for(package)
    current = None if product_is_new else next(iter(gateway.list_prices(lookup_keys=[lookup_key], limit=1)), None)
    if (
        current is not None
        and current.get("active")
        and current.get("unit_amount") == package.unit_amount
        and current.get("currency") == package.currency
        and current.get("product") == product_id
        and current.get("type", "one_time") == "one_time"
    ):
        return str(current["id"]), None, False
    replaced = str(current["id"]) if current is not None else None
    if dry_run:
        return None, replaced, True
    params: dict[str, Any] = {
        "product": product_id,
        "unit_amount": package.unit_amount,
        "currency": package.currency,
        "lookup_key": lookup_key,
        "replaces": replaced,
    }
    price = gateway.create_price(
        product=product_id,
        unit_amount=package.unit_amount,
        currency=package.currency,
        lookup_key=lookup_key,
        transfer_lookup_key=True,
        nickname=package.name,
        metadata=_metadata(package),
        idempotency_key=_key("price", package, params),
    )
    if current is not None and current.get("active"):
        gateway.update_price(str(current["id"]), active=False)
    gateway.update_product(product_id, default_price=price["id"])
    return str(price["id"]), replaced, True


def sync_packages(
    session_factory: sessionmaker[Session],
    gateway: CatalogGateway,
    packages: list[Package],
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[SyncResult]:
    """Bring Stripe's Products and Prices in line with ``packages`` and store their ids; ``dry_run`` reads
    Stripe and the database and changes neither."""
    with session_factory() as session:
        stored = stored_prices(session)
    results: list[SyncResult] = []
    rows: list[dict[str, Any]] = []
    for package in packages:
        if package.stripe_price:
            results.append(
                SyncResult(package.id, "pinned", None, package.stripe_price, ("price pinned in the price file",))
            )
            continue
        product_id, notes, product_is_new = _sync_product(gateway, package, dry_run)
        price_id, replaced, price_is_new = _sync_price(gateway, package, product_id, product_is_new, dry_run)
        synced = _Synced(
            PACKAGE,
            package.id,
            product_id,
            price_id,
            replaced,
            product_is_new,
            price_is_new,
            StoredPrice(product_id, price_id or "", package.unit_amount, package.currency, fingerprint(package)),
            f"{package.unit_amount} {package.currency}",
        )
        result, row = _outcome(synced, stored.get(package.id), notes)
        results.append(result)
        rows += [row] if row else []
    _store_rows(session_factory, rows, dry_run=dry_run, now=now)
    return results


@dataclass(frozen=True)
class _Synced:
    """What syncing one catalog item (a package, a plan's interval) found and did in Stripe."""

    kind: str
    ref: str
    product_id: str
    price_id: str | None
    replaced: str | None
    product_is_new: bool
    price_is_new: bool
    wanted: StoredPrice  # what ``stripe_catalog`` should hold for it
    label: str  # the price as the notes name it


def _outcome(synced: _Synced, stored: StoredPrice | None, notes: list[str]) -> tuple[SyncResult, dict[str, Any] | None]:
    """The action to report, and the ``stripe_catalog`` row to write when the stored ids are not the wanted."""
    if synced.product_is_new:
        action = "created"
    elif synced.replaced is not None:
        action = "replaced"
        notes.append(f"price {synced.label} replaces {synced.replaced}")
    elif synced.price_is_new:
        action = "updated"
        notes.append("price created")
    else:
        action = "updated" if notes else "unchanged"
    row = None
    if synced.price_id is not None and stored != synced.wanted:
        if action == "unchanged":
            notes.append("ids stored")
            action = "updated"
        row = {
            "kind": synced.kind,
            "ref": synced.ref,
            "product": synced.product_id,
            "price": synced.price_id,
            "unit_amount": synced.wanted.unit_amount,
            "currency": synced.wanted.currency,
            "fingerprint": synced.wanted.fingerprint,
        }
    return SyncResult(synced.ref, action, synced.product_id, synced.price_id, tuple(notes)), row


def _store_rows(
    session_factory: sessionmaker[Session], rows: list[dict[str, Any]], *, dry_run: bool, now: datetime | None
) -> None:
    if rows and not dry_run:
        at = now or utcnow()
        with session_factory() as session, session.begin():
            session.execute(_UPSERT, [{**row, "now": at} for row in rows])


# -- plans ------------------------------------------------------------------------------------------------------
# A subscribable plan is one Product, ``billing_plan_<plan>``, and one recurring Price per interval with the lookup
# key ``billing_plan_<plan>_<interval>``, stored as kind ``plan``, ref ``<plan>:<interval>``. The Price's metadata
# carries the allowance terms the invoice handlers read back (PLAN_METADATA_KEYS); a change of those terms
# alone updates the Price's metadata in place (a Price's metadata may change, its amount may not), a change of
# amount, currency or interval replaces the Price as for a package.
PLAN = "plan"
PLAN_METADATA_KEYS = ("billing_plan", "interval", "allowance_mc", "trial_allowance_mc", "rollover_cap_mc")


def plan_product_id(plan: str) -> str:
    return f"billing_plan_{plan}"


def plan_lookup_key(price: PlanPrice) -> str:
    return f"billing_plan_{price.plan}_{price.interval}"


def plan_price_metadata(price: PlanPrice) -> dict[str, str]:
    """What the plan's Price tells the invoice handlers: the plan, the interval and, in millicredits as strings
    of integers, the allowance per month of the plan, the trial's allowance and the rollover cap."""
    return {
        "billing_plan": price.plan,
        "interval": price.interval,
        "allowance_mc": str(price.allowance_mc),
        "trial_allowance_mc": str(price.trial_allowance_mc),
        "rollover_cap_mc": str(price.rollover_cap_mc),
    }


def plan_fingerprint(price: PlanPrice) -> str:
    shown = [price.name, price.unit_amount, price.currency, price.interval, plan_price_metadata(price)]
    return hashlib.sha256(json.dumps(shown, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def _plan_key(kind: str, price: PlanPrice, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return f"billing-sync:{kind}:plan:{price.ref}:{digest}"


def plan_price_for(session: Session, price: PlanPrice) -> str | None:
    """The Stripe Price that subscribes to ``price``'s plan and interval: the one pinned in the price file, else
    the synced one while it still charges the plan's amount in its currency; None: never synced."""
    if price.stripe_price:
        return price.stripe_price
    params = {"kind": PLAN, "ref": price.ref, "unit_amount": price.unit_amount, "currency": price.currency}
    found: str | None = session.execute(_READ_PRICE, params).scalar()
    return found


def stored_plan_prices(session: Session) -> dict[str, StoredPrice]:
    """Every plan price's stored Stripe ids, by ``<plan>:<interval>``."""
    return {
        ref: StoredPrice(product, price, unit_amount, currency, digest)
        for ref, product, price, unit_amount, currency, digest in session.execute(_READ_ALL, {"kind": PLAN})
    }


def _sync_plan_product(
    gateway: CatalogGateway, price: PlanPrice, dry_run: bool, seen: dict[str, bool]
) -> tuple[str, list[str], bool]:
    """The plan's Product (once per plan and run): its id, what changed, whether it is new."""
    product_id = plan_product_id(price.plan)
    if product_id in seen:
        return product_id, [], seen[product_id]
    wanted_metadata = {"billing_plan": price.plan}
    try:
        product = gateway.retrieve_product(product_id)
    except StripeNotFound:
        if not dry_run:
            params = {"name": price.name, "metadata": wanted_metadata}
            gateway.create_product(
                product_id=product_id,
                name=price.name,
                metadata=wanted_metadata,
                idempotency_key=_plan_key("product", price, params),
            )
        seen[product_id] = True
        return product_id, [], True
    changes: dict[str, Any] = {}
    if product.get("name") != price.name:
        changes["name"] = price.name
    if not product.get("active", True):
        changes["active"] = True
    if any((product.get("metadata") or {}).get(k) != v for k, v in wanted_metadata.items()):
        changes["metadata"] = wanted_metadata
    if changes and not dry_run:
        gateway.update_product(product_id, **changes)
    seen[product_id] = False
    return product_id, [f"product {name}" for name in changes], False


def _sync_plan_price(
    gateway: RecurringCatalogGateway, price: PlanPrice, product_id: str, product_is_new: bool, dry_run: bool
) -> tuple[str | None, str | None, bool, list[str]]:
    """The plan's Price for one interval: ``(price id, the Price it replaced, whether it is new, notes)``; the id
    is None when a dry run would create one."""
    lookup_key = plan_lookup_key(price)
    wanted_metadata = plan_price_metadata(price)
    current = None if product_is_new else next(iter(gateway.list_prices(lookup_keys=[lookup_key], limit=1)), None)
    if (
        current is not None
        and current.get("active")
        and current.get("unit_amount") == price.unit_amount
        and current.get("currency") == price.currency
        and current.get("product") == product_id
        and current.get("type") == "recurring"
        and (current.get("recurring") or {}).get("interval") == price.interval
        and (current.get("recurring") or {}).get("interval_count", 1) == 1
    ):
        shown = current.get("metadata") or {}
        if all(shown.get(k) == v for k, v in wanted_metadata.items()):
            return str(current["id"]), None, False, []
        if not dry_run:
            gateway.update_price(str(current["id"]), metadata=wanted_metadata)
        return str(current["id"]), None, False, ["price metadata"]
    replaced = str(current["id"]) if current is not None else None
    if dry_run:
        return None, replaced, True, []
    params: dict[str, Any] = {
        "product": product_id,
        "unit_amount": price.unit_amount,
        "currency": price.currency,
        "interval": price.interval,
        "lookup_key": lookup_key,
        "replaces": replaced,
    }
    created = gateway.create_price(
        product=product_id,
        unit_amount=price.unit_amount,
        currency=price.currency,
        recurring_interval=price.interval,
        lookup_key=lookup_key,
        transfer_lookup_key=True,
        nickname=f"{price.name} ({price.interval}ly)",
        metadata=wanted_metadata,
        idempotency_key=_plan_key("price", price, params),
    )
    if current is not None and current.get("active"):
        gateway.update_price(str(current["id"]), active=False)
    if price.interval == "month":
        gateway.update_product(product_id, default_price=created["id"])
    return str(created["id"]), replaced, True, []


class RecurringCatalogGateway(CatalogGateway, Protocol):
    def create_price(
        self,
        *,
        product: str,
        unit_amount: int,
        currency: str,
        lookup_key: str | None = None,
        transfer_lookup_key: bool = False,
        nickname: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        recurring_interval: str | None = None,
    ) -> dict[str, Any]: ...


def sync_plans(
    session_factory: sessionmaker[Session],
    gateway: RecurringCatalogGateway,
    prices: list[PlanPrice],
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[SyncResult]:
    """Bring Stripe's plan Products and recurring Prices in line with ``prices`` (``plans.plan_prices``) and
    store their ids, as ``sync_packages`` does for packages; each result's ``package`` is ``<plan>:<interval>``."""
    with session_factory() as session:
        stored = stored_plan_prices(session)
    results: list[SyncResult] = []
    rows: list[dict[str, Any]] = []
    products: dict[str, bool] = {}
    for price in prices:
        if price.stripe_price:
            results.append(
                SyncResult(price.ref, "pinned", None, price.stripe_price, ("price pinned in the price file",))
            )
            continue
        product_id, notes, product_is_new = _sync_plan_product(gateway, price, dry_run, products)
        price_id, replaced, price_is_new, price_notes = _sync_plan_price(
            gateway, price, product_id, product_is_new, dry_run
        )
        notes += price_notes
        synced = _Synced(
            PLAN,
            price.ref,
            product_id,
            price_id,
            replaced,
            product_is_new,
            price_is_new,
            StoredPrice(product_id, price_id or "", price.unit_amount, price.currency, plan_fingerprint(price)),
            f"{price.unit_amount} {price.currency}/{price.interval}",
        )
        result, row = _outcome(synced, stored.get(price.ref), notes)
        results.append(result)
        rows += [row] if row else []
    _store_rows(session_factory, rows, dry_run=dry_run, now=now)
    return results
