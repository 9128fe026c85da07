"""`paceline serve`, `migrate`, `limits`, `replan` and `retry`; every flag of `serve` also
has its environment variable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime

import asyncpg
from aiohttp import web

from paceline import __version__
from paceline.config import ConfigError, Settings
from paceline.contract import DEFAULT_KIND
from paceline.db import citus, embedded, migrate
from paceline.db.pool import CONNECT_TIMEOUT, create_pool, is_unavailable
from paceline.logs import configure_logging
from paceline.queue import limits, rerun
from paceline.queue.jobs import Status, isoformat
from paceline.queue.service import Backoff

log = logging.getLogger("paceline")


def build_parser() -> argparse.ArgumentParser:
    """The command line; flags default to None so the environment decides when they are absent."""
    parser = argparse.ArgumentParser(
        prog="paceline", description="A job service with a per-key rate window."
    )
    parser.add_argument("--version", action="version", version=f"paceline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the API, the page and the workers")
    _database_flag(serve)
    serve.add_argument("--host", help="listen address (PACELINE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (PACELINE_PORT, default 8080)")
    serve.add_argument(
        "--concurrency",
        type=int,
        help="jobs run at once; 0 = API only (PACELINE_CONCURRENCY, default 8)",
    )

    migrate_cmd = commands.add_parser("migrate", help="apply pending database migrations")
    _database_flag(migrate_cmd)

    limits_cmd = commands.add_parser(
        "limits", help="show or change limits (kept in the database, for every replica)"
    )
    actions = limits_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the limits in force (every kind, or one)")
    _database_flag(show)
    show.add_argument("kind", nargs="?", help="one kind (default: every kind)")
    show.add_argument("--object", type=int, dest="object_id", help="one object of the kind")
    for name, text in _CHANGES.items():
        change = actions.add_parser(name, help=text)
        _database_flag(change)
        change.add_argument("kind", help="the kind (`default`: what kinds without a limit use)")
        change.add_argument(
            "--object", type=int, dest="object_id", help="only this object of the kind"
        )
        if name == "set":
            change.add_argument("--window", type=float, help="W, seconds")
            change.add_argument(
                "--limit", type=int, dest="per_window", help="N, starts per window (default 1)"
            )
            change.add_argument(
                "--max-running", type=int, help="M, jobs of one object at once (default 1)"
            )
        _dry_run_flag(change)

    replan = commands.add_parser(
        "replan",
        help="make PACELINE_RATE_WINDOW the default kind's window "
        "(as `limits set default --window`)",
    )
    _database_flag(replan)
    _dry_run_flag(replan)

    retry = commands.add_parser(
        "retry",
        help="run a FAILED or CANCELLED job again (by id), or every one that matches --status "
        "and the filters, each at its object's next free slot",
    )
    _database_flag(retry)
    retry.add_argument("job_id", nargs="?", type=int, help="one job (else: --status)")
    retry.add_argument(
        "--status",
        type=str.upper,
        choices=[Status.FAILED.value, Status.CANCELLED.value],
        help="retry every job of this status that matches the filters",
    )
    retry.add_argument("--kind", help="only jobs of this kind")
    retry.add_argument("--object-id", type=int, help="only jobs of this object")
    retry.add_argument(
        "--payload", help="only jobs whose payload contains this JSON object: '{\"customer\": 42}'"
    )
    retry.add_argument(
        "--dry-run", action="store_true", help="say how many would be retried; change nothing"
    )
    return parser


_CHANGES = {
    "set": "set a kind's limit, or one object's override; fields not given are inherited",
    "drop": "drop a kind's limit or an object's override (it inherits again)",
    "pause": "pause a kind or one object: nothing starts until `resume`",
    "resume": "resume a kind or one object: its jobs are spaced from now by the limit",
}
# What `serve` takes from the command line into Settings (every other flag is a command's).
_SETTING_FLAGS = ("database_url", "host", "port", "concurrency")


def _dry_run_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show each moved slot before and after; change nothing",
    )


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (DATABASE_URL; unset: an embedded server in PACELINE_DATA_DIR)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `paceline` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in _SETTING_FLAGS}
    try:
        settings = Settings.from_env(**overrides)
    except ConfigError as exc:
        print(f"paceline: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        with _database(settings) as dsn:
            settings = settings.replace(database_url=dsn)
            _migrate(dsn)
            if args.command == "migrate":
                # A fresh database takes this environment's PACELINE_RATE_WINDOW as the default
                # kind's limit here too, as `serve` would (a replica started before the
                # migration could not).
                asyncio.run(_seed_default_limit(dsn, settings.rate_window))
                log.info("database is at the newest migration")
                return 0
            if args.command == "replan":
                args.action, args.kind, args.object_id = "set", DEFAULT_KIND, None
                args.window, args.per_window, args.max_running = settings.rate_window, None, None
            if args.command in ("limits", "replan"):
                return asyncio.run(_limits(dsn, args))
            if args.command == "retry":
                return asyncio.run(_retry(dsn, args))
            return _serve(settings)
    except (ConfigError, embedded.EmbeddedPostgresError) as exc:
        log.error("%s", exc)
        return 2


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    if settings.database_url is not None:
        yield settings.database_url
        return
    log.info("DATABASE_URL is not set: using an embedded PostgreSQL in %s", settings.data_dir)
    with embedded.running(settings.data_dir) as server:
        yield server.dsn


def _wait_for_database(dsn: str) -> None:
    """Block until PostgreSQL accepts a connection, saying so every few seconds."""
    backoff, last_said = Backoff(0.2, 2.0), 0.0
    while True:
        try:
            asyncio.run(_ping(dsn))
            return
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if time.monotonic() - last_said > 5:
                log.warning("waiting for the database (%s); retrying", exc)
                last_said = time.monotonic()
            time.sleep(backoff.next())


def _migrate(dsn: str) -> None:
    """Wait for PostgreSQL, then migrate; again from the wait when the database went away
    meanwhile (a restart, a terminated session: each migration is one transaction, so a cut
    one left nothing half done). A replica restarted in an outage then comes up with the
    database instead of exiting. Any other error is raised."""
    backoff = Backoff(0.2, 2.0)
    while True:
        _wait_for_database(dsn)
        try:
            migrate.upgrade(dsn)
            return
        except Exception as exc:
            if not _from_an_outage(exc):
                raise
            log.warning("the database went away while migrating (%s); retrying", exc)
            time.sleep(backoff.next())


def _from_an_outage(exc: BaseException) -> bool:
    """Whether `exc`, or what it was raised from (SQLAlchemy wraps the driver's errors in its
    own), means the database could not be reached."""
    seen: BaseException | None = exc
    while seen is not None:
        if is_unavailable(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _seed_default_limit(dsn: str, window: float) -> None:
    pool = await create_pool(dsn, 1)
    await citus.detect(pool)
    try:
        await limits.seed_default_limit(pool, window)
    finally:
        await pool.close()


async def _limits(dsn: str, args: argparse.Namespace) -> int:
    """`paceline limits ACTION`: print the limit, and the slots a change moves."""
    pool = await create_pool(dsn, 2)
    await citus.detect(pool)
    try:
        if args.action == "show":
            if args.kind is None:
                shown = await limits.kinds_view(pool, [])
            else:
                shown = [await limits.view(pool, args.kind, args.object_id)]
            for limit in shown:
                print(_limit_line(limit))
            return 0
        try:
            done = await _change(pool, args)
        except limits.LimitError as exc:
            print(f"paceline: {exc}", file=sys.stderr)
            return 2
    finally:
        await pool.close()
    if done is None:
        print(f"paceline: {args.kind} has no limit of its own to drop", file=sys.stderr)
        return 1
    print(_limit_line(done.limit))
    verb = "would move" if done.dry_run else "moved"
    print(f"{verb} {len(done.changes)} pending job(s)")
    if done.changes:
        print(f"{'job':>10} {'kind':<16} {'object':>20}  {'slot before':<32} slot after")
        for change in done.changes:
            print(
                f"{change.job_id:>10} {change.kind:<16} {change.object_id:>20}  "
                f"{_slot(change.before):<32} {_slot(change.after)}"
            )
    return 0


async def _change(pool: asyncpg.Pool, args: argparse.Namespace) -> limits.Replanned | None:
    kind, object_id, dry_run = args.kind, args.object_id, args.dry_run
    if args.action == "set":
        fields = limits.LimitFields(args.window, args.per_window, args.max_running)
        return await limits.set_limit(pool, kind, object_id, fields, dry_run=dry_run)
    if args.action == "drop":
        return await limits.drop_limit(pool, kind, object_id, dry_run=dry_run)
    if args.action == "pause":
        return await limits.pause(pool, kind, object_id, dry_run=dry_run)
    return await limits.resume(pool, kind, object_id, dry_run=dry_run)


async def _retry(dsn: str, args: argparse.Namespace) -> int:
    """`paceline retry JOB_ID` or `paceline retry --status FAILED [filters]`."""
    if (args.job_id is None) == (args.status is None):
        print("paceline: give a job id, or --status FAILED|CANCELLED (not both)", file=sys.stderr)
        return 2
    payload = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            print(f"paceline: --payload is not JSON ({exc})", file=sys.stderr)
            return 2
        if not isinstance(payload, dict) or not payload:
            print("paceline: --payload must be a JSON object with a member", file=sys.stderr)
            return 2
    pool = await create_pool(dsn, 2)
    await citus.detect(pool)
    try:
        if args.job_id is not None:
            try:
                job = await rerun.retry_job(pool, args.job_id)
            except (rerun.JobNotFound, rerun.JobNotRetryable) as exc:
                print(f"paceline: {exc}", file=sys.stderr)
                return 1
            key = f"{job.kind} object {job.object_id}"
            print(f"job {job.id} ({key}): PENDING, run_at {_slot(job.run_at)}")
            return 0
        done = await rerun.retry_jobs(
            pool,
            status=Status(args.status),
            kind=args.kind,
            object_id=args.object_id,
            payload=payload,
            dry_run=args.dry_run,
        )
    finally:
        await pool.close()
    verb = "would retry" if args.dry_run else "retried"
    slots = ""
    if done.first_run_at is not None and done.last_run_at is not None:
        slots = f", slots {isoformat(done.first_run_at)} to {isoformat(done.last_run_at)}"
    print(f"{verb} {done.retried} {args.status} job(s){slots}")
    return 0


def _slot(moment: datetime | None) -> str:
    return "after resume" if moment is None else str(isoformat(moment))


def _limit_line(limit: limits.LimitView) -> str:
    key = limit.kind if limit.object_id is None else f"{limit.kind} object {limit.object_id}"
    rule = limit.effective
    state = " (paused)" if rule.paused else ""
    inherited = " (inherited)" if limit.own is None else ""
    return (
        f"{key}: {rule.per_window} per {rule.window:g}s, {rule.max_running} running at once"
        f"{state}{inherited}"
    )


async def _ping(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    await conn.close()


async def _freeze_startup_heap(_app: web.Application) -> None:
    # What start-up built (modules, the app, the pool) lives until exit. Frozen, it is left
    # out of every later garbage collection: a full collection scanning it all paused the
    # event loop for tens of milliseconds, the p99 of POST /jobs under load.
    gc.collect()
    gc.freeze()


def _serve(settings: Settings) -> int:
    from paceline.app import create_app  # noqa: PLC0415  (keeps `migrate` light)

    app = create_app(settings)
    app.on_startup.append(_freeze_startup_heap)
    log.info("paceline %s on http://%s:%d", __version__, settings.host, settings.port)
    if not settings.scoped_tokens():
        log.warning(
            "neither PACELINE_TOKENS nor PACELINE_API_TOKEN is set: anyone who can reach %s:%d "
            "may use the API and the page, and change jobs and limits",
            settings.host,
            settings.port,
        )
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        # HTTP keep-alive connections get this long to finish at shutdown; jobs get their
        # own grace (PACELINE_SHUTDOWN_GRACE) in the worker's cleanup.
        shutdown_timeout=5.0,
    )
    return 0
