"""Use cases: export jobs through the API — create (from a model or a checkpoint), follow, cancel, download.

A job is started exactly as an S3 drop starts one (:func:`heimdall.logic.checkpoint_jobs.start_export_job`:
record, submit, ``Checkpoint Received`` and ``Export Job Submitted``). Its id is a uuid4, or, with an
``Idempotency-Key``, a uuid5 of the owner and the key, so that a repeated request finds the job the
first one made instead of starting another. The key stands for its first request only: the sha256 of
that request, normalised (:func:`request_fingerprint`), is recorded with the key, and the key sent
again with another request is refused (422 ``IDEMPOTENCY_KEY_REUSED``), never answered with the job
of the first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from functools import partial
from typing import Literal

from pydantic import ValidationError

from heimdall.contracts.jobs import DEFAULT_BUNDLE_FORMATS, RESULT_FILE_NAME, ConversionResult, JobSpec
from heimdall.domain.job_states import TERMINAL
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.records import ExportJob, JobStatus, ModelRecord
from heimdall.domain.storage import Download
from heimdall.errors import (
    ConflictError,
    HeimdallError,
    IdempotencyKeyReused,
    InvalidTransition,
    NoCheckpoint,
    NotReady,
    ObjectNotFound,
    RecordNotFound,
    RequestInvalid,
)
from heimdall.events import idempotency_key_for
from heimdall.logic.api import ApiDeps, require_id
from heimdall.logic.checkpoint_jobs import JobRequest, record_export_job, start_export_job, submit_export_job
from heimdall.logic.checkpoint_manifests import load_manifest
from heimdall.logic.checkpoints import pair_awaiting_halves
from heimdall.logic.once import run_once
from heimdall.triggers.keys import KeyKind, classify_ingest_key
from heimdall.types import ExportFormat

__all__ = [
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "Download",
    "cancel_export_job",
    "create_export_job",
    "download_export",
    "get_export_job",
    "job_id_for",
    "list_model_exports",
    "read_job_result",
    "request_fingerprint",
    "set_default_export",
]

logger = logging.getLogger(__name__)

_API_JOB_NAMESPACE = uuid.UUID("0f6d3c52-8b1e-4d7a-9c3f-2e5a7b9d1c84")
MAX_IDEMPOTENCY_KEY_CHARS = 256
#: ``result.json`` is a few KiB; anything this large is not one.
MAX_RESULT_BYTES = 4 * 1024 * 1024


def job_id_for(owner: str, idempotency_key: str | None) -> str:
    """A new job id: random, or derived from (owner, idempotency key) so that a repeat finds its job."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise RequestInvalid(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters", field="Idempotency-Key"
        )
    return str(uuid.uuid5(_API_JOB_NAMESPACE, f"{owner}\n{idempotency_key}"))


