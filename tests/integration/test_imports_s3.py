"""Presigned uploads and downloads, and deletes, against the emulator's real HTTP endpoint.

What the API hands out must work with a plain HTTP client: the form fields of a presigned POST plus
the file, and a GET of a presigned URL — no AWS SDK, no credentials.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
from botocore.credentials import RefreshableCredentials

from heimdall.adapters.s3 import MAX_PRESIGN_S, SIGV4, S3ObjectStore, effective_ttl
from heimdall.errors import ObjectNotFound, TooLarge


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"imports-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(aws_env: dict[str, str]) -> S3ObjectStore:
    return S3ObjectStore()  # the client the adapter makes itself (SigV4, the emulator's endpoint)


def test_a_presigned_post_uploads_the_file_with_its_form_fields(store: S3ObjectStore, bucket: str) -> None:
    key = f"bundles/imports/{uuid.uuid4()}/bundle.heimdall"
    body = b'{"format_version": "1.0.0"}' * 10
    url, fields, expires_at = store.presign_post(f"s3://{bucket}/{key}", max_bytes=len(body), expires_s=300)
    assert fields["key"] == key and "policy" in fields
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"  # signature v4
    assert timedelta(seconds=250) < expires_at - datetime.now(UTC) <= timedelta(seconds=300)
    response = httpx.post(url, data=fields, files={"file": ("bundle.heimdall", body)}, timeout=30)
    assert response.status_code in (200, 201, 204), response.text
    assert store.get_bytes(f"s3://{bucket}/{key}", max_bytes=10_000) == body
    # The emulator does not enforce the policy (S3 does): check that the signed policy says so.
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert ["content-length-range", 1, len(body)] in policy["conditions"]
    assert {"key": key} in policy["conditions"] and {"bucket": bucket} in policy["conditions"]


def test_a_presigned_get_downloads_the_object_as_an_attachment(store: S3ObjectStore, bucket: str) -> None:
    uri = f"s3://{bucket}/downloads/m-1/b-1/net-v1.0.0.heimdall"
    store.put_bytes(uri, b"bundle bytes", content_type="application/json")
    url, expires_at = store.presign_get(uri, expires_s=600, filename='Сеть "v1"\r\n.heimdall')
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Expires"] == ["600"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    # An ASCII fallback, and the name itself in RFC 5987 form (controls replaced, nothing unescaped).
    header = (
        'attachment; filename="____ _v1___.heimdall"; '
        "filename*=UTF-8''%D0%A1%D0%B5%D1%82%D1%8C%20%22v1%22__.heimdall"
    )
    assert query["response-content-disposition"] == [header]
    assert timedelta(seconds=550) < expires_at - datetime.now(UTC) <= timedelta(seconds=600)
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.content == b"bundle bytes"
    assert response.headers["content-disposition"] == header
    plain, _ = store.presign_get(uri, expires_s=60)
    assert "response-content-disposition" not in parse_qs(urlparse(plain).query)


def test_a_download_reads_only_the_revision_it_names(
    store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/bundles/imports/i-1/bundle.heimdall"
    store.put_bytes(uri, b"first upload")
    first = store.head(uri).etag
    assert store.download(uri, tmp_path / "a", etag=first) == 12
    assert (tmp_path / "a").read_bytes() == b"first upload"
    store.put_bytes(uri, b"second upload, other bytes")  # the same key written again
    with pytest.raises(ObjectNotFound):  # If-Match: never the other bytes in its place
        store.download(uri, tmp_path / "b", etag=first)
    assert not (tmp_path / "b").exists()
    assert store.download(uri, tmp_path / "c", etag=store.head(uri).etag) == 26
    with pytest.raises(TooLarge):  # the size is checked before anything is read
        store.download(uri, tmp_path / "d", max_bytes=10, etag=store.head(uri).etag)
    assert not (tmp_path / "d").exists()


def test_delete_removes_the_object_and_a_missing_one_is_no_error(store: S3ObjectStore, bucket: str) -> None:
    uri = f"s3://{bucket}/imported/m-1/net-1.0.0.onnx"
    store.put_bytes(uri, b"onnx")
    store.delete(uri)
    with pytest.raises(ObjectNotFound):
        store.head(uri)
    store.delete(uri)
    store.delete(f"s3://{bucket}/never/was")


def test_a_url_never_outlives_the_credentials_that_signed_it(aws_env: dict[str, str], bucket: str) -> None:
    expiry = datetime.now(UTC) + timedelta(minutes=10)

    def refresh() -> dict[str, str]:
        return {
            "access_key": "testing",
            "secret_key": "testing",
            "token": "testing",
            "expiry_time": expiry.isoformat(),
        }

    session = boto3.Session(region_name="us-east-1")
    credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    # botocore has no public setter for refreshable credentials (its stubs omit the attribute).
    session._session._credentials = credentials  # type: ignore[attr-defined]
    client = session.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"], config=SIGV4)
    store = S3ObjectStore(client=client)
    url, expires_at = store.presign_get(f"s3://{bucket}/x", expires_s=3600)
    ttl = int(parse_qs(urlparse(url).query)["X-Amz-Expires"][0])
    assert 480 <= ttl <= 540 and expires_at <= expiry
    _, _, post_expires = store.presign_post(f"s3://{bucket}/x", max_bytes=10, expires_s=3600)
    assert post_expires <= expiry


def test_effective_ttl_clamps_to_seven_days_and_the_credentials() -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    assert effective_ttl(900, None, now) == 900
    assert effective_ttl(10 * MAX_PRESIGN_S, None, now) == MAX_PRESIGN_S
    assert effective_ttl(900, now + timedelta(minutes=5), now) == 240
    assert effective_ttl(900, now - timedelta(minutes=5), now) == 1
