"""The bundle reader and its integrity pass.

A bundle is one JSON document with the ONNX model base64-encoded inside it. Reading it naively
(``json.load`` then ``b64decode``) holds the document, the base64 string and the decoded model at
once: about 2.7 times the model, plus Python's overhead. This reader never does. It scans the
document once, chunk by chunk (:mod:`heimdall.bundle.scanner`):

* everything except ``model.onnx_model_base64`` is copied into a small *skeleton* document (capped by
  ``max_metadata_bytes``) that is parsed with the standard library's strict JSON parser afterwards
  (:mod:`heimdall.bundle.strict_json`);
* the base64 string is validated (strict standard alphabet, padding only at the end, no escapes),
  decoded with pybase64 and hashed with an incremental sha256 a chunk at a time, and optionally
  written to a sink (``extract-onnx``, the structural pass), so memory does not grow with the model.

gzip bundles are detected by their magic bytes and decompressed on the fly, with the decompressed
size capped while decompressing (:mod:`heimdall.bundle.source`). Every problem raises a
:class:`~heimdall.errors.BundleError` subclass with a stable code; nothing else escapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from heimdall.bundle.dialects import Dialect, normalise
from heimdall.bundle.models import ONNX_FIELD, SUPPORTED_MAJOR, Bundle
from heimdall.bundle.scanner import DocumentScanner, OnnxSink
from heimdall.bundle.source import GZIP_MAGIC, BundleSource, open_source
from heimdall.bundle.strict_json import parse_strict
from heimdall.errors import ChecksumMismatch, InvalidBundle, UnsupportedVersion
from heimdall.settings import BundleLimits, get_settings


@dataclass(frozen=True)
class ReadResult:
    """What the integrity pass learned about a bundle."""

    bundle: Bundle
    dialect: Dialect
    onnx_sha256: str
    onnx_size_bytes: int
    compressed: bool
    #: Bytes read from the source (compressed size for gzip bundles).
    source_bytes: int
    #: Size of the JSON document itself (after decompression).
    document_bytes: int
    #: Whether the bundle declared ``integrity`` (older writers did not), which then matched.
    integrity_declared: bool


def read_bundle(
    source: BundleSource,
    *,
    limits: BundleLimits | None = None,
    onnx_sink: OnnxSink | None = None,
) -> ReadResult:
    """Read and normalise a bundle, verifying the embedded model's encoding, size and checksum.

    ``source`` is a path, the bundle's bytes, or a binary file object. Decoded ONNX bytes are
    written to ``onnx_sink`` as they are decoded (when given); nothing is kept in memory. Raises a
    :class:`~heimdall.errors.BundleError` subclass for any bundle this project would refuse.
    """
    limits = limits or get_settings().bundle_limits()
    with open_source(source, limits) as (stream, compressed, counter):
        scanner = DocumentScanner(stream.read, limits, onnx_sink)
        scanner.run()
        source_bytes = counter()
    doc = parse_strict(bytes(scanner.skeleton), limits.max_json_depth)
    if not isinstance(doc, dict):
        raise InvalidBundle(f"a bundle must be a JSON object at the top level, got {_json_type(doc)}")
    # A bundle of another major version may not even embed its model the same way: say so first.
    _check_format_version(doc.get("format_version", _MISSING))
    raw_model = doc.get("model")
    if not scanner.found_model:
        if isinstance(raw_model, dict) and ONNX_FIELD in raw_model:
            raise InvalidBundle(
                f"model.{ONNX_FIELD} must be a base64 string, got {_json_type(raw_model[ONNX_FIELD])}",
                field=f"model.{ONNX_FIELD}",
            )
        raise InvalidBundle(
            f"model.{ONNX_FIELD} is missing: a bundle must embed its ONNX model", field=f"model.{ONNX_FIELD}"
        )
    if scanner.onnx_size == 0:
        raise InvalidBundle(f"model.{ONNX_FIELD} is empty", field=f"model.{ONNX_FIELD}")

    bundle, dialect = parse_metadata(doc, limits)
    sha256 = scanner.hasher.hexdigest()
    if bundle.integrity is not None:
        if bundle.integrity.onnx_size_bytes != scanner.onnx_size:
            raise ChecksumMismatch(
                f"integrity.onnx_size_bytes declares {bundle.integrity.onnx_size_bytes} bytes but the "
                f"embedded model has {scanner.onnx_size}",
                field="integrity.onnx_size_bytes",
            )
        if bundle.integrity.onnx_sha256 != sha256:
            raise ChecksumMismatch(
                f"integrity.onnx_sha256 declares {bundle.integrity.onnx_sha256} but the embedded model "
                f"hashes to {sha256}",
                field="integrity.onnx_sha256",
            )
    return ReadResult(
        bundle=bundle,
        dialect=dialect,
        onnx_sha256=sha256,
        onnx_size_bytes=scanner.onnx_size,
        compressed=compressed,
        source_bytes=source_bytes,
        document_bytes=scanner.consumed,
        integrity_declared=bundle.integrity is not None,
    )


def looks_like_bundle(head: bytes, size: int) -> bool:
    """Whether a file starting with ``head`` (at least 16 bytes when the file has them) of ``size``
    bytes is a bundle rather than a checkpoint: gzip, or a JSON object that is not a safetensors
    file (whose first 8 bytes are its header's length, followed by ``{``). Content decides, never
    the name; :func:`read_bundle` then checks everything else."""
    if head.startswith(GZIP_MAGIC):
        return True
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return False  # a safetensors header, even when its length's first byte happens to be "{"
    return head.lstrip(b" \t\r\n").startswith(b"{")


def parse_metadata(doc: Any, limits: BundleLimits | None = None) -> tuple[Bundle, Dialect]:
    """Validate a bundle document (without its base64 model) and normalise it to canonical form."""
    limits = limits or get_settings().bundle_limits()
    if not isinstance(doc, dict):
        raise InvalidBundle(f"a bundle must be a JSON object at the top level, got {_json_type(doc)}")
    _check_format_version(doc.get("format_version", _MISSING))
    model = doc.get("model")
    if isinstance(model, dict) and ONNX_FIELD in model:
        doc = {**doc, "model": {k: v for k, v in model.items() if k != ONNX_FIELD}}
    canonical, dialect = normalise(doc)
    try:
        bundle = Bundle.model_validate(canonical)
    except ValidationError as exc:
        raise _invalid_from(exc) from None
    samples = bundle.sample_predictions or []
    if len(samples) > limits.max_samples:
        raise InvalidBundle(
            f"sample_predictions has {len(samples)} entries; at most {limits.max_samples} are allowed",
            field="sample_predictions",
        )
    return bundle, dialect


_MISSING = object()


def _check_format_version(value: Any) -> None:
    if value is _MISSING:
        raise InvalidBundle("format_version is missing", field="format_version")
    if not isinstance(value, str) or not re.fullmatch(r"\d+(\.\d+){0,2}", value):
        raise InvalidBundle(
            f"format_version must be a version string such as '1.0.0', got {value!r:.40}",
            field="format_version",
        )
    major = int(value.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise UnsupportedVersion(
            f"format_version {value} is not supported: this reader understands {SUPPORTED_MAJOR}.x bundles",
            field="format_version",
        )


def _invalid_from(exc: ValidationError) -> InvalidBundle:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        parts.append(f"{where}: {err['msg']}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    first = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
    return InvalidBundle("; ".join(parts) + more, field=first)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


__all__ = ["ReadResult", "looks_like_bundle", "parse_metadata", "read_bundle"]
