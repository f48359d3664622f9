"""Use case: a checkpoint or manifest arrived under ``checkpoints/{model_name}/{version}/``.

Whichever of checkpoint and manifest arrives second starts the export job; a ``.safetensors`` checkpoint
whose header metadata embeds the manifest (key ``heimdall``) starts it alone. The ingest function never
loads torch, so a ``.pt``/``.pth`` checkpoint's embedded manifest (inside its pickle) cannot be read
here: those need the sidecar ``heimdall.json``.

A half that arrives alone (a manifest without its checkpoint, or the reverse) is recorded as AWAITING
(:class:`~heimdall.domain.records.PendingUpload`, one round per prefix); the half that completes the pair
settles it PAIRED before the job starts, and :mod:`heimdall.logic.uploads`'s sweep rejects a round
still AWAITING after the timeout (``INCOMPLETE_UPLOAD``). The registry makes the pairing and the
rejection exclusive: a half that was rejected never starts a job.

Both notifications of a pair may see both objects (they often arrive together), so the job is keyed by
the pair — (checkpoint key and revision, manifest key and revision) — and claimed once: one job, one
``Export Job Submitted``, whatever the delivery order or duplication. An invalid manifest or an
unsupported file is quarantined with a reason and announced with ``Checkpoint Rejected``.

:func:`start_export_job` is how every job starts — from these notifications and from the HTTP API
(:mod:`heimdall.logic.export_jobs`) alike; :func:`load_manifest` finds a checkpoint's manifest for the
API (an explicit key, else the sidecar, else the embedded one).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from heimdall.contracts.jobs import JobSpec
from heimdall.contracts.manifest import (
    EMBEDDED_MANIFEST_KEY,
    MANIFEST_FILE_NAME,
    Manifest,
    parse_manifest,
    read_manifest,
)
from heimdall.domain.claims import IdempotencyClaims
from heimdall.domain.records import ExportJob, JobStatus, PendingUpload, UploadHalf, UploadStatus, utcnow
from heimdall.domain.registry import Registry
from heimdall.domain.storage import ObjectInfo, ObjectStore
from heimdall.domain.submitter import JobSubmitter
from heimdall.domain.uploads import half_ref, upload_id_for
from heimdall.errors import BundleError, ConflictError, InvalidManifest
from heimdall.events import (
    CheckpointReceived,
    CheckpointRejected,
    EventDetail,
    EventSink,
    ExportJobSubmitted,
    idempotency_key_for,
    make_event,
)
from heimdall.logic.bundles import BundleDeps, quarantine
from heimdall.logic.once import run_once
from heimdall.settings import BundleLimits, ResourceNames
from heimdall.triggers.keys import ClassifiedKey, KeyKind, classify_ingest_key
from heimdall.triggers.s3 import ObjectCreated
from heimdall.types import ExportFormat

MAX_MANIFEST_BYTES = 1024 * 1024
#: A safetensors header larger than this is not read by the ingest function (the job still can).
MAX_HEADER_BYTES = 1024 * 1024
_JOB_NAMESPACE = uuid.UUID("9a5b8f0e-2d7c-4c61-8f3e-5b1d6c0a7e21")


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
class CheckpointOutcome:
    status: Literal["submitted", "waiting", "rejected", "duplicate"]
    job_id: str | None = None
    reason: str | None = None
    #: The half pair's round (:class:`~heimdall.domain.records.PendingUpload`) a waiting half is recorded in.
    upload_id: str | None = None


def handle_checkpoint_object(
    obj: ObjectCreated, classified: ClassifiedKey, deps: CheckpointDeps, *, owner: str
) -> CheckpointOutcome:
    """React to a checkpoint or manifest upload (``classified`` from :func:`classify_ingest_key`)."""
    claim = idempotency_key_for("checkpoint-object", obj.bucket, obj.key, obj.revision)
    return run_once(
        deps.claims,
        claim,
        lambda: _handle(obj, classified, deps, owner=owner),
        duplicate=CheckpointOutcome(status="duplicate"),
    )


def reject_upload(
    obj: ObjectCreated,
    deps: CheckpointDeps,
    *,
    owner: str,
    code: str,
    message: str,
    model_name: str | None = None,
    version: str | None = None,
) -> CheckpointOutcome:
    """Quarantine an upload under ``checkpoints/`` and announce ``Checkpoint Rejected``."""
    key = quarantine_upload(obj, deps, code=code, message=message)
    announce_rejection(
        obj, deps, owner=owner, code=code, message=message, model_name=model_name, version=version, kept=key
    )
    return CheckpointOutcome(status="rejected", reason=f"{code}: {message}")


def quarantine_upload(obj: ObjectCreated, deps: CheckpointDeps, *, code: str, message: str) -> str:
    """Copy a rejected upload to quarantine with its ``reason.json``; returns the copy's key.

    ObjectNotFound when it no longer exists. The original stays where it was dropped.
    """
    return quarantine(obj, _bundle_deps(deps), code=code, message=message)


def announce_rejection(
    obj: ObjectCreated,
    deps: CheckpointDeps,
    *,
    owner: str,
    code: str,
    message: str,
    model_name: str | None,
    version: str | None,
    kept: str | None,
) -> None:
    """Publish ``Checkpoint Rejected`` for ``obj``; ``kept`` is its quarantine key (None: nothing kept)."""
    detail = CheckpointRejected(
        idempotency_key=CheckpointRejected.key_for(obj.bucket, obj.key, obj.revision),
        occurred_at=deps.now(),
        owner=owner,
        bucket=obj.bucket,
        key=obj.key,
        version_id=obj.version_id,
        etag=obj.etag or "unknown",
        model_name=model_name,
        version=version,
        code=code,
        message=message[:1000],
        quarantine_bucket=deps.names.artifacts_bucket if kept is not None else None,
        quarantine_key=kept,
    )
    deps.events.publish([make_event(detail)])


def _handle(
    obj: ObjectCreated, classified: ClassifiedKey, deps: CheckpointDeps, *, owner: str
) -> CheckpointOutcome:
    prefix = classified.prefix
    if prefix is None or classified.kind not in (KeyKind.CHECKPOINT, KeyKind.MANIFEST):
        raise ValueError(f"not a checkpoint or manifest key: {obj.key}")
    bucket = obj.bucket
    manifest_key = prefix + MANIFEST_FILE_NAME
    keys = deps.store.list_keys(f"s3://{bucket}/{prefix}")
    checkpoints = sorted(k for k in keys if classify_ingest_key(k).kind is KeyKind.CHECKPOINT)

    manifest: Manifest | None = None
    if manifest_key in keys:
        try:
            manifest = read_manifest(
                deps.store.get_bytes(f"s3://{bucket}/{manifest_key}", max_bytes=MAX_MANIFEST_BYTES),
                source=manifest_key,
            )
        except (InvalidManifest, BundleError) as exc:
            if classified.kind is KeyKind.MANIFEST:
                return reject_upload(
                    obj,
                    deps,
                    owner=owner,
                    code=InvalidManifest.code,
                    message=exc.message,
                    model_name=classified.model_name,
                    version=classified.version,
                )
            return _await_other_half(
                obj, classified, deps, owner, keys=keys, reason="the manifest beside it is invalid"
            )
    if manifest is not None and (manifest.model_name, manifest.version) != (
        classified.model_name,
        classified.version,
    ):
        message = (
            f"the manifest names {manifest.model_name} {manifest.version} but lies under {prefix}; "
            "the folder must match the manifest"
        )
        if classified.kind is KeyKind.MANIFEST:
            return reject_upload(
                obj,
                deps,
                owner=owner,
                code=InvalidManifest.code,
                message=message,
                model_name=classified.model_name,
                version=classified.version,
            )
        return _await_other_half(obj, classified, deps, owner, keys=keys, reason=message)
    if not checkpoints:
        return _await_other_half(obj, classified, deps, owner, keys=keys, reason="no checkpoint yet")
    checkpoint_key = obj.key if classified.kind is KeyKind.CHECKPOINT else checkpoints[-1]
    sidecar = manifest_key if manifest is not None else None
    if manifest is None:
        try:
            manifest = _embedded_manifest(deps.store, f"s3://{bucket}/{checkpoint_key}")
        except InvalidManifest as exc:
            return reject_upload(
                obj,
                deps,
                owner=owner,
                code=exc.code,
                message=exc.message,
                model_name=classified.model_name,
                version=classified.version,
            )
        if manifest is None:
            return _await_other_half(
                obj, classified, deps, owner, keys=keys, reason=f"waiting for {MANIFEST_FILE_NAME}"
            )

    checkpoint = deps.store.head(f"s3://{bucket}/{checkpoint_key}")
    manifest_revision = deps.store.head(f"s3://{bucket}/{sidecar}").revision if sidecar else ""
    pair = idempotency_key_for(
        "export-job", bucket, checkpoint_key, checkpoint.revision, sidecar or "", manifest_revision
    )
    request = JobRequest(
        job_id=str(uuid.uuid5(_JOB_NAMESPACE, pair)),
        owner=owner,
        bucket=bucket,
        checkpoint_key=checkpoint_key,
        checkpoint=checkpoint,
        manifest=manifest,
        manifest_key=sidecar,
    )
    pairing = None
    if sidecar is not None:  # an embedded manifest is no pair: nothing waits for it
        halves = [(checkpoint_key, checkpoint.revision), (sidecar, manifest_revision)]
        arrived, other = halves if classified.kind is KeyKind.CHECKPOINT else halves[::-1]
        pairing = _lone_half(obj, classified, deps, owner).model_copy(
            update={
                "status": UploadStatus.PAIRED,
                "revision": arrived[1],
                "refs": [half_ref(bucket, arrived[0], arrived[1]), half_ref(bucket, other[0], other[1])],
                "job_id": request.job_id,
                "paired_key": other[0],
            }
        )

    def work() -> CheckpointOutcome:
        if pairing is not None and deps.registry.pair_upload(pairing) is None:
            # The other half was rejected as an incomplete upload: it never starts a job, and this half
            # now waits for a new upload of it.
            return _await_other_half(
                obj,
                classified,
                deps,
                owner,
                keys=keys,
                reason=f"the {_other(pairing.half)} beside it was rejected as an incomplete upload; "
                "upload it again",
            )
        return _start_job(deps, request)

    return run_once(
        deps.claims,
        pair,
        work,
        duplicate=CheckpointOutcome(status="duplicate", reason="the other half of the pair started the job"),
    )


def _start_job(deps: CheckpointDeps, request: JobRequest) -> CheckpointOutcome:
    job, started = start_export_job(deps, request)
    return CheckpointOutcome(status="submitted" if started else "duplicate", job_id=job.job_id)


def _other(half: UploadHalf) -> UploadHalf:
    return "manifest" if half == "checkpoint" else "checkpoint"


def _lone_half(
    obj: ObjectCreated, classified: ClassifiedKey, deps: CheckpointDeps, owner: str
) -> PendingUpload:
    """The AWAITING round of ``obj``, a checkpoint or manifest that is (so far) alone under its prefix."""
    prefix, model_name, version = classified.prefix, classified.model_name, classified.version
    if prefix is None or model_name is None or version is None:
        raise ValueError(f"not a checkpoint or manifest key: {obj.key}")
    now = deps.now()
    return PendingUpload(
        owner=owner,
        upload_id=upload_id_for(obj.bucket, prefix),
        bucket=obj.bucket,
        prefix=prefix,
        model_name=model_name,
        version=version,
        half="checkpoint" if classified.kind is KeyKind.CHECKPOINT else "manifest",
        key=obj.key,
        revision=obj.revision,
        version_id=obj.version_id,
        etag=obj.etag or None,
        size_bytes=obj.size,
        refs=[half_ref(obj.bucket, obj.key, obj.revision)],
        created_at=now,
        updated_at=now,
    )


def _await_other_half(
    obj: ObjectCreated,
    classified: ClassifiedKey,
    deps: CheckpointDeps,
    owner: str,
    *,
    keys: Collection[str],
    reason: str,
) -> CheckpointOutcome:
    """Record ``obj`` as a half waiting for the other (visible as AWAITING until paired or rejected)."""
    if obj.key not in keys:  # deleted before we listed: nothing waits
        return CheckpointOutcome(status="waiting", reason=reason)
    stored = deps.registry.await_upload(_lone_half(obj, classified, deps, owner))
    return CheckpointOutcome(status="waiting", reason=reason, upload_id=stored.upload_id)


def pair_awaiting_halves(
    deps: CheckpointDeps, bucket: str, halves: Sequence[tuple[str, str]], *, job_id: str
) -> list[PendingUpload]:
    """Settle PAIRED with ``job_id`` the rounds AWAITING one of ``halves`` — the (key, revision) of the
    checkpoint and manifest that a job started through the API converts — so that the sweep does not
    reject a half that a job already uses. Returns the rounds settled.

    A round awaiting another file or another revision stays AWAITING; one the sweep rejected first
    stays REJECTED (the job runs all the same). The round keeps its owner (the drop's, who may not be
    the API's caller), and is not returned to the caller.
    """
    if bucket != deps.names.ingest_bucket:
        return []
    used = {half_ref(bucket, key, revision): key for key, revision in halves}
    # Each half's own prefix: a manifest given by URI may lie under another model's folder.
    prefixes = {p for key, _ in halves if (p := classify_ingest_key(key).prefix) is not None}
    settled = []
    for prefix in sorted(prefixes):
        paired = deps.registry.pair_upload_with_job(upload_id_for(bucket, prefix), used, job_id=job_id)
        if paired is not None:
            settled.append(paired)
    return settled


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


def load_manifest(
    store: ObjectStore, bucket: str, checkpoint_key: str, manifest_key: str | None = None
) -> tuple[Manifest, str | None]:
    """The manifest of a checkpoint and its key: ``manifest_key`` if given, else the sidecar
    ``heimdall.json`` beside the checkpoint, else the one a safetensors checkpoint embeds (key None).

    Raises InvalidManifest when there is none or it is invalid, ObjectNotFound for a missing
    ``manifest_key``.
    """
    if manifest_key is None:
        sidecar = checkpoint_key.rpartition("/")[0] + "/" + MANIFEST_FILE_NAME
        if sidecar in store.list_keys(f"s3://{bucket}/{sidecar}"):
            manifest_key = sidecar
    if manifest_key is not None:
        data = store.get_bytes(f"s3://{bucket}/{manifest_key}", max_bytes=MAX_MANIFEST_BYTES)
        try:
            return read_manifest(data, source=manifest_key), manifest_key
        except BundleError as exc:  # the manifest's JSON failed the strict parse
            raise InvalidManifest(exc.message, field="manifest") from None
    embedded = _embedded_manifest(store, f"s3://{bucket}/{checkpoint_key}")
    if embedded is None:
        raise InvalidManifest(
            f"no manifest: give manifest_uri, put {MANIFEST_FILE_NAME} beside the checkpoint, or embed it "
            "in a .safetensors checkpoint's metadata",
            field="manifest_uri",
        )
    return embedded, None


def _embedded_manifest(store: ObjectStore, uri: str) -> Manifest | None:
    """The manifest in a safetensors header's ``__metadata__["heimdall"]``, if there is one."""
    if not uri.lower().endswith(".safetensors"):
        return None
    head = store.read_range(uri, 0, 8)
    if len(head) < 8:
        return None
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:
        return None  # too large to read here; the sidecar is needed
    try:
        header = json.loads(store.read_range(uri, 8, length))
        text = header.get("__metadata__", {}).get(EMBEDDED_MANIFEST_KEY)
    except (ValueError, AttributeError):
        return None  # not a safetensors header we can read: the job will refuse the file itself
    if not isinstance(text, str):
        return None
    try:
        return parse_manifest(json.loads(text), source="the embedded manifest")
    except ValueError as exc:
        raise InvalidManifest(f"the embedded manifest is not JSON: {exc}") from None


def _bundle_deps(deps: CheckpointDeps) -> BundleDeps:
    return BundleDeps(
        registry=deps.registry,
        claims=deps.claims,
        store=deps.store,
        events=deps.events,
        names=deps.names,
        limits=deps.limits,
        now=deps.now,
    )


__all__ = [
    "CheckpointDeps",
    "CheckpointOutcome",
    "JobRequest",
    "announce_rejection",
    "handle_checkpoint_object",
    "load_manifest",
    "quarantine_upload",
    "record_export_job",
    "reject_upload",
    "start_export_job",
    "submit_export_job",
]
