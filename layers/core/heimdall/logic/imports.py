"""Use cases: importing a bundle through the API — inline, or by a presigned upload — and the S3 side.

Import through the API and through an S3 drop are the same logic: :func:`index_import` is what the
ingest function runs for every bundle dropped in the ingest bucket, and what :func:`import_inline`
runs synchronously on the object it has just stored. An object under
``bundles/imports/{import_id}/bundle.heimdall`` belongs to the import record of that id (its owner, its
component selection, and the record is settled INDEXED or REJECTED); any other bundle, or an import id
no record claims, is a direct drop owned by ``drop_owner``.

One import, one upload: the first object revision under an import's key claims the record (a
conditional write); a later upload with the same presigned form is refused (``UPLOAD_REUSED``:
quarantined, ``Bundle Rejected``, never indexed). Only the revision the notification names is read, and
no more bytes than the form promised (``upload_max_bytes``): neither the emulator, which ignores the
form's ``content-length-range``, nor S3 is relied on for that.

The inline path claims the object's identity (bucket, key, revision) before the S3 notification of the
same write reaches the ingest function, which then finds a duplicate. Should the notification win the
race, the inline call waits a little for the record it settles.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from heimdall.bundle.models import Component, ComponentSelection
from heimdall.domain.records import IMPORT_TERMINAL, ImportRecord, ImportStatus, ModelRecord
from heimdall.errors import (
    BundleError,
    InvalidBundle,
    ObjectNotFound,
    PayloadTooLarge,
    RecordNotFound,
    RequestInvalid,
    StorageError,
    TooLarge,
    UploadReused,
)
from heimdall.logic.api import ApiDeps, require_id
from heimdall.logic.bundles import BundleDeps, IndexOutcome, index_bundle, index_claim, reject_bundle
from heimdall.logic.once import run_once
from heimdall.triggers.s3 import ObjectCreated

__all__ = [
    "UPLOAD_EXPIRED",
    "UPLOAD_GRACE_S",
    "ImportResult",
    "PresignedUpload",
    "bundle_error",
    "get_import",
    "import_id_from_key",
    "import_inline",
    "import_key",
    "index_import",
    "selection_of",
    "start_presigned_import",
]

IMPORT_PREFIX = "bundles/imports/"
IMPORT_FILE = "bundle.heimdall"
_IMPORT_KEY = re.compile(r"^bundles/imports/(?P<id>[A-Za-z0-9][A-Za-z0-9._:-]{0,127})/bundle\.heimdall$")
_GZIP_MAGIC = b"\x1f\x8b"
#: How long after its upload URL expired a PENDING import waits for S3's notification before it is given up.
UPLOAD_GRACE_S = 300
#: The code of an import whose presigned upload never came.
UPLOAD_EXPIRED = "UPLOAD_EXPIRED"
#: How long an inline import waits for the ingest function when the S3 notification won the race.
RACE_WAIT_S = 20.0
_RACE_POLL_S = 0.25


@dataclass(frozen=True)
class ImportResult:
    """An import and, when it was indexed, the model it became."""

    record: ImportRecord
    model: ModelRecord | None


@dataclass(frozen=True)
class PresignedUpload:
    """An S3 form upload: POST ``fields`` plus the bundle as ``file`` to ``url`` before ``expires_at``."""

    url: str
    fields: dict[str, str]
    max_bytes: int
    expires_at: datetime


def import_key(import_id: str) -> str:
    """The ingest-bucket key an import's bundle is stored under."""
    return f"{IMPORT_PREFIX}{import_id}/{IMPORT_FILE}"


def import_id_from_key(key: str) -> str | None:
    """The import id in an import key (see :func:`import_key`), or None for any other key."""
    match = _IMPORT_KEY.match(key)
    return match["id"] if match else None


def selection_of(components: list[str] | None) -> ComponentSelection | None:
    """The selection keeping ``components`` (None: everything); unknown names → RequestInvalid."""
    if components is None:
        return None
    try:
        return ComponentSelection.only(components)
    except ValueError:
        known = ", ".join(c.value for c in Component)
        raise RequestInvalid(
            f"unknown component(s) in {','.join(components)[:200]!r}; known: {known}", field="components"
        ) from None


def _error_classes() -> dict[str, type[BundleError]]:
    classes: dict[str, type[BundleError]] = {}
    pending: list[type[BundleError]] = [BundleError]
    while pending:
        cls = pending.pop(0)
        classes.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return classes


def bundle_error(
    code: str | None, message: str | None, field: str | None = None, **details: object
) -> BundleError:
    """The typed bundle error of a rejection's ``code`` (``INVALID_BUNDLE`` for a code it has none of)."""
    cls = _error_classes().get(code or "", InvalidBundle)
    return cls(message or "the bundle was rejected", field=field, **details)


