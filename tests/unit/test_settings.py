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


def test_the_workers_sweep_settings_keep_their_variables_and_defaults(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    for name in ("BILLING_SWEEP_SECONDS", "BILLING_SWEEP_STALE_SECONDS", "BILLING_QUIET_SWEEPS"):
        monkeypatch.delenv(name, raising=False)
    defaults = load_settings()
    assert (defaults.sweep_seconds, defaults.sweep_stale_seconds, defaults.quiet_sweeps) == (10.0, 30, False)

    monkeypatch.setenv("BILLING_SWEEP_SECONDS", "0.5")
    monkeypatch.setenv("BILLING_SWEEP_STALE_SECONDS", "2")
    monkeypatch.setenv("BILLING_QUIET_SWEEPS", "1")
    tuned = load_settings()
    assert (tuned.sweep_seconds, tuned.sweep_stale_seconds, tuned.quiet_sweeps) == (0.5, 2, True)

    monkeypatch.setenv("BILLING_SWEEP_SECONDS", "0")
    with pytest.raises(MissingSetting) as err:
        load_settings()
    assert err.value.details["variables"] == ["BILLING_SWEEP_SECONDS"]


def test_the_worker_stops_with_one_line_without_redis_url():
    # given everything but the broker
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["DATABASE_URL"] = "postgresql://u@h/db"

    # when beat starts
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "beat"], env=env, capture_output=True, text=True, timeout=60
    )

    # then it stops at once, naming the variable on one line
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["missing required setting REDIS_URL: set it in the environment"]
