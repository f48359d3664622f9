"""Inbound event models against the committed samples (events/), Powertools' strict models, and bad input.

The trigger models are lenient on purpose, so each sample is also parsed by Powertools' own models (which
require every field AWS sends) to show that the samples are real-shaped and that both read the same values.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import (
    EventBridgeModel,
    S3EventNotificationEventBridgeModel,
    S3Model,
    SqsModel,
)

from heimdall.triggers.batch import BatchJobDetail, parse_batch_state_change
from heimdall.triggers.s3 import (
    MAX_KEY_LENGTH,
    NotificationError,
    ObjectCreated,
    S3EventBridgeModel,
    S3RecordsModel,
    S3TestEvent,
    decode_key,
    parse_notification,
)

EVENTS = Path(__file__).resolve().parents[2] / "events"
JOB_ID = "514cbdc3-8d16-57a8-857b-4d250c341869"
BATCH_JOB_ID = "b2f6c1d4-8e3a-4f7b-9c5d-0a1e2f3b4c5d"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def sqs_bodies(name: str) -> list[Any]:
    """The notifications an SQS batch sample carries, the batch itself checked by Powertools' SqsModel."""
    batch = SqsModel.model_validate(load(name))
    return [json.loads(str(record.body)) for record in batch.Records]


@pytest.mark.parametrize("name", ["s3-object-created-checkpoint.json", "s3-object-created-bundle.json"])
def test_eventbridge_samples_read_as_powertools_reads_them(name: str) -> None:
    event = load(name)
    strict = S3EventNotificationEventBridgeModel.model_validate(event)
    ours = S3EventBridgeModel.model_validate(event).detail.object_created()
    assert parse_notification(event) == ours
    assert ours == ObjectCreated(
        bucket=strict.detail.bucket.name,
        key=decode_key(strict.detail.object.key),
        size=int(strict.detail.object.size or 0),
        etag=strict.detail.object.etag,
        version_id=strict.detail.object.version_id,
        sequencer=strict.detail.object.sequencer,
    )


def test_keys_are_decoded_by_the_model() -> None:
    bundle = parse_notification(load("s3-object-created-bundle.json"))
    assert isinstance(bundle, ObjectCreated)
    assert bundle.key == "bundles/partner drop (2025)/localization-net-v1.0.0.heimdall.gz"
    assert bundle.revision == bundle.version_id


def test_the_sqs_batch_sample_carries_two_object_created_events() -> None:
    parsed = [parse_notification(body) for body in sqs_bodies("sqs-s3-notifications.json")]
    assert [p.key for p in parsed if isinstance(p, ObjectCreated)] == [
        "checkpoints/localization-net/1.0.0/best model.safetensors",
        "checkpoints/localization-net/1.0.0/heimdall.json",
    ]


def test_the_test_event_sample_is_recognised() -> None:
    (body,) = sqs_bodies("s3-test-event.json")
    assert parse_notification(body) == S3TestEvent(bucket="heimdall-dev-ingest-123456789012-us-east-1")


