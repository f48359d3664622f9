"""The object-storage port used by logic, and the download names and headers of stored files.

:class:`heimdall.adapters.s3.S3ObjectStore` is the real implementation,
``heimdall.testing.storage.InMemoryObjectStore`` the fake for unit tests. Logic names objects by
``s3://bucket/key`` URIs and never imports boto3.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote


@dataclass(frozen=True)
class Download:
    """A presigned GET of a stored file (a job's package or bundle, a deployment's zip)."""

    url: str
    expires_at: datetime
    file: str
    key: str
    size_bytes: int | None
    sha256: str | None


#: What may stand in the quoted ASCII ``filename=`` fallback without escaping, in any client.
_NOT_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")
#: Characters RFC 5987 lets stand unencoded in ``filename*`` (attr-char, less ALPHA and DIGIT).
_ATTR_CHARS = "!#$&+-.^_`|~"
_MAX_FILENAME_CHARS = 200
#: Unicode categories replaced in a download name: controls, format, surrogates, private use,
#: unassigned, and line or paragraph separators.
_NOT_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def download_name(name: str) -> str:
    """``name`` as one file name: path separators and characters that cannot be shown become ``_``."""
    cleaned = "".join(
        "_" if char in "/\\" or unicodedata.category(char) in _NOT_IN_NAMES else char for char in name
    )
    return cleaned.strip()[:_MAX_FILENAME_CHARS] or "download"


def content_disposition(filename: str) -> str:
    """An RFC 6266 ``attachment`` header value for ``filename`` (any text, a sender's name included).

    ``filename="…"`` is an ASCII fallback with nothing to escape; when that changed the name,
    ``filename*=UTF-8''…`` (RFC 5987 percent-encoding) carries the real one for clients that read it.
    """
    name = download_name(filename)
    fallback = _NOT_ASCII_SAFE.sub("_", name).strip(" .") or "download"
    header = f'attachment; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS, encoding='utf-8')}"
    return header


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells: size, and the revision that makes this write unique."""

    size: int
    etag: str
    version_id: str | None

    @property
    def revision(self) -> str:
        return self.version_id or self.etag


class ObjectStore(Protocol):
    """What logic needs from S3."""

    def head(self, uri: str) -> ObjectInfo: ...

    def read_range(self, uri: str, start: int, length: int) -> bytes: ...

    def download(
        self,
        uri: str,
        path: Path,
        *,
        max_bytes: int | None = None,
        version_id: str | None = None,
        etag: str | None = None,
    ) -> int:
        """Download ``uri`` to ``path`` (TooLarge over ``max_bytes``, checked before reading it).

        ``version_id``, else ``etag``, names the revision to read: when another write replaced it,
        ObjectNotFound, never the other bytes.
        """
        ...

    def get_bytes(self, uri: str, *, max_bytes: int) -> bytes: ...

    def upload(self, path: Path, uri: str, *, content_type: str | None = None) -> None: ...

    def put_bytes(self, uri: str, data: bytes, *, content_type: str | None = None) -> None: ...

    def copy(self, source_uri: str, target_uri: str) -> None: ...

    def list_keys(self, prefix_uri: str) -> list[str]: ...

    def delete(self, uri: str) -> None:
        """Delete the object; deleting one that does not exist is not an error."""
        ...

    def presign_get(self, uri: str, *, expires_s: int, filename: str | None = None) -> tuple[str, datetime]:
        """A URL that downloads ``uri`` without credentials, and when it expires.

        ``filename`` makes the download an attachment of that name. The lifetime may be shorter than
        ``expires_s`` (never beyond the signing credentials' own expiry).
        """
        ...

    def presign_post(
        self, uri: str, *, max_bytes: int, expires_s: int
    ) -> tuple[str, dict[str, str], datetime]:
        """An HTML-form upload to ``uri``: the URL, the form fields to send with ``file``, the expiry.

        The upload is refused unless it is 1 to ``max_bytes`` bytes long.
        """
        ...
