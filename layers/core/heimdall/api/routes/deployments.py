"""Routes: deployments — create (download, platform endpoint, edge package, container), get, list,
activate, deactivate, delete, history, key rotation, and the download of what one delivers."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from heimdall.api.auth import current_caller
from heimdall.api.bodies import json_model, raw_body, require_media_type
from heimdall.api.deps import api_deps
from heimdall.api.documented import documented, json_request_body
from heimdall.api.params import Cursor, Limit, path_id
from heimdall.api.responses import JSON
from heimdall.api.schemas import (
    CreatedDeploymentOut,
    DeploymentEventOut,
    DeploymentHistoryOut,
    DeploymentOut,
    DeploymentPage,
    RotatedKeyOut,
)
from heimdall.domain.deployments import Deployment
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.domain.records import RecordId
from heimdall.domain.storage import Download
from heimdall.errors import RequestInvalid
from heimdall.logic import deployments as logic
from heimdall.logic.deployment_requests import CreateDeploymentRequest, option_field_as_sent

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated

TAGS = ["deployments"]
BASE = "/api/v1/deployments"
ONE = BASE + "/<deployment_id>"


def _id(deployment_id: str) -> str:
    return path_id(deployment_id, what="deployment", field="deployment_id")


def _out(deployment: Deployment) -> DeploymentOut:
    return DeploymentOut.of(deployment, logic.deployment_usage(api_deps(), deployment))


@router.post(
    BASE,
    summary="Create a deployment",
    description=(
        "Put a model (model_id) or an export job (export_job_id) to work: a download link of its "
        "export package, bundle or ONNX model, a platform endpoint served by /v1/infer (its API key "
        "is in this answer and never again), an edge package (INT8/FP16 model, Kotlin and Swift "
        "wrappers) or a container (Dockerfile on the Triton server image, the Triton repository, "
        "build.sh). An imported model has no export package: it can be a platform endpoint or a "
        "download of its bundle or ONNX model."
    ),
    tags=TAGS,
    status_code=201,
    responses=documented(201, "The deployment", CreatedDeploymentOut, errors=(400, 404, 409, 413, 415)),
    openapi_extensions={
        "requestBody": json_request_body(CreateDeploymentRequest, "What to deploy, and how.")
    },
)
def create_deployment() -> CreatedDeploymentOut:
    """Create a deployment owned by the caller; it starts ACTIVE."""
    deps = api_deps()
    require_media_type(router.current_event, (JSON,))
    request = json_model(
        raw_body(router.current_event, max_bytes=deps.api.max_inline_bytes), CreateDeploymentRequest
    )
    try:
        created = logic.create_deployment(deps, current_caller(router).sub, request.root)
    except RequestInvalid as exc:
        exc.field = option_field_as_sent(exc.field, request.root)
        raise
    return CreatedDeploymentOut(
        deployment=_out(created.deployment), api_key=created.api_key, download=created.download
    )


@router.get(
    BASE,
    summary="List deployments",
    description="The caller's deployments (of one model with model_id), newest first.",
    tags=TAGS,
    responses=documented(200, "A page of deployments", DeploymentPage, errors=(400,)),
)
def list_deployments(
    model_id: Annotated[RecordId | None, Query(description="Only this model's deployments.")] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> DeploymentPage:
    """A page of the caller's deployments."""
    page = logic.list_deployments(
        api_deps(), current_caller(router).sub, model_id=model_id, limit=limit, cursor=cursor
    )
    # No usage in listings: one more read per endpoint; GET of one deployment has it.
    return DeploymentPage(items=[DeploymentOut.of(d) for d in page.items], next_cursor=page.cursor)


@router.get(
    ONE,
    summary="Get a deployment",
    tags=TAGS,
    responses=documented(
        200, "The deployment (with its usage, for platform endpoints)", DeploymentOut, errors=(404,)
    ),
)
def get_deployment(deployment_id: str) -> DeploymentOut:
    """One of the caller's deployments."""
    return _out(logic.get_deployment(api_deps(), current_caller(router).sub, _id(deployment_id)))


@router.patch(
    ONE + "/activate",
    summary="Activate a deployment",
    tags=TAGS,
    responses=documented(200, "The deployment, active", DeploymentOut, errors=(404, 409)),
)
def activate_deployment(deployment_id: str) -> DeploymentOut:
    """INACTIVE → ACTIVE; 409 CONFLICT when it is active already. Emits Deployment Activated."""
    return _out(logic.activate_deployment(api_deps(), current_caller(router).sub, _id(deployment_id)))


@router.patch(
    ONE + "/deactivate",
    summary="Deactivate a deployment",
    tags=TAGS,
    responses=documented(200, "The deployment, inactive", DeploymentOut, errors=(404, 409)),
)
def deactivate_deployment(deployment_id: str) -> DeploymentOut:
    """ACTIVE → INACTIVE; 409 CONFLICT when it is inactive already. Emits Deployment Deactivated."""
    return _out(logic.deactivate_deployment(api_deps(), current_caller(router).sub, _id(deployment_id)))


@router.delete(
    ONE,
    summary="Delete a deployment",
    description="Its API key stops working at once; a built package is removed.",
    tags=TAGS,
    responses=documented(204, "Deleted", errors=(404,)),
)
def delete_deployment(deployment_id: str) -> Response[None]:
    """Delete one of the caller's deployments."""
    logic.delete_deployment(api_deps(), current_caller(router).sub, _id(deployment_id))
    return Response(status_code=204)


@router.get(
    ONE + "/history",
    summary="A deployment's history",
    tags=TAGS,
    responses=documented(200, "Every change, oldest first", DeploymentHistoryOut, errors=(404,)),
)
def deployment_history(deployment_id: str) -> DeploymentHistoryOut:
    """Every recorded change: action, time, actor, status before and after."""
    events = logic.deployment_history(api_deps(), current_caller(router).sub, _id(deployment_id))
    return DeploymentHistoryOut(items=[DeploymentEventOut.model_validate(e) for e in events])


@router.post(
    ONE + "/rotate-key",
    summary="Rotate a platform endpoint's API key",
    tags=TAGS,
    responses=documented(200, "The new key (shown this once)", RotatedKeyOut, errors=(404, 409)),
)
def rotate_key(deployment_id: str) -> RotatedKeyOut:
    """A new API key; the old one stops working at once."""
    rotated = logic.rotate_key(api_deps(), current_caller(router).sub, _id(deployment_id))
    assert rotated.api_key is not None
    return RotatedKeyOut(deployment=_out(rotated.deployment), api_key=rotated.api_key)


@router.get(
    ONE + "/download",
    summary="Download what a deployment delivers",
    description="A presigned GET (minutes) of the export package, bundle, ONNX model, edge or container zip.",
    tags=TAGS,
    responses=documented(200, "Where to download the file", Download, errors=(404, 409)),
)
def deployment_download(deployment_id: str) -> Download:
    """A fresh link; 409 for a platform endpoint (nothing to download) or an inactive deployment."""
    return logic.deployment_download(api_deps(), current_caller(router).sub, _id(deployment_id))
