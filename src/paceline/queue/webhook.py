"""The `webhook` handler: POST each job, signed, to PACELINE_WEBHOOK_URL.

The body is the job as the API shows it (`Job.to_json()`, status PROCESSING, `attempts` = this
attempt). With PACELINE_WEBHOOK_SECRET set, `Paceline-Signature: t=<unix>,v1=<hex>` carries an
HMAC-SHA256 of `"<t>." + body` (the scheme of Stripe and Standard Webhooks), so a receiver can
tell that paceline sent exactly these bytes, recently; `verify_signature` checks it.

What the receiver answers decides what happens to the job:

- 2xx: SUCCESS. A JSON answer (up to 64 KiB) becomes the job's `result`; any other answer
  (not JSON, empty, too big) leaves `result` null, and the attempt still succeeds.
- 429 or 503 with Retry-After: RetryLater, so the job and its object's later slots move back.
- 3xx (redirects are not followed) and other 4xx: PermanentFailure, FAILED without retries.
- 5xx, 429/503 without Retry-After, no answer within PACELINE_WEBHOOK_TIMEOUT, a network error:
  WebhookError, retried with backoff up to PACELINE_MAX_ATTEMPTS.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import logging
import math
import re
import time
from datetime import UTC

import aiohttp
import orjson
from yarl import URL

from paceline import __version__
from paceline.config import Settings
from paceline.contract import MAX_PAYLOAD_BYTES
from paceline.queue.errors import PermanentFailure, RetryLater
from paceline.queue.jobs import Job

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Paceline-Signature"
# How far a signature's timestamp may be from the receiver's clock; bounds replays.
DEFAULT_TOLERANCE = 300.0
# Errors quote this much of a refusing receiver's answer: enough to say why, not a whole page.
_EXCERPT_CHARS = 200
_EXCERPT_BYTES = 4 * _EXCERPT_CHARS
# A Retry-After further out than a day is taken as a day: a typo must not park a job for years.
_MAX_RETRY_AFTER = 86400.0
_DELAY_SECONDS = re.compile(r"\d{1,12}(\.\d{1,6})?")
_TIMESTAMP = re.compile(r"\d{1,12}")
_USER_AGENT = f"paceline/{__version__}"


class WebhookError(Exception):
    """The receiver failed (5xx), was busy, or could not be reached: the job is retried."""


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The Paceline-Signature value for `body` sent at `timestamp` (UNIX seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    header: str,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> bool:
    """True if `header` (Paceline-Signature) signs exactly `body` with `secret`, and was made
    within `tolerance` seconds of `now` (default: this clock). Pass the raw request body."""
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, equals, value = part.strip().partition("=")
        if not equals:
            continue
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                return False
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value.encode())
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body).encode()
    # Several v1 values may come while a secret is being rotated: one match is enough.
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """The wait a Retry-After value asks for (delay-seconds or an HTTP-date), at most a day;
    None if there is none or it cannot be read."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:  # "-0000": UTC, origin unknown
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


class WebhookHandler:
    """Runs a job by POSTing it to a URL. Holds one HTTP session, opened at the first job
    (inside the running loop); `aclose()` closes it after the last."""

    def __init__(self, url: str, *, secret: str | None, timeout: float) -> None:
        self._url = URL(url)
        self._secret = secret
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        # Errors (shown by the API) name the receiver by its origin: a path or a query may
        # hold a credential, as in chat webhooks.
        self._target = str(self._url.origin())

    async def __call__(self, job: Job) -> object:
        """Deliver `job`; on 2xx returns the receiver's JSON answer (None if it gave none),
        otherwise raises what the worker should do."""
        body = orjson.dumps(job.to_json())
        try:
            async with self._client().post(
                self._url, data=body, headers=self._headers(job, body), allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return _json_answer(await _read_head(response, MAX_PAYLOAD_BYTES + 1))
                head = await _read_head(response, _EXCERPT_BYTES)
                raise self._refused(response, head)
        except TimeoutError:
            # Before ClientError: aiohttp's timeouts are both.
            raise WebhookError(
                f"{self._target} did not answer within PACELINE_WEBHOOK_TIMEOUT={self._timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            said = str(exc).replace(str(self._url), self._target)
            raise WebhookError(
                f"POST to {self._target} failed: {said or type(exc).__name__}"
            ) from None

    def _refused(self, response: aiohttp.ClientResponse, head: bytes) -> Exception:
        """What to raise for a refusing answer."""
        status = response.status
        said = f"{self._target} answered {status}{_excerpt(head)}"
        if status in (429, 503):
            delay = retry_after_seconds(response.headers.get("Retry-After"))
            if delay is not None:
                return RetryLater(delay, f"{said} (Retry-After: {delay:g}s)")
            return WebhookError(said)
        if 300 <= status < 400:
            return PermanentFailure(f"{said} (redirects to {_origin(response)} are not followed)")
        if 400 <= status < 500:
            return PermanentFailure(said)
        return WebhookError(said)

    def _headers(self, job: Job, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            "Paceline-Job-Id": str(job.id),
            "Paceline-Attempt": str(job.attempts),
            # The same for every attempt: a receiver that did the work but whose answer was
            # lost (a timeout) can tell the retry apart and answer 2xx without doing it twice.
            "Idempotency-Key": str(job.id),
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body, int(time.time()))
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session (the app calls this once its worker has stopped)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def webhook_handler(settings: Settings) -> WebhookHandler:
    """The handler PACELINE_HANDLER=webhook runs, from the PACELINE_WEBHOOK_* settings."""
    assert settings.webhook_url is not None  # Settings refuses the webhook handler without one
    if settings.webhook_secret is None:
        log.warning("PACELINE_WEBHOOK_SECRET is not set: webhook requests are not signed")
    return WebhookHandler(
        settings.webhook_url, secret=settings.webhook_secret, timeout=settings.webhook_timeout
    )


async def _read_head(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` bytes of the body; an error needs its start, not all of it."""
    head = b""
    while len(head) < limit:
        chunk = await response.content.read(limit - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _json_answer(body: bytes) -> object:
    """What a receiver answered, if it is JSON that fits a result; else None."""
    if not body or len(body) > MAX_PAYLOAD_BYTES:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _origin(response: aiohttp.ClientResponse) -> str:
    """Where a redirect points, without the path and query."""
    try:
        location = URL(response.headers.get("Location", ""))
    except ValueError:
        return "elsewhere"
    return str(location.origin()) if location.absolute else "elsewhere"


def _excerpt(head: bytes) -> str:
    text = " ".join(head.decode("utf-8", "replace").split())
    if not text:
        return ""
    if len(text) > _EXCERPT_CHARS or len(head) >= _EXCERPT_BYTES:
        text = text[:_EXCERPT_CHARS].rstrip() + "…"
    return f": {text}"
