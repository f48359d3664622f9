"""Event contracts (DESIGN §6): models, committed JSON Schemas, sample events and the in-memory sink."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import jsonschema
import pytest
from pydantic import ValidationError

from heimdall.contracts.jobs import FormatStatus
from heimdall.contracts.manifest import ExportFormat
from heimdall.errors import HeimdallError
from heimdall.events import (
    DETAIL_MODELS,
    EVENT_SOURCE,
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    BundleIndexed,
    CheckpointReceived,
    DetailType,
    Event,
    EventDetail,
    EventPublishError,
    EventSink,
    EventTooLarge,
    ExportJobFailed,
    ExportJobSubmitted,
    FormatSummary,
    check_schemas,
    detail_schema,
    idempotency_key_for,
    main,
    make_event,
    parse_detail,
    schema_file_name,
    write_schemas,
)
from heimdall.testing.events import InMemoryEventSink

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = REPO_ROOT / "events"
SCHEMAS_DIR = EVENTS_DIR / "schemas"

EXPECTED_DETAIL_TYPES = [
    "Checkpoint Received",
    "Checkpoint Rejected",
    "Export Job Submitted",
    "Export Job Started",
    "Export Job Succeeded",
    "Export Job Failed",
    "Bundle Indexed",
    "Bundle Rejected",
    "Deployment Activated",
    "Deployment Deactivated",
]


def load(name: str) -> Any:
    return json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))


def validator_for(detail_type: DetailType) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS_DIR / schema_file_name(detail_type)).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def sample_detail(detail_type: DetailType) -> dict[str, Any]:
    detail: dict[str, Any] = load(f"heimdall-{detail_type.slug}.json")["detail"]
    return detail


# --- models and schemas ---------------------------------------------------------------------------


def test_detail_types_are_exactly_the_documented_ones() -> None:
    assert [t.value for t in DetailType] == EXPECTED_DETAIL_TYPES


@pytest.mark.parametrize("detail_type", list(DetailType), ids=lambda t: t.slug)
def test_every_detail_type_has_a_strict_versioned_model(detail_type: DetailType) -> None:
    model = DETAIL_MODELS[detail_type]
    assert model.detail_type is detail_type
    assert model.model_config.get("extra") == "forbid"
    for common in ("schema_version", "idempotency_key", "occurred_at", "owner"):
        assert common in model.model_fields, f"{model.__name__} lacks {common}"


def test_registry_has_no_stray_models() -> None:
    assert set(DETAIL_MODELS) == set(DetailType)
    assert len(set(DETAIL_MODELS.values())) == len(DetailType)


def test_committed_schemas_are_in_sync_with_the_models() -> None:
    problems = check_schemas(SCHEMAS_DIR)
    fix = "run: python -m heimdall.events --write-schemas events/schemas"
    assert problems == [], "\n".join([*problems, fix])


@pytest.mark.parametrize("detail_type", list(DetailType), ids=lambda t: t.slug)
def test_schema_is_a_valid_2020_12_schema_with_id_and_title(detail_type: DetailType) -> None:
    schema = json.loads((SCHEMAS_DIR / f"{detail_type.slug}.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == detail_schema(detail_type)
    assert schema["title"] == detail_type.value
    assert schema["$id"] == f"urn:heimdall:events:{detail_type.slug}:v{SCHEMA_VERSION}"
    assert schema["additionalProperties"] is False
    assert {"schema_version", "idempotency_key", "occurred_at", "owner"} <= set(schema["required"])
    # Emitted details always carry every field (nullable ones as null), so all are required.
    assert set(schema["required"]) == set(schema["properties"])
    assert schema["properties"]["schema_version"]["const"] == "1"


def test_check_reports_missing_stale_and_unexpected_files(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    assert check_schemas(tmp_path) == []
    (tmp_path / "bundle-indexed.json").unlink()
    stale = tmp_path / "checkpoint-received.json"
    stale.write_text(stale.read_text().replace('"owner"', '"proprietor"'))
    (tmp_path / "checkpoint-deleted.json").write_text("{}")

    problems = check_schemas(tmp_path)

    assert len(problems) == 3
    assert any("bundle-indexed.json: missing" in p for p in problems)
    assert any("checkpoint-received.json: differs" in p for p in problems)
    assert any("checkpoint-deleted.json: not the schema" in p for p in problems)


def test_command_line_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--write-schemas", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schema_file_name(t) for t in DetailType)
    assert main(["--check", str(tmp_path)]) == 0
    (tmp_path / "export-job-started.json").write_text("{}\n")
    assert main(["--check", str(tmp_path)]) == 1
    assert "export-job-started.json" in capsys.readouterr().err


# --- samples --------------------------------------------------------------------------------------


@pytest.mark.parametrize("detail_type", list(DetailType), ids=lambda t: t.slug)
def test_heimdall_sample_is_a_valid_envelope_and_detail(detail_type: DetailType) -> None:
    envelope = load(f"heimdall-{detail_type.slug}.json")

    assert envelope["source"] == EVENT_SOURCE
    assert envelope["detail-type"] == detail_type.value
    assert envelope["version"] == "0"
    assert {"id", "account", "time", "region", "resources"} <= set(envelope)
    validator_for(detail_type).validate(envelope["detail"])
    detail = parse_detail(envelope["detail-type"], envelope["detail"])
    assert envelope["time"] == detail.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_samples_tell_one_coherent_story() -> None:
    received = CheckpointReceived.model_validate(sample_detail(DetailType.CHECKPOINT_RECEIVED))
    submitted = ExportJobSubmitted.model_validate(sample_detail(DetailType.EXPORT_JOB_SUBMITTED))
    batch = load("batch-job-state-change-succeeded.json")["detail"]
    s3_detail = load("s3-object-created-checkpoint.json")["detail"]

    assert received.key == unquote_plus(s3_detail["object"]["key"])
    assert received.idempotency_key == CheckpointReceived.key_for(
        received.bucket, received.key, str(received.version_id)
    )
    assert submitted.checkpoint_uri == f"s3://{received.bucket}/{received.key}"
    assert batch["jobId"] == submitted.batch_job_id
    assert batch["parameters"]["job_id"] == submitted.job_id


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("detail_type", list(DetailType), ids=lambda t: t.slug)
def test_a_detail_without_idempotency_key_is_refused(detail_type: DetailType) -> None:
    detail = sample_detail(detail_type)
    del detail["idempotency_key"]

    with pytest.raises(ValidationError, match="idempotency_key"):
        parse_detail(detail_type, detail)
    assert not validator_for(detail_type).is_valid(detail)


@pytest.mark.parametrize("detail_type", list(DetailType), ids=lambda t: t.slug)
def test_a_detail_with_an_extra_field_is_refused(detail_type: DetailType) -> None:
    detail = {**sample_detail(detail_type), "surprise": True}

    with pytest.raises(ValidationError, match="surprise"):
        parse_detail(detail_type, detail)
    assert not validator_for(detail_type).is_valid(detail)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schema_version", "2"),
        ("idempotency_key", "not-a-sha256"),
        ("occurred_at", "2025-11-20T10:15:02"),  # no offset: ambiguous across regions
        ("owner", ""),
    ],
)
def test_common_fields_are_checked(field: str, value: str) -> None:
    detail = {**sample_detail(DetailType.BUNDLE_INDEXED), field: value}

    with pytest.raises(ValidationError, match=field):
        BundleIndexed.model_validate(detail)


def test_an_unknown_detail_type_is_refused() -> None:
    with pytest.raises(ValueError, match="Model Deleted"):
        parse_detail("Model Deleted", {})


def test_format_names_agree_with_the_conversion_contracts() -> None:
    pattern = FormatSummary.model_json_schema()["properties"]["format"]["pattern"]
    schema = {"type": "string", "pattern": pattern}
    for fmt in ExportFormat:
        jsonschema.validate(fmt.value, schema)
    status_enum = FormatSummary.model_json_schema()["properties"]["status"]["enum"]
    assert set(status_enum) == {s.value for s in FormatStatus}


# --- idempotency keys -----------------------------------------------------------------------------


def test_idempotency_keys_are_deterministic_sha256() -> None:
    key = idempotency_key_for("bucket", "checkpoints/a/1/model.safetensors", "v1")
    assert key == idempotency_key_for("bucket", "checkpoints/a/1/model.safetensors", "v1")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != idempotency_key_for("bucket", "checkpoints/a/1/model.safetensors", "v2")


def test_idempotency_key_parts_are_delimited() -> None:
    assert idempotency_key_for("a/b", "c") != idempotency_key_for("a", "b/c")
    assert idempotency_key_for("ab") != idempotency_key_for("a", "b")


def test_idempotency_keys_differ_per_detail_type() -> None:
    cause = ("ingest", "checkpoints/a/1/model.safetensors", "etag")
    keys = {model.key_for(*cause) for model in DETAIL_MODELS.values()}
    assert len(keys) == len(DetailType)
    assert CheckpointReceived.key_for(*cause) == idempotency_key_for("Checkpoint Received", *cause)


def test_an_idempotency_key_needs_a_cause() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        idempotency_key_for()


# --- make_event -----------------------------------------------------------------------------------


def failed_job(message: str = "checkpoint is truncated") -> ExportJobFailed:
    return ExportJobFailed(
        idempotency_key=ExportJobFailed.key_for("job-1"),
        occurred_at=datetime(2025, 11, 20, 10, 0, tzinfo=UTC),
        owner="alice",
        job_id="job-1",
        model_name="localization-net",
        version="1.0.0",
        batch_job_id=None,
        code="INVALID_CHECKPOINT",
        message=message,
        exit_code=3,
    )


def test_make_event_builds_a_schema_valid_envelope() -> None:
    detail = failed_job()

    event = make_event(detail)

    assert event.detail_type is DetailType.EXPORT_JOB_FAILED
    assert event.source == "heimdall"
    assert event.time == detail.occurred_at
    assert event.idempotency_key == detail.idempotency_key
    assert json.loads(event.detail_json()) == event.detail
    # Defaults and nulls are emitted, so the strict schema (every field required) accepts it.
    assert event.detail["schema_version"] == "1" and event.detail["status"] == "FAILED"
    assert event.detail["batch_job_id"] is None
    validator_for(event.detail_type).validate(event.detail)


def test_make_event_refuses_an_unregistered_model() -> None:
    class Unregistered(EventDetail):
        detail_type = DetailType.BUNDLE_INDEXED

    detail = Unregistered(
        idempotency_key="0" * 64, occurred_at=datetime(2025, 1, 1, tzinfo=UTC), owner="system"
    )
    with pytest.raises(TypeError, match="Unregistered"):
        make_event(detail)


def test_make_event_refuses_an_event_over_the_bus_limit() -> None:
    event = make_event(failed_job())
    assert 0 < event.size_bytes < MAX_EVENT_BYTES

    huge = Event(DetailType.EXPORT_JOB_FAILED, {"blob": "x" * MAX_EVENT_BYTES})
    with pytest.raises(EventTooLarge) as raised:
        InMemoryEventSink().publish([huge])
    assert raised.value.code == "EVENT_TOO_LARGE"


def test_event_size_counts_what_eventbridge_counts() -> None:
    event = Event(DetailType.BUNDLE_INDEXED, {"k": "é"}, time=datetime(2025, 1, 1, tzinfo=UTC))
    detail_bytes = len('{"k":"é"}'.encode())
    assert event.size_bytes == 14 + len(b"heimdall") + len(b"Bundle Indexed") + detail_bytes


# --- the in-memory sink ---------------------------------------------------------------------------


def test_in_memory_sink_records_and_validates() -> None:
    sink = InMemoryEventSink()
    port: EventSink = sink  # the fake satisfies the port logic depends on (checked by mypy)
    assert port is sink
    sink.publish([make_event(failed_job("one")), make_event(failed_job("two"))])

    assert sink.detail_types == [DetailType.EXPORT_JOB_FAILED] * 2
    details = sink.details(DetailType.EXPORT_JOB_FAILED)
    assert [d.message for d in details if isinstance(d, ExportJobFailed)] == ["one", "two"]
    assert sink.details(DetailType.BUNDLE_INDEXED) == []

    bad = Event(DetailType.EXPORT_JOB_FAILED, {**sink.events[0].detail, "exit_code": "three"})
    with pytest.raises(ValidationError):
        sink.publish([bad])
    assert len(sink.events) == 2


def test_in_memory_sink_can_fail_like_the_bus() -> None:
    sink = InMemoryEventSink()
    sink.fail_next(2)
    event = make_event(failed_job())

    for _ in range(2):
        with pytest.raises(EventPublishError) as raised:
            sink.publish([event])
        assert isinstance(raised.value, HeimdallError)
        assert raised.value.code == "EVENT_PUBLISH_FAILED" and raised.value.http_status == 503
    sink.publish([event])

    assert sink.events == [event]


# --- AWS samples the ingest and job-state handlers consume -----------------------------------------


@pytest.mark.parametrize(
    ("name", "decoded_key"),
    [
        ("s3-object-created-checkpoint.json", "checkpoints/localization-net/1.0.0/best model.safetensors"),
        ("s3-object-created-bundle.json", "bundles/partner drop (2025)/localization-net-v1.0.0.heimdall.gz"),
    ],
)
def test_s3_object_created_samples_have_what_ingest_needs(name: str, decoded_key: str) -> None:
    event = load(name)

    assert event["source"] == "aws.s3" and event["detail-type"] == "Object Created"
    obj = event["detail"]["object"]
    assert event["resources"] == [f"arn:aws:s3:::{event['detail']['bucket']['name']}"]
    # Keys arrive URL-encoded as S3 sends them (space as '+'): they must be decoded, once.
    assert obj["key"] != decoded_key
    assert unquote_plus(obj["key"]) == decoded_key
    assert {"etag", "version-id", "sequencer", "size"} <= set(obj)
    assert event["detail"]["reason"] in {"PutObject", "CompleteMultipartUpload", "CopyObject"}


def test_sqs_sample_is_a_batch_of_two_s3_notifications() -> None:
    records = load("sqs-s3-notifications.json")["Records"]

    assert len(records) == 2
    assert len({r["messageId"] for r in records}) == 2
    keys = []
    for record in records:
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"].startswith("arn:aws:sqs:")
        assert {"receiptHandle", "attributes", "md5OfBody", "awsRegion"} <= set(record)
        assert record["attributes"]["ApproximateReceiveCount"] == "1"
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
        body = json.loads(record["body"])
        assert body["source"] == "aws.s3" and body["detail-type"] == "Object Created"
        keys.append(unquote_plus(body["detail"]["object"]["key"]))
    assert keys == [
        "checkpoints/localization-net/1.0.0/best model.safetensors",
        "checkpoints/localization-net/1.0.0/heimdall.json",
    ]


def test_s3_test_event_sample() -> None:
    (record,) = load("s3-test-event.json")["Records"]

    body = json.loads(record["body"])
    assert record["eventSource"] == "aws:sqs"
    assert body["Event"] == "s3:TestEvent" and body["Service"] == "Amazon S3"
    assert "Records" not in body and "detail" not in body


@pytest.mark.parametrize(
    ("name", "status", "exit_code"),
    [
        ("batch-job-state-change-running.json", "RUNNING", None),
        ("batch-job-state-change-succeeded.json", "SUCCEEDED", 0),
        ("batch-job-state-change-failed.json", "FAILED", 3),
    ],
)
def test_batch_samples_have_what_job_state_needs(name: str, status: str, exit_code: int | None) -> None:
    event = load(name)

    assert event["source"] == "aws.batch" and event["detail-type"] == "Batch Job State Change"
    detail = event["detail"]
    assert detail["status"] == status
    assert detail["jobId"] and detail["jobName"] and ":job-queue/" in detail["jobQueue"]
    assert event["resources"] == [detail["jobArn"]]
    assert detail["parameters"]["job_id"]
    assert isinstance(detail["attempts"], list)
    if exit_code is None:
        assert "exitCode" not in detail["container"] and detail["attempts"] == []
    else:
        assert detail["container"]["exitCode"] == exit_code
        assert detail["attempts"][-1]["container"]["exitCode"] == exit_code
        assert detail["statusReason"]
        assert detail["stoppedAt"] >= detail["startedAt"] >= detail["createdAt"]
