"""What the pages do: cancel and retry jobs, retry every job a filter shows, and change,
drop, pause or resume a limit, each from an HTML form POST.

Every handler here is a `forms.page_action`: it runs only for a form of this site carrying
this browser's form token (web/forms.py). One job is acted on at once; anything that touches
more jobs is shown first (`step=preview`: a dry run, on a confirmation page whose Cancel
changes nothing) and done only when confirmed (`step=apply`). After acting, the page
redirects (303) back and says what was done.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp_jinja2
import msgspec
from aiohttp import web
from yarl import URL

from paceline import contract
from paceline.contract import DEFAULT_KIND, MAX_LIMIT_CHANGES_SHOWN
from paceline.queue import jobs, limits, rerun
from paceline.queue.jobs import Status
from paceline.queue.limits import LimitError, LimitFields, Replanned
from paceline.queue.planning import cancel_and_compact
from paceline.web.forms import Flash, Form, back_url, done, page_action
from paceline.web.keys import POOL
from paceline.web.limits import bounded_integer, window_value
from paceline.web.pages import common_context, utc
from paceline.web.problems import Problem, invalid
from paceline.web.validation import int_param, kind_value, parse_job_id

routes = web.RouteTableDef()

_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_LIMIT_ACTIONS = ("set", "drop", "pause", "resume")
# Form fields that are not what the action is about.
_FORM_ONLY = frozenset({"csrf_token", "back", "step"})


class _Unusable(Exception):
    """A form whose values cannot be acted on; its text says why (nothing was done)."""


@routes.post("/job/{job_id}/cancel", name="page_cancel_job")
@page_action
async def cancel_job(request: web.Request, form: Form) -> web.StreamResponse:
    """Cancel one pending job; the jobs behind it in its key move up."""
    job_id = parse_job_id(request.match_info["job_id"])
    back = back_url(form, _job_url(request, job_id))
    pool = request.app[POOL]
    async with pool.acquire() as conn, conn.transaction():
        cancelled = await cancel_and_compact(conn, job_id)
    if cancelled is not None:
        raise done(back, Flash(f"Job {job_id} cancelled; the jobs behind it moved up."))
    current = await jobs.get_job(pool, job_id)
    if current is None:
        raise done(back, Flash(f"There is no job {job_id}; nothing was done.", failed=True))
    raise done(
        back,
        Flash(
            f"Job {job_id} is {current.status.value}; only a PENDING job can be cancelled. "
            "Nothing was done.",
            failed=True,
        ),
    )


@routes.post("/job/{job_id}/retry", name="page_retry_job")
@page_action
async def retry_job(request: web.Request, form: Form) -> web.StreamResponse:
    """Run one FAILED or CANCELLED job again, in its key's next free slot."""
    job_id = parse_job_id(request.match_info["job_id"])
    back = back_url(form, _job_url(request, job_id))
    try:
        job = await rerun.retry_job(request.app[POOL], job_id)
    except rerun.JobNotFound:
        raise done(
            back, Flash(f"There is no job {job_id}; nothing was done.", failed=True)
        ) from None
    except rerun.JobNotRetryable as refused:
        raise done(
            back,
            Flash(
                f"Job {job_id} is {refused.status.value}; only a FAILED or CANCELLED job can be "
                "retried. Nothing was done.",
                failed=True,
            ),
        ) from None
    slot = (
        "waits for the resume (its object is paused)"
        if job.run_at is None
        else (f"next slot {_clock(job.run_at)}")
    )
    raise done(back, Flash(f"Job {job_id} retried: {slot}."))


@routes.post("/retry-shown", name="page_retry_jobs")
@page_action
async def retry_jobs(request: web.Request, form: Form) -> web.StreamResponse:
    """Retry every job the job list's filter shows (FAILED or CANCELLED): previewed first."""
    back = back_url(form, URL(str(request.app.router["index"].url_for())))
    try:
        status, kind, object_id, payload = _retry_filter(form)
    except _Unusable as unusable:
        raise done(back, Flash(str(unusable), failed=True)) from None
    apply = form.get("step") == "apply"

    async def run(dry_run: bool) -> rerun.RetrySummary:
        return await rerun.retry_jobs(
            request.app[POOL],
            status=status,
            kind=kind,
            object_id=object_id,
            payload=payload,
            dry_run=dry_run,
        )

    which = _filter_words(status, kind, object_id, payload)
    summary = await run(dry_run=not apply)
    if summary.retried == 0:
        raise done(back, Flash(f"No {which} to retry; nothing was done.", failed=True))
    slots = _slot_range(summary.first_run_at, summary.last_run_at)
    count = _jobs(summary.retried)
    if apply:
        raise done(back, Flash(f"{count} retried ({which}): {slots}."))
    return await _confirm(
        request,
        form,
        heading=f"retry {count}",
        summary=f"{count} ({which}) will run again, each in its object's next free slot: "
        f"{slots}. Every limit still holds.",
        apply_label=f"Retry {count}",
        back=back,
    )


