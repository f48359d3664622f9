"""Use cases: the caller's models — list, get, delete, and export as a `.heimdall` bundle.

An export is assembled from the model's canonical bundle (``ModelRecord.bundle_key``, written when the
model was indexed) through files in a temporary directory: the stored bundle is downloaded, read with
its ONNX model decoded to a file as it streams by, and written again with the chosen components and new
``bundle_metadata``, the model re-encoded from that file. Memory holds one chunk at a time, never the
model; only a bundle small enough for a response is read into memory at the end. The ONNX bytes go
through untouched, so the export's ``onnx_sha256`` is the model's.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from heimdall import __version__
from heimdall.bundle.models import BundleMetadata, ComponentSelection
from heimdall.bundle.reader import read_bundle
from heimdall.bundle.writer import write_bundle
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.records import ModelRecord
from heimdall.domain.storage import download_name
from heimdall.errors import ChecksumMismatch, ConflictError, NotReady, RequestInvalid
from heimdall.logic.api import ApiDeps, require_id

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "ExportOptions",
    "ExportedBundle",
    "bundle_filename",
    "delete_model",
    "export_model",
    "get_model",
    "list_models",
]

MAX_DESCRIPTION_CHARS = 1000
#: The file name of an export assembled for a download (``downloads/{model_id}/{bundle_id}/``).
_DOWNLOAD_FILE = "bundle.heimdall"


@dataclass(frozen=True)
class ExportOptions:
    """What an export keeps: the components (and number of samples), and a description."""

    selection: ComponentSelection
    description: str | None = None


@dataclass(frozen=True)
class ExportedBundle:
    """An assembled bundle: in ``body`` when it fits in a response, else behind ``redirect_url``."""

    filename: str
    bundle_id: str
    onnx_sha256: str
    size_bytes: int
    components: list[str]
    body: bytes | None
    redirect_url: str | None
    expires_at: datetime | None


def bundle_filename(model_name: str, version: str) -> str:
    """``{model_name}-v{version}.heimdall``: the name a download of the bundle suggests (display text,
    one file name; :func:`heimdall.domain.storage.content_disposition` makes it a header). Never a key."""
    return download_name(f"{model_name}-v{version}.heimdall")


def list_models(
    deps: ApiDeps,
    owner: str,
    *,
    name: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> Page[ModelRecord]:
    """The owner's models (of one ``name`` if given), newest first."""
    return deps.registry.list_models(owner, name=name, limit=limit, cursor=cursor)


def get_model(deps: ApiDeps, owner: str, model_id: str) -> ModelRecord:
    """The owner's model; RecordNotFound for a missing one, another owner's, or a malformed id."""
    require_id(model_id, what="model", field="model_id")
    return deps.registry.get_model(owner, model_id)


def delete_model(deps: ApiDeps, owner: str, model_id: str) -> None:
    """Delete the model: its stored ONNX and bundle objects and exports assembled of it, then its record.

    Objects go first, so that a failure half-way leaves the record to retry the delete with (deleting
    an object that is already gone is not an error). A model that still has deployments is refused
    (ConflictError): an endpoint would lose its model under it; delete the deployments first.
    """
    record = get_model(deps, owner, model_id)
    deployed = deps.deployments.list_deployments(owner, model_id=model_id, limit=1)
    if deployed.items:
        raise ConflictError(
            f"model {model_id} has deployments (e.g. {deployed.items[0].deployment_id}): delete them first",
            field="model_id",
        )
    artifacts = deps.names.artifacts_bucket
    upgraded = record.opset_upgrade.onnx_key if record.opset_upgrade is not None else None
    keys = [key for key in (record.onnx_key, upgraded, record.bundle_key) if key]
    keys += deps.store.list_keys(f"s3://{artifacts}/{_downloads_prefix(record.model_id)}")
    for key in keys:
        deps.store.delete(f"s3://{artifacts}/{key}")
    deps.registry.delete_model(owner, model_id)


def _downloads_prefix(model_id: str) -> str:
    return f"downloads/{model_id}/"


def export_model(
    deps: ApiDeps, owner: str, model_id: str, options: ExportOptions, *, requested_by: str
) -> ExportedBundle:
    """Assemble a bundle of the owner's model with the chosen components and a new ``bundle_metadata``.

    It is returned in ``body`` when it is at most ``deps.api.max_response_bytes``; otherwise it is
    stored under ``downloads/{model_id}/{bundle_id}/`` and ``redirect_url`` is a presigned GET of it.
    """
    if options.description is not None and len(options.description) > MAX_DESCRIPTION_CHARS:
        raise RequestInvalid(
            f"description is longer than {MAX_DESCRIPTION_CHARS} characters", field="description"
        )
    record = get_model(deps, owner, model_id)
    if not record.bundle_key:
        raise NotReady(f"model {model_id} has no stored bundle to export", field="model_id")
    artifacts = deps.names.artifacts_bucket
    filename = bundle_filename(record.model_name, record.version)
    bundle_id = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="heimdall-export-", dir=deps.workdir) as tmp:
        stored, onnx = Path(tmp) / "stored.heimdall", Path(tmp) / "model.onnx"
        out = Path(tmp) / _DOWNLOAD_FILE
        source = f"s3://{artifacts}/{record.bundle_key}"
        deps.store.download(source, stored, max_bytes=deps.limits.max_bundle_bytes)
        with onnx.open("wb") as sink:
            read = read_bundle(stored, limits=deps.limits, onnx_sink=sink)
        stored.unlink()  # one copy of the bundle on disk at a time
        # A new bundle (id, time, author, this release); the sender's description stays unless replaced.
        original = read.bundle.bundle_metadata
        metadata = BundleMetadata(
            bundle_id=bundle_id,
            created_at=deps.now(),
            created_by=requested_by,
            description=options.description if options.description is not None else original.description,
            heimdall_version=__version__,
        )
        bundle = read.bundle.model_copy(update={"bundle_metadata": metadata})
        written = write_bundle(bundle, onnx, out, selection=options.selection)
        if written.onnx_sha256 != read.onnx_sha256:  # cannot happen unless the disk lies: never ship it
            raise ChecksumMismatch(f"the exported model of {model_id} does not hash like the stored one")
        size = written.bytes_written
        if size <= deps.api.max_response_bytes:
            body = out.read_bytes()
            url, expires_at = None, None
        else:
            body = None
            # Ids only in the key; the name reaches the client in the link's Content-Disposition.
            uri = f"s3://{artifacts}/{_downloads_prefix(record.model_id)}{bundle_id}/{_DOWNLOAD_FILE}"
            deps.store.upload(out, uri, content_type="application/json")
            url, expires_at = deps.store.presign_get(uri, expires_s=deps.api.presign_ttl_s, filename=filename)
    return ExportedBundle(
        filename=filename,
        bundle_id=bundle_id,
        onnx_sha256=written.onnx_sha256,
        size_bytes=size,
        components=written.bundle.components(),
        body=body,
        redirect_url=url,
        expires_at=expires_at,
    )
