"""Limits in the database (N starts per window W, M running at once, pause, not_before), with
an in-process app on a real PostgreSQL: the slots a submit returns, how a change, a cancel, a
pause and a retry move them, and what the workers then start (`job_attempts`).

The slots are checked against a reference written here from the rule alone: no half-open
interval of length W holds more than N starts of one key, and a job gets the earliest instant
at or after its lower bound at which a start keeps that true.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paceline.db import jobs as jobs_store
from paceline.db import limits as limits_store
from paceline.db.queries import QUERIES
from paceline.queue import limits
from paceline.queue.jobs import NewJob
from paceline.queue.limits import LimitFields
from paceline.queue.reaper import Reaper
from paceline.queue.requeue import requeue
from paceline.queue.scheduling import create_many
from paceline.web.keys import POOL
from tests.conftest import MakeClient
from tests.support import assert_starts_apart, eventually, gaps, parse_time, post

Client = TestClient[Any, Any]


# --- the reference ---------------------------------------------------------------------------


def fits(taken: list[datetime], t: datetime, window: timedelta, n: int) -> bool:
    """True if a start at `t` puts no window that contains `t` over N, by brute force: a window
    holding a crowd can slide right until it starts at the crowd's earliest member."""
    points = sorted([*taken, t])
    for start in (p for p in points if t - window < p <= t):
        if bisect.bisect_left(points, start + window) - bisect.bisect_left(points, start) > n:
            return False
    return True


def earliest(taken: list[datetime], lower: datetime, window: timedelta, n: int) -> datetime:
    """The earliest start at or after `lower` that fits: `lower` itself or one window after a
    reservation (the allowed instants are closed on the left)."""
    candidates = sorted({lower, *(x + window for x in taken if x + window > lower)})
    return next(t for t in candidates if fits(taken, t, window, n))


def rule_holds(times: list[datetime], window: timedelta, n: int) -> bool:
    """No half-open interval of length `window` holds more than `n` of `times`."""
    ordered = sorted(times)
    return all(b - a >= window for a, b in zip(ordered, ordered[n:], strict=False))


# --- helpers ---------------------------------------------------------------------------------


async def slots_of(db: asyncpg.Connection, object_id: int) -> dict[int, datetime | None]:
    """The object's pending jobs: id -> run_at (None while paused)."""
    rows = await db.fetch(
        "SELECT id, run_at FROM jobs WHERE object_id = $1 AND status = 'PENDING' ORDER BY id",
        object_id,
    )
    return {row["id"]: None if row["run_at"] == datetime.max else row["run_at"] for row in rows}


async def status_of(db: asyncpg.Connection, job_id: int) -> str:
    status: str = await db.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return status