def index_import(obj: ObjectCreated, deps: BundleDeps) -> IndexOutcome:
    """Index a bundle dropped in the ingest bucket: an API import's upload, or a direct drop.

    An import key names an :class:`ImportRecord`; its owner and component selection apply and the
    record is settled with the outcome. Without one the bundle is owned by ``deps.drop_owner``.
    """
    import_id = import_id_from_key(obj.key)
    record: ImportRecord | None = None
    if import_id is not None:
        try:
            record = deps.registry.get_import_any_owner(import_id)
        except RecordNotFound:
            record = None  # someone used the layout by hand: a direct drop like any other
    if record is None:
        return index_bundle(obj, deps, owner=deps.drop_owner)
    # One import, one upload: the first revision to arrive claims it; any other is refused unread.
    claimed = deps.claims.claim_import_upload(record.import_id, obj.revision)
    if claimed is None:
        return _refuse_reuse(obj, deps, record)
    outcome = index_bundle(
        obj,
        deps,
        owner=claimed.owner,
        selection=selection_of(claimed.components),
        settle=lambda outcome: _settle(claimed, outcome, deps),
        max_bytes=claimed.upload_max_bytes,
    )
    if outcome.status == "gone":
        _settle_if_replaced(obj, claimed, deps)
    return outcome


def _refuse_reuse(obj: ObjectCreated, deps: BundleDeps, record: ImportRecord) -> IndexOutcome:
    """Quarantine and announce another upload under an import an earlier upload claimed (once)."""
    message = (
        f"import {record.import_id} already has its upload; an upload form takes one bundle: start "
        "another import for another one"
    )

    def refuse() -> IndexOutcome:
        return reject_bundle(
            obj, deps, owner=record.owner, job_id=None, code=UploadReused.code, message=message
        )

    return run_once(deps.claims, index_claim(obj), refuse, duplicate=IndexOutcome(status="duplicate"))


def _settle_if_replaced(obj: ObjectCreated, record: ImportRecord, deps: BundleDeps) -> None:
    """The claiming revision was overwritten before it was read: the import can have no model.

    Nothing else is indexed in its place (the later upload is refused as a reuse); a key with no
    object at all is left to :func:`_give_up_if_abandoned`.
    """
    try:
        deps.store.head(f"s3://{obj.bucket}/{obj.key}")
    except ObjectNotFound:
        return
    replaced = IndexOutcome(
        status="rejected",
        code=UploadReused.code,
        message=f"the upload of import {record.import_id} was overwritten by another one before it was read",
    )
    _settle(record, replaced, deps)


def _settle(record: ImportRecord, outcome: IndexOutcome, deps: BundleDeps) -> ImportRecord:
    now = deps.now()
    if outcome.status == "indexed" and outcome.model is not None:
        update: dict[str, object] = {"status": ImportStatus.INDEXED, "model_id": outcome.model.model_id}
    else:
        update = {
            "status": ImportStatus.REJECTED,
            "error_code": (outcome.code or InvalidBundle.code)[:64],
            "reason": (outcome.message or "the bundle was rejected")[:4096],
        }
    return deps.registry.put_import(record.model_copy(update={**update, "updated_at": now}))


def _check_size(size: int, deps: ApiDeps) -> None:
    if size > deps.limits.max_bundle_bytes:
        raise TooLarge(
            f"the bundle is {size} bytes, over the limit of {deps.limits.max_bundle_bytes}",
            field="size_bytes",
        )


def _new_record(deps: ApiDeps, owner: str, components: list[str] | None) -> ImportRecord:
    now = deps.now()
    import_id = str(uuid.uuid4())
    return ImportRecord(
        owner=owner,
        import_id=import_id,
        bucket=deps.names.ingest_bucket,
        key=import_key(import_id),
        components=None if components is None else list(dict.fromkeys(components)),
        created_at=now,
        updated_at=now,
    )


