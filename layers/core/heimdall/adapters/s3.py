"""Object storage on S3 (or an emulator: boto3 honours ``AWS_ENDPOINT_URL``).

No client is created at import time; the first call creates one, with bounded retries in botocore's
``standard`` mode, so throttling and 5xx are retried a few times and then surface as
:class:`~heimdall.errors.StorageError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from heimdall.adapters.aws import make_client
from heimdall.domain.storage import ObjectInfo, content_disposition
from heimdall.errors import ObjectNotFound, StorageError, TooLarge

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.*)$")
#: A revision asked for that is not there: replaced by a later write (412), or an unknown version.
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchVersion", "412", "PreconditionFailed"}
_DOWNLOAD_CHUNK = 1024 * 1024
#: Signature v4 is the only one S3 accepts in newer regions, and the only one with an expiry we control.
SIGV4 = Config(signature_version="s3v4")
#: S3 refuses a SigV4 presigned URL that lives longer than 7 days.
MAX_PRESIGN_S = 7 * 24 * 3600
#: Margin kept before the signing credentials expire (a URL signed by expired credentials is refused).
_CREDENTIALS_MARGIN_S = 60


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    match = _S3_URI.match(uri)
    if match is None:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return match["bucket"], match["key"]


def join_uri(prefix: str, name: str) -> str:
    """``prefix`` (ending in / or not) joined with ``name``."""
    return prefix if not name else f"{prefix.rstrip('/')}/{name}"


class S3ObjectStore:
    """Download, upload and list objects by ``s3://`` URI."""

    def __init__(self, client: S3Client | None = None) -> None:
        self._client = client

    @property
    def client(self) -> S3Client:
        if self._client is None:
            self._client = make_client("s3", SIGV4)
        return self._client

    def head(self, uri: str) -> ObjectInfo:
        """Size, ETag (unquoted) and version id of ``uri``."""
        bucket, key = parse_s3_uri(uri)
        with _translated(uri):
            head = self.client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(
            size=int(head["ContentLength"]),
            etag=str(head.get("ETag", "")).strip('"'),
            version_id=head.get("VersionId") if head.get("VersionId") not in (None, "null") else None,
        )

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""
        bucket, key = parse_s3_uri(uri)
        if length <= 0:
            return b""
        with _translated(uri):
            response = self.client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
            data: bytes = response["Body"].read(length)
        return data

    def download(
        self,
        uri: str,
        path: Path,
        *,
        max_bytes: int | None = None,
        version_id: str | None = None,
        etag: str | None = None,
    ) -> int:
        """Download ``uri`` to ``path``; refuses objects over ``max_bytes``. Returns the size.

        ``version_id`` reads that version; else ``etag`` makes every request ``If-Match`` it, so a
        later write of the same key is refused (ObjectNotFound) instead of being read in its place.
        """
        bucket, key = parse_s3_uri(uri)
        revision: dict[str, Any] = (
            {"VersionId": version_id} if version_id else {"IfMatch": f'"{etag}"'} if etag else {}
        )
        with _translated(uri):
            head = self.client.head_object(Bucket=bucket, Key=key, **revision)
            size = int(head["ContentLength"])
            if max_bytes is not None and size > max_bytes:
                raise TooLarge(f"{uri} is {size} bytes, over the limit of {max_bytes}")
            path.parent.mkdir(parents=True, exist_ok=True)
            if "IfMatch" in revision:  # the managed download cannot send If-Match: one streamed GET
                response = self.client.get_object(Bucket=bucket, Key=key, IfMatch=revision["IfMatch"])
                with path.open("wb") as out:
                    for chunk in response["Body"].iter_chunks(_DOWNLOAD_CHUNK):
                        out.write(chunk)
            else:
                self.client.download_file(bucket, key, str(path), ExtraArgs=revision or None)
        return size

    def get_bytes(self, uri: str, *, max_bytes: int) -> bytes:
        """The object's bytes (small objects only)."""
        bucket, key = parse_s3_uri(uri)
        with _translated(uri):
            response = self.client.get_object(Bucket=bucket, Key=key)
            if int(response["ContentLength"]) > max_bytes:
                raise TooLarge(f"{uri} is over the limit of {max_bytes} bytes")
            data: bytes = response["Body"].read(max_bytes + 1)
        return data

    def upload(self, path: Path, uri: str, *, content_type: str | None = None) -> None:
        """Upload ``path`` to ``uri`` (overwriting: keys are deterministic, retries overwrite)."""
        bucket, key = parse_s3_uri(uri)
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        with _translated(uri):
            self.client.upload_file(str(path), bucket, key, ExtraArgs=extra or None)

    def put_bytes(self, uri: str, data: bytes, *, content_type: str | None = None) -> None:
        """Write ``data`` to ``uri`` (small objects: reasons, results)."""
        bucket, key = parse_s3_uri(uri)
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        with _translated(uri):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)

    def copy(self, source_uri: str, target_uri: str) -> None:
        """Server-side copy (managed: multipart for large objects)."""
        source_bucket, source_key = parse_s3_uri(source_uri)
        bucket, key = parse_s3_uri(target_uri)
        with _translated(source_uri):
            self.client.copy({"Bucket": source_bucket, "Key": source_key}, bucket, key)

    def list_keys(self, prefix_uri: str) -> list[str]:
        """Every key under ``prefix_uri``."""
        bucket, prefix = parse_s3_uri(prefix_uri)
        keys: list[str] = []
        with _translated(prefix_uri):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def delete(self, uri: str) -> None:
        """Delete ``uri`` (S3 answers success for a key that does not exist)."""
        bucket, key = parse_s3_uri(uri)
        with _translated(uri):
            self.client.delete_object(Bucket=bucket, Key=key)

    def presign_get(self, uri: str, *, expires_s: int, filename: str | None = None) -> tuple[str, datetime]:
        """A SigV4 presigned GET of ``uri``; ``filename`` makes S3 answer it as an attachment."""
        bucket, key = parse_s3_uri(uri)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        ttl, expires_at = self._lifetime(expires_s)
        with _translated(uri):
            url = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)
        return url, expires_at

    def presign_post(
        self, uri: str, *, max_bytes: int, expires_s: int
    ) -> tuple[str, dict[str, str], datetime]:
        """A SigV4 presigned POST policy for ``uri`` that only accepts 1 to ``max_bytes`` bytes."""
        bucket, key = parse_s3_uri(uri)
        ttl, expires_at = self._lifetime(expires_s)
        with _translated(uri):
            post = self.client.generate_presigned_post(
                Bucket=bucket,
                Key=key,
                Conditions=[["content-length-range", 1, int(max_bytes)]],
                ExpiresIn=ttl,
            )
        return str(post["url"]), {str(k): str(v) for k, v in post["fields"].items()}, expires_at

    def _lifetime(self, expires_s: int) -> tuple[int, datetime]:
        now = datetime.now(UTC)
        ttl = effective_ttl(expires_s, _credentials_expiry(self.client), now)
        return ttl, now + timedelta(seconds=ttl)


