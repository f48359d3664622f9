"""Use cases: deployments through the API — create (four types), read, list, (de)activate, delete,
history, key rotation, and the download of what a deployment delivers (DESIGN §7).

A deployment is made from an export job or directly from a model, as the request says (one model per
type, with that type's options: :mod:`heimdall.logic.deployment_requests`). An imported model has no
export package until an export job converts its bundle (:mod:`heimdall.logic.export_jobs`); until then
it can be a ``platform_endpoint`` or a ``download`` of its bundle or its ONNX model, and the package
types answer 409 ``NO_EXPORT_PACKAGE``. Deployed from a model, the package types use the job that exported
it, or for an imported model its default export job, else its newest succeeded one.

``download``
    a presigned GET (minutes of validity, never longer than the signing credentials: the S3 adapter
    clamps it) of ``file``: the job's export package (the default), the bundle (the job's, else the
    model's indexed one: a bundle job writes none) or the model's ONNX file (with its sha256). These
    are the stored objects themselves, never copies, and stay while the deployment does (a model with
    deployments cannot be deleted).
``edge_package`` / ``container``
    a zip built here from the export package (:mod:`heimdall.export_package.reader`, which checks the
    package's checksums and its Triton config against the model's declared I/O first), stored under
    ``deployments/{deployment_id}/`` in the artifacts bucket and handed out as a presigned GET.
``platform_endpoint``
    the model served by the inference function. The model's ONNX key, checksum and version (for an
    old-opset model, its upgraded copy's key and checksum), and the bundle's normalisation when the
    deployment applies it, are copied into the deployment so that an inference request needs no
    registry read of the model. Its API key is returned once; only its hash is stored. A model ONNX
    Runtime cannot serve (``servable`` false on its record) is refused, at creation and at
    activation, with 409 ``MODEL_NOT_SERVABLE``; its downloads and export stay available.

Every change of status is recorded in the deployment's history with who made it, and announced:
a deployment that becomes active (created, or activated) emits ``Deployment Activated``, one that
stops (deactivated, or deleted while active) ``Deployment Deactivated``.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from heimdall.bundle import read_bundle
from heimdall.bundle.models import NormalizationStats
from heimdall.contracts.jobs import PACKAGE_FILE_NAME, FormatStatus
from heimdall.domain.api_keys import generate_api_key, hash_api_key
from heimdall.domain.deployments import (
    ApiKeyRecord,
    Deployment,
    DeploymentArtifact,
    DeploymentEvent,
    DeploymentStatus,
    DeploymentType,
    UsageSummary,
)
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.records import ExportJob, JobStatus, ModelRecord
from heimdall.domain.storage import Download, download_name
from heimdall.errors import (
    DeploymentInactive,
    HeimdallError,
    ModelNotServable,
    NoExportPackage,
    NotReady,
    RequestInvalid,
)
from heimdall.events import DeploymentActivated, DeploymentDeactivated, idempotency_key_for, make_event
from heimdall.logic.api import ApiDeps, require_id
from heimdall.logic.deployment_requests import (
    ContainerOptions,
    DeploymentOptions,
    DeploymentRequest,
    DownloadOptions,
    EdgeOptions,
    EndpointOptions,
)
from heimdall.logic.export_jobs import read_job_result
from heimdall.types import ExportFormat

__all__ = [
    "CreatedDeployment",
    "activate_deployment",
    "create_deployment",
    "deactivate_deployment",
    "delete_deployment",
    "deployment_download",
    "deployment_history",
    "deployment_usage",
    "export_of_model",
    "get_deployment",
    "list_deployments",
    "rotate_key",
]

logger = logging.getLogger(__name__)

#: Where built deployment packages live in the artifacts bucket.
DEPLOYMENTS_PREFIX = "deployments/"
#: The file name of a built package under ``deployments/{deployment_id}/``.
_PACKAGE_FILE = "package.zip"
_ZIP = "application/zip"


# --- create ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedDeployment:
    """A new deployment, its API key (platform endpoints: shown this once) and its download link."""

    deployment: Deployment
    api_key: str | None = None
    download: Download | None = None


@dataclass(frozen=True)
class _Source:
    model: ModelRecord | None
    job: ExportJob | None


def create_deployment(deps: ApiDeps, owner: str, request: DeploymentRequest) -> CreatedDeployment:
    """Create a deployment of the owner's model or export job (see the module docstring)."""
    kind = request.type
    options = request.options
    source = _source(deps, owner, request)
    deployment_id = str(uuid.uuid4())
    now = deps.now()
    base: dict[str, Any] = {
        "deployment_id": deployment_id,
        "owner": owner,
        "type": kind,
        "name": request.name,
        "export_job_id": source.job.job_id if source.job is not None else None,
        "options": options.model_dump(mode="json", exclude_none=True),
        "created_at": now,
        "updated_at": now,
    }
    api_key: str | None = None
    key_record: ApiKeyRecord | None = None
    if isinstance(options, EndpointOptions):
        model = _served_model(source)
        _require_servable(model)
        key_id, api_key = generate_api_key()
        key_record = ApiKeyRecord(
            key_id=key_id, deployment_id=deployment_id, owner=owner, key_hash=hash_api_key(api_key)
        )
        onnx_key, onnx_sha256 = model.served_onnx()  # an old opset's upgraded copy, if it has one
        if options.precision != "fp32":
            onnx_key, onnx_sha256 = _built_model(deps, source, options.precision)
        base.update(
            model_id=model.model_id,
            tier=options.tier,
            apply_normalization=options.apply_normalization,
            key_id=key_id,
            model_version=model.version,
            onnx_key=onnx_key,
            onnx_sha256=onnx_sha256,
            normalization=_normalization(deps, model) if options.apply_normalization else None,
        )
        artifact = None
    elif isinstance(options, DownloadOptions):
        base["model_id"], artifact = _download_artifact(deps, source, options)
        base["artifact"] = artifact
    else:
        job = _packaged_job(source, kind)
        base["model_id"] = _model_id_of(source, job)
        artifact = _built_artifact(deps, deployment_id, request.name, job, options)
        base["artifact"] = artifact
    deployment = Deployment.model_validate(base)
    try:
        deps.deployments.put_deployment(deployment, api_key=key_record, actor=owner)
    except BaseException:
        if artifact is not None and artifact.key.startswith(DEPLOYMENTS_PREFIX):
            _delete_quietly(deps, artifact.key)
        raise
    _announce(deps, deployment, DeploymentStatus.ACTIVE, revision="created")
    download = _download(deps, deployment) if artifact is not None else None
    return CreatedDeployment(deployment=deployment, api_key=api_key, download=download)


