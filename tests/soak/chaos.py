"""Faults at random moments from the seed, several at once, and how long each took to heal.

Recovery is what a user sees: from the end of a fault (the replica restarted or thawed, the
database started, the connections killed) until a new job, submitted then, has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import asyncpg

from tests.soak.cluster import Cluster, Replica
from tests.soak.load import Load

LEASE = 3.0
FAULTS = {
    "kill -9": 3,
    "SIGSTOP past the lease": 2,
    "SIGTERM, short grace": 2,
    "PostgreSQL stop fast": 1,
    "PostgreSQL crash (immediate)": 1,
    "connection killer": 3,
}
DATABASE_FAULTS = {"PostgreSQL stop fast", "PostgreSQL crash (immediate)"}
# After the load's time is up, how long the faults in progress get to heal and be probed.
HEAL_TIMEOUT = 240.0
# Probe jobs go to objects no client uses.
PROBE_OBJECTS = 900_000


@dataclasses.dataclass
class Fault:
    kind: str
    began: float  # wall clock
    ended: float | None = None
    recovery: float | None = None  # seconds from `ended` until a probe job ran


@dataclasses.dataclass
class Chaos:
    cluster: Cluster
    load: Load
    rng: random.Random
    faults: list[Fault] = dataclasses.field(default_factory=list)
    sigterm_exits: list[int | None] = dataclasses.field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    _probes: int = 0
    unhealed: int = 0  # faults still not healed (or their probe not run) HEAL_TIMEOUT after the end

    def injected(self) -> Counter[str]:
        return Counter(fault.kind for fault in self.faults)

    def database_outages(self) -> list[tuple[float, float]]:
        """(began, ended) of every database fault, wall clock; an unfinished one to now."""
        return [(f.began, f.ended or time.time()) for f in self.faults if f.kind in DATABASE_FAULTS]

    def connection_kills(self) -> list[float]:
        return [f.began for f in self.faults if f.kind == "connection killer"]

    async def run(self, until: float) -> None:
        """Start a fault every 2-8 s until `until` (monotonic); then wait for all to heal."""
        self.load.own_generator("probes")  # the probes' requests leave the clients' draws be
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(2, 8))
            if time.monotonic() >= until:
                break
            fault = self._choose()
            if fault is not None:
                self._tasks.append(asyncio.create_task(fault))
        _done, unhealed = await asyncio.wait(self._tasks, timeout=HEAL_TIMEOUT)
        for task in unhealed:
            task.cancel()
        self.unhealed = len(unhealed)
        for task in _done:
            task.result()  # a fault that could not be done (a replica that would not start)

    def _choose(self) -> Coroutine[Any, Any, None] | None:
        kinds = list(FAULTS)
        kind = self.rng.choices(kinds, [FAULTS[k] for k in kinds])[0]
        if kind in DATABASE_FAULTS:
            if self.cluster.pg_down:
                return None
            return self._database(kind)
        if kind == "connection killer":
            return self._connections()
        free = [r for r in self.cluster.replicas if not r.busy and not r.frozen]
        # Keep one replica out of harm's way at any time: the load needs somewhere to go.
        if len(free) < 2:
            return None
        replica = self.rng.choice(free)
        replica.busy = True
        return self._replica(kind, replica)

    async def _replica(self, kind: str, replica: Replica) -> None:
        fault = Fault(kind, time.time())
        self.faults.append(fault)
        try:
            if kind == "kill -9":
                await self.cluster.remember_violations(replica)
                await self.cluster.kill_9(replica)
                await asyncio.sleep(self.rng.uniform(0.5, 3))
                await self.cluster.restart(replica)
            elif kind == "SIGSTOP past the lease":
                self.cluster.freeze(replica)
                await asyncio.sleep(LEASE + self.rng.uniform(0.5, 3))
                self.cluster.thaw(replica)
            else:
                await self.cluster.remember_violations(replica)
                self.sigterm_exits.append(await self.cluster.sigterm(replica))
                await asyncio.sleep(self.rng.uniform(0.2, 1))
                await self.cluster.restart(replica)
        finally:
            replica.busy = False
        fault.ended = time.time()
        fault.recovery = await self._probe(fault.ended)

    async def _database(self, kind: str) -> None:
        fault = Fault(kind, time.time())
        self.faults.append(fault)
        await self.cluster.stop_pg("fast" if kind == "PostgreSQL stop fast" else "immediate")
        await asyncio.sleep(self.rng.uniform(1, 5))
        await self.cluster.start_pg()
        fault.ended = time.time()
        fault.recovery = await self._probe(fault.ended)

    async def _connections(self) -> None:
        if self.cluster.pg_down:
            return
        fault = Fault("connection killer", time.time())
        self.faults.append(fault)
        # The database may go down meanwhile; that fault is counted on its own.
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self.cluster.kill_connections(self.rng.uniform(0.2, 0.8))
        fault.ended = time.time()
        fault.recovery = await self._probe(fault.ended)

    async def _probe(self, since: float) -> float:
        """Submit a job to an unused object until accepted, wait until it ran; seconds from
        `since`."""
        self._probes += 1
        body = {"object_id": PROBE_OBJECTS + self._probes, "payload": {"do": "ok"}}
        while True:
            status, answer = await self.load.call("POST", "/jobs", body)
            if status == 201:
                break
            await asyncio.sleep(0.1)
        job_id = int(answer["id"])
        self.load.probes.add(job_id)
        self.load.accepted[job_id] = "default"
        while True:
            status, answer = await self.load.call("GET", f"/jobs/{job_id}")
            if status == 200 and answer["status"] in {"SUCCESS", "FAILED", "CANCELLED"}:
                return time.time() - since
            await asyncio.sleep(0.1)
