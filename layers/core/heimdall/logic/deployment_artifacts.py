"""What a deployment is made from and what it delivers: the model or export job a request names, the
model a platform endpoint serves, the stored file a ``download`` links to, the package an
``edge_package`` or ``container`` builds, and the presigned link handed out (DESIGN §7).

The rules are the module docstring of :mod:`heimdall.logic.deployments`, whose use cases call these.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from heimdall.bundle import read_bundle
from heimdall.bundle.models import NormalizationStats
from heimdall.contracts.jobs import PACKAGE_FILE_NAME, FormatStatus
from heimdall.domain.deployments import Deployment, DeploymentArtifact, DeploymentType
from heimdall.domain.records import ExportJob, JobStatus, ModelRecord
from heimdall.domain.storage import Download, download_name
from heimdall.errors import HeimdallError, ModelNotServable, NoExportPackage, NotReady, RequestInvalid
from heimdall.logic.api import ApiDeps, require_id
from heimdall.logic.deployment_requests import (
    ContainerOptions,
    DeploymentOptions,
    DeploymentRequest,
    DownloadOptions,
    EdgeOptions,
)
from heimdall.logic.export_jobs import read_job_result
from heimdall.types import ExportFormat

__all__ = [
    "DEPLOYMENTS_PREFIX",
    "EXPORT_MODEL_PATTERN",
    "DeploymentSource",
    "built_artifact",
    "built_model",
    "delete_quietly",
    "download_artifact",
    "export_of_model",
    "model_id_of",
    "normalization_of",
    "packaged_job",
    "presigned_download",
    "require_servable",
    "served_model",
    "source_of",
]

logger = logging.getLogger(__name__)

#: Where built deployment packages live in the artifacts bucket.
DEPLOYMENTS_PREFIX = "deployments/"
#: The file name of a built package under ``deployments/{deployment_id}/``.
_PACKAGE_FILE = "package.zip"


_ZIP = "application/zip"


@dataclass(frozen=True)
class DeploymentSource:
    """What a deployment request names: the model (None for an export job whose model is gone) and
    the export job whose package it uses (None when the model has none)."""

    model: ModelRecord | None
    job: ExportJob | None


def source_of(deps: ApiDeps, owner: str, request: DeploymentRequest) -> DeploymentSource:
    if request.export_job_id is not None:
        require_id(request.export_job_id, what="export job", field="export_job_id")
        source_job = deps.registry.get_export_job(owner, request.export_job_id)
        if source_job.status is not JobStatus.SUCCEEDED:
            raise NotReady(
                f"export job {source_job.job_id} is {source_job.status}; only a succeeded export can be "
                "deployed",
                field="export_job_id",
                status=str(source_job.status),
            )
        indexed = deps.registry.get_model(owner, source_job.model_id) if source_job.model_id else None
        return DeploymentSource(model=indexed, job=source_job)
    assert request.model_id is not None
    require_id(request.model_id, what="model", field="model_id")
    model = deps.registry.get_model(owner, request.model_id)
    return DeploymentSource(model=model, job=export_of_model(deps, owner, model))


def export_of_model(deps: ApiDeps, owner: str, model: ModelRecord) -> ExportJob | None:
    """The export job whose package a deployment of ``model`` uses: the job that exported it; for an
    imported model, its default export if that converted this model, else the newest succeeded job
    that did (looked for among the model name's :data:`_EXPORT_SEARCH_PAGES` newest pages of
    succeeded jobs)."""
    if model.export_job_id:
        try:
            return deps.registry.get_export_job(owner, model.export_job_id)
        except HeimdallError:
            return None  # the job record is gone: the model can still be served
    default = deps.registry.get_default_export(owner, model.model_name, model.version)
    if default is not None and default.model_id == model.model_id and default.status is JobStatus.SUCCEEDED:
        return default
    cursor: str | None = None
    for _ in range(_EXPORT_SEARCH_PAGES):
        page = deps.registry.list_export_jobs(
            owner, model_name=model.model_name, status=JobStatus.SUCCEEDED, cursor=cursor
        )
        found = next((job for job in page.items if job.model_id == model.model_id), None)
        if found is not None or page.cursor is None:
            return found
        cursor = page.cursor
    return None


#: How far back :func:`export_of_model` looks (pages of the registry's default size).
_EXPORT_SEARCH_PAGES = 10


def served_model(source: DeploymentSource) -> ModelRecord:
    model = source.model
    if model is None:
        job_id = source.job.job_id if source.job else "?"
        raise NotReady(
            f"export job {job_id} succeeded but its model is not indexed yet; retry in a few seconds",
            field="export_job_id",
        )
    if not model.onnx_key or not model.onnx_sha256:
        raise NotReady(f"model {model.model_id} has no stored ONNX model to serve", field="model_id")
    return model


def require_servable(model: ModelRecord) -> None:
    """Refuse an endpoint of a model ONNX Runtime cannot serve (found when it was indexed)."""
    if not model.servable:
        why = model.not_servable_reason or "ONNX Runtime cannot load it"
        raise ModelNotServable(
            f"model {model.model_id} cannot be served: {why}; its bundle and ONNX file can still be "
            "downloaded or exported",
            field="model_id",
            reason=model.not_servable_reason,
        )


#: The keys of the export builds an endpoint may serve (the inference function may read these).
EXPORT_MODEL_PATTERN = "exports/*.onnx"


def built_model(
    deps: ApiDeps, source: DeploymentSource, precision: Literal["fp16", "int8"]
) -> tuple[str, str]:
    """The key and sha256 of the FP16 or INT8 model the source's export job built (as its
    ``result.json`` recorded them: the inference function checks the file against that sha256)."""
    fmt = ExportFormat.ONNX_INT8 if precision == "int8" else ExportFormat.ONNX_FP16
    job = source.job
    if job is None or job.status is not JobStatus.SUCCEEDED or not job.output_prefix:
        what = source.model.model_id if source.model else "this model"
        raise NoExportPackage(
            f"a {precision} endpoint serves the {fmt} model of an export job, and {what} has no succeeded "
            "export job: serve it at fp32, or run an export job first",
            field="options.precision",
        )
    outcome = read_job_result(deps, job).outcome(fmt)
    if outcome is None or outcome.status is not FormatStatus.BUILT or not outcome.file or not outcome.sha256:
        why = "was not asked for" if outcome is None else f"is {outcome.status.value}: {outcome.reason}"
        raise NotReady(
            f"export job {job.job_id} built no {fmt} model ({fmt} {why}): serve it at fp32 or at a precision "
            "the job built",
            field="options.precision",
        )
    key = _key_of(f"{job.output_prefix.rstrip('/')}/{outcome.file}")
    if not fnmatch.fnmatchcase(key, EXPORT_MODEL_PATTERN):  # where the inference function may read
        raise NotReady(
            f"export job {job.job_id}'s {fmt} file {key} cannot be served", field="options.precision"
        )
    return key, outcome.sha256


def normalization_of(deps: ApiDeps, model: ModelRecord) -> NormalizationStats:
    """The normalisation of the model's stored bundle; RequestInvalid when it has none, or only part
    of one (means without stds, as the original Heimdall may have written)."""
    if "normalization_stats" in model.components and model.bundle_key:
        uri = f"s3://{deps.names.artifacts_bucket}/{model.bundle_key}"
        with tempfile.TemporaryDirectory(prefix="heimdall-deploy-", dir=deps.workdir) as tmp:
            path = Path(tmp) / "bundle.heimdall"
            deps.store.download(uri, path, max_bytes=deps.limits.max_bundle_bytes)
            stats = read_bundle(path, limits=deps.limits).bundle.normalization_stats
        if stats is not None and stats.means_and_stds() is not None:
            return stats
    raise RequestInvalid(
        f"model {model.model_id}'s bundle has no complete normalization_stats: "
        "create the endpoint with apply_normalization false",
        field="options.apply_normalization",
    )


def packaged_job(source: DeploymentSource, kind: DeploymentType) -> ExportJob:
    job = source.job
    if job is None or job.status is not JobStatus.SUCCEEDED or not job.output_prefix or job.result is None:
        what = source.model.model_id if source.model else "this model"
        also = "a download of its bundle or onnx file" if kind is DeploymentType.DOWNLOAD else "a download"
        raise NoExportPackage(
            f"a {kind} deployment is made from an export package, and {what} has none yet (an imported "
            "model): run an export job of it first (it converts the model's bundle), or deploy it as a "
            f"platform_endpoint or {also}",
            field="model_id",
        )
    return job


def model_id_of(source: DeploymentSource, job: ExportJob) -> str:
    if source.model is not None:
        return source.model.model_id
    if job.model_id:
        return job.model_id
    raise NotReady(
        f"export job {job.job_id} succeeded but its model is not indexed yet; retry in a few seconds",
        field="export_job_id",
    )


def _job_file(job: ExportJob, file: Literal["package", "bundle"]) -> tuple[str, str]:
    """(uri, file name) of a succeeded job's package or bundle."""
    assert job.result is not None and job.output_prefix is not None
    name = job.result.package_file if file == "package" else job.result.bundle_file
    if not name:
        raise NoExportPackage(f"export job {job.job_id} built no {file}", field="export_job_id")
    return f"{job.output_prefix.rstrip('/')}/{name}", name.rpartition("/")[2]


