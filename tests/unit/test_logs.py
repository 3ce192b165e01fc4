"""The log's redaction and formats (billing_core/logs.py): secrets never reach a line, JSON lines carry the context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from billing_core import logs

SECRETS = {
    "our API key": "bk_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v",
    "a Stripe secret key": "sk_test_51HxYzAbCdEf0123456789",
    "a Stripe live key": "sk_live_abcdefABCDEF012345",
    "a restricted key": "rk_live_abcdefABCDEF012345",
    "a webhook secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "a signature header": "t=1717000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,"
    "v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39",
}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    logs.configure(stream=out, level="DEBUG")
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)
    logs.clear_context()


@pytest.mark.parametrize("label", sorted(SECRETS))
def test_a_secret_in_a_message_its_arguments_or_extra_fields_is_redacted(
    label: str, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    secret = SECRETS[label]
    # when a careless line logs it three ways
    logging.getLogger("careless").warning("header %s and f-string " + secret, secret, extra={"header": secret})
    # then none of them reaches the line, and the line is still JSON
    line = stream.getvalue()
    assert secret not in line
    record = json.loads(line)
    assert record["header"] == "[redacted]" and record["message"].count("[redacted]") == 2


def test_a_url_keeps_its_user_and_host_but_not_its_password() -> None:
    assert logs.redact("SMTP_URL=smtp://mailer:s3cr3t-pw@smtp.example.com:587") == (
        "SMTP_URL=smtp://mailer:[redacted]@smtp.example.com:587"
    )
    assert logs.redact("an email: ops@example.com, t=now") == "an email: ops@example.com, t=now"


def test_json_lines_carry_the_context_and_text_lines_show_it(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    logs.configure(stream=stream, level="INFO")
    logs.new_context(request_id=True, account=None)
    logs.bind(event_id="evt_1", idempotency_key="k1", account="acme")
    logging.getLogger("billing").info("stored")
    record = json.loads(stream.getvalue())
    assert record["event_id"] == "evt_1" and record["idempotency_key"] == "k1" and record["account"] == "acme"
    assert len(record["request_id"]) == 32  # made when first logged

    monkeypatch.setenv("LOG_FORMAT", "text")
    text = io.StringIO()
    logs.configure(stream=text, level="INFO")
    logging.getLogger("billing").info("stored")
    assert "stored [request_id=" in text.getvalue() and "account=acme" in text.getvalue()


def test_an_unknown_format_stops_start_up_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SystemExit, match="LOG_FORMAT must be one of json, text"):
        logs.log_format()
