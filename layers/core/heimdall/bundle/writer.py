"""The bundle writer: canonical form, component selection, integrity, optional signature.

The ONNX model is streamed: read a chunk at a time, base64-encoded and hashed on the way out, so
writing a bundle needs no more memory than reading one. ``model.onnx_model_base64`` is written as the
last field of ``model``; ``integrity`` (and ``signature``) come after it, which is what lets one pass
fill them in.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import pybase64
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heimdall import __version__
from heimdall.bundle.models import FORMAT_VERSION, ONNX_FIELD, Bundle, ComponentSelection, Integrity
from heimdall.bundle.signing import sign_bundle, signing_payload
from heimdall.settings import MIB

#: Bytes of ONNX encoded at a time (a multiple of 3 so chunks encode without padding).
ENCODE_CHUNK_BYTES = 3 * MIB

OnnxSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True)
class WriteResult:
    """What was written."""

    bundle: Bundle
    onnx_sha256: str
    onnx_size_bytes: int
    bytes_written: int
    compressed: bool
    #: The input carried a signature that no longer matched what was written (components dropped,
    #: model changed), so it was left out.
    signature_dropped: bool


def write_bundle(
    bundle: Bundle,
    onnx: OnnxSource,
    out: str | os.PathLike[str] | BinaryIO,
    *,
    selection: ComponentSelection | None = None,
    compress: bool = False,
    signing_key: Ed25519PrivateKey | None = None,
    key_id: str | None = None,
) -> WriteResult:
    """Write ``bundle`` with the ``onnx`` model embedded, in canonical form, to ``out``.

    ``selection`` keeps only the chosen optional components (``model`` is always written). The
    ``integrity`` block is computed from the bytes actually written. With ``signing_key`` the bundle
    is signed; otherwise an existing signature is kept only while it still verifies. A path ``out``
    is written atomically (temporary file, then rename).
    """
    prepared = _prepare(bundle, selection)
    sentinel = uuid.uuid4().hex
    # Everything before the model's base64 does not depend on the model's hash: render it with a
    # stand-in integrity block now, and the part after the base64 once the hash is known.
    prefix, _ = _render(prepared.model_copy(update={"integrity": _PLACEHOLDER}), sentinel)
    with _open_output(out, compress) as (sink, written):
        sink.write(prefix)
        sha256, size = _encode_model(onnx, sink)
        final = prepared.model_copy(update={"integrity": Integrity(onnx_sha256=sha256, onnx_size_bytes=size)})
        dropped = False
        if signing_key is not None:
            final = sign_bundle(final, signing_key, key_id)
        elif bundle.signature is not None:
            if bundle.integrity is not None and signing_payload(bundle) == signing_payload(final):
                final = final.model_copy(update={"signature": bundle.signature})
            else:
                dropped = True
        check_prefix, suffix = _render(final, sentinel)
        if check_prefix != prefix:  # would mean a field before the model depends on the hash
            raise RuntimeError("bundle prefix changed between renders")
        sink.write(suffix)
    return WriteResult(
        bundle=final,
        onnx_sha256=sha256,
        onnx_size_bytes=size,
        bytes_written=written(),
        compressed=compress,
        signature_dropped=dropped,
    )


_PLACEHOLDER = Integrity(onnx_sha256="0" * 64, onnx_size_bytes=0)


def _prepare(bundle: Bundle, selection: ComponentSelection | None) -> Bundle:
    if selection is not None:
        bundle = selection.apply(bundle)
    meta = bundle.bundle_metadata
    if meta.heimdall_version is None:
        meta = meta.model_copy(update={"heimdall_version": __version__})
    return bundle.model_copy(
        update={
            "format_version": FORMAT_VERSION,
            "bundle_metadata": meta,
            "integrity": None,
            "signature": None,
        }
    )


def _render(bundle: Bundle, sentinel: str) -> tuple[bytes, bytes]:
    doc = bundle.model_dump(mode="json")
    doc["model"][ONNX_FIELD] = sentinel
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    prefix, suffix = text.split(f'"{sentinel}"')
    return (prefix + '"').encode("utf-8"), ('"' + suffix + "\n").encode("utf-8")


def _encode_model(onnx: OnnxSource, sink: _Sink) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with _open_model(onnx) as stream:
        pending = b""
        while True:
            chunk = stream.read(ENCODE_CHUNK_BYTES)
            if not chunk:
                break
            hasher.update(chunk)
            size += len(chunk)
            data = pending + chunk if pending else chunk
            whole = len(data) - len(data) % 3
            sink.write(pybase64.b64encode(memoryview(data)[:whole]))
            pending = bytes(data[whole:])
        if pending:
            sink.write(pybase64.b64encode(pending))
    return hasher.hexdigest(), size


@contextmanager
def _open_model(onnx: OnnxSource) -> Iterator[BinaryIO]:
    if isinstance(onnx, bytes | bytearray | memoryview):
        yield io.BytesIO(onnx)
    elif isinstance(onnx, str | os.PathLike):
        with Path(onnx).open("rb") as stream:
            yield stream
    else:
        yield onnx


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Counter:
    """Passes writes through to ``target`` and counts them."""

    def __init__(self, target: _Sink) -> None:
        self._target = target
        self.count = 0

    def write(self, data: bytes, /) -> int:
        self._target.write(data)
        self.count += len(data)
        return len(data)


@contextmanager
def _open_output(
    out: str | os.PathLike[str] | BinaryIO, compress: bool
) -> Iterator[tuple[_Sink, Callable[[], int]]]:
    if isinstance(out, str | os.PathLike):
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; a bundle is not a secret
            with os.fdopen(fd, "wb") as raw:
                counter = _Counter(raw)
                with _maybe_gzip(counter, compress) as sink:
                    yield sink, lambda: counter.count
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        counter = _Counter(out)
        with _maybe_gzip(counter, compress) as sink:
            yield sink, lambda: counter.count


@contextmanager
def _maybe_gzip(target: _Counter, compress: bool) -> Iterator[_Sink]:
    if not compress:
        yield target
        return
    # mtime=0 and no file name: the same input always gives the same bytes.
    with gzip.GzipFile(filename="", fileobj=target, mode="wb", mtime=0, compresslevel=6) as gz:  # type: ignore[call-overload]
        yield gz