def download_artifact(
    deps: ApiDeps, source: DeploymentSource, options: DownloadOptions
) -> tuple[str, DeploymentArtifact]:
    """The model id and the stored file a ``download`` deployment links to."""
    sha256: str | None = None
    job_bundle = source.job is not None and source.job.result is not None and source.job.result.bundle_file
    if options.file == "package" or (options.file == "bundle" and job_bundle):
        job = packaged_job(source, DeploymentType.DOWNLOAD)
        model_id = model_id_of(source, job)
        uri, file_name = _job_file(job, options.file)
    else:
        model = served_model(source)  # the model's own files: indexed, with its ONNX stored
        model_id = model.model_id
        stored = model.onnx_key if options.file == "onnx" else model.bundle_key
        if not stored:
            raise NotReady(f"model {model_id} has no stored {options.file} file", field="options.file")
        uri = f"s3://{deps.names.artifacts_bucket}/{stored}"
        # Stored under ids; downloaded under the model's name (a record's stored key is never rebuilt).
        suffix = ".onnx" if options.file == "onnx" else ".heimdall"
        file_name = download_name(f"{model.model_name}-v{model.version}{suffix}")
        sha256 = model.onnx_sha256 if options.file == "onnx" else None
    size = deps.store.head(uri).size  # also: 404 when the file is gone
    artifact = DeploymentArtifact(key=_key_of(uri), file_name=file_name, size_bytes=size, sha256=sha256)
    return model_id, artifact


