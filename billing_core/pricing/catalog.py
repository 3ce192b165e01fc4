"""The price catalog: the price file's pydantic models, its loading, and the immutable ``PriceTable``.

The file is plain JSON (``price_table.json`` next to this module by default, or the file named by
``BILLING_PRICING_FILE``)::

    {
      "llm_tokens": {"<provider>": {"<model>": {"input_per_1m": "2500", "output_per_1m": "10000",
                                                "cached_input_per_1m": "1250"},
                                    "<alias>": {"alias_of": "<model>"}}},
      "fees":     {"<code>": "<credits>"},
      "agents":   {"<code>": "<credits>"},
      "packages": [{"id": "starter", "name": "Starter", "credits": "10000", "unit_amount": 1000, "currency": "usd"}]
    }

Prices are decimal strings of credits (integers and ``Decimal`` are accepted too, floats never), non-negative,
with at most 6 decimals. Keys starting with ``_`` are comments and ignored; any other unknown key is refused,
so a typo cannot silently drop a price. The models below validate it with the same constrained types as the
requests (``billing_core.types``); a bad value is a ``ValueError`` whose message starts with its path
(``llm_tokens.openai.gpt-4o.input_per_1m: ...``, ``packages[1].currency: ...``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    StrictInt,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from billing_core.errors import UnknownModel, UnknownPackage, UnknownPriceCode
from billing_core.pricing.packages import Package, PackageSpec
from billing_core.pricing.plans import PlanSpec
from billing_core.types import (
    MAX_PRICE_DECIMALS,
    Name,
)
from billing_core.units import MAX_CREDITS

PRICING_FILE_ENV = "BILLING_PRICING_FILE"
DEFAULT_TABLE_RESOURCE = "price_table.json"
MAX_TABLE_BYTES = 16 * 1024 * 1024
_EXACT = Context(prec=80, traps=[InvalidOperation])


# ---------------------------------------------------------------------------------------- the file's models
def _price(value: object) -> Decimal:
    """A table price: a decimal string (or int/Decimal) of credits, non-negative, finite, at most 6 decimals,
    at most ``MAX_CREDITS``."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise PydanticCustomError(
            "price", "must be a decimal string of credits, not {kind}", {"kind": type(value).__name__}
        )
    if isinstance(value, str):
        if not value.strip() or len(value) > 40:
            raise PydanticCustomError("price", "empty or overlong price")
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise PydanticCustomError("price", "not a decimal number: {value}", {"value": value[:50]}) from None
    else:
        number = Decimal(value)
    if not number.is_finite():
        raise PydanticCustomError("price", "must be finite, got {value}", {"value": str(value)})
    if number < 0:
        raise PydanticCustomError("price", "must not be negative, got {value}", {"value": str(value)})
    if number > MAX_CREDITS:
        raise PydanticCustomError("price", f"exceeds {MAX_CREDITS} credits")
    with localcontext(_EXACT):
        scaled = number.scaleb(MAX_PRICE_DECIMALS)
        if scaled != scaled.to_integral_value():
            raise PydanticCustomError(
                "price", f"at most {MAX_PRICE_DECIMALS} decimals, got {{value}}", {"value": str(value)}
            )
    return number.copy_abs()  # non-negative already; this only drops a negative zero's sign


Price = Annotated[Decimal, BeforeValidator(_price)]


def _drop_comments(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if not (isinstance(key, str) and key.startswith("_"))}
    return data


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _comments(cls, data: Any) -> Any:
        return _drop_comments(data)


class ModelPriceSpec(_Spec):
    """Credits per 1,000,000 tokens."""

    input_per_1m: Price
    output_per_1m: Price
    cached_input_per_1m: Price | None = None


class AliasSpec(_Spec):
    alias_of: Name


def _entry_kind(data: Any) -> str:
    return "alias" if isinstance(data, dict) and "alias_of" in data else "price"


ModelEntry = Annotated[
    Annotated[ModelPriceSpec, Tag("price")] | Annotated[AliasSpec, Tag("alias")], Discriminator(_entry_kind)
]
Models = Annotated[dict[Name, ModelEntry], BeforeValidator(_drop_comments)]
Codes = Annotated[dict[Name, Price], BeforeValidator(_drop_comments)]


