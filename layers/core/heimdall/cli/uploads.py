"""``heimdall uploads ...``: the checkpoint uploads the ingest bucket has seen, and what became of them.

A checkpoint and its manifest arrive as two objects; the half that comes first waits (AWAITING) for
the other until they pair (PAIRED: the export job starts) or the timeout rejects it (REJECTED,
INCOMPLETE_UPLOAD). ``list`` and ``get`` show them; each takes the API options of
:mod:`heimdall.cli.options`.
"""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from rich.text import Text

from heimdall.cli.api_common import Json
from heimdall.cli.api_session import DEFAULT_API_URL
from heimdall.cli.options import AllPages, ApiUrl, AsJson, Cursor, Limit, Token, collect_pages, connect
from heimdall.cli.render import details_table, out_console, print_json, show_listing, status_text, when_text
from heimdall.domain.paging import DEFAULT_PAGE_SIZE

uploads_app = typer.Typer(
    name="uploads",
    help=(
        "Checkpoint uploads: the checkpoint/manifest pairs dropped under checkpoints/{model_name}/{version}/ "
        "in the ingest bucket. A half that waits for the other is AWAITING until it pairs (the export job "
        "starts) or the timeout rejects it (INCOMPLETE_UPLOAD).\n\n"
        "Exit codes: 0 success, 1 a failed operation (error code and message on stderr), 2 usage error."
    ),
    no_args_is_help=True,
)


class UploadState(enum.StrEnum):
    """What ``uploads list --status`` narrows to."""

    AWAITING = "awaiting"
    PAIRED = "paired"
    REJECTED = "rejected"


@uploads_app.command("list")
def uploads_list(
    *,
    status: Annotated[
        UploadState | None, typer.Option("--status", help="Only the uploads in this state.")
    ] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    all_pages: AllPages = False,
    cursor: Cursor = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List your checkpoint uploads: which half arrived, what it waits for, until when, what became of it."""
    chosen = status.value if status is not None else None
    with connect(api, token) as client:
        items, next_cursor = collect_pages(
            lambda c: client.list_uploads(status=chosen, limit=limit, cursor=c), cursor, all_pages
        )
    show_listing(
        f"uploads ({len(items)})",
        ("Upload ID", "Status", "Model", "Version", "Arrived", "Waits for", "Created", "Outcome"),
        [
            (
                str(upload.get("upload_id")),
                status_text(upload.get("status")),
                str(upload.get("model_name")),
                str(upload.get("version")),
                str(upload.get("half")),
                str(upload.get("missing")),
                when_text(upload.get("created_at")),
                _upload_outcome(upload),
            )
            for upload in items
        ],
        next_cursor,
        as_json=as_json,
        items=items,
    )


@uploads_app.command("get")
def upload_get(
    upload_id: Annotated[str, typer.Argument(metavar="UPLOAD_ID", help="The upload.")],
    *,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Show one checkpoint upload."""
    with connect(api, token) as client:
        upload = client.get_upload(upload_id)
    if as_json:
        print_json(upload)
        return
    rows: list[tuple[str, str | Text]] = [
        ("upload id", str(upload.get("upload_id"))),
        ("status", status_text(upload.get("status"))),
        ("model", f"{upload.get('model_name')} {upload.get('version')}"),
        ("prefix", str(upload.get("prefix_uri"))),
        (f"{upload.get('half')} (arrived)", str(upload.get("uri"))),
        ("waits for", str(upload.get("missing"))),
        ("created", when_text(upload.get("created_at"))),
        ("updated", when_text(upload.get("updated_at"))),
        ("outcome", _upload_outcome(upload)),
    ]
    for label, field in (
        ("paired with", "paired_uri"),
        ("quarantine", "quarantine_uri"),
        ("reason", "reason"),
    ):
        if upload.get(field):
            rows.append((label, str(upload[field])))
    out_console.print(details_table(f"upload {upload.get('upload_id')}", rows))


def _upload_outcome(upload: Json) -> str:
    if upload.get("status") == "PAIRED":
        return f"job {upload.get('job_id')}"
    if upload.get("status") == "REJECTED":
        return str(upload.get("error_code") or "")
    return f"rejected after {upload.get('reject_after')}"
