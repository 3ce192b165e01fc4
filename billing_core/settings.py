"""Settings, read from the environment only (secrets never come from files in the repository)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing_core.errors import MissingSetting


def sqlalchemy_url(url: str) -> str:
    """Accept libpq-style URLs (``postgresql://``, ``postgres://``) and pin the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = Field(min_length=1)
    # Pool sized for one process; workers and web each get their own.
    db_pool_size: int = Field(default=10, ge=1, le=200, alias="BILLING_DB_POOL_SIZE")

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return sqlalchemy_url(value)

    def __repr__(self) -> str:
        # The URL may carry a password: never let it reach a log line through repr().
        return "Settings(database_url=<hidden>)"


def load_settings() -> Settings:
    """Read settings; a missing or empty required variable raises one ``MissingSetting`` naming it."""
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        names = sorted({str(err["loc"][0]).upper() for err in exc.errors() if err.get("loc")})
        raise MissingSetting(
            f"missing or invalid required setting {', '.join(names)}: set it in the environment",
            variables=names,
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
