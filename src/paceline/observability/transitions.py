"""A log line for the transition the workers do not see: a job accepted by the API.

The workers log their own transitions (started, finished, retried, released) with the same
fields, so one job can be followed through the logs of every replica.
"""

from __future__ import annotations

import logging

from paceline.queue.events import JobEvents
from paceline.queue.jobs import Job, isoformat

log = logging.getLogger("paceline.queue.jobs")


class EnqueueLog(JobEvents):
    """Logs every job the API accepts, with job_id, object_id and attempt as fields."""

    def enqueued(self, job: Job) -> None:
        log.info(
            "job %d (object %d) enqueued, slot %s",
            job.id,
            job.object_id,
            isoformat(job.run_at),
            extra={"job_id": job.id, "object_id": job.object_id, "attempt": job.attempts},
        )
