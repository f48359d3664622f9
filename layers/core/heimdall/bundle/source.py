"""Where a bundle is read from: a path, bytes or a binary stream, gzip or not, with its size capped.

:func:`open_source` gives the integrity pass (:mod:`heimdall.bundle.reader`) one stream of the JSON
document whatever the source: a path is refused by its size before a byte is read, gzip is detected by
its magic bytes (never by the name) and decompressed on the fly, and both the bytes read from the
source and the decompressed bytes are capped at ``max_bundle_bytes`` as they are read.
:func:`fmt_bytes` is how the caps' messages show a size.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from heimdall.errors import InvalidBundle, TooLarge
from heimdall.settings import MIB, BundleLimits

GZIP_MAGIC = b"\x1f\x8b"

BundleSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


class CountingReader:
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
            raise TooLarge(f"{self._what} is larger than the limit of {fmt_bytes(self._cap)}")
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
def open_source(
    source: BundleSource, limits: BundleLimits
) -> Iterator[tuple[CountingReader, bool, Callable[[], int]]]:
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
                f"bundle is {fmt_bytes(size)}, over the limit of {fmt_bytes(limits.max_bundle_bytes)}"
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
        raw = CountingReader(fileobj.read, limits.max_bundle_bytes, "bundle")
        head = raw.read(2)
        if head == GZIP_MAGIC:
            gz = gzip.GzipFile(fileobj=_PrefixedReader(head, raw.read), mode="rb")  # type: ignore[call-overload]
            doc = CountingReader(_gzip_read(gz), limits.max_bundle_bytes, "decompressed bundle")
            yield doc, True, lambda: raw.count
        else:
            doc = CountingReader(_PrefixedReader(head, raw.read).read, limits.max_bundle_bytes, "bundle")
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


def fmt_bytes(n: int) -> str:
    """A size as the limits' messages show it: bytes, or MiB with one decimal from 1 MiB up."""
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} bytes"


__all__ = ["GZIP_MAGIC", "BundleSource", "CountingReader", "fmt_bytes", "open_source"]
