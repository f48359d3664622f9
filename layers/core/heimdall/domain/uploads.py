"""The half-pair rules: which round a checkpoint or manifest belongs to, and what recording it means.

A checkpoint and its manifest are uploaded as two objects under one ``checkpoints/{model_name}/{version}/``
prefix; whichever arrives first waits in a round (:class:`~heimdall.domain.records.PendingUpload`) for the
other. The functions here decide, from the round as stored, what a registry does with a lone half
(:func:`plan_await`), a complete pair (:func:`plan_pairing`) and a job started through the API on an
awaiting half (:func:`paired_with_job`). Both registries apply them inside their own atomic writes, so
the in-memory fake and DynamoDB agree.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Literal

from heimdall.domain.records import PendingUpload, UploadStatus

__all__ = ["half_ref", "paired_with_job", "plan_await", "plan_pairing", "upload_id_for"]

_UPLOAD_NAMESPACE = uuid.UUID("0f4b7c1e-6a2d-4e8b-9c3f-2d5e7a9b1c4d")


def upload_id_for(bucket: str, prefix: str) -> str:
    """The id of the pair under ``prefix`` (``checkpoints/{model_name}/{version}/``) of ``bucket``.

    Derived from the sender's own S3 prefix, so both halves find the same record; never used as a key.
    """
    return str(uuid.uuid5(_UPLOAD_NAMESPACE, f"{bucket}/{prefix}"))


def half_ref(bucket: str, key: str, revision: str) -> str:
    """The identity of one revision of one half (what a round's ``refs`` hold)."""
    return hashlib.sha256(json.dumps([bucket, key, revision]).encode()).hexdigest()


def plan_pairing(current: PendingUpload | None, refs: Collection[str]) -> Literal["write", "refuse", "busy"]:
    """What pairing the halves ``refs`` means for the prefix's round ``current`` (both registries).

    ``write``: no round, an AWAITING or PAIRED one, or a settled rejection of other halves. ``refuse``:
    the round was REJECTED with one of these halves (that revision must never start a job). ``busy``:
    a rejection of other halves is still being announced (try again later).
    """
    if current is None or current.status is not UploadStatus.REJECTED:
        return "write"
    if set(refs) & set(current.refs):
        return "refuse"
    return "busy" if current.rejecting_since is not None else "write"


def paired_with_job(
    current: PendingUpload | None, used: Mapping[str, str], *, job_id: str, now: datetime
) -> PendingUpload | None:
    """The round ``current`` PAIRED with ``job_id`` when it is AWAITING one of the halves ``used``
    (:func:`half_ref` → key) of a job started through the API; None (leave it) for any other round.

    The awaiting half stays the round's first; the job's other half (if any) is ``paired_key``.
    """
    if current is None or current.status is not UploadStatus.AWAITING or current.refs[0] not in used:
        return None
    others = [ref for ref in used if ref != current.refs[0]]
    return current.model_copy(
        update={
            "status": UploadStatus.PAIRED,
            "refs": [current.refs[0], *others[:1]],
            "job_id": job_id,
            "paired_key": used[others[0]] if others else None,
            "updated_at": now,
        }
    )


def plan_await(current: PendingUpload | None, ref: str) -> Literal["write", "keep", "busy"]:
    """What recording the lone half ``ref`` means for the prefix's round ``current`` (both registries).

    ``keep``: an AWAITING round (its first half's clock runs on) or a settled round that already holds
    this half. ``busy``: a rejection is still being announced. ``write``: a new round.
    """
    if current is None:
        return "write"
    if current.status is UploadStatus.AWAITING or ref in current.refs:
        return "keep"
    return "busy" if current.rejecting_since is not None else "write"
