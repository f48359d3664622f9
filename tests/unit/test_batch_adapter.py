"""The Batch adapter: what it submits, and how AWS errors come back (botocore Stubber, no network)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from heimdall.adapters.batch import BatchJobSubmitter, batch_job_name, job_id_from_batch_name
from heimdall.contracts.jobs import JobSpec
from heimdall.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_batch import BatchClient

SPEC = JobSpec(
    job_id="job-42",
    checkpoint_uri="s3://ingest/checkpoints/m/1/model.pt",
    manifest_uri="s3://ingest/checkpoints/m/1/heimdall.json",
    output_uri="s3://artifacts/exports/job-42/",
)


def client() -> BatchClient:
    return boto3.client("batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_submit_carries_the_spec_and_a_derived_name() -> None:
    batch = client()
    sent: dict[str, Any] = {}
    batch.meta.events.register(
        "provide-client-params.batch.SubmitJob", lambda params, **_: sent.update(params)
    )
    with Stubber(batch) as stub:
        stub.add_response(
            "submit_job",
            {"jobArn": "arn:aws:batch:us-east-1:1:job/abc", "jobName": "heimdall-job-42", "jobId": "abc"},
            {
                "jobName": "heimdall-job-42",
                "jobQueue": "q",
                "jobDefinition": "d",
                "containerOverrides": ANY,
                "parameters": {"job_id": "job-42"},
                "tags": {"heimdall:job_id": "job-42"},
                "propagateTags": True,
            },
        )
        submitter = BatchJobSubmitter("q", "d", client=batch)
        assert submitter.submit(SPEC) == "abc"
    # The container reads back exactly the spec that was submitted.
    environment = sent["containerOverrides"]["environment"]
    assert [e["name"] for e in environment] == ["HEIMDALL_JOB_SPEC"]
    assert JobSpec.model_validate_json(environment[0]["value"]) == SPEC


def test_errors_become_storage_errors() -> None:
    batch = client()
    with Stubber(batch) as stub:
        stub.add_client_error("submit_job", service_error_code="ClientException", http_status_code=400)
        with pytest.raises(StorageError, match="ClientException"):
            BatchJobSubmitter("q", "d", client=batch).submit(SPEC)


def test_job_names_round_trip() -> None:
    assert batch_job_name("job-42") == "heimdall-job-42"
    assert job_id_from_batch_name("heimdall-job-42") == "job-42"
    assert job_id_from_batch_name("someone-elses-job") is None
    assert len(batch_job_name("x" * 300)) == 128
