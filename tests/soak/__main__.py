"""`python -m tests.soak [--seconds S] [--seed N]`: run the soak, print its table, exit 1 if an
invariant broke. The seed is printed first: the same seed replays the same load and faults
(the moments are the same, what the replicas are doing then may differ)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.soak.audit import audit, read_history, read_runs, table
from tests.soak.chaos import Chaos
from tests.soak.cluster import Cluster
from tests.soak.load import Load

CLIENTS = 6
# After the load stops: how long every due job gets to end.
DRAIN_SECONDS = 180.0
# A replica's auditor looks every 10 s at starts older than 5 s: wait that long after the
# last start before reading its counters.
AUDITOR_LAG = 17.0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS") or 600)
    )
    seed_default = os.environ.get("SOAK_SEED") or None
    parser.add_argument("--seed", type=int, default=seed_default)
    parser.add_argument("--keep", action="store_true", help="keep the logs even when it passes")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    print(
        f"soak seed {seed} ({args.seconds:g}s); replay: make soak SOAK_SEED={seed} "
        f"SOAK_SECONDS={args.seconds:g}",
        flush=True,
    )
    directory = Path(tempfile.mkdtemp(prefix=f"paceline-soak-{seed}-"))
    passed = asyncio.run(soak(seed, args.seconds, directory))
    if passed and not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"logs: {directory}")
    sys.exit(0 if passed else 1)


async def soak(seed: int, seconds: float, directory: Path) -> bool:
    cluster = Cluster(directory)
    began = time.monotonic()
    await cluster.start()
    try:
        async with aiohttp.ClientSession() as session:
            load = Load(cluster, seed, session)
            load.own_generator("main")
            chaos = Chaos(cluster, load, random.Random(f"{seed}-faults"))
            await load.set_initial_limits()
            clients = [asyncio.create_task(load.client(n)) for n in range(CLIENTS)]
            operator = asyncio.create_task(load.operator())
            faults = asyncio.create_task(chaos.run(time.monotonic() + seconds))
            while not faults.done():
                await asyncio.wait([faults], timeout=30)
                print(
                    f"  {time.monotonic() - began:5.0f}s: {len(load.accepted)} accepted, "
                    f"faults {dict(chaos.injected())}",
                    flush=True,
                )
            await faults  # every fault healed
            load.stopping.set()
            await asyncio.gather(*clients, operator)  # the operator resumes what it paused
            print("  load stopped; draining", flush=True)
            await drain(cluster)
            metric = await auditors_total(cluster)
            conn = await cluster.connect()
            try:
                history = await read_history(conn)
            finally:
                await conn.close()
    finally:
        await cluster.stop()
    record_events(directory / "events.json", load, chaos)
    findings = audit(load, chaos, history, read_runs(cluster.run_log), metric)
    bad_exits = [(why, code) for why, code in cluster.exit_codes if why != "kill -9" and code != 0]
    if bad_exits:
        findings.failures.append(f"replicas that did not exit 0: {bad_exits}")
    print(table(seed, seconds, findings))
    for failure in findings.failures:
        print(f"FAILED: {failure}")
    return not findings.failures


def record_events(path: Path, load: Load, chaos: Chaos) -> None:
    """What the soak did and saw, for whoever reads a failure: limit changes and pauses
    (database clock), faults and troubled answers (wall clock)."""
    events = {
        "limits": [dataclasses.asdict(change) for change in load.limits],
        "pauses": [dataclasses.asdict(pause) for pause in load.pauses],
        "faults": [dataclasses.asdict(fault) for fault in chaos.faults],
        "troubles": [dataclasses.asdict(answer) for answer in load.troubles],
    }
    path.write_text(json.dumps(events, indent=1))


async def drain(cluster: Cluster) -> None:
    """Wait until no job is due and unfinished (or the drain time is up)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    conn = await cluster.connect()
    try:
        while time.monotonic() < deadline:
            open_jobs = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE status = 'PROCESSING' "
                "OR (status = 'PENDING' AND run_at < 'infinity')"
            )
            if open_jobs == 0:
                break
            await asyncio.sleep(1)
        last_start = await conn.fetchval(
            "SELECT extract(epoch FROM now() - max(started_at)) FROM job_attempts"
        )
    finally:
        await conn.close()
    await asyncio.sleep(max(0.0, AUDITOR_LAG - float(last_start or 0)))


async def auditors_total(cluster: Cluster) -> int | None:
    """What every replica's auditor counted (earlier processes included), or None."""
    total = 0
    for replica in cluster.replicas:
        seen = await cluster.scrape_violations(replica)
        if seen is None:
            return None
        total += replica.violations_seen + seen
    return total


if __name__ == "__main__":
    main()
