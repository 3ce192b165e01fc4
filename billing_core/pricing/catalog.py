"""The price catalog: the price file's pydantic models, its loading, and the immutable ``PriceTable``.

The file is plain JSON (``price_table.json`` next to this module by default, or the file named by
``BILLING_PRICING_FILE``)::

    {
      "version": "2026-12-01",
      "effective_at": "2026-12-01T00:00:00+00:00",           (optional: from the beginning of time)
      "credit": {"usd_per_credit": "0.001", "markup": "1"},
      "llm_tokens": {"<provider>": {
          "<model>": {"input_usd_per_1m": "2.50", "output_usd_per_1m": "10.00",
                      "cached_input_usd_per_1m": "1.25", "as_of": "2025-08-15"},
          "<alias>": {"alias_of": "<model>"},
          "<bundled model>": {"scheme": "token_bundle"}}},
      "token_bundle": {"tokens_per_credit": 1000},
      "tiers":  {"tier1b": {"name": "Tier 1b", "fee": "50", "unit": "experiment", "requires_system_credits": true}},
      "fees":   {"<code>": "<credits>" | {"credits": "<credits>", "tier": "<tier>"}},
      "agents": {"<code>": {"name": "Profile my data", "credits": "20", "description": "..."}},
      "packages": [...], "plans": {...}, "default_plan": "free"
    }

Token prices are the providers' list prices in USD per 1,000,000 tokens, each with the date (``as_of``) it was
taken from the provider's public list; the table turns them into credits per 1M exactly, in ``Decimal``:
``credits = usd * markup / usd_per_credit`` (a conversion that would not be exact is refused). Fees, tiers and
agents are in credits. Prices are decimal strings (integers and ``Decimal`` are accepted too, floats never),
non-negative, with at most 6 decimals. Keys starting with ``_`` are comments and ignored; any other unknown
key is refused, so a typo cannot silently drop a price. The models below validate it with the same
constrained types as the requests (``billing_core.types``); a bad value is a ``ValueError`` whose message
starts with its path (``llm_tokens.openai.gpt-4o.input_usd_per_1m: ...``, ``packages[1].currency: ...``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BeforeValidator,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from billing_core.errors import UnknownModel, UnknownPackage, UnknownPriceCode
from billing_core.pricing.file_spec import FileSpec, drop_comments
from billing_core.pricing.packages import Package, PackageSpec
from billing_core.pricing.plans import PlanSpec
from billing_core.types import (
    MAX_PRICE_DECIMALS,
    MAX_TEXT_LEN,
    DisplayName,
    Name,
)
from billing_core.units import MAX_CREDITS, MC_PER_CREDIT, round_mc

PRICING_FILE_ENV = "BILLING_PRICING_FILE"
DEFAULT_TABLE_RESOURCE = "price_table.json"
MAX_TABLE_BYTES = 16 * 1024 * 1024
_EXACT = Context(prec=80, traps=[InvalidOperation])
# The USD -> credits conversion must be exact: a price that cannot be written as a finite decimal of credits
# (say usd_per_credit 0.003) is refused rather than rounded behind the operator's back.
_EXACT_OR_REFUSE = Context(prec=80, traps=[InvalidOperation, Inexact])
PER_TOKEN, TOKEN_BUNDLE = "per_token", "token_bundle"
DEFAULT_TOKENS_PER_CREDIT = 1000
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,63}$"


# ---------------------------------------------------------------------------------------- the file's models
def _price(value: object) -> Decimal:
    """A table price: a decimal string (or int/Decimal), non-negative, finite, at most 6 decimals, at most
    ``MAX_CREDITS``."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise PydanticCustomError("price", "must be a decimal string, not {kind}", {"kind": type(value).__name__})
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
        raise PydanticCustomError("price", f"exceeds {MAX_CREDITS}")
    with localcontext(_EXACT):
        scaled = number.scaleb(MAX_PRICE_DECIMALS)
        if scaled != scaled.to_integral_value():
            raise PydanticCustomError(
                "price", f"at most {MAX_PRICE_DECIMALS} decimals, got {{value}}", {"value": str(value)}
            )
    return number.copy_abs()  # non-negative already; this only drops a negative zero's sign


def _positive_price(value: object) -> Decimal:
    number = _price(value)
    if number == 0:
        raise PydanticCustomError("price", "must be greater than zero")
    return number


Price = Annotated[Decimal, BeforeValidator(_price)]
PositivePrice = Annotated[Decimal, BeforeValidator(_positive_price)]


