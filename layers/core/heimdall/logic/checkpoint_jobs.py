"""Starting an export job from a checkpoint and its manifest, for S3 drops and the API alike.

:func:`start_export_job` is how every job starts — from checkpoint notifications
(:mod:`heimdall.logic.checkpoints`) and from the HTTP API (:mod:`heimdall.logic.export_jobs`): record
the job PENDING, submit it, mark it SUBMITTED, and announce ``Checkpoint Received`` and ``Export Job
Submitted``. :class:`CheckpointDeps` is what the checkpoint use cases need, this one included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from heimdall.contracts.jobs import JobSpec
from heimdall.contracts.manifest import Manifest
from heimdall.domain.claims import IdempotencyClaims
from heimdall.domain.records import ExportJob, JobStatus, utcnow
from heimdall.domain.registry import Registry
from heimdall.domain.storage import ObjectInfo, ObjectStore
from heimdall.domain.submitter import JobSubmitter
from heimdall.errors import ConflictError
from heimdall.events import CheckpointReceived, EventDetail, EventSink, ExportJobSubmitted, make_event
from heimdall.settings import BundleLimits, ResourceNames
from heimdall.types import ExportFormat


@dataclass(frozen=True)
class CheckpointDeps:
    registry: Registry
    #: The idempotency claims (the registry's table in AWS: the same object as ``registry``).
    claims: IdempotencyClaims
    store: ObjectStore
    events: EventSink
    jobs: JobSubmitter
    names: ResourceNames
    limits: BundleLimits
    now: Callable[[], datetime] = utcnow


@dataclass(frozen=True)
class JobRequest:
    """What starting an export job needs: the job's id and owner, the checkpoint and its manifest."""

    job_id: str
    owner: str
    bucket: str
    checkpoint_key: str
    #: The checkpoint's HEAD (its revision names the ``Checkpoint Received`` event).
    checkpoint: ObjectInfo
    manifest: Manifest
    #: The sidecar or explicit manifest's key in ``bucket``; None when the checkpoint embeds it.
    manifest_key: str | None
    #: Formats to build instead of the manifest's.
    formats: list[ExportFormat] | None = None


def start_export_job(deps: CheckpointDeps, request: JobRequest) -> tuple[ExportJob, bool]:
    """Record the job (PENDING), submit it, mark it SUBMITTED and announce it — for S3 and the API alike.

    Returns the job and whether this call started it. A job id that exists already is that job
    (a retry, an idempotent repeat): it is returned as it is, unless it is still PENDING (its
    submission failed), in which case it is submitted now.
    """
    manifest, bucket, checkpoint = request.manifest, request.bucket, request.checkpoint
    if request.formats:  # validated as the manifest's own are (FP32 ONNX first: the rest derive from it)
        manifest = Manifest.model_validate({**manifest.model_dump(), "formats": request.formats})
    formats = list(manifest.formats)
    artifacts = deps.names.artifacts_bucket
    output_prefix = f"s3://{artifacts}/exports/{request.job_id}/"
    job = ExportJob(
        job_id=request.job_id,
        owner=request.owner,
        model_name=manifest.model_name,
        version=manifest.version,
        checkpoint_bucket=bucket,
        checkpoint_key=request.checkpoint_key,
        manifest_key=request.manifest_key,
        formats=formats,
        output_prefix=output_prefix,
        created_at=deps.now(),
        updated_at=deps.now(),
    )
    job, to_submit = record_export_job(deps, job)
    if not to_submit:
        return job, False
    received = CheckpointReceived(
        idempotency_key=CheckpointReceived.key_for(bucket, request.checkpoint_key, checkpoint.revision),
        occurred_at=deps.now(),
        owner=request.owner,
        bucket=bucket,
        key=request.checkpoint_key,
        version_id=checkpoint.version_id,
        etag=checkpoint.etag or "unknown",
        size_bytes=checkpoint.size,
        manifest_key=request.manifest_key,
        model_name=manifest.model_name,
        version=manifest.version,
        architecture=manifest.architecture,
    )
    spec = JobSpec(
        job_id=job.job_id,
        checkpoint_uri=f"s3://{bucket}/{request.checkpoint_key}",
        manifest_uri=f"s3://{bucket}/{request.manifest_key}" if request.manifest_key else None,
        output_uri=output_prefix,
        timing_cache_uri=f"s3://{artifacts}/timing-cache/",
        formats=list(job.formats),
    )
    return submit_export_job(deps, job, spec, announce=[received]), True


def record_export_job(deps: CheckpointDeps, job: ExportJob) -> tuple[ExportJob, bool]:
    """Record a new PENDING job; a job id that exists already is that job (a retry, a repeat).

    Returns the stored job and whether it still has to be submitted (new, or PENDING because an
    earlier submission failed).
    """
    try:
        deps.registry.create_export_job(job)
    except ConflictError:
        job = deps.registry.get_export_job(job.owner, job.job_id)
        return job, job.status is JobStatus.PENDING
    return job, True


def submit_export_job(
    deps: CheckpointDeps, job: ExportJob, spec: JobSpec, *, announce: Sequence[EventDetail] = ()
) -> ExportJob:
    """Submit a recorded PENDING job, mark it SUBMITTED, and publish ``announce`` then
    ``Export Job Submitted``. Returns the job as stored."""
    batch_job_id = deps.jobs.submit(spec)
    submitted_job = deps.registry.transition_export_job(
        job.job_id, JobStatus.SUBMITTED, updates={"batch_job_id": batch_job_id}
    )
    submitted = ExportJobSubmitted(
        idempotency_key=ExportJobSubmitted.key_for(job.job_id),
        occurred_at=deps.now(),
        owner=job.owner,
        job_id=job.job_id,
        model_name=job.model_name,
        version=job.version,
        batch_job_id=batch_job_id,
        checkpoint_uri=spec.checkpoint_uri,
        formats=[f.value for f in job.formats],
    )
    deps.events.publish([*(make_event(detail) for detail in announce), make_event(submitted)])
    # None: a cancel (or Batch's own event) moved it on meanwhile; the stored job is what is true.
    return submitted_job or deps.registry.get_export_job(job.owner, job.job_id)


__all__ = ["CheckpointDeps", "JobRequest", "record_export_job", "start_export_job", "submit_export_job"]
