"""The audit at the end of a soak: the database's attempt history, the handlers' own log, and
what the clients were told, checked against every invariant (docs/design.md).

Times from the database are on its clock (UNIX seconds); the handlers' log and the clients'
record use the wall clock of the same machine.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg

from tests.soak.chaos import Chaos
from tests.soak.load import LimitValue, Load

FINAL = {"SUCCESS", "FAILED", "CANCELLED"}
# A 503 this long after the database came back is still the outage's (pools reconnect).
OUTAGE_TAIL = 10.0
# A 503 this long after the connection killer struck is its (a request on a killed connection).
KILL_TAIL = 5.0
# The history is read while the replicas run: a job due this little before the snapshot may
# not have been claimed yet, and a lease run out this little before may not have been taken
# back yet (the reaper looks every lease/3 = 1 s).
START_GRACE = 5.0
REAP_GRACE = 5.0
# Slack around a limit change or a pause: a claim's transaction may have begun just before.
CHANGE_SLACK = 1.0
PAUSE_SLACK = 0.2
LOOKBACK = 300.0


@dataclasses.dataclass
class Findings:
    """Counts for the table, and a line per broken invariant."""

    figures: dict[str, object] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)

    def fail(self, what: str, examples: Iterable[object], limit: int = 5) -> None:
        shown = list(itertools.islice(examples, limit))
        self.failures.append(f"{what}: {shown}")


async def read_history(conn: asyncpg.Connection) -> tuple[list[dict[str, Any]], ...]:
    """Every job and every attempt, times as UNIX seconds on the database clock, as one
    snapshot, and its moment ("now"). The replicas are still running: read statement by
    statement, a job read PENDING could start before its attempts were read, and its slot
    come due before "now" was (both seen as failures that were not)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _read_snapshot(conn)


