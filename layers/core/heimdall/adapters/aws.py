"""How every adapter gets a boto3 client: real AWS, or an emulator — by endpoint, never by code path.

* ``AWS_ENDPOINT_URL`` set: boto3 itself sends every call there (the embedded moto server, LocalStack,
  anything S3/SQS/DynamoDB/EventBridge-compatible).
* ``LOCALSTACK_HOST`` set (and no ``AWS_ENDPOINT_URL``): the client comes from ``localstack-client``,
  which knows LocalStack's edge endpoint and test credentials.
* neither: real AWS.

Clients are created on first use, never at import time, with botocore's ``standard`` retry mode
(bounded retries with backoff for throttling and 5xx).
"""

from __future__ import annotations

import os
from typing import Any

from botocore.config import Config

RETRIES = Config(retries={"max_attempts": 5, "mode": "standard"})


def make_client(service: str, config: Config | None = None) -> Any:
    """A boto3 client for ``service`` on the configured endpoint (``config`` merged over the retries)."""
    merged = RETRIES if config is None else RETRIES.merge(config)
    if os.environ.get("LOCALSTACK_HOST") and not os.environ.get("AWS_ENDPOINT_URL"):
        from localstack_client.session import Session  # noqa: PLC0415 - only when LocalStack is used

        return Session(region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1")).client(
            service, config=merged
        )
    import boto3  # noqa: PLC0415 - created on first use, never at import time

    return boto3.client(service, config=merged)  # type: ignore[call-overload]