@routes.post("/limits-view/change", name="page_change_limit")
@page_action
async def change_limit(request: web.Request, form: Form) -> web.StreamResponse:
    """Set, drop, pause or resume a kind's limit or an object's: the dry run first (which
    waiting jobs move), applied once confirmed."""
    back = back_url(form, URL(str(request.app.router["limits_page"].url_for())))
    try:
        change = _limit_change(form)
    except _Unusable as unusable:
        raise done(back, Flash(str(unusable), failed=True)) from None
    apply = form.get("step") == "apply"
    try:
        replanned = await change.run(request, dry_run=not apply)
    except LimitError as refused:
        raise done(back, Flash(f"{refused} Nothing was done.", failed=True)) from None
    if replanned is None:
        raise done(
            back,
            Flash(
                f"{change.subject} has no limit of its own to drop; nothing was done.", failed=True
            ),
        )
    moved = len(replanned.changes)
    if apply:
        raise done(back, Flash(f"{change.done_text(replanned)}; {_jobs(moved)} moved."))
    shown = replanned.changes[:MAX_LIMIT_CHANGES_SHOWN]
    if moved == 0:
        moves = "No waiting job moves."
    else:
        moves = "This job moves:" if moved == 1 else f"These {moved:,} jobs move:"
        if moved > len(shown):
            moves = f"{moves[:-1]} (the first {len(shown):,} are listed):"
    return await _confirm(
        request,
        form,
        heading=change.heading,
        summary=f"{change.preview_text(replanned)}. {moves}",
        apply_label=change.apply_label,
        back=back,
        changes=shown,
        changes_caption="Each waiting job's slot, before and after",
    )


@dataclasses.dataclass(frozen=True)
class _LimitChange:
    action: str
    kind: str
    object_id: int | None
    fields: LimitFields

    @property
    def subject(self) -> str:
        if self.object_id is None:
            return f"Kind {self.kind}"
        return f"Object {self.object_id} of kind {self.kind}"

    @property
    def heading(self) -> str:
        what = self.subject[0].lower() + self.subject[1:]
        return {
            "set": f"change the limit of {what}",
            "drop": f"drop the own limit of {what}",
            "pause": f"pause {what}",
            "resume": f"resume {what}",
        }[self.action]

    @property
    def apply_label(self) -> str:
        return {
            "set": "Apply the limit",
            "drop": "Drop the limit",
            "pause": "Pause",
            "resume": "Resume",
        }[self.action]

    def run(self, request: web.Request, *, dry_run: bool) -> Awaitable[Replanned | None]:
        pool = request.app[POOL]
        call: Callable[..., Awaitable[Replanned | None]]
        if self.action == "set":
            return limits.set_limit(pool, self.kind, self.object_id, self.fields, dry_run=dry_run)
        call = {"drop": limits.drop_limit, "pause": limits.pause, "resume": limits.resume}[
            self.action
        ]
        return call(pool, self.kind, self.object_id, dry_run=dry_run)

    def preview_text(self, replanned: Replanned) -> str:
        return f"{self.subject} {self._verb(future=True)}: {_limit_words(replanned)}"

    def done_text(self, replanned: Replanned) -> str:
        return f"{self.subject} {self._verb(future=False)}: {_limit_words(replanned)}"

    def _verb(self, *, future: bool) -> str:
        words = {
            "set": ("would get this limit", "limit set"),
            "drop": ("would inherit again", "own limit dropped, it inherits again"),
            "pause": ("would be paused", "paused"),
            "resume": ("would be resumed", "resumed"),
        }[self.action]
        return words[0] if future else words[1]


def _limit_words(replanned: Replanned) -> str:
    limit = replanned.limit.effective
    words = (
        f"{limit.per_window} start{'' if limit.per_window == 1 else 's'} per {limit.window:g} s, "
        f"{limit.max_running} running at once"
    )
    return words + (", paused" if limit.paused else "")


