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

Jobs start through :func:`heimdall.logic.checkpoint_jobs.start_export_job`, as API jobs do; the
manifest is found by :mod:`heimdall.logic.checkpoint_manifests`.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from heimdall.contracts.manifest import MANIFEST_FILE_NAME, Manifest, read_manifest
from heimdall.domain.records import PendingUpload, UploadHalf, UploadStatus
from heimdall.domain.uploads import half_ref, upload_id_for
from heimdall.errors import BundleError, InvalidManifest
from heimdall.events import CheckpointRejected, idempotency_key_for, make_event
from heimdall.logic.bundles import BundleDeps, quarantine
from heimdall.logic.checkpoint_jobs import CheckpointDeps, JobRequest, start_export_job
from heimdall.logic.checkpoint_manifests import MAX_MANIFEST_BYTES, embedded_manifest
from heimdall.logic.once import run_once
from heimdall.triggers.keys import ClassifiedKey, KeyKind, classify_ingest_key
from heimdall.triggers.s3 import ObjectCreated

_JOB_NAMESPACE = uuid.UUID("9a5b8f0e-2d7c-4c61-8f3e-5b1d6c0a7e21")


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
            manifest = embedded_manifest(deps.store, f"s3://{bucket}/{checkpoint_key}")
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
    "CheckpointOutcome",
    "announce_rejection",
    "handle_checkpoint_object",
    "pair_awaiting_halves",
    "quarantine_upload",
    "reject_upload",
]
