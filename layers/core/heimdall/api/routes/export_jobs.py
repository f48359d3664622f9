"""Routes: export jobs — create (from a model or a checkpoint), get, list per model, set default,
cancel, and presigned downloads of what a job built."""

from __future__ import annotations

from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Header, Query

from heimdall.api.auth import current_caller
from heimdall.api.bodies import json_model, raw_body, require_media_type
from heimdall.api.deps import api_deps
from heimdall.api.documented import documented, json_request_body
from heimdall.api.params import Cursor, Limit, path_id
from heimdall.api.responses import JSON
from heimdall.api.schemas import CreateExportJobRequest, ExportJobOut, ExportJobPage
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.domain.storage import Download
from heimdall.logic import export_jobs as logic

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated

TAGS = ["export jobs"]
MAX_IDEMPOTENCY_KEY_CHARS = 256


@router.post(
    "/api/v1/export/jobs",
    summary="Create an export job",
    description=(
        "Convert a model's checkpoint again (model_id) or a checkpoint in the ingest bucket "
        "(checkpoint_uri, under checkpoints/; its manifest is manifest_uri, else the sidecar "
        "heimdall.json, else the one the safetensors file embeds). With an Idempotency-Key a repeat "
        "returns the same job; the key sent again with another request is 422 IDEMPOTENCY_KEY_REUSED."
    ),
    tags=TAGS,
    status_code=202,
    responses=documented(202, "The job, submitted", ExportJobOut, errors=(400, 404, 409, 413, 415)),
    openapi_extensions={"requestBody": json_request_body(CreateExportJobRequest, "What to convert.")},
)
def create_export_job(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="Makes the request safe to repeat: the same key and request give the same job; "
            "the key with another request is 422 IDEMPOTENCY_KEY_REUSED.",
        ),
    ] = None,
) -> ExportJobOut:
    """Create and submit an export job owned by the caller."""
    deps = api_deps()
    require_media_type(router.current_event, (JSON,))
    request = json_model(
        raw_body(router.current_event, max_bytes=deps.api.max_inline_bytes), CreateExportJobRequest
    )
    job = logic.create_export_job(
        deps,
        current_caller(router).sub,
        model_id=request.model_id,
        checkpoint_uri=request.checkpoint_uri,
        manifest_uri=request.manifest_uri,
        formats=request.formats,
        idempotency_key=idempotency_key,
    )
    return ExportJobOut.of(job)


@router.get(
    "/api/v1/export/jobs/<job_id>",
    summary="Get an export job",
    tags=TAGS,
    responses=documented(200, "The job", ExportJobOut, errors=(404,)),
)
def get_export_job(job_id: str) -> ExportJobOut:
    """One of the caller's export jobs."""
    job_id = path_id(job_id, what="export job", field="job_id")
    return ExportJobOut.of(logic.get_export_job(api_deps(), current_caller(router).sub, job_id))


@router.get(
    "/api/v1/models/<model_id>/exports",
    summary="List a model's export jobs",
    description="The jobs of the model's name and version, newest first.",
    tags=TAGS,
    responses=documented(200, "A page of export jobs", ExportJobPage, errors=(400, 404)),
)
def list_model_exports(
    model_id: str, limit: Limit = DEFAULT_PAGE_SIZE, cursor: Cursor = None
) -> ExportJobPage:
    """A page of the export jobs of one of the caller's models."""
    model_id = path_id(model_id, what="model", field="model_id")
    page = logic.list_model_exports(
        api_deps(), current_caller(router).sub, model_id, limit=limit, cursor=cursor
    )
    return ExportJobPage(items=[ExportJobOut.of(j) for j in page.items], next_cursor=page.cursor)


@router.post(
    "/api/v1/export/jobs/<job_id>/set-default",
    summary="Make a succeeded job the default export of its model version",
    tags=TAGS,
    responses=documented(200, "The job, now the default", ExportJobOut, errors=(404, 409)),
)
def set_default_export(job_id: str) -> ExportJobOut:
    """Make the job the default export of its (model name, version); 409 NOT_READY unless it succeeded."""
    job_id = path_id(job_id, what="export job", field="job_id")
    return ExportJobOut.of(logic.set_default_export(api_deps(), current_caller(router).sub, job_id))


@router.delete(
    "/api/v1/export/jobs/<job_id>",
    summary="Cancel an export job",
    tags=TAGS,
    responses=documented(200, "The job, cancelled", ExportJobOut, errors=(404, 409)),
)
def cancel_export_job(job_id: str) -> ExportJobOut:
    """Cancel the job and stop its run; 409 INVALID_TRANSITION when it already ended."""
    job_id = path_id(job_id, what="export job", field="job_id")
    caller = current_caller(router)
    return ExportJobOut.of(logic.cancel_export_job(api_deps(), caller.sub, job_id, cancelled_by=caller.sub))


@router.get(
    "/api/v1/export/jobs/<job_id>/download",
    summary="Download what a job built",
    description="A presigned GET of the job's package (or its bundle), valid for minutes.",
    tags=TAGS,
    responses=documented(200, "Where to download the file", Download, errors=(404, 409)),
)
def download_export(
    job_id: str,
    file: Annotated[
        Literal["package", "bundle"],
        Query(description="package: the deployable archive; bundle: the .heimdall"),
    ] = "package",
) -> Download:
    """A presigned URL of a succeeded job's package or bundle; 409 NOT_READY otherwise."""
    job_id = path_id(job_id, what="export job", field="job_id")
    return logic.download_export(api_deps(), current_caller(router).sub, job_id, file=file)
