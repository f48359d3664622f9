"""Use case: index a `.heimdall` bundle — an upload (an import) or a conversion job's own bundle.

Both validation passes run before anything is recorded. A valid bundle gets a registry record, its ONNX
model copied to its place in the artifacts bucket, a canonical copy of the bundle stored, and a
``Bundle Indexed`` event. A bad one is copied to ``quarantine/{date}/{id}/original`` with a
``reason.json`` beside it (the original is never deleted) and a ``Bundle Rejected`` event goes out.

Idempotent per (bucket, key, version id or etag): the same notification delivered twice, concurrently
or an hour later is indexed once, and the ids derived from that identity are the same on a retry. A
storage or event failure releases the claim and propagates, so SQS delivers the message again; a
refusal of the bundle (a typed bundle or validation error), at whatever stage, is a rejection: a retry
could never succeed. Keys are made of ids only (``imported/{model_id}/model.onnx``,
``bundles/{model_id}/bundle.heimdall``): the sender's names are display text.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from heimdall.bundle.models import ComponentSelection
from heimdall.bundle.upgrade import check_serving, upgraded_key
from heimdall.bundle.verify import verify_bundle
from heimdall.bundle.writer import write_bundle
from heimdall.domain.claims import IdempotencyClaims
from heimdall.domain.records import MetricsSummary, ModelRecord, utcnow
from heimdall.domain.registry import Registry
from heimdall.domain.storage import ObjectStore
from heimdall.errors import BundleError, InvalidBundle, ObjectNotFound, RecordNotFound, TooLarge
from heimdall.events import BundleIndexed, BundleRejected, EventSink, idempotency_key_for, make_event
from heimdall.logic.once import run_once
from heimdall.settings import BundleLimits, ResourceNames
from heimdall.triggers.s3 import ObjectCreated

_ID_NAMESPACE = uuid.UUID("5d8d3a8e-3f43-4b9c-8c2e-6a9f0f1e2d4b")
#: Where indexed models' ONNX files live in the artifacts bucket (the inference function reads them).
EXPORTED_ONNX_PREFIX = "models/"
IMPORTED_ONNX_PREFIX = "imported/"
BUNDLE_ONNX_PREFIXES = (EXPORTED_ONNX_PREFIX, IMPORTED_ONNX_PREFIX)
#: Where indexed bundles live in the artifacts bucket (an imported model's export job reads its own).
INDEXED_BUNDLE_PREFIX = "bundles/"
#: The file names under a model's folder (``{prefix}{model_id}/``): fixed, never the sender's names.
ONNX_FILE = "model.onnx"
BUNDLE_FILE = "bundle.heimdall"


@dataclass(frozen=True)
class BundleDeps:
    """The collaborators of bundle indexing (ports: real adapters in Lambda, fakes in unit tests)."""

    registry: Registry
    #: The idempotency claims (the registry's table in AWS: the same object as ``registry``).
    claims: IdempotencyClaims
    store: ObjectStore
    events: EventSink
    names: ResourceNames
    limits: BundleLimits
    now: Callable[[], datetime] = utcnow
    workdir: Path | None = None  # where bundles are downloaded (Lambda: /tmp)
    #: Owner of bundles dropped without a caller identity (``Settings.drop_owner``).
    drop_owner: str = "system"


@dataclass(frozen=True)
class IndexOutcome:
    status: Literal["indexed", "rejected", "duplicate", "gone"]
    model: ModelRecord | None = None
    code: str | None = None
    message: str | None = None
    #: The field of the bundle a rejection is about, when the check knew it.
    field: str | None = None
    quarantine_key: str | None = None


def index_bundle(
    obj: ObjectCreated,
    deps: BundleDeps,
    *,
    owner: str,
    job_id: str | None = None,
    selection: ComponentSelection | None = None,
    settle: Callable[[IndexOutcome], object] | None = None,
    max_bytes: int | None = None,
) -> IndexOutcome:
    """Validate and index the bundle ``obj``; ``job_id`` marks a conversion job's own bundle.

    ``selection`` keeps only some optional components in the stored bundle and the record (an import
    that asked for a subset); the ONNX model is never changed. ``settle`` is called with the outcome
    (indexed or rejected) as part of the work, so that it is retried with it and a duplicate delivery
    finds it done. ``max_bytes`` lowers the size limit (what a presigned upload form promised); only
    the revision the notification names is read.
    """
    claim = index_claim(obj)

    def work() -> IndexOutcome:
        try:
            outcome = _index(
                obj, deps, owner=owner, job_id=job_id, claim=claim, selection=selection, max_bytes=max_bytes
            )
        except (BundleError, ValidationError) as exc:
            # However late it comes, a refusal of the bundle itself cannot succeed on a retry: it is
            # quarantined and the notification succeeds. Storage, registry and bus failures propagate.
            code, message, field = _refusal(exc)
            outcome = reject_bundle(
                obj, deps, owner=owner, job_id=job_id, code=code, message=message, field=field
            )
        if settle is not None and outcome.status in ("indexed", "rejected"):
            settle(outcome)
        return outcome

    return run_once(deps.claims, claim, work, duplicate=IndexOutcome(status="duplicate"))


def index_claim(obj: ObjectCreated) -> str:
    """The at-most-once key of one object revision's indexing (indexed or rejected, once)."""
    return idempotency_key_for("index-bundle", obj.bucket, obj.key, obj.revision)


