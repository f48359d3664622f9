"""Routes: the caller's models — list, get, delete, export as a bundle."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from heimdall.api.auth import current_caller
from heimdall.api.deps import api_deps
from heimdall.api.documented import documented
from heimdall.api.params import Cursor, Limit, path_id
from heimdall.api.responses import JSON
from heimdall.api.schemas import ExportRedirectOut, ModelOut, ModelPage
from heimdall.bundle.models import ComponentSelection
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.domain.storage import content_disposition
from heimdall.logic import models as logic
from heimdall.logic.models import ExportedBundle, ExportOptions

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated

TAGS = ["models"]
EXPORT_PATH = "/api/v1/models/<model_id>/export"
#: What existing Heimdall clients call: the same operation.
LEGACY_EXPORT_PATH = "/api/v1/training/models/<model_id>/export"
MAX_DESCRIPTION_CHARS = 1000

_EXPORT_HEADERS = {
    "Content-Disposition": {
        "description": 'attachment; filename="{model_name}-v{version}.heimdall"',
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Heimdall-Onnx-Sha256": {
        "description": "sha256 of the embedded ONNX model (the same as the stored model's).",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "X-Heimdall-Bundle-Id": {
        "description": "The new bundle's bundle_metadata.bundle_id.",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Heimdall-Components": {
        "description": "The optional components the bundle holds, comma-separated (may be empty).",
        "required": True,
        "schema": {"type": "string"},
    },
}
_EXPORT_RESPONSES = {
    **documented(
        200,
        "The bundle (a .heimdall document), as an attachment",
        content={JSON: {"schema": {"type": "object", "description": "A .heimdall bundle."}}},
        headers=_EXPORT_HEADERS,
        errors=(404,),
    ),
    **documented(
        307,
        "The bundle is too large for a response: fetch it from the presigned URL in Location",
        ExportRedirectOut,
        headers={"Location": {"required": True, "schema": {"type": "string"}}},
    ),
}


@router.get(
    "/api/v1/models",
    summary="List models",
    description="The caller's models, newest first (optionally of one model name).",
    tags=TAGS,
    responses=documented(200, "A page of models", ModelPage, errors=(400,)),
)
def list_models(
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
    name: Annotated[
        str | None, Query(min_length=1, max_length=256, description="Only this model name.")
    ] = None,
) -> ModelPage:
    """A page of the caller's models."""
    page = logic.list_models(api_deps(), current_caller(router).sub, name=name, limit=limit, cursor=cursor)
    return ModelPage(items=[ModelOut.of(m) for m in page.items], next_cursor=page.cursor)


@router.get(
    "/api/v1/models/<model_id>",
    summary="Get a model",
    tags=TAGS,
    responses=documented(200, "The model", ModelOut, errors=(404,)),
)
def get_model(model_id: str) -> ModelOut:
    """One of the caller's models."""
    model_id = path_id(model_id, what="model", field="model_id")
    return ModelOut.of(logic.get_model(api_deps(), current_caller(router).sub, model_id))


@router.delete(
    "/api/v1/models/<model_id>",
    summary="Delete a model",
    description="Deletes the record and its stored ONNX model and bundle; 409 while it has deployments.",
    tags=TAGS,
    responses=documented(204, "Deleted", errors=(404, 409)),
)
def delete_model(model_id: str) -> Response[None]:
    """Delete one of the caller's models and its stored objects."""
    model_id = path_id(model_id, what="model", field="model_id")
    logic.delete_model(api_deps(), current_caller(router).sub, model_id)
    return Response(status_code=204)


_EXPORT_DOC: dict[str, Any] = {
    "tags": TAGS,
    "responses": _EXPORT_RESPONSES,
    "description": (
        "Assembles a bundle from the stored model with the chosen components and a new "
        "bundle_metadata (new bundle_id, created_at, created_by, description); the ONNX bytes and "
        "their sha256 are unchanged. Small bundles come back in the body; larger ones by a 307 "
        "redirect to a presigned URL."
    ),
}


@router.get(EXPORT_PATH, summary="Export a model as a bundle", **_EXPORT_DOC)
@router.get(LEGACY_EXPORT_PATH, summary="Export a model as a bundle (existing clients' path)", **_EXPORT_DOC)
def export_model(
    model_id: str,
    *,
    include_config: Annotated[bool, Query(description="Include training_config.")] = True,
    include_metrics: Annotated[bool, Query(description="Include performance_metrics.")] = True,
    include_normalization: Annotated[bool, Query(description="Include normalization_stats.")] = True,
    include_samples: Annotated[bool, Query(description="Include sample_predictions.")] = True,
    num_samples: Annotated[int, Query(ge=1, le=10, description="At most this many samples.")] = 10,
    description: Annotated[
        str | None, Query(max_length=MAX_DESCRIPTION_CHARS, description="bundle_metadata.description")
    ] = None,
) -> Response[Any]:
    """The model as a ``.heimdall`` bundle (in the body, or by redirect when too large)."""
    model_id = path_id(model_id, what="model", field="model_id")
    caller = current_caller(router)
    selection = ComponentSelection(
        training_config=include_config,
        performance_metrics=include_metrics,
        normalization_stats=include_normalization,
        sample_predictions=include_samples,
        num_samples=num_samples,
    )
    exported = logic.export_model(
        api_deps(),
        caller.sub,
        model_id,
        ExportOptions(selection=selection, description=description),
        requested_by=caller.sub,
    )
    return bundle_response(exported)


def bundle_response(exported: ExportedBundle) -> Response[Any]:
    """The response of an export: the bundle itself, or a 307 to where it was put."""
    if exported.body is None:
        if exported.redirect_url is None:
            raise RuntimeError("an exported bundle has neither a body nor a redirect URL")
        redirect = ExportRedirectOut(
            url=exported.redirect_url, expires_at=exported.expires_at, size_bytes=exported.size_bytes
        )
        return Response(
            status_code=307,
            content_type=JSON,
            body=redirect.model_dump(mode="json"),
            headers={"Location": exported.redirect_url},
        )
    headers = {
        "Content-Disposition": content_disposition(exported.filename),
        "X-Heimdall-Onnx-Sha256": exported.onnx_sha256,
        "X-Heimdall-Bundle-Id": exported.bundle_id,
        "X-Heimdall-Components": ",".join(exported.components),
    }
    # A bundle is JSON text (exports are never compressed): sent as text it fits Lambda's 6 MB response,
    # where base64 would add a third.
    text = exported.body.decode("utf-8")
    return Response(status_code=200, content_type=JSON, body=text, headers=headers)
