"""The embedded emulator as a real HTTP endpoint (moto's threaded server on a free loopback port)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from heimdall.adapters.dynamodb.table import create_registry_table

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def emulator_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# --- the registry table, for the contract suites ------------------------------------------------


@pytest.fixture(scope="module")
def atomic_conditional_writes() -> Iterator[None]:
    """Give the emulator DynamoDB's guarantee that a conditional write is atomic.

    Real DynamoDB evaluates a ``ConditionExpression`` and applies the write as one step per item. moto's
    server handles requests on threads and checks then writes without a lock, so two racing conditional
    writes can both succeed there (seen in about one run in twenty of the contract suites' race tests).
    The server runs in this process, so its write operations are serialised here; what is tested is then
    our use of conditions, not moto's threading.
    """
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()

    def serialised(operation: Callable[..., Any]) -> Callable[..., Any]:
        def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                return operation(self, *args, **kwargs)

        return locked

    with pytest.MonkeyPatch.context() as patch:
        for name in ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item"):
            patch.setattr(DynamoDBBackend, name, serialised(getattr(DynamoDBBackend, name)))
        yield


@pytest.fixture(scope="module")
def dynamodb(emulator_endpoint: str, atomic_conditional_writes: None) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=emulator_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=32, retries={"max_attempts": 2, "mode": "standard"}),
    )


@pytest.fixture(scope="module")
def table_name(dynamodb: Any) -> str:
    name = f"heimdall-registry-{uuid.uuid4().hex[:8]}"
    create_registry_table(dynamodb, name)
    return name


@pytest.fixture
def aws_env(emulator_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment that points boto3 (in this process and in children) at the emulator."""
    env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": emulator_endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3(aws_env: dict[str, str]) -> S3Client:
    return boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