async def _read_snapshot(conn: asyncpg.Connection) -> tuple[list[dict[str, Any]], ...]:
    # now() is the transaction's start, taken with its first statement's snapshot.
    now = float(await conn.fetchval("SELECT extract(epoch FROM now())"))
    jobs = await conn.fetch(
        "SELECT id, kind, object_id, status, attempts, "
        "extract(epoch FROM run_at)::float8 AS run_at, "
        "extract(epoch FROM not_before)::float8 AS not_before, "
        "extract(epoch FROM lease_expires_at)::float8 AS lease_expires_at "
        "FROM jobs ORDER BY id"
    )
    attempts = await conn.fetch(
        "SELECT job_id, attempt, kind, object_id, outcome, "
        "window_seconds, per_window, max_running, "
        "extract(epoch FROM started_at)::float8 AS started_at, "
        "extract(epoch FROM finished_at)::float8 AS finished_at "
        "FROM job_attempts ORDER BY kind, object_id, started_at, job_id, attempt"
    )
    paused = await conn.fetch(
        "SELECT kind, NULL::bigint AS object_id FROM kind_limits WHERE paused "
        "UNION ALL SELECT kind, object_id FROM key_limits WHERE paused"
    )
    return (
        [dict(r) for r in jobs],
        [dict(r) for r in attempts],
        [dict(r) for r in paused],
        [{"now": now}],
    )


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The handlers' own log: one dict per start or end."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit(  # noqa: PLR0915 - one pass over the history, check by check, reads best in one place
    load: Load,
    chaos: Chaos,
    history: tuple[list[dict[str, Any]], ...],
    runs: list[dict[str, Any]],
    metric_violations: int | None,
) -> Findings:
    jobs, attempts, paused_rows, (clock,) = history
    now = clock["now"]
    found = Findings()
    by_id = {job["id"]: job for job in jobs}
    statuses = Counter(job["status"] for job in jobs)

    # I3: every accepted job exists and ended, or waits legitimately.
    lost = [job_id for job_id in load.accepted if job_id not in by_id]
    paused_keys = {(r["kind"], r["object_id"]) for r in paused_rows}
    waiting, stuck = [], []
    for job in jobs:
        if job["status"] in FINAL:
            continue
        key_paused = (job["kind"], None) in paused_keys or (
            job["kind"],
            job["object_id"],
        ) in paused_keys
        # Due long enough before the snapshot that a worker would have started it.
        due = job["run_at"] is not None and job["run_at"] <= now - START_GRACE
        # Parked ('infinity') is waiting only while its key is paused: else nothing runs it.
        parked = job["run_at"] == math.inf
        # Still running under a lease that was live (or ran out too recently for a reaper to
        # have taken it back yet) when the drain's time ran out: in progress.
        leased = job["lease_expires_at"] is not None and job["lease_expires_at"] > now - REAP_GRACE
        in_progress = job["status"] == "PROCESSING" and leased
        if in_progress or (job["status"] == "PENDING" and (key_paused or not (due or parked))):
            waiting.append(job["id"])
        else:
            stuck.append(job["id"])
    if lost:
        found.fail(f"{len(lost)} accepted job(s) missing from the database", lost)
    if stuck:
        found.fail(f"{len(stuck)} job(s) neither ended nor waiting", (by_id[i] for i in stuck))
    not_cancelled = [i for i in load.cancelled if by_id.get(i, {}).get("status") != "CANCELLED"]
    if not_cancelled:
        found.fail("jobs whose cancel was answered 200 but are not CANCELLED", not_cancelled)

    # Runs: each (job, attempt) once; the history explains every rerun; one success per job.
    per_job: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in attempts:
        per_job[row["job_id"]].append(row)
    for rows in per_job.values():
        rows.sort(key=lambda row: row["attempt"])
    outcome = {(r["job_id"], r["attempt"]): r["outcome"] for r in attempts}
    starts = Counter((r["id"], r["attempt"]) for r in runs if r["ev"] == "start")
    # A handler starts after its claim committed: one that started before the snapshot has
    # its attempt in it. Later ones (the replicas ran on until stopped) are not in it.
    started_before = {(r["id"], r["attempt"]) for r in runs if r["ev"] == "start" and r["t"] < now}
    ends = {(r["id"], r["attempt"]): r["outcome"] for r in runs if r["ev"] == "end"}
    duplicated: list[object] = [pair for pair, n in sorted(starts.items()) if n > 1]
    duplicated += sorted(
        job_id
        for job_id, rows in per_job.items()
        if sum(r["outcome"] == "SUCCESS" for r in rows) > 1
    )
    unrecorded = [pair for pair in started_before if pair not in outcome]
    explained, unexplained = 0, []
    for job_id, rows in per_job.items():
        for row in rows[:-1]:
            pair = (job_id, row["attempt"])
            if row["outcome"] in {"LOST", "RELEASED"}:
                explained += 1  # the lease expired, or a stopping replica gave it back
            elif row["outcome"] == "RETRY" and ends.get(pair) in {
                "error",
                "retry_later",
                "cancelled",
            }:
                pass  # the handler failed: a retry, not a rerun
            else:
                unexplained.append((pair, row["outcome"], ends.get(pair, "no end logged")))
    succeeded_twice = []
    for job_id, rows in per_job.items():
        ok = [r for r in rows if ends.get((job_id, r["attempt"])) == "ok"]
        if len(ok) > 1 and any(
            outcome[(job_id, r["attempt"])] not in {"LOST", "SUCCESS"} for r in ok
        ):
            succeeded_twice.append(job_id)
    if duplicated:
        found.fail("handlers started twice for one attempt, or jobs with two successes", duplicated)
    if unrecorded:
        found.fail("handler runs with no attempt in the database", unrecorded)
    if unexplained:
        found.fail("reruns the history does not explain", unexplained)
    if succeeded_twice:
        found.fail("jobs whose handler succeeded twice without a lost lease", succeeded_twice)

    # I1', I7 and the pauses (I8), per key on the database clock, with the limit in force.
    window_bad: list[tuple[str, int, int, int]] = []
    running_bad: list[tuple[str, int, int, int]] = []
    paused_bad: list[tuple[str, int, int, int]] = []
    wrong_limit: list[object] = []
    for (kind, object_id), key_rows in itertools.groupby(
        attempts, key=lambda r: (r["kind"], r["object_id"])
    ):
        rows = list(key_rows)
        moments = [row["started_at"] for row in rows]
        for n, row in enumerate(rows):
            t = row["started_at"]
            # An attempt that started this long before cannot still run (the job timeout and
            # the lease are seconds); the bound keeps a hot key's audit linear.
            earlier = rows[bisect.bisect_left(moments, t - LOOKBACK) : n]
            ok_window = ok_running = False
            candidates = limits_at(load, kind, object_id, t)
            recorded = (row["window_seconds"], row["per_window"], row["max_running"])
            if recorded not in candidates:  # I8: the claim applied the limit set through the API
                wrong_limit.append((kind, object_id, row["job_id"], recorded, candidates))
            for window, per_window, max_running in candidates:
                in_window = sum(1 for e in earlier if e["started_at"] > t - window)
                running = sum(
                    1 for e in earlier if e["finished_at"] is None or e["finished_at"] > t
                )
                ok_window |= in_window < per_window
                ok_running |= running < max_running
            if not ok_window:
                window_bad.append((kind, object_id, row["job_id"], row["attempt"]))
            if not ok_running:
                running_bad.append((kind, object_id, row["job_id"], row["attempt"]))
            for pause in load.pauses:
                if pause.kind == kind and pause.object_id in {None, object_id}:
                    end = pause.t_to if pause.t_to is not None else now
                    if pause.t_from + PAUSE_SLACK < t < end:
                        paused_bad.append((kind, object_id, row["job_id"], row["attempt"]))
    if wrong_limit:
        found.fail(f"{len(wrong_limit)} start(s) under a limit never set", wrong_limit)
    if window_bad:
        found.fail(f"{len(window_bad)} start(s) beyond N per W", window_bad)
    if running_bad:
        found.fail(f"{len(running_bad)} start(s) beyond max_running", running_bad)
    if paused_bad:
        found.fail(f"{len(paused_bad)} start(s) of a paused key", paused_bad)

    # I4' and I2: plain jobs' first starts in acceptance order per key; nothing early.
    fifo_bad, early = [], []
    first_starts: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for job_id, rows in per_job.items():
        job = by_id[job_id]
        for row in rows:
            if job["not_before"] is not None and row["started_at"] < job["not_before"]:
                early.append((job_id, row["attempt"], "before not_before"))
        # run_at is the slot of the last placement: a requeued job's moved on, so only a job
        # whose one attempt ended it (or still runs) shows the slot that attempt started in.
        only = job["attempts"] == 1 and rows[0]["outcome"] in {"SUCCESS", "FAILED", None}
        if only and rows[0]["started_at"] < job["run_at"]:
            early.append((job_id, 1, "before run_at"))
        if job["not_before"] is None:
            first_starts[job["kind"], job["object_id"]].append((job_id, rows[0]["started_at"]))
    for key, firsts in first_starts.items():
        firsts.sort()
        for (a, t_a), (b, t_b) in itertools.pairwise(firsts):
            if t_b < t_a:
                fifo_bad.append((key, a, b, round(t_a - t_b, 6)))
    if fifo_bad:
        found.fail(f"{len(fifo_bad)} start(s) out of slot order", fifo_bad)
    if early:
        found.fail(f"{len(early)} early start(s)", early)

    # What the clients were told: no 5xx but a 503 while the database was unreachable.
    outages = chaos.database_outages()
    kills = chaos.connection_kills()
    during_outage = during_kill = 0
    bad_answers, unanswered = [], []
    for answer in load.troubles:
        in_outage = any(
            a - 0.5 <= answer.at and answer.started <= b + OUTAGE_TAIL for a, b in outages
        )
        after_kill = any(k - 0.5 <= answer.at <= k + KILL_TAIL for k in kills)
        if answer.status is None:
            if not (answer.replica_faulted or in_outage):
                unanswered.append((answer.url, answer.text))
        elif answer.status == 503 and in_outage:
            during_outage += 1
        elif answer.status == 503 and after_kill:
            during_kill += 1
        else:
            bad_answers.append((answer.status, answer.url, answer.text))
    if bad_answers:
        found.fail(f"{len(bad_answers)} 5xx outside a database outage", bad_answers)
    if unanswered:
        found.fail(f"{len(unanswered)} request(s) to a healthy replica got no answer", unanswered)
    if load.unexpected:
        found.fail(f"{len(load.unexpected)} unexpected refusal(s)", load.unexpected)
    if load.idempotency_broken:
        found.fail("an Idempotency-Key made two jobs", load.idempotency_broken)

    own = len(window_bad) + len(running_bad)
    if metric_violations is None:
        found.fail("the auditor metric could not be read", [])
    elif (metric_violations == 0) != (own == 0):
        found.fail(f"the replicas' auditor counted {metric_violations}, the soak {own}", window_bad)
    if chaos.unhealed:
        found.fail(f"{chaos.unhealed} fault(s) not healed (their probe job never ran)", [])
    bad_exits = [code for code in chaos.sigterm_exits if code != 0]
    if bad_exits:
        found.fail("replicas that did not exit 0 on SIGTERM", bad_exits)

    recoveries = [(f.recovery, f.kind) for f in chaos.faults if f.recovery is not None]
    longest = max(recoveries, default=(0.0, "none"))
    found.figures = {
        "submitted (accepted job ids)": len(load.accepted),
        "jobs in the database": len(jobs),
        "completed": statuses["SUCCESS"],
        "failed (retries exhausted or handler refused)": statuses["FAILED"],
        "cancelled": statuses["CANCELLED"],
        "still waiting (legitimately)": len(waiting),
        "lost": len(lost) + len(stuck),
        "duplicated": len(duplicated) + len(succeeded_twice),
        "reruns explained (lease expired / released)": explained,
        "reruns unexplained": len(unexplained),
        "violations (window / max_running / paused / FIFO / early)": (
            f"{len(window_bad)} / {len(running_bad)} / {len(paused_bad)} / {len(fifo_bad)} / "
            f"{len(early)}"
        ),
        "auditor metric (all replicas)": metric_violations,
        "requests / 503 in outage / 503 after conn kill / other 5xx": (
            f"{load.requests} / {during_outage} / {during_kill} / {len(bad_answers)}"
        ),
        "limit changes / pauses": f"{len(load.limits)} / {len(load.pauses)}",
        **{f"faults: {kind}": n for kind, n in sorted(chaos.injected().items())},
        "longest recovery": f"{longest[0]:.2f}s ({longest[1]})",
    }
    return found