async def snapshot(db: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    """Every row a limit change could touch."""
    tables = ("jobs", "object_slots", "object_starts", "kind_limits", "key_limits")
    return {table: await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}


async def starts_of(db: asyncpg.Connection, object_id: int) -> list[asyncpg.Record]:
    """The object's attempts (start and end), in start order."""
    return await db.fetch(
        "SELECT job_id, started_at, finished_at FROM job_attempts WHERE object_id = $1 "
        "ORDER BY started_at",
        object_id,
    )


def most_at_once(runs: list[asyncpg.Record], slack: timedelta) -> int:
    """The most attempts running at one instant, each taken as ending `slack` early (a finish
    is recorded when its batch is written, a moment after the claim of the next could begin)."""
    events = sorted(
        [(run["started_at"], 1) for run in runs]
        + [(run["finished_at"] - slack, -1) for run in runs],
        key=lambda event: (event[0], event[1]),
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


# --- an override beside the kind's limit, changes and their dry runs -------------------------


async def test_an_override_has_its_own_limit_and_a_change_replans_what_waits(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    window = timedelta(seconds=60)
    client = await make_client(concurrency=0, rate_window=60)
    pool = client.app[POOL]
    # Object 7 gets 5 starts per window; object 8 keeps the kind's 1.
    await limits.set_limit(pool, "default", 7, LimitFields(per_window=5))
    seven_jobs = [await post(client, 7) for _ in range(7)]
    seven = [parse_time(job["run_at"]) for job in seven_jobs]
    eight = [parse_time((await post(client, 8))["run_at"]) for _ in range(3)]

    # A burst of five at once (each at its own submit instant), then a window after the first.
    assert seven[4] - seven[0] < timedelta(seconds=5)
    assert seven[5] == seven[0] + window
    assert seven[6] == seven[1] + window
    assert rule_holds(seven, window, 5)
    assert not rule_holds(seven, window, 4)
    assert gaps(eight) == [window, window]

    # A dry run of a tighter override says what would move, and writes nothing.
    before = await snapshot(db)
    dry = await limits.set_limit(pool, "default", 7, LimitFields(per_window=2), dry_run=True)
    assert dry.dry_run
    assert dry.limit.effective.per_window == 2
    assert await snapshot(db) == before
    applied = await limits.set_limit(pool, "default", 7, LimitFields(per_window=2))
    assert applied.changes == dry.changes
    after = await slots_of(db, 7)
    assert {change.job_id: change.after for change in applied.changes}.items() <= after.items()
    moved = [slot for slot in after.values() if slot is not None]
    assert len(moved) == 7
    assert rule_holds(moved, window, 2)
    # Each job, in order, at the earliest slot the new limit allows.
    expected: list[datetime] = []
    for job in seven_jobs:
        lower = max([parse_time(job["created_at"]), *expected[-1:]])
        expected.append(earliest(expected, lower, window, 2))
    assert sorted(moved) == expected
    assert list((await slots_of(db, 8)).values()) == eight, "another object's slots stay"

    # The kind's limit changes: its keys follow (object 8), the override keeps its N (and
    # inherits the new window).
    await limits.set_limit(pool, "default", None, LimitFields(window=30.0))
    eight_after = [slot for slot in (await slots_of(db, 8)).values() if slot is not None]
    assert gaps(eight_after) == [timedelta(seconds=30)] * 2
    seven_after = [slot for slot in (await slots_of(db, 7)).values() if slot is not None]
    assert rule_holds(seven_after, timedelta(seconds=30), 2)
    assert not rule_holds(seven_after, timedelta(seconds=30), 1)
    view = await limits.view(pool, "default", 7)
    assert (view.effective.window, view.effective.per_window) == (30.0, 2)


async def test_an_override_on_an_object_without_jobs_holds_from_its_first_submit(
    make_client: MakeClient,
) -> None:
    """A user sets a limit for an object before any of its jobs exist (the usual order)."""
    client = await make_client(concurrency=0, rate_window=60)
    pool = client.app[POOL]
    await limits.set_limit(pool, "default", 9, LimitFields(per_window=3))
    await limits.pause(pool, "default", 10)
    nine = [parse_time((await post(client, 9))["run_at"]) for _ in range(4)]
    assert nine[2] - nine[0] < timedelta(seconds=5), "three starts per window, at once"
    assert nine[3] == nine[0] + timedelta(seconds=60)
    assert (await post(client, 10))["run_at"] is None, "a paused object promises no slot"


async def test_one_statement_places_n_per_window_and_overrides_at_the_rules_slots(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    """The one-statement enqueue (one round trip, what a POST runs first) places keys under N
    starts per window, keys with an override, and a job scheduled past the key's next free
    slot itself, at the slots the rule gives: a burst of N at once, the next N a window
    later, the free slots before a scheduled job left to the plain ones."""
    client = await make_client(concurrency=0, rate_window=60)
    pool = client.app[POOL]
    await limits.set_limit(pool, "default", None, LimitFields(per_window=3))
    await limits.set_limit(pool, "default", 2, LimitFields(window=30.0, per_window=2))

    async def by_the_statement(object_id: int) -> asyncpg.Record:
        record = await jobs_store.enqueue(pool, kind="default", object_id=object_id)
        assert record is not None, f"object {object_id}: left to the planner"
        return record

    def planned(records: list[asyncpg.Record], window: timedelta, n: int) -> list[datetime]:
        """Each job at the earliest slot after its acceptance and the job before it."""
        slots: list[datetime] = []
        for record in records:
            slots.append(earliest(slots, max([record["created_at"], *slots[-1:]]), window, n))
        return slots

    minute = timedelta(seconds=60)
    ones = [await by_the_statement(1) for _ in range(7)]
    assert [record["run_at"] for record in ones] == planned(ones, minute, 3)
    assert ones[3]["run_at"] == ones[0]["run_at"] + minute
    twos = [await by_the_statement(2) for _ in range(5)]
    assert [record["run_at"] for record in twos] == planned(twos, timedelta(seconds=30), 2)

    # A batch: a key's only job is the statement's; two of one key under N > 1, the planner's.
    made = await jobs_store.enqueue_batch(
        pool, kinds=["default"] * 5, object_ids=[3, 4, 5, 6, 6], payloads=[None] * 5
    )
    assert [record["object_id"] for record in made] == [3, 4, 5]

    # A new limit re-plans object 1's jobs and writes its row anew: the statement goes on
    # from the new plan, under the new limit.
    await limits.set_limit(pool, "default", None, LimitFields(per_window=4))
    replanned = sorted(slot for slot in (await slots_of(db, 1)).values() if slot is not None)
    assert rule_holds(replanned, minute, 4)
    assert not rule_holds(replanned, minute, 3)
    record = await by_the_statement(1)
    lower = max(record["created_at"], replanned[-1])
    assert record["run_at"] == earliest(replanned, lower, minute, 4)

    # A job scheduled an hour ahead of a fresh key goes at its not_before, and the plain jobs
    # after it take the free slots before it (four at once, under N = 4).
    hour_ahead = await db.fetchval("SELECT date_trunc('second', now()) + interval '1 hour'")
    scheduled = await jobs_store.enqueue(pool, kind="default", object_id=7, not_before=hour_ahead)
    if QUERIES.citus:
        # The cluster's enqueue function places plain jobs only: the planner, same slot.
        assert scheduled is None
        placed = await post(client, 7, not_before=hour_ahead.isoformat())
        assert parse_time(placed["run_at"]) == hour_ahead
    else:
        assert scheduled is not None, "left to the planner"
        assert scheduled["run_at"] == hour_ahead
    sevens = [await by_the_statement(7) for _ in range(5)]
    assert [record["run_at"] for record in sevens] == planned(sevens, minute, 4)
    assert sevens[-1]["run_at"] + minute <= hour_ahead
    # A not_before that a free slot before the key's next one may serve (object 1's backlog
    # runs minutes ahead) is the planner's: first fit.
    soon = await db.fetchval("SELECT now() + interval '1 second'")
    assert await jobs_store.enqueue(pool, kind="default", object_id=1, not_before=soon) is None

    # A row worked out under another limit than the key's (as every row written before
    # migration 0015 is, NULL) is the planner's: the statement leaves it be.
    await db.execute("UPDATE object_slots SET per_window = 3 WHERE object_id = 1")
    assert await jobs_store.enqueue(pool, kind="default", object_id=1) is None


# --- not_before --------------------------------------------------------------------------------


async def test_a_job_scheduled_an_hour_ahead_leaves_the_slots_before_it_free(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    window = timedelta(minutes=10)
    client = await make_client(concurrency=0, rate_window=window.total_seconds())
    not_before = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    # With an offset (+02:00): the same instant.
    scheduled = await post(
        client, 1, not_before=not_before.astimezone(timezone(timedelta(hours=2))).isoformat()
    )
    assert parse_time(scheduled["run_at"]) == not_before
    plain = [await post(client, 1) for _ in range(10)]
    slots = [parse_time(job["run_at"]) for job in plain]
    # In acceptance order, each at the earliest free slot: five fit in the hour before it (the
    # sixth would be less than a window before it).
    taken = [not_before]
    for job, slot in zip(plain, slots, strict=True):
        lower = max([parse_time(job["created_at"]), *taken[1:]])
        assert slot == earliest(taken, lower, window, 1)
        taken.append(slot)
    assert sum(slot < not_before for slot in slots) == 5
    assert slots == sorted(slots)
    assert (await slots_of(db, 1))[scheduled["id"]] == not_before, "it keeps its slot"

    # A cancel moves the later plain jobs up, each into the slot before, and never the
    # scheduled one before its not_before.
    response = await client.post(f"/jobs/{plain[1]['id']}/cancel")
    assert response.status == 200
    after = await slots_of(db, 1)
    assert after[scheduled["id"]] == not_before
    assert [after[job["id"]] for job in plain if job["id"] != plain[1]["id"]] == slots[:9]
    assert rule_holds([slot for slot in after.values() if slot], window, 1)

    # UNIX seconds work too; the first free slot at or after it.
    in_two_hours = not_before + timedelta(hours=1)
    late = await post(client, 2, not_before=in_two_hours.timestamp())
    assert parse_time(late["run_at"]) == in_two_hours
    early = await post(client, 2)
    assert parse_time(early["run_at"]) == parse_time(early["created_at"]), "not held up"


# --- max_running -------------------------------------------------------------------------------


async def test_max_running_caps_runs_of_one_object_and_not_of_others(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    # Handlers outlast the window: without M, three runs of an object would overlap.
    client = await make_client(concurrency=8, rate_window=1.0, handler="sleep", sleep_seconds=1.3)
    pool = client.app[POOL]
    await limits.set_limit(pool, "default", None, LimitFields(1.0, 3, 1))
    await limits.set_limit(pool, "default", 3, LimitFields(max_running=2))
    for object_id, count in ((1, 3), (2, 3), (3, 5)):
        for _ in range(count):
            await post(client, object_id)

    async def all_done() -> bool:
        statuses = await db.fetch("SELECT status FROM jobs")
        return len(statuses) == 11 and {row["status"] for row in statuses} == {"SUCCESS"}

    await eventually(all_done, timeout=30, interval=0.1)
    slack = timedelta(milliseconds=150)
    one, two, three = [await starts_of(db, n) for n in (1, 2, 3)]
    assert most_at_once(list(one), slack) == 1
    assert most_at_once(list(two), slack) == 1
    # Objects 1 and 2 ran side by side: one's cap does not hold up the other.
    assert most_at_once([*one, *two], slack) == 2
    assert most_at_once(list(three), slack) == 2, "M = 2: two at once, never three"
    for object_id, runs in ((1, one), (2, two), (3, three)):
        assert_starts_apart(object_id, [run["started_at"] for run in runs], 1.0, per_window=3)


# --- pause and resume ----------------------------------------------------------------------------


async def test_a_paused_object_starts_nothing_and_resumes_spaced_by_its_limit(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    window = timedelta(seconds=1)
    client = await make_client(concurrency=8, rate_window=1.0, handler="sleep", sleep_seconds=1.5)
    pool = client.app[POOL]
    # Runs may overlap (M = 4), so the spacing after the resume is the window's alone.
    await limits.set_limit(pool, "default", None, LimitFields(1.0, 1, 4))
    jobs = [await post(client, 1) for _ in range(4)]

    async def first_running() -> bool:
        return await status_of(db, jobs[0]["id"]) == "PROCESSING"

    await eventually(first_running, timeout=10)
    paused = await limits.pause(pool, "default", 1)
    assert {change.job_id for change in paused.changes} == {job["id"] for job in jobs[1:]}
    assert {change.after for change in paused.changes} == {None}
    late = await post(client, 1)
    assert late["run_at"] is None
    shown = await (await client.get(f"/jobs/{jobs[1]['id']}")).json()
    assert shown["run_at"] is None

    async def first_done() -> bool:
        return await status_of(db, jobs[0]["id"]) == "SUCCESS"

    await eventually(first_done, timeout=10)
    # Past every slot the waiting jobs had: still nothing starts.
    await asyncio.sleep(1.2)
    assert [run["job_id"] for run in await starts_of(db, 1)] == [jobs[0]["id"]]

    resumed = await limits.resume(pool, "default", 1)
    planned = sorted(change.after for change in resumed.changes if change.after)
    assert len(planned) == 4
    assert gaps(planned) == [window] * 3

    async def all_started() -> list[asyncpg.Record] | None:
        runs = await starts_of(db, 1)
        return runs if len(runs) == 5 else None

    runs = await eventually(all_started, timeout=15, interval=0.1)
    backlog = [run["started_at"] for run in runs[1:]]
    assert min(backlog) >= planned[0], "nothing started while paused"
    assert_starts_apart(1, backlog, 1.0)
    rows = await db.fetch("SELECT run_at, started_at FROM jobs WHERE object_id = 1")
    assert all(row["started_at"] >= row["run_at"] for row in rows)


# --- the property: random submits, cancels, limit changes and retries ------------------------

KEYS = (1, 2)
WINDOWS = (600.0, 900.0, 1800.0)


@dataclasses.dataclass
class Model:
    """What the reference knows: each key's limit, pending jobs in slot order, and starts."""

    kind_limit: tuple[float, int] = (WINDOWS[0], 1)
    overrides: dict[int, tuple[float | None, int | None]] = dataclasses.field(default_factory=dict)
    # object -> [(job id, created_at, not_before, slot)] in slot order
    pending: dict[int, list[tuple[int, datetime, datetime | None, datetime]]] = dataclasses.field(
        default_factory=lambda: {key: [] for key in KEYS}
    )
    starts: dict[int, list[datetime]] = dataclasses.field(
        default_factory=lambda: {key: [] for key in KEYS}
    )

    def limit(self, key: int) -> tuple[timedelta, int]:
        window, n = self.kind_limit
        own_window, own_n = self.overrides.get(key, (None, None))
        return timedelta(seconds=own_window or window), own_n or n

    def place(self, key: int, now: datetime, not_before: datetime | None) -> datetime:
        window, n = self.limit(key)
        taken = [*self.starts[key], *(job[3] for job in self.pending[key])]
        lower = now if not_before is None else max(now, not_before)
        if not_before is None:  # plain jobs keep their acceptance order
            lower = max([lower, *(job[3] for job in self.pending[key] if job[2] is None)])
        return earliest(taken, lower, window, n)

    def made(self, job: dict[str, Any], not_before: datetime | None, op: object) -> None:
        """A job the app made (as the API showed it) must have the slot `place` gives it."""
        key = job["object_id"]
        created = parse_time(job["created_at"])
        expected = self.place(key, created, not_before)
        assert parse_time(job["run_at"]) == expected, f"{op}: not the earliest free slot"
        self.pending[key].append((job["id"], created, not_before, expected))
        self.pending[key].sort(key=lambda job: (job[3], job[0]))

    def replan(self, key: int, *, first: int | None = None, never_earlier: bool = False) -> None:
        window, n = self.limit(key)
        jobs = sorted(self.pending[key], key=lambda job: (job[3], job[0]))
        if first is not None:
            jobs.sort(key=lambda job: job[0] != first)
        taken = list(self.starts[key])
        latest = max(taken, default=None)
        previous: datetime | None = None
        planned = []
        for job_id, created, not_before, slot in jobs:
            bounds = [created, *(x for x in (not_before, latest) if x is not None)]
            if never_earlier:
                bounds.append(slot)
            ordered = not_before is None or job_id == first
            if ordered and previous is not None:
                bounds.append(previous)
            new = earliest(taken, max(bounds), window, n)
            taken.append(new)
            if ordered:
                previous = new
            planned.append((job_id, created, not_before, new))
        self.pending[key] = sorted(planned, key=lambda job: (job[3], job[0]))


SUBMITS = st.tuples(st.just("submit"), st.sampled_from(KEYS), st.none() | st.floats(0.2, 2.5))
OPS = st.one_of(
    # Submits drawn most often: a key needs a backlog for the rest to move anything.
    SUBMITS,
    SUBMITS,
    SUBMITS,
    SUBMITS,
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(
        st.just("limit"),
        st.none() | st.sampled_from(KEYS),
        st.sampled_from(WINDOWS),
        st.integers(1, 3),
    ),
    st.tuples(st.just("drop"), st.sampled_from(KEYS)),
    st.tuples(st.just("retry"), st.sampled_from((0.0, 100.0))),
    # A batch (one statement for the keys it may plan, the planner for the rest, all in one
    # transaction): each job takes the slot it would have taken sent alone, in batch order.
    st.tuples(st.just("batch"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=5)),
    # Submits at once (the group commit writes them together): each key's jobs take the slots
    # sent one by one would, in the order they were placed, which is their slots' order (not
    # always their ids': a Citus node may hand a later placement a lower id).
    st.tuples(st.just("burst"), st.lists(st.sampled_from(KEYS), min_size=2, max_size=6)),
)


async def reset(db: asyncpg.Connection) -> None:
    """A fresh start for the next example (the app and the database stay)."""
    await db.execute(
        """
        DELETE FROM job_attempts; DELETE FROM jobs; DELETE FROM object_slots;
        DELETE FROM object_starts; DELETE FROM key_limits;
        DELETE FROM kind_limits WHERE kind <> 'default';
        UPDATE kind_limits SET window_seconds = 600, per_window = 1, max_running = 1
        WHERE kind = 'default';
        """
    )


async def apply(op: tuple[Any, ...], model: Model, client: Client, db: asyncpg.Connection) -> None:
    """Do `op` through the app (or the data layer, for a start and its retry) and the model."""
    pool = client.app[POOL]
    name = op[0]
    if name == "submit":
        _, key, ahead = op
        not_before = None
        fields: dict[str, Any] = {}
        if ahead is not None:
            window, _ = model.limit(key)
            not_before = datetime.now(UTC) + ahead * window
            fields["not_before"] = not_before.isoformat()
        model.made(await post(client, key, **fields), not_before, op)
    elif name in ("batch", "burst"):
        if name == "batch":
            response = await client.post("/jobs", json=[{"object_id": key} for key in op[1]])
            assert response.status == 201, await response.text()
            made = (await response.json())["jobs"]
        else:
            made = sorted(
                await asyncio.gather(*(post(client, key) for key in op[1])),
                key=lambda job: (parse_time(job["run_at"]), job["id"]),
            )
        for job in made:
            model.made(job, None, op)
    elif name == "cancel":
        everything = [(key, job) for key in KEYS for job in model.pending[key]]
        if not everything:
            return
        key, job = everything[op[1] % len(everything)]
        assert (await client.post(f"/jobs/{job[0]}/cancel")).status == 200
        model.pending[key].remove(job)
        model.replan(key)
    elif name == "limit":
        _, key, window, n = op
        if key is None:
            await limits.set_limit(pool, "default", None, LimitFields(window, n, 1))
            model.kind_limit = (window, n)
        else:
            await limits.set_limit(pool, "default", key, LimitFields(window, n))
            model.overrides[key] = (window, n)
        for replanned in KEYS if key is None else (key,):
            model.replan(replanned)
    elif name == "drop":
        await limits.drop_limit(pool, "default", op[1])
        model.overrides.pop(op[1], None)
        model.replan(op[1])
    else:
        await start_and_retry(op[1], model, db)


async def start_and_retry(delay: float, model: Model, db: asyncpg.Connection) -> None:
    """A worker's claim, then a handler's RetryLater(delay) for every job it started."""
    # Just before the claim's own transaction began: a key startable then must be started.
    now = await db.fetchval("SELECT now()")
    # As a worker does before it sleeps: on a Citus cluster a claim visits the shards this
    # found due (on one server it changes nothing).
    await jobs_store.seconds_until_next_due(db, kinds=["default"])
    claimed = await jobs_store.claim_due_jobs(
        db, limit=100, lease=30.0, worker_id=uuid.uuid4(), kinds=["default"]
    )
    by_key = {row["object_id"]: row for row in claimed}
    assert len(by_key) == len(claimed), "a claim took two jobs of one key"
    for key in KEYS:
        window, n = model.limit(key)
        head = model.pending[key][0] if model.pending[key] else None
        recent = [s for s in model.starts[key] if s > now - window]
        startable = head is not None and head[3] <= now and len(recent) < n
        if key not in by_key:
            assert not startable, f"key {key}: its due head {head} was not started"
            continue
        row = by_key[key]
        assert head is not None, f"key {key}: started a job the model has not"
        assert row["id"] == head[0], f"key {key}: not its first job"
        assert row["started_at"] >= head[3], "started before its slot"
        assert len([s for s in model.starts[key] if s > row["started_at"] - window]) < n
        model.starts[key].append(row["started_at"])
        async with db.transaction():
            assert await requeue(
                db, row["id"], row["attempts"], delay=delay, error="429", outcome="RETRY"
            )
        # The delay counts from the instant the attempt is recorded finished.
        requeued_at = await db.fetchval(
            "SELECT finished_at FROM job_attempts WHERE job_id = $1 AND attempt = $2",
            row["id"],
            row["attempts"],
        )
        job = head
        model.pending[key][0] = (job[0], job[1], job[2], requeued_at + timedelta(seconds=delay))
        model.replan(key, first=job[0], never_earlier=True)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=20))
async def test_slots_are_the_earliest_the_sliding_window_allows(
    client: Client, db: asyncpg.Connection, ops: list[tuple[Any, ...]]
) -> None:
    await reset(db)
    model = Model()
    for op in ops:
        await apply(op, model, client, db)
        for key in KEYS:
            shown = await slots_of(db, key)
            expected = {job[0]: job[3] for job in model.pending[key]}
            assert shown == expected, f"after {op}: key {key}'s slots differ from the model"
            window, n = model.limit(key)
            for slot in expected.values():
                others = [*model.starts[key], *(s for s in expected.values())]
                others.remove(slot)
                assert fits(others, slot, window, n), f"after {op}: {slot} crowds its window"


async def test_a_resume_cut_off_after_its_commit_leaves_no_job_behind(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    """A resume commits the end of the pause, then re-plans its keys a few per transaction.
    Cut off in between (its connection killed; found by the chaos soak, `make soak`), the
    keys' jobs stayed parked while the keys ran again: a job accepted after the resume started
    before them (I4'), and a key with no new submit waited for ever (I3)."""
    client = await make_client(concurrency=0, rate_window=0.2)
    pool = client.app[POOL]
    await limits.pause(pool, "default", None)
    parked = [await post(client, 1), await post(client, 2)]
    assert [job["run_at"] for job in parked] == [None, None]
    # The resume's first transaction, and nothing after it.
    async with pool.acquire() as conn, conn.transaction():
        await limits_store.lock_limit_changes(conn)
        await limits_store.set_kind_paused(conn, kind="default", paused=False)
        await limits_store.plan_exactly(conn, kinds=["default"], object_id=None)

    async def slot(job_id: int) -> datetime | None:
        row = await db.fetchrow(
            "SELECT run_at, run_at = 'infinity' AS parked FROM jobs WHERE id = $1", job_id
        )
        assert row is not None
        return None if row["parked"] else row["run_at"]

    # Object 1's next job goes after the job accepted before it.
    later = await post(client, 1)
    first = await slot(parked[0]["id"])
    assert first is not None, "the earlier job is still parked"
    assert first < parse_time(later["run_at"])
    # Object 2 gets no submit: the reaper's look re-plans it.
    assert await slot(parked[1]["id"]) is None
    reaper = Reaper(pool, max_attempts=3, interval=1.0)
    assert await reaper.replan_stranded_keys() == 1
    assert await slot(parked[1]["id"]) is not None
    assert await reaper.replan_stranded_keys() == 0


# --- batches that lock several keys --------------------------------------------------------------


async def lock_waiters(db: asyncpg.Connection) -> int:
    """How many sessions of this database wait for a lock (on a Citus cluster they wait on
    the worker holding the key's shard: citus_lock_waits sees them there)."""
    waiting: int = await db.fetchval(
        "SELECT count(DISTINCT waiting_gpid) FROM citus_lock_waits"
        if QUERIES.citus
        else "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting


async def hold_key(conn: asyncpg.Connection, kind: str, object_id: int) -> None:
    """Lock the key's slot row in `conn`'s transaction, as the planner does (on a cluster
    FOR UPDATE must name the key's shard: its bucket)."""
    route = f" AND bucket = paceline_bucket('{kind}', {object_id})" if QUERIES.citus else ""
    await conn.execute(
        f"SELECT 1 FROM object_slots WHERE kind = '{kind}' AND object_id = {object_id}"
        f"{route} FOR UPDATE"
    )


async def test_batches_placing_the_same_keys_in_opposite_orders_do_not_deadlock(
    make_client: MakeClient, db: asyncpg.Connection, database_url: str
) -> None:
    """The planner places a batch's keys in key order, whatever order they were sent in: two
    batches of one kind under N > 1 with two jobs of each key (the planner's, not the one
    statement's, which places a key's only job under N > 1), one sending objects 1, 1, 2, 2
    and the other 2, 2, 1, 1, met with each holding one key and waiting for the other's, until
    PostgreSQL broke one off (a deadlock, after a second). Driven here without the submit's
    retry, which would hide that second."""
    client = await make_client(
        concurrency=0, rate_window=60, handlers="notify=tests.handlers:shout"
    )
    pool = client.app[POOL]
    await limits.set_limit(pool, "notify", None, LimitFields(window=60.0, per_window=3))
    for object_id in (1, 2):  # both keys' slot rows exist
        await post(client, object_id, kind="notify")

    async def batch(object_ids: list[int]) -> list[int]:
        new = [NewJob(object_id, "notify") for object_id in object_ids]
        async with pool.acquire() as conn, conn.transaction():
            return [job.object_id for job in await create_many(conn, new)]

    holder = await asyncpg.connect(database_url)
    try:
        # Hold object 1 so that both batches line up behind it: the one sent 1, 2 first.
        await holder.execute("BEGIN")
        await hold_key(holder, "notify", 1)
        one_two = asyncio.create_task(batch([1, 1, 2, 2]))
        await eventually(lambda: _at_least(db, 1))
        # Placed in request order, this one would take object 2 and wait for 1.
        two_one = asyncio.create_task(batch([2, 2, 1, 1]))
        await eventually(lambda: _at_least(db, 2))
        await holder.execute("COMMIT")
        assert list(await asyncio.gather(one_two, two_one)) == [[1, 1, 2, 2], [2, 2, 1, 1]]
    finally:
        await holder.close()
    # Each key's slots are the rule's: three a window.
    for object_id in (1, 2):
        slots = sorted(s for s in (await slots_of(db, object_id)).values() if s is not None)
        assert len(slots) == 5
        assert rule_holds(slots, timedelta(seconds=60), 3)


async def test_a_batch_broken_off_by_a_deadlock_is_run_again_not_refused(
    make_client: MakeClient, db: asyncpg.Connection, database_url: str
) -> None:
    """A batch with a job of `default` and one of `notify` (N = 3), both placed by the one
    statement, locks object 1 of `default` before object 1 of `notify`; a limit change of
    `default` re-plans the kinds inheriting from it in key order, `notify` first. Here another
    session takes the two the other way round: PostgreSQL breaks the batch's transaction off
    after deadlock_timeout, and the batch must run again and be accepted (the chaos soak got a
    500)."""
    client = await make_client(
        concurrency=0, rate_window=60, handlers="notify=tests.handlers:shout"
    )
    pool = client.app[POOL]
    await limits.set_limit(pool, "notify", None, LimitFields(window=60.0, per_window=3))
    first_plain = await post(client, 1)
    await post(client, 1, kind="notify")
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("BEGIN")
        # The batch's own deadlock check (after the default second) is the one that fires.
        await other.execute("SET LOCAL deadlock_timeout = '30s'")
        await hold_key(other, "notify", 1)
        sent = asyncio.create_task(
            client.post("/jobs", json=[{"object_id": 1}, {"object_id": 1, "kind": "notify"}])
        )
        await eventually(lambda: _at_least(db, 1))
        # Waits for the batch's lock on (default, 1) until PostgreSQL breaks the batch off.
        await hold_key(other, "default", 1)
        await other.execute("COMMIT")
        response = await sent
        assert response.status == 201, await response.text()
        plain, notify = (await response.json())["jobs"]
    finally:
        await other.close()
    # Run again in full: exact slots, and nothing of the broken-off try is left.
    assert parse_time(plain["run_at"]) == parse_time(first_plain["run_at"]) + timedelta(minutes=1)
    assert notify["kind"] == "notify"
    counts = await db.fetch("SELECT kind, count(*) FROM jobs GROUP BY kind ORDER BY kind")
    assert [(row["kind"], row["count"]) for row in counts] == [("default", 2), ("notify", 2)]


async def test_a_limit_change_broken_off_by_a_deadlock_is_run_again_not_refused(
    make_client: MakeClient, db: asyncpg.Connection, database_url: str
) -> None:
    """A limit change marks its kind's slot rows for the planner in key order (object 1, then
    2). Here another session holds object 2 and then asks for object 1: PostgreSQL breaks the
    change's transaction off after deadlock_timeout, and the change must run again and apply
    (the chaos soak got a 500 from PUT /limits/{kind})."""
    client = await make_client(concurrency=0, rate_window=60)
    for object_id in (1, 2):
        await post(client, object_id)
        await post(client, object_id)  # one pending job each waits a window: a re-plan moves it
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("BEGIN")
        # The change's own deadlock check (after the default second) is the one that fires.
        await other.execute("SET LOCAL deadlock_timeout = '30s'")
        await hold_key(other, "default", 2)
        sent = asyncio.create_task(client.put("/limits/default", json={"window": 30}))
        await eventually(lambda: _at_least(db, 1))
        # Waits for the change's lock on object 1 until PostgreSQL breaks the change off.
        await hold_key(other, "default", 1)
        await other.execute("COMMIT")
        response = await sent
        assert response.status == 200, await response.text()
    finally:
        await other.close()
    # Applied in full: each key's second job moved from a minute to 30 s after its first.
    for object_id in (1, 2):
        slots = sorted(s for s in (await slots_of(db, object_id)).values() if s is not None)
        assert len(slots) == 2
        assert slots[1] - slots[0] == timedelta(seconds=30)


async def _at_least(db: asyncpg.Connection, waiting: int) -> bool:
    return await lock_waiters(db) >= waiting
