"""The channels: email over SMTP (text and HTML from Jinja templates) and signed outbound webhooks.

A sender takes one claimed ``Message`` and returns when it is delivered; it raises ``Skip`` when there is
nowhere to send it (final) and any other exception for a failure worth retrying.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from jinja2 import Environment, PackageLoader, TemplateNotFound, select_autoescape

from billing_core.notify import signing
from billing_core.notify.outbox import Message, Sender, Skip
from billing_core.settings import Settings

_ENV = Environment(
    loader=PackageLoader("billing_core.notify", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEXT_ENV = Environment(loader=_ENV.loader, autoescape=False, trim_blocks=True, lstrip_blocks=True)

SUBJECTS = {
    "purchase_receipt": "Receipt: {{ credits }} credits added to {{ account }}",
    "low_balance": "Your credit balance is low: {{ available }} credits left",
    "balance_depleted": "Your credits are used up",
    "sales_paused": "Credit sales are paused",
    "sales_resumed": "Credit sales have resumed",
    "payment_failed": "Your payment did not go through",
    "refund_processed": "Refund processed: {{ credits }} credits returned to the payment",
    "dispute_opened": "A payment of {{ account }} is disputed",
    "auto_recharge_failed": "Auto-recharge of {{ account }} failed",
    "renewal_failed": "Your subscription renewal payment failed",
    "trial_ending": "Your trial ends soon",
    "quota_warning": "{{ account }} has used {{ percentage }}% of its monthly token quota",
    "quota_exhausted": "{{ account }} has used its monthly token quota",
    # Internal checks (reconcile/health.py), for the operators:
    "ledger_invariant_violated": "Ledger check failed: {{ checks | join(', ') }}",
    "inbox_lag": "Inbox lag: {{ inbox }} has rows pending for over {{ lag_seconds }} s",
    "outbox_backlog": "Notifications backlog: {{ due }} due and unsent",
}


def render(message: Message) -> tuple[str, str, str]:
    """Subject, text and HTML of ``message``: its kind's templates, or the generic pair."""
    context: dict[str, Any] = {
        **message.payload,
        "kind": message.kind,
        "account": message.payload.get("account", message.account),
        "payload": message.payload,
        "event_id": message.event_id,
        "created_at": message.created_at,
    }
    subject_source = SUBJECTS.get(message.kind, "Billing notice: {{ kind | replace('_', ' ') }}")
    subject = _TEXT_ENV.from_string(subject_source).render(context).strip()
    parts = []
    for ext, env in (("txt", _TEXT_ENV), ("html", _ENV)):
        try:
            template = env.get_template(f"{message.kind}.{ext}")
        except TemplateNotFound:
            template = env.get_template(f"generic.{ext}")
        parts.append(template.render(context, subject=subject))
    return subject, parts[0], parts[1]


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    mode: str  # plain, ssl, starttls
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp://user:pass@host:port`` (plain), ``smtps://`` (TLS from the start), ``smtp+starttls://``."""
    parts = urlsplit(url)
    modes = {"smtp": ("plain", 25), "smtps": ("ssl", 465), "smtp+starttls": ("starttls", 587)}
    if parts.scheme not in modes or not parts.hostname:
        raise ValueError("SMTP_URL must look like smtp://[user:pass@]host[:port] (or smtps://, smtp+starttls://)")
    mode, default_port = modes[parts.scheme]
    return SmtpTarget(
        host=parts.hostname,
        port=parts.port or default_port,
        mode=mode,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class SmtpSender:
    """Email: to the account's email, or to the admins for the admin kinds."""

    def __init__(self, url: str, *, sender: str, admin_emails: list[str], timeout: float = 10.0) -> None:
        self.target = parse_smtp_url(url)
        self.sender = sender
        self.admin_emails = admin_emails
        self.timeout = timeout

    def recipients(self, message: Message) -> list[str]:
        if message.audience == "admins":
            return self.admin_emails
        return [message.email] if message.email else []

    def build(self, message: Message, to: list[str]) -> EmailMessage:
        subject, body_text, body_html = render(message)
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = ", ".join(to)
        mail["Subject"] = subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(idstring=message.event_id)
        mail["X-Billing-Event"] = message.event_id
        mail.set_content(body_text)
        mail.add_alternative(body_html, subtype="html")
        return mail

    def __call__(self, message: Message) -> None:
        to = self.recipients(message)
        if not to:
            raise Skip("no recipient: the account has no email" if message.audience == "account" else "no admins")
        mail = self.build(message, to)
        t = self.target
        smtp: smtplib.SMTP
        if t.mode == "ssl":
            smtp = smtplib.SMTP_SSL(t.host, t.port, timeout=self.timeout, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(t.host, t.port, timeout=self.timeout)
        with smtp:
            if t.mode == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if t.username:
                smtp.login(t.username, t.password or "")
            smtp.send_message(mail)


def webhook_body(message: Message) -> bytes:
    return json.dumps(
        {
            "id": message.event_id,
            "type": message.kind,
            "created": int(message.created_at.timestamp()),
            "account": message.account,
            "data": message.payload,
        },
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    ).encode()


class WebhookSender:
    """POST the notification as JSON, signed (``Billing-Signature``); any 2xx is delivered."""

    def __init__(self, url: str, secret: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout

    def __call__(self, message: Message) -> None:
        body = webhook_body(message)
        headers = {
            "Content-Type": "application/json",
            signing.HEADER: signing.sign(body, self.secret, timestamp=int(time.time())),
            "User-Agent": "credit-billing-notifications/1",
        }
        response = requests.post(self.url, data=body, headers=headers, timeout=self.timeout)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"webhook answered {response.status_code}")


def senders_from_settings(settings: Settings) -> dict[str, Sender]:
    """The configured channels; one left out has its rows marked ``skipped``."""
    senders: dict[str, Sender] = {}
    if settings.smtp_url is not None:
        senders["email"] = SmtpSender(
            settings.smtp_url.get_secret_value(), sender=settings.email_from, admin_emails=settings.admin_emails()
        )
    if settings.notify_webhook_url:
        secret = settings.notify_webhook_secret.get_secret_value() if settings.notify_webhook_secret else ""
        if secret:
            senders["webhook"] = WebhookSender(settings.notify_webhook_url, secret)
    return senders
