"""Finding a checkpoint's manifest in the ingest bucket: an explicit key, the sidecar, or embedded.

:func:`load_manifest` finds a checkpoint's manifest for the API (an explicit key, else the sidecar
``heimdall.json`` beside it, else the one a safetensors checkpoint embeds); :func:`embedded_manifest`
reads the embedded one from a safetensors header with two ranged reads, without torch, for the ingest
function too. A ``.pt``/``.pth`` checkpoint's embedded manifest (inside its pickle) cannot be read here.
"""

from __future__ import annotations

import json
import struct

from heimdall.contracts.manifest import (
    EMBEDDED_MANIFEST_KEY,
    MANIFEST_FILE_NAME,
    Manifest,
    parse_manifest,
    read_manifest,
)
from heimdall.domain.storage import ObjectStore
from heimdall.errors import BundleError, InvalidManifest

MAX_MANIFEST_BYTES = 1024 * 1024
#: A safetensors header larger than this is not read by the ingest function (the job still can).
MAX_HEADER_BYTES = 1024 * 1024


def load_manifest(
    store: ObjectStore, bucket: str, checkpoint_key: str, manifest_key: str | None = None
) -> tuple[Manifest, str | None]:
    """The manifest of a checkpoint and its key: ``manifest_key`` if given, else the sidecar
    ``heimdall.json`` beside the checkpoint, else the one a safetensors checkpoint embeds (key None).

    Raises InvalidManifest when there is none or it is invalid, ObjectNotFound for a missing
    ``manifest_key``.
    """
    if manifest_key is None:
        sidecar = checkpoint_key.rpartition("/")[0] + "/" + MANIFEST_FILE_NAME
        if sidecar in store.list_keys(f"s3://{bucket}/{sidecar}"):
            manifest_key = sidecar
    if manifest_key is not None:
        data = store.get_bytes(f"s3://{bucket}/{manifest_key}", max_bytes=MAX_MANIFEST_BYTES)
        try:
            return read_manifest(data, source=manifest_key), manifest_key
        except BundleError as exc:  # the manifest's JSON failed the strict parse
            raise InvalidManifest(exc.message, field="manifest") from None
    embedded = embedded_manifest(store, f"s3://{bucket}/{checkpoint_key}")
    if embedded is None:
        raise InvalidManifest(
            f"no manifest: give manifest_uri, put {MANIFEST_FILE_NAME} beside the checkpoint, or embed it "
            "in a .safetensors checkpoint's metadata",
            field="manifest_uri",
        )
    return embedded, None


def embedded_manifest(store: ObjectStore, uri: str) -> Manifest | None:
    """The manifest in a safetensors header's ``__metadata__["heimdall"]``, if there is one."""
    if not uri.lower().endswith(".safetensors"):
        return None
    head = store.read_range(uri, 0, 8)
    if len(head) < 8:
        return None
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:
        return None  # too large to read here; the sidecar is needed
    try:
        header = json.loads(store.read_range(uri, 8, length))
        text = header.get("__metadata__", {}).get(EMBEDDED_MANIFEST_KEY)
    except (ValueError, AttributeError):
        return None  # not a safetensors header we can read: the job will refuse the file itself
    if not isinstance(text, str):
        return None
    try:
        return parse_manifest(json.loads(text), source="the embedded manifest")
    except ValueError as exc:
        raise InvalidManifest(f"the embedded manifest is not JSON: {exc}") from None


__all__ = ["MAX_HEADER_BYTES", "MAX_MANIFEST_BYTES", "embedded_manifest", "load_manifest"]