def request_fingerprint(
    *,
    model_id: str | None,
    checkpoint_uri: str | None,
    manifest_uri: str | None,
    formats: list[ExportFormat] | None,
) -> str:
    """The sha256 of a job request in canonical form: what it asks for, not how it was spelt.

    Computed from the parsed request (aliases resolved, so ``export_format: onnx`` is ``formats:
    [onnx]``), never from the body's bytes: key order and spacing do not matter, nor the order or
    repetition of ``formats`` (a set of formats to build).
    """
    canonical = {
        "model_id": model_id,
        "checkpoint_uri": checkpoint_uri,
        "manifest_uri": manifest_uri,
        "formats": None if formats is None else sorted({str(f) for f in formats}),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def create_export_job(
    deps: ApiDeps,
    owner: str,
    *,
    model_id: str | None = None,
    checkpoint_uri: str | None = None,
    manifest_uri: str | None = None,
    formats: list[ExportFormat] | None = None,
    idempotency_key: str | None = None,
) -> ExportJob:
    """Start a conversion job of a model's checkpoint (``model_id``) or of a checkpoint location.

    From a model: the checkpoint and manifest of the job that exported it; an imported model has no
    checkpoint, so its job converts the model's stored bundle instead (:func:`_start_bundle_job`:
    FP16, INT8 and TensorRT from its ONNX model, and an export package). From a checkpoint:
    ``s3://{ingest}/checkpoints/…`` (else RequestInvalid; a missing object is ObjectNotFound), with
    ``manifest_uri``, else the sidecar ``heimdall.json``, else the manifest a safetensors checkpoint
    embeds (else InvalidManifest). ``formats`` replaces the manifest's. With ``idempotency_key`` a
    repeat returns the job the first request made; the key with another request is
    IdempotencyKeyReused.
    """
    if (model_id is None) == (checkpoint_uri is None):
        raise RequestInvalid("give either model_id or checkpoint_uri", field="model_id")
    if model_id is not None and manifest_uri is not None:
        raise RequestInvalid("manifest_uri goes with checkpoint_uri, not model_id", field="manifest_uri")
    if formats is not None and not formats:
        raise RequestInvalid("formats, when given, must name at least one format", field="formats")
    job_id = job_id_for(owner, idempotency_key)
    create = partial(
        _create,
        deps,
        owner,
        job_id,
        model_id=model_id,
        checkpoint_uri=checkpoint_uri,
        manifest_uri=manifest_uri,
        formats=formats,
    )
    if idempotency_key is not None:
        fingerprint = request_fingerprint(
            model_id=model_id, checkpoint_uri=checkpoint_uri, manifest_uri=manifest_uri, formats=formats
        )
        # Recorded before anything is started, so that two different requests racing with one key
        # cannot both start: the first recorded wins, the other is refused.
        claim = idempotency_key_for("api-export-job-request", job_id)
        first = deps.claims.claim_request(claim, fingerprint)
        if first != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with another request; use a new key for a new request",
                field="Idempotency-Key",
            )
        existing = _find_job(deps, owner, job_id)
        if existing is not None and existing.status is not JobStatus.PENDING:
            return existing  # a PENDING one's submission failed: it is submitted again below
        # Two concurrent repeats: one starts the job, the other returns it as it is then.
        claim = idempotency_key_for("api-export-job", job_id)
        started = run_once(deps.claims, claim, create, duplicate=None)
        found = started or _find_job(deps, owner, job_id)
        if found is None:
            raise ConflictError(
                "a request with this Idempotency-Key is still being processed; retry", field="Idempotency-Key"
            )
        return found
    return create()


def _find_job(deps: ApiDeps, owner: str, job_id: str) -> ExportJob | None:
    try:
        return deps.registry.get_export_job(owner, job_id)
    except RecordNotFound:
        return None


def _create(
    deps: ApiDeps,
    owner: str,
    job_id: str,
    *,
    model_id: str | None,
    checkpoint_uri: str | None,
    manifest_uri: str | None,
    formats: list[ExportFormat] | None,
) -> ExportJob:
    if model_id is not None:
        require_id(model_id, what="model", field="model_id")
        model = deps.registry.get_model(owner, model_id)
        if model.source == "import":
            return _start_bundle_job(deps, owner, job_id, model, formats)
        bucket, checkpoint_key, manifest_key = _checkpoint_of_model(deps, owner, model)
    else:
        assert checkpoint_uri is not None
        bucket, checkpoint_key = _ingest_location(deps, checkpoint_uri, field="checkpoint_uri")
        if classify_ingest_key(checkpoint_key).kind is not KeyKind.CHECKPOINT:
            raise RequestInvalid(
                "checkpoint_uri must name a checkpoint file (.safetensors, .pt, .pth, .bin, .ckpt) under "
                "checkpoints/{model_name}/{version}/",
                field="checkpoint_uri",
            )
        manifest_key = None
        if manifest_uri is not None:
            manifest_key = _ingest_location(deps, manifest_uri, field="manifest_uri")[1]
    checkpoint = deps.store.head(f"s3://{bucket}/{checkpoint_key}")
    manifest, manifest_key = load_manifest(deps.store, bucket, checkpoint_key, manifest_key)
    halves = [(checkpoint_key, checkpoint.revision)]
    if manifest_key is not None:
        halves.append((manifest_key, deps.store.head(f"s3://{bucket}/{manifest_key}").revision))
    job, started = start_export_job(
        deps.checkpoint_deps(),
        JobRequest(
            job_id=job_id,
            owner=owner,
            bucket=bucket,
            checkpoint_key=checkpoint_key,
            checkpoint=checkpoint,
            manifest=manifest,
            manifest_key=manifest_key,
            formats=list(dict.fromkeys(formats)) if formats else None,
        ),
    )
    if started:
        _settle_awaiting_halves(deps, bucket, halves, job.job_id)
    return job


