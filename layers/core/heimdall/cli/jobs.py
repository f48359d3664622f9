"""``heimdall jobs ...``: export jobs on the API, from creation to the download of what they made.

``create`` starts a job from a model or from a checkpoint in S3 (``--wait`` follows it to its end,
each status on stderr, and exits 1 unless it succeeded); ``get``, ``list``, ``cancel`` and
``set-default`` show or change one; ``download`` fetches a succeeded job's package or bundle through
its presigned URL, checking its sha256. Each takes the API options of :mod:`heimdall.cli.options`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Annotated

import typer
from rich.text import Text

from heimdall.cli.api_client import ApiClient
from heimdall.cli.api_common import Json
from heimdall.cli.api_job_routes import job_failure
from heimdall.cli.api_session import DEFAULT_API_URL
from heimdall.cli.options import (
    AllPages,
    ApiUrl,
    AsJson,
    Cursor,
    Limit,
    Output,
    Token,
    check_folder,
    collect_pages,
    connect,
    split_choices,
)
from heimdall.cli.render import (
    details_table,
    err_console,
    human_size,
    out_console,
    print_json,
    show_listing,
    status_text,
    transfer_progress,
    when_text,
)
from heimdall.domain.job_states import TERMINAL
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.domain.records import JobStatus
from heimdall.types import ExportFormat

jobs_app = typer.Typer(
    name="jobs",
    help=(
        "Export jobs on the API: create, follow, list, cancel, choose the default, download.\n\n"
        "Exit codes: 0 success, 1 a failed operation (error code and message on stderr), 2 usage error."
    ),
    no_args_is_help=True,
)
JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The export job.")]


class JobFile(enum.StrEnum):
    """What ``jobs download`` fetches."""

    PACKAGE = "package"
    BUNDLE = "bundle"


@jobs_app.command("create")
def job_create(
    *,
    model_id: Annotated[
        str | None,
        typer.Option(
            "--model-id",
            help="Convert again from this model's checkpoint (an imported model: from its bundle).",
        ),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint", metavar="S3_URI", help="Convert this checkpoint (s3://INGEST/checkpoints/…)."
        ),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option("--manifest", metavar="S3_URI", help="The manifest (default: heimdall.json beside it)."),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option("--formats", metavar="A,B", help=f"Comma-separated: {','.join(ExportFormat)}."),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Repeat-safe: the same key gives the same job.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job is finished.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait with --wait.")] = 3600.0,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Start an export job from a model (--model-id) or a checkpoint in S3 (--checkpoint)."""
    if (model_id is None) == (checkpoint is None):
        raise typer.BadParameter("give exactly one of --model-id and --checkpoint", param_hint="--model-id")
    if manifest is not None and checkpoint is None:
        raise typer.BadParameter("--manifest goes with --checkpoint", param_hint="--manifest")
    for option, uri in (("--checkpoint", checkpoint), ("--manifest", manifest)):
        if uri is not None and not uri.startswith("s3://"):
            raise typer.BadParameter(f"expected an s3:// URI, got {uri!r}", param_hint=option)
    chosen = split_choices(formats, [f.value for f in ExportFormat], "--formats")
    with connect(api, token) as client:
        job = client.create_export_job(
            model_id=model_id,
            checkpoint_uri=checkpoint,
            manifest_uri=manifest,
            formats=chosen,
            idempotency_key=idempotency_key,
        )
        if wait and job.get("status") not in TERMINAL:
            job = _wait(client, job, timeout)
    _show_job(job, as_json)
    if wait and job.get("status") != JobStatus.SUCCEEDED:
        raise job_failure(job)


