"""The integrity pass's one scan over a bundle document: the metadata skeleton and the streamed model.

:class:`DocumentScanner` reads the document chunk by chunk. Everything except
``model.onnx_model_base64`` is copied into a small *skeleton* document (capped by
``max_metadata_bytes``) for the strict parse afterwards (:mod:`heimdall.bundle.strict_json`); the
base64 string is validated (strict standard alphabet, padding only at the end, no escapes), decoded
with pybase64 and hashed with an incremental sha256 a chunk at a time, and optionally written to a
sink, so memory does not grow with the model. :mod:`heimdall.bundle.reader` drives it.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import json.scanner
import math
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import pybase64

from heimdall.bundle.models import ONNX_FIELD
from heimdall.bundle.source import fmt_bytes
from heimdall.errors import InvalidBase64, InvalidBundle, InvalidJson, TooLarge
from heimdall.settings import MIB, BundleLimits

#: Bytes read from the source at a time. Large enough to amortise Python's per-call overhead,
#: small enough to keep the pass's memory flat.
CHUNK_BYTES = 4 * MIB

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


class _Frame:
    """An object whose keys we follow: the top-level object, and the ``model`` object in it."""

    __slots__ = ("key", "keys", "state")

    #: What the frame waits for: a key (or "}"), the colon after a key, "," or "}" after a value.
    KEY, COLON, AFTER_VALUE = 0, 1, 2

    def __init__(self) -> None:
        self.state = _Frame.KEY
        self.key = ""
        self.keys = 0


class DocumentScanner:
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
            f"of {fmt_bytes(self._limits.max_metadata_bytes)}"
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
                        f"{fmt_bytes(self._limits.max_onnx_bytes)}"
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


__all__ = ["CHUNK_BYTES", "DocumentScanner", "OnnxSink"]
