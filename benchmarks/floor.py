"""The floor under lateness at idle: the least any service on this PostgreSQL and this machine
could do between accepting a job and starting it, measured in the same run as paceline's
figure (scenario 5) and in the same pattern.

Per object, two jobs, then a pause (as the idle scenario posts them):
- due at once: one autocommitted INSERT whose `run_at` is its statement's clock (the enqueue:
  the slot is "now", and the job exists once it commits); as soon as its answer is back, one
  statement on another connection records `clock_timestamp()` as the start (the claim);
- due a window later (its `run_at` the first one's + the window): an asyncio timer, set from
  the database's clock as read by the insert, for the later of its `run_at` and the first
  job's start + the window (a start may come no sooner after the one before: a late first
  start makes the second late too, as in paceline), then the same statement.

No HTTP, no claim logic, no NOTIFY (a replica wakes its own worker in-process): what is left
is the commit, the event loop's wake-up and the round trips, the machine's share of lateness.

    python -m benchmarks.floor URL OBJECTS WINDOW GAP    (prints JSON: all, at_once, timed)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import asyncpg

WARM_UP = 10  # objects whose jobs prepare the statements and are left out

CREATE = """
CREATE TABLE floor_jobs (
    id bigserial PRIMARY KEY,
    object_id bigint NOT NULL,
    due_at_once bool NOT NULL,
    run_at timestamptz NOT NULL,
    started_at timestamptz
)
"""
ENQUEUE = """
INSERT INTO floor_jobs (object_id, due_at_once, run_at)
VALUES ($1, $2, COALESCE(to_timestamp($3::float8), now()))
RETURNING id, EXTRACT(EPOCH FROM now())::float8 AS now,
          EXTRACT(EPOCH FROM run_at)::float8 AS run_at
"""
START = """
UPDATE floor_jobs SET started_at = clock_timestamp() WHERE id = $1
RETURNING EXTRACT(EPOCH FROM started_at)::float8
"""
PERCENTILES = """
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY late) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY late) AS p99,
       max(late) AS max
FROM (
    SELECT EXTRACT(EPOCH FROM started_at - run_at)::float8 * 1000 AS late
    FROM floor_jobs
    WHERE object_id >= 0 AND due_at_once = ANY($1::bool[])
) AS j
"""


async def measure(url: str, objects: int, window: float, gap: float) -> dict[str, Any]:
    """Run the pattern; p50, p99, max (ms) and count of all jobs, and of each half."""
    submitter = await asyncpg.connect(url)
    starters = await asyncpg.create_pool(url, min_size=2, max_size=4)
    assert starters is not None
    timers: set[asyncio.Task[None]] = set()

    async def start(job_id: int) -> float:
        started: float = await starters.fetchval(START, job_id)
        return started

    async def start_later(job_id: int, wake_at: float) -> None:
        await asyncio.sleep(max(0.0, wake_at - time.monotonic()))
        await start(job_id)

    try:
        await submitter.execute(CREATE)
        for index in range(-WARM_UP, objects):
            first = await submitter.fetchrow(ENQUEUE, index, True, None)
            assert first is not None
            first_started = await start(first["id"])
            sent = time.monotonic()
            # The key's next slot: a window after the first job's (not after this insert).
            later = await submitter.fetchrow(ENQUEUE, index, False, first["run_at"] + window)
            assert later is not None
            # As a worker does: the database read its clock about halfway through the insert's
            # round trip, and the start statement reads it half a trip after it goes out; the
            # two halves cancel, so the start sets out `due - now` after the insert did.
            due = max(later["run_at"], first_started + window)
            wake_at = sent + (due - later["now"])
            task = asyncio.create_task(start_later(later["id"], wake_at))
            timers.add(task)
            task.add_done_callback(timers.discard)
            await asyncio.sleep(gap)
        await asyncio.gather(*timers)
        figures = {}
        for name, halves in (("all", [True, False]), ("at_once", [True]), ("timed", [False])):
            row = await submitter.fetchrow(PERCENTILES, halves)
            assert row is not None
            figures[name] = {key: row[key] for key in ("n", "p50", "p99", "max")}
        return figures
    finally:
        await starters.close()
        await submitter.close()


def main() -> None:
    url, objects, window, gap = (
        sys.argv[1],
        int(sys.argv[2]),
        float(sys.argv[3]),
        float(sys.argv[4]),
    )
    print(json.dumps(asyncio.run(measure(url, objects, window, gap))))


if __name__ == "__main__":
    main()
