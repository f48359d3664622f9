"""Throttling and 5xx from AWS, injected below botocore's retry logic: bounded retries, then a typed error.

A ``before-send`` hook answers the first N attempts of an operation with an HTTP error, as AWS would
under load; later attempts reach the emulator. So this exercises the adapters' real retry configuration
(botocore ``standard`` mode, 5 attempts), not a stub of it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config

from heimdall.adapters.dynamodb.registry import DynamoRegistry
from heimdall.adapters.dynamodb.table import create_registry_table
from heimdall.adapters.s3 import S3ObjectStore
from heimdall.domain.records import ModelRecord
from heimdall.errors import RegistryUnavailable, StorageError

RETRYING = Config(retries={"max_attempts": 5, "mode": "standard"})


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def inject(client: Any, operation: str, failures: int, status: int, code: str) -> list[int]:
    """Fail the first ``failures`` attempts of ``operation``; returns the attempt counter."""
    attempts = [0]
    service = client.meta.service_model.service_name  # the event name uses the service id, e.g. "dynamodb"
    body = (
        json.dumps({"__type": code, "message": "injected"}).encode()
        if service == "dynamodb"
        else (f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode())
    )

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        attempts[0] += 1
        if attempts[0] <= failures:
            return AWSResponse(
                request.url,
                status,
                HTTPHeaders.from_dict({"Content-Type": "application/x-amz-json-1.0"}),
                _Raw(body),
            )
        return None

    client.meta.events.register(
        f"before-send.{client.meta.service_model.service_id.hyphenize()}.{operation}", handler
    )
    return attempts


def test_s3_throttling_is_retried_then_succeeds(aws_env: dict[str, str]) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"], config=RETRYING)
    bucket = f"fault-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    attempts = inject(s3, "PutObject", failures=2, status=503, code="SlowDown")
    S3ObjectStore(client=s3).put_bytes(f"s3://{bucket}/k", b"data")
    assert attempts[0] == 3
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"


def test_s3_persistent_5xx_gives_up_with_a_typed_error(aws_env: dict[str, str]) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"], config=RETRYING)
    bucket = f"fault-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    attempts = inject(s3, "PutObject", failures=100, status=500, code="InternalError")
    with pytest.raises(StorageError):
        S3ObjectStore(client=s3).put_bytes(f"s3://{bucket}/k", b"data")
    assert attempts[0] == 6  # bounded: the first attempt and 5 retries, no retry storm


def test_dynamodb_throttling_then_a_typed_error(aws_env: dict[str, str]) -> None:
    dynamodb = boto3.client("dynamodb", endpoint_url=aws_env["AWS_ENDPOINT_URL"], config=RETRYING)
    table = f"fault-{uuid.uuid4().hex[:8]}"
    create_registry_table(dynamodb, table)
    registry = DynamoRegistry(table, client=dynamodb)
    record = ModelRecord(model_id="m1", owner="alice", model_name="n", version="1")
    attempts = inject(dynamodb, "PutItem", failures=2, status=400, code="ThrottlingException")
    registry.put_model(record)
    assert attempts[0] >= 3
    assert registry.get_model("alice", "m1").model_name == "n"
    always = inject(dynamodb, "GetItem", failures=100, status=503, code="ServiceUnavailable")
    with pytest.raises(RegistryUnavailable):
        registry.get_model("alice", "m1")
    assert always[0] == 6  # the first attempt and 5 retries