class PriceFile(_Spec):
    """The price file as a whole."""

    version: StrictInt | None = None
    llm_tokens: Annotated[dict[Name, Models], BeforeValidator(_drop_comments)]
    fees: Codes
    agents: Codes
    packages: list[PackageSpec]
    # Plans and their token limits (``plans.py``); an account without a plan is on ``default_plan``.
    plans: Annotated[dict[Name, PlanSpec], BeforeValidator(_drop_comments)] = {"free": PlanSpec(name="Free")}
    default_plan: Name = "free"

    @model_validator(mode="after")
    def _default_plan_exists(self) -> PriceFile:
        if self.default_plan not in self.plans:
            raise PydanticCustomError(
                "unknown_plan", "default_plan {plan!r} is not in plans", {"plan": self.default_plan}
            )
        return self


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        # pydantic's own steps, not the file's: a dict key's marker, and the tag of a model entry's kind.
        if part == "[key]" or (i == 3 and loc[0] == "llm_tokens" and part in ("price", "alias")):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required"
    return f"{_path(tuple(error['loc'])) or '<table>'}: {message}"


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Credits per 1,000,000 tokens; ``cached_input_per_1m`` is None when the model has no cached price."""

    input_per_1m: Decimal
    output_per_1m: Decimal
    cached_input_per_1m: Decimal | None = None


class PriceTable:
    """An immutable, validated price table. Build it from a dict (``PriceTable(data)``), a file
    (``PriceTable.from_file``) or take the packaged default (``PriceTable.default()``)."""

    __slots__ = ("_agents", "_fees", "_models", "_packages", "_packages_by_id", "_spec", "_version")

    _models: Mapping[str, Mapping[str, ModelPrice]]
    _fees: Mapping[str, Decimal]
    _agents: Mapping[str, Decimal]
    _packages: tuple[Package, ...]
    _packages_by_id: Mapping[str, Package]
    _version: int | None
    _spec: PriceFile

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"<table>: must be a JSON object, not {type(data).__name__}")
        try:
            spec = PriceFile.model_validate(dict(data))
        except ValidationError as exc:
            raise ValueError(_first_problem(exc)) from None
        packages = tuple(
            Package(id=p.id, name=p.name, credits_mc=p.credits, unit_amount=p.unit_amount, currency=p.currency)
            for p in spec.packages
        )
        seen: set[str] = set()
        for i, package in enumerate(packages):
            if package.id in seen:
                raise ValueError(f"packages[{i}].id: duplicate package id {package.id!r}")
            seen.add(package.id)
        values = {
            "_spec": spec,
            "_version": spec.version,
            "_models": MappingProxyType({p: _resolve(p, models) for p, models in spec.llm_tokens.items()}),
            "_fees": MappingProxyType(dict(spec.fees)),
            "_agents": MappingProxyType(dict(spec.agents)),
            "_packages": packages,
            "_packages_by_id": MappingProxyType({p.id: p for p in packages}),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PriceTable is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PriceTable is immutable")

    def __repr__(self) -> str:
        models = sum(len(m) for m in self._models.values())
        return (
            f"PriceTable(version={self._version}, providers={len(self._models)}, models={models}, "
            f"fees={len(self._fees)}, agents={len(self._agents)}, packages={len(self._packages)})"
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        """Load and validate a JSON price table. Every failure (unreadable file, bad JSON, bad value) is a
        ``ValueError`` naming the file and, for a bad value, its path inside the table."""
        name = os.fspath(path)
        try:
            with open(name, "rb") as fh:
                raw = fh.read(MAX_TABLE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"price table {name}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_TABLE_BYTES:
            raise ValueError(f"price table {name}: larger than {MAX_TABLE_BYTES} bytes")
        return cls._from_json(raw, name)

    @classmethod
    def default(cls) -> PriceTable:
        """The table shipped with the package (``billing_core/pricing/price_table.json``), loaded once."""
        return _default_table()

    @classmethod
    def _from_json(cls, raw: bytes | str, name: str) -> PriceTable:
        try:
            # Decimal for JSON numbers with a fraction: a price never goes through float.
            data = json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant, object_pairs_hook=_no_dupes)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"price table {name}: not valid JSON: {exc}") from None
        try:
            return cls(data)
        except ValueError as exc:
            raise ValueError(f"price table {name}: {exc}") from None

    # lookups -----------------------------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        return self._version

    @property
    def spec(self) -> PriceFile:
        """The validated file (frozen pydantic models): sections without an accessor here read from it."""
        return self._spec

    @property
    def providers(self) -> list[str]:
        return sorted(self._models)

    def models(self, provider: str) -> list[str]:
        """Model names (aliases included) priced for ``provider``; empty for an unknown provider."""
        return sorted(self._models.get(provider, {}))

    @property
    def fee_codes(self) -> list[str]:
        return sorted(self._fees)

    @property
    def agent_codes(self) -> list[str]:
        return sorted(self._agents)

    @property
    def packages(self) -> list[Package]:
        """Packages in table order (a fresh list; the packages themselves are frozen)."""
        return list(self._packages)

    def package(self, package_id: str, *, field: str = "package") -> Package:
        """The package with this id, or ``UnknownPackage``."""
        found = self._packages_by_id.get(package_id)
        if found is None:
            raise UnknownPackage(f"unknown package {package_id!r}", package=package_id, field=field)
        return found

    def model_price(self, provider: str, model: str, *, field_prefix: str = "") -> ModelPrice:
        """Token prices of ``provider``/``model`` (aliases resolved), or ``UnknownModel`` whose ``field`` is
        ``<field_prefix>.provider`` or ``<field_prefix>.model``, whichever is unknown."""
        prefix = f"{field_prefix}." if field_prefix else ""
        models = self._models.get(provider)
        if models is None:
            raise UnknownModel(
                f"unknown provider {provider!r}", provider=provider, model=model, field=f"{prefix}provider"
            )
        price = models.get(model)
        if price is None:
            raise UnknownModel(
                f"unknown model {model!r} for provider {provider!r}",
                provider=provider,
                model=model,
                field=f"{prefix}model",
            )
        return price

    def fee(self, code: str, *, field: str = "code") -> Decimal:
        """Credits of one fee, or ``UnknownPriceCode``."""
        return self._code(self._fees, "fee", code, field)

    def agent(self, code: str, *, field: str = "code") -> Decimal:
        """Credits of one agent run, or ``UnknownPriceCode``."""
        return self._code(self._agents, "agent", code, field)

    @staticmethod
    def _code(table: Mapping[str, Decimal], kind: str, code: str, field: str) -> Decimal:
        price = table.get(code)
        if price is None:
            raise UnknownPriceCode(f"unknown {kind} code {code!r}", kind=kind, code=code, field=field)
        return price


def _resolve(provider: str, entries: Mapping[str, ModelPriceSpec | AliasSpec]) -> Mapping[str, ModelPrice]:
    priced = {
        model: ModelPrice(entry.input_per_1m, entry.output_per_1m, entry.cached_input_per_1m)
        for model, entry in entries.items()
        if isinstance(entry, ModelPriceSpec)
    }
    for model, entry in entries.items():
        if isinstance(entry, AliasSpec):
            if entry.alias_of not in priced:
                raise ValueError(
                    f"llm_tokens.{provider}.{model}.alias_of: must name a priced (non-alias) model of "
                    f"{provider!r}, got {entry.alias_of!r}"
                )
            priced[model] = priced[entry.alias_of]
    return MappingProxyType(priced)


@lru_cache(maxsize=1)
def _default_table() -> PriceTable:
    resource = resources.files("billing_core.pricing").joinpath(DEFAULT_TABLE_RESOURCE)
    return PriceTable._from_json(resource.read_bytes(), f"billing_core/pricing/{DEFAULT_TABLE_RESOURCE}")


def load_price_table(path: str | None) -> PriceTable:
    """The table to price with: the file at ``path`` or, when ``path`` is None or empty, the packaged default.
    Meant for ``load_price_table(os.environ.get("BILLING_PRICING_FILE"))``."""
    if path is None or not str(path).strip():
        return PriceTable.default()
    return PriceTable.from_file(path)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a price table may hold")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out
