"""The integration event path's pieces: Lambda handlers loaded as Lambda loads them, SQS batches of S3
notifications, a job runner that runs the conversion job in a subprocess, and the ``stack`` fixture
(buckets, registry table, bus and a subscriber's queue on the emulator) that ties them together.

Shared by ``tests/integration/test_event_path.py`` and ``test_half_pairs_path.py``; ``stack`` needs the
``aws_env`` fixture of ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from heimdall import wiring
from heimdall.adapters.batch import batch_job_name
from heimdall.adapters.dynamodb.table import create_registry_table
from heimdall.contracts.jobs import JobSpec
from heimdall.settings import get_settings


def load_handler(function: str) -> Callable[[dict[str, Any], Any], Any]:
    """A Lambda's ``lambda_handler``, loaded from ``functions/{function}/app.py`` as Lambda loads it."""
    path = Path(__file__).resolve().parents[2] / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"heimdall_function_{function}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Callable[[dict[str, Any], Any], Any] = module.lambda_handler
    return handler


EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
MANIFEST = {
    "model_name": "localization-net",
    "version": "1.0.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "output_names": ["positions", "uncertainties"],
    "formats": ["onnx"],
}


@dataclass
class Context:
    function_name: str = "test"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test"
    aws_request_id: str = "req-1"


def sqs_batch(*notifications: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "rh",
                "body": json.dumps(n),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ingest",
                "awsRegion": "us-east-1",
            }
            for n in notifications
        ]
    }


def object_created(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    head = s3.head_object(Bucket=bucket, Key=key)
    return {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {
            "bucket": {"name": bucket},
            # As S3 sends it: URL-encoded (a space becomes +).
            "object": {
                "key": key.replace(" ", "+"),
                "size": head["ContentLength"],
                "etag": head["ETag"].strip('"'),
            },
        },
    }


class SubprocessRunner:
    """Runs each submitted job at once as `python -m heimdall_batch`, then reports its Batch states."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.states: list[dict[str, Any]] = []

    def submit(self, spec: JobSpec) -> str:
        batch_id = f"local-{spec.job_id[:8]}"
        done = subprocess.run(
            [sys.executable, "-m", "heimdall_batch"],
            env={**os.environ, **self.env, "HEIMDALL_JOB_SPEC": spec.model_dump_json()},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        for status in ("RUNNING", "SUCCEEDED" if done.returncode == 0 else "FAILED"):
            self.states.append(
                {
                    "version": "0",
                    "detail-type": "Batch Job State Change",
                    "source": "aws.batch",
                    "detail": {
                        "jobName": batch_job_name(spec.job_id),
                        "jobId": batch_id,
                        "status": status,
                        "parameters": {"job_id": spec.job_id},
                        "container": {"exitCode": done.returncode},
                        "statusReason": done.stderr[-500:],
                    },
                }
            )
        return batch_id

    def cancel(self, runner_job_id: str, reason: str) -> None:
        """JobSubmitter.cancel: a job here has finished by the time submit returns; nothing to stop."""


@pytest.fixture(name="stack")
def stack_fixture(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    stage = f"t{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("HEIMDALL_STAGE", stage)
    get_settings.cache_clear()
    names = get_settings().resource_names()
    endpoint = aws_env["AWS_ENDPOINT_URL"]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for bucket in (names.ingest_bucket, names.artifacts_bucket):
        s3.create_bucket(Bucket=bucket)
    create_registry_table(boto3.client("dynamodb", endpoint_url=endpoint), names.table_name)
    events = boto3.client("events", endpoint_url=endpoint)
    events.create_event_bus(Name=names.event_bus_name)
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    queue_url = sqs.create_queue(QueueName=f"subscriber-{stage}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name="all-heimdall",
        EventBusName=names.event_bus_name,
        EventPattern=json.dumps({"source": ["heimdall"]}),
    )
    events.put_targets(
        Rule="all-heimdall", EventBusName=names.event_bus_name, Targets=[{"Id": "q", "Arn": queue_arn}]
    )
    runner = SubprocessRunner({**aws_env, "HEIMDALL_STAGE": stage})
    wiring.reset()
    wiring.use_job_submitter(runner)
    yield {"names": names, "s3": s3, "sqs": sqs, "queue_url": queue_url, "runner": runner}
    wiring.use_job_submitter(None)
    wiring.reset()


def received(stack: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        messages = (
            stack["sqs"]
            .receive_message(QueueUrl=stack["queue_url"], MaxNumberOfMessages=10)
            .get("Messages", [])
        )
        if not messages:
            return out
        for message in messages:
            out.append(json.loads(message["Body"]))
            stack["sqs"].delete_message(QueueUrl=stack["queue_url"], ReceiptHandle=message["ReceiptHandle"])
