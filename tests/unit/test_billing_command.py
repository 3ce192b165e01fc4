"""The ``billing`` command as a newcomer meets it, run for real in a child process (no database needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import pytest


def billing(*args: str) -> subprocess.CompletedProcess[str]:
    # Nothing configured: whatever these commands do, they must do it before reaching for a database.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "STRIPE_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "billing_cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process serves on (a listening socket of this test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_version_prints_the_installed_version():
    # when a newcomer asks for the version
    done = billing("--version")

    # then it is the package's, on one line
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"billing, version {version('credit-billing')}\n"


@pytest.mark.parametrize("option", ["--port", "--emulator-port"])
def test_dev_refuses_a_taken_port_before_starting_anything(taken_port, option):
    # given another process on the port billing dev would serve on
    other = "--emulator-port" if option == "--port" else "--port"

    # when billing dev is started on it
    done = billing("dev", option, str(taken_port), other, str(free_port()))

    # then it refuses with one line naming the port and the option to change (no server was started: it
    # would have printed "starting PostgreSQL" first)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"billing: dev: port {taken_port} is in use by another process; choose another with {option}"
    ]


def test_the_scripts_wrapper_runs_billing_from_any_directory(tmp_path):
    # given a newcomer in another directory, with no virtualenv on PATH
    wrapper = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "billing")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DATABASE_URL")}
    env["PATH"] = "/usr/bin:/bin"

    # when they call the wrapper the banner of `billing dev` names
    done = subprocess.run([wrapper, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    # then it is the project's billing
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"billing, version {version('credit-billing')}\n"
