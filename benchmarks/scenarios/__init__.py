"""The scenarios, in the order a run takes them (later ones reuse earlier figures)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from benchmarks.context import Bench
from benchmarks.scenarios import (
    batch,
    citus,
    drain,
    enqueue,
    experiments,
    hot,
    lateness,
    limits,
    memory,
    scale,
    search,
    stale,
)

Scenario = Callable[[Bench], Awaitable[None]]

SCENARIOS: dict[str, Scenario] = {
    "enqueue": enqueue.run,
    "batch": batch.run,
    "drain": drain.run,
    "hot": hot.run,
    "lateness": lateness.run,
    "scale": scale.run,
    "memory": memory.run,
    "stale": stale.run,
    "limits": limits.run,
    "search": search.run,
    "citus": citus.run,
    "experiments": experiments.run,
}