def _source(deps: ApiDeps, owner: str, request: DeploymentRequest) -> _Source:
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
        return _Source(model=indexed, job=source_job)
    assert request.model_id is not None
    require_id(request.model_id, what="model", field="model_id")
    model = deps.registry.get_model(owner, request.model_id)
    return _Source(model=model, job=export_of_model(deps, owner, model))


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


def _served_model(source: _Source) -> ModelRecord:
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


def _require_servable(model: ModelRecord) -> None:
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


def _built_model(deps: ApiDeps, source: _Source, precision: Literal["fp16", "int8"]) -> tuple[str, str]:
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


def _normalization(deps: ApiDeps, model: ModelRecord) -> NormalizationStats:
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


def _packaged_job(source: _Source, kind: DeploymentType) -> ExportJob:
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


def _model_id_of(source: _Source, job: ExportJob) -> str:
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


def _download_artifact(
    deps: ApiDeps, source: _Source, options: DownloadOptions
) -> tuple[str, DeploymentArtifact]:
    """The model id and the stored file a ``download`` deployment links to."""
    sha256: str | None = None
    job_bundle = source.job is not None and source.job.result is not None and source.job.result.bundle_file
    if options.file == "package" or (options.file == "bundle" and job_bundle):
        job = _packaged_job(source, DeploymentType.DOWNLOAD)
        model_id = _model_id_of(source, job)
        uri, file_name = _job_file(job, options.file)
    else:
        model = _served_model(source)  # the model's own files: indexed, with its ONNX stored
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


