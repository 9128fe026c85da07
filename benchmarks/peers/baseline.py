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


def _cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "paceline-bench" / f"pgqueuer-{VERSION}"


async def _run(*command: str | Path) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise PeerUnavailable(f"{Path(command[0]).name} exited {process.returncode}: {tail}")
    return out.decode()


async def pgqueuer_python() -> Path:
    """The Python of a virtualenv with pgqueuer (made once, then cached)."""
    venv = _cache()
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    if not ready.exists():
        await _run(sys.executable, "-m", "venv", "--clear", venv)
        await _run(
            python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PGQUEUER
        )
        ready.touch()
    return python


async def pgqueuer_drain(python: Path, database_url: str, jobs: int) -> PeerDrain:
    """Enqueue `jobs` no-op jobs with pgqueuer and time its tuned drain of them."""
    answer = json.loads(
        await _run(python, _SCRIPT, database_url, str(jobs), str(MANAGERS), str(BATCH))
    )
    if answer["left"]:
        raise PeerUnavailable(f"pgqueuer left {answer['left']} of {jobs} jobs undrained")
    return PeerDrain(jobs=answer["jobs"], seconds=answer["seconds"])
