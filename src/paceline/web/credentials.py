"""Who is asking: the configured tokens, and the page's sessions signed in with them.

A token is compared with every configured one in constant time. A page session is a random
cookie value whose SHA-256 names a row of `sessions` (paceline.db.sessions); the row holds the
scope and a fingerprint of the token (HMAC-SHA256 keyed by the database's `session_key`), never
the token. Every check reads the row, so sign-out and expiry hold at once on every replica;
nothing about a session is cached here. What is cached is the key (it never changes) and the
fingerprints of this process's tokens, made with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from datetime import datetime

import asyncpg
from aiohttp import web

from paceline.contract import ScopeName
from paceline.db import sessions as store

# Bytes of randomness in a session cookie.
_COOKIE_BYTES = 32
# Expired sessions a sign-in deletes (the janitor deletes the rest, on replicas with workers).
PRUNE_ON_SIGN_IN = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Whoever a request was let in as: a token's scope, and its page session if it has one."""

    scope: ScopeName
    # SHA-256 of the session cookie (the row's id); None for a bearer token.
    session_id: bytes | None = None


# Set by the auth middleware on every request it checked; absent on a service without tokens.
PRINCIPAL = web.RequestKey("principal", Principal)


def session_id(cookie: str) -> bytes:
    """The id of the session whose cookie holds `cookie`."""
    return hashlib.sha256(cookie.encode()).digest()


class Credentials:
    """The tokens of this process (token -> scope), and the sessions signed in with them."""

    def __init__(self, tokens: Mapping[str, ScopeName], *, session_seconds: float) -> None:
        self._tokens = [(token.encode(), scope) for token, scope in tokens.items()]
        self.session_seconds = session_seconds
        self._key: bytes | None = None
        self._fingerprints: dict[bytes, ScopeName] = {}

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (else the service is open)."""
        return bool(self._tokens)

    def scope_of(self, presented: str) -> ScopeName | None:
        """The scope of `presented` if it is a configured token. Every token is compared, so
        the time taken does not say which one nearly matched."""
        given = presented.encode()
        found: ScopeName | None = None
        for token, scope in self._tokens:
            if hmac.compare_digest(given, token):
                found = scope
        return found

    async def key(self, pool: asyncpg.Pool) -> bytes:
        """The database's random key, shared by the replicas; read once, then kept."""
        if self._key is None:
            stored = await store.session_key(pool)
            if stored is None:  # a database restored without it: the first replica makes one
                await store.seed_session_key(pool, key=secrets.token_hex(32))
                stored = await store.session_key(pool)
                assert stored is not None
            key = bytes.fromhex(stored)
            self._fingerprints = {_fingerprint(key, token): scope for token, scope in self._tokens}
            self._key = key
        return self._key

    async def sign_in(
        self, pool: asyncpg.Pool, token: str, scope: ScopeName
    ) -> tuple[str, datetime]:
        """A new session for a configured `token`: the cookie value and when it expires."""
        key = await self.key(pool)
        cookie = secrets.token_urlsafe(_COOKIE_BYTES)
        expires_at = await store.create_session(
            pool,
            session_id=session_id(cookie),
            scope=scope,
            fingerprint=_fingerprint(key, token.encode()),
            lifetime=self.session_seconds,
        )
        # A replica without workers runs no janitor; its sign-ins clear up after themselves.
        await store.prune_expired_sessions(pool, batch=PRUNE_ON_SIGN_IN)
        return cookie, expires_at

    async def session(self, pool: asyncpg.Pool, cookie: str) -> Principal | None:
        """The session of `cookie`, unless it expired, ended, or its token is no longer
        configured with that scope (rotated out: the row is deleted)."""
        await self.key(pool)
        found = await store.find_session(pool, session_id=session_id(cookie))
        if found is None:
            return None
        scope = self._fingerprints.get(bytes(found["token_fingerprint"]))
        if scope is None or scope != found["scope"]:
            await store.end_session(pool, session_id=session_id(cookie))
            return None
        return Principal(scope, session_id(cookie))

    async def sign_out(self, pool: asyncpg.Pool, cookie: str) -> None:
        """End the session of `cookie`: from now on it is worthless, on every replica."""
        await store.end_session(pool, session_id=session_id(cookie))


def _fingerprint(key: bytes, token: bytes) -> bytes:
    return hmac.new(key, b"paceline-token-v1:" + token, hashlib.sha256).digest()
