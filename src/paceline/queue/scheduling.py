"""The exact planner: a key's slots under its limit, whenever one statement cannot decide.

A key's limit is N starts per window W (`pacing.Limit`), at most M running, maybe paused
(`KeyLimit`, read from the database). The one-statement enqueue (`db/jobs.sql`, `enqueue`)
places a job where this module would, from the key's slot row, while the key is not paused,
nothing reserved ahead is in the way and the row was worked out under the key's limit; this
module places the rest and moves slots when something changes:

- `place`: a new job at the earliest slot that fits among the key's reservations (its pending
  slots and its recent starts): first fit, so a job scheduled far ahead (`not_before`) does
  not hold up the free slots before it. A job without `not_before` also never goes before the
  key's last such job: plain jobs keep their acceptance order (I4').
- `replan_key`: the key's pending jobs again, in their slot order, each at the earliest slot
  that fits (`pacing.replan`): after a cancel (slots move up), a late start or a retry (they
  move back), a limit change, a resume. A paused key's jobs wait at 'infinity'.

Every operation runs in the caller's transaction and takes the key's slot-row lock first, so
it serializes with the one-statement enqueue of that key; at the end it writes where that
statement may place the key's next job (`next_slot`, `open_until`), or makes the statement
leave the key to this module (`open_until` '-infinity').
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from paceline.db import limits as store
from paceline.db import slots
from paceline.db.limits import Key, SlotRow
from paceline.db.pool import Connection, Executor
from paceline.queue.jobs import Job, NewJob, enqueue, enqueue_batch, finite
from paceline.queue.pacing import Limit, earliest_slot, replan

# PostgreSQL's 'infinity' and '-infinity' as asyncpg sends them; asyncpg reads them back as
# naive datetime.max / datetime.min (`jobs.finite` makes 'infinity' None).
FOREVER = datetime.max.replace(tzinfo=UTC)
NEVER_OPEN = datetime.min.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class KeyLimit:
    """The limit a key is under: `per_window` starts in any `window` seconds, `max_running` at
    once, nothing while `paused`; `overridden` if the key has a limit of its own."""

    window: float
    per_window: int = 1
    max_running: int = 1
    paused: bool = False
    overridden: bool = False

    @property
    def pacing(self) -> Limit:
        """The sliding-window rule the slots follow."""
        return Limit(self.window, self.per_window)

    @property
    def one_statement(self) -> bool:
        """True if the one-statement enqueue may place this key's jobs."""
        return not self.paused


async def read_limit(db: Executor, kind: str, object_id: int | None) -> KeyLimit:
    """The limit in force for the key (its override, else its kind's, else the default's);
    object_id None: a key of the kind without an override."""
    return _limit_of(await store.key_limit(db, kind=kind, object_id=object_id))


def _limit_of(row: asyncpg.Record) -> KeyLimit:
    return KeyLimit(
        window=row["window_seconds"],
        per_window=row["per_window"],
        max_running=row["max_running"],
        paused=row["paused"],
        overridden=row["overridden"],
    )


@dataclasses.dataclass(frozen=True)
class Pending:
    """A pending job as the planner sees it; `run_at` None while its key is paused."""

    id: int
    created_at: datetime
    run_at: datetime | None
    not_before: datetime | None

    @property
    def keeps_order(self) -> bool:
        """Plain jobs start in acceptance order; a scheduled one neither waits for them nor
        holds them up."""
        return self.not_before is None


@dataclasses.dataclass(frozen=True)
class KeyState:
    """What a key's next slot depends on, read under its slot-row lock."""

    now: datetime
    limit: KeyLimit
    pending: list[Pending]  # in slot order, paused ones last
    starts: list[datetime]  # its starts in the last window, and its last start

    @property
    def latest_start(self) -> datetime | None:
        return max(self.starts, default=None)

    def taken(self, pending: Iterable[Pending] | None = None) -> list[datetime]:
        """Every reserved instant: the starts and the pending slots."""
        jobs = self.pending if pending is None else pending
        return [*self.starts, *(job.run_at for job in jobs if job.run_at is not None)]


@dataclasses.dataclass(frozen=True)
class SlotChange:
    """One pending job's slot, before and after a re-plan (None: waits for a resume)."""

    job_id: int
    kind: str
    object_id: int
    before: datetime | None
    after: datetime | None


async def read_key(conn: Connection, kind: str, object_id: int, *, lock: bool = True) -> KeyState:
    """The key's limit, pending jobs (locked) and recent starts. Hold its slot-row lock; or,
    with `lock=False`, a reader's look at them that moves nothing."""
    row = await store.key_limit(conn, kind=kind, object_id=object_id)
    limit, now = _limit_of(row), row["now"]
    rows = await store.pending_of_key(conn, kind=kind, object_id=object_id, lock=lock)
    since = now - timedelta(seconds=limit.window)
    starts = await store.starts_of_key(conn, kind=kind, object_id=object_id, since=since)
    return _key_state(now, limit, rows, starts)


