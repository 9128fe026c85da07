"""Which kinds of job this deployment can run: a job of a kind no replica has a handler for is
refused at submit, rather than accepted to wait forever for code that is not there.

A kind is known when this replica has a handler for it (PACELINE_HANDLER, PACELINE_HANDLERS),
or when a live replica registered it with its heartbeat (an API-only replica in front of
workers with more kinds learns them there).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import asyncpg

from paceline.db import jobs as store
from paceline.db.pool import is_unavailable

# A replica that beat within this long counts as live: longer than a heartbeat's interval
# (lease / 3, 10 s by default) and a restart.
LIVE_WITHIN = 60.0
# A kind learned from the database is believed this long without asking again.
_REMEMBER = 5.0


class UnknownKind(Exception):
    """No replica has a handler for this kind."""

    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.known = known


class KnownKinds:
    """`await check(kind)` before accepting a job of `kind`."""

    def __init__(self, pool: asyncpg.Pool, local: Iterable[str]) -> None:
        self._pool = pool
        self._local = frozenset(local)
        self._learned: dict[str, float] = {}  # kind -> monotonic time it was seen live

    async def known(self) -> list[str]:
        """Every kind some replica runs now (this one's alone if the database is unreachable)."""
        try:
            live = await store.live_kinds(self._pool, within=LIVE_WITHIN)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            live = []
        return sorted(self._local.union(live))

    async def check(self, kind: str) -> None:
        """Return if some replica runs `kind`; raise UnknownKind (listing the known) if not."""
        if kind in self._local:
            return
        seen = self._learned.get(kind)
        if seen is not None and time.monotonic() - seen < _REMEMBER:
            return
        live = await store.live_kinds(self._pool, within=LIVE_WITHIN)
        now = time.monotonic()
        self._learned = dict.fromkeys(live, now)
        if kind not in self._learned:
            raise UnknownKind(kind, sorted(self._local.union(live)))
