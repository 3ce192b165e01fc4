"""The local SMTP catcher of ``billing dev``: an aiosmtpd server on a free loopback port that prints every mail
it receives (From, To, Subject and the text part) instead of sending it anywhere."""

from __future__ import annotations

import socket
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def describe(raw: bytes) -> list[str]:
    """The lines that show one mail: its headers that matter, then its text part."""
    mail = message_from_bytes(raw, policy=policy.default)
    lines = [f"mail: From {mail['From']}  To {mail['To']}", f"mail: Subject {mail['Subject']}"]
    body = mail.get_body(preferencelist=("plain",)) if isinstance(mail, EmailMessage) else None
    text = body.get_content() if body is not None else ""
    lines += [f"mail: | {line}" for line in str(text).rstrip().splitlines()]
    return lines


class _Printer:
    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        for line in describe(envelope.content):
            self.echo(line)
        return "250 Message accepted for delivery"


class MailCatcher:
    """``with MailCatcher(echo) as catcher``: the server runs on a thread; ``catcher.url`` is its SMTP_URL."""

    def __init__(self, echo: Callable[[str], None], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"smtp://{HOST}:{self.port}"
        self.printer = _Printer(echo)
        self._controller: Any = None

    def __enter__(self) -> MailCatcher:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self.printer, hostname=HOST, port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