def _key_state(
    now: datetime, limit: KeyLimit, pending: Iterable[asyncpg.Record], starts: Iterable[datetime]
) -> KeyState:
    """A key's state from its rows: its pending jobs in slot order, its starts."""
    return KeyState(
        now=now,
        limit=limit,
        pending=[
            Pending(row["id"], row["created_at"], finite(row["run_at"]), row["not_before"])
            for row in pending
        ],
        starts=sorted(starts),
    )


def slot_for_new(state: KeyState, not_before: datetime | None) -> datetime | None:
    """Where a new job goes: the earliest slot that fits at or after now (and `not_before`),
    a plain job not before the key's last plain job; None while the key is paused."""
    if state.limit.paused:
        return None
    bound = state.now if not_before is None else max(state.now, not_before)
    if not_before is None:
        plain = [job.run_at for job in state.pending if job.keeps_order and job.run_at]
        bound = max([bound, *plain])
    return earliest_slot(state.taken(), bound, state.limit.pacing)


def plan_again(
    state: KeyState,
    *,
    first: int | None = None,
    never_earlier: bool = False,
    from_now: bool = False,
) -> list[tuple[Pending, datetime | None]]:
    """The key's pending jobs with their new slots, in plan order.

    The order is the slot order, the job `first` (a retried one) moved to the front. Each job
    gets the earliest slot that fits after its creation, its `not_before`, the key's latest
    start (no pending job starts before a start that happened), `now` if `from_now` (a
    resume), and its present slot if `never_earlier` (a late start or a retry pushes slots
    back, never forward)."""
    order = sorted(state.pending, key=lambda job: job.id != first) if first else state.pending
    if state.limit.paused:
        return [(job, None) for job in order]
    latest = state.latest_start
    lowers: list[datetime] = []
    for job in order:
        bounds = [job.created_at]
        if job.not_before is not None:
            bounds.append(job.not_before)
        if latest is not None:
            bounds.append(latest)
        if from_now:
            bounds.append(state.now)
        if never_earlier and job.run_at is not None:
            bounds.append(job.run_at)
        lowers.append(max(bounds))
    keep = [job.keeps_order or job.id == first for job in order]
    new = replan(state.starts, lowers, state.limit.pacing, keep_order=keep)
    return list(zip(order, new, strict=True))


def one_statement_row(state: KeyState) -> SlotRow:
    """The key's slot row, given its reservations now: where the one-statement enqueue may
    place its next job, and how far it may go.

    The statement puts a job at t = GREATEST(next_slot, now()) if t plus W is at most
    open_until. With next_slot the earliest slot a plain job may take now, and open_until the
    first reservation after it, that is exactly where this module would put it: no window
    containing t holds N reservations before it, and every reservation after it is a window
    or more away. Under N > 1 the row also keeps the reservations within a window before
    next_slot, which the statement counts for the slots after t (`paceline_next_slots`,
    migration 0015). A paused key gets '-infinity': the statement leaves it to this module."""
    limit = state.limit
    if not limit.one_statement:
        return SlotRow(state.now, NEVER_OPEN, limit.window, limit.per_window, None)
    slot = slot_for_new(state, None)
    assert slot is not None
    taken = state.taken()
    later = [moment for moment in taken if moment > slot]
    recent = None
    if limit.per_window > 1:
        since = slot - timedelta(seconds=limit.window)
        recent = sorted(moment for moment in taken if since < moment <= slot)
    return SlotRow(slot, min(later, default=FOREVER), limit.window, limit.per_window, recent)


async def place(conn: Connection, new: NewJob, *, absorbed: int | None = None) -> Job:
    """Create `new` at its key's earliest slot that fits (I1', I6). In a transaction."""
    not_before = new.not_before
    await slots.lock_object_slots(conn, kind=new.kind, object_id=new.object_id)
    state = await read_key(conn, new.kind, new.object_id)
    if not state.limit.paused and any(job.run_at is None for job in state.pending):
        # Jobs parked by a pause that is over: the resume has not re-planned this key yet (it
        # does, a few keys per transaction, after it committed), or it was cut off before it
        # could. Re-plan them first, as the resume would: the new job goes after them (I4'),
        # not ahead of jobs accepted before it.
        await replan_key(conn, new.kind, new.object_id, from_now=True)
        state = await read_key(conn, new.kind, new.object_id)
    slot = slot_for_new(state, not_before)
    record = await store.insert_planned_job(
        conn,
        kind=new.kind,
        object_id=new.object_id,
        run_at=FOREVER if slot is None else slot,
        payload=new.payload_json,
        absorbed=absorbed,
        not_before=not_before,
    )
    job = Job.from_record(record)
    after = dataclasses.replace(
        state, pending=[*state.pending, Pending(job.id, job.created_at, slot, not_before)]
    )
    await _write_row(conn, new.kind, new.object_id, after)
    return job