def classic_record(key: str) -> dict[str, Any]:
    """A classic notification as S3 sends it straight to SQS or Lambda (no EventBridge)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2025-11-20T10:15:02.000Z",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAJEXAMPLE1234"},
                "requestParameters": {"sourceIPAddress": "203.0.113.24"},
                "responseElements": {"x-amz-request-id": "8CB0AE3D7140380F", "x-amz-id-2": "abc="},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "ingest",
                    "bucket": {
                        "name": "heimdall-dev-ingest",
                        "ownerIdentity": {"principalId": "A3I5XTEXAMAI3E"},
                        "arn": "arn:aws:s3:::heimdall-dev-ingest",
                    },
                    "object": {
                        "key": key,
                        "size": 1712488,
                        "eTag": "5d41402abc4b2a76b9719d911017c592",
                        "versionId": "null",
                        "sequencer": "00691EEA261A2168",
                    },
                },
            }
        ]
    }


def test_a_classic_record_reads_as_powertools_reads_it() -> None:
    event = classic_record("checkpoints/localization-net/1.0.0/best+model%282%29.safetensors")
    (strict,) = S3Model.model_validate(event).Records
    assert strict.s3.object is not None
    ours = S3RecordsModel.model_validate(event).Records[0].s3.object_created()
    assert parse_notification(event) == ours
    assert (ours.bucket, ours.key, ours.size, ours.etag, ours.sequencer) == (
        strict.s3.bucket.name,
        decode_key(strict.s3.object.key),
        strict.s3.object.size,
        strict.s3.object.eTag,
        strict.s3.object.sequencer,
    )
    assert ours.key == "checkpoints/localization-net/1.0.0/best model(2).safetensors"
    assert ours.version_id is None and ours.revision == "5d41402abc4b2a76b9719d911017c592"  # unversioned


def test_a_minimal_event_is_accepted_where_powertools_would_refuse_it() -> None:
    # What moto and the local stack send: no id, account, time, request-id. Accepted as before the models.
    minimal = {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "detail": {"bucket": {"name": "b"}, "object": {"key": "k", "size": "big", "etag": '"e"'}},
    }
    with pytest.raises(ValueError, match="validation error"):
        S3EventNotificationEventBridgeModel.model_validate(minimal)
    assert parse_notification(minimal) == ObjectCreated(
        bucket="b", key="k", size=0, etag="e", version_id=None, sequencer=None
    )


def with_object(**changes: Any) -> dict[str, Any]:
    event = copy.deepcopy(load("s3-object-created-checkpoint.json"))
    event["detail"]["object"].update(changes)
    return event


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (with_object(key="k" * (MAX_KEY_LENGTH + 1)), f"longer than {MAX_KEY_LENGTH} characters"),
        (with_object(key="%2F" * MAX_KEY_LENGTH), None),  # 3072 characters encoded, 1024 decoded: fine
        (with_object(key=""), "bucket name or object key is missing"),
        (with_object(key=7), "bucket name or object key is missing"),
        ({**load("s3-object-created-checkpoint.json"), "detail": {"bucket": "b"}}, "no bucket or object"),
        ({**load("s3-object-created-checkpoint.json"), "detail-type": "Object Deleted"}, "unexpected S3"),
        (classic_record("k") | {"Records": []}, "not an S3 Object Created notification"),
    ],
)
def test_malformed_events_raise_notification_errors(event: dict[str, Any], reason: str | None) -> None:
    if reason is None:
        assert isinstance(parse_notification(event), ObjectCreated)
        return
    with pytest.raises(NotificationError, match=reason):
        parse_notification(event)


@pytest.mark.parametrize(
    ("name", "status", "exit_code", "status_reason"),
    [
        ("running", "RUNNING", None, None),
        ("succeeded", "SUCCEEDED", 0, "Essential container in task exited"),
        ("failed", "FAILED", 3, "Essential container in task exited"),
    ],
)
def test_batch_samples_parse(
    name: str, status: str, exit_code: int | None, status_reason: str | None
) -> None:
    event = load(f"batch-job-state-change-{name}.json")
    envelope = EventBridgeModel.model_validate(event)  # a real EventBridge event
    assert (envelope.source, envelope.detail_type) == ("aws.batch", "Batch Job State Change")
    detail = parse_batch_state_change(event)
    assert detail is not None
    assert (detail.status, detail.job_id, detail.parameters["job_id"]) == (status, BATCH_JOB_ID, JOB_ID)
    assert detail.job_name == f"heimdall-{JOB_ID}"
    assert (detail.container.exit_code, detail.status_reason) == (exit_code, status_reason)


def test_odd_batch_fields_read_as_absent() -> None:
    detail = parse_batch_state_change(
        {"detail": {"parameters": "x", "container": {"exitCode": "3"}, "statusReason": "", "jobId": 0}}
    )
    assert detail == BatchJobDetail()
    assert detail.parameters == {} and detail.container.exit_code is None and detail.job_id is None


@pytest.mark.parametrize("event", [{}, {"detail": "nonsense"}, {"detail": None}, [], "x", None])
def test_an_event_without_a_detail_object_is_none(event: Any) -> None:
    assert parse_batch_state_change(event) is None
