"""AWS Batch: submitting a conversion job (the :class:`~heimdall.domain.submitter.JobSubmitter` of Lambda).

The job spec travels as one JSON environment variable (``HEIMDALL_JOB_SPEC``), which the Batch entry
point (``python -m heimdall_batch``) reads. The Batch job name is derived from the Heimdall job id, so
the job-state function can map Batch's state changes back to the export job.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from heimdall.adapters.aws import make_client
from heimdall.contracts.jobs import JobSpec
from heimdall.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_batch import BatchClient

SPEC_VARIABLE = "HEIMDALL_JOB_SPEC"
JOB_NAME_PREFIX = "heimdall-"
_JOB_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def batch_job_name(job_id: str) -> str:
    """The Batch job name for a Heimdall job id (Batch allows 128 letters, digits, - and _)."""
    return (JOB_NAME_PREFIX + _JOB_NAME_UNSAFE.sub("-", job_id))[:128]


def job_id_from_batch_name(name: str) -> str | None:
    """The Heimdall job id a Batch job name was made from, or None for a foreign job."""
    return name.removeprefix(JOB_NAME_PREFIX) if name.startswith(JOB_NAME_PREFIX) else None


class BatchJobSubmitter:
    """Submits conversion jobs to an AWS Batch queue with a job definition."""

    def __init__(self, job_queue: str, job_definition: str, client: BatchClient | None = None) -> None:
        self._queue = job_queue
        self._definition = job_definition
        self._client = client

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            self._client = make_client("batch")
        return self._client

    def submit(self, spec: JobSpec) -> str:
        """Submit the job; returns the Batch job id. Throttling/5xx are retried, then StorageError."""
        try:
            response = self.client.submit_job(
                jobName=batch_job_name(spec.job_id),
                jobQueue=self._queue,
                jobDefinition=self._definition,
                containerOverrides={
                    "environment": [{"name": SPEC_VARIABLE, "value": spec.model_dump_json()}]
                },
                parameters={"job_id": spec.job_id},
                tags={"heimdall:job_id": spec.job_id},
                propagateTags=True,
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            raise StorageError(f"AWS Batch refused the job {spec.job_id}: {code or exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"AWS Batch failed for the job {spec.job_id}: {exc}") from None
        return str(response["jobId"])

    def cancel(self, runner_job_id: str, reason: str) -> None:
        """TerminateJob: cancels a queued job, stops a running one. Batch's state event follows.

        Batch answers an id it does not know (finished long ago, purged) with success or a
        ClientException; both mean there is nothing left to stop.
        """
        try:
            self.client.terminate_job(jobId=runner_job_id, reason=reason[:1024] or "cancelled")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ClientException":
                return
            raise StorageError(f"AWS Batch refused to stop {runner_job_id}: {code or exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"AWS Batch failed to stop {runner_job_id}: {exc}") from None
