"""Settings: one typed object, read from the environment and the command line, passed in.

The variable names are part of paceline's contract (see docs/design.md); keep them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from paceline.contract import (
    DEFAULT_KIND,
    KIND_PATTERN,
    MIN_TOKEN_LENGTH,
    ON_BUSY_VALUES,
    SCOPE_VALUES,
    OnBusyName,
    ScopeName,
)


class ConfigError(ValueError):
    """A setting has a value paceline cannot use; the message names the variable."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a paceline process is told from outside."""

    # None: start an embedded PostgreSQL in `data_dir` (see paceline.db.embedded).
    database_url: str | None = None
    data_dir: Path = Path(".paceline")
    host: str = "127.0.0.1"
    port: int = 8080
    # W, in seconds: at most one start per object per window.
    rate_window: float = 300.0
    # Jobs run at once in this process; 0 serves the API only.
    concurrency: int = 8
    # What a job of kind `default` does; `handlers` adds more kinds ("kind=handler,...").
    handler: str = "sleep"
    handlers: str | None = None
    sleep_seconds: float = 1.0
    # Connections this process keeps to PostgreSQL (the API and the workers share them).
    pool_size: int = 10
    # How long running jobs get to finish after SIGTERM before they are released.
    shutdown_grace: float = 30.0
    # Longest a worker sleeps without news; a safety net for a missed NOTIFY, not the wake-up.
    idle_poll: float = 5.0
    # Seconds a claim holds without renewal; a replica that stops renewing (killed, cut off)
    # loses its jobs to the others after this long. Renewed every lease / 3.
    lease: float = 30.0
    # Attempts per job (a first run and its retries); then FAILED with the last error.
    max_attempts: int = 3
    # First retry delay in seconds; doubles per attempt, with jitter.
    retry_backoff: float = 2.0
    # Seconds a handler may run before it is cancelled and the attempt fails; None: no limit.
    job_timeout: float | None = None
    # Finished jobs older than this many seconds are deleted (7 days).
    retention: float = 7 * 24 * 3600.0
    # When set, every route but /healthz and /readyz needs `Authorization: Bearer <token>`.
    # PACELINE_API_TOKEN is one `admin` token; PACELINE_TOKENS ("scope:token,...") adds
    # scoped ones. Both may be set; `scoped_tokens()` merges them.
    api_token: str | None = dataclasses.field(default=None, repr=False)
    tokens: str | None = dataclasses.field(default=None, repr=False)
    # How long a sign-in of the page lasts, in seconds (12 h); then the page asks again.
    session_seconds: float = 12 * 3600.0
    # What a request without `on_busy` gets when its object's window is busy:
    # queue (wait for the next slot), coalesce (join its pending job) or reject (429).
    on_busy: OnBusyName = "queue"
    # The `webhook` handler POSTs each job here (http or https), signed with the secret.
    webhook_url: str | None = None
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    # Seconds a webhook call may take in all (connect, send, answer) before the attempt fails.
    webhook_timeout: float = 10.0
    log_level: str = "INFO"
    # `text` for people, `json` (one object a line) for log collectors.
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.rate_window > 0:
            raise ConfigError("PACELINE_RATE_WINDOW must be a positive number of seconds")
        if self.concurrency < 0:
            raise ConfigError("PACELINE_CONCURRENCY must be 0 or more")
        if not 0 < self.port < 65536:
            raise ConfigError("PACELINE_PORT must be between 1 and 65535")
        if self.sleep_seconds < 0:
            raise ConfigError("PACELINE_SLEEP_SECONDS must be 0 or more")
        if self.pool_size < 2:
            raise ConfigError("PACELINE_POOL_SIZE must be at least 2")
        if self.shutdown_grace < 0:
            raise ConfigError("PACELINE_SHUTDOWN_GRACE must be 0 or more")
        if self.log_format not in ("text", "json"):
            raise ConfigError("PACELINE_LOG_FORMAT must be text or json")
        if not self.lease > 0:
            raise ConfigError("PACELINE_LEASE must be a positive number of seconds")
        if self.on_busy not in ON_BUSY_VALUES:
            *first, last = ON_BUSY_VALUES
            raise ConfigError(f"PACELINE_ON_BUSY must be {', '.join(first)} or {last}")
        if self.max_attempts < 1:
            raise ConfigError("PACELINE_MAX_ATTEMPTS must be at least 1")
        if self.retry_backoff < 0:
            raise ConfigError("PACELINE_RETRY_BACKOFF must be 0 or more")
        if self.job_timeout is not None and not self.job_timeout > 0:
            raise ConfigError("PACELINE_JOB_TIMEOUT must be a positive number of seconds")
        if not self.retention > 0:
            raise ConfigError("PACELINE_RETENTION must be a positive number of seconds")
        if self.api_token is not None and len(self.api_token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"PACELINE_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
        self.scoped_tokens()  # refuses a malformed PACELINE_TOKENS
        if not self.session_seconds > 0:
            raise ConfigError("PACELINE_SESSION_SECONDS must be a positive number of seconds")
        self.handler_names()  # refuses a malformed PACELINE_HANDLERS
        self._check_webhook()

    def scoped_tokens(self) -> dict[str, ScopeName]:
        """{token: scope} from PACELINE_TOKENS (`"submit:<t>,read:<t>,admin:<t>"`, a scope any
        number of times) and PACELINE_API_TOKEN (an `admin` token); empty: the service is open.

        Messages name a token by its position and scope, never by its text.
        """
        found: dict[str, ScopeName] = {}
        if self.api_token is not None:
            found[self.api_token] = "admin"
        entries = [entry.strip() for entry in (self.tokens or "").split(",")]
        for position, entry in enumerate((entry for entry in entries if entry), start=1):
            scope, colon, token = (part.strip() for part in entry.partition(":"))
            if not colon or scope not in SCOPE_VALUES:
                *first, last = SCOPE_VALUES
                raise ConfigError(
                    f"PACELINE_TOKENS: entry {position} is not scope:token with a scope of "
                    f'{", ".join(first)} or {last} (e.g. "submit:<token>,admin:<token>")'
                )
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    f"PACELINE_TOKENS: the {scope} token of entry {position} is {len(token)} "
                    f"characters; a token must be at least {MIN_TOKEN_LENGTH} (make one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            if found.get(token, scope) != scope:
                raise ConfigError(
                    f"PACELINE_TOKENS: the token of entry {position} ({scope}) is also given "
                    f"as {found[token]}; a token has one scope"
                )
            found[token] = scope
        return found

    def handler_names(self) -> dict[str, str]:
        """{kind: handler name}: `default` from PACELINE_HANDLER, the rest from
        PACELINE_HANDLERS (`"reindex=myapp.tasks:reindex,notify=webhook"`)."""
        names = {DEFAULT_KIND: self.handler}
        for entry in (self.handlers or "").split(","):
            if not entry.strip():
                continue
            kind, equals, handler = (part.strip() for part in entry.partition("="))
            if not equals or not handler:
                raise ConfigError(
                    f"PACELINE_HANDLERS: {entry.strip()!r} is not kind=handler "
                    '(e.g. "reindex=myapp.tasks:reindex,notify=webhook")'
                )
            if not re.fullmatch(KIND_PATTERN, kind):
                raise ConfigError(
                    f"PACELINE_HANDLERS: the kind {kind!r} is not 1-64 of a-z 0-9 _ . -"
                )
            if kind == DEFAULT_KIND:
                raise ConfigError(
                    "PACELINE_HANDLERS: the default kind's handler is PACELINE_HANDLER"
                )
            if kind in names:
                raise ConfigError(f"PACELINE_HANDLERS names the kind {kind!r} twice")
            names[kind] = handler
        return names

    def _check_webhook(self) -> None:
        if not self.webhook_url:
            if self.handler == "webhook":
                raise ConfigError("PACELINE_HANDLER=webhook needs PACELINE_WEBHOOK_URL")
            if "webhook" in self.handler_names().values():
                raise ConfigError(
                    "PACELINE_HANDLERS names webhook, which needs PACELINE_WEBHOOK_URL"
                )
        if self.webhook_url is not None:
            # The URL is not echoed: its path or query may carry a credential.
            try:
                url = urlsplit(self.webhook_url)
                valid = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
            except ValueError:  # a malformed host or port
                valid = False
            if not valid:
                raise ConfigError("PACELINE_WEBHOOK_URL must be an http:// or https:// URL")
        if not self.webhook_timeout > 0:
            raise ConfigError("PACELINE_WEBHOOK_TIMEOUT must be a positive number of seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `PACELINE_*` and `DATABASE_URL`; keyword overrides (flags) win unless None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = env_name(field.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, _READERS[field.name], raw)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    return "DATABASE_URL" if field == "database_url" else f"PACELINE_{field.upper()}"


# How each kind of field is read from its variable's text, keyed by the field's real type.
_READ_AS: dict[Any, Callable[[str], Any]] = {int: int, float: float, Path: Path, str: str}


def _reader(name: str, kind: Any) -> tuple[str, Callable[[str], Any]]:
    """(the type's name for messages, how to read it): `T | None` reads as T; a Literal of
    strings reads as text (its values are checked in Settings.__post_init__)."""
    if isinstance(kind, types.UnionType):
        (kind,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        kind = str
    if kind not in _READ_AS:
        raise TypeError(f"Settings.{name}: no reader for {kind!r}; add one to _READ_AS")
    return kind.__name__, _READ_AS[kind]


# Built once from the resolved annotations: a field of a type without a reader fails at import.
_READERS = {name: _reader(name, kind) for name, kind in typing.get_type_hints(Settings).items()}


def _parse(name: str, reader: tuple[str, Callable[[str], Any]], raw: str) -> Any:
    kind, read = reader
    try:
        return read(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}") from None
