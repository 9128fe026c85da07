"""pgqueuer, installed in a virtualenv of its own and run against the run's own server.

The issue sets the drain goal at "at least pgqueuer's tuned figure", measured on another day.
Measured in the same run, on the same server and cores, the comparison survives a noisy or
slower machine: paceline's tuned drain is reported as a ratio to pgqueuer's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

VERSION = "1.6.0"
PGQUEUER = f"pgqueuer[asyncpg]=={VERSION}"
# Its own tuned setting in the reference figure (16.2k jobs/s): 4 managers, batch 50.
MANAGERS = 4
BATCH = 50
_SCRIPT = Path(__file__).resolve().parent / "pgqueuer_drain.py"


class PeerUnavailable(RuntimeError):
    """The peer could not be installed or run; the report says why instead of a figure."""


@dataclasses.dataclass(frozen=True)
class PeerDrain:
    """One drain by the peer."""

    jobs: int
    seconds: float

    @property
    def rate(self) -> float:
        """Jobs per second."""
        return self.jobs / self.seconds


def cache_dir(name: str) -> Path:
    """A peer's folder in the suite's cache: installed once, outside the project and its locks."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "paceline-bench" / name


async def run_command(
    *command: str | Path, cwd: Path | None = None, within: float | None = None
) -> str:
    """A peer's command's stdout; PeerUnavailable with its stderr's tail if it fails, or if it
    is still running after `within` seconds (then it is killed: a stuck peer must not hold up
    the rest of the run)."""
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise PeerUnavailable(
            f"{Path(command[0]).name} still running after {within:g} s; killed"
        ) from None
    if process.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise PeerUnavailable(f"{Path(command[0]).name} exited {process.returncode}: {tail}")
    return out.decode()


async def pgqueuer_python() -> Path:
    """The Python of a virtualenv with pgqueuer (made once, then cached)."""
    venv = cache_dir(f"pgqueuer-{VERSION}")
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    if not ready.exists():
        await run_command(sys.executable, "-m", "venv", "--clear", venv)
        await run_command(
            python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PGQUEUER
        )
        ready.touch()
    return python


async def pgqueuer_drain(python: Path, database_url: str, jobs: int) -> PeerDrain:
    """Enqueue `jobs` no-op jobs with pgqueuer and time its tuned drain of them."""
    answer = json.loads(
        await run_command(python, _SCRIPT, database_url, str(jobs), str(MANAGERS), str(BATCH))
    )
    if answer["left"]:
        raise PeerUnavailable(f"pgqueuer left {answer['left']} of {jobs} jobs undrained")
    return PeerDrain(jobs=answer["jobs"], seconds=answer["seconds"])