def _settle_awaiting_halves(deps: ApiDeps, bucket: str, halves: list[tuple[str, str]], job_id: str) -> None:
    """Settle a dropped half this job converts, so that the sweep does not reject it 24 h later."""
    try:
        pair_awaiting_halves(deps.checkpoint_deps(), bucket, halves, job_id=job_id)
    except HeimdallError as exc:
        # The job is started and stays so: failing the request now would only invite a second job.
        # The round is then left to the sweep (INCOMPLETE_UPLOAD), as when it loses the race.
        logger.warning("export job %s: could not settle the awaiting halves it converts: %s", job_id, exc)


def _ingest_location(deps: ApiDeps, uri: str, *, field: str) -> tuple[str, str]:
    """``s3://{ingest}/checkpoints/…`` → (bucket, key); anything else → RequestInvalid."""
    bucket = deps.names.ingest_bucket
    prefix = f"s3://{bucket}/checkpoints/"
    key = uri[len(f"s3://{bucket}/") :] if uri.startswith(prefix) else ""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or len(key) > 1024:
        raise RequestInvalid(f"{field} must be an object under {prefix}", field=field)
    return bucket, key


def _start_bundle_job(
    deps: ApiDeps, owner: str, job_id: str, model: ModelRecord, formats: list[ExportFormat] | None
) -> ExportJob:
    """A job converting an imported model's stored bundle (its ONNX model: the PyTorch stages skip)."""
    if not model.bundle_key:
        raise NotReady(f"model {model.model_id} has no stored bundle to convert", field="model_id")
    artifacts = deps.names.artifacts_bucket
    requested = list(dict.fromkeys(formats or DEFAULT_BUNDLE_FORMATS))
    # The FP32 model comes first, as in a manifest: the other formats derive from it.
    ordered = [ExportFormat.ONNX, *(f for f in requested if f is not ExportFormat.ONNX)]
    output_prefix = f"s3://{artifacts}/exports/{job_id}/"
    now = deps.now()
    job = ExportJob(
        job_id=job_id,
        owner=owner,
        model_name=model.model_name,
        version=model.version,
        source="bundle",
        checkpoint_bucket=artifacts,
        checkpoint_key=model.bundle_key,
        formats=ordered,
        output_prefix=output_prefix,
        model_id=model.model_id,
        created_at=now,
        updated_at=now,
    )
    job, to_submit = record_export_job(deps.checkpoint_deps(), job)
    if not to_submit:
        return job
    spec = JobSpec(
        job_id=job_id,
        source="bundle",
        checkpoint_uri=f"s3://{artifacts}/{model.bundle_key}",
        expected_onnx_sha256=model.onnx_sha256,
        output_uri=output_prefix,
        timing_cache_uri=f"s3://{artifacts}/timing-cache/",
        formats=list(job.formats),
    )
    return submit_export_job(deps.checkpoint_deps(), job, spec)


def _checkpoint_of_model(deps: ApiDeps, owner: str, model: ModelRecord) -> tuple[str, str, str | None]:
    model_id = model.model_id
    if model.export_job_id is None:
        raise NoCheckpoint(
            f"model {model_id} has no export job: there is no checkpoint to convert again", field="model_id"
        )
    try:
        job = deps.registry.get_export_job(owner, model.export_job_id)
        deps.store.head(f"s3://{job.checkpoint_bucket}/{job.checkpoint_key}")
    except (RecordNotFound, ObjectNotFound):
        raise NoCheckpoint(
            f"the checkpoint model {model_id} was exported from is gone", field="model_id"
        ) from None
    return job.checkpoint_bucket, job.checkpoint_key, job.manifest_key


def get_export_job(deps: ApiDeps, owner: str, job_id: str) -> ExportJob:
    """The owner's job; RecordNotFound for a missing one, another owner's, or a malformed id."""
    require_id(job_id, what="export job", field="job_id")
    return deps.registry.get_export_job(owner, job_id)


