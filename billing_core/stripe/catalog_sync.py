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
        if product_is_new:
            action = "created"
        elif replaced is not None:
            action = "replaced"
            notes.append(f"price {package.unit_amount} {package.currency} replaces {replaced}")
        elif price_is_new:
            action = "updated"
            notes.append("price created")
        else:
            action = "updated" if notes else "unchanged"
        wanted = StoredPrice(product_id, price_id or "", package.unit_amount, package.currency, fingerprint(package))
        if price_id is not None and stored.get(package.id) != wanted:
            if action == "unchanged":
                notes.append("ids stored")
                action = "updated"
            rows.append(
                {
                    "kind": PACKAGE,
                    "ref": package.id,
                    "product": product_id,
                    "price": price_id,
                    "unit_amount": package.unit_amount,
                    "currency": package.currency,
                    "fingerprint": wanted.fingerprint,
                }
            )
        results.append(SyncResult(package.id, action, product_id, price_id, tuple(notes)))
    if rows and not dry_run:
        at = now or utcnow()
        with session_factory() as session, session.begin():
            session.execute(_UPSERT, [{**row, "now": at} for row in rows])
    return results
