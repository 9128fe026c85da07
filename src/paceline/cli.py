"""`paceline serve`, `migrate` and `replan`; every flag also has its environment variable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Iterator, Sequence

import asyncpg
from aiohttp import web

from paceline import __version__
from paceline.config import ConfigError, Settings
from paceline.db import embedded, migrate
from paceline.db.pool import CONNECT_TIMEOUT, is_unavailable
from paceline.logs import configure_logging
from paceline.queue.jobs import isoformat
from paceline.queue.planning import adopt_window
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

    replan = commands.add_parser(
        "replan",
        help="re-space pending jobs to PACELINE_RATE_WINDOW (serve does it on a change)",
    )
    _database_flag(replan)
    replan.add_argument(
        "--dry-run", action="store_true", help="show the slots before and after; change nothing"
    )
    return parser


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (DATABASE_URL; unset: an embedded server in PACELINE_DATA_DIR)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `paceline` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "dry_run")}
    try:
        settings = Settings.from_env(**overrides)
    except ConfigError as exc:
        print(f"paceline: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        with _database(settings) as dsn:
            settings = settings.replace(database_url=dsn)
            _wait_for_database(dsn)
            migrate.upgrade(dsn)
            if args.command == "migrate":
                log.info("database is at the newest migration")
                return 0
            if args.command == "replan":
                return asyncio.run(_replan(dsn, settings.rate_window, dry_run=args.dry_run))
            asyncio.run(_replan(dsn, settings.rate_window, dry_run=False))
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


async def _replan(dsn: str, window: float, *, dry_run: bool) -> int:
    """Adopt `window` for the pending slots, printing what moves (all of it, when dry)."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        async with conn.transaction():
            previous, changes = await adopt_window(conn, window, dry_run=dry_run)
    finally:
        await conn.close()
    if previous is None or previous == window:
        log.info("pending slots are planned with the window of %gs; nothing to re-plan", window)
        return 0
    verb = "would move" if dry_run else "moved"
    log.info("window %gs -> %gs: %s %d pending job(s)", previous, window, verb, len(changes))
    if dry_run:
        print(f"{'job':>10} {'object':>20}  {'slot before':<32} slot after")
        for change in changes:
            print(
                f"{change.job_id:>10} {change.object_id:>20}  "
                f"{isoformat(change.before)!s:<32} {isoformat(change.after)}"
            )
    return 0


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
    if settings.api_token is None:
        log.warning(
            "PACELINE_API_TOKEN is not set: anyone who can reach %s:%d may use the API",
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
