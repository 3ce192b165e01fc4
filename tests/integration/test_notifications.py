"""The notifications outbox against a real SMTP server (aiosmtpd, started here) and a real HTTP receiver that
verifies ``Billing-Signature``: each notice sent once even when its cause is replayed, retried with backoff while
SMTP is down, dead after too many attempts, replayed by the operator, listed by the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message as EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text

from billing_core.notify import outbox, signing
from billing_core.notify.alerts import record_alert
from billing_core.notify.channels import SmtpSender, WebhookSender, parse_smtp_url
from billing_core.notify.outbox import MAX_ATTEMPTS, deliver_due, notify, replay
from tests.integration.test_stripe_handlers import FakeStripe, checkout_session, receive, stripe_event

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_notify_test"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    """aiosmtpd handler: every message received, parsed."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.mails.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.inbox = Inbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    server.start()
    yield server
    server.stop()


class Receiver:
    """A real HTTP endpoint that accepts only correctly signed notifications, and drops repeats by event id."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rejected = 0
        self.seen: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    signing.verify(self.headers.get(signing.HEADER), body, SECRET)
                except signing.SignatureError:
                    receiver.rejected += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                event = json.loads(body)
                if event["id"] not in receiver.seen:
                    receiver.seen.add(event["id"])
                    receiver.events.append(event)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/billing"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def senders(smtp_port: int, webhook_url: str | None = None, secret: str = SECRET) -> dict[str, Any]:
    out: dict[str, Any] = {
        "email": SmtpSender(
            f"smtp://127.0.0.1:{smtp_port}", sender="billing@example.test", admin_emails=["ops@example.test"]
        )
    }
    if webhook_url:
        out["webhook"] = WebhookSender(webhook_url, secret)
    return out


def rows(session_factory) -> list[Any]:
    with session_factory() as s:
        return s.execute(
            text(
                "SELECT id, kind, channel, status, attempts, next_attempt_at, last_error FROM notifications ORDER BY id"
            )
        ).all()


def wallet_with_email(session_factory, account: str, email: str | None) -> None:
    from billing_core.ledger.commands import GrantCredits
    from billing_core.ledger.handlers import execute

    execute(
        session_factory,
        GrantCredits.validated(account=account, amount_mc=1_000, idempotency_key=f"seed:{account}", reason="seed"),
    )
    with session_factory.begin() as s:
        s.execute(text("UPDATE wallets SET email = :e WHERE account = :a"), {"e": email, "a": account})


def test_a_notice_written_twice_is_sent_once_by_email_and_by_signed_webhook(session_factory, smtp, receiver):
    wallet_with_email(session_factory, "acme", "owner@acme.test")
    payload = {"account": "acme", "available": "999.000", "threshold": "1000.000"}
    with session_factory.begin() as s:
        first = notify(s, "low_balance", "low_balance:acme:1", account="acme", payload=payload, now=T0)
    with session_factory.begin() as s:
        again = notify(s, "low_balance", "low_balance:acme:1", account="acme", payload=payload, now=T0)
    assert (first, again) == (2, 0)

    done = deliver_due(session_factory, senders(smtp.port, receiver.url), now=T0)
    assert done["sent"] == 2
    assert deliver_due(session_factory, senders(smtp.port, receiver.url), now=T0 + timedelta(hours=2))["sent"] == 0

    assert len(smtp.inbox.mails) == 1
    mail = smtp.inbox.mails[0]
    assert mail["To"] == "owner@acme.test" and "balance is low" in mail["Subject"]
    assert {part.get_content_type() for part in mail.walk()} >= {"text/plain", "text/html"}
    plain = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert "999.000" in plain
    assert receiver.rejected == 0 and len(receiver.events) == 1
    event = receiver.events[0]
    assert event["type"] == "low_balance" and event["data"] == payload
    assert event["id"] == outbox.event_id("low_balance:acme:1")
    assert [r.status for r in rows(session_factory)] == ["sent", "sent"]


def test_a_replayed_purchase_event_sends_one_receipt(session_factory, smtp, receiver):
    wallet_with_email(session_factory, "acme", "owner@acme.test")
    session = checkout_session()
    gateway = FakeStripe([session])
    receive(session_factory, gateway, stripe_event("evt_done_1", "checkout.session.completed", session))
    receive(session_factory, gateway, stripe_event("evt_done_2", "checkout.session.completed", session))

    deliver_due(session_factory, senders(smtp.port, receiver.url))
    deliver_due(session_factory, senders(smtp.port, receiver.url))

    assert [m["Subject"] for m in smtp.inbox.mails] == ["Receipt: 10000.000 credits added to acme"]
    assert [e["type"] for e in receiver.events] == ["purchase_receipt"]
    assert receiver.events[0]["data"]["checkout_session"] == "cs_test_acme_1"


def test_smtp_down_is_retried_with_backoff_then_delivered(session_factory):
    wallet_with_email(session_factory, "acme", "owner@acme.test")
    server = SmtpServer(free_port())  # not started: the port refuses connections
    with session_factory.begin() as s:
        notify(s, "purchase_receipt", "purchase_receipt:cs_1", account="acme", payload={"credits": "5"}, now=T0)

    first = deliver_due(session_factory, senders(server.port), now=T0)
    assert first["retry"] == 1 and first["skipped"] == 1  # the webhook channel is not configured here
    email = next(r for r in rows(session_factory) if r.channel == "email")
    assert (email.status, email.attempts, email.next_attempt_at) == ("pending", 1, T0 + timedelta(seconds=30))
    assert email.last_error

    assert deliver_due(session_factory, senders(server.port), now=T0 + timedelta(seconds=10))["retry"] == 0
    second = deliver_due(session_factory, senders(server.port), now=T0 + timedelta(seconds=31))
    email = next(r for r in rows(session_factory) if r.channel == "email")
    assert second["retry"] == 1 and email.next_attempt_at == T0 + timedelta(seconds=31 + 60)

    server.start()
    try:
        third = deliver_due(session_factory, senders(server.port), now=T0 + timedelta(seconds=100))
    finally:
        server.stop()
    assert third["sent"] == 1 and len(server.inbox.mails) == 1
    email = next(r for r in rows(session_factory) if r.channel == "email")
    assert (email.status, email.attempts) == ("sent", 3)


def test_dead_after_max_attempts_then_replayed_by_the_operator(session_factory, smtp):
    wallet_with_email(session_factory, "acme", "owner@acme.test")
    with session_factory.begin() as s:
        notify(s, "purchase_receipt", "purchase_receipt:cs_2", account="acme", payload={"credits": "5"}, now=T0)
    down = free_port()
    now = T0
    for _ in range(MAX_ATTEMPTS):
        deliver_due(session_factory, senders(down), now=now)
        now += timedelta(hours=2)
    email = next(r for r in rows(session_factory) if r.channel == "email")
    assert (email.status, email.attempts) == ("dead", MAX_ATTEMPTS)
    assert deliver_due(session_factory, senders(smtp.port), now=now)["sent"] == 0

    assert replay(session_factory, email.id, now=now) is True
    assert replay(session_factory, 999_999) is False
    assert deliver_due(session_factory, senders(smtp.port), now=now)["sent"] == 1
    assert len(smtp.inbox.mails) == 1


def test_no_email_on_the_account_is_skipped_not_retried(session_factory, smtp):
    wallet_with_email(session_factory, "acme", None)
    with session_factory.begin() as s:
        notify(s, "purchase_receipt", "purchase_receipt:cs_3", account="acme", payload={"credits": "5"}, now=T0)
    assert deliver_due(session_factory, senders(smtp.port), now=T0)["skipped"] == 2
    assert {r.status for r in rows(session_factory)} == {"skipped"}
    assert smtp.inbox.mails == []


def test_a_bad_signature_is_refused_by_the_receiver_and_retried(session_factory, receiver):
    with session_factory.begin() as s:
        notify(s, "sales_paused", "sales_paused:x", payload={"outstanding_tokens": 1}, now=T0)
    wrong = {"webhook": WebhookSender(receiver.url, "not-the-secret")}
    assert deliver_due(session_factory, wrong, now=T0)["retry"] == 1
    assert receiver.rejected == 1 and receiver.events == []
    right = {"webhook": WebhookSender(receiver.url, SECRET)}
    assert deliver_due(session_factory, right, now=T0 + timedelta(minutes=1))["sent"] == 1
    assert [e["type"] for e in receiver.events] == ["sales_paused"]


def test_admin_alerts_go_to_the_admins_once(session_factory, smtp):
    payload = {
        "paused": True,
        "outstanding_tokens": 900,
        "capacity_tokens": 1000,
        "threshold_percent": 80,
        "checked_at": T0.isoformat(),
    }
    with session_factory.begin() as s:
        record_alert(s, "sales_paused", f"sales_paused:{T0.isoformat()}", payload, now=T0)
    assert deliver_due(session_factory, senders(smtp.port), now=T0)["alerts"] == 1
    assert deliver_due(session_factory, senders(smtp.port), now=T0 + timedelta(minutes=1))["alerts"] == 0
    assert len(smtp.inbox.mails) == 1
    assert smtp.inbox.envelopes[0][1] == ["ops@example.test"]
    assert smtp.inbox.mails[0]["Subject"] == "Credit sales are paused"
    with session_factory() as s:
        assert s.execute(text("SELECT delivered_at FROM admin_alerts")).scalar() == T0


def test_signature_verification():
    body = b'{"id":"ntf_1"}'
    header = signing.sign(body, SECRET, timestamp=1_900_000_000)
    assert signing.verify(header, body, SECRET, now=1_900_000_010) == 1_900_000_000
    for bad_header, bad_body, at in (
        (header, b'{"id":"ntf_2"}', 1_900_000_010),
        (header, body, 1_900_001_000),
        ("t=1900000000", body, 1_900_000_010),
        (None, body, 1_900_000_010),
    ):
        with pytest.raises(signing.SignatureError):
            signing.verify(bad_header, bad_body, SECRET, now=at)


def test_smtp_urls():
    assert parse_smtp_url("smtp://localhost").port == 25
    t = parse_smtp_url("smtp+starttls://us%40er:p%3Ass@mail.example:2525")
    assert (t.mode, t.host, t.port, t.username, t.password) == ("starttls", "mail.example", 2525, "us@er", "p:ss")
    assert parse_smtp_url("smtps://mail.example").mode == "ssl"
    with pytest.raises(ValueError):
        parse_smtp_url("http://mail.example")


def test_cli_lists_and_replays(session_factory, database_url):
    with session_factory.begin() as s:
        notify(s, "sales_paused", "sales_paused:cli", payload={}, now=T0)
    deliver_due(session_factory, {}, now=T0)  # no channel configured: both skipped
    env = {**os.environ, "DATABASE_URL": database_url}

    def billing(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_cli.main", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = billing("notifications", "--status", "skipped")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2 and all("sales_paused" in line and "skipped" in line for line in lines)
    assert billing("notifications", "--status", "pending").stdout.strip() == ""
    first_id = lines[-1].split("\t")[0]
    replayed = billing("notifications", "replay", first_id)
    assert replayed.returncode == 0 and "pending" in replayed.stdout
    assert billing("notifications", "replay", "424242").returncode == 1
    assert len(billing("notifications", "--status", "pending").stdout.strip().splitlines()) == 1


def test_the_dev_mail_catcher_prints_what_it_receives(session_factory):
    from billing_cli.mail_catcher import MailCatcher

    wallet_with_email(session_factory, "acme", "owner@acme.test")
    with session_factory.begin() as s:
        notify(s, "purchase_receipt", "purchase_receipt:cs_dev", account="acme", payload={"credits": "7"}, now=T0)
    printed: list[str] = []
    with MailCatcher(printed.append) as catcher:
        sender = SmtpSender(catcher.url, sender="billing@localhost", admin_emails=[])
        assert deliver_due(session_factory, {"email": sender}, now=T0)["sent"] == 1
    assert "mail: From billing@localhost  To owner@acme.test" in printed
    assert any(line.startswith("mail: Subject Receipt: 7") for line in printed)
    assert any("Credits added: 7" in line for line in printed)


def _spend(session_factory, key: str, credits: str) -> None:
    from billing_core.intake.usage_inbox import apply_partition, store_usage
    from billing_core.intake.usage_reports import accept_reports, partition_of
    from billing_core.pricing.catalog import PriceTable

    report = {"idempotency_key": key, "account": "acme", "items": [{"type": "credits", "credits": credits}]}
    store_usage(session_factory, accept_reports(report, PriceTable.default()))
    assert apply_partition(session_factory, partition_of("acme")).outcomes["applied"] == 1


def test_low_balance_once_per_downward_crossing_rearmed_by_a_top_up(session_factory, probe, smtp):
    from billing_core.ledger.commands import GrantCredits
    from billing_core.notify import low_balance

    probe.run(GrantCredits("acme", 1_500_000, "fund"))  # 1,500 credits; the default threshold is 1,000
    with session_factory.begin() as s:
        s.execute(text("UPDATE wallets SET email = 'owner@acme.test' WHERE account = 'acme'"))

    _spend(session_factory, "u1", "400")  # 1,100: above
    _spend(session_factory, "u2", "200")  # 900: crossed
    _spend(session_factory, "u3", "100")  # 800: still below, no second notice
    assert deliver_due(session_factory, senders(smtp.port))["sent"] == 1
    assert [m["Subject"] for m in smtp.inbox.mails] == ["Your credit balance is low: 900.000 credits left"]

    # a top-up re-arms it in its own transaction (the tick's rearm finds nothing left), and the next crossing
    # notifies again
    probe.run(GrantCredits("acme", 500_000, "top-up"))  # 1,300
    with session_factory.begin() as s:
        assert s.execute(text("SELECT low_balance_notified_at FROM wallets WHERE account = 'acme'")).scalar() is None
        assert low_balance.rearm(s) == 0
    _spend(session_factory, "u4", "400")  # 900 again
    assert deliver_due(session_factory, senders(smtp.port))["sent"] == 1
    assert len(smtp.inbox.mails) == 2
    kinds = [r.kind for r in rows(session_factory) if r.channel == "email"]
    assert kinds == ["low_balance", "low_balance"]
    probe.assert_consistent()


def test_a_custom_threshold_and_a_purchase_rearms_at_once(session_factory, probe):
    from billing_core.ledger.commands import GrantCredits

    probe.run(GrantCredits("acme", 100_000, "fund"))  # 100 credits
    with session_factory.begin() as s:
        s.execute(text("UPDATE wallets SET low_balance_threshold_mc = 50000 WHERE account = 'acme'"))
    _spend(session_factory, "u1", "60")  # 40 < 50: crossed
    assert [r.kind for r in rows(session_factory)] == ["low_balance", "low_balance"]

    session = checkout_session(credits="100")
    receive(session_factory, FakeStripe([session]), stripe_event("evt_p", "checkout.session.completed", session))
    with session_factory() as s:
        assert s.execute(text("SELECT low_balance_notified_at FROM wallets WHERE account = 'acme'")).scalar() is None
    _spend(session_factory, "u2", "100")  # 140 -> 40: crossed again
    assert sum(1 for r in rows(session_factory) if r.kind == "low_balance") == 4


def test_holds_releases_captures_and_grants_notice_crossings_and_depletion_once(session_factory, probe, smtp):
    """Every change of available credits is watched, not only usage batches: a hold takes the balance below its
    threshold, a capture to zero depletes it, a replay of either writes nothing, and the grant that tops the
    wallet up re-arms the low-balance notice in its own transaction."""
    from billing_core.ledger.commands import CaptureHold, GrantCredits, PlaceHold, ReleaseHold

    probe.run(GrantCredits("acme", 1_500_000, "fund"))
    with session_factory.begin() as s:
        s.execute(text("UPDATE wallets SET email = 'owner@acme.test' WHERE account = 'acme'"))
    assert _kinds(session_factory) == []

    hold = probe.run(PlaceHold("acme", 600_000, "h1"))  # 900 available: crossed by a hold
    probe.run(PlaceHold("acme", 600_000, "h1"))  # replayed
    assert _kinds(session_factory) == ["low_balance"]
    probe.run(ReleaseHold(hold.hold.id, "r1"))  # 1,500 again: re-armed by the release
    assert _flag(session_factory) is None

    second = probe.run(PlaceHold("acme", 1_500_000, "h2"))  # 0 available: crossed and depleted at once
    assert _kinds(session_factory) == ["low_balance", "low_balance", "balance_depleted"]
    probe.run(CaptureHold(second.hold.id, 1_500_000, "c2"))  # held → spent: available does not move
    probe.run(CaptureHold(second.hold.id, 1_500_000, "c2"))
    assert _kinds(session_factory) == ["low_balance", "low_balance", "balance_depleted"]

    probe.run(GrantCredits("acme", 200_000, "top-up"))  # 200: above zero, still below 1,000: no re-arm
    assert _flag(session_factory) is not None
    probe.run(PlaceHold("acme", 200_000, "h3"))  # depleted again: a second occurrence
    assert _kinds(session_factory) == ["low_balance", "low_balance", "balance_depleted", "balance_depleted"]

    assert deliver_due(session_factory, senders(smtp.port))["sent"] == 4
    subjects = [m["Subject"] for m in smtp.inbox.mails]
    assert subjects.count("Your credits are used up") == 2
    assert "Your credit balance is low: 900.000 credits left" in subjects
    probe.assert_consistent()


def _flag(session_factory) -> Any:
    with session_factory() as s:
        return s.execute(text("SELECT low_balance_notified_at FROM wallets WHERE account = 'acme'")).scalar()


def _kinds(session_factory, channel: str = "email") -> list[str]:
    return [r.kind for r in rows(session_factory) if r.channel == channel]


def test_refund_dispute_and_failed_payment_each_notify_once_when_replayed(session_factory, smtp, receiver):
    from tests.integration.test_stripe_handlers import charge, dispute, refund, stripe_object

    session = checkout_session()
    receive(session_factory, FakeStripe([session]), stripe_event("evt_buy", "checkout.session.completed", session))
    with session_factory.begin() as s:
        s.execute(text("UPDATE wallets SET email = 'owner@acme.test' WHERE account = 'acme'"))

    refunds = [refund("re_a", 250)]
    gateway = FakeStripe([session], {"ch_acme_1": refunds})
    for event_id in ("evt_ref_1", "evt_ref_2"):  # the same refund told twice
        receive(session_factory, gateway, stripe_event(event_id, "charge.refunded", charge(refunds)))
    for event_id, kind in (("evt_dp_1", "charge.dispute.created"), ("evt_dp_2", "charge.dispute.funds_withdrawn")):
        receive(session_factory, gateway, stripe_event(event_id, kind, dispute(amount=250)))
    failed = stripe_object(
        "payment_intent",
        id="pi_failed_1",
        amount=1000,
        currency="usd",
        metadata={"account": "acme"},
        last_payment_error={"code": "card_declined", "message": "Your card was declined."},
    )
    for event_id in ("evt_fail_1", "evt_fail_2"):
        receive(session_factory, gateway, stripe_event(event_id, "payment_intent.payment_failed", failed))

    assert _kinds(session_factory) == ["purchase_receipt", "refund_processed", "dispute_opened", "payment_failed"]
    deliver_due(session_factory, senders(smtp.port, receiver.url))
    subjects = [m["Subject"] for m in smtp.inbox.mails]
    assert subjects[1:] == [
        "Refund processed: 2500.000 credits returned to the payment",
        "A payment of acme is disputed",
        "Your payment did not go through",
    ]
    texts = {
        m["Subject"]: next(p for p in m.walk() if p.get_content_type() == "text/plain")
        .get_payload(decode=True)
        .decode()
        for m in smtp.inbox.mails
    }
    assert "Reason: Your card was declined. (card_declined)" in texts["Your payment did not go through"]
    assert "Disputed: 2.50 USD" in texts["A payment of acme is disputed"]
    assert [e["type"] for e in receiver.events][1:] == ["refund_processed", "dispute_opened", "payment_failed"]


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        (
            "auto_recharge_failed",
            {
                "package": "starter",
                "credits": "10000.000",
                "status": "failed",
                "code": "card_declined",
                "message": "Declined.",
            },
            "Declined. (card_declined)",
        ),
        (
            "auto_recharge_failed",
            {
                "package": "starter",
                "credits": "1.000",
                "status": "requires_action",
                "code": "authentication_required",
                "message": "3DS",
            },
            "confirm the payment",
        ),
        (
            "payment_failed",
            {"payment": "pi_1", "amount": None, "currency": None, "code": None, "message": None},
            "Reference: pi_1",
        ),
        (
            "renewal_failed",
            {
                "invoice": "in_1",
                "amount": 2900,
                "currency": "usd",
                "code": "card_declined",
                "next_payment_attempt": "2026-04-04T00:00:00+00:00",
            },
            "We will try again on 2026-04-04",
        ),
        ("trial_ending", {"plan": "pro", "trial_end": "2026-03-15T00:00:00+00:00"}, "pro plan for acme ends on"),
        ("balance_depleted", {"available": "0.000"}, "The credits of acme are used up: 0.000 credits"),
        (
            "quota_warning",
            {
                "account": "<b>",
                "metric": "tokens_month",
                "current": 80_000,
                "limit": 100_000,
                "percentage": 80.0,
                "level": 80,
                "upgrade_url": "/billing/upgrade?<b>",
                "period": "2026-12",
                "resets_at": "2027-01-01T00:00:00+00:00",
            },
            "used 80.0% of its monthly token quota: 80,000 of 100,000 tokens",
        ),
        (
            "quota_exhausted",
            {
                "account": "<b>",
                "metric": "tokens_month",
                "current": 100_500,
                "limit": 100_000,
                "percentage": 100.5,
                "level": 100,
                "upgrade_url": None,
                "period": "2026-12",
                "resets_at": "2027-01-01T00:00:00+00:00",
            },
            "refused until the quota resets on 2027-01-01",
        ),
        ("something_new", {"a": "<b>"}, "a: <b>"),
    ],
)
def test_every_template_renders_text_and_escaped_html(kind, payload, expected):
    from billing_core.notify.channels import render
    from billing_core.notify.outbox import Message

    message = Message(1, kind, f"{kind}:1", "email", "acme", "account", payload, 1, T0, "owner@acme.test")
    subject, plain, html = render(message)
    assert subject and expected in plain and "<html" in html
    assert "<b>" not in html  # payload values are escaped in HTML


def test_a_threshold_lowered_below_the_balance_rearms_the_notice_at_once(session_factory, probe):
    from billing_core.accounts.profile import update_account
    from billing_core.ledger.commands import DebitUsage, GrantCredits

    probe.run(GrantCredits("acme", 1_500_000, "fund"))
    probe.run(DebitUsage("acme", 600_000, "spend-1"))  # 900 < 1,000: notified, disarmed
    assert _flag(session_factory) is not None
    update_account(session_factory, "acme", low_balance_threshold_mc=500_000)  # 900 >= 500: armed again
    assert _flag(session_factory) is None
    probe.run(DebitUsage("acme", 500_000, "spend-2"))  # 400 < 500: the next crossing notifies
    assert [k for k in _kinds(session_factory) if k == "low_balance"] == ["low_balance", "low_balance"]
