"""The bundle reader and its integrity pass.

A bundle is one JSON document with the ONNX model base64-encoded inside it. Reading it naively
(``json.load`` then ``b64decode``) holds the document, the base64 string and the decoded model at
once: about 2.7 times the model, plus Python's overhead. This reader never does. It scans the
document once, chunk by chunk:

* everything except ``model.onnx_model_base64`` is copied into a small *skeleton* document (capped by
  ``max_metadata_bytes``) that is parsed with the standard library's strict JSON parser afterwards;
* the base64 string is validated (strict standard alphabet, padding only at the end, no escapes),
  decoded with pybase64 and hashed with an incremental sha256 a chunk at a time, and optionally
  written to a sink (``extract-onnx``, the structural pass), so memory does not grow with the model.

gzip bundles are detected by their magic bytes and decompressed on the fly, with the decompressed
size capped while decompressing. Every problem raises a :class:`~heimdall.errors.BundleError`
subclass with a stable code; nothing else escapes.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import io
import json
import json.scanner
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pybase64
from pydantic import ValidationError

from heimdall.bundle.dialects import Dialect, normalise
from heimdall.bundle.models import ONNX_FIELD, SUPPORTED_MAJOR, Bundle
from heimdall.errors import (
    BundleError,
    ChecksumMismatch,
    InvalidBase64,
    InvalidBundle,
    InvalidJson,
    TooLarge,
    UnsupportedVersion,
)
from heimdall.settings import MIB, BundleLimits, get_settings

#: Bytes read from the source at a time. Large enough to amortise Python's per-call overhead,
#: small enough to keep the pass's memory flat.
CHUNK_BYTES = 4 * MIB
GZIP_MAGIC = b"\x1f\x8b"
_MAX_NUMBER_DIGITS = 64
#: Text that may hold a number the strict parse must refuse (a long digit run, a 3-digit exponent).
_SUSPECT_NUMBER = re.compile(rb"[0-9]{%d}|[eE][+-]?[0-9]{3}" % (_MAX_NUMBER_DIGITS + 1))
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_MAX_INT_BITS = math.ceil(_MAX_NUMBER_DIGITS * math.log2(10))

_STRUCTURAL = re.compile(rb'["{}\[\],:]')
_STRING_SPECIAL = re.compile(rb'["\\]')
_NON_SPACE = re.compile(rb"[^ \t\r\n]")
_QUOTE, _BRACE, _CLOSE_BRACE, _COMMA, _COLON = (ord(c) for c in '"{},:')
#: Caps on what the scanner follows key by key (the top-level object and ``model``).
_MAX_FOLLOWED_KEYS = 10_000
_MAX_KEY_BYTES = 64 * 1024
#: Decoded pieces at least this large are hashed on the worker thread; smaller ones inline.
_HASH_IN_BACKGROUND_BYTES = 256 * 1024


class OnnxSink(Protocol):
    """Where decoded ONNX bytes go (a file opened for binary writing will do)."""

    def write(self, data: bytes, /) -> int: ...


BundleSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


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
    with _open_source(source, limits) as (stream, compressed, counter):
        scanner = _Scanner(stream.read, limits, onnx_sink)
        scanner.run()
        source_bytes = counter()
    doc = _parse_skeleton(bytes(scanner.skeleton), limits.max_json_depth)
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


# --- the source: files, bytes, gzip, caps ------------------------------------------------------------


class _CountingReader:
    """Counts the bytes read from a stream and refuses to read past ``cap``."""

    def __init__(self, read: Callable[[int], bytes], cap: int, what: str) -> None:
        self._read = read
        self._cap = cap
        self._what = what
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        # Ask for one byte more than allowed so that reaching the cap exactly is not an error.
        budget = self._cap + 1 - self.count
        data = self._read(min(size, budget) if size >= 0 else budget)
        self.count += len(data)
        if self.count > self._cap:
            raise TooLarge(f"{self._what} is larger than the limit of {_fmt_bytes(self._cap)}")
        return data


class _PrefixedReader:
    """A stream whose first bytes were already read (to sniff the gzip magic)."""

    def __init__(self, prefix: bytes, read: Callable[[int], bytes]) -> None:
        self._prefix = prefix
        self._read = read

    def read(self, size: int = -1) -> bytes:
        if not self._prefix:
            return self._read(size)
        head, self._prefix = self._prefix, b""
        if size < 0:
            return head + self._read(-1)
        return head + self._read(size - len(head)) if size > len(head) else head


@contextmanager
def _open_source(
    source: BundleSource, limits: BundleLimits
) -> Iterator[tuple[_CountingReader, bool, Callable[[], int]]]:
    """Yield (document stream, compressed?, bytes-read-from-source) for any accepted source."""
    if isinstance(source, bytes | bytearray | memoryview):
        fileobj: BinaryIO = io.BytesIO(source)
        owned = True
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InvalidBundle(f"cannot read {path}: {exc.strerror or exc}") from None
        if size > limits.max_bundle_bytes:
            # Refused before a single byte is read.
            raise TooLarge(
                f"bundle is {_fmt_bytes(size)}, over the limit of {_fmt_bytes(limits.max_bundle_bytes)}"
            )
        try:
            fileobj = path.open("rb")
        except OSError as exc:
            raise InvalidBundle(f"cannot read {path}: {exc.strerror or exc}") from None
        owned = True
    else:
        fileobj = source
        owned = False
    try:
        raw = _CountingReader(fileobj.read, limits.max_bundle_bytes, "bundle")
        head = raw.read(2)
        if head == GZIP_MAGIC:
            gz = gzip.GzipFile(fileobj=_PrefixedReader(head, raw.read), mode="rb")  # type: ignore[call-overload]
            doc = _CountingReader(_gzip_read(gz), limits.max_bundle_bytes, "decompressed bundle")
            yield doc, True, lambda: raw.count
        else:
            doc = _CountingReader(_PrefixedReader(head, raw.read).read, limits.max_bundle_bytes, "bundle")
            yield doc, False, lambda: raw.count
    finally:
        if owned:
            fileobj.close()


def _gzip_read(gz: gzip.GzipFile) -> Callable[[int], bytes]:
    def read(size: int) -> bytes:
        try:
            return gz.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidBundle(f"the gzip stream is corrupt or truncated: {exc}") from None

    return read


def _fmt_bytes(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} bytes"


# --- the scanner ----------------------------------------------------------------------------------


class _Frame:
    """An object whose keys we follow: the top-level object, and the ``model`` object in it."""

    __slots__ = ("key", "keys", "state")

    #: What the frame waits for: a key (or "}"), the colon after a key, "," or "}" after a value.
    KEY, COLON, AFTER_VALUE = 0, 1, 2

    def __init__(self) -> None:
        self.state = _Frame.KEY
        self.key = ""
        self.keys = 0


class _Scanner:
    """One pass over the document: copies the skeleton, streams the embedded model.

    Only two objects have their keys followed (the top-level one, and ``model`` in it); every other
    value is skipped whole by the standard library's C JSON scanner, and bytes are copied into the
    skeleton in bulk. So the Python-level work is per key of those two objects (capped), not per
    token, and hostile metadata made of millions of tiny tokens costs what the C parser costs.
    """

    def __init__(self, read: Callable[[int], bytes], limits: BundleLimits, sink: OnnxSink | None) -> None:
        self._read = read
        self._limits = limits
        self._sink = sink
        self._buf = b""
        self._pos = 0
        #: Bytes of ``_buf`` before this index are in the skeleton (or deliberately left out).
        self._copied = 0
        self.consumed = 0
        self.skeleton = bytearray()
        self.hasher = hashlib.sha256()
        self.onnx_size = 0
        self.found_model = False
        self._scan_value: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
            json.JSONDecoder()  # type: ignore[arg-type]  # typeshed types the C scanner's context oddly
        )
        self._hashing: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def _fill(self) -> bool:
        """Copy what was consumed, then read the next chunk after the unconsumed bytes. False at EOF."""
        self._emit(self._buf[self._copied : self._pos])
        if len(self._buf) - self._pos > self._limits.max_metadata_bytes:
            raise self._too_large()  # one value bigger than all metadata may be
        chunk = self._read(CHUNK_BYTES)
        rest = self._buf[self._pos :]
        self._copied = self._pos = 0
        if not chunk:
            self._buf = rest
            return False
        self.consumed += len(chunk)
        self._buf = rest + chunk if rest else chunk
        return True

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if len(self.skeleton) + len(data) > self._limits.max_metadata_bytes:
            raise self._too_large()
        self.skeleton += data

    def _too_large(self) -> TooLarge:
        return TooLarge(
            "the bundle's metadata (everything except the embedded model) is larger than the limit "
            f"of {_fmt_bytes(self._limits.max_metadata_bytes)}"
        )

    def run(self) -> None:
        if self._peek() != _BRACE:
            # Not an object, so not a bundle: copy it whole (capped) and let the strict parse say
            # what it is (another JSON type, invalid UTF-8, not JSON at all).
            self._finish()
            return
        frames: list[_Frame] = []
        while True:
            match = _STRUCTURAL.search(self._buf, self._pos)
            if match is None:
                self._pos = len(self._buf)
                if not self._fill():
                    raise InvalidJson("the document ends before its top-level object does (truncated?)")
                continue
            char = self._buf[match.start()]
            self._pos = match.end()
            top = frames[-1] if frames else None
            if char == _BRACE and top is None:
                frames.append(_Frame())
            elif top is None:
                raise InvalidJson("the document is not valid JSON")
            elif char == _QUOTE and top.state == _Frame.KEY:
                top.key = self._read_key()
                top.state = _Frame.COLON
                top.keys += 1
                if top.keys > _MAX_FOLLOWED_KEYS:
                    where = "the top-level object" if len(frames) == 1 else "model"
                    raise InvalidBundle(f"{where} has more than {_MAX_FOLLOWED_KEYS} fields")
            elif char == _COLON and top.state == _Frame.COLON:
                top.state = _Frame.AFTER_VALUE
                self._value(frames, top.key)
            elif char == _COMMA and top.state == _Frame.AFTER_VALUE:
                top.state = _Frame.KEY
            elif char == _CLOSE_BRACE and top.state != _Frame.COLON:
                frames.pop()
                if not frames:
                    self._finish()
                    return
            else:
                raise InvalidJson(f"the document is not valid JSON: unexpected {chr(char)!r}")

    def _value(self, frames: list[_Frame], key: str) -> None:
        """Handle the value after ``key:`` in a followed object."""
        nxt = self._peek()
        if len(frames) == 1 and key == "model" and nxt == _BRACE:
            self._pos += 1
            frames.append(_Frame())
        elif len(frames) == 2 and key == ONNX_FIELD and nxt == _QUOTE:
            if self.found_model:
                raise InvalidJson(f"duplicate key 'model.{ONNX_FIELD}'")
            self.found_model = True
            self._pos += 1
            self._stream_base64()
        else:
            self._skip_value()

    def _finish(self) -> None:
        """After the top-level value only whitespace may follow (the strict parse checks it)."""
        while self._fill():
            self._pos = len(self._buf)
        self._emit(self._buf[self._copied :])
        self._copied = self._pos = len(self._buf)

    def _peek(self) -> int | None:
        """The next non-whitespace byte (not consumed), or None at the end of the document."""
        while True:
            match = _NON_SPACE.search(self._buf, self._pos)
            if match is not None:
                self._pos = match.start()
                return self._buf[self._pos]
            self._pos = len(self._buf)
            if not self._fill():
                return None

    def _skip_value(self) -> None:
        """Move past one JSON value with the C scanner.

        The scanner gets a window of the buffer that grows fourfold while the value is cut short by it
        (reading more chunks once the window is the whole buffer), so skipping costs about the
        value's own size, whatever is left in the chunk.
        """
        window = 4096
        problem = "it ends too soon (truncated?)"
        while True:
            available = len(self._buf) - self._pos
            text = self._buf[self._pos : self._pos + window].decode("utf-8", "surrogateescape")
            try:
                _, end = self._scan_value(text, 0)
                complete = end < len(text)
            except json.JSONDecodeError as exc:
                end, complete, problem = 0, False, exc.msg
            except StopIteration:
                end, complete, problem = 0, False, "expecting a value"
            except (ValueError, RecursionError) as exc:  # e.g. Python's cap on integer digits
                end, complete, problem = 0, False, str(exc)
            if complete:
                self._pos += len(text[:end].encode("utf-8", "surrogateescape"))
                return
            # Cut short (or invalid): widen the window, then read on; at the end it is invalid for good.
            if window < available:
                window *= 4
            elif not self._fill():
                if end:  # a value running to the very end of the document, e.g. a bare number
                    self._pos += len(text[:end].encode("utf-8", "surrogateescape"))
                    return
                raise InvalidJson(f"the document is not valid JSON: {problem}")

    def _read_key(self) -> str:
        """Read an object key (opening quote consumed)."""
        start = self._pos - 1
        while True:
            match = _STRING_SPECIAL.search(self._buf, self._pos)
            if match is None or (match.group() == b"\\" and match.start() + 1 >= len(self._buf)):
                if len(self._buf) - start > _MAX_KEY_BYTES:
                    raise InvalidBundle(f"an object key is longer than {_MAX_KEY_BYTES} bytes")
                self._pos = start  # keep the whole key in the buffer
                if not self._fill():
                    raise InvalidJson("the document ends inside a string (truncated?)")
                start, self._pos = 0, 1
                continue
            if match.group() == b'"':
                self._pos = match.end()
                break
            self._pos = match.start() + 2  # a backslash and the character it escapes
        try:
            key = json.loads(self._buf[start : self._pos])
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidJson(f"an object key is not a valid JSON string: {exc}") from None
        return str(key)

    def _stream_base64(self) -> None:
        """Decode, hash and sink the base64 model string (opening quote consumed), chunk by chunk.

        pybase64's strict mode rejects anything outside the standard alphabet, including escapes,
        whitespace and '=' before the end of the data it is given; so each chunk handed to it ends
        on a quartet boundary and the last quartet is held back until we know whether it ends the
        string (only the string's final quartet may carry padding).
        """
        # The skeleton keeps the opening quote and, below, the closing one: the field reads as "".
        self._emit(self._buf[self._copied : self._pos])
        self._copied = self._pos
        carry = b""
        chars = 0
        max_chars = 4 * math.ceil(self._limits.max_onnx_bytes / 3)
        try:
            while True:
                buf, start = self._buf, self._pos
                quote = buf.find(b'"', start)
                final = quote >= 0
                stop = quote if final else len(buf)
                chars += stop - start
                if chars > max_chars:
                    # Checked on the encoded length, before decoding what would go over.
                    raise TooLarge(
                        "the embedded ONNX model is larger than the limit of "
                        f"{_fmt_bytes(self._limits.max_onnx_bytes)}"
                    )
                if carry:
                    take = min((4 - len(carry)) % 4, stop - start)
                    carry += buf[start : start + take]
                    start += take
                    if len(carry) == 4 and (start < stop or final):
                        self._decode(carry, final=final and start == stop)
                        carry = b""
                    elif final:
                        raise _base64_error(carry, f"model.{ONNX_FIELD} length is not a multiple of 4")
                if not carry:
                    count = stop - start
                    if final and count % 4:
                        raise _base64_error(
                            buf[start:stop], f"model.{ONNX_FIELD} length is not a multiple of 4"
                        )
                    end = stop if final else start + (max(count - 1, 0) // 4) * 4
                    if end > start:
                        self._decode(memoryview(buf)[start:end], final=final)
                    carry = b"" if final else buf[end:stop]
                if final:
                    self._copied, self._pos = quote, quote + 1
                    break
                self._copied = self._pos = len(buf)
                if not self._fill():
                    raise InvalidJson(f"the document ends inside model.{ONNX_FIELD} (truncated?)")
            self._drain()
        finally:
            if self._hashing is not None:
                self._hashing.shutdown(wait=True, cancel_futures=True)
                self._hashing = None

    def _decode(self, data: bytes | memoryview, *, final: bool) -> None:
        if not final and bytes(data[-1:]) == b"=":
            raise InvalidBase64(f"model.{ONNX_FIELD} has '=' padding before its end")
        try:
            decoded = pybase64.b64decode(data, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise _base64_error(bytes(data), "") from None
        if len(decoded) < _HASH_IN_BACKGROUND_BYTES and not self._pending:
            self._consume(decoded)
            return
        # Hash (and sink) in the background while this thread decodes the next chunk: sha256 and
        # pybase64 both release the GIL, so the two cores overlap. The single worker keeps the order;
        # waiting only before a large piece keeps one large chunk in flight (bounded memory), and a
        # few carried-over characters never wait for the hash of the chunk before them.
        if self._hashing is None:
            self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heimdall-hash")
        if len(decoded) >= _HASH_IN_BACKGROUND_BYTES:
            self._drain()
        self._pending.append(self._hashing.submit(self._consume, decoded))

    def _consume(self, decoded: bytes) -> None:
        self.hasher.update(decoded)
        self.onnx_size += len(decoded)
        if self._sink is not None:
            self._sink.write(decoded)

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")


def _base64_error(data: bytes, fallback: str) -> InvalidBase64:
    """The most useful explanation of why ``data`` (part of the model string) is not strict base64."""
    if b"\\" in data:
        return InvalidBase64(f"model.{ONNX_FIELD} contains a JSON escape; strict base64 has none")
    if _NOT_BASE64.search(data) or not fallback:
        return InvalidBase64(
            f"model.{ONNX_FIELD} is not strict standard base64 (alphabet A-Z a-z 0-9 + /, "
            "'=' padding only at the end, no whitespace or line breaks)"
        )
    return InvalidBase64(fallback)


# --- the skeleton's strict parse ------------------------------------------------------------------


class _Reject(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"duplicate key {key!r}")
        out[key] = value
    return out


def _too_deep(bare: bytes, max_depth: int) -> bool:
    """Whether the JSON text ``bare`` (strings cut out) nests arrays/objects deeper than ``max_depth``.

    Innermost ``[]``/``{}`` pairs are peeled off one level per round, with C-speed bytes operations:
    cheap even for metadata of millions of tokens.
    """
    brackets = bare.translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        peeled = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if not peeled or peeled == brackets:
            return False
        brackets = peeled
    return bool(brackets)


def _check_numbers(doc: Any) -> None:
    """Refuse non-finite floats (``1e999``) and integers past 64 digits anywhere in ``doc``.

    Done as a walk after parsing rather than with ``parse_int``/``parse_float`` hooks, which the C
    parser would call once per number; and only when the text has a digit run or exponent that
    could be such a number (see :func:`_parse_skeleton`).
    """
    stack = [doc]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                raise InvalidJson("the document is not acceptable JSON: a number is out of range")
        elif kind is int:
            if value.bit_length() > _MAX_INT_BITS:
                raise InvalidJson(
                    f"the document is not acceptable JSON: a number has more than {_MAX_NUMBER_DIGITS} digits"
                )
        elif kind is list:
            stack.extend(value)
        elif kind is dict:
            stack.extend(value.values())


def _parse_constant(name: str) -> Any:
    raise _Reject(f"{name} is not valid JSON")


def parse_json(data: bytes, limits: BundleLimits | None = None) -> Any:
    """Parse a small JSON document (a metadata file, a request body) by the bundle's strict rules.

    Invalid UTF-8, duplicate keys, NaN/Infinity, out-of-range numbers and nesting past
    ``max_json_depth`` are refused with :class:`~heimdall.errors.InvalidJson`; a document over
    ``max_metadata_bytes`` with :class:`~heimdall.errors.TooLarge`.
    """
    limits = limits or get_settings().bundle_limits()
    if len(data) > limits.max_metadata_bytes:
        raise TooLarge(f"the document is larger than the limit of {_fmt_bytes(limits.max_metadata_bytes)}")
    return _parse_skeleton(data, limits.max_json_depth)


def _parse_skeleton(data: bytes, max_depth: int) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"the document is not valid UTF-8 (byte {exc.start} of the metadata)") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise InvalidJson("the document is empty")
    bare = _JSON_STRING.sub(b'""', data)  # what is left outside strings
    if _too_deep(bare, max_depth):
        raise InvalidJson(f"the document nests deeper than {max_depth} levels")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_parse_constant,
        )
    except _Reject as exc:
        raise InvalidJson(f"the document is not acceptable JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"the document is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise InvalidJson(f"the document nests deeper than {max_depth} levels") from None
    except ValueError as exc:
        # Includes Python's own cap on integer digits (ValueError from int parsing).
        raise InvalidJson(f"the document is not valid JSON: {exc}") from None
    if _SUSPECT_NUMBER.search(bare):
        _check_numbers(doc)
    return doc


__all__ = [
    "CHUNK_BYTES",
    "BundleError",
    "BundleSource",
    "OnnxSink",
    "ReadResult",
    "looks_like_bundle",
    "parse_json",
    "parse_metadata",
    "read_bundle",
]