@contextmanager
def _translated(uri: str) -> Iterator[None]:
    """Turn botocore's exceptions into ObjectNotFound / StorageError."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            raise ObjectNotFound(f"{uri} does not exist") from None
        raise StorageError(f"S3 refused {uri}: {code or exc}") from None
    except BotoCoreError as exc:
        raise StorageError(f"S3 failed for {uri}: {exc}") from None


def _credentials_expiry(client: Any) -> datetime | None:
    """When the credentials that sign for ``client`` expire (temporary ones), else None.

    botocore keeps them on the request signer; refreshable credentials (an assumed role, an instance
    or container role) know their expiry, static keys do not.
    """
    signer = getattr(client, "_request_signer", None)
    credentials = getattr(signer, "_credentials", None)
    refresh = getattr(credentials, "get_frozen_credentials", None)
    if callable(refresh):
        refresh()  # refreshes credentials about to expire, as signing would, so the expiry is current
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime):
        return None
    return expiry if expiry.tzinfo is not None else expiry.replace(tzinfo=UTC)


def effective_ttl(requested_s: int, credentials_expiry: datetime | None, now: datetime) -> int:
    """``requested_s`` clamped to S3's 7 days and to the signing credentials' remaining validity."""
    ttl = max(1, min(int(requested_s), MAX_PRESIGN_S))
    if credentials_expiry is not None:
        remaining = int((credentials_expiry - now).total_seconds()) - _CREDENTIALS_MARGIN_S
        ttl = max(1, min(ttl, remaining))
    return ttl
