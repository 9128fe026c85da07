"""The soak's clients: a mixed load on the replicas, and what every answer was.

Submits (single and batch, hot and cold objects, every kind and on_busy policy, idempotency
keys sent twice, `not_before`), cancels, limit changes and pause/resume, all drawn from the
soak's seeded random generator. Each answer is kept for the audit: the ids of accepted jobs,
every 5xx with its moment, requests that got no answer and where they went.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import random
import time
from collections import Counter
from typing import Any

import aiohttp

from tests.soak.cluster import KINDS, Cluster

HOT = [1, 2, 3, 4]
COLD = range(1000, 20000)
KIND_WEIGHTS = {"default": 4, "burst": 2, "slow": 2, "flaky": 2}
POLICIES = {"queue": 6, "coalesce": 1, "replace": 1, "append": 1, "reject": 1}
# Limit changes of one row are at least this far apart: each limit runs long enough for its
# keys to fill their windows under it.
LIMIT_CHANGE_SPACING = 30.0
# A limit the burst kind switches to and back, and an override of one hot default key.
BURST_LOOSE = (1.0, 4, 3)
OVERRIDE = (1.0, 2, 1)
TIMEOUT = aiohttp.ClientTimeout(total=10)

LimitValue = tuple[float, int, int]
# The generator of the task that draws (see Load.rng); the main task's until it sets one.
_RNG: contextvars.ContextVar[random.Random] = contextvars.ContextVar("soak_rng")


@dataclasses.dataclass
class LimitChange:
    """A limit row written between `t0` and `t1` (database clock); `value` None: dropped."""

    t0: float
    t1: float
    kind: str
    object_id: int | None
    value: LimitValue | None


@dataclasses.dataclass
class Pause:
    """A key (object None: a whole kind) that started nothing from `t_from` to `t_to`."""

    kind: str
    object_id: int | None
    t_from: float
    t_to: float | None = None


@dataclasses.dataclass
class Answer:
    """An answer the audit must look at: a 5xx, or none at all."""

    at: float  # wall clock, the end of the request
    started: float
    status: int | None  # None: no answer (refused, reset, timed out)
    url: str
    replica_faulted: bool
    text: str


@dataclasses.dataclass
class Load:
    """The clients and their record."""

    cluster: Cluster
    seed: int
    session: aiohttp.ClientSession
    accepted: dict[int, str] = dataclasses.field(default_factory=dict)  # id -> kind
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    troubles: list[Answer] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)  # 4xx that should not be
    idempotency_broken: list[str] = dataclasses.field(default_factory=list)
    cancelled: set[int] = dataclasses.field(default_factory=set)
    probes: set[int] = dataclasses.field(default_factory=set)  # the chaos' jobs: not cancelled
    limits: list[LimitChange] = dataclasses.field(default_factory=list)
    pauses: list[Pause] = dataclasses.field(default_factory=list)
    requests: int = 0
    stopping: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def rng(self) -> random.Random:
        """The calling task's own generator: each client draws from its own, so what it does
        follows from the seed whatever the others do meanwhile."""
        return _RNG.get()

    def own_generator(self, name: str) -> None:
        """Give the calling task (and the tasks it starts) a generator of its own."""
        _RNG.set(random.Random(f"{self.seed}-{name}"))

    # --- one request ------------------------------------------------------------------------

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int | None, Any]:
        """One request to a replica that is up; (status, JSON body) or (None, None)."""
        urls = self.cluster.urls() or [r.url for r in self.cluster.replicas]
        url = self.rng.choice(urls)
        replica = next(r for r in self.cluster.replicas if r.url == url)
        started = time.time()
        faulted_before = replica.busy or replica.frozen
        freezes = replica.freezes
        self.requests += 1
        try:
            async with self.session.request(
                method, url + path, json=body, headers=headers, timeout=TIMEOUT
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            faulted = (
                faulted_before
                or replica.busy
                or replica.frozen
                or replica.freezes != freezes
                or not replica.alive()
            )
            self.troubles.append(Answer(time.time(), started, None, url, faulted, repr(exc)))
            return None, None
        self.statuses[status] += 1
        if status >= 500:
            faulted = faulted_before or replica.busy or replica.frozen or replica.freezes != freezes
            self.troubles.append(Answer(time.time(), started, status, url, faulted, text[:300]))
        try:
            return status, json.loads(text)
        except ValueError:
            return status, None

    def _accept(self, document: dict[str, Any]) -> None:
        self.accepted[int(document["id"])] = str(document["kind"])

    # --- the clients ------------------------------------------------------------------------

    async def client(self, number: int) -> None:
        """Submits, batches, cancels and idempotent retries until stopped."""
        self.own_generator(f"client-{number}")
        while not self.stopping.is_set():
            roll = self.rng.random()
            if roll < 0.72:
                await self.submit()
            elif roll < 0.80:
                await self.batch()
            elif roll < 0.90:
                await self.cancel()
            else:
                await self.idempotent()
            await asyncio.sleep(self.rng.uniform(0.05, 0.35))

    def job_body(self) -> dict[str, Any]:
        kind = self.rng.choices(list(KIND_WEIGHTS), list(KIND_WEIGHTS.values()))[0]
        hot = self.rng.random() < 0.4
        body: dict[str, Any] = {
            "object_id": self.rng.choice(HOT) if hot else self.rng.choice(COLD),
            "kind": kind,
            "payload": self.order(kind),
        }
        if self.rng.random() < 0.1:
            body["not_before"] = round(time.time() + self.rng.uniform(0, 8), 3)
        return body

    def order(self, kind: str) -> dict[str, Any]:
        """What the handler is to do with the job."""
        if kind == "flaky":
            action = self.rng.choices(
                ["ok", "fail", "fail_once", "retry_later", "timeout"], [3, 2, 3, 3, 1]
            )[0]
            return {"do": action, "s": round(self.rng.uniform(0, 0.1), 3)}
        if kind == "slow":  # longer than the kind's window, often
            return {"do": "ok", "s": round(self.rng.uniform(0.2, 1.8), 3)}
        action = "fail_once" if self.rng.random() < 0.05 else "ok"
        return {"do": action, "s": round(self.rng.uniform(0, 0.2), 3)}

    async def submit(self) -> None:
        body = self.job_body()
        body["on_busy"] = self.rng.choices(list(POLICIES), list(POLICIES.values()))[0]
        status, answer = await self.call("POST", "/jobs", body)
        if status in {200, 201}:
            self._accept(answer)
        elif status == 429 and body["on_busy"] == "reject":
            pass
        elif status == 409 and body["on_busy"] == "reject":
            pass  # the key is paused
        elif status is not None and status < 500:
            self.unexpected.append(f"POST /jobs {body} -> {status} {answer}")

    async def batch(self) -> None:
        jobs = [self.job_body() for _ in range(self.rng.randint(2, 20))]
        for job in jobs:
            job.pop("not_before", None)  # a batch's items take object_id, kind and payload
        status, answer = await self.call("POST", "/jobs", jobs)
        if status in {200, 201}:
            for document in answer["jobs"]:
                self._accept(document)
        elif status is not None and status < 500:
            self.unexpected.append(f"POST /jobs batch -> {status} {answer}")

    async def cancel(self) -> None:
        if not self.accepted:
            return
        job_id = self.rng.choice(list(self.accepted)[-200:])
        if job_id in self.probes:
            return
        status, answer = await self.call("POST", f"/jobs/{job_id}/cancel")
        if status == 200:
            self.cancelled.add(job_id)
        elif status is not None and status not in {409} and status < 500:
            self.unexpected.append(f"cancel {job_id} -> {status} {answer}")

    async def idempotent(self) -> None:
        """A submit with an Idempotency-Key, sent again until answered, then once more: every
        answer must name the same job."""
        key = f"soak-{self.rng.getrandbits(64):016x}"
        body = self.job_body()
        seen: set[int] = set()
        for _ in range(8 if not self.stopping.is_set() else 1):
            status, answer = await self.call(
                "POST", "/jobs", body, headers={"Idempotency-Key": key}
            )
            if status in {200, 201}:
                self._accept(answer)
                seen.add(int(answer["id"]))
                if len(seen) > 1 or self.rng.random() < 0.5:
                    break
            elif status is not None and status < 500:
                self.unexpected.append(f"POST /jobs idempotent -> {status} {answer}")
                break
            await asyncio.sleep(0.3)
        if len(seen) > 1:
            self.idempotency_broken.append(f"key {key}: jobs {sorted(seen)}")

    # --- the operator -----------------------------------------------------------------------

    async def operator(self) -> None:
        """Limit changes and pause/resume, at random moments."""
        self.own_generator("operator")
        last_change: dict[tuple[str, int | None], float] = {}
        burst_loose = False
        override_set = False
        while not self.stopping.is_set():
            await asyncio.sleep(self.rng.uniform(3, 9))
            if self.stopping.is_set():
                break
            roll = self.rng.random()
            now = time.monotonic()
            if roll < 0.3 and now - last_change.get(("burst", None), -1e9) > LIMIT_CHANGE_SPACING:
                burst_loose = not burst_loose
                value = BURST_LOOSE if burst_loose else KINDS["burst"]
                await self.set_limit("burst", None, value)
                last_change["burst", None] = now
            elif roll < 0.55 and now - last_change.get(("default", 1), -1e9) > (
                LIMIT_CHANGE_SPACING
            ):
                override_set = not override_set
                await self.set_limit("default", 1, OVERRIDE if override_set else None)
                last_change["default", 1] = now
            else:
                whole_kind = self.rng.random() < 0.25
                kind = self.rng.choice(list(KIND_WEIGHTS))
                object_id = None if whole_kind else self.rng.choice(HOT)
                await self.pause_for(kind, object_id, self.rng.uniform(1, 6))

    def _limit_path(self, kind: str, object_id: int | None) -> str:
        return f"/limits/{kind}" + ("" if object_id is None else f"/objects/{object_id}")

    async def insist(self, method: str, path: str, body: Any = None) -> Any:
        """An operator's request, sent again until some replica answers 2xx (the database
        may be down for a few seconds)."""
        while True:
            status, answer = await self.call(method, path, body)
            if status is not None and 200 <= status < 300:
                return answer
            if status is not None and status < 500:
                self.unexpected.append(f"{method} {path} {body} -> {status} {answer}")
                return None
            await asyncio.sleep(0.5)

    async def set_limit(self, kind: str, object_id: int | None, value: LimitValue | None) -> None:
        """Set (None: drop) a limit row, and when it changed, on the database clock."""
        t0 = await self.cluster.db_now()
        path = self._limit_path(kind, object_id)
        if value is None:
            await self.insist("DELETE", path)
        else:
            window, limit, max_running = value
            body = {"window": window, "limit": limit, "max_running": max_running}
            await self.insist("PUT", path, body)
        t1 = await self.cluster.db_now()
        self.limits.append(LimitChange(t0, t1, kind, object_id, value))

    async def pause_for(self, kind: str, object_id: int | None, seconds: float) -> None:
        path = self._limit_path(kind, object_id)
        await self.insist("POST", path + "/pause")
        pause = Pause(kind, object_id, await self.cluster.db_now())
        self.pauses.append(pause)
        await asyncio.sleep(seconds)
        pause.t_to = await self.cluster.db_now()
        await self.insist("POST", path + "/resume")

    async def set_initial_limits(self) -> None:
        for kind, value in KINDS.items():
            await self.set_limit(kind, None, value)
