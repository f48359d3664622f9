"""An in-memory registry: the fake of :class:`~heimdall.domain.registry.Registry` and
:class:`~heimdall.domain.claims.IdempotencyClaims` that unit tests, the demo and benchmarks use.

It keeps the same contract as ``heimdall.adapters.dynamodb.registry.DynamoRegistry``, and one suite
(``tests/integration/test_registry_contract.py``) tests the two alike: the same state machine
(:mod:`heimdall.domain.job_states`), half-pair rules (:mod:`heimdall.domain.uploads`), ordering and
cursors (:mod:`heimdall.domain.paging`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from heimdall.domain.claims import check_ttl, epoch_seconds
from heimdall.domain.job_states import plan_transition, validate_job_updates
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page, check_limit, paginate
from heimdall.domain.records import (
    IMPORT_TERMINAL,
    ExportJob,
    ImportRecord,
    JobStatus,
    ModelRecord,
    PendingUpload,
    UploadStatus,
    chronological_key,
    owned,
    utcnow,
)
from heimdall.domain.uploads import paired_with_job, plan_await, plan_pairing
from heimdall.errors import ConflictError, RecordNotFound, RegistryUnavailable

__all__ = ["InMemoryRegistry"]

_R = TypeVar("_R", ModelRecord, ExportJob, ImportRecord, PendingUpload)


def _owned(records: Mapping[str, _R], record_id: str, owner: str | None, *, what: str, field: str) -> _R:
    """A copy of ``owner``'s record (``None``: whoever owns it); another owner's record is not found,
    like a missing one."""
    record = owned(records.get(record_id), owner, what=what, record_id=record_id, field=field)
    return record.model_copy(deep=True)


class InMemoryRegistry:
    """A thread-safe, in-process registry and claims store with the same semantics as the DynamoDB one.

    Records are copied in and out, so callers never share state with the store. ``now`` is the
    clock (for claims' expiry and ``updated_at``).
    """

    def __init__(self, *, now: Callable[[], datetime] = utcnow) -> None:
        self._now = now
        self._lock = threading.RLock()
        self._models: dict[str, ModelRecord] = {}
        self._jobs: dict[str, ExportJob] = {}
        self._imports: dict[str, ImportRecord] = {}
        self._defaults: dict[tuple[str, str, str], str] = {}
        self._claims: dict[str, int] = {}
        self._requests: dict[str, str] = {}
        self._uploads: dict[str, PendingUpload] = {}

    # models -------------------------------------------------------------------------------------

    def put_model(self, record: ModelRecord) -> ModelRecord:
        with self._lock:
            existing = self._models.get(record.model_id)
            if existing is not None and existing.owner != record.owner:
                raise ConflictError(f"model id {record.model_id} is taken", field="model_id")
            self._models[record.model_id] = record.model_copy(deep=True)
        return record

    def get_model(self, owner: str, model_id: str) -> ModelRecord:
        with self._lock:
            return _owned(self._models, model_id, owner, what="model", field="model_id")

    def delete_model(self, owner: str, model_id: str) -> None:
        with self._lock:
            self.get_model(owner, model_id)
            del self._models[model_id]

    def list_models(
        self,
        owner: str,
        *,
        name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ModelRecord]:
        with self._lock:
            chosen = [
                m.model_copy(deep=True)
                for m in self._models.values()
                if m.owner == owner and (name is None or m.model_name == name)
            ]
        return paginate(
            chosen,
            key=lambda m: chronological_key(m.created_at, m.model_id),
            scope=json.dumps(["models", owner, name]),
            limit=limit,
            cursor=cursor,
        )

    def find_model_by_name_version(self, owner: str, name: str, version: str) -> ModelRecord | None:
        with self._lock:
            matches = [
                m
                for m in self._models.values()
                if m.owner == owner and m.model_name == name and m.version == version
            ]
            if not matches:
                return None
            newest = max(matches, key=lambda m: chronological_key(m.created_at, m.model_id))
            return newest.model_copy(deep=True)

    # export jobs --------------------------------------------------------------------------------

    def create_export_job(self, job: ExportJob) -> ExportJob:
        with self._lock:
            if job.job_id in self._jobs:
                raise ConflictError(f"export job {job.job_id} already exists", field="job_id")
            self._jobs[job.job_id] = job.model_copy(deep=True)
        return job

    def get_export_job(self, owner: str, job_id: str) -> ExportJob:
        with self._lock:
            return _owned(self._jobs, job_id, owner, what="export job", field="job_id")

    def get_export_job_any_owner(self, job_id: str) -> ExportJob:
        with self._lock:
            return _owned(self._jobs, job_id, None, what="export job", field="job_id")

    def list_export_jobs(
        self,
        owner: str,
        *,
        model_name: str | None = None,
        status: JobStatus | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ExportJob]:
        with self._lock:
            chosen = [
                j.model_copy(deep=True)
                for j in self._jobs.values()
                if j.owner == owner
                and (model_name is None or j.model_name == model_name)
                and (status is None or j.status == status)
            ]
        return paginate(
            chosen,
            key=lambda j: chronological_key(j.created_at, j.job_id),
            scope=json.dumps(["jobs", owner, model_name, status]),
            limit=limit,
            cursor=cursor,
        )

    def transition_export_job(
        self, job_id: str, target: JobStatus, *, updates: Mapping[str, Any] | None = None
    ) -> ExportJob | None:
        target = JobStatus(target)
        fields = validate_job_updates(updates or {})
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise RecordNotFound(f"export job {job_id} not found", field="job_id")
            if plan_transition(job.status, target) == "ignore":
                return None
            changed = job.model_copy(update={**fields, "status": target, "updated_at": self._now()})
            self._jobs[job_id] = changed
            return changed.model_copy(deep=True)

    def record_job_model(self, job_id: str, model_id: str) -> None:
        with self._lock:
            job = self.get_export_job_any_owner(job_id)
            self._jobs[job_id] = job.model_copy(update={"model_id": model_id, "updated_at": self._now()})

    def set_default_export(self, owner: str, job_id: str) -> ExportJob:
        with self._lock:
            job = self.get_export_job(owner, job_id)
            if job.status is not JobStatus.SUCCEEDED:
                raise ConflictError(
                    f"export job {job_id} is {job.status}; only a succeeded export can be the default",
                    field="job_id",
                )
            slot = (owner, job.model_name, job.version)
            previous = self._defaults.get(slot)
            if previous is not None and previous != job_id:
                old = self._jobs[previous]
                self._jobs[previous] = old.model_copy(update={"is_default": False, "updated_at": self._now()})
            if not job.is_default:
                job = job.model_copy(update={"is_default": True, "updated_at": self._now()})
                self._jobs[job_id] = job
            self._defaults[slot] = job_id
            return job.model_copy(deep=True)

    def get_default_export(self, owner: str, model_name: str, version: str) -> ExportJob | None:
        with self._lock:
            job_id = self._defaults.get((owner, model_name, version))
            return None if job_id is None else self._jobs[job_id].model_copy(deep=True)

    # imports ------------------------------------------------------------------------------------

    def put_import(self, record: ImportRecord) -> ImportRecord:
        with self._lock:
            existing = self._imports.get(record.import_id)
            if existing is not None and existing.owner != record.owner:
                raise ConflictError(f"import id {record.import_id} is taken", field="import_id")
            if existing is not None and existing.status in IMPORT_TERMINAL:
                return existing.model_copy(deep=True)
            self._imports[record.import_id] = record.model_copy(deep=True)
        return record

    def get_import(self, owner: str, import_id: str) -> ImportRecord:
        with self._lock:
            return _owned(self._imports, import_id, owner, what="import", field="import_id")

    def get_import_any_owner(self, import_id: str) -> ImportRecord:
        with self._lock:
            return _owned(self._imports, import_id, None, what="import", field="import_id")

    def claim_import_upload(self, import_id: str, revision: str) -> ImportRecord | None:
        with self._lock:
            record = _owned(self._imports, import_id, None, what="import", field="import_id")
            if record.upload_revision not in (None, revision):
                return None
            claimed = record.model_copy(update={"upload_revision": revision})
            self._imports[import_id] = claimed.model_copy(deep=True)
            return claimed

    # idempotency --------------------------------------------------------------------------------

    def claim_once(self, key: str, ttl_s: int) -> bool:
        check_ttl(ttl_s)
        now = epoch_seconds(self._now())
        with self._lock:
            expires_at = self._claims.get(key)
            if expires_at is not None and expires_at > now:
                return False
            self._claims[key] = now + ttl_s
            return True

    def release_claim(self, key: str) -> None:
        with self._lock:
            self._claims.pop(key, None)

    def is_claimed(self, key: str) -> bool:
        now = epoch_seconds(self._now())
        with self._lock:
            expires_at = self._claims.get(key)
        return expires_at is not None and expires_at > now

    def claim_request(self, key: str, fingerprint: str) -> str:
        with self._lock:
            return self._requests.setdefault(key, fingerprint)

    # half pairs ---------------------------------------------------------------------------------

    def await_upload(self, record: PendingUpload) -> PendingUpload:
        with self._lock:
            current = self._uploads.get(record.upload_id)
            plan = plan_await(current, record.refs[0])
            if plan == "busy":
                raise RegistryUnavailable(f"upload {record.upload_id}: a rejection is being announced")
            if plan == "keep" and current is not None:
                return current.model_copy(deep=True)
            self._uploads[record.upload_id] = record.model_copy(deep=True)
        return record

    def pair_upload(self, record: PendingUpload) -> PendingUpload | None:
        with self._lock:
            current = self._uploads.get(record.upload_id)
            plan = plan_pairing(current, record.refs)
            if plan == "busy":
                raise RegistryUnavailable(f"upload {record.upload_id}: a rejection is being announced")
            if plan == "refuse":
                return None
            paired = _paired(current, record, self._now())
            self._uploads[record.upload_id] = paired
            return paired.model_copy(deep=True)

    def pair_upload_with_job(
        self, upload_id: str, used: Mapping[str, str], *, job_id: str
    ) -> PendingUpload | None:
        with self._lock:
            paired = paired_with_job(self._uploads.get(upload_id), used, job_id=job_id, now=self._now())
            if paired is None:
                return None
            self._uploads[upload_id] = paired
            return paired.model_copy(deep=True)

    def get_upload(self, owner: str, upload_id: str) -> PendingUpload:
        with self._lock:
            return _owned(self._uploads, upload_id, owner, what="upload", field="upload_id")

    def list_uploads(
        self,
        owner: str,
        *,
        status: UploadStatus | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[PendingUpload]:
        with self._lock:
            chosen = [
                u.model_copy(deep=True)
                for u in self._uploads.values()
                if u.owner == owner and (status is None or u.status == status)
            ]
        return paginate(
            chosen,
            key=lambda u: chronological_key(u.created_at, u.upload_id),
            scope=json.dumps(["uploads", owner, status]),
            limit=limit,
            cursor=cursor,
        )

    def due_uploads(
        self, *, arrived_before: datetime, rejecting_before: datetime, limit: int = DEFAULT_PAGE_SIZE
    ) -> list[PendingUpload]:
        check_limit(limit)
        with self._lock:
            awaiting = [
                u
                for u in self._uploads.values()
                if u.status is UploadStatus.AWAITING and u.created_at < arrived_before
            ]
            stale = [
                u
                for u in self._uploads.values()
                if u.rejecting_since is not None and u.rejecting_since < rejecting_before
            ]
            due = sorted(awaiting, key=lambda u: chronological_key(u.created_at, u.upload_id))
            due += sorted(
                stale, key=lambda u: chronological_key(u.rejecting_since or u.created_at, u.upload_id)
            )
            return [u.model_copy(deep=True) for u in due[:limit]]

    def begin_upload_rejection(self, seen: PendingUpload, *, code: str, reason: str) -> PendingUpload | None:
        with self._lock:
            current = self._uploads.get(seen.upload_id)
            if current is None or not _same_round(current, seen):
                return None
            now = self._now()
            rejected = current.model_copy(
                update={
                    "status": UploadStatus.REJECTED,
                    "error_code": code,
                    "reason": reason[:4096],
                    "rejecting_since": now,
                    "updated_at": now,
                }
            )
            self._uploads[seen.upload_id] = rejected
            return rejected.model_copy(deep=True)

    def finish_upload_rejection(self, seen: PendingUpload, *, quarantine_key: str | None) -> None:
        with self._lock:
            current = self._uploads.get(seen.upload_id)
            if current is None or not _same_round(current, seen):
                return
            self._uploads[seen.upload_id] = current.model_copy(
                update={"quarantine_key": quarantine_key, "rejecting_since": None, "updated_at": self._now()}
            )


def _same_round(current: PendingUpload, seen: PendingUpload) -> bool:
    """Whether ``current`` is still the round ``seen`` was read from, in the state it had then."""
    return (current.status, current.key, current.revision, current.rejecting_since) == (
        seen.status,
        seen.key,
        seen.revision,
        seen.rejecting_since,
    ) and current.status is not UploadStatus.PAIRED


def _paired(current: PendingUpload | None, record: PendingUpload, now: datetime) -> PendingUpload:
    """The round PAIRED with ``record``'s halves and job: an AWAITING one keeps its first half."""
    if current is None or current.status is not UploadStatus.AWAITING:
        return record.model_copy(update={"status": UploadStatus.PAIRED, "rejecting_since": None})
    return current.model_copy(
        update={
            "status": UploadStatus.PAIRED,
            "refs": list(record.refs),
            "job_id": record.job_id,
            "paired_key": record.key,  # the half that came second
            "updated_at": now,
        }
    )