def limits_at(load: Load, kind: str, object_id: int, t: float) -> set[LimitValue]:
    """The limits that may have been in force for a key at `t`: one, or two around a change."""

    def values(changes: list[Any]) -> set[LimitValue | None]:
        possible: set[LimitValue | None] = {None}
        for change in changes:
            if change.t1 + CHANGE_SLACK < t:
                possible = {change.value}
            elif change.t0 - CHANGE_SLACK <= t:
                possible = possible | {change.value}
        return possible

    kind_rows = [c for c in load.limits if c.kind == kind and c.object_id is None]
    key_rows = [c for c in load.limits if c.kind == kind and c.object_id == object_id]
    found: set[LimitValue] = set()
    for own in values(key_rows):
        if own is not None:
            found.add(own)
            continue
        found.update(v for v in values(kind_rows) if v is not None)
    return found


def table(seed: int, seconds: float, findings: Findings) -> str:
    """The one table the soak prints."""
    rows = [("seed", str(seed)), ("duration", f"{seconds:.0f}s")]
    rows += [(name, str(value)) for name, value in findings.figures.items()]
    rows.append(("verdict", "PASS" if not findings.failures else "FAIL"))
    width = max(len(name) for name, _ in rows)
    lines = [f"| {name:<{width}} | {value} |" for name, value in rows]
    return "\n".join(lines)
