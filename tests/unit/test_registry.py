"""The registry's pure parts: the export-job state machine, cursors, records, and the table definition.

The behaviour of the two registries (in-memory and DynamoDB against the emulator) is one contract
suite: ``tests/integration/test_registry_contract.py``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st

from heimdall.adapters.dynamodb.registry import DynamoRegistry
from heimdall.adapters.dynamodb.table import INDEXES, TTL_ATTRIBUTE, table_definition
from heimdall.contracts.jobs import BenchmarkReport, ConversionResult, FormatOutcome, FormatStatus
from heimdall.contracts.manifest import ExportFormat
from heimdall.domain.job_states import ALLOWED, TERMINAL, plan_transition, sources_of, validate_job_updates
from heimdall.domain.paging import decode_cursor, encode_cursor, paginate
from heimdall.domain.records import (
    ExportJob,
    JobResultSummary,
    JobStatus,
    ModelRecord,
    chronological_key,
    imported_display_name,
)
from heimdall.errors import (
    InvalidCursor,
    InvalidPagination,
    InvalidTransition,
    RegistryError,
    RegistryUnavailable,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
S = JobStatus

# Written out by hand (not derived from ALLOWED) so that a change to the machine fails here.
EDGES = {
    (S.PENDING, S.SUBMITTED),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.CANCELLED),
    (S.SUBMITTED, S.RUNNING),
    (S.SUBMITTED, S.SUCCEEDED),
    (S.SUBMITTED, S.FAILED),
    (S.SUBMITTED, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
}
#: A step is missing: the event is ahead of what the registry knows.
INVALID = {(S.PENDING, S.RUNNING), (S.PENDING, S.SUCCEEDED)}


# --- the state machine ----------------------------------------------------------------------------


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_plan_transition_table(current: JobStatus, target: JobStatus) -> None:
    if (current, target) in EDGES:
        assert plan_transition(current, target) == "apply"
    elif (current, target) in INVALID:
        with pytest.raises(InvalidTransition) as caught:
            plan_transition(current, target)
        assert caught.value.code == "INVALID_TRANSITION"
        assert caught.value.http_status == 409
    else:
        assert plan_transition(current, target) == "ignore"


def test_allowed_and_terminal_are_the_designed_machine() -> None:
    assert {(s, t) for s, targets in ALLOWED.items() for t in targets} == EDGES
    assert frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}) == TERMINAL
    assert not set(ALLOWED) & TERMINAL, "terminal states have no way out"
    assert sources_of(S.RUNNING) == {S.SUBMITTED}
    assert sources_of(S.FAILED) == {S.PENDING, S.SUBMITTED, S.RUNNING}
    assert sources_of(S.PENDING) == frozenset()


@given(st.lists(st.sampled_from(list(S)), max_size=20))
def test_a_random_event_sequence_walks_the_machine_forward_and_stops_at_a_terminal_state(
    events: list[JobStatus],
) -> None:
    current = S.PENDING
    visited = [current]
    for target in events:
        try:
            plan = plan_transition(current, target)
        except InvalidTransition:
            assert (current, target) in INVALID
            continue
        if plan == "apply":
            assert (current, target) in EDGES
            current = target
            visited.append(current)
        else:
            assert (current, target) not in EDGES
    assert not any(status in TERMINAL for status in visited[:-1]), "nothing leaves a terminal state"
    assert len(visited) == len(set(visited)) <= 4, "no state is entered twice"


# --- updates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["job_id", "owner", "status", "created_at", "updated_at", "is_default", "model_name", "version"]
)
def test_a_transition_cannot_set_identity_or_managed_fields(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        validate_job_updates({field: "x"})


def test_transition_updates_are_validated_like_the_record() -> None:
    parsed = validate_job_updates({"formats": ["onnx", "tensorrt"], "exit_code": 3, "reason": "bad"})
    assert parsed == {"formats": [ExportFormat.ONNX, ExportFormat.TENSORRT], "exit_code": 3, "reason": "bad"}
    with pytest.raises(ValueError, match="no_such_field"):
        validate_job_updates({"no_such_field": 1})
    with pytest.raises(ValueError):
        validate_job_updates({"attempts": -1})
    with pytest.raises(ValueError):
        validate_job_updates({"formats": ["gif"]})


# --- records ---------------------------------------------------------------------------------------


def test_imported_display_name_is_suffixed_once() -> None:
    assert imported_display_name("net") == "net (Imported)"
    assert imported_display_name("net (Imported)") == "net (Imported)"
    imported = ModelRecord(owner="o", model_id="m", model_name="net", version="1", source="import")
    exported = ModelRecord(owner="o", model_id="m", model_name="net", version="1")
    assert imported.display_name == "net (Imported)"
    assert imported.model_name == "net"
    assert exported.display_name == "net"


def test_timestamps_are_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    record = ModelRecord(
        owner="o",
        model_id="m",
        model_name="n",
        version="1",
        created_at=datetime(2026, 1, 1, 12, tzinfo=plus_two),
    )
    assert record.created_at.utcoffset() == timedelta(0)
    assert record.created_at.hour == 10
    naive = ModelRecord(owner="o", model_id="m", model_name="n", version="1", created_at=datetime(2026, 1, 1))
    assert naive.created_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_record_ids_refuse_path_tricks() -> None:
    for bad in ("../x", "a/b", "a#b", "", " a"):
        with pytest.raises(ValueError):
            ModelRecord(owner="o", model_id=bad, model_name="n", version="1")


def test_chronological_key_sorts_like_time_then_id() -> None:
    whole = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    later = whole + timedelta(microseconds=1)
    keys = [chronological_key(later, "a"), chronological_key(whole, "b"), chronological_key(whole, "a")]
    assert sorted(keys) == [keys[2], keys[1], keys[0]]
    # Width is fixed whatever the microseconds, so string order is time order.
    assert len(chronological_key(whole, "x")) == len(chronological_key(later, "x"))


def test_job_result_summary_keeps_statuses_and_speedups() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    result = ConversionResult(
        job_id="j1",
        status="SUCCEEDED",
        formats=[
            FormatOutcome(
                format=ExportFormat.ONNX, status=FormatStatus.BUILT, file="model.onnx", size_bytes=10
            ),
            FormatOutcome(format=ExportFormat.TENSORRT, status=FormatStatus.SKIPPED, reason="no CUDA device"),
        ],
        benchmark=BenchmarkReport(
            hardware="cpu",
            provider="CPU",
            torch_ms={"1": 2.0},
            onnx_ms={"1": 1.0},
            speedup={"1": 2.0},
            runs=5,
        ),
        bundle_file="net-v1.heimdall",
        started_at=now,
        finished_at=now,
    )
    summary = JobResultSummary.from_result(result)
    assert [(f.format, f.status) for f in summary.formats] == [
        (ExportFormat.ONNX, FormatStatus.BUILT),
        (ExportFormat.TENSORRT, FormatStatus.SKIPPED),
    ]
    assert summary.formats[1].reason == "no CUDA device"
    assert summary.speedup == {"1": 2.0}
    assert summary.bundle_file == "net-v1.heimdall"


# --- cursors ---------------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_cursor_round_trip_is_opaque_urlsafe() -> None:
    cursor = encode_cursor({"PK": "MODEL#1", "SK": "META"})
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(cursor, fields=("PK", "SK")) == {"PK": "MODEL#1", "SK": "META"}


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "a" * 5000,
        _b64(b"not json"),
        _b64(b"\xff\xfe"),
        _b64(b"[1, 2]"),
        _b64(json.dumps({"v": 2, "p": {"PK": "a", "SK": "b"}}).encode()),
        _b64(json.dumps({"v": 1, "p": {"PK": "a"}}).encode()),
        _b64(json.dumps({"v": 1, "p": {"PK": "a", "SK": 3}}).encode()),
        _b64(json.dumps({"v": 1, "p": {"PK": "a", "SK": "b", "X": "c"}}).encode()),
        _b64(json.dumps({"v": 1, "p": {"PK": "", "SK": "b"}}).encode()),
    ],
)
def test_a_malformed_cursor_is_a_typed_400(cursor: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        decode_cursor(cursor, fields=("PK", "SK"))
    assert caught.value.http_status == 400
    assert caught.value.code == "INVALID_CURSOR"


@pytest.mark.parametrize("limit", [0, -1, 1001, True])
def test_a_page_size_out_of_range_is_a_typed_400(limit: int) -> None:
    with pytest.raises(InvalidPagination) as caught:
        paginate([], key=str, scope="s", limit=limit, cursor=None)
    assert caught.value.http_status == 400


# --- the table -------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """Reads CloudFormation's short-form tags (!Sub, !Ref, ...) as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)