async def place_again(
    conn: Connection, kind: str, object_id: int, jobs: list[Pending]
) -> list[datetime | None]:
    """Slots for jobs of the key that go back to PENDING (finished ones retried by hand), in
    the order given; None while the key is paused. Hold the key's slot-row lock; the caller
    writes the slots to the jobs.

    Each goes where `slot_for_new` would put it as a new submit, after the ones before it: a
    plain job at the first slot that fits at or after now and the key's last plain job
    (those before it in `jobs` included), so a bulk retry of one key's jobs takes one slot
    each, spaced by the limit like a burst of submits; a job with `not_before` at the first
    slot that fits at or after now and its `not_before`. One pass (`pacing.replan`), not a
    sort of the reservations per job. Writes the key's slot row for the next enqueue."""
    state = await read_key(conn, kind, object_id)
    if state.limit.paused:
        slots_of: list[datetime | None] = [None] * len(jobs)
    else:
        last_plain = [job.run_at for job in state.pending if job.keeps_order and job.run_at]
        plain_bound = max([state.now, *last_plain])
        lowers = [
            plain_bound if job.keeps_order else max(state.now, job.not_before or state.now)
            for job in jobs
        ]
        keep = [job.keeps_order for job in jobs]
        slots_of = list(replan(state.taken(), lowers, state.limit.pacing, keep_order=keep))
    placed = [
        dataclasses.replace(job, run_at=slot) for job, slot in zip(jobs, slots_of, strict=True)
    ]
    await _write_row(
        conn, kind, object_id, dataclasses.replace(state, pending=[*state.pending, *placed])
    )
    return slots_of


async def next_free(
    conn: Connection, kind: str, object_id: int, *, lock: bool = True
) -> tuple[datetime, datetime | None]:
    """(now, the slot a plain job of the key would get now; None while paused). Hold the
    key's slot-row lock; or, with `lock=False`, a reader's look (see `read_key`)."""
    state = await read_key(conn, kind, object_id, lock=lock)
    return state.now, slot_for_new(state, None)


async def replan_key(
    conn: Connection,
    kind: str,
    object_id: int,
    *,
    first: int | None = None,
    never_earlier: bool = False,
    from_now: bool = False,
    apply: bool = True,
) -> list[SlotChange]:
    """Re-plan the key's pending jobs (see `plan_again`); the slots that change. With
    `apply=False` nothing is written (a dry run). In a transaction."""
    await slots.lock_object_slots(conn, kind=kind, object_id=object_id)
    state = await read_key(conn, kind, object_id)
    changes, after = _replanned(
        (kind, object_id), state, first=first, never_earlier=never_earlier, from_now=from_now
    )
    if apply:
        await _move(conn, changes)
        await _write_row(conn, kind, object_id, after)
    return changes


async def replan_keys(conn: Connection, keys: Sequence[Key], *, never_earlier: bool) -> None:
    """`replan_key` for many keys at once, on one server (`store.keys_share_a_transaction`):
    a constant number of statements whatever their number, where one per key took nine
    round trips. In a transaction; locks the keys' slot rows in key order."""
    keys = sorted(set(keys))
    states = await read_keys(conn, keys)
    changes: list[SlotChange] = []
    rows: list[SlotRow] = []
    for key in keys:
        moved, after = _replanned(key, states[key], never_earlier=never_earlier)
        changes.extend(moved)
        rows.append(one_statement_row(after))
    await _move(conn, changes)
    await store.set_key_rows(conn, keys=keys, rows=rows)


async def read_keys(conn: Connection, keys: Sequence[Key]) -> dict[Key, KeyState]:
    """`read_key` for many keys, in four statements; their slot rows locked in key order."""
    await store.lock_key_rows(conn, keys=keys)
    limit_rows = await store.limits_of_keys(conn, keys=keys)
    pending = await store.pending_of_keys(conn, keys=keys)
    limits = {key: _limit_of(row) for key, row in limit_rows.items()}
    since = [limit_rows[key]["now"] - timedelta(seconds=limits[key].window) for key in keys]
    starts = await store.starts_of_keys(conn, keys=keys, since=since)
    return {
        key: _key_state(limit_rows[key]["now"], limits[key], pending[key], starts[key])
        for key in keys
    }


