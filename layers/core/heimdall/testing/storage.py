"""An in-memory object store: the fake of :class:`~heimdall.domain.storage.ObjectStore` that unit tests,
the demo and benchmarks use (``tests/integration/test_object_store_contract.py`` tests it beside S3).
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from heimdall.domain.storage import ObjectInfo
from heimdall.errors import ObjectNotFound, TooLarge

__all__ = ["InMemoryObjectStore"]


def _split(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class InMemoryObjectStore:
    """A dict of ``(bucket, key) → bytes`` behaving like :class:`ObjectStore` (thread-safe)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def _get(self, uri: str) -> bytes:
        with self._lock:
            data = self.objects.get(_split(uri))
        if data is None:
            raise ObjectNotFound(f"{uri} does not exist")
        return data

    def head(self, uri: str) -> ObjectInfo:
        data = self._get(uri)
        return ObjectInfo(
            size=len(data), etag=hashlib.md5(data, usedforsecurity=False).hexdigest(), version_id=None
        )

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        return self._get(uri)[start : start + length]

    def download(
        self,
        uri: str,
        path: Path,
        *,
        max_bytes: int | None = None,
        version_id: str | None = None,
        etag: str | None = None,
    ) -> int:
        data = self._get(uri)
        if etag is not None and version_id is None and self.head(uri).etag != etag:
            raise ObjectNotFound(f"{uri} was replaced: revision {etag} is gone")
        if max_bytes is not None and len(data) > max_bytes:
            raise TooLarge(f"{uri} is {len(data)} bytes, over the limit of {max_bytes}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)

    def get_bytes(self, uri: str, *, max_bytes: int) -> bytes:
        data = self._get(uri)
        if len(data) > max_bytes:
            raise TooLarge(f"{uri} is over the limit of {max_bytes} bytes")
        return data

    def upload(self, path: Path, uri: str, *, content_type: str | None = None) -> None:
        self.put_bytes(uri, path.read_bytes(), content_type=content_type)

    def put_bytes(self, uri: str, data: bytes, *, content_type: str | None = None) -> None:
        with self._lock:
            self.objects[_split(uri)] = bytes(data)

    def copy(self, source_uri: str, target_uri: str) -> None:
        self.put_bytes(target_uri, self._get(source_uri))

    def list_keys(self, prefix_uri: str) -> list[str]:
        bucket, prefix = _split(prefix_uri)
        with self._lock:
            return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))

    def delete(self, uri: str) -> None:
        with self._lock:
            self.objects.pop(_split(uri), None)

    def presign_get(self, uri: str, *, expires_s: int, filename: str | None = None) -> tuple[str, datetime]:
        """A fake ``memory://bucket/key?expires=…`` URL (nothing serves it; tests read the object)."""
        bucket, key = _split(uri)
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_s)
        query = f"expires={int(expires_at.timestamp())}"
        if filename:
            query += f"&filename={quote(filename)}"
        return f"memory://{bucket}/{quote(key)}?{query}", expires_at

    def presign_post(
        self, uri: str, *, max_bytes: int, expires_s: int
    ) -> tuple[str, dict[str, str], datetime]:
        """A fake form upload: ``memory://bucket`` and the fields S3 would want."""
        bucket, key = _split(uri)
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_s)
        fields = {"key": key, "policy": f"max_bytes={max_bytes};expires={int(expires_at.timestamp())}"}
        return f"memory://{bucket}", fields, expires_at
