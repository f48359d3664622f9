"""The Batch entry point against the emulator's real S3 endpoint, run as `python -m heimdall_batch`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from heimdall.contracts.jobs import ConversionResult
from heimdall.testing.sample_bundles import sample_bundle
from heimdall.testing.sample_models import localization_net_onnx
from heimdall_batch.architectures import resolve

MANIFEST = {
    "model_name": "localization-net",
    "version": "1.0.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "output_names": ["positions", "uncertainties"],
    "formats": ["onnx", "tensorrt"],
    "normalization_stats": {"feature_means": [0.485, 0.456, 0.406], "feature_stds": [0.229, 0.224, 0.225]},
}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in resolve("localization_net")().state_dict().items()}, str(path))
    return path.read_bytes()


def run_job(env: dict[str, str], spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    job_env = {**os.environ, **env, "HEIMDALL_JOB_SPEC": json.dumps(spec)}
    job_env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return subprocess.run(
        [sys.executable, "-m", "heimdall_batch"],
        env=job_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_job_reads_s3_converts_and_writes_deterministic_keys(
    s3: Any, aws_env: dict[str, str], checkpoint_bytes: bytes
) -> None:
    ingest, artifacts = f"ingest-{uuid.uuid4().hex[:8]}", f"artifacts-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=ingest)
    s3.create_bucket(Bucket=artifacts)
    prefix = "checkpoints/localization-net/1.0.0/"
    s3.put_object(Bucket=ingest, Key=prefix + "model.safetensors", Body=checkpoint_bytes)
    s3.put_object(Bucket=ingest, Key=prefix + "heimdall.json", Body=json.dumps(MANIFEST).encode())
    spec = {
        "job_id": "job-1",
        "checkpoint_uri": f"s3://{ingest}/{prefix}model.safetensors",
        "manifest_uri": f"s3://{ingest}/{prefix}heimdall.json",
        "output_uri": f"s3://{artifacts}/exports/job-1/",
        "timing_cache_uri": f"s3://{artifacts}/timing-cache/",
    }
    first = run_job(aws_env, spec)
    assert first.returncode == 0, first.stderr[-3000:]
    listing = s3.list_objects_v2(Bucket=artifacts, Prefix="exports/job-1/")
    keys = sorted(o["Key"] for o in listing["Contents"])
    assert "exports/job-1/result.json" in keys
    assert "exports/job-1/model.onnx" in keys
    assert "exports/job-1/export-package.zip" in keys
    assert "exports/job-1/localization-net-v1.0.0.heimdall" in keys
    result = ConversionResult.model_validate_json(
        s3.get_object(Bucket=artifacts, Key="exports/job-1/result.json")["Body"].read()
    )
    assert result.status == "SUCCEEDED" and result.exit_code == 0
    tensorrt = result.formats[-1]
    assert tensorrt.format.value == "tensorrt" and tensorrt.status.value == "skipped"
    assert tensorrt.reason
    # Every output listed in result.json is in S3 with the recorded hash.
    onnx_bytes = s3.get_object(Bucket=artifacts, Key="exports/job-1/model.onnx")["Body"].read()
    import hashlib

    assert hashlib.sha256(onnx_bytes).hexdigest() == result.outputs["model.onnx"].sha256
    assert set(result.outputs) | {"result.json"} == {k.removeprefix("exports/job-1/") for k in keys}

    # A retried attempt overwrites the same keys: nothing is added.
    second = run_job(aws_env, spec)
    assert second.returncode == 0, second.stderr[-3000:]
    again = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=artifacts, Prefix="exports/job-1/")["Contents"]
    )
    assert again == keys


@pytest.mark.parametrize(
    ("case", "exit_code", "error_code"),
    [
        ("missing-checkpoint", 3, "INVALID_INPUT"),
        ("bad-manifest", 3, "INVALID_MANIFEST"),
        ("unknown-architecture", 4, "UNSUPPORTED_ARCHITECTURE"),
        ("fp16-parity", 4, "FORMAT_FAILED"),
    ],
)
def test_failures_are_terminal_with_a_result(
    s3: Any, aws_env: dict[str, str], checkpoint_bytes: bytes, case: str, exit_code: int, error_code: str
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    manifest = dict(MANIFEST, formats=["onnx"])
    if case == "bad-manifest":
        manifest["input_shape"] = "big"
    if case == "unknown-architecture":
        manifest["architecture"] = "resnet9000"
    if case == "fp16-parity":  # a requested format that fails (no FP16 model meets 1e-12) fails the job
        manifest.update(formats=["onnx", "onnx_fp16"], tolerances={"onnx_fp16": 1e-12})
    if case != "missing-checkpoint":
        s3.put_object(Bucket=bucket, Key="c/model.safetensors", Body=checkpoint_bytes)
    s3.put_object(Bucket=bucket, Key="c/heimdall.json", Body=json.dumps(manifest).encode())
    spec = {
        "job_id": f"job-{case}",
        "checkpoint_uri": f"s3://{bucket}/c/model.safetensors",
        "manifest_uri": f"s3://{bucket}/c/heimdall.json",
        "output_uri": f"s3://{bucket}/exports/job-{case}/",
    }
    done = run_job(aws_env, spec)
    assert done.returncode == exit_code, done.stderr[-2000:]
    body = s3.get_object(Bucket=bucket, Key=f"exports/job-{case}/result.json")["Body"].read()
    result = ConversionResult.model_validate_json(body)
    assert (result.status, result.error_code, result.exit_code) == ("FAILED", error_code, exit_code)
    assert "Traceback" not in done.stderr


def test_a_bundle_job_converts_the_bundles_model_and_a_bad_one_is_terminal(
    s3: Any, aws_env: dict[str, str], checkpoint_bytes: bytes
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    onnx_model = localization_net_onnx(seed=5)
    indexed = sample_bundle(onnx_model, num_samples=1)
    s3.put_object(Bucket=bucket, Key="bundles/m/net-v1.heimdall", Body=indexed)
    spec = {
        "job_id": "bundle-job",
        "source": "bundle",
        "expected_onnx_sha256": hashlib.sha256(onnx_model).hexdigest(),
        "checkpoint_uri": f"s3://{bucket}/bundles/m/net-v1.heimdall",
        "output_uri": f"s3://{bucket}/exports/bundle-job/",
        "formats": ["onnx", "onnx_int8"],
    }
    done = run_job(aws_env, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="exports/bundle-job/")["Contents"]}
    built = ("model.onnx", "model_int8.onnx", "export-package.zip")
    assert {f"exports/bundle-job/{name}" for name in built} <= keys
    assert not any(key.endswith(".heimdall") for key in keys)  # the source is the bundle
    stored = s3.get_object(Bucket=bucket, Key="exports/bundle-job/model.onnx")["Body"].read()
    assert stored == onnx_model
    # A stored bundle replaced by another model since it was indexed: refused, terminal, nothing built.
    other_model = sample_bundle(localization_net_onnx(seed=6), num_samples=1)
    s3.put_object(Bucket=bucket, Key="bundles/m/net-v1.heimdall", Body=other_model)
    swapped = {**spec, "job_id": "swapped", "output_uri": f"s3://{bucket}/exports/swapped/"}
    refused = run_job(aws_env, swapped)
    assert refused.returncode == 3, refused.stderr[-2000:]
    body = s3.get_object(Bucket=bucket, Key="exports/swapped/result.json")["Body"].read()
    assert ConversionResult.model_validate_json(body).error_code == "CHECKSUM_MISMATCH"
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="exports/swapped/")["Contents"]
    assert [o["Key"] for o in listing] == ["exports/swapped/result.json"]
    # A checkpoint given as a bundle is refused as one: terminal, with the bundle reader's code.
    s3.put_object(Bucket=bucket, Key="c/model.safetensors", Body=checkpoint_bytes)
    wrong = {**spec, "job_id": "wrong", "checkpoint_uri": f"s3://{bucket}/c/model.safetensors"}
    wrong["output_uri"] = f"s3://{bucket}/exports/wrong/"
    refused = run_job(aws_env, wrong)
    assert refused.returncode == 3, refused.stderr[-2000:]
    body = s3.get_object(Bucket=bucket, Key="exports/wrong/result.json")["Body"].read()
    assert ConversionResult.model_validate_json(body).error_code == "INVALID_JSON"  # not a JSON document


def test_an_invalid_job_spec_exits_3_naming_the_variable(aws_env: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **aws_env, "HEIMDALL_JOB_ID": "j", "HEIMDALL_CHECKPOINT_URI": "not-a-uri"}
    env.pop("HEIMDALL_JOB_SPEC", None)
    done = subprocess.run(
        [sys.executable, "-m", "heimdall_batch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3
    assert "HEIMDALL_CHECKPOINT_URI" in done.stderr and "HEIMDALL_OUTPUT_URI" in done.stderr


def test_the_job_refuses_to_start_with_unsafe_loading_forced(aws_env: dict[str, str]) -> None:
    spec = {
        "job_id": "job-unsafe",
        "checkpoint_uri": "s3://any-bucket/c/model.safetensors",
        "output_uri": "s3://any-bucket/exports/job-unsafe/",
    }
    env = {
        **os.environ,
        **aws_env,
        "HEIMDALL_JOB_SPEC": json.dumps(spec),
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "heimdall_batch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3
    assert "UNSAFE_ENVIRONMENT" in done.stderr and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in done.stderr
