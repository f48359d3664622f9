"""One behaviour, two stores: the S3 adapter against the emulator's endpoint, and the in-memory fake."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from heimdall.adapters.s3 import S3ObjectStore
from heimdall.domain.storage import ObjectStore
from heimdall.errors import ObjectNotFound, TooLarge
from heimdall.testing.storage import InMemoryObjectStore


@pytest.fixture(params=["s3", "memory"])
def store(request: pytest.FixtureRequest) -> tuple[ObjectStore, str]:
    bucket = f"contract-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        return InMemoryObjectStore(), bucket
    s3: Any = request.getfixturevalue("s3")
    s3.create_bucket(Bucket=bucket)
    return S3ObjectStore(client=s3), bucket


def test_put_get_copy_list_download(store: tuple[ObjectStore, str], tmp_path: Path) -> None:
    objects, bucket = store
    objects.put_bytes(f"s3://{bucket}/a/one.json", b'{"x": 1}', content_type="application/json")
    objects.copy(f"s3://{bucket}/a/one.json", f"s3://{bucket}/quarantine/one.json")
    source = tmp_path / "two.bin"
    source.write_bytes(b"\x00" * 1000)
    objects.upload(source, f"s3://{bucket}/a/two.bin")
    assert objects.list_keys(f"s3://{bucket}/a/") == ["a/one.json", "a/two.bin"]
    assert objects.get_bytes(f"s3://{bucket}/quarantine/one.json", max_bytes=100) == b'{"x": 1}'
    assert objects.download(f"s3://{bucket}/a/two.bin", tmp_path / "out" / "two.bin") == 1000
    assert (tmp_path / "out" / "two.bin").read_bytes() == source.read_bytes()


def test_missing_and_oversized_objects_are_typed_errors(
    store: tuple[ObjectStore, str], tmp_path: Path
) -> None:
    objects, bucket = store
    with pytest.raises(ObjectNotFound):
        objects.get_bytes(f"s3://{bucket}/nope", max_bytes=10)
    with pytest.raises(ObjectNotFound):
        objects.download(f"s3://{bucket}/nope", tmp_path / "x")
    objects.put_bytes(f"s3://{bucket}/big", b"x" * 100)
    with pytest.raises(TooLarge):
        objects.download(f"s3://{bucket}/big", tmp_path / "big", max_bytes=10)
    with pytest.raises(TooLarge):
        objects.get_bytes(f"s3://{bucket}/big", max_bytes=10)
    assert not (tmp_path / "big").exists()


def test_head_and_ranges(store: tuple[ObjectStore, str]) -> None:
    objects, bucket = store
    objects.put_bytes(f"s3://{bucket}/r", b"0123456789")
    info = objects.head(f"s3://{bucket}/r")
    assert info.size == 10 and info.etag and info.revision == info.etag
    assert objects.read_range(f"s3://{bucket}/r", 2, 3) == b"234"
    assert objects.read_range(f"s3://{bucket}/r", 8, 10) == b"89"
    objects.put_bytes(f"s3://{bucket}/r", b"changed")
    assert objects.head(f"s3://{bucket}/r").etag != info.etag
    with pytest.raises(ObjectNotFound):
        objects.head(f"s3://{bucket}/missing")
