"""Heimdall events on a real bus: the adapter against the emulator's HTTP endpoint, a subscriber's rule
and SQS queue, and every received detail checked against its committed JSON Schema."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import jsonschema

from heimdall.adapters.eventbridge import EventBridgePublisher
from heimdall.events import (
    EVENT_SOURCE,
    BundleIndexed,
    DetailType,
    ExportJobSubmitted,
    make_event,
    parse_detail,
    schema_file_name,
)

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "events" / "schemas"
OCCURRED = datetime(2025, 11, 20, 10, 15, 2, tzinfo=UTC)


def subscribe(events: Any, sqs: Any, bus: str, pattern: dict[str, Any]) -> str:
    """What a consumer outside Heimdall does: a rule on the bus with its own SQS queue as target."""
    name = f"sub-{uuid.uuid4().hex[:8]}"
    queue_url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule_arn = events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern))["RuleArn"]
    # As in AWS, the queue must let EventBridge (for this rule only) send to it.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "queue", "Arn": queue_arn}])
    return queue_url


def receive(sqs: Any, queue_url: str, expected: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Up to ``expected`` envelopes from the queue (deleting them), waiting at most ``timeout_s``."""
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(bodies) < expected and time.monotonic() < deadline:
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in response.get("Messages", []):
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def validate_against_schema(detail_type: str, detail: dict[str, Any]) -> None:
    path = SCHEMAS_DIR / schema_file_name(DetailType(detail_type))
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(detail)


def test_published_events_reach_a_subscriber_and_match_their_schemas(aws_env: dict[str, str]) -> None:
    endpoint = aws_env["AWS_ENDPOINT_URL"]
    events = boto3.client("events", endpoint_url=endpoint, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    bus = f"heimdall-it-{uuid.uuid4().hex[:8]}"
    events.create_event_bus(Name=bus)
    everything = subscribe(events, sqs, bus, {"source": [EVENT_SOURCE]})
    indexed_only = subscribe(events, sqs, bus, {"source": [EVENT_SOURCE], "detail-type": ["Bundle Indexed"]})

    submitted = ExportJobSubmitted(
        idempotency_key=ExportJobSubmitted.key_for("job-1"),
        occurred_at=OCCURRED,
        owner="alice",
        job_id="job-1",
        model_name="localization-net",
        version="1.0.0",
        batch_job_id="b2f6c1d4-8e3a-4f7b-9c5d-0a1e2f3b4c5d",
        checkpoint_uri="s3://ingest/checkpoints/localization-net/1.0.0/best model.safetensors",
        formats=["onnx", "onnx_fp16"],
    )
    indexed = BundleIndexed(
        idempotency_key=BundleIndexed.key_for("ingest", "bundles/a.heimdall", "etag-1"),
        occurred_at=OCCURRED,
        owner="alice",
        model_id="0c6e3f4a-9b2d-4e71-a8c5-3d2f1e0b9a87",
        original_model_id="5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        model_name="localization-net (Imported)",
        version="1.0.0",
        imported=True,
        onnx_sha256="ab" * 32,
        onnx_size_bytes=1_704_118,
        bucket="artifacts",
        bundle_key="bundles/0c6e3f4a/localization-net (Imported)-v1.0.0.heimdall",
        onnx_key="imported/localization-net (Imported)-1.0.0.onnx",
        source_bucket="ingest",
        source_key="bundles/a.heimdall",
        job_id=None,
    )

    # No client passed: the adapter builds its own from the environment (AWS_ENDPOINT_URL).
    EventBridgePublisher(bus).publish([make_event(submitted), make_event(indexed)])

    received = receive(sqs, everything, expected=2)
    assert sorted(e["detail-type"] for e in received) == ["Bundle Indexed", "Export Job Submitted"]
    for envelope in received:
        assert envelope["source"] == EVENT_SOURCE
        assert envelope["time"] == "2025-11-20T10:15:02Z"  # the detail's occurred_at, not the put time
        validate_against_schema(envelope["detail-type"], envelope["detail"])
        parsed = parse_detail(envelope["detail-type"], envelope["detail"])
        assert parsed in (submitted, indexed)
    assert {e["detail"]["idempotency_key"] for e in received} == {
        submitted.idempotency_key,
        indexed.idempotency_key,
    }

    # A subscriber filtering on detail-type gets only its kind (and nothing else trails behind it).
    filtered = receive(sqs, indexed_only, expected=1)
    assert [e["detail-type"] for e in filtered] == ["Bundle Indexed"]
    assert "Messages" not in sqs.receive_message(QueueUrl=indexed_only, WaitTimeSeconds=1)
