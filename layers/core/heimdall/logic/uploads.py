"""Use cases: half pairs — the sweep that rejects those that waited too long, and the caller's view.

A checkpoint or manifest that arrives alone under ``checkpoints/{model_name}/{version}/`` is recorded as
an AWAITING round (:mod:`heimdall.logic.checkpoints`). :func:`sweep_incomplete_uploads` runs on a
schedule (an EventBridge rule in AWS, a timer in the local stack): each round still AWAITING
``pair_timeout_s`` after its half arrived is rejected — the registry's conditional write decides against
a pairing racing it, so a half is either paired (its job starts) or rejected, never both — and then the
half is copied to quarantine with a ``reason.json`` (the original stays) and ``Checkpoint Rejected``
(``INCOMPLETE_UPLOAD``) goes out. A sweep that dies between the decision and the announcement leaves
the round REJECTED with ``rejecting_since`` set; once that lease is over the next sweep announces it
(the quarantine folder and the event's idempotency key are the same again). Safe to run concurrently:
of several sweeps, one wins each round.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.records import PendingUpload, UploadStatus
from heimdall.errors import IncompleteUpload, ObjectNotFound
from heimdall.logic.api import ApiDeps, require_id
from heimdall.logic.checkpoint_jobs import CheckpointDeps
from heimdall.logic.checkpoints import announce_rejection, quarantine_upload
from heimdall.settings import DEFAULT_PAIR_TIMEOUT_S
from heimdall.triggers.s3 import ObjectCreated

__all__ = [
    "REJECTION_LEASE_S",
    "SweepDeps",
    "SweepOutcome",
    "get_upload",
    "list_uploads",
    "reject_after",
    "sweep_incomplete_uploads",
]

#: How long one sweep may take to announce a rejection before another sweep takes it over: longer than
#: the sweep function may run (its timeout is 120 s), so a live sweep is never overtaken.
REJECTION_LEASE_S = 300
#: Rounds one sweep handles at most (the next run takes the rest).
SWEEP_BATCH = 100


@dataclass(frozen=True)
class SweepDeps:
    """The sweep's collaborators: the ingest function's, and the timeout (``Settings.pair_timeout_s``)."""

    checkpoints: CheckpointDeps
    pair_timeout_s: int = DEFAULT_PAIR_TIMEOUT_S
    lease_s: int = REJECTION_LEASE_S
    batch: int = SWEEP_BATCH


@dataclass(frozen=True)
class SweepOutcome:
    """What one sweep did: rounds rejected (and announced), and rounds another writer won."""

    rejected: list[str]
    skipped: list[str]


def sweep_incomplete_uploads(deps: SweepDeps) -> SweepOutcome:
    """Reject every half that waited ``pair_timeout_s`` for the other (at most ``batch`` per run)."""
    checkpoints = deps.checkpoints
    now = checkpoints.now()
    due = checkpoints.registry.due_uploads(
        arrived_before=now - timedelta(seconds=deps.pair_timeout_s),
        rejecting_before=now - timedelta(seconds=deps.lease_s),
        limit=deps.batch,
    )
    rejected: list[str] = []
    skipped: list[str] = []
    for seen in due:
        # A rejection taken over from a sweep that died keeps the message it was decided with.
        message = _message(seen, deps)
        if seen.status is UploadStatus.REJECTED and seen.reason:
            message = seen.reason
        claimed = checkpoints.registry.begin_upload_rejection(
            seen, code=IncompleteUpload.code, reason=message
        )
        if claimed is None:  # paired meanwhile, or another sweep has it
            skipped.append(seen.upload_id)
            continue
        _announce(claimed, checkpoints, message)
        rejected.append(seen.upload_id)
    return SweepOutcome(rejected=rejected, skipped=skipped)


def _message(record: PendingUpload, deps: SweepDeps) -> str:
    return (
        f"{record.key} waited {_duration(deps.pair_timeout_s)} for its {record.missing} under "
        f"{record.prefix}; upload both halves again"
    )


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"


def _announce(record: PendingUpload, deps: CheckpointDeps, message: str) -> None:
    """Quarantine the half (if it is still there) and publish ``Checkpoint Rejected``, then note it done."""
    obj = ObjectCreated(
        bucket=record.bucket,
        key=record.key,
        size=record.size_bytes or 0,
        etag=record.etag or "",
        version_id=record.version_id,
        sequencer=None,
    )
    code = IncompleteUpload.code
    try:
        kept: str | None = quarantine_upload(obj, deps, code=code, message=message)
    except ObjectNotFound:
        kept = None  # deleted meanwhile: nothing to keep, the rejection still stands
    announce_rejection(
        obj,
        deps,
        owner=record.owner,
        code=code,
        message=message,
        model_name=record.model_name,
        version=record.version,
        kept=kept,
    )
    deps.registry.finish_upload_rejection(record, quarantine_key=kept)


def reject_after(record: PendingUpload, deps: ApiDeps) -> datetime | None:
    """When an AWAITING round will be rejected (the sweep runs every few minutes), or None once settled."""
    if record.status is not UploadStatus.AWAITING:
        return None
    return record.created_at + timedelta(seconds=deps.pair_timeout_s)


def list_uploads(
    deps: ApiDeps,
    owner: str,
    *,
    status: UploadStatus | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> Page[PendingUpload]:
    """The caller's half pairs (in one status if given), newest first."""
    return deps.registry.list_uploads(owner, status=status, limit=limit, cursor=cursor)


def get_upload(deps: ApiDeps, owner: str, upload_id: str) -> PendingUpload:
    """One of the caller's half pairs (RecordNotFound for another owner's, or an id that cannot exist)."""
    require_id(upload_id, what="upload", field="upload_id")
    return deps.registry.get_upload(owner, upload_id)