def import_inline(
    deps: ApiDeps, owner: str, body: bytes, *, components: list[str] | None = None
) -> ImportResult:
    """Import the bundle ``body`` (JSON or gzip) now; the same indexing an S3 drop gets.

    Raises PayloadTooLarge over the inline limit (use a presigned upload), RequestInvalid for unknown
    components, and the rejection's :class:`~heimdall.errors.BundleError` (with its code, and the
    ``import_id`` in its details) when the bundle is refused: the import record is then REJECTED and
    the upload quarantined.
    """
    if len(body) > deps.api.max_inline_bytes:
        raise PayloadTooLarge(
            f"the bundle is {len(body)} bytes, over the {deps.api.max_inline_bytes} bytes accepted inline; "
            "upload it with ?mode=presigned",
            field="body",
            max_bytes=deps.api.max_inline_bytes,
        )
    _check_size(len(body), deps)
    selection_of(components)  # refuse unknown names before storing anything
    record = _new_record(deps, owner, components)
    # The record first: whichever of this call and the S3 notification indexes the object finds it.
    deps.registry.put_import(record)
    uri = f"s3://{record.bucket}/{record.key}"
    content_type = "application/gzip" if body[:2] == _GZIP_MAGIC else "application/json"
    deps.store.put_bytes(uri, body, content_type=content_type)
    info = deps.store.head(uri)
    obj = ObjectCreated(
        bucket=deps.names.ingest_bucket,
        key=import_key(record.import_id),
        size=info.size,
        etag=info.etag,
        version_id=info.version_id,
        sequencer=None,
    )
    outcome = index_import(obj, deps.bundle_deps())
    if outcome.status == "gone":
        raise StorageError(f"the uploaded bundle {uri} disappeared before it was indexed")
    settled = deps.registry.get_import(owner, record.import_id)
    if outcome.status == "duplicate":  # the S3 notification got there first: wait for its result
        settled = _wait_for(lambda: deps.registry.get_import(owner, record.import_id))
    if settled.status is ImportStatus.REJECTED:
        raise bundle_error(settled.error_code, settled.reason, outcome.field, import_id=record.import_id)
    model = None
    if settled.status is ImportStatus.INDEXED and settled.model_id is not None:
        model = outcome.model or deps.registry.get_model(owner, settled.model_id)
    return ImportResult(record=settled, model=model)


def _wait_for(read: Callable[[], ImportRecord]) -> ImportRecord:
    deadline = time.monotonic() + RACE_WAIT_S
    record = read()
    while record.status not in IMPORT_TERMINAL and time.monotonic() < deadline:
        time.sleep(_RACE_POLL_S)
        record = read()
    return record


def start_presigned_import(
    deps: ApiDeps,
    owner: str,
    *,
    size_bytes: int,
    filename: str | None = None,
    components: list[str] | None = None,
) -> tuple[ImportRecord, PresignedUpload]:
    """Record a PENDING import and presign the form upload of its bundle (exactly 1..``size_bytes``).

    The upload's S3 notification reaches the ingest function, which settles the record
    (:func:`index_import`); ``GET /api/v1/imports/{import_id}`` follows it. ``filename`` is only
    checked: the stored key is fixed, and gzip is told by its magic bytes, not by a name.
    """
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes <= 0:
        raise RequestInvalid("size_bytes must be a positive number of bytes", field="size_bytes")
    if filename is not None and not 0 < len(filename) <= 1024:
        raise RequestInvalid("filename must be 1 to 1024 characters", field="filename")
    _check_size(size_bytes, deps)
    selection_of(components)
    record = _new_record(deps, owner, components)
    url, fields, expires_at = deps.store.presign_post(
        f"s3://{record.bucket}/{record.key}", max_bytes=size_bytes, expires_s=deps.api.presign_ttl_s
    )
    # Recorded before the URL is handed out, so the upload's notification always finds the record.
    # The cap is checked again on ingest: neither the emulator nor (to be safe) S3 is relied on for it.
    record = deps.registry.put_import(
        record.model_copy(update={"upload_expires_at": expires_at, "upload_max_bytes": size_bytes})
    )
    return record, PresignedUpload(url=url, fields=fields, max_bytes=size_bytes, expires_at=expires_at)


def get_import(deps: ApiDeps, owner: str, import_id: str) -> ImportRecord:
    """The owner's import (RecordNotFound for another owner's, or an id that cannot exist)."""
    require_id(import_id, what="import", field="import_id")
    return _give_up_if_abandoned(deps, deps.registry.get_import(owner, import_id))


def _give_up_if_abandoned(deps: ApiDeps, record: ImportRecord) -> ImportRecord:
    """A PENDING presigned import whose URL expired (plus a grace) with nothing uploaded: REJECTED.

    Without this a client that never uploads would leave its import PENDING for ever, and whoever
    follows it would wait for ever. An upload that did arrive is left to the ingest function.
    """
    deadline = record.upload_expires_at
    if record.status is not ImportStatus.PENDING or deadline is None:
        return record
    if deps.now() < deadline + timedelta(seconds=UPLOAD_GRACE_S):
        return record
    try:
        deps.store.head(f"s3://{record.bucket}/{record.key}")
    except ObjectNotFound:
        expired = record.model_copy(
            update={
                "status": ImportStatus.REJECTED,
                "error_code": UPLOAD_EXPIRED,
                "reason": f"no bundle was uploaded before the upload URL expired at {deadline.isoformat()}",
                "updated_at": deps.now(),
            }
        )
        return deps.registry.put_import(expired)  # a terminal record written meanwhile wins
    return record
