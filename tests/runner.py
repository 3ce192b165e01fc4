"""Run pytest against throwaway PostgreSQL and Redis servers.

    python -m tests.runner [pytest args...]      (scripts/test does this after bootstrapping)

Starts both servers in a fresh temp dir, creates and migrates the template database ``billing_template``, runs
pytest as a child process with the servers' coordinates in its environment, and returns pytest's exit code.
The servers are stopped and the temp dir removed whatever happens: normal exit, an exception, Ctrl-C, SIGTERM
or SIGHUP. Set BILLING_TEST_SKIP_MIGRATE=1 to skip the migration step (for working on the runner itself).

Exit codes: pytest's own; 3 when the test infrastructure fails (a server does not start, migration fails);
on a signal the runner cleans up and then dies by that same signal (shell convention: 128 + signal number).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from billing_cli.throwaway import ThrowawayPostgres, ThrowawayRedis, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "billing_template"
INFRA_FAILURE = 3  # pytest's "internal error" code; pytest itself never gets to run in that case
CHILD_GRACE_SECONDS = 20.0  # how long a signalled child may take to tear down before we kill it
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Signalled(BaseException):
    """Raised by the signal handler; a BaseException so no `except Exception` swallows it before `finally`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminal_already_signalled_children() -> bool:
    # Ctrl-C on a terminal sends SIGINT to the whole foreground process group, which includes pytest.
    # Forwarding it again would hit pytest's teardown with a second KeyboardInterrupt, so only forward when we
    # are not the terminal's foreground group (e.g. `kill -INT <pid>` from elsewhere, or no terminal at all).
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


class _Supervisor:
    """Runs one child at a time and turns signals into an orderly shutdown."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.signum: int | None = None
        self.cleaning_up = False

    def install(self) -> None:
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        child = self.child
        first = self.signum is None
        if first:
            self.signum = signum
        if child is not None and child.poll() is None:
            if first:
                if not (signum == signal.SIGINT and _terminal_already_signalled_children()):
                    child.send_signal(signum)
            else:
                child.kill()  # a second signal means "stop now"
        if first and not self.cleaning_up:
            raise _Signalled(signum)  # unwinds to main()'s finally, which stops the servers

    def run(self, cmd: list[str], env: dict[str, str]) -> int:
        self.child = child = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)
        try:
            return child.wait()
        finally:
            if child.poll() is None:  # unwinding because of a signal or an error: let the child finish
                self._reap(child)
            self.child = None

    @staticmethod
    def _reap(child: subprocess.Popen[bytes]) -> None:
        try:
            child.wait(timeout=CHILD_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
        print(
            f"tests.runner: child {child.pid} still running after {CHILD_GRACE_SECONDS:.0f}s, terminating",
            file=sys.stderr,
            flush=True,
        )
        stop_process(child, grace=5)


def _become_subreaper() -> bool:
    # Linux: orphaned descendants (xdist workers of a killed pytest, processes leaked by end-to-end tests, the
    # postmaster once pg_ctl exits) are re-parented to us instead of PID 1, so the final sweep can end and reap
    # them rather than leaving them running (or as zombies under an init that does not reap).
    try:
        import ctypes

        pr_set_child_subreaper = 36
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _live_children() -> list[int]:
    me, found = str(os.getpid()), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]  # the name field may contain spaces
        if ppid == me and state != "Z":
            found.append(int(entry.name))
    return found


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _sweep_strays(grace: float = 5.0) -> None:
    """End whatever descendants are still around once pytest and the servers are gone."""
    _reap_zombies()
    strays = _live_children()
    if strays:
        print(f"tests.runner: ending {len(strays)} leftover process(es): {strays}", file=sys.stderr, flush=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while strays and time.monotonic() < deadline:
            _reap_zombies()
            strays = _live_children()
            if strays:
                time.sleep(0.05)
        if not strays:
            break
    _reap_zombies()


def _run(sup: _Supervisor, pg: ThrowawayPostgres, redis: ThrowawayRedis, pytest_args: list[str]) -> int:
    started = time.monotonic()
    pg.start()
    redis.start()
    print(
        f"tests.runner: postgres 127.0.0.1:{pg.port} ({pg.bin_dir}), redis 127.0.0.1:{redis.port}, "
        f"up in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    pg.create_database(TEMPLATE_DB)
    env = dict(os.environ)
    env.update(
        BILLING_TEST_PG_ADMIN_URL=pg.url("postgres"),
        BILLING_TEST_TEMPLATE_DB=TEMPLATE_DB,
        DATABASE_URL=pg.url(TEMPLATE_DB),
        REDIS_URL=redis.url,
        BILLING_TEST_PG_BIN=str(pg.bin_dir),
        # The checkout under test, ahead of whatever the virtualenv's editable install points at: tests and the
        # processes they start (gunicorn, Celery) import this tree's code, also from a second git worktree.
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    if os.environ.get("BILLING_TEST_SKIP_MIGRATE") == "1":
        print("tests.runner: BILLING_TEST_SKIP_MIGRATE=1, template database left empty", flush=True)
    else:
        code = sup.run([sys.executable, "-m", "billing_cli.main", "db", "upgrade"], env)
        if code != 0:
            print(
                f"tests.runner: migrating {TEMPLATE_DB} failed (`python -m billing_cli.main db upgrade` "
                f"exited {code}); not running pytest",
                file=sys.stderr,
                flush=True,
            )
            return INFRA_FAILURE
    return sup.run([sys.executable, "-m", "pytest", *pytest_args], env)


def main(argv: list[str]) -> int:
    supervisor = _Supervisor()
    supervisor.install()
    subreaper = _become_subreaper()
    code = INFRA_FAILURE
    scratch: Path | None = None
    pg: ThrowawayPostgres | None = None
    redis: ThrowawayRedis | None = None
    try:
        scratch = Path(tempfile.mkdtemp(prefix="billing-tests-"))
        pg = ThrowawayPostgres(scratch)
        redis = ThrowawayRedis(scratch)
        code = _run(supervisor, pg, redis, argv)
    except _Signalled:
        pass
    except RuntimeError as exc:  # servers that would not start, a failed CREATE DATABASE: say why, briefly
        print(f"tests.runner: {exc}", file=sys.stderr, flush=True)
    finally:
        # Signals arriving from here on are recorded (and kill the child) but no longer interrupt the cleanup.
        supervisor.cleaning_up = True
        try:
            if redis is not None:
                redis.stop()
        finally:
            try:
                if pg is not None:
                    pg.stop()
            finally:
                if subreaper:
                    _sweep_strays()
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)
    if supervisor.signum is not None:
        # Die by the same signal so a calling shell or CI sees "interrupted", not an ordinary failure.
        signal.signal(supervisor.signum, signal.SIG_DFL)
        os.kill(os.getpid(), supervisor.signum)
        code = 128 + supervisor.signum  # only reached if the signal is blocked
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