def _version_id(value: object) -> object:
    # Version 1 of the file format had an integer version; it reads as the string "1".
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


VersionId = Annotated[StrictStr, BeforeValidator(_version_id), Field(pattern=VERSION_PATTERN)]


class ModelPriceSpec(FileSpec):
    """The provider's list price, USD per 1,000,000 tokens, as of the date it was taken from its public list."""

    input_usd_per_1m: Price
    output_usd_per_1m: Price
    cached_input_usd_per_1m: Price | None = None
    as_of: date


class BundleSpec(FileSpec):
    """A model priced by the token-bundle scheme: ``token_bundle.tokens_per_credit`` tokens of any kind per
    credit, whatever the model."""

    scheme: Literal["token_bundle"]
    as_of: date | None = None


class AliasSpec(FileSpec):
    alias_of: Name


def _entry_kind(data: Any) -> str:
    if isinstance(data, dict) and "alias_of" in data:
        return "alias"
    return "bundle" if isinstance(data, dict) and "scheme" in data else "price"


ModelEntry = Annotated[
    Annotated[ModelPriceSpec, Tag("price")] | Annotated[AliasSpec, Tag("alias")] | Annotated[BundleSpec, Tag("bundle")],
    Discriminator(_entry_kind),
]
Models = Annotated[dict[Name, ModelEntry], BeforeValidator(drop_comments)]
Codes = Annotated[dict[Name, Price], BeforeValidator(drop_comments)]


class FeeSpec(FileSpec):
    """A fee that belongs to a tier: it follows the tier's key-mode rule (``requires_system_credits``)."""

    credits: Price
    tier: Name


FeeEntry = Annotated[
    Annotated[Price, Tag("price")] | Annotated[FeeSpec, Tag("tiered")],
    Discriminator(lambda data: "tiered" if isinstance(data, (dict, FeeSpec)) else "price"),
]
Fees = Annotated[dict[Name, FeeEntry], BeforeValidator(drop_comments)]


class CreditSpec(FileSpec):
    """What a credit is worth, and the markup applied to the providers' prices."""

    usd_per_credit: PositivePrice = Decimal("0.001")
    markup: PositivePrice = Decimal(1)


class TokenBundleSpec(FileSpec):
    tokens_per_credit: StrictInt = Field(DEFAULT_TOKENS_PER_CREDIT, ge=1, le=10**9)


class TierSpec(FileSpec):
    """A product tier's base fee per ``unit`` (a scenario, an experiment...); a tier that requires system
    credits refuses work done with the customer's own provider key (``mode: own``)."""

    name: DisplayName
    fee: Price
    unit: Name
    requires_system_credits: StrictBool = False


Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_LEN)]


class AgentSpec(FileSpec):
    """A flat cost per run of one agent."""

    name: DisplayName
    credits: Price
    description: Text | None = None


class PriceFile(FileSpec):
    """The price file as a whole."""

    version: VersionId | None = None
    effective_at: AwareDatetime | None = None
    credit: CreditSpec = CreditSpec()
    llm_tokens: Annotated[dict[Name, Models], BeforeValidator(drop_comments)]
    token_bundle: TokenBundleSpec = TokenBundleSpec()
    tiers: Annotated[dict[Name, TierSpec], BeforeValidator(drop_comments)] = {}
    fees: Fees
    agents: Annotated[dict[Name, AgentSpec], BeforeValidator(drop_comments)]
    packages: list[PackageSpec]
    # Plans and their token limits (``plans.py``); an account without a plan is on ``default_plan``.
    plans: Annotated[dict[Name, PlanSpec], BeforeValidator(drop_comments)] = {"free": PlanSpec(name="Free")}
    default_plan: Name = "free"

    @model_validator(mode="after")
    def _default_plan_exists(self) -> PriceFile:
        if self.default_plan not in self.plans:
            raise PydanticCustomError(
                "unknown_plan", "default_plan {plan!r} is not in plans", {"plan": self.default_plan}
            )
        return self


_ENTRY_TAGS = ("price", "alias", "bundle")


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        # pydantic's own steps, not the file's: a dict key's marker, and the tag of a model entry's kind.
        if (
            part == "[key]"
            or (i == 3 and loc[0] == "llm_tokens" and part in _ENTRY_TAGS)
            or (i == 2 and loc[0] == "fees" and part in ("price", "tiered"))
        ):
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
@lru_cache(maxsize=4096)
def plain(number: Decimal) -> str:
    """A decimal as a plain string without exponent or trailing zeros: ``2500``, ``37.5``, ``0.075`` (cached:
    the catalog's few prices are written into every quote line's breakdown)."""
    return format(number.normalize(), "f")


