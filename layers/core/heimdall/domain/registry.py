"""The model registry: domain records, the export-job state machine, and the port logic talks to.

Records
    :class:`ModelRecord` (an indexed model: exported by a job or imported from a bundle),
    :class:`ExportJob` (one conversion job and its state), :class:`ImportRecord` (one bundle import).
    Every record has an ``owner``; every read is scoped by it, and another owner's record is reported
    exactly like a missing one (:class:`~heimdall.errors.RecordNotFound`).

The export-job state machine (DESIGN §6)
    ``PENDING → SUBMITTED → RUNNING → SUCCEEDED | FAILED | CANCELLED``, as :data:`ALLOWED` lists it;
    terminal states (:data:`TERMINAL`) are absorbing. :func:`plan_transition` says what a requested
    change means, and it distinguishes two kinds of "no":

    * **stale, ignore** — the event is a duplicate (target = current), late (the target lies *behind*
      the current state, e.g. ``RUNNING`` after ``SUCCEEDED``, ``SUBMITTED`` after ``RUNNING``), or the
      job is already terminal. Duplicated and out-of-order deliveries are normal (Batch and S3 events
      both), so these are not errors: the repository returns ``None`` and writes nothing.
    * **invalid** — the target lies *ahead* of the current state along a path the machine does not
      have (``PENDING → RUNNING``, ``PENDING → SUCCEEDED``): the registry has not yet recorded a step
      that must come first (typically ``SUBMITTED``, whose write is still in flight). This raises
      :class:`~heimdall.errors.InvalidTransition`, so the caller fails and its event is delivered
      again, by which time the missing step is usually recorded.

The port
    :class:`Registry` is what ``heimdall.logic`` depends on. :class:`InMemoryRegistry` is a faithful,
    thread-safe fake for unit tests; ``heimdall.adapters.dynamodb.registry.DynamoRegistry`` is the real thing.
    Both implement the same contract and are tested by one suite
    (``tests/integration/test_registry_contract.py``).

Listings are newest first (``created_at``, then id, descending) and paginated with an opaque cursor:
urlsafe base64 (unpadded) of a small JSON document ``{"v": 1, "p": {...}}`` naming the position after
which the next page starts. A cursor is checked before use: anything malformed, from another listing or
from another owner raises :class:`~heimdall.errors.InvalidCursor` (400), never a 500. A cursor holds
only key values of the caller's own listing, so it needs no signature: tampering can at worst move the
start of the caller's own page.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from types import MappingProxyType
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator

# OpsetUpgrade lives with the job contract: a bundle job's result.json records one too.
from heimdall.contracts.jobs import ConversionResult, FormatStatus, JobSource, OpsetUpgrade
from heimdall.errors import (
    ConflictError,
    InvalidCursor,
    InvalidPagination,
    InvalidTransition,
    RecordNotFound,
    RegistryUnavailable,
)
from heimdall.types import ExportFormat, Shape

__all__ = [
    "ALLOWED",
    "DEFAULT_PAGE_SIZE",
    "IMPORTED_SUFFIX",
    "IMPORT_TERMINAL",
    "MAX_PAGE_SIZE",
    "TERMINAL",
    "ExportJob",
    "FormatSummary",
    "ImportRecord",
    "ImportStatus",
    "InMemoryRegistry",
    "JobResultSummary",
    "JobStatus",
    "MetricsSummary",
    "ModelRecord",
    "OpsetUpgrade",
    "Page",
    "PendingUpload",
    "Registry",
    "UploadHalf",
    "UploadStatus",
    "check_limit",
    "check_ttl",
    "chronological_key",
    "decode_cursor",
    "dump_job_field_json",
    "encode_cursor",
    "epoch_seconds",
    "half_ref",
    "imported_display_name",
    "paginate",
    "paired_with_job",
    "plan_await",
    "plan_pairing",
    "plan_transition",
    "sources_of",
    "upload_id_for",
    "utcnow",
    "validate_job_updates",
]

IMPORTED_SUFFIX = " (Imported)"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Longest cursor accepted; a real one is a few hundred characters.
MAX_CURSOR_CHARS = 4096

#: An id: a uuid, a job id (see ``JobSpec.job_id``), or an import id. No ``/``, ``#`` or spaces.
RecordId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
#: The caller's identity (a JWT subject, or ``"system"`` for records made by the pipeline itself).
Owner = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Reason = Annotated[str, StringConstraints(max_length=4096)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of timestamp records hold)."""
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken to be UTC; aware ones are converted to it."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def chronological_key(created_at: datetime, record_id: str) -> str:
    """A string that sorts like ``(created_at, record_id)``: fixed-width UTC time, then the id.

    Both registries order listings by it (newest first), so they agree on ties to the microsecond.
    """
    return f"{_as_utc(created_at).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}#{record_id}"