def _refusal(exc: BundleError | ValidationError) -> tuple[str, str, str | None]:
    """(code, message, field) of a refusal raised while indexing."""
    if isinstance(exc, BundleError):
        return exc.code, exc.message, exc.field
    first = exc.errors(include_url=False)[:1]
    field = ".".join(str(part) for part in first[0]["loc"]) if first else None
    return InvalidBundle.code, f"the bundle cannot be recorded: {first[0]['msg'] if first else exc}", field


def _index(
    obj: ObjectCreated,
    deps: BundleDeps,
    *,
    owner: str,
    job_id: str | None,
    claim: str,
    selection: ComponentSelection | None,
    max_bytes: int | None = None,
) -> IndexOutcome:
    imported = job_id is None
    source_uri = f"s3://{obj.bucket}/{obj.key}"
    artifacts = deps.names.artifacts_bucket
    with tempfile.TemporaryDirectory(prefix="heimdall-index-", dir=deps.workdir) as tmp:
        local = Path(tmp) / "bundle"
        onnx_path = Path(tmp) / "model.onnx"
        try:
            limit = min(deps.limits.max_bundle_bytes, max_bytes or deps.limits.max_bundle_bytes)
            deps.store.download(
                source_uri, local, max_bytes=limit, version_id=obj.version_id, etag=obj.etag or None
            )
        except ObjectNotFound:
            # Deleted (or overwritten and replaced by a newer notification) before we got to it:
            # nothing to index, and retrying would not bring it back.
            return IndexOutcome(status="gone", message=f"{source_uri} no longer exists")
        except TooLarge as exc:
            return reject_bundle(obj, deps, owner=owner, job_id=job_id, code=exc.code, message=exc.message)
        report = verify_bundle(local, limits=deps.limits, onnx_out=onnx_path)
        if not report.valid or report.read is None:
            return reject_bundle(
                obj,
                deps,
                owner=owner,
                job_id=job_id,
                code=report.code or "INVALID_BUNDLE",
                message=report.message or "the bundle is invalid",
                field=report.field,
            )
        read = report.read
        bundle = read.bundle if selection is None else selection.apply(read.bundle)
        # Derived from the object's identity: a retried delivery produces the same ids and keys.
        model_id = str(uuid.uuid5(_ID_NAMESPACE, claim))
        name, version = bundle.model.model_name, bundle.model.version
        # Keys are made of ids only: the sender's name and version are display text (metadata, and
        # Content-Disposition when downloaded), never part of a key.
        onnx_key = f"{IMPORTED_ONNX_PREFIX if imported else EXPORTED_ONNX_PREFIX}{model_id}/{ONNX_FILE}"
        bundle_key = f"{INDEXED_BUNDLE_PREFIX}{model_id}/{BUNDLE_FILE}"
        deps.store.upload(onnx_path, f"s3://{artifacts}/{onnx_key}", content_type="application/octet-stream")
        # Whether ONNX Runtime serves the model, upgrading an old opset when it must (issue 11): the
        # upgraded copy goes beside the original, which stays what export returns.
        assert report.structure is not None  # a valid report has one
        serving = check_serving(
            onnx_path,
            report.structure,
            limits=deps.limits,
            workdir=Path(tmp),
            samples=read.bundle.sample_predictions,
        )
        upgrade = serving.upgrade
        if upgrade is not None and serving.upgraded is not None:
            prefix = IMPORTED_ONNX_PREFIX if imported else EXPORTED_ONNX_PREFIX
            upgrade = upgrade.model_copy(
                update={"onnx_key": upgraded_key(prefix, model_id, upgrade.to_opset)}
            )
            deps.store.upload(
                serving.upgraded,
                f"s3://{artifacts}/{upgrade.onnx_key}",
                content_type="application/octet-stream",
            )
        # The stored copy carries this registry's id; an import also keeps the sender's id.
        renamed = {"model_id": model_id} | ({"original_model_id": bundle.model.model_id} if imported else {})
        stored = bundle.model_copy(update={"model": bundle.model.model_copy(update=renamed)})
        canonical = Path(tmp) / "canonical.heimdall"
        write_bundle(stored, onnx_path, canonical)
        deps.store.upload(canonical, f"s3://{artifacts}/{bundle_key}", content_type="application/json")
    metrics = bundle.performance_metrics
    record = ModelRecord(
        model_id=model_id,
        owner=owner,
        model_name=name,
        version=version,
        architecture=bundle.model.architecture,
        source="import" if imported else "export",
        original_model_id=bundle.model.model_id if imported else None,
        onnx_key=onnx_key,
        onnx_sha256=read.onnx_sha256,
        onnx_size_bytes=read.onnx_size_bytes,
        bundle_key=bundle_key,
        opset=bundle.model.onnx_opset,
        input_shape=bundle.model.input_shape,
        output_shape=bundle.model.output_shape,
        components=bundle.components(),
        metrics=MetricsSummary.model_validate(metrics.model_dump() if metrics else {}),
        export_job_id=job_id,
        servable=serving.servable,
        not_servable_reason=serving.reason,
        opset_upgrade=upgrade,
    )
    deps.registry.put_model(record)
    if job_id is not None:
        # The job says which model it became; a job deleted meanwhile does not stop the indexing.
        with contextlib.suppress(RecordNotFound):
            deps.registry.record_job_model(job_id, model_id)
    detail = BundleIndexed(
        idempotency_key=BundleIndexed.key_for(obj.bucket, obj.key, obj.revision),
        occurred_at=deps.now(),
        owner=owner,
        model_id=model_id,
        original_model_id=record.original_model_id,
        model_name=record.display_name or name,
        version=version,
        imported=imported,
        onnx_sha256=read.onnx_sha256,
        onnx_size_bytes=read.onnx_size_bytes,
        bucket=artifacts,
        bundle_key=bundle_key,
        onnx_key=onnx_key,
        source_bucket=obj.bucket,
        source_key=obj.key,
        job_id=job_id,
    )
    deps.events.publish([make_event(detail)])
    return IndexOutcome(status="indexed", model=record)