@lru_cache(maxsize=4096)
def _unit_prices(credits: Decimal) -> Mapping[str, Any]:
    return MappingProxyType({"unit_credits": plain(credits)})


@lru_cache(maxsize=1024)
def _tier_prices(fee: Decimal, unit: str, requires_system_credits: bool) -> Mapping[str, Any]:
    return MappingProxyType(
        {"unit": unit, "unit_credits": plain(fee), "requires_system_credits": requires_system_credits}
    )


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Credits per 1,000,000 tokens (``cached_input_per_1m`` is None when the model has no cached price), the
    provider's USD list prices they come from, the date of that list, and the scheme: ``per_token``, or
    ``token_bundle`` (every token at ``1 / tokens_per_credit`` credits; the per-1M prices then show that rate).
    ``model`` is the priced model's own name (an alias's target). ``breakdown`` is what a quote line priced by
    it records of the catalog (scheme, unit prices, and for an alias ``priced_as``), built once here."""

    input_per_1m: Decimal
    output_per_1m: Decimal
    cached_input_per_1m: Decimal | None = None
    scheme: str = PER_TOKEN
    as_of: date | None = None
    input_usd_per_1m: Decimal | None = None
    output_usd_per_1m: Decimal | None = None
    cached_input_usd_per_1m: Decimal | None = None
    model: str = ""
    breakdown: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tier:
    code: str
    name: str
    fee: Decimal  # credits per unit
    unit: str
    requires_system_credits: bool

    @property
    def prices(self) -> Mapping[str, Any]:
        """What a quote line priced by this tier records of the catalog (cached: one dict per tier)."""
        return _tier_prices(self.fee, self.unit, self.requires_system_credits)


@dataclass(frozen=True, slots=True)
class Agent:
    code: str
    name: str
    credits: Decimal
    description: str | None

    @property
    def prices(self) -> Mapping[str, Any]:
        """What a quote line priced by this agent records of the catalog (cached: one dict per price)."""
        return _unit_prices(self.credits)

    @property
    def credits_mc(self) -> int:
        """One run's price in millicredits, rounded as a quote line would round it."""
        with localcontext(_EXACT):
            return round_mc(self.credits * MC_PER_CREDIT)


