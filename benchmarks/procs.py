"""Processes: `paceline serve` replicas, and what /proc says about CPU and memory."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

from paceline.db.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")

# Experiments change a replica without touching paceline: a launcher applies these patches,
# then runs the real CLI. Each is what a change in src/ would do, to measure it first.
PATCHES = {
    # The event loop: uvloop instead of asyncio's.
    "uvloop": "import asyncio, uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n",
    # asyncpg's pool resets every connection it takes back (pg_advisory_unlock_all, CLOSE ALL,
    # UNLISTEN *, RESET ALL): one more round trip per query. paceline's pool connections
    # hold none of that state; a custom reset skips the round trip (open transactions are
    # still rolled back by asyncpg itself).
    "no-pool-reset": (
        "import asyncpg, functools\n"
        "async def _keep(connection): pass\n"
        "asyncpg.create_pool = functools.partial(asyncpg.create_pool, reset=_keep)\n"
    ),
}


def _launcher(patches: Sequence[str]) -> list[str]:
    if not patches:
        return ["-m", "paceline", "serve"]
    code = "".join(PATCHES[name] for name in patches)
    return ["-c", code + "import sys\nfrom paceline.cli import main\nsys.exit(main(['serve']))\n"]


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far; zeros if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    # After the command: state is field 3, utime 14 and stime 15 (1-based).
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    return sum(cpu_times(pid))


def children_of(parent: int) -> list[int]:
    """Pids whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == parent:
                found.append(int(entry.name))
    return found


def rss_mb(pid: int) -> float:
    """Resident set size in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which steal already counts
    return (total - idle) / _TICKS, total / _TICKS


@dataclasses.dataclass(frozen=True)
class CpuSplit:
    """Cores used on average during a measurement, by whom."""

    seconds: float
    paceline: float
    paceline_kernel: float  # the part of `paceline` spent in the kernel (syscalls: sockets)
    postgres: float
    other: float  # the load generator, the harness and whatever else runs on the machine

    def __str__(self) -> str:
        kernel = self.paceline_kernel / self.paceline if self.paceline else 0.0
        return (
            f"paceline {self.paceline:.2f} ({kernel:.0%} in the kernel), "
            f"postgres {self.postgres:.2f}, other (load generator, neighbours) "
            f"{self.other:.2f} cores"
        )


class CpuMeter:
    """Measures a CpuSplit between `start()` and `stop()`; `total()` adds up all segments."""

    def __init__(self, paceline_pids: list[int], postgres: Callable[[], dict[int, float]]) -> None:
        self._pids = paceline_pids
        self._postgres = postgres
        self._start: tuple[float, dict[int, tuple[float, float]], dict[int, float], float] | None
        self._start = None
        self._sum = [0.0] * 5  # seconds, user, kernel, server, other (CPU seconds)

    def start(self) -> None:
        """Snapshot now."""
        mine = {pid: cpu_times(pid) for pid in self._pids}
        self._start = (time.monotonic(), mine, self._postgres(), machine_busy()[0])

    def stop(self) -> CpuSplit:
        """Cores used since `start()`."""
        assert self._start is not None
        began, mine, postgres, busy = self._start
        seconds = time.monotonic() - began
        now = {pid: cpu_times(pid) for pid in self._pids}
        user = sum(now[pid][0] - mine[pid][0] for pid in self._pids)
        kernel = sum(now[pid][1] - mine[pid][1] for pid in self._pids)
        server = sum(cpu - postgres.get(pid, 0.0) for pid, cpu in self._postgres().items())
        other = max(machine_busy()[0] - busy - user - kernel - server, 0.0)
        for index, value in enumerate((seconds, user, kernel, server, other)):
            self._sum[index] += value
        return _split(seconds, user, kernel, server, other)

    def total(self) -> CpuSplit:
        """The split over every start/stop segment so far."""
        return _split(*self._sum)


def _split(seconds: float, user: float, kernel: float, server: float, other: float) -> CpuSplit:
    if seconds <= 0:
        return CpuSplit(0.0, 0.0, 0.0, 0.0, 0.0)
    return CpuSplit(
        seconds, (user + kernel) / seconds, kernel / seconds, server / seconds, other / seconds
    )


class Replica:
    """One `python -m paceline serve` process."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        """The replica's pid (the Python process itself)."""
        return self.process.pid

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    async def start(
        cls, database_url: str, env: Mapping[str, str], log: Path, *, patches: Sequence[str] = ()
    ) -> Replica:
        """Start a replica with `env` (PACELINE_* settings) on a free port."""
        port = free_port()
        child_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PACELINE_") and key != "DATABASE_URL"
        }
        child_env.update(env)
        child_env.update({"DATABASE_URL": database_url, "PACELINE_PORT": str(port)})
        command = _launcher(patches)
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *command,
                env=child_env,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )
        return cls(process, port, log)

    async def wait_ready(self, within: float = 60.0) -> None:
        """Until /healthz answers 200 (migrations done, app up), at most `within` seconds."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(
                        f"replica exited ({self.process.returncode}):\n{self.tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    probe = session.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(1))
                    async with probe as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica not ready after {within:.0f}s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    async def stop(self, grace: float = 40.0) -> None:
        """SIGTERM, as an orchestrator would; SIGKILL if it has not exited after `grace` s."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def tail(self, lines: int = 30) -> str:
        """The end of the replica's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def replicas(
    database_url: str,
    count: int,
    env: Mapping[str, str],
    logs: Path,
    *,
    name: str,
    patches: Sequence[str] = (),
) -> AsyncIterator[list[Replica]]:
    """`count` replicas against one database, ready; stopped on exit. `logs` must exist."""
    started: list[Replica] = []
    try:
        for index in range(count):
            log = logs / f"{name}-replica{index + 1}.log"
            started.append(await Replica.start(database_url, env, log, patches=patches))
        await asyncio.gather(*(replica.wait_ready() for replica in started))
        yield started
    finally:
        await asyncio.gather(*(replica.stop() for replica in started))
