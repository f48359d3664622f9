"""Batch state changes with in-memory ports: the state machine, result.json, duplicates, late events."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from heimdall.contracts.jobs import ConversionResult, FormatOutcome, FormatStatus
from heimdall.contracts.manifest import ExportFormat
from heimdall.domain.records import ExportJob, JobStatus
from heimdall.events import DetailType
from heimdall.logic.job_state import JobStateDeps, handle_batch_state_change
from heimdall.testing.events import InMemoryEventSink
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.storage import InMemoryObjectStore

EVENTS = Path(__file__).resolve().parents[2] / "events"
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def sample(name: str, job_id: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / f"batch-job-state-change-{name}.json").read_text())
    event = copy.deepcopy(event)
    event["detail"]["parameters"] = {"job_id": job_id}
    event["detail"]["jobName"] = f"heimdall-{job_id}"
    return event


@pytest.fixture
def deps() -> JobStateDeps:
    registry = InMemoryRegistry()
    registry.create_export_job(
        ExportJob(
            job_id="job-1",
            owner="alice",
            model_name="localization-net",
            version="1.0.0",
            checkpoint_bucket="ingest",
            checkpoint_key="checkpoints/localization-net/1.0.0/model.safetensors",
            formats=[ExportFormat.ONNX],
            output_prefix="s3://artifacts/exports/job-1/",
        )
    )
    registry.transition_export_job("job-1", JobStatus.SUBMITTED, updates={"batch_job_id": "b-1"})
    return JobStateDeps(
        registry=registry, store=InMemoryObjectStore(), events=InMemoryEventSink(), now=lambda: NOW
    )


def write_result(deps: JobStateDeps, status: str = "SUCCEEDED", **fields: Any) -> None:
    result = ConversionResult(
        job_id="job-1",
        status=status,
        formats=[FormatOutcome(format=ExportFormat.ONNX, status=FormatStatus.BUILT, file="model.onnx")],
        bundle_file="localization-net-v1.0.0.heimdall",
        package_file="export-package.zip",
        started_at=NOW,
        finished_at=NOW,
        **fields,
    )
    deps.store.put_bytes("s3://artifacts/exports/job-1/result.json", result.model_dump_json().encode())


def detail_types(deps: JobStateDeps) -> list[DetailType]:
    assert isinstance(deps.events, InMemoryEventSink)
    return deps.events.detail_types


def test_running_then_succeeded(deps: JobStateDeps) -> None:
    assert handle_batch_state_change(sample("running", "job-1"), deps).status == "applied"
    write_result(deps)
    outcome = handle_batch_state_change(sample("succeeded", "job-1"), deps)
    assert (outcome.status, outcome.state) == ("applied", JobStatus.SUCCEEDED)
    job = deps.registry.get_export_job("alice", "job-1")
    assert job.status is JobStatus.SUCCEEDED and job.result is not None
    assert job.result.bundle_file == "localization-net-v1.0.0.heimdall"
    assert detail_types(deps) == [DetailType.EXPORT_JOB_STARTED, DetailType.EXPORT_JOB_SUCCEEDED]
    assert isinstance(deps.events, InMemoryEventSink)
    (succeeded,) = deps.events.details(DetailType.EXPORT_JOB_SUCCEEDED)
    assert succeeded.model_dump()["bundle_key"] == "exports/job-1/localization-net-v1.0.0.heimdall"


def test_duplicates_and_late_events_change_nothing(deps: JobStateDeps) -> None:
    write_result(deps)
    handle_batch_state_change(sample("succeeded", "job-1"), deps)
    assert handle_batch_state_change(sample("succeeded", "job-1"), deps).status == "ignored"
    assert handle_batch_state_change(sample("running", "job-1"), deps).status == "ignored"  # late
    assert handle_batch_state_change(sample("failed", "job-1"), deps).status == "ignored"  # terminal stays
    assert deps.registry.get_export_job("alice", "job-1").status is JobStatus.SUCCEEDED
    assert detail_types(deps) == [DetailType.EXPORT_JOB_SUCCEEDED]


def test_failure_reason_comes_from_result_json(deps: JobStateDeps) -> None:
    write_result(
        deps, status="FAILED", error_code="UNSAFE_CHECKPOINT", error_message="pickle gadget", exit_code=3
    )
    handle_batch_state_change(sample("failed", "job-1"), deps)
    job = deps.registry.get_export_job("alice", "job-1")
    assert job.status is JobStatus.FAILED and job.exit_code == 3
    assert "UNSAFE_CHECKPOINT" in (job.reason or "")
    assert isinstance(deps.events, InMemoryEventSink)
    (failed,) = deps.events.details(DetailType.EXPORT_JOB_FAILED)
    assert failed.model_dump()["code"] == "UNSAFE_CHECKPOINT"


def test_a_crash_without_result_uses_batch_reason(deps: JobStateDeps) -> None:
    handle_batch_state_change(sample("failed", "job-1"), deps)
    job = deps.registry.get_export_job("alice", "job-1")
    assert job.status is JobStatus.FAILED and "BATCH_JOB_FAILED" in (job.reason or "")


def test_success_without_result_json_is_a_failure(deps: JobStateDeps) -> None:
    handle_batch_state_change(sample("succeeded", "job-1"), deps)
    assert deps.registry.get_export_job("alice", "job-1").status is JobStatus.FAILED
    assert detail_types(deps) == [DetailType.EXPORT_JOB_FAILED]


def test_foreign_and_intermediate_events(deps: JobStateDeps) -> None:
    other = sample("running", "someone-else")
    del other["detail"]["parameters"]
    other["detail"]["jobName"] = "not-ours"
    assert handle_batch_state_change(other, deps).status == "foreign"
    assert handle_batch_state_change(sample("running", "job-unknown"), deps).status == "foreign"
    runnable = sample("running", "job-1")
    runnable["detail"]["status"] = "RUNNABLE"
    assert handle_batch_state_change(runnable, deps).status == "ignored"
    assert handle_batch_state_change({"detail": "nonsense"}, deps).status == "foreign"
    assert detail_types(deps) == []
