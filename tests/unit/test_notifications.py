"""S3 notifications: both shapes parsed, keys decoded once, test events ignored, keys classified."""

from __future__ import annotations

from typing import Any

import pytest

from heimdall.triggers.keys import KeyKind, classify_artifacts_key, classify_ingest_key
from heimdall.triggers.s3 import NotificationError, ObjectCreated, S3TestEvent, decode_key, parse_notification


def eventbridge(key: str, **obj: Any) -> dict[str, Any]:
    return {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {
            "version": "0",
            "bucket": {"name": "heimdall-dev-ingest"},
            "object": {"key": key, "size": 10, "etag": "abc", "sequencer": "00A", **obj},
            "reason": "PutObject",
        },
    }


def classic(key: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "b"},
                    "object": {"key": key, "size": 3, "eTag": "e1", "versionId": "v1"},
                },
            }
        ]
    }


def test_eventbridge_shape_with_encoded_key() -> None:
    event = parse_notification(
        eventbridge("checkpoints%2Fmy+model%2F1.0.0%2Fmodel%2Bv2.pt", **{"version-id": "v9"})
    )
    assert isinstance(event, ObjectCreated)
    assert event.key == "checkpoints/my model/1.0.0/model+v2.pt"
    assert event.revision == "v9" and event.size == 10


def test_classic_shape_and_etag_revision() -> None:
    event = parse_notification(classic("bundles/a%20b.heimdall"))
    assert isinstance(event, ObjectCreated)
    assert (event.bucket, event.key, event.revision) == ("b", "bundles/a b.heimdall", "v1")
    no_version = parse_notification(eventbridge("k"))
    assert isinstance(no_version, ObjectCreated) and no_version.revision == "abc"


def test_s3_test_event_is_recognised() -> None:
    event = parse_notification({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})
    assert isinstance(event, S3TestEvent) and event.bucket == "b"


@pytest.mark.parametrize(
    "body",
    [
        [],
        "x",
        {},
        {"source": "aws.s3", "detail-type": "Object Deleted", "detail": {}},
        {"Records": []},
        eventbridge(""),
        {"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {}}},
    ],
)
def test_malformed_notifications(body: Any) -> None:
    with pytest.raises(NotificationError):
        parse_notification(body)


def test_decode_key_is_plus_aware() -> None:
    assert decode_key("a+b%2Bc%2Fd") == "a b+c/d"


@pytest.mark.parametrize(
    ("key", "kind", "name", "version"),
    [
        (
            "checkpoints/localization-net/1.0.0/model.safetensors",
            KeyKind.CHECKPOINT,
            "localization-net",
            "1.0.0",
        ),
        ("checkpoints/localization-net/1.0.0/heimdall.json", KeyKind.MANIFEST, "localization-net", "1.0.0"),
        ("checkpoints/m/2/weights.PT", KeyKind.CHECKPOINT, "m", "2"),
        ("bundles/team/a-v1.heimdall", KeyKind.BUNDLE, None, None),
        ("bundles/a-v1.heimdall.gz", KeyKind.BUNDLE, None, None),
        ("checkpoints/m/1/notes.txt", KeyKind.UNKNOWN, None, None),
        ("checkpoints/m/model.pt", KeyKind.UNKNOWN, None, None),
        ("checkpoints/../1/model.pt", KeyKind.UNKNOWN, None, None),
        ("checkpoints/m/./model.pt", KeyKind.UNKNOWN, None, None),
        ("checkpoints/m//model.pt", KeyKind.UNKNOWN, None, None),
        ("bundles/a.zip", KeyKind.UNKNOWN, None, None),
        ("elsewhere/a.heimdall", KeyKind.UNKNOWN, None, None),
    ],
)
def test_ingest_keys(key: str, kind: KeyKind, name: str | None, version: str | None) -> None:
    classified = classify_ingest_key(key)
    assert classified.kind is kind
    assert (classified.model_name, classified.version) == (name, version)
    if kind is KeyKind.UNKNOWN:
        assert classified.reason
    if kind in (KeyKind.CHECKPOINT, KeyKind.MANIFEST):
        assert classified.prefix == f"checkpoints/{name}/{version}/"


def test_artifacts_keys() -> None:
    job_bundle = classify_artifacts_key("exports/job-1/localization-net-v1.0.0.heimdall")
    assert (job_bundle.kind, job_bundle.job_id) == (KeyKind.JOB_BUNDLE, "job-1")
    assert classify_artifacts_key("exports/job-1/model.onnx").kind is KeyKind.IGNORED
    assert classify_artifacts_key("bundles/m/x-v1.heimdall").kind is KeyKind.IGNORED  # written by us
    assert classify_artifacts_key("exports/../x.heimdall").kind is KeyKind.UNKNOWN


def test_the_committed_samples_parse() -> None:
    import json
    from pathlib import Path

    events = Path(__file__).resolve().parents[2] / "events"
    test_event = json.loads((events / "s3-test-event.json").read_text())
    assert isinstance(parse_notification(json.loads(test_event["Records"][0]["body"])), S3TestEvent)
    batch = json.loads((events / "sqs-s3-notifications.json").read_text())
    parsed = [parse_notification(json.loads(r["body"])) for r in batch["Records"]]
    assert all(isinstance(p, ObjectCreated) for p in parsed)
    first = parsed[0]
    assert (
        isinstance(first, ObjectCreated)
        and first.key == "checkpoints/localization-net/1.0.0/best model.safetensors"
    )


def test_an_unversioned_bucket_falls_back_to_the_etag() -> None:
    event = parse_notification(eventbridge("k", **{"version-id": "null", "etag": "tag"}))
    assert isinstance(event, ObjectCreated) and event.version_id is None and event.revision == "tag"
