"""What every operator command starts from: the settings, a database engine, and failing with one line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing_core.errors import MissingSetting
from billing_core.settings import Settings, load_settings


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """One line on stderr, then exit: scripts read the code, people the line."""
    click.echo(f"billing: {message}", err=True)
    sys.exit(exit_code)


def settings_or_exit() -> Settings:
    """The settings, or exit 2 with one line naming the missing variable (the README's contract)."""
    try:
        return load_settings()
    except MissingSetting as exc:
        fail(exc.message, exit_code=2)


@contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    """One connection's worth of engine for one command, disposed when it is done."""
    from billing_core.db.engine import make_engine

    engine = make_engine(settings.database_url, pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    from billing_core.db.engine import make_session_factory

    with database(settings) as engine:
        yield make_session_factory(engine)
