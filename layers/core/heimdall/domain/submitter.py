"""The job submitter: the port through which logic starts and stops conversion jobs.

``heimdall.adapters.batch.BatchJobSubmitter`` submits them to AWS Batch; the local stack runs them as
subprocesses, and unit tests use doubles that remember what they were asked.
"""

from __future__ import annotations

from typing import Protocol

from heimdall.contracts.jobs import JobSpec

__all__ = ["JobSubmitter"]


class JobSubmitter(Protocol):
    """Starts a conversion job somewhere (AWS Batch, or a local subprocess runner)."""

    def submit(self, spec: JobSpec) -> str:
        """Start the job; returns the runner's own job id."""
        ...

    def cancel(self, runner_job_id: str, reason: str) -> None:
        """Stop the job (queued or running). A job the runner no longer knows is not an error."""
        ...