def _limit_change(form: Form) -> _LimitChange:
    action = str(form.get("action", ""))
    if action not in _LIMIT_ACTIONS:
        raise _Unusable(f"Unknown action {action!r}; nothing was done.")
    try:
        kind = kind_value(str(form.get("kind", "")), status=400)
        object_id = _optional_int(form, "object_id", contract.INT64_MIN, contract.INT64_MAX)
        fields = LimitFields()
        if action == "set":
            numbers = {name: _number(str(form.get(name, ""))) for name in ("limit", "max_running")}
            fields = LimitFields(
                window_value(_number(str(form.get("window", "")))),
                bounded_integer(numbers, "limit", contract.MAX_PER_WINDOW),
                bounded_integer(numbers, "max_running", contract.MAX_RUNNING_LIMIT),
            )
    except Problem as problem:
        raise _Unusable(f"{problem.detail} Nothing was done.") from None
    if (
        action == "set"
        and fields == LimitFields()
        and not (object_id is None and kind == DEFAULT_KIND)
    ):
        raise _Unusable("Give at least one number (window, starts per window or running at once).")
    return _LimitChange(action, kind, object_id, fields)


def _retry_filter(form: Form) -> tuple[Status, str | None, int | None, dict[str, Any] | None]:
    raw_status = str(form.get("status", "")).upper()
    if raw_status not in rerun.RETRYABLE:
        raise _Unusable(
            "Only FAILED or CANCELLED jobs can be retried: filter the list by one of those "
            "statuses first. Nothing was done."
        )
    try:
        kind = str(form["kind"]) if form.get("kind") else None
        if kind is not None:
            kind = kind_value(kind, status=400)
        object_id = _optional_int(form, "object_id", contract.INT64_MIN, contract.INT64_MAX)
    except Problem as problem:
        raise _Unusable(f"{problem.detail} Nothing was done.") from None
    payload = None
    text = str(form.get("payload", "")).strip()
    if text:
        try:
            payload = msgspec.json.decode(text)
        except msgspec.DecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise _Unusable(
                'The payload filter must be a JSON object, such as {"customer": 42}. Nothing was '
                "done."
            )
    return Status(raw_status), kind, object_id, payload


def _filter_words(
    status: Status, kind: str | None, object_id: int | None, payload: dict[str, Any] | None
) -> str:
    words = [f"{status.value} jobs"]
    if kind is not None:
        words.append(f"of kind {kind}")
    if object_id is not None:
        words.append(f"of object {object_id}")
    if payload is not None:
        words.append(f"whose payload contains {msgspec.json.encode(payload).decode()}")
    return " ".join(words)


def _optional_int(form: Form, name: str, low: int, high: int) -> int | None:
    if not str(form.get(name, "")).strip():
        return None
    return int_param({name: str(form[name])}, name, low, high)


def _number(text: str) -> int | Decimal | None:
    """A number typed into a form, as the JSON API would read it; None if empty."""
    text = text.strip()
    if not text:
        return None
    if not _NUMBER.fullmatch(text):
        raise invalid(f"{text!r} is not a number.", status=400)
    digits = text.removeprefix("-")
    return int(text) if digits.isdigit() else Decimal(text)


async def _confirm(
    request: web.Request,
    form: Form,
    *,
    heading: str,
    summary: str,
    apply_label: str,
    back: URL,
    changes: list[Any] | None = None,
    changes_caption: str = "",
) -> web.Response:
    """The confirmation page: what would happen, the form that does it (the same fields,
    `step=apply`), and a Cancel link back that changes nothing."""
    fields = [(name, str(value)) for name, value in form.items() if name not in _FORM_ONLY]
    return aiohttp_jinja2.render_template(
        "confirm.html",
        request,
        {
            **await common_context(request),
            "heading": heading,
            "summary": summary,
            "changes": changes or [],
            "changes_caption": changes_caption,
            "apply_url": request.path,
            "apply_label": apply_label,
            "fields": [*fields, ("step", "apply")],
            "back": str(back),
            "cancel_url": str(back),
        },
    )


def _job_url(request: web.Request, job_id: int) -> URL:
    return request.app.router["job_page"].url_for(job_id=str(job_id))


def _jobs(count: int) -> str:
    return f"{count:,} job{'' if count == 1 else 's'}"


def _clock(moment: datetime) -> str:
    """A slot in a flash message: the time of day in UTC (the page shows the date too)."""
    return utc(moment).split(" ", 1)[1]


def _slot_range(first: datetime | None, last: datetime | None) -> str:
    if first is None or last is None:
        return "they wait for the resume (their objects are paused)"
    if first == last:
        return f"slot {_clock(first)}"
    return f"slots from {_clock(first)} to {_clock(last)}"