@jobs_app.command("get")
def job_get(
    job_id: JobId, *, api: ApiUrl = DEFAULT_API_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """Show an export job: status, formats, outcome."""
    _job_action(api, token, as_json, lambda client: client.get_export_job(job_id))


@jobs_app.command("list")
def job_list(
    model_id: Annotated[str, typer.Argument(metavar="MODEL_ID", help="The model whose export jobs to list.")],
    *,
    limit: Limit = DEFAULT_PAGE_SIZE,
    all_pages: AllPages = False,
    cursor: Cursor = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List the export jobs of a model (its name and version)."""
    with connect(api, token) as client:
        items, next_cursor = collect_pages(
            lambda c: client.list_model_exports(model_id, limit=limit, cursor=c), cursor, all_pages
        )
    show_listing(
        f"export jobs of {model_id} ({len(items)})",
        ("Job ID", "Status", "Formats", "Default", "Created", "Reason"),
        [
            (
                str(job.get("job_id")),
                status_text(job.get("status")),
                ", ".join(job.get("formats") or []),
                "✓" if job.get("is_default") else "",
                when_text(job.get("created_at")),
                str(job.get("reason") or ""),
            )
            for job in items
        ],
        next_cursor,
        as_json=as_json,
        items=items,
    )


@jobs_app.command("cancel")
def job_cancel(
    job_id: JobId, *, api: ApiUrl = DEFAULT_API_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """Cancel an export job that has not finished (the runner is asked to stop it)."""
    _job_action(api, token, as_json, lambda client: client.cancel_export_job(job_id))


@jobs_app.command("set-default")
def job_set_default(
    job_id: JobId, *, api: ApiUrl = DEFAULT_API_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """Make a succeeded job the default export of its model name and version."""
    _job_action(api, token, as_json, lambda client: client.set_default_export(job_id))


@jobs_app.command("download")
def job_download(
    job_id: JobId,
    *,
    output: Output,
    file: Annotated[
        JobFile, typer.Option("--file", help="The deployment package or the bundle.")
    ] = JobFile.PACKAGE,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Download a succeeded job's package (or bundle) through its presigned URL, checking its sha256."""
    check_folder(output)
    with connect(api, token) as client, transfer_progress(f"downloading {file.value}") as progress:
        downloaded = client.download_export(job_id, output, file=file.value, progress=progress)
    summary = {
        "job_id": job_id,
        "file": file.value,
        "output": str(downloaded.path),
        "size_bytes": downloaded.size_bytes,
        "sha256": downloaded.sha256,
        "sha256_checked": downloaded.link.get("sha256") is not None,
        "key": downloaded.link.get("key"),
    }
    if as_json:
        print_json(summary)
        return
    out_console.print(
        details_table(
            f"downloaded the {file.value} of job {job_id}",
            [
                ("output", str(downloaded.path)),
                ("size", human_size(downloaded.size_bytes)),
                ("sha256", downloaded.sha256 + (" (matches the API's)" if summary["sha256_checked"] else "")),
            ],
        )
    )


def _job_action(api: str, token: str | None, as_json: bool, call: Callable[[ApiClient], Json]) -> None:
    """Make one call that answers with a job, and show that job."""
    with connect(api, token) as client:
        _show_job(call(client), as_json)


def _wait(client: ApiClient, job: Json, timeout: float) -> Json:
    """Follow a job to its end, printing each status it reaches on stderr."""

    def on_status(current: Json) -> None:
        err_console.print(Text.assemble(f"job {current.get('job_id')}: ", status_text(current.get("status"))))

    return client.wait_for_job(str(job["job_id"]), timeout_s=timeout, on_status=on_status)


def _show_job(job: Json, as_json: bool) -> None:
    if as_json:
        print_json(job)
        return
    result = job.get("result") if isinstance(job.get("result"), dict) else None
    rows: list[tuple[str, str | Text]] = [
        ("job id", str(job.get("job_id"))),
        ("model", f"{job.get('model_name')} {job.get('version')}"),
        ("status", status_text(job.get("status"))),
        ("formats", ", ".join(job.get("formats") or []) or "–"),
        ("default", "yes" if job.get("is_default") else "no"),
        ("checkpoint", str(job.get("checkpoint_uri") or "–")),
        ("manifest", str(job.get("manifest_uri") or "–")),
        ("model id", str(job.get("model_id") or "–")),
        ("created", when_text(job.get("created_at"))),
        ("updated", when_text(job.get("updated_at"))),
    ]
    if job.get("reason"):
        rows.append(("reason", str(job["reason"])))
    if job.get("exit_code") is not None:
        rows.append(("exit code", str(job["exit_code"])))
    if result:
        for outcome in result.get("formats") or []:
            size = outcome.get("size_bytes")
            detail = human_size(size) if isinstance(size, int) else outcome.get("reason") or ""
            rows.append((f"format {outcome.get('format')}", f"{outcome.get('status')} {detail}".rstrip()))
        for label in ("package_file", "bundle_file"):
            if result.get(label):
                rows.append((label.replace("_", " "), str(result[label])))
    out_console.print(details_table(f"export job {job.get('job_id')}", rows))
