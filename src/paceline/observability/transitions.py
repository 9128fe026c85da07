"""A log line for the transition the workers do not see: a job accepted by the API.

The workers log their own transitions (started, finished, retried, released) with the same
fields, so one job can be followed through the logs of every replica. A batch (a JSON array of
up to 1000 jobs) is one request and gets one line; its per-job lines are DEBUG: at INFO they
took half of a replica's CPU under batch load.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from paceline.queue.events import JobEvents
from paceline.queue.jobs import Job, isoformat, log_extra

log = logging.getLogger("paceline.queue.jobs")


class EnqueueLog(JobEvents):
    """Logs every job the API accepts, with job_id, kind, object_id and attempt as fields."""

    def enqueued(self, job: Job) -> None:
        log.info(
            "job %d (object %d) enqueued, slot %s",
            job.id,
            job.object_id,
            isoformat(job.run_at),
            extra=log_extra(job),
        )

    def enqueued_batch(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        first, last = jobs[0], jobs[-1]
        objects = len({job.object_id for job in jobs})
        # A paused key's jobs have no slot yet.
        planned = [job.run_at for job in jobs if job.run_at is not None]
        log.info(
            "%d job%s (%d object%s) enqueued in one batch, job %d to %d, slots %s to %s",
            len(jobs),
            "" if len(jobs) == 1 else "s",
            objects,
            "" if objects == 1 else "s",
            first.id,
            last.id,
            isoformat(min(planned, default=None)),
            isoformat(max(planned, default=None)),
            extra={"job_count": len(jobs), "first_job_id": first.id, "last_job_id": last.id},
        )
        if log.isEnabledFor(logging.DEBUG):
            for job in jobs:
                log.debug(
                    "job %d (object %d) enqueued, slot %s",
                    job.id,
                    job.object_id,
                    isoformat(job.run_at),
                    extra=log_extra(job),
                )
