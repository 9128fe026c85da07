"""graphile-worker, installed with npm in a scratch folder of its own and run against the run's
own server.

The second peer of the drain (after pgqueuer): a Node job queue on PostgreSQL whose documented
performance configuration drained faster than pgqueuer's tuned setting on this kind of machine
(21.6k vs 16.2k jobs/s, measured on other days). Measured in the same run, paceline's tuned
drain is reported as a ratio to it too.

The package declares `engines: node >= 22`; on the machine's Node 20 npm warns (EBADENGINE) and
it runs. It is installed under ~/.cache/paceline-bench/, never in the project's locks: the
project has no Node dependencies and this one is only measured.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.peers.baseline import PeerDrain, PeerUnavailable, cache_dir, run_command

VERSION = "0.18.0"
PACKAGE = f"graphile-worker@{VERSION}"
# Its documented performance configuration (worker.graphile.org/docs/performance), the one
# behind its 21.6k jobs/s here. Its defaults (1 job at a time, no local queue) drain 0.9k jobs/s:
# tuned against tuned, as with pgqueuer. The script also batches completions on the next tick
# (completeJobBatchDelay and failJobBatchDelay 0), as that configuration does.
CONCURRENT_JOBS = 24
MAX_POOL_SIZE = 25
LOCAL_QUEUE = 500
_SCRIPT = Path(__file__).resolve().parent / "graphile_drain.mjs"


def _folder() -> Path:
    return cache_dir(f"graphile-worker-{VERSION}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PeerUnavailable(f"{name} not found on PATH (graphile-worker needs Node and npm)")
    return path


async def graphile_node() -> str:
    """The `node` to run the drain with, once graphile-worker is installed in its folder (npm,
    once, then cached); PeerUnavailable if Node or npm is missing or the install fails."""
    node = _tool("node")
    folder = _folder()
    ready = folder / ".installed"
    if not ready.exists():
        npm = _tool("npm")
        folder.mkdir(parents=True, exist_ok=True)
        # A package.json of its own, so npm installs here and not into a parent folder that
        # has one (npm walks up to the nearest).
        (folder / "package.json").write_text('{"private": true}\n')
        await run_command(
            npm, "install", "--no-audit", "--no-fund", PACKAGE, cwd=folder, within=600
        )
        manifest = folder / "node_modules" / "graphile-worker" / "package.json"
        installed = json.loads(manifest.read_text()).get("version") if manifest.exists() else None
        if installed != VERSION:
            raise PeerUnavailable(f"npm installed graphile-worker {installed}, not {VERSION}")
        ready.touch()
    return node


async def graphile_drain(node: str, database_url: str, jobs: int) -> PeerDrain:
    """Enqueue `jobs` no-op jobs with graphile-worker and time its tuned drain of them: from
    just before its runner starts (start-up included) to the last handler's start."""
    answer = json.loads(
        await run_command(
            node,
            _SCRIPT,
            database_url,
            str(jobs),
            str(CONCURRENT_JOBS),
            str(MAX_POOL_SIZE),
            str(LOCAL_QUEUE),
            # Run from its folder, where the script resolves graphile-worker.
            cwd=_folder(),
            # Generous (a minute, then 500 jobs/s: a fortieth of its figure here); a stuck
            # runner is killed and the row says so.
            within=60 + jobs / 500,
        )
    )
    if answer["jobs"] != jobs or answer["left"]:
        raise PeerUnavailable(
            f"graphile-worker started {answer['jobs']} of {jobs} jobs and left "
            f"{answer['left']} in its table"
        )
    return PeerDrain(jobs=answer["jobs"], seconds=answer["seconds"])


async def node_version(node: str) -> str:
    """`node --version`, for the row's note (the package asks for 22; the machine may have 20)."""
    return (await run_command(node, "--version")).strip()
