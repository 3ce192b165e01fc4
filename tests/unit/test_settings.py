"""Settings come from the environment; a missing one stops start-up with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from billing_core.errors import MissingSetting
from billing_core.settings import load_settings, sqlalchemy_url


def test_missing_database_url_names_the_variable(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(MissingSetting) as err:
        load_settings()
    assert err.value.details["variables"] == ["DATABASE_URL"]


def test_cli_prints_one_clear_line_and_exits_2_without_database_url():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "billing_cli.main", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0]


def test_libpq_urls_get_the_psycopg_driver_and_repr_hides_the_url(monkeypatch):
    assert sqlalchemy_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@h/db")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://u:secret@h/db"
    assert "secret" not in repr(settings)
