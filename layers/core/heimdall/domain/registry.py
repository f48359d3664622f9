"""The model registry: the port ``heimdall.logic`` stores its records through.

:class:`Registry` keeps the records of :mod:`heimdall.domain.records`: models, export jobs (moved along
:mod:`heimdall.domain.job_states`), imports, and half pairs (settled by :mod:`heimdall.domain.uploads`),
read owner-scoped and listed as :mod:`heimdall.domain.paging` pages. The idempotency claims are a port of
their own (:class:`heimdall.domain.claims.IdempotencyClaims`). ``heimdall.adapters.dynamodb.registry``
implements both on one table; ``heimdall.testing.registry.InMemoryRegistry`` is a faithful fake of both
for unit tests, and one suite (``tests/integration/test_registry_contract.py``) tests the two alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.records import (
    ExportJob,
    ImportRecord,
    JobStatus,
    ModelRecord,
    PendingUpload,
    UploadStatus,
)

__all__ = ["Registry"]


class Registry(Protocol):
    """The model registry as ``heimdall.logic`` sees it.

    Errors: :class:`~heimdall.errors.RecordNotFound` (404) for a missing record or another owner's,
    :class:`~heimdall.errors.ConflictError` (409), :class:`~heimdall.errors.InvalidTransition` (409),
    :class:`~heimdall.errors.InvalidCursor` / :class:`~heimdall.errors.InvalidPagination` (400); a
    real store also raises :class:`~heimdall.errors.RegistryUnavailable` (503, retryable).
    """

    def put_model(self, record: ModelRecord) -> ModelRecord:
        """Create or replace a model record. Another owner's id raises ConflictError."""
        ...

    def get_model(self, owner: str, model_id: str) -> ModelRecord:
        """The model, if ``owner`` has it; else RecordNotFound."""
        ...

    def delete_model(self, owner: str, model_id: str) -> None:
        """Delete the model; RecordNotFound if ``owner`` has no such model."""
        ...

    def list_models(
        self,
        owner: str,
        *,
        name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ModelRecord]:
        """The owner's models (of one ``name`` if given), newest first."""
        ...

    def find_model_by_name_version(self, owner: str, name: str, version: str) -> ModelRecord | None:
        """The newest of the owner's models with this name and version, or None."""
        ...

    def create_export_job(self, job: ExportJob) -> ExportJob:
        """Record a new job; ConflictError if the id exists (whoever owns it)."""
        ...

    def get_export_job(self, owner: str, job_id: str) -> ExportJob:
        """The job, if ``owner`` has it; else RecordNotFound."""
        ...

    def get_export_job_any_owner(self, job_id: str) -> ExportJob:
        """The job whoever owns it: for the job-state Lambda, whose Batch events carry no owner.

        Never expose this to a caller-facing path.
        """
        ...

    def list_export_jobs(
        self,
        owner: str,
        *,
        model_name: str | None = None,
        status: JobStatus | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ExportJob]:
        """The owner's jobs, optionally of one model name and/or in one status, newest first."""
        ...

    def transition_export_job(
        self, job_id: str, target: JobStatus, *, updates: Mapping[str, Any] | None = None
    ) -> ExportJob | None:
        """Move the job to ``target`` (setting ``updates`` too) if the state machine allows it.

        Atomic: applied only if, at the moment of the write, the current state has an edge to
        ``target``. Returns the updated job, or ``None`` when the change is stale (duplicate, late, or
        the job is terminal) and nothing was written. Raises InvalidTransition when a step is missing
        (see :func:`~heimdall.domain.job_states.plan_transition`), RecordNotFound for an unknown job.
        """
        ...

    def record_job_model(self, job_id: str, model_id: str) -> None:
        """Note on the job the model its bundle was indexed as, whatever the job's state.

        The bundle is indexed from the job's own output, usually after the job reached SUCCEEDED, so
        this is not a state transition. RecordNotFound for an unknown job.
        """
        ...

    def set_default_export(self, owner: str, job_id: str) -> ExportJob:
        """Make a SUCCEEDED job the default export of its (model_name, version), clearing the previous one.

        ConflictError if the job has not succeeded.
        """
        ...

    def get_default_export(self, owner: str, model_name: str, version: str) -> ExportJob | None:
        """The default export of the owner's (model_name, version), if one was set."""
        ...

    def put_import(self, record: ImportRecord) -> ImportRecord:
        """Create or update an import; a terminal import (INDEXED, REJECTED) is never overwritten.

        Returns the record as stored: ``record`` itself, or the terminal record already there.
        """
        ...

    def get_import(self, owner: str, import_id: str) -> ImportRecord:
        """The import, if ``owner`` has it; else RecordNotFound."""
        ...

    def get_import_any_owner(self, import_id: str) -> ImportRecord:
        """The import whoever owns it: for the ingest function, whose S3 events carry no owner.

        Never expose this to a caller-facing path.
        """
        ...

    # half pairs (see :class:`~heimdall.domain.records.PendingUpload`) ----------------------------------

    def await_upload(self, record: PendingUpload) -> PendingUpload:
        """Record the lone half ``record`` (AWAITING) unless its prefix's round already covers it.

        Kept as it is (and returned): an AWAITING round (its first half's clock runs on), or a settled
        round that holds this half. A settled round of other halves is replaced by the new one. Raises
        RegistryUnavailable (retryable) while a rejection of the prefix is still being announced.
        Atomic against :meth:`pair_upload` and :meth:`begin_upload_rejection`
        (:func:`~heimdall.domain.uploads.plan_await`).
        """
        ...

    def pair_upload(self, record: PendingUpload) -> PendingUpload | None:
        """Settle the prefix's round PAIRED with the halves ``record.refs`` and ``record.job_id``.

        An AWAITING round keeps when and which half arrived first; with no round yet ``record`` is
        written as it is. None (nothing written) when the round was REJECTED with one of these halves:
        the pair must not start. Raises RegistryUnavailable while a rejection is being announced.
        Atomic against the sweep's :meth:`begin_upload_rejection`
        (:func:`~heimdall.domain.uploads.plan_pairing`).
        """
        ...

    def pair_upload_with_job(
        self, upload_id: str, used: Mapping[str, str], *, job_id: str
    ) -> PendingUpload | None:
        """Settle the round ``upload_id`` PAIRED with ``job_id`` if it is AWAITING one of the halves
        ``used`` (:func:`~heimdall.domain.uploads.half_ref` → key) that a job started through the API
        converts; else None and nothing written (no round, another half, already settled, or REJECTED
        by the sweep). The round keeps its owner. Atomic against :meth:`begin_upload_rejection`
        (:func:`~heimdall.domain.uploads.paired_with_job`).
        """
        ...

    def get_upload(self, owner: str, upload_id: str) -> PendingUpload:
        """The round, if ``owner`` has it; else RecordNotFound."""
        ...

    def list_uploads(
        self,
        owner: str,
        *,
        status: UploadStatus | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[PendingUpload]:
        """The owner's rounds (in one status if given), newest first."""
        ...

    def due_uploads(
        self, *, arrived_before: datetime, rejecting_before: datetime, limit: int = DEFAULT_PAGE_SIZE
    ) -> list[PendingUpload]:
        """Whoever owns them, oldest first: AWAITING rounds whose half arrived before ``arrived_before``,
        and REJECTED ones whose announcement started before ``rejecting_before`` and never finished.

        For the sweep only; never expose it to a caller-facing path.
        """
        ...

    def begin_upload_rejection(self, seen: PendingUpload, *, code: str, reason: str) -> PendingUpload | None:
        """Move the round ``seen`` (AWAITING, or REJECTED with a stale announcement) to REJECTED with
        ``rejecting_since`` now, if it is still exactly as seen; else None (a pairing or another sweep
        won). Of a rejection and a pairing racing, exactly one is written."""
        ...

    def finish_upload_rejection(self, seen: PendingUpload, *, quarantine_key: str | None) -> None:
        """Note a rejection ``seen`` (from :meth:`begin_upload_rejection`) announced; ignored when the
        round has moved on since (another sweep took the announcement over)."""
        ...