def built_artifact(
    deps: ApiDeps, deployment_id: str, name: str, job: ExportJob, options: DeploymentOptions
) -> DeploymentArtifact:
    """An edge or container zip built from the job's export package, stored under ``deployments/``."""
    from heimdall.export_package import container, edge, reader  # noqa: PLC0415 - only the package types need it

    package_uri, _ = _job_file(job, "package")
    with tempfile.TemporaryDirectory(prefix="heimdall-deploy-", dir=deps.workdir) as tmp:
        package = Path(tmp) / PACKAGE_FILE_NAME
        deps.store.download(package_uri, package, max_bytes=reader.MAX_PACKAGE_BYTES)
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        if isinstance(options, EdgeOptions):
            built = edge.build_edge_package(package, out_dir, name=name, precision=options.precision)
        else:
            assert isinstance(options, ContainerOptions)
            built = container.build_container_package(
                package, out_dir, name=name, triton_image=options.triton_image
            )
        # Ids only in the key; the package's name is the download's Content-Disposition.
        key = f"{DEPLOYMENTS_PREFIX}{deployment_id}/{_PACKAGE_FILE}"
        deps.store.upload(built.path, f"s3://{deps.names.artifacts_bucket}/{key}", content_type=_ZIP)
    return DeploymentArtifact(
        key=key, file_name=built.file_name, size_bytes=built.size_bytes, sha256=built.sha256
    )


def _key_of(uri: str) -> str:
    return uri.removeprefix("s3://").partition("/")[2]


def presigned_download(deps: ApiDeps, deployment: Deployment) -> Download:
    artifact = deployment.artifact
    assert artifact is not None
    # Job outputs and built packages both live in the artifacts bucket.
    uri = f"s3://{deps.names.artifacts_bucket}/{artifact.key}"
    url, expires_at = deps.store.presign_get(
        uri, expires_s=deps.api.presign_ttl_s, filename=artifact.file_name
    )
    return Download(
        url=url,
        expires_at=expires_at,
        file=artifact.file_name,
        key=artifact.key,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
    )


def delete_quietly(deps: ApiDeps, key: str) -> None:
    try:
        deps.store.delete(f"s3://{deps.names.artifacts_bucket}/{key}")
    except HeimdallError as exc:
        logger.warning("could not delete deployment artifact %s: %s", key, exc)