def _built_artifact(
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
            built = edge.build_edge_package(
                package, out_dir, name=name, precision=options.precision
            )
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


def _download(deps: ApiDeps, deployment: Deployment) -> Download:
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


def _delete_quietly(deps: ApiDeps, key: str) -> None:
    try:
        deps.store.delete(f"s3://{deps.names.artifacts_bucket}/{key}")
    except HeimdallError as exc:
        logger.warning("could not delete deployment artifact %s: %s", key, exc)


def _announce(deps: ApiDeps, deployment: Deployment, status: DeploymentStatus, *, revision: str) -> None:
    """``Deployment Activated``/``Deactivated``; the key names the change, so a retry dedupes."""
    detail_class = DeploymentActivated if status is DeploymentStatus.ACTIVE else DeploymentDeactivated
    detail = detail_class(
        idempotency_key=idempotency_key_for(
            deployment.deployment_id, revision, detail_class.detail_type.value
        ),
        occurred_at=deployment.updated_at,
        owner=deployment.owner,
        deployment_id=deployment.deployment_id,
        model_id=deployment.model_id,
        deployment_type=deployment.type.value,
    )
    deps.events.publish([make_event(detail)])


# --- read, list, history ---------------------------------------------------------------------------


def get_deployment(deps: ApiDeps, owner: str, deployment_id: str) -> Deployment:
    """The owner's deployment; RecordNotFound for a missing one, another owner's, or a malformed id."""
    require_id(deployment_id, what="deployment", field="deployment_id")
    return deps.deployments.get_deployment(owner, deployment_id)


def list_deployments(
    deps: ApiDeps,
    owner: str,
    *,
    model_id: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> Page[Deployment]:
    """The owner's deployments (of one model if given), newest first."""
    if model_id is not None:
        require_id(model_id, what="model", field="model_id")
    return deps.deployments.list_deployments(owner, model_id=model_id, limit=limit, cursor=cursor)


def deployment_history(deps: ApiDeps, owner: str, deployment_id: str) -> list[DeploymentEvent]:
    """Every recorded change of the deployment, oldest first."""
    require_id(deployment_id, what="deployment", field="deployment_id")
    return deps.deployments.history(owner, deployment_id)


def deployment_usage(deps: ApiDeps, deployment: Deployment) -> UsageSummary | None:
    """What a platform endpoint served (None for the other types)."""
    if deployment.type is not DeploymentType.PLATFORM_ENDPOINT:
        return None
    return deps.deployments.get_usage(deployment.deployment_id)


# --- lifecycle -------------------------------------------------------------------------------------


def _transition(deps: ApiDeps, owner: str, deployment_id: str, target: DeploymentStatus) -> Deployment:
    require_id(deployment_id, what="deployment", field="deployment_id")
    changed = deps.deployments.transition_deployment(owner, deployment_id, target, actor=owner)
    _announce(deps, changed, target, revision=_revision(changed.updated_at))
    return changed


def _revision(moment: datetime) -> str:
    return moment.isoformat()


def activate_deployment(deps: ApiDeps, owner: str, deployment_id: str) -> Deployment:
    """INACTIVE → ACTIVE (ConflictError if it is active already; ModelNotServable for an endpoint of a
    model ONNX Runtime cannot serve)."""
    current = get_deployment(deps, owner, deployment_id)
    if current.type is DeploymentType.PLATFORM_ENDPOINT:
        _require_servable(deps.registry.get_model(owner, current.model_id))
    return _transition(deps, owner, deployment_id, DeploymentStatus.ACTIVE)


def deactivate_deployment(deps: ApiDeps, owner: str, deployment_id: str) -> Deployment:
    """ACTIVE → INACTIVE (ConflictError if it is inactive already). Its endpoint answers 409 meanwhile."""
    return _transition(deps, owner, deployment_id, DeploymentStatus.INACTIVE)


def delete_deployment(deps: ApiDeps, owner: str, deployment_id: str) -> None:
    """Delete the deployment: its key stops working at once, its built package is removed."""
    deployment = get_deployment(deps, owner, deployment_id)
    deps.deployments.delete_deployment(owner, deployment_id)
    if deployment.artifact is not None and deployment.artifact.key.startswith(DEPLOYMENTS_PREFIX):
        _delete_quietly(deps, deployment.artifact.key)
    if deployment.status is DeploymentStatus.ACTIVE:
        gone = deployment.model_copy(update={"updated_at": deps.now()})
        _announce(deps, gone, DeploymentStatus.INACTIVE, revision="deleted")


def rotate_key(deps: ApiDeps, owner: str, deployment_id: str) -> CreatedDeployment:
    """A new API key for a platform endpoint; the old one stops working at once."""
    current = get_deployment(deps, owner, deployment_id)
    if current.type is not DeploymentType.PLATFORM_ENDPOINT:
        raise NotReady(
            f"deployment {deployment_id} is a {current.type} deployment: only a platform_endpoint has a key",
            field="deployment_id",
        )
    key_id, api_key = generate_api_key()
    record = ApiKeyRecord(
        key_id=key_id, deployment_id=deployment_id, owner=owner, key_hash=hash_api_key(api_key)
    )
    changed = deps.deployments.rotate_api_key(owner, deployment_id, record, actor=owner)
    return CreatedDeployment(deployment=changed, api_key=api_key)


def deployment_download(deps: ApiDeps, owner: str, deployment_id: str) -> Download:
    """A fresh presigned GET of what an active deployment delivers (not for platform endpoints)."""
    deployment = get_deployment(deps, owner, deployment_id)
    if deployment.artifact is None:
        raise NotReady(
            f"deployment {deployment_id} is a {deployment.type}: it has no file to download",
            field="deployment_id",
        )
    if deployment.status is not DeploymentStatus.ACTIVE:
        raise DeploymentInactive(
            f"deployment {deployment_id} is inactive: activate it to download", field="deployment_id"
        )
    return _download(deps, deployment)