def quarantine(obj: ObjectCreated, deps: BundleDeps, *, code: str, message: str) -> str:
    """Copy the rejected object to ``quarantine/{date}/{id}/original`` with a ``reason.json``.

    Returns the quarantine key of the original. The object where it was dropped is left as it is.
    """
    now = deps.now()
    folder = (
        f"quarantine/{now:%Y-%m-%d}/{uuid.uuid5(_ID_NAMESPACE, f'{obj.bucket}/{obj.key}/{obj.revision}')}"
    )
    artifacts = deps.names.artifacts_bucket
    original = f"{folder}/original"
    deps.store.copy(f"s3://{obj.bucket}/{obj.key}", f"s3://{artifacts}/{original}")
    reason = {
        "code": code,
        "message": message,
        "source_bucket": obj.bucket,
        "source_key": obj.key,
        "revision": obj.revision,
        "quarantined_at": now.isoformat(),
    }
    deps.store.put_bytes(
        f"s3://{artifacts}/{folder}/reason.json",
        json.dumps(reason, indent=2).encode(),
        content_type="application/json",
    )
    return original


def reject_bundle(
    obj: ObjectCreated,
    deps: BundleDeps,
    *,
    owner: str,
    job_id: str | None,
    code: str,
    message: str,
    field: str | None = None,
) -> IndexOutcome:
    """Quarantine a bundle upload and announce ``Bundle Rejected``."""
    key = quarantine(obj, deps, code=code, message=message)
    detail = BundleRejected(
        idempotency_key=BundleRejected.key_for(obj.bucket, obj.key, obj.revision),
        occurred_at=deps.now(),
        owner=owner,
        source_bucket=obj.bucket,
        source_key=obj.key,
        job_id=job_id,
        code=code,
        message=message[:1000],
        quarantine_bucket=deps.names.artifacts_bucket,
        quarantine_key=key,
    )
    deps.events.publish([make_event(detail)])
    return IndexOutcome(status="rejected", code=code, message=message, field=field, quarantine_key=key)