def list_model_exports(
    deps: ApiDeps, owner: str, model_id: str, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> Page[ExportJob]:
    """The owner's jobs of the model's name and version, newest first.

    The registry lists by model name; the version is filtered here, so a page may hold fewer than
    ``limit`` jobs while ``cursor`` still says there are more.
    """
    require_id(model_id, what="model", field="model_id")
    model = deps.registry.get_model(owner, model_id)
    page = deps.registry.list_export_jobs(owner, model_name=model.model_name, limit=limit, cursor=cursor)
    return Page(items=[job for job in page.items if job.version == model.version], cursor=page.cursor)


def set_default_export(deps: ApiDeps, owner: str, job_id: str) -> ExportJob:
    """Make a SUCCEEDED job the default export of its model version (NotReady unless it succeeded)."""
    job = get_export_job(deps, owner, job_id)
    if job.status is not JobStatus.SUCCEEDED:
        raise NotReady(
            f"export job {job_id} is {job.status}; only a succeeded export can be the default",
            field="job_id",
            status=str(job.status),
        )
    return deps.registry.set_default_export(owner, job_id)


def cancel_export_job(deps: ApiDeps, owner: str, job_id: str, *, cancelled_by: str) -> ExportJob:
    """Cancel the job: CANCELLED in the registry, then ask the runner to stop it.

    A finished job raises InvalidTransition. The record is what counts: a runner that cannot be reached
    is logged, not raised (its own late FAILED event is ignored, CANCELLED being terminal).
    """
    job = get_export_job(deps, owner, job_id)
    reason = f"cancelled by {cancelled_by}"[:4096]
    if job.status in TERMINAL:
        raise InvalidTransition(
            f"export job {job_id} is already {job.status}", field="job_id", current=str(job.status)
        )
    cancelled = deps.registry.transition_export_job(job_id, JobStatus.CANCELLED, updates={"reason": reason})
    if cancelled is None:  # it finished between the read and the write
        current = deps.registry.get_export_job(owner, job_id)
        raise InvalidTransition(
            f"export job {job_id} is already {current.status}", field="job_id", current=str(current.status)
        )
    if cancelled.batch_job_id:
        try:
            deps.jobs.cancel(cancelled.batch_job_id, reason)
        except (HeimdallError, OSError) as exc:
            logger.warning("could not stop runner job %s of %s: %s", cancelled.batch_job_id, job_id, exc)
    return cancelled


def download_export(
    deps: ApiDeps, owner: str, job_id: str, *, file: Literal["package", "bundle"] = "package"
) -> Download:
    """A presigned GET of a SUCCEEDED job's package (or bundle); NotReady when there is none."""
    if file not in ("package", "bundle"):
        raise RequestInvalid("file must be package or bundle", field="file")
    job = get_export_job(deps, owner, job_id)
    result = job.result
    name = None if result is None else (result.package_file if file == "package" else result.bundle_file)
    if job.status is not JobStatus.SUCCEEDED or not name or not job.output_prefix:
        raise NotReady(
            f"export job {job_id} has no {file} to download (it is {job.status})",
            field="file",
            status=str(job.status),
        )
    prefix = job.output_prefix.rstrip("/")
    uri = f"{prefix}/{name}"
    key = uri.removeprefix("s3://").partition("/")[2]
    size, sha256 = _file_facts(deps, job, name)
    if size is None:
        size = deps.store.head(uri).size  # also: 404 if the file is gone
    url, expires_at = deps.store.presign_get(
        uri, expires_s=deps.api.presign_ttl_s, filename=name.rpartition("/")[2]
    )
    return Download(url=url, expires_at=expires_at, file=file, key=key, size_bytes=size, sha256=sha256)


def read_job_result(deps: ApiDeps, job: ExportJob) -> ConversionResult:
    """The ``result.json`` of a finished job; NotReady when it has none that can be read."""
    unreadable = NotReady(f"export job {job.job_id} has no readable result.json", field="export_job_id")
    if job.output_prefix is None:
        raise unreadable
    uri = f"{job.output_prefix.rstrip('/')}/{RESULT_FILE_NAME}"
    try:
        return ConversionResult.model_validate_json(deps.store.get_bytes(uri, max_bytes=MAX_RESULT_BYTES))
    except (HeimdallError, ValidationError):
        raise unreadable from None


def _file_facts(deps: ApiDeps, job: ExportJob, name: str) -> tuple[int | None, str | None]:
    """The size and sha256 the job's ``result.json`` recorded for ``name`` (None, None if it cannot say)."""
    try:
        facts = read_job_result(deps, job).outputs.get(name)
    except NotReady:
        return None, None
    return (facts.size_bytes, facts.sha256) if facts else (None, None)
