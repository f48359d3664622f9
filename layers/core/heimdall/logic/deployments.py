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

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from heimdall.domain.api_keys import generate_api_key, hash_api_key
from heimdall.domain.deployments import (
    ApiKeyRecord,
    Deployment,
    DeploymentEvent,
    DeploymentStatus,
    DeploymentType,
    UsageSummary,
)
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.storage import Download
from heimdall.errors import (
    DeploymentInactive,
    NotReady,
)
from heimdall.events import DeploymentActivated, DeploymentDeactivated, idempotency_key_for, make_event
from heimdall.logic.api import ApiDeps, require_id
from heimdall.logic.deployment_artifacts import (
    DEPLOYMENTS_PREFIX,
    built_artifact,
    built_model,
    delete_quietly,
    download_artifact,
    model_id_of,
    normalization_of,
    packaged_job,
    presigned_download,
    require_servable,
    served_model,
    source_of,
)
from heimdall.logic.deployment_requests import (
    DeploymentRequest,
    DownloadOptions,
    EndpointOptions,
)

__all__ = [
    "CreatedDeployment",
    "activate_deployment",
    "create_deployment",
    "deactivate_deployment",
    "delete_deployment",
    "deployment_download",
    "deployment_history",
    "deployment_usage",
    "get_deployment",
    "list_deployments",
    "rotate_key",
]


# --- create ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedDeployment:
    """A new deployment, its API key (platform endpoints: shown this once) and its download link."""

    deployment: Deployment
    api_key: str | None = None
    download: Download | None = None


def create_deployment(deps: ApiDeps, owner: str, request: DeploymentRequest) -> CreatedDeployment:
    """Create a deployment of the owner's model or export job (see the module docstring)."""
    kind = request.type
    options = request.options
    source = source_of(deps, owner, request)
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
        model = served_model(source)
        require_servable(model)
        key_id, api_key = generate_api_key()
        key_record = ApiKeyRecord(
            key_id=key_id, deployment_id=deployment_id, owner=owner, key_hash=hash_api_key(api_key)
        )
        onnx_key, onnx_sha256 = model.served_onnx()  # an old opset's upgraded copy, if it has one
        if options.precision != "fp32":
            onnx_key, onnx_sha256 = built_model(deps, source, options.precision)
        base.update(
            model_id=model.model_id,
            tier=options.tier,
            apply_normalization=options.apply_normalization,
            key_id=key_id,
            model_version=model.version,
            onnx_key=onnx_key,
            onnx_sha256=onnx_sha256,
            normalization=normalization_of(deps, model) if options.apply_normalization else None,
        )
        artifact = None
    elif isinstance(options, DownloadOptions):
        base["model_id"], artifact = download_artifact(deps, source, options)
        base["artifact"] = artifact
    else:
        job = packaged_job(source, kind)
        base["model_id"] = model_id_of(source, job)
        artifact = built_artifact(deps, deployment_id, request.name, job, options)
        base["artifact"] = artifact
    deployment = Deployment.model_validate(base)
    try:
        deps.deployments.put_deployment(deployment, api_key=key_record, actor=owner)
    except BaseException:
        if artifact is not None and artifact.key.startswith(DEPLOYMENTS_PREFIX):
            delete_quietly(deps, artifact.key)
        raise
    _announce(deps, deployment, DeploymentStatus.ACTIVE, revision="created")
    download = presigned_download(deps, deployment) if artifact is not None else None
    return CreatedDeployment(deployment=deployment, api_key=api_key, download=download)


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
        require_servable(deps.registry.get_model(owner, current.model_id))
    return _transition(deps, owner, deployment_id, DeploymentStatus.ACTIVE)


def deactivate_deployment(deps: ApiDeps, owner: str, deployment_id: str) -> Deployment:
    """ACTIVE → INACTIVE (ConflictError if it is inactive already). Its endpoint answers 409 meanwhile."""
    return _transition(deps, owner, deployment_id, DeploymentStatus.INACTIVE)


def delete_deployment(deps: ApiDeps, owner: str, deployment_id: str) -> None:
    """Delete the deployment: its key stops working at once, its built package is removed."""
    deployment = get_deployment(deps, owner, deployment_id)
    deps.deployments.delete_deployment(owner, deployment_id)
    if deployment.artifact is not None and deployment.artifact.key.startswith(DEPLOYMENTS_PREFIX):
        delete_quietly(deps, deployment.artifact.key)
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
    return presigned_download(deps, deployment)
