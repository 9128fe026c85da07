"""`python -m benchmarks`: start PostgreSQL, run the scenarios, print and save the table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

import paceline
from benchmarks import load
from benchmarks.cluster import SERVER_SETTINGS, Cluster
from benchmarks.context import Bench, BenchConfig
from benchmarks.procs import ROOT
from benchmarks.report import Report, Row
from benchmarks.scenarios import SCENARIOS


def build_parser() -> argparse.ArgumentParser:
    """The flags; defaults take ~10 minutes on a 2-core machine."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="paceline's benchmark suite: figures, pgbench ceilings, ratios, goals.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 2-4 minute smoke run: one short run per figure, small drains, no scale scenario",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="scenario 6 with 1M pending + 5M finished jobs and scenario 7 after 100k jobs "
        "(adds ~5 minutes); by default a tenth and 20k",
    )
    parser.add_argument("--runs", type=int, help="runs per figure; the median is shown (3)")
    parser.add_argument("--seconds", type=int, help="length of each wrk and pgbench run (5)")
    parser.add_argument("--drain-jobs", type=int, help="due jobs per drain (100000)")
    parser.add_argument(
        "--only", help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--experiments",
        action="store_true",
        help="also measure what changes would buy (uvloop, quiet logs, no pool reset, "
        "concurrency...), each against a baseline replica in turn (adds ~6 minutes)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy a replica under POST load and during a drain; writes "
        "results/profile-*.speedscope.json and adds the top frames to the report",
    )
    parser.add_argument("--concurrency", type=int, help="PACELINE_CONCURRENCY of every replica")
    parser.add_argument("--pool-size", type=int, help="PACELINE_POOL_SIZE of every replica")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (server, replica logs)"
    )
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    """Settings from the flags: --quick and --scale first, explicit numbers win."""
    config = BenchConfig()
    if args.quick:
        config = dataclasses.replace(
            config,
            runs=1,
            seconds=2,
            drain_jobs=10_000,
            drain_cap=10.0,
            hot_jobs=2_000,
            memory_jobs=4_000,
            scale=False,
            stale_burst_seconds=10,
            stale_objects=20_000,
            search_jobs=100_000,
        )
    if args.scale:
        config = dataclasses.replace(
            config,
            scale=True,
            scale_pending=1_000_000,
            scale_finished=5_000_000,
            memory_jobs=100_000,
        )
    replica_env = {}
    if args.concurrency is not None:
        replica_env["PACELINE_CONCURRENCY"] = str(args.concurrency)
    if args.pool_size is not None:
        replica_env["PACELINE_POOL_SIZE"] = str(args.pool_size)
    only = frozenset(name.strip() for name in (args.only or "").split(",") if name.strip())
    unknown = only - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {
        "runs": args.runs,
        "seconds": args.seconds,
        "drain_jobs": args.drain_jobs,
        "profile": args.profile or None,
        "experiments": args.experiments or None,
        "keep": args.keep or None,
    }
    return dataclasses.replace(
        config,
        only=only,
        replica_env=replica_env,
        **{key: value for key, value in changes.items() if value is not None},
    )


def selected(config: BenchConfig, name: str) -> bool:
    """Whether this run takes scenario `name`."""
    if config.only:
        return name in config.only
    return not (
        (name == "experiments" and not config.experiments) or (name == "scale" and not config.scale)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 unless a scenario crashed (unmet goals are results, not errors)."""
    config = config_from(build_parser().parse_args(argv))
    try:
        return asyncio.run(run(config))
    except asyncio.CancelledError:
        print("interrupted; the server and the replicas were stopped", file=sys.stderr)
        return 130


async def run(config: BenchConfig) -> int:
    """The whole suite, with one PostgreSQL for all of it."""
    # SIGTERM (and SIGINT, which a background job may inherit as ignored) cancel the run, so
    # the replicas and the server are stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    pgbench = await asyncio.to_thread(load.ensure_tools)
    workdir = await asyncio.to_thread(_prepare, config)
    report = Report(_meta(config))
    cluster = Cluster(Path(workdir))
    began = time.monotonic()
    failures = 0
    finished = False
    try:
        await cluster.start()
        report.meta["postgres"] = await _server_version(cluster)
        bench = Bench(config, cluster, report, Path(workdir), pgbench)
        for name, scenario in SCENARIOS.items():
            if not selected(config, name):
                continue
            print(f"== {name}", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                await scenario(bench)
            except Exception as exc:  # one broken scenario must not cost the others' figures
                failures += 1
                traceback.print_exc()
                note = f"failed: {type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                report.add(Row(name, "scenario failed", None, "", note=note))
            print(
                f"   {name}: {time.monotonic() - began:.0f}s so far "
                f"({time.monotonic() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
        finished = True
    finally:
        with contextlib.suppress(Exception):
            await cluster.stop()
        report.meta["elapsed"] = f"{time.monotonic() - began:.0f} s"
        report.meta["load average at end"] = _loadavg()
        # An interrupted run keeps the last whole run's report: its figures are only a part.
        name = "latest" if finished else "interrupted"
        report.write(config.results, name)
        print(report.table())
        print(f"\nwritten: {config.results / name}.json, {config.results / name}.md")
        if config.keep:
            print(f"kept: {workdir}")
        else:
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
    return 1 if failures else 0


def _prepare(config: BenchConfig) -> str:
    """A fresh work directory (server, logs, generated scripts); the results directory."""
    config.results.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="paceline-bench-")
    (Path(workdir) / "logs").mkdir()
    return workdir


def _meta(config: BenchConfig) -> dict[str, Any]:
    return {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "load average at start": _loadavg(),
        "code": _git_state(),
        "paceline imported from": str(Path(paceline.__file__).parent),
        "server settings (non-default)": ", ".join(f"{k}={v}" for k, v in SERVER_SETTINGS.items()),
        "runs": f"median of {config.runs} x {config.seconds}s (warm-up {config.warmup}s)",
        "replica settings": "PACELINE_HANDLER=noop, PACELINE_RATE_WINDOW=300"
        + "".join(f", {k}={v}" for k, v in config.replica_env.items())
        + ", otherwise paceline's defaults",
    }


def _loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "src", "migrations")
    changed = len(dirty.splitlines())
    return f"{commit}" + (
        f" + {changed} uncommitted file(s) in src/ and migrations/" if changed else ""
    )


async def _server_version(cluster: Cluster) -> str:
    conn = await asyncpg.connect(cluster.url())
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return f"{version} (embedded, fsync and synchronous_commit on)"
    finally:
        await conn.close()