class PriceTable:
    """An immutable, validated price table: one version of the catalog. Build it from a dict
    (``PriceTable(data)``), a file (``PriceTable.from_file``) or take the packaged default
    (``PriceTable.default()``)."""

    __slots__ = (
        "_agents",
        "_catalog",
        "_effective_at",
        "_fee_tiers",
        "_fees",
        "_models",
        "_packages",
        "_packages_by_id",
        "_sha256",
        "_spec",
        "_tiers",
        "_version",
    )

    _models: Mapping[str, Mapping[str, ModelPrice]]
    _fees: Mapping[str, Decimal]
    _agents: Mapping[str, Agent]
    _tiers: Mapping[str, Tier]
    _fee_tiers: Mapping[str, str]
    _packages: tuple[Package, ...]
    _packages_by_id: Mapping[str, Package]
    _version: str | None
    _effective_at: datetime | None
    _spec: PriceFile
    _catalog: str  # canonical JSON
    _sha256: str

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"<table>: must be a JSON object, not {type(data).__name__}")
        try:
            spec = PriceFile.model_validate(dict(data))
        except ValidationError as exc:
            raise ValueError(_first_problem(exc)) from None
        packages = tuple(Package.from_spec(p) for p in spec.packages)
        seen: set[str] = set()
        for i, package in enumerate(packages):
            if package.id in seen:
                raise ValueError(f"packages[{i}].id: duplicate package id {package.id!r}")
            seen.add(package.id)
        for code, fee in spec.fees.items():
            if isinstance(fee, FeeSpec) and fee.tier not in spec.tiers:
                raise ValueError(f"fees.{code}.tier: not a tier of the catalog: {fee.tier!r}")
        # The catalog as JSON (the version's content, stored by ``billing pricing load``): its effective time
        # is not part of it, so the same prices scheduled at another time are the same content.
        catalog = _jsonable({k: v for k, v in data.items() if k != "effective_at"})
        canonical = json.dumps(catalog, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        values = {
            "_spec": spec,
            "_version": spec.version,
            "_effective_at": spec.effective_at,
            "_models": MappingProxyType({p: _resolve(p, models, spec) for p, models in spec.llm_tokens.items()}),
            "_fees": MappingProxyType({c: f.credits if isinstance(f, FeeSpec) else f for c, f in spec.fees.items()}),
            "_fee_tiers": MappingProxyType({c: f.tier for c, f in spec.fees.items() if isinstance(f, FeeSpec)}),
            "_agents": MappingProxyType(
                {c: Agent(c, a.name, a.credits, a.description) for c, a in spec.agents.items()}
            ),
            "_tiers": MappingProxyType(
                {c: Tier(c, t.name, t.fee, t.unit, t.requires_system_credits) for c, t in spec.tiers.items()}
            ),
            "_packages": packages,
            "_packages_by_id": MappingProxyType({p.id: p for p in packages}),
            "_catalog": canonical,
            "_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
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
            f"PriceTable(version={self._version!r}, providers={len(self._models)}, models={models}, "
            f"tiers={len(self._tiers)}, fees={len(self._fees)}, agents={len(self._agents)}, "
            f"packages={len(self._packages)})"
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

    def scheduled(self, version: str, effective_at: datetime) -> PriceTable:
        """This catalog as version ``version`` effective at ``effective_at`` (how a stored version is rebuilt)."""
        return PriceTable({**self.catalog, "version": version, "effective_at": effective_at.isoformat()})

    # lookups -----------------------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        return self._version

    @property
    def effective_at(self) -> datetime | None:
        """When the file says it takes effect (None: from the beginning of time)."""
        return self._effective_at

    @property
    def catalog(self) -> dict[str, Any]:
        """The catalog as JSON data (strings for prices), without its effective time: a fresh copy."""
        result: dict[str, Any] = json.loads(self._catalog)
        return result

    @property
    def sha256(self) -> str:
        """The hash of ``catalog`` as canonical JSON: two versions with the same hash have the same content."""
        return self._sha256

    @property
    def spec(self) -> PriceFile:
        """The validated file (frozen pydantic models): sections without an accessor here read from it."""
        return self._spec

    @property
    def usd_per_credit(self) -> Decimal:
        return self._spec.credit.usd_per_credit

    @property
    def markup(self) -> Decimal:
        return self._spec.credit.markup

    @property
    def tokens_per_credit(self) -> int:
        """The token-bundle scheme's rate: this many tokens (of any kind, any model) per credit."""
        return self._spec.token_bundle.tokens_per_credit

    @property
    def bundle_prices(self) -> Mapping[str, Any]:
        """What a quote line priced by the token bundle records of the catalog."""
        return _bundle_prices(self._spec.token_bundle.tokens_per_credit)

    @property
    def providers(self) -> list[str]:
        return sorted(self._models)

    def models(self, provider: str) -> list[str]:
        """Model names (aliases included) priced for ``provider``; empty for an unknown provider."""
        return sorted(self._models.get(provider, {}))

    def priced_models(self) -> list[tuple[str, str, ModelPrice]]:
        """Every (provider, model, price), aliases included, sorted."""
        return [(p, m, self._models[p][m]) for p in sorted(self._models) for m in sorted(self._models[p])]

    @property
    def fee_codes(self) -> list[str]:
        return sorted(self._fees)

    @property
    def agent_codes(self) -> list[str]:
        return sorted(self._agents)

    @property
    def agents(self) -> list[Agent]:
        """Agents in the file's order."""
        return list(self._agents.values())

    @property
    def tier_codes(self) -> list[str]:
        return sorted(self._tiers)

    @property
    def tiers(self) -> list[Tier]:
        return list(self._tiers.values())

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
        ``<field_prefix>.provider`` or ``<field_prefix>.model``, whichever is unknown, with the models this
        table knows for that provider (``known_models``; for an unknown provider, ``known_providers``)."""
        prefix = f"{field_prefix}." if field_prefix else ""
        models = self._models.get(provider)
        if models is None:
            raise UnknownModel(
                f"unknown provider {provider!r}",
                provider=provider,
                model=model,
                field=f"{prefix}provider",
                known_providers=sorted(self._models),
                known_models=[],
            )
        price = models.get(model)
        if price is None:
            raise UnknownModel(
                f"unknown model {model!r} for provider {provider!r}",
                provider=provider,
                model=model,
                field=f"{prefix}model",
                known_models=sorted(models),
            )
        return price

    def fee(self, code: str, *, field: str = "code") -> Decimal:
        """Credits of one fee, or ``UnknownPriceCode``."""
        price = self._fees.get(code)
        if price is None:
            raise UnknownPriceCode(f"unknown fee code {code!r}", kind="fee", code=code, field=field)
        return price

    def fee_tier(self, code: str) -> Tier | None:
        """The tier a fee belongs to (``{"credits": ..., "tier": ...}`` in the file), or None."""
        tier = self._fee_tiers.get(code)
        return None if tier is None else self._tiers[tier]

    def agent(self, code: str, *, field: str = "code") -> Decimal:
        """Credits of one agent run, or ``UnknownPriceCode``."""
        return self.agent_spec(code, field=field).credits

    def agent_spec(self, code: str, *, field: str = "code") -> Agent:
        found = self._agents.get(code)
        if found is None:
            raise UnknownPriceCode(f"unknown agent code {code!r}", kind="agent", code=code, field=field)
        return found

    def tier(self, code: str, *, field: str = "tier") -> Tier:
        """One tier, or ``UnknownPriceCode`` (kind ``tier``)."""
        found = self._tiers.get(code)
        if found is None:
            raise UnknownPriceCode(f"unknown tier {code!r}", kind="tier", code=code, field=field)
        return found


@lru_cache(maxsize=64)
def _bundle_prices(tokens_per_credit: int) -> Mapping[str, Any]:
    return MappingProxyType({"scheme": TOKEN_BUNDLE, "tokens_per_credit": tokens_per_credit})


def to_credits(usd: Decimal, spec: CreditSpec, where: str) -> Decimal:
    """USD per 1M tokens as credits per 1M: ``usd * markup / usd_per_credit``, exactly (or a ``ValueError``)."""
    try:
        with localcontext(_EXACT_OR_REFUSE):
            return (usd * spec.markup / spec.usd_per_credit).normalize()
    except Inexact:
        raise ValueError(
            f"{where}: {usd} USD at {spec.usd_per_credit} USD per credit and markup {spec.markup} is not an exact "
            "number of credits"
        ) from None


def _resolve(
    provider: str, entries: Mapping[str, ModelPriceSpec | AliasSpec | BundleSpec], spec: PriceFile
) -> Mapping[str, ModelPrice]:
    priced: dict[str, ModelPrice] = {}
    tpc = spec.token_bundle.tokens_per_credit
    for model, entry in entries.items():
        where = f"llm_tokens.{provider}.{model}"
        if isinstance(entry, ModelPriceSpec):
            cached_usd = entry.cached_input_usd_per_1m
            inp = to_credits(entry.input_usd_per_1m, spec.credit, f"{where}.input_usd_per_1m")
            out = to_credits(entry.output_usd_per_1m, spec.credit, f"{where}.output_usd_per_1m")
            cached = (
                None if cached_usd is None else to_credits(cached_usd, spec.credit, f"{where}.cached_input_usd_per_1m")
            )
            breakdown = {
                "scheme": PER_TOKEN,
                "input_per_1m": plain(inp),
                "output_per_1m": plain(out),
                "cached_input_per_1m": plain(inp if cached is None else cached),
            }
            priced[model] = ModelPrice(
                inp,
                out,
                cached,
                PER_TOKEN,
                entry.as_of,
                entry.input_usd_per_1m,
                entry.output_usd_per_1m,
                cached_usd,
                model,
                MappingProxyType(breakdown),
            )
        elif isinstance(entry, BundleSpec):
            with localcontext(_EXACT):
                rate = (Decimal(1_000_000) / tpc).normalize()
            bundle: dict[str, Any] = {"scheme": TOKEN_BUNDLE, "tokens_per_credit": tpc}
            priced[model] = ModelPrice(
                rate, rate, rate, TOKEN_BUNDLE, entry.as_of, model=model, breakdown=MappingProxyType(bundle)
            )
    for model, entry in entries.items():
        if isinstance(entry, AliasSpec):
            if entry.alias_of not in priced:
                raise ValueError(
                    f"llm_tokens.{provider}.{model}.alias_of: must name a priced (non-alias) model of "
                    f"{provider!r}, got {entry.alias_of!r}"
                )
            target = priced[entry.alias_of]
            # The same prices under another name; the line says which model priced it.
            priced[model] = replace(target, breakdown=MappingProxyType({**target.breakdown, "priced_as": target.model}))
    return MappingProxyType(priced)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


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
