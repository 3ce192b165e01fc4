"""Settings, read from the environment only (secrets never come from files in the repository).

``DATABASE_URL`` is needed by every process; the others only by the processes that use them, which say so
with ``require(...)`` at start-up: the receiver needs ``REDIS_URL`` and ``STRIPE_WEBHOOK_SECRET``, the workers
``REDIS_URL`` and ``STRIPE_API_KEY``.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url

from billing_core.errors import MissingSetting


def sqlalchemy_url(url: str) -> str:
    """Accept libpq-style URLs (``postgresql://``, ``postgres://``) and pin the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The same database as a plain libpq URL, for psycopg's own connections."""
    return make_url(sqlalchemy_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    database_url: str = Field(min_length=1)
    # Pool sized for one process; workers and web each get their own.
    db_pool_size: int = Field(default=10, ge=1, le=200, alias="BILLING_DB_POOL_SIZE")
    redis_url: str | None = None
    # How often beat sweeps the inboxes, and how old a pending row must be before the sweep, not its message,
    # is trusted to get it applied. Short in tests that stop the broker on purpose.
    sweep_seconds: float = Field(default=10.0, gt=0, alias="BILLING_SWEEP_SECONDS")
    sweep_stale_seconds: int = Field(default=30, ge=0, alias="BILLING_SWEEP_STALE_SECONDS")
    # ``billing dev`` sets it: the routine sweeps' INFO lines, every few seconds, would bury everything else.
    quiet_sweeps: bool = Field(default=False, alias="BILLING_QUIET_SWEEPS")
    stripe_api_key: SecretStr | None = None
    # Several secrets, comma-separated, while a rotated endpoint secret is rolled out.
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None
    billing_pricing_file: str | None = None
    # -- limits (billing_core/pricing/limits.py, webhook_receiver/rate_limits.py) --
    # Redis unreachable: admit usage and holds (False, a warning in the log) or refuse them with 503.
    limits_fail_closed: bool = Field(default=False, alias="BILLING_LIMITS_FAIL_CLOSED")
    # The token counters' Redis (default REDIS_URL) and the prefix of their keys.
    limits_redis_url: str | None = Field(default=None, alias="BILLING_LIMITS_REDIS_URL")
    limits_prefix: str = Field(default="billing:tokens", min_length=1, alias="BILLING_LIMITS_PREFIX")
    # How long a process trusts an account's plan and overrides read from the database.
    limits_policy_cache_seconds: float = Field(default=5.0, ge=0, alias="BILLING_LIMITS_POLICY_CACHE_SECONDS")
    # Requests per API key (flask-limiter's notation: "1000/second", "100 per minute; 5000 per hour").
    api_rate_limit: str = Field(default="1000/second", min_length=1, alias="BILLING_API_RATE_LIMIT")
    # -- reconciliation against Stripe (billing_core/reconcile/) --
    # At most this many Stripe requests per second (Stripe allows 100 in live mode); the events pass reads
    # again this far behind its checkpoint, for events Stripe lists late.
    reconcile_requests_per_second: float = Field(default=80.0, gt=0, alias="BILLING_RECONCILE_RPS")
    reconcile_overlap_seconds: int = Field(default=600, ge=0, alias="BILLING_RECONCILE_OVERLAP_SECONDS")
    # The daily objects pass compares this many days of Stripe's paid objects with the ledger.
    reconcile_days: int = Field(default=3, ge=1, le=90, alias="BILLING_RECONCILE_DAYS")
    # -- internal checks on beat (billing_core/reconcile/health.py) --
    # An inbox row pending longer than this is an alert; so is an outbox with more rows due and unsent than
    # the backlog, or whose oldest due row was created longer ago than the age.
    health_inbox_lag_seconds: int = Field(default=300, ge=1, alias="BILLING_HEALTH_INBOX_LAG_SECONDS")
    health_outbox_backlog: int = Field(default=500, ge=0, alias="BILLING_HEALTH_OUTBOX_BACKLOG")
    health_outbox_age_seconds: int = Field(default=900, ge=1, alias="BILLING_HEALTH_OUTBOX_AGE_SECONDS")
    # -- notifications (billing_core/notify/, docs/notifications.md) --
    # smtp://user:pass@host:port, smtps://... (TLS from the start) or smtp+starttls://...; unset: no email.
    smtp_url: SecretStr | None = None
    # The From of every email.
    email_from: str = Field(default="billing@localhost", min_length=3, alias="BILLING_EMAIL_FROM")
    # Where the admin kinds (sales paused, discrepancies, dead letters) are emailed, comma-separated.
    billing_admin_emails: str = ""
    # Signed outbound webhooks (Billing-Signature); unset URL: none are sent.
    notify_webhook_url: str | None = None
    notify_webhook_secret: SecretStr | None = None
    # -- the operators' console at /admin (webhook_receiver/console/) --
    # Signs the console's session cookie and CSRF tokens; unset: the console answers 503 and the API runs on.
    # Every web process of one deployment needs the same value (a cookie signed by one must verify in another).
    console_secret: SecretStr | None = Field(default=None, alias="BILLING_CONSOLE_SECRET")
    # The cookie is sent over HTTPS only; ``billing dev`` turns it off, as it serves plain http on localhost.
    console_cookie_secure: bool = Field(default=True, alias="BILLING_CONSOLE_COOKIE_SECURE")
    # A sign-in lasts this long (the key's revocation ends it sooner, on the next request).
    console_session_minutes: int = Field(default=480, ge=1, le=10_080, alias="BILLING_CONSOLE_SESSION_MINUTES")

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return sqlalchemy_url(value)

    @field_validator(
        "redis_url",
        "stripe_api_key",
        "stripe_webhook_secret",
        "stripe_api_base",
        "limits_redis_url",
        "smtp_url",
        "notify_webhook_url",
        "notify_webhook_secret",
        "console_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def require(self, *names: str) -> Settings:
        """Stop start-up naming every required variable that is missing."""
        missing = [name.upper() for name in names if getattr(self, name.lower()) is None]
        if missing:
            raise MissingSetting(
                f"missing required setting {', '.join(missing)}: set it in the environment", variables=missing
            )
        return self

    def webhook_secrets(self) -> list[str]:
        raw = self.stripe_webhook_secret.get_secret_value() if self.stripe_webhook_secret else ""
        return [s.strip() for s in raw.split(",") if s.strip()]

    def admin_emails(self) -> list[str]:
        return [a.strip() for a in self.billing_admin_emails.split(",") if a.strip()]

    def __repr__(self) -> str:
        # The URLs may carry passwords: never let them reach a log line through repr().
        return "Settings(<hidden>)"


def load_settings() -> Settings:
    """Read settings; a missing or empty required variable raises one ``MissingSetting`` naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        names = sorted({str(err["loc"][0]).upper() for err in exc.errors() if err.get("loc")})
        raise MissingSetting(
            f"missing or invalid required setting {', '.join(names)}: set it in the environment",
            variables=names,
        ) from None