_CfnLoader.add_multi_constructor("!", _any_tag)


def test_template_declares_the_table_the_code_creates() -> None:
    template = yaml.load((REPO_ROOT / "template.yaml").read_text(), Loader=_CfnLoader)
    declared = template["Resources"]["RegistryTable"]["Properties"]
    expected = table_definition("ignored")

    def by(key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {item[key]: item for item in items}

    assert declared["BillingMode"] == expected["BillingMode"]
    assert by("AttributeName", declared["AttributeDefinitions"]) == by(
        "AttributeName", expected["AttributeDefinitions"]
    )
    assert declared["KeySchema"] == expected["KeySchema"]
    assert by("IndexName", declared["GlobalSecondaryIndexes"]) == by(
        "IndexName", expected["GlobalSecondaryIndexes"]
    )
    assert set(by("IndexName", declared["GlobalSecondaryIndexes"])) == set(INDEXES)
    assert declared["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_the_registry_port_does_not_load_boto3() -> None:
    code = "import sys, heimdall.domain.registry; print('boto3' in sys.modules, 'botocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_an_export_job_defaults_to_pending_with_no_attempts() -> None:
    job = ExportJob(
        owner="o", job_id="j", model_name="n", version="1", checkpoint_bucket="b", checkpoint_key="k"
    )
    assert job.status is S.PENDING
    assert job.attempts == 0
    assert job.is_default is False


def test_dynamodb_failures_become_typed_errors() -> None:
    client = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stub = Stubber(client)
    stub.add_client_error("get_item", service_error_code="ProvisionedThroughputExceededException")
    stub.add_client_error("get_item", service_error_code="ValidationException", service_message="too big")
    corrupt = {"PK": {"S": "MODEL#m"}, "SK": {"S": "META"}, "owner": {"S": "o"}, "model_id": {"N": "1"}}
    stub.add_response("get_item", {"Item": corrupt})
    registry = DynamoRegistry("heimdall-test", client)
    with stub:
        with pytest.raises(RegistryUnavailable) as unavailable:
            registry.get_model("o", "m")
        assert unavailable.value.http_status == 503
        with pytest.raises(RegistryError, match="too big"):
            registry.get_model("o", "m")
        with pytest.raises(RegistryError, match="unreadable ModelRecord"):
            registry.get_model("o", "m")
    stub.assert_no_pending_responses()
