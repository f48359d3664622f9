"""Routes: checkpoint uploads — the pairs dropped under ``checkpoints/`` and whether a half still waits."""

from __future__ import annotations

from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from heimdall.api.auth import current_caller
from heimdall.api.deps import api_deps
from heimdall.api.documented import documented
from heimdall.api.params import Cursor, Limit, path_id
from heimdall.api.schemas import UploadOut, UploadPage
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.domain.records import PendingUpload, UploadStatus
from heimdall.logic import uploads as logic
from heimdall.logic.api import ApiDeps

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated

TAGS = ["uploads"]


@router.get(
    "/api/v1/uploads",
    summary="List checkpoint uploads",
    description=(
        "The checkpoint/manifest pairs dropped under checkpoints/{model_name}/{version}/ in the ingest "
        "bucket: AWAITING while one half waits for the other (rejected with INCOMPLETE_UPLOAD at "
        "reject_after), PAIRED once the other half came and the job started, REJECTED after the "
        "timeout. Newest first; ?status=awaiting lists the halves still waiting."
    ),
    tags=TAGS,
    responses=documented(200, "A page of uploads", UploadPage, errors=(400,)),
)
def list_uploads(
    status: Annotated[
        Literal["awaiting", "paired", "rejected"] | None,
        Query(description="Only the uploads in this state."),
    ] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> UploadPage:
    """A page of the caller's checkpoint uploads."""
    deps = api_deps()
    chosen = UploadStatus(status.upper()) if status is not None else None
    page = logic.list_uploads(deps, current_caller(router).sub, status=chosen, limit=limit, cursor=cursor)
    return UploadPage(items=[_out(record, deps) for record in page.items], next_cursor=page.cursor)


@router.get(
    "/api/v1/uploads/<upload_id>",
    summary="Get a checkpoint upload",
    tags=TAGS,
    responses=documented(200, "The upload", UploadOut, errors=(404,)),
)
def get_upload(upload_id: str) -> UploadOut:
    """One of the caller's checkpoint uploads."""
    upload_id = path_id(upload_id, what="upload", field="upload_id")
    deps = api_deps()
    return _out(logic.get_upload(deps, current_caller(router).sub, upload_id), deps)


def _out(record: PendingUpload, deps: ApiDeps) -> UploadOut:
    return UploadOut.of(
        record, reject_after=logic.reject_after(record, deps), artifacts_bucket=deps.names.artifacts_bucket
    )