def imported_display_name(model_name: str) -> str:
    """The display name of an imported model: ``model_name`` with the `` (Imported)`` suffix, once."""
    return model_name if model_name.endswith(IMPORTED_SUFFIX) else f"{model_name}{IMPORTED_SUFFIX}"


# --------------------------------------------------------------------------------------------------
# Records


class _Record(BaseModel):
    """Common configuration of stored records.

    Unknown fields are ignored on read, so that a record written by a newer release (during a rolling
    deploy) still loads. Timestamps are normalised to aware UTC.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    owner: Owner
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @field_validator("created_at", "updated_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return _as_utc(value)


class MetricsSummary(BaseModel):
    """The headline figures of a model, as listings show them (from the bundle's performance metrics)."""

    model_config = ConfigDict(extra="ignore")

    final_train_loss: float | None = None
    final_val_loss: float | None = None
    final_train_accuracy: float | None = None
    final_val_accuracy: float | None = None
    best_epoch: int | None = None
    inference_latency_ms: float | None = None
    onnx_speedup_factor: float | None = None


class ModelRecord(_Record):
    """An indexed model version: exported by one of our jobs, or imported from someone's bundle.

    Imports get a new ``model_id``, keep the sender's id in ``original_model_id``, and are shown as
    ``display_name`` = ``model_name`` + `` (Imported)`` (:func:`imported_display_name`); ``model_name``
    itself stays the original so that name/version look-ups match across instances.
    """

    model_id: RecordId
    model_name: Name
    version: Name
    architecture: Name | None = None
    source: Literal["export", "import"] = "export"
    original_model_id: str | None = Field(default=None, max_length=256)
    display_name: Name | None = None
    #: Keys in the artifacts bucket.
    onnx_key: str | None = Field(default=None, max_length=1024)
    onnx_sha256: Sha256Hex | None = None
    onnx_size_bytes: int | None = Field(default=None, ge=0)
    bundle_key: str | None = Field(default=None, max_length=1024)
    opset: int | None = Field(default=None, ge=1, le=1000)
    input_shape: Shape | None = None
    #: One shape per graph output, in graph order.
    output_shape: list[Shape] | None = None
    #: The optional bundle components present (``training_config``, ``performance_metrics``, ...).
    components: list[str] = Field(default_factory=list)
    metrics: MetricsSummary = Field(default_factory=MetricsSummary)
    #: The export job that produced the model (exports only).
    export_job_id: str | None = Field(default=None, max_length=128)
    #: Whether ONNX Runtime can serve the model (as stamped, or its ``opset_upgrade``); when false,
    #: ``not_servable_reason`` says why and no platform endpoint of it is created. Records indexed
    #: before this check existed read as servable.
    servable: bool = True
    not_servable_reason: str | None = Field(default=None, max_length=1024)
    #: The conversion to a newer opset, when indexing had to try one (successful or not).
    opset_upgrade: OpsetUpgrade | None = None

    def served_onnx(self) -> tuple[str | None, str | None]:
        """The key and sha256 of the ONNX model an endpoint serves: the upgraded copy, if any."""
        upgrade = self.opset_upgrade
        if upgrade is not None and upgrade.result == "upgraded" and upgrade.onnx_key:
            return upgrade.onnx_key, upgrade.onnx_sha256
        return self.onnx_key, self.onnx_sha256

    def model_post_init(self, __context: Any) -> None:
        """An unset display name is the model name (with the import suffix for imports)."""
        if self.display_name is None:
            name = imported_display_name(self.model_name) if self.source == "import" else self.model_name
            object.__setattr__(self, "display_name", name)


class JobStatus(enum.StrEnum):
    """States of an export job (DESIGN §6)."""

    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class FormatSummary(BaseModel):
    """One requested format's outcome, as the registry keeps it (the full detail stays in result.json)."""

    model_config = ConfigDict(extra="ignore")

    format: ExportFormat
    status: FormatStatus
    reason: str | None = Field(default=None, max_length=1024)
    file: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None


class JobResultSummary(BaseModel):
    """What a finished job's ``result.json`` said, small enough to live in the job record."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["SUCCEEDED", "FAILED"]
    error_code: str | None = None
    error_message: str | None = Field(default=None, max_length=4096)
    formats: list[FormatSummary] = Field(default_factory=list)
    bundle_file: str | None = None
    package_file: str | None = None
    #: ONNX Runtime over PyTorch, per batch size (``{"1": 2.1, "32": 1.7}``).
    speedup: dict[str, float] = Field(default_factory=dict)
    finished_at: datetime | None = None

    @classmethod
    def from_result(cls, result: ConversionResult) -> JobResultSummary:
        """Summarise ``result.json``."""
        message = result.error_message
        return cls(
            status=result.status,
            error_code=result.error_code,
            error_message=message[:4096] if message else None,
            formats=[
                FormatSummary(
                    format=o.format,
                    status=o.status,
                    reason=o.reason[:1024] if o.reason else None,
                    file=o.file,
                    sha256=o.sha256,
                    size_bytes=o.size_bytes,
                )
                for o in result.formats
            ],
            bundle_file=result.bundle_file,
            package_file=result.package_file,
            speedup=dict(result.benchmark.speedup) if result.benchmark else {},
            finished_at=result.finished_at,
        )


class ExportJob(_Record):
    """One conversion job: what it converts, where its outputs go, and where it is in its life."""

    job_id: RecordId
    model_name: Name
    version: Name
    status: JobStatus = JobStatus.PENDING
    #: What it converts: a checkpoint, or (``bundle``) the stored bundle of an imported model, whose key
    #: is then in ``checkpoint_bucket``/``checkpoint_key`` and whose model is ``model_id`` from the start.
    source: JobSource = "checkpoint"
    checkpoint_bucket: Name
    checkpoint_key: str = Field(min_length=1, max_length=1024)
    manifest_key: str | None = Field(default=None, max_length=1024)
    formats: list[ExportFormat] = Field(default_factory=list)
    batch_job_id: str | None = Field(default=None, max_length=256)
    #: ``s3://bucket/exports/{job_id}/`` (deterministic: a re-run overwrites the same keys).
    output_prefix: str | None = Field(default=None, max_length=1024)
    #: Why it failed or was cancelled.
    reason: Reason | None = None
    exit_code: int | None = None
    result: JobResultSummary | None = None
    #: The model indexed from the job's bundle, once it is (a bundle job: the model it converts).
    model_id: str | None = Field(default=None, max_length=128)
    #: Managed by ``set_default_export`` only: at most one default per (owner, model_name, version).
    is_default: bool = False
    attempts: int = Field(default=0, ge=0)


class ImportStatus(enum.StrEnum):
    """States of a bundle import: ``PENDING → INDEXED | REJECTED`` (both terminal)."""

    PENDING = "PENDING"
    INDEXED = "INDEXED"
    REJECTED = "REJECTED"


class ImportRecord(_Record):
    """One bundle import, followed by ``GET /api/v1/imports/{import_id}``."""

    import_id: RecordId
    status: ImportStatus = ImportStatus.PENDING
    #: The model it became (``INDEXED`` only).
    model_id: str | None = Field(default=None, max_length=128)
    reason: Reason | None = None
    error_code: str | None = Field(default=None, max_length=64)
    bucket: str | None = Field(default=None, max_length=256)
    key: str | None = Field(default=None, max_length=1024)
    #: The optional components to keep (names of ``heimdall.bundle.models.Component``); None: all.
    components: list[str] | None = Field(default=None, max_length=16)
    #: When the presigned upload URL of a presigned import stops working (None for inline imports).
    upload_expires_at: datetime | None = None
    #: The largest upload the presigned form promised to take (checked again when it is ingested).
    upload_max_bytes: int | None = Field(default=None, ge=1)
    #: The revision (version id, else ETag) of the object that claimed the import: one import, one
    #: upload; any other revision under its key is refused (``UPLOAD_REUSED``).
    upload_revision: str | None = Field(default=None, max_length=1024)

    @field_validator("upload_expires_at")
    @classmethod
    def _utc_or_none(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _as_utc(value)


# --------------------------------------------------------------------------------------------------
# Half pairs: a checkpoint or manifest waiting for the other half


class UploadStatus(enum.StrEnum):
    """States of a half pair's round: ``AWAITING → PAIRED | REJECTED`` (both settle the round)."""

    AWAITING = "AWAITING"
    PAIRED = "PAIRED"
    REJECTED = "REJECTED"


#: Which half of a pair an object is.
UploadHalf = Literal["checkpoint", "manifest"]
_UPLOAD_NAMESPACE = uuid.UUID("0f4b7c1e-6a2d-4e8b-9c3f-2d5e7a9b1c4d")


def upload_id_for(bucket: str, prefix: str) -> str:
    """The id of the pair under ``prefix`` (``checkpoints/{model_name}/{version}/``) of ``bucket``.

    Derived from the sender's own S3 prefix, so both halves find the same record; never used as a key.
    """
    return str(uuid.uuid5(_UPLOAD_NAMESPACE, f"{bucket}/{prefix}"))


def half_ref(bucket: str, key: str, revision: str) -> str:
    """The identity of one revision of one half (what a round's ``refs`` hold)."""
    return hashlib.sha256(json.dumps([bucket, key, revision]).encode()).hexdigest()


class PendingUpload(_Record):
    """The pair under one ``checkpoints/{model_name}/{version}/`` prefix: a half that arrived alone waits
    (``AWAITING``) until the other half comes (``PAIRED``, the job started) or the sweep gives up on it
    (``REJECTED``, ``INCOMPLETE_UPLOAD``). One record per prefix; a later lone half starts a new round.

    ``created_at`` is when the round's first half arrived.
    """

    upload_id: RecordId
    status: UploadStatus = UploadStatus.AWAITING
    bucket: Name
    prefix: str = Field(min_length=1, max_length=1024)
    #: From the prefix (display only).
    model_name: Name
    version: Name
    #: The half that arrived first, and which revision of it.
    half: UploadHalf
    key: str = Field(min_length=1, max_length=1024)
    revision: Name
    version_id: str | None = Field(default=None, max_length=1024)
    etag: str | None = Field(default=None, max_length=256)
    size_bytes: int | None = Field(default=None, ge=0)
    #: :func:`half_ref` of each half of this round, the one that arrived first first.
    refs: list[Sha256Hex] = Field(min_length=1, max_length=2)
    #: PAIRED: the job the pair started, and the key of the other half than ``key``.
    job_id: str | None = Field(default=None, max_length=128)
    paired_key: str | None = Field(default=None, max_length=1024)
    #: REJECTED: why, and where the original was kept (once announced).
    error_code: str | None = Field(default=None, max_length=64)
    reason: Reason | None = None
    quarantine_key: str | None = Field(default=None, max_length=1024)
    #: REJECTED whose quarantine copy and event are still being made, since when (None once done).
    rejecting_since: datetime | None = None

    @field_validator("rejecting_since")
    @classmethod
    def _utc_or_none(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _as_utc(value)

    @property
    def missing(self) -> UploadHalf:
        """The half the round waits (or waited) for."""
        return "manifest" if self.half == "checkpoint" else "checkpoint"


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


# --------------------------------------------------------------------------------------------------
# The export-job state machine

TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ALLOWED: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        JobStatus.PENDING: frozenset({JobStatus.SUBMITTED, JobStatus.FAILED, JobStatus.CANCELLED}),
        JobStatus.SUBMITTED: frozenset(
            {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
        ),
        JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    }
)
#: How far along a state is; a target of lower rank than the current state is a late event.
_RANK: Mapping[JobStatus, int] = {
    JobStatus.PENDING: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.RUNNING: 2,
    **{status: 3 for status in TERMINAL},
}
IMPORT_TERMINAL: frozenset[ImportStatus] = frozenset({ImportStatus.INDEXED, ImportStatus.REJECTED})

TransitionPlan = Literal["apply", "ignore"]


def plan_transition(current: JobStatus, target: JobStatus) -> TransitionPlan:
    """What moving a job from ``current`` to ``target`` means.

    ``"apply"``: an edge of the machine. ``"ignore"``: stale — a duplicate, a late event, or a job that
    is already terminal (terminal states are absorbing). Raises :class:`InvalidTransition` for a target
    ahead of ``current`` along no edge (``PENDING → RUNNING``): a step is missing, retry later.
    """
    if target in ALLOWED.get(current, frozenset()):
        return "apply"
    if current in TERMINAL or target == current or _RANK[target] < _RANK[current]:
        return "ignore"
    raise InvalidTransition(
        f"an export job cannot go from {current} to {target}: a step is missing, retry later",
        field="status",
        current=str(current),
    )


@cache
def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The states from which ``target`` may be reached (the condition of a transition's write)."""
    return frozenset(source for source, targets in ALLOWED.items() if target in targets)


#: Fields a transition may not set: identity, keys of the listings, and what the registry manages.
_PROTECTED_JOB_FIELDS = frozenset(
    {"job_id", "owner", "model_name", "version", "status", "created_at", "updated_at", "is_default"}
)


@cache
def _job_field_adapter(name: str) -> TypeAdapter[Any]:
    info = ExportJob.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        # The field's type with its constraints (max_length, ge, ...), as the model validates it.
        annotation = Annotated[(annotation, *info.metadata)]
    return TypeAdapter(annotation)


def validate_job_updates(updates: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the fields a transition sets along with the status, returning them parsed.

    Unknown or protected fields raise ``ValueError`` (a programming error of the caller).
    """
    parsed: dict[str, Any] = {}
    for name, value in updates.items():
        if name not in ExportJob.model_fields or name in _PROTECTED_JOB_FIELDS:
            raise ValueError(f"a transition cannot set {name!r}")
        parsed[name] = _job_field_adapter(name).validate_python(value)
    return parsed


def dump_job_field_json(name: str, value: Any) -> bytes:
    """A validated value of the job field ``name`` as JSON, exactly as the record would serialise it."""
    return _job_field_adapter(name).dump_json(value)


# --------------------------------------------------------------------------------------------------
# Pagination

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, newest first; ``cursor`` is ``None`` on the last page."""

    items: list[T] = field(default_factory=list)
    cursor: str | None = None


_CURSOR_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")


def encode_cursor(position: Mapping[str, str]) -> str:
    """An opaque cursor holding ``position`` (string fields only)."""
    document = json.dumps({"v": 1, "p": dict(position)}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(document.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, *, fields: Collection[str]) -> dict[str, str]:
    """The position in ``cursor``, which must hold exactly ``fields``, all strings.

    Raises :class:`InvalidCursor` for anything else: bad base64, not JSON, wrong shape or version.
    """
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("the cursor is empty or too long", field="cursor")
    if _CURSOR_CHARS.match(cursor) is None:
        raise InvalidCursor("the cursor is not urlsafe base64", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("the cursor is not one this registry issued", field="cursor") from None
    position = document.get("p") if isinstance(document, dict) and document.get("v") == 1 else None
    if (
        not isinstance(position, dict)
        or set(position) != set(fields)
        or not all(isinstance(value, str) and 0 < len(value) <= 2048 for value in position.values())
    ):
        raise InvalidCursor("the cursor is not one this registry issued", field="cursor")
    return position


def check_limit(limit: int) -> int:
    """``limit`` if it is a page size the registries serve, else :class:`InvalidPagination`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidPagination(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
    return limit


# --------------------------------------------------------------------------------------------------
# The port


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
        (see :func:`plan_transition`), RecordNotFound for an unknown job.
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

    def claim_import_upload(self, import_id: str, revision: str) -> ImportRecord | None:
        """Let the object revision ``revision`` claim the import (atomically, the first one wins).

        Returns the record as claimed: by this revision now, or by this revision before (a
        redelivery). None when another revision holds it. RecordNotFound for an unknown import.
        """
        ...

    def claim_once(self, key: str, ttl_s: int) -> bool:
        """True the first time ``key`` is claimed (for ``ttl_s`` seconds), False while it is held.

        Safe under concurrency: of simultaneous claims exactly one wins. An expired claim can be
        claimed again.
        """
        ...

    def release_claim(self, key: str) -> None:
        """Give a claim back (the work it guarded failed and should be retried)."""
        ...

    def is_claimed(self, key: str) -> bool:
        """Whether ``key`` is currently claimed (held and not expired); claims nothing."""
        ...

    def claim_request(self, key: str, fingerprint: str) -> str:
        """The fingerprint of the first request ``key`` stood for: ``fingerprint`` if this call is the
        first (it is recorded), else the one recorded then.

        Safe under concurrency: simultaneous first calls all get the winner's. Unlike claims, the record
        does not expire: a key stands for its request as long as what the request made exists.
        """
        ...

    # half pairs (see :class:`PendingUpload`) ------------------------------------------------------

    def await_upload(self, record: PendingUpload) -> PendingUpload:
        """Record the lone half ``record`` (AWAITING) unless its prefix's round already covers it.

        Kept as it is (and returned): an AWAITING round (its first half's clock runs on), or a settled
        round that holds this half. A settled round of other halves is replaced by the new one. Raises
        RegistryUnavailable (retryable) while a rejection of the prefix is still being announced.
        Atomic against :meth:`pair_upload` and :meth:`begin_upload_rejection` (:func:`plan_await`).
        """
        ...

    def pair_upload(self, record: PendingUpload) -> PendingUpload | None:
        """Settle the prefix's round PAIRED with the halves ``record.refs`` and ``record.job_id``.

        An AWAITING round keeps when and which half arrived first; with no round yet ``record`` is
        written as it is. None (nothing written) when the round was REJECTED with one of these halves:
        the pair must not start. Raises RegistryUnavailable while a rejection is being announced.
        Atomic against the sweep's :meth:`begin_upload_rejection` (:func:`plan_pairing`).
        """
        ...

    def pair_upload_with_job(
        self, upload_id: str, used: Mapping[str, str], *, job_id: str
    ) -> PendingUpload | None:
        """Settle the round ``upload_id`` PAIRED with ``job_id`` if it is AWAITING one of the halves
        ``used`` (:func:`half_ref` → key) that a job started through the API converts; else None and
        nothing written (no round, another half, already settled, or REJECTED by the sweep). The
        round keeps its owner. Atomic against :meth:`begin_upload_rejection` (:func:`paired_with_job`).
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


# --------------------------------------------------------------------------------------------------
# The in-memory fake


def epoch_seconds(moment: datetime) -> int:
    """``moment`` as whole Unix seconds (DynamoDB's TTL format)."""
    return int(_as_utc(moment).timestamp())


def check_ttl(ttl_s: int) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise ValueError("ttl_s must be a positive number of seconds")
    return ttl_s


def paginate(
    items: Iterable[T], *, key: Callable[[T], str], scope: str, limit: int, cursor: str | None
) -> Page[T]:
    """Newest-first page of ``items`` after ``cursor`` (for stores that hold everything in memory)."""
    check_limit(limit)
    ordered = sorted(items, key=key, reverse=True)
    if cursor is not None:
        position = decode_cursor(cursor, fields=("scope", "after"))
        if position["scope"] != scope:
            raise InvalidCursor("the cursor belongs to another listing", field="cursor")
        ordered = [item for item in ordered if key(item) < position["after"]]
    if len(ordered) <= limit:
        return Page(items=ordered)
    page = ordered[:limit]
    return Page(items=page, cursor=encode_cursor({"scope": scope, "after": key(page[-1])}))


_R = TypeVar("_R", ModelRecord, ExportJob, ImportRecord, PendingUpload)


def _owned(records: Mapping[str, _R], record_id: str, owner: str | None, *, what: str, field: str) -> _R:
    """A copy of ``owner``'s record (``None``: whoever owns it); another owner's record is not found,
    like a missing one."""
    record = records.get(record_id)
    if record is None or (owner is not None and record.owner != owner):
        raise RecordNotFound(f"{what} {record_id} not found", field=field)
    return record.model_copy(deep=True)


class InMemoryRegistry:
    """A thread-safe, in-process :class:`Registry` with the same semantics as the DynamoDB one.

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
