"""py-spy against a running replica: a speedscope file, and the top frames as text.

py-spy samples from outside (`--nonblocking`: it does not even pause the process), so the
replica runs unchanged. Open the `.speedscope.json` files at https://www.speedscope.app.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import sys
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy binary (the dev extra installs it into the venv), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: int, output: Path) -> Path | None:
    """Sample `pid` for `seconds` into a speedscope file; None if py-spy is missing or fails."""
    binary = py_spy()
    if binary is None:
        return None
    process = await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        "250",
        "--nonblocking",
        "--function",
        "--format",
        "speedscope",
        "--output",
        str(output),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    text = (await process.communicate())[0].decode(errors="replace")
    if process.returncode != 0 or not await asyncio.to_thread(output.exists):
        print(f"py-spy failed ({process.returncode}): {text[-500:]}", file=sys.stderr)
        return None
    return output


def top_frames(speedscope: Path, count: int = 15, callers: int = 5) -> str:
    """The functions with the most CPU: on CPU themselves (self) and with callees (total), and
    for the top few self frames the call paths that lead to them."""
    data = json.loads(speedscope.read_text())
    frames = [_frame_name(frame) for frame in data["shared"]["frames"]]
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    paths: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    busy = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            busy += weight
            leaf = frames[stack[-1]]
            own[leaf] += weight
            paths[leaf][" <- ".join(frames[index] for index in stack[-2:-5:-1])] += weight
            for name in {frames[index] for index in stack}:
                total[name] += weight
    if not busy:
        return "no samples"
    lines = [f"{busy:.1f} s on CPU sampled (idle waits in the event loop are not sampled)"]
    lines += ["", "self %  function"]
    lines += [f"{100 * n / busy:6.1f}  {name}" for name, n in own.most_common(count)]
    lines += ["", "total % function (with what it calls)"]
    lines += [f"{100 * n / busy:6.1f}  {name}" for name, n in total.most_common(count)]
    lines += ["", "where the top self frames are called from (3 callers up)"]
    for name, _ in own.most_common(callers):
        lines.append(name)
        lines += [f"  {100 * n / busy:5.1f}  <- {path}" for path, n in paths[name].most_common(3)]
    return "\n".join(lines)


def _frame_name(frame: dict[str, object]) -> str:
    name = str(frame.get("name", "?"))
    file = str(frame.get("file", ""))
    for marker in ("site-packages/", "/src/", "python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    line = frame.get("line")
    return f"{name} ({file}:{line})" if file else name
