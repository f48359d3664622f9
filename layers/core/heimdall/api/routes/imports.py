"""Routes: importing bundles (inline, or by a presigned upload) and following an import."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from heimdall.api.auth import current_caller
from heimdall.api.bodies import MULTIPART, json_model, multipart_file, raw_body, require_media_type
from heimdall.api.deps import api_deps
from heimdall.api.documented import documented
from heimdall.api.params import path_id
from heimdall.api.responses import JSON
from heimdall.api.schemas import (
    SCHEMAS,
    ImportedOut,
    ImportOut,
    ImportStartedOut,
    LegacyImportedOut,
    ModelOut,
    PresignedImportRequest,
    PresignedUploadOut,
)
from heimdall.bundle.models import Component
from heimdall.errors import RequestInvalid
from heimdall.logic import imports as logic

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated

TAGS = ["imports"]
IMPORT_PATH = "/api/v1/models/import"
#: What existing Heimdall clients call: the same operation.
LEGACY_IMPORT_PATH = "/api/v1/training/models/import"
COMPONENTS = tuple(c.value for c in Component)
_BINARY = {"type": "string", "format": "binary"}
#: What an inline import's body may be (none: told by its bytes); a presigned import's is JSON.
_INLINE_TYPES = (JSON, "application/gzip", "application/octet-stream", MULTIPART)
#: Powertools cannot declare a body that is JSON or binary or multipart: the route reads it itself.
_IMPORT_BODY = {
    "required": True,
    "description": (
        "mode=inline (default): the bundle, as the body (application/json; a gzip bundle as "
        "application/gzip or application/octet-stream) or as the multipart/form-data field `file`. "
        "mode=presigned: {size_bytes, filename?} as application/json."
    ),
    "content": {
        JSON: {
            "schema": {
                "anyOf": [
                    {"type": "object", "description": "A .heimdall bundle (mode=inline)."},
                    {"$ref": SCHEMAS + PresignedImportRequest.__name__},
                ]
            }
        },
        "application/gzip": {"schema": _BINARY},
        "application/octet-stream": {"schema": _BINARY},
        MULTIPART: {
            "schema": {
                "type": "object",
                "properties": {"file": {**_BINARY, "description": "The bundle (plain or gzip)."}},
                "required": ["file"],
            },
        },
    },
}

_IMPORT_DESCRIPTION = (
    "The body is the bundle itself (Content-Type application/json, or application/gzip / "
    "application/octet-stream for a gzip bundle: detected by its bytes) or a multipart/form-data "
    "upload with the field `file` (`curl -F file=@model.heimdall`), at most the inline limit. "
    "With ?mode=presigned the body is {size_bytes, filename?} and the answer a presigned S3 POST; "
    "the upload is then indexed asynchronously (follow GET /api/v1/imports/{import_id})."
)


def _import_doc(imported: type[ImportedOut], description: str) -> dict[str, Any]:
    return {
        "tags": TAGS,
        "openapi_extensions": {"requestBody": _IMPORT_BODY},
        "description": description,
        "responses": {
            **documented(201, "Imported and indexed", imported, errors=(400, 413, 415)),
            **documented(202, "Presigned upload started (mode=presigned)", ImportStartedOut),
        },
    }


Components = Annotated[
    str | None,
    Query(
        max_length=256,
        description=f"Comma-separated optional components to keep ({', '.join(COMPONENTS)}); absent: all.",
    ),
]
Mode = Annotated[
    Literal["inline", "presigned"],
    Query(
        description="inline: the body is the bundle; presigned: "
        "the body is {size_bytes, filename?} and the answer a presigned upload."
    ),
]


@router.post(IMPORT_PATH, summary="Import a bundle", **_import_doc(ImportedOut, _IMPORT_DESCRIPTION))
def import_bundle(
    components: Components = None, mode: Mode = "inline"
) -> Response[ImportedOut | ImportStartedOut]:
    """Import a bundle sent in the request, or start a presigned upload of a large one."""
    return _import_bundle(components, mode, legacy=False)


@router.post(
    LEGACY_IMPORT_PATH,
    summary="Import a bundle (existing clients' path)",
    **_import_doc(
        LegacyImportedOut,
        _IMPORT_DESCRIPTION + " An inline import's answer also holds, at its top, what the original "
        "Heimdall answered and its clients read: model_id, message and onnx_path.",
    ),
)
def import_bundle_legacy(
    components: Components = None, mode: Mode = "inline"
) -> Response[LegacyImportedOut | ImportStartedOut]:
    """The same import, answered as the original Heimdall's clients expect (``.model_id`` on top)."""
    return _import_bundle(components, mode, legacy=True)


def _import_bundle(components: str | None, mode: str, *, legacy: bool) -> Response[Any]:
    owner = current_caller(router).sub
    deps = api_deps()
    selection = parse_components(components)
    event = router.current_event
    found = require_media_type(event, (JSON,) if mode == "presigned" else _INLINE_TYPES)
    data = raw_body(
        event, max_bytes=deps.api.max_inline_bytes, hint="; upload larger bundles with ?mode=presigned"
    )

    if mode == "presigned":
        request = json_model(data, PresignedImportRequest)
        record, upload = logic.start_presigned_import(
            deps, owner, size_bytes=request.size_bytes, filename=request.filename, components=selection
        )
        started = ImportStartedOut(
            import_=ImportOut.of(record),
            upload=PresignedUploadOut(
                url=upload.url, fields=upload.fields, max_bytes=upload.max_bytes, expires_at=upload.expires_at
            ),
        )
        return Response(status_code=202, content_type=JSON, body=started)

    if found == MULTIPART:
        data = multipart_file(data, event.headers.get("content-type") or "")
    if not data:
        raise RequestInvalid(
            "the request has no bundle: send it as the body, or as the multipart field 'file'", field="body"
        )
    result = logic.import_inline(deps, owner, data, components=selection)
    imported = ImportedOut(
        import_=ImportOut.of(result.record),
        model=ModelOut.of(result.model) if result.model is not None else None,
    )
    if legacy:
        model = result.model
        imported = LegacyImportedOut(
            **dict(imported),
            model_id=None if model is None else model.model_id,
            onnx_path=None if model is None else model.onnx_key,
        )
    return Response(status_code=201, content_type=JSON, body=imported)


@router.get(
    "/api/v1/imports/<import_id>",
    summary="Follow an import",
    tags=TAGS,
    responses=documented(200, "The import", ImportOut, errors=(404,)),
)
def get_import(import_id: str) -> ImportOut:
    """One of the caller's imports."""
    import_id = path_id(import_id, what="import", field="import_id")
    return ImportOut.of(logic.get_import(api_deps(), current_caller(router).sub, import_id))


def parse_components(value: str | None) -> list[str] | None:
    """The ``components`` parameter as a list (None: all); unknown names are a 422 naming the known ones."""
    if value is None:
        return None
    chosen = [part.strip() for part in value.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(COMPONENTS))
    if unknown:
        raise RequestInvalid(
            f"unknown component(s) {', '.join(repr(u[:64]) for u in unknown[:5])}; "
            f"known: {', '.join(COMPONENTS)}",
            field="components",
            known=list(COMPONENTS),
        )
    return list(dict.fromkeys(chosen))
