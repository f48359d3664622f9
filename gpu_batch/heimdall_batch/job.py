"""The AWS Batch entry point: a job spec from the environment, S3 in, the pipeline, S3 out.

Output keys are ``{output_uri}{file name}`` with deterministic names, so a retried attempt overwrites
what an earlier one wrote instead of adding to it; ``result.json`` is uploaded last. The process's
exit code is the result's (0 success, 3 invalid input, 4 unsupported: both terminal for Batch's
retry strategy; anything else retryable).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from heimdall.adapters.s3 import S3ObjectStore, join_uri, parse_s3_uri
from heimdall.contracts.jobs import RESULT_FILE_NAME, ConversionResult, JobSpec
from heimdall.contracts.manifest import ExportFormat
from heimdall.errors import HeimdallError, ObjectNotFound, TooLarge
from heimdall_batch.loading import refuse_unsafe_environment
from heimdall_batch.outputs import file_record
from heimdall_batch.pipeline import ConversionOptions, failed_result, run_bundle_conversion, run_conversion

logger = logging.getLogger("heimdall_batch")

#: The whole spec as one JSON document (what the ingest Lambda sets), or one variable per field.
SPEC_VARIABLE = "HEIMDALL_JOB_SPEC"
_FIELD_VARIABLES = {
    "job_id": "HEIMDALL_JOB_ID",
    "checkpoint_uri": "HEIMDALL_CHECKPOINT_URI",
    "manifest_uri": "HEIMDALL_MANIFEST_URI",
    "output_uri": "HEIMDALL_OUTPUT_URI",
    "timing_cache_uri": "HEIMDALL_TIMING_CACHE_URI",
    "formats": "HEIMDALL_FORMATS",
    "source": "HEIMDALL_SOURCE",
    "expected_onnx_sha256": "HEIMDALL_EXPECTED_ONNX_SHA256",
}
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_MANIFEST_BYTES = 1024 * 1024
EXIT_INVALID_INPUT = 3


class InvalidJobSpec(HeimdallError):
    """The job's environment does not describe a valid job."""

    code = "INVALID_JOB_SPEC"
    http_status = 400
    exit_code = EXIT_INVALID_INPUT


class InvalidInput(HeimdallError):
    """The job's checkpoint, bundle or manifest cannot be fetched for good (missing, too large)."""

    code = "INVALID_INPUT"
    http_status = 422
    exit_code = EXIT_INVALID_INPUT


def job_spec_from_env(environ: Mapping[str, str]) -> JobSpec:
    """Read the job spec from ``HEIMDALL_JOB_SPEC`` (JSON) or the per-field variables."""
    try:
        if SPEC_VARIABLE in environ:
            return JobSpec.model_validate_json(environ[SPEC_VARIABLE])
        fields: dict[str, object] = {
            name: environ[var] for name, var in _FIELD_VARIABLES.items() if environ.get(var)
        }
        if isinstance(fields.get("formats"), str):
            fields["formats"] = [f.strip() for f in str(fields["formats"]).split(",") if f.strip()]
        return JobSpec.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_variable_of(e['loc'], from_json=SPEC_VARIABLE in environ)}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise InvalidJobSpec(f"invalid job spec: {problems}") from None


def _variable_of(loc: tuple[int | str, ...], *, from_json: bool) -> str:
    """The environment variable (or JSON field) a validation error points at."""
    if from_json or not loc:
        return f"{SPEC_VARIABLE}.{'.'.join(str(p) for p in loc)}" if loc else SPEC_VARIABLE
    return _FIELD_VARIABLES.get(str(loc[0]), str(loc[0]))


def run_job(spec: JobSpec, store: S3ObjectStore, workdir: Path) -> ConversionResult:
    """Run one job: download, convert (a checkpoint, or a bundle's model), upload (``result.json`` last)."""
    refuse_unsafe_environment()
    inputs, out_dir, caches = workdir / "input", workdir / "output", workdir / "timing-cache"
    _, key = parse_s3_uri(spec.checkpoint_uri)
    checkpoint = inputs / (Path(key).name or "checkpoint")
    options = ConversionOptions(job_id=spec.job_id, formats=spec.formats, timing_cache_dir=caches)
    manifest: bytes | None = None
    try:
        store.download(spec.checkpoint_uri, checkpoint, max_bytes=MAX_CHECKPOINT_BYTES)
        if spec.manifest_uri is not None:
            manifest = store.get_bytes(spec.manifest_uri, max_bytes=MAX_MANIFEST_BYTES)
    except (ObjectNotFound, TooLarge) as exc:
        # The input is gone (deleted, overwritten) or over the limit: terminal, a retry cannot help.
        error = InvalidInput(f"cannot use the job's input: {exc.message}")
        result = failed_result(out_dir, options, error)
        store.upload(
            out_dir / RESULT_FILE_NAME,
            join_uri(spec.output_uri, RESULT_FILE_NAME),
            content_type="application/json",
        )
        return result
    cached = _download_timing_caches(spec, store, caches)
    if spec.source == "bundle":
        expected = spec.expected_onnx_sha256
        result = run_bundle_conversion(checkpoint, out_dir, options, expected_sha256=expected)
    else:
        result = run_conversion(checkpoint, out_dir, options, manifest=manifest)
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and path.name != RESULT_FILE_NAME:
            store.upload(path, join_uri(spec.output_uri, path.name))
    _upload_timing_caches(spec, store, caches, cached)
    store.upload(
        out_dir / RESULT_FILE_NAME,
        join_uri(spec.output_uri, RESULT_FILE_NAME),
        content_type="application/json",
    )
    return result


def _download_timing_caches(spec: JobSpec, store: S3ObjectStore, folder: Path) -> dict[str, str]:
    """Fetch the timing caches kept for this job's GPUs; returns name → sha256 as downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    if spec.timing_cache_uri is None:
        return {}
    bucket, _ = parse_s3_uri(spec.timing_cache_uri)
    digests = {}
    for key in store.list_keys(spec.timing_cache_uri):
        name = Path(key).name
        store.download(f"s3://{bucket}/{key}", folder / name)
        digests[name] = file_record(folder / name).sha256
    return digests


def _upload_timing_caches(spec: JobSpec, store: S3ObjectStore, folder: Path, before: dict[str, str]) -> None:
    """Upload the caches the build created or changed (TensorRT rewrites them in place)."""
    if spec.timing_cache_uri is None:
        return
    for path in sorted(folder.iterdir()):
        if path.is_file() and before.get(path.name) != file_record(path).sha256:
            store.upload(path, join_uri(spec.timing_cache_uri, path.name))


def main(environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the Batch container; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    env = os.environ if environ is None else environ
    try:
        spec = job_spec_from_env(env)
        with tempfile.TemporaryDirectory(prefix="heimdall-job-") as tmp:
            result = run_job(spec, S3ObjectStore(), Path(tmp))
    except HeimdallError as exc:
        code = int(getattr(exc, "exit_code", 1))
        logger.error("job failed before converting: %s: %s", exc.code, exc.message)
        print(
            json.dumps({"status": "FAILED", "error_code": exc.code, "message": exc.message}), file=sys.stderr
        )
        return code
    summary = {
        "job_id": result.job_id,
        "status": result.status,
        "error_code": result.error_code,
        "formats": {o.format.value: o.status.value for o in result.formats},
    }
    logger.info("job finished: %s", json.dumps(summary))
    return result.exit_code


__all__ = ["ExportFormat", "InvalidJobSpec", "job_spec_from_env", "main", "run_job"]