def _replanned(
    key: Key,
    state: KeyState,
    *,
    first: int | None = None,
    never_earlier: bool = False,
    from_now: bool = False,
) -> tuple[list[SlotChange], KeyState]:
    """The key's slots that `plan_again` changes, and the key's state after them."""
    plan = plan_again(state, first=first, never_earlier=never_earlier, from_now=from_now)
    kind, object_id = key
    changes = [
        SlotChange(job.id, kind, object_id, job.run_at, slot)
        for job, slot in plan
        if slot != job.run_at
    ]
    moved = [dataclasses.replace(job, run_at=slot) for job, slot in plan]
    moved.sort(key=lambda job: (job.run_at is None, job.run_at or state.now, job.id))
    return changes, dataclasses.replace(state, pending=moved)


async def _move(conn: Connection, changes: Sequence[SlotChange]) -> None:
    """Write the new slots (a paused key's jobs wait at 'infinity')."""
    if not changes:
        return
    keys = {(change.kind, change.object_id) for change in changes}
    await slots.move_slots(
        conn,
        job_ids=[change.job_id for change in changes],
        run_at=[FOREVER if change.after is None else change.after for change in changes],
        # One key's: on a Citus cluster the statement is then that key's shard's.
        key=next(iter(keys)) if len(keys) == 1 else None,
    )


async def _write_row(conn: Connection, kind: str, object_id: int, state: KeyState) -> None:
    await store.set_key_row(conn, kind=kind, object_id=object_id, row=one_statement_row(state))


def slot_of(changes: list[SlotChange], job_id: int, default: datetime | None) -> datetime | None:
    """The job's slot after a re-plan: its change, or `default` if it did not move."""
    for change in changes:
        if change.job_id == job_id:
            return change.after
    return default


async def create(pool: asyncpg.Pool, new: NewJob) -> Job:
    """Create a job: in one statement when its key allows, else placed by this module in a
    transaction of its own."""
    job = await enqueue(pool, new)
    if job is not None:
        return job
    async with pool.acquire() as conn, conn.transaction():
        return await place(conn, new)


async def create_in(conn: Connection, new: NewJob, *, absorbed: int | None = None) -> Job:
    """`create` inside the caller's transaction (which may hold the key's lock already)."""
    job = await enqueue(conn, new, absorbed=absorbed)
    if job is not None:
        return job
    return await place(conn, new, absorbed=absorbed)


async def create_many(conn: Connection, new: list[NewJob]) -> list[Job]:
    """Create the jobs in the caller's transaction (all or nothing), in `new`'s order: one
    statement for the keys it may plan, then the rest placed here one by one, key by key in
    key order (each key's jobs in the order sent). Key order, as the one statement and a
    limit change lock their keys: two batches that place the same keys the other way round
    would each hold one key's slot row and wait for the other's (a deadlock)."""
    made = await _one_statement(conn, new)
    if len(made) == len(new):  # the statement made them all, the common case
        return list(made.values())
    rest = [position for position in range(len(new)) if position not in made]
    for position in sorted(rest, key=lambda at: (new[at].kind, new[at].object_id, at)):
        made[position] = await place(conn, new[position])
    return [made[position] for position in range(len(new))]


async def create_each(pool: asyncpg.Pool, new: list[NewJob]) -> list[Job | Exception]:
    """Create independent jobs (the group commit's requests), in `new`'s order: one statement
    for the keys it may plan, then the rest placed here, each in a transaction of its own;
    for each, its job or what refused it.

    The placements of different keys run at once (each holds only its key's lock), those of
    one key in arrival order, so its plain jobs keep their order (I4'): one at a time, the
    placements of a burst of one key under N = 10 would take a round trip each in turn.
    """
    made: dict[int, Job | Exception] = dict(await _one_statement(pool, new, independent=True))
    by_key: dict[tuple[str, int], list[int]] = {}
    for position, item in enumerate(new):
        if position not in made:
            by_key.setdefault((item.kind, item.object_id), []).append(position)

    async def place_in_order(positions: list[int]) -> None:
        for position in positions:
            try:
                async with pool.acquire() as conn, conn.transaction():
                    made[position] = await place(conn, new[position])
            except Exception as exc:  # this request's answer; the others go on
                made[position] = exc

    await asyncio.gather(*(place_in_order(positions) for positions in by_key.values()))
    return [made[position] for position in range(len(new))]


async def _one_statement(
    db: Executor, new: list[NewJob], *, independent: bool = False
) -> dict[int, Job]:
    """The jobs the one-statement batch enqueue placed, by position in `new`."""
    plain = [position for position, item in enumerate(new) if item.not_before is None]
    if not plain:
        return {}
    if len(plain) == len(new):  # no scheduled job: positions are the batch's own
        return await enqueue_batch(db, new, independent=independent)
    sent = await enqueue_batch(db, [new[position] for position in plain], independent=independent)
    return {plain[index]: job for index, job in sent.items()}
