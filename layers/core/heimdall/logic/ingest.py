"""Use case: one S3 notification for the ingest or artifacts bucket, routed by its key.

* ingest ``checkpoints/{name}/{version}/…`` → :mod:`heimdall.logic.checkpoints`;
* ingest ``bundles/…/*.heimdall[.gz]`` → an import (:func:`heimdall.logic.imports.index_import`: an API
  import's upload under ``bundles/imports/{import_id}/`` for that import's owner, anything else a direct
  drop owned by ``drop_owner``);
* artifacts ``exports/{job_id}/*.heimdall`` → the job's own bundle, indexed for the job's owner;
* ``s3:TestEvent``, the rest of the artifacts bucket, other buckets → acknowledged and ignored;
* anything else in the ingest bucket → quarantined and rejected, so nothing dropped there goes unnoticed.

A malformed notification raises :class:`~heimdall.triggers.s3.NotificationError`: that record fails
(and, after SQS's retries, lands in the DLQ) while the rest of its batch succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from heimdall.errors import RecordNotFound
from heimdall.logic.bundles import BundleDeps, IndexOutcome, index_bundle, reject_bundle
from heimdall.logic.checkpoint_jobs import CheckpointDeps
from heimdall.logic.checkpoints import handle_checkpoint_object, reject_upload
from heimdall.logic.imports import index_import
from heimdall.triggers.keys import KeyKind, classify_artifacts_key, classify_ingest_key
from heimdall.triggers.s3 import S3TestEvent, parse_notification


@dataclass(frozen=True)
class IngestDeps:
    """The ingest use cases' collaborators. Direct drops (no caller) belong to ``bundles.drop_owner``."""

    checkpoints: CheckpointDeps
    bundles: BundleDeps


def handle_ingest_record(body: object, deps: IngestDeps) -> str:
    """Process one notification; returns what happened (for logs and metrics)."""
    event = parse_notification(body)
    if isinstance(event, S3TestEvent):
        return "ignored:s3-test-event"
    names = deps.bundles.names
    drop_owner = deps.bundles.drop_owner
    if event.bucket == names.ingest_bucket:
        classified = classify_ingest_key(event.key)
        if classified.kind in (KeyKind.CHECKPOINT, KeyKind.MANIFEST):
            outcome = handle_checkpoint_object(event, classified, deps.checkpoints, owner=drop_owner)
            return f"checkpoint:{outcome.status}"
        if classified.kind is KeyKind.BUNDLE:
            return f"bundle:{index_import(event, deps.bundles).status}"
        reason = classified.reason or "unsupported key"
        if event.key.startswith("bundles/"):
            rejected: IndexOutcome = reject_bundle(
                event, deps.bundles, owner=drop_owner, job_id=None, code="UNSUPPORTED_FILE", message=reason
            )
            return f"bundle:{rejected.status}"
        outcome = reject_upload(
            event, deps.checkpoints, owner=drop_owner, code="UNSUPPORTED_FILE", message=reason
        )
        return f"checkpoint:{outcome.status}"
    if event.bucket == names.artifacts_bucket:
        classified = classify_artifacts_key(event.key)
        if classified.kind is KeyKind.JOB_BUNDLE and classified.job_id:
            try:
                owner = deps.bundles.registry.get_export_job_any_owner(classified.job_id).owner
            except RecordNotFound:
                return "ignored:unknown-job"
            outcome_b = index_bundle(event, deps.bundles, owner=owner, job_id=classified.job_id)
            return f"job-bundle:{outcome_b.status}"
        return "ignored:artifact"
    return "ignored:other-bucket"
