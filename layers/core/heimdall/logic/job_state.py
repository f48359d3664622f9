"""Use case: AWS Batch reported a job state change; move the export job along its state machine.

RUNNING → ``Export Job Started``; SUCCEEDED → ``result.json`` is read from the job's output prefix and
summarised into the record, ``Export Job Succeeded`` (the job's bundle is then indexed through the bundle
path, by its own S3 notification); FAILED → the reason from ``result.json`` when the job wrote one,
else Batch's status reason, and ``Export Job Failed``. Transitions are conditional writes: a duplicate or
late event (RUNNING after SUCCEEDED) changes nothing and emits nothing. Batch's intermediate states
(SUBMITTED, PENDING, RUNNABLE, STARTING) are ignored. The event is parsed by
:func:`heimdall.triggers.batch.parse_batch_state_change`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from heimdall.adapters.batch import job_id_from_batch_name
from heimdall.adapters.s3 import parse_s3_uri
from heimdall.contracts.jobs import PACKAGE_FILE_NAME, RESULT_FILE_NAME, ConversionResult
from heimdall.domain.records import ExportJob, JobResultSummary, JobStatus, utcnow
from heimdall.domain.registry import Registry
from heimdall.domain.storage import ObjectStore
from heimdall.errors import ObjectNotFound, RecordNotFound, TooLarge
from heimdall.events import (
    EventDetail,
    EventSink,
    ExportJobFailed,
    ExportJobStarted,
    ExportJobSucceeded,
    FormatSummary,
    make_event,
)
from heimdall.triggers.batch import BatchJobDetail, parse_batch_state_change

MAX_RESULT_BYTES = 4 * 1024 * 1024
_STATES = {"RUNNING": JobStatus.RUNNING, "SUCCEEDED": JobStatus.SUCCEEDED, "FAILED": JobStatus.FAILED}


@dataclass(frozen=True)
class JobStateDeps:
    registry: Registry
    store: ObjectStore
    events: EventSink
    now: Callable[[], datetime] = utcnow


@dataclass(frozen=True)
class JobStateOutcome:
    status: Literal["applied", "ignored", "foreign"]
    job_id: str | None = None
    state: JobStatus | None = None


def handle_batch_state_change(event: Mapping[str, Any], deps: JobStateDeps) -> JobStateOutcome:
    """Apply one "Batch Job State Change" event (as EventBridge delivers it)."""
    detail = parse_batch_state_change(event)
    if detail is None:
        return JobStateOutcome(status="foreign")
    job_id = detail.parameters.get("job_id") or job_id_from_batch_name(detail.job_name)
    target = _STATES.get(detail.status)
    if not job_id:
        return JobStateOutcome(status="foreign")
    if target is None:
        return JobStateOutcome(status="ignored", job_id=job_id)
    try:
        job = deps.registry.get_export_job_any_owner(str(job_id))
    except RecordNotFound:
        return JobStateOutcome(status="foreign", job_id=str(job_id))
    batch_job_id = detail.job_id or job.batch_job_id or ""
    if target is JobStatus.RUNNING:
        updated = deps.registry.transition_export_job(
            job.job_id, target, updates={"attempts": job.attempts + 1}
        )
        if updated is not None:
            deps.events.publish(
                [
                    make_event(
                        ExportJobStarted(
                            **_job_fields(ExportJobStarted, job, deps),
                            batch_job_id=batch_job_id or "unknown",
                        )
                    )
                ]
            )
    elif target is JobStatus.SUCCEEDED:
        updated = _succeeded(job, batch_job_id, deps)
    else:
        updated = _failed(job, detail, batch_job_id, deps)
    return JobStateOutcome(
        status="applied" if updated is not None else "ignored", job_id=job.job_id, state=target
    )


def _job_fields(detail: type[EventDetail], job: ExportJob, deps: JobStateDeps) -> dict[str, Any]:
    """The fields every export job event carries, keyed on the (deterministic) job id."""
    return {
        "idempotency_key": detail.key_for(job.job_id),
        "occurred_at": deps.now(),
        "owner": job.owner,
        "job_id": job.job_id,
        "model_name": job.model_name,
        "version": job.version,
    }


def _read_result(job: ExportJob, deps: JobStateDeps) -> ConversionResult | None:
    if not job.output_prefix:
        return None
    try:
        data = deps.store.get_bytes(job.output_prefix + RESULT_FILE_NAME, max_bytes=MAX_RESULT_BYTES)
        return ConversionResult.model_validate_json(data)
    except (ObjectNotFound, TooLarge, ValidationError):
        return None


def _succeeded(job: ExportJob, batch_job_id: str, deps: JobStateDeps) -> ExportJob | None:
    result = _read_result(job, deps)
    if result is None or result.status != "SUCCEEDED":
        code = result.error_code if result else "RESULT_MISSING"
        message = (result.error_message if result else None) or "the job ended without a readable result.json"
        return _fail(job, batch_job_id, deps, code=code or "CONVERSION_FAILED", message=message, exit_code=0)
    updated = deps.registry.transition_export_job(
        job.job_id,
        JobStatus.SUCCEEDED,
        updates={"result": JobResultSummary.from_result(result), "exit_code": 0},
    )
    if updated is not None:
        bucket, prefix = parse_s3_uri(job.output_prefix or "")
        deps.events.publish(
            [
                make_event(
                    ExportJobSucceeded(
                        **_job_fields(ExportJobSucceeded, job, deps),
                        batch_job_id=batch_job_id or "unknown",
                        bucket=bucket,
                        output_prefix=prefix,
                        bundle_key=prefix + result.bundle_file if result.bundle_file else None,
                        package_key=prefix + PACKAGE_FILE_NAME if result.package_file else None,
                        formats=[
                            FormatSummary(format=o.format.value, status=o.status.value, reason=o.reason)
                            for o in result.formats
                        ],
                    )
                )
            ]
        )
    return updated


def _failed(
    job: ExportJob, detail: BatchJobDetail, batch_job_id: str, deps: JobStateDeps
) -> ExportJob | None:
    result = _read_result(job, deps)
    exit_code = detail.container.exit_code
    if result is not None and result.status == "FAILED":
        code, message = result.error_code or "CONVERSION_FAILED", result.error_message or "the job failed"
        exit_code = result.exit_code
    else:
        code = "BATCH_JOB_FAILED"
        message = detail.status_reason or "AWS Batch reported the job as failed"
    return _fail(job, batch_job_id, deps, code=code, message=message, exit_code=exit_code)


def _fail(
    job: ExportJob, batch_job_id: str, deps: JobStateDeps, *, code: str, message: str, exit_code: int | None
) -> ExportJob | None:
    updated = deps.registry.transition_export_job(
        job.job_id, JobStatus.FAILED, updates={"reason": f"{code}: {message}"[:1000], "exit_code": exit_code}
    )
    if updated is not None:
        deps.events.publish(
            [
                make_event(
                    ExportJobFailed(
                        **_job_fields(ExportJobFailed, job, deps),
                        batch_job_id=batch_job_id or None,
                        code=code,
                        message=message[:1000],
                        exit_code=exit_code,
                    )
                )
            ]
        )
    return updated
