"""The commands that drive the HTTP API: ``heimdall list|export|import``, ``heimdall jobs ...`` and
``heimdall uploads ...``.

Each command opens an :class:`~heimdall.cli.api_client.ApiClient` from ``--api`` and ``--token``,
makes its calls and renders the answer as rich tables, or with ``--json`` as one JSON document on
stdout and nothing else there (progress bars and notes go to stderr). Every option has the same
defaults everywhere:

* ``--api``: ``HEIMDALL_API_URL``, else the local stack (``http://127.0.0.1:3000``);
* ``--token``: ``HEIMDALL_API_TOKEN``, else ``.heimdall-local/api-token`` in the current folder (what
  ``heimdall local up`` writes), else none (the API then answers 401).

Errors are the client's typed errors, printed by the top-level group (:mod:`heimdall.cli`) as
``error CODE: message`` with exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from heimdall.bundle.models import Component
from heimdall.cli.api_client import (
    API_TOKEN_VARIABLE,
    API_URL_VARIABLE,
    DEFAULT_API_URL,
    INLINE_MAX_BYTES,
    LOCAL_TOKEN_FILE,
    ApiClient,
    ImportMode,
    Json,
    ProgressCallback,
    follow_pages,
    job_failure,
    resolve_token,
)
from heimdall.cli.options import Description, NoConfig, NoMetrics, NoNormalization, NoSamples, NumSamples
from heimdall.domain.job_states import TERMINAL
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from heimdall.domain.records import JobStatus
from heimdall.errors import ConfigurationError
from heimdall.settings import MIB
from heimdall.types import ExportFormat

out_console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
_STATUS_STYLE = {
    "SUCCEEDED": "green",
    "INDEXED": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "CANCELLED": "yellow",
    "PAIRED": "green",
    "AWAITING": "yellow",
}

# --- options every command takes -------------------------------------------------------------------

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api",
        envvar=API_URL_VARIABLE,
        metavar="URL",
        help="Base URL of the Heimdall API (default: the local stack).",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=API_TOKEN_VARIABLE,
        help=f"Bearer token (default: {LOCAL_TOKEN_FILE} in this folder, written by `heimdall local up`).",
        show_default=False,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout (and nothing else).")
]
Limit = Annotated[
    int, typer.Option("--limit", min=1, max=MAX_PAGE_SIZE, help=f"Items per page (1-{MAX_PAGE_SIZE}).")
]
AllPages = Annotated[bool, typer.Option("--all", help="Follow the cursors and show every item.")]
Cursor = Annotated[str | None, typer.Option("--cursor", help="Start at this cursor (a page's next_cursor).")]
Output = Annotated[
    Path, typer.Option("--output", "-o", dir_okay=False, metavar="FILE", help="The file to write.")
]


@contextmanager
def connect(api: str, token: str | None) -> Iterator[ApiClient]:
    """The client for ``--api`` with the resolved token; a malformed URL is a usage error (exit 2)."""
    try:
        client = ApiClient(api, resolve_token(token))
    except ConfigurationError as exc:
        raise typer.BadParameter(exc.message, param_hint="--api") from None
    with client:
        yield client


# --- heimdall list ---------------------------------------------------------------------------------


def models_list(
    *,
    name: Annotated[str | None, typer.Option("--name", help="Only the models of this name.")] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    all_pages: AllPages = False,
    cursor: Cursor = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List your models: ID, name, version, accuracy / val loss, created."""
    with connect(api, token) as client:
        items, next_cursor = collect_pages(
            lambda c: client.list_models(limit=limit, cursor=c, name=name), cursor, all_pages
        )
    show_listing(
        f"models ({len(items)})",
        ("ID", "Model", "Version", "Accuracy / val loss", "Created"),
        [
            (
                str(model.get("model_id")),
                str(model.get("display_name") or model.get("model_name")),
                str(model.get("version")),
                _metrics_text(model.get("metrics") or {}),
                when_text(model.get("created_at")),
            )
            for model in items
        ],
        next_cursor,
        as_json=as_json,
        items=items,
    )


# --- heimdall export -------------------------------------------------------------------------------


def model_export(
    model_id: Annotated[str, typer.Argument(metavar="MODEL_ID", help="The model to export.")],
    *,
    output: Output,
    no_config: NoConfig = False,
    no_metrics: NoMetrics = False,
    no_normalization: NoNormalization = False,
    no_samples: NoSamples = False,
    num_samples: NumSamples = None,
    description: Description = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Export a model as a .heimdall bundle, with the optional components you choose.

    The file is read back and its ONNX sha256 checked against the API's before it is written.
    """
    check_folder(output)
    with connect(api, token) as client, transfer_progress(f"exporting {model_id}") as progress:
        exported = client.export_model(
            model_id,
            output,
            include_config=not no_config,
            include_metrics=not no_metrics,
            include_normalization=not no_normalization,
            include_samples=not no_samples,
            num_samples=num_samples,
            description=description,
            progress=progress,
        )
    bundle = exported.read.bundle
    samples = len(bundle.sample_predictions or [])
    summary = {
        "bundle_id": bundle.bundle_metadata.bundle_id,
        "model_id": model_id,
        "model_name": bundle.model.model_name,
        "version": bundle.model.version,
        "output": str(exported.path),
        "size_bytes": exported.size_bytes,
        "compressed": exported.read.compressed,
        "components": bundle.components(),
        "sample_count": samples,
        "onnx_sha256": exported.read.onnx_sha256,
        "onnx_sha256_checked": exported.declared_onnx_sha256 is not None,
        "redirected": exported.redirected,
    }
    if as_json:
        print_json(summary)
        return
    components = [f"{c} ({samples})" if c == Component.SAMPLE_PREDICTIONS else c for c in bundle.components()]
    checked = "matches the API's" if exported.declared_onnx_sha256 else "the API sent none to compare"
    out_console.print(
        details_table(
            f"exported {model_id}",
            [
                ("bundle id", bundle.bundle_metadata.bundle_id),
                ("model", f"{bundle.model.model_name} {bundle.model.version}"),
                ("output", str(exported.path)),
                ("size", human_size(exported.size_bytes) + (" (gzip)" if exported.read.compressed else "")),
                ("components", ", ".join(components) or "none (model only)"),
                ("onnx sha256", f"{exported.read.onnx_sha256} ({checked})"),
            ],
        )
    )


# --- heimdall import -------------------------------------------------------------------------------


def model_import(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, metavar="FILE", help="A .heimdall bundle (gzip too)."
        ),
    ],
    *,
    components: Annotated[
        str | None,
        typer.Option(
            "--components",
            metavar="A,B",
            help="Optional components to keep, comma-separated: "
            + ",".join(c.value for c in Component)
            + " (default: all; empty: the model only).",
        ),
    ] = None,
    presigned: Annotated[
        bool | None,
        typer.Option(
            "--presigned/--inline",
            help=f"Upload through a presigned URL, or in the request body (default: by size, presigned "
            f"above {INLINE_MAX_BYTES // MIB} MiB).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for a presigned import to be indexed.")
    ] = 600.0,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Import a bundle into the registry as a new model; prints the new model id."""
    chosen = _split(components, [c.value for c in Component], "--components")
    mode: ImportMode = "auto" if presigned is None else "presigned" if presigned else "inline"

    def uploaded(record: Json) -> None:
        err_console.print(f"uploaded; waiting for import {record.get('import_id')} to be indexed…")

    with connect(api, token) as client, transfer_progress(f"uploading {file.name}") as progress:
        outcome = client.import_bundle(
            file, components=chosen, mode=mode, timeout_s=timeout, progress=progress, on_uploaded=uploaded
        )
    if as_json:
        print_json({"mode": outcome.mode, "import": outcome.record, "model": outcome.model})
        return
    model = outcome.model
    out_console.print(
        details_table(
            f"imported as model {model.get('model_id')}",
            [
                ("model id", str(model.get("model_id"))),
                ("model", f"{model.get('display_name') or model.get('model_name')} {model.get('version')}"),
                ("original id", str(model.get("original_model_id") or "–")),
                ("components", ", ".join(model.get("components") or []) or "none (model only)"),
                ("onnx sha256", str(model.get("onnx_sha256") or "–")),
                ("import", f"{outcome.record.get('import_id')} ({outcome.mode})"),
            ],
        )
    )


# --- heimdall jobs ---------------------------------------------------------------------------------

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
    chosen = _split(formats, [f.value for f in ExportFormat], "--formats")
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
                _status(job.get("status")),
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
        err_console.print(Text.assemble(f"job {current.get('job_id')}: ", _status(current.get("status"))))

    return client.wait_for_job(str(job["job_id"]), timeout_s=timeout, on_status=on_status)


def _show_job(job: Json, as_json: bool) -> None:
    if as_json:
        print_json(job)
        return
    result = job.get("result") if isinstance(job.get("result"), dict) else None
    rows: list[tuple[str, str | Text]] = [
        ("job id", str(job.get("job_id"))),
        ("model", f"{job.get('model_name')} {job.get('version')}"),
        ("status", _status(job.get("status"))),
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


# --- heimdall uploads ------------------------------------------------------------------------------

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
                _status(upload.get("status")),
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
        ("status", _status(upload.get("status"))),
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


# --- rendering helpers -----------------------------------------------------------------------------


def collect_pages(
    fetch: Callable[[str | None], Json], cursor: str | None, all_pages: bool
) -> tuple[list[Json], Any]:
    """The items of one page, or of every page from ``cursor`` on; and the cursor still to follow."""
    items: list[Json] = []
    page: Json = {}
    for page in follow_pages(fetch, cursor):
        items.extend(page.get("items") or [])
        if not all_pages:
            break
    return items, page.get("next_cursor")


def show_listing(
    title: str,
    columns: tuple[str, ...],
    rows: list[tuple[str | Text, ...]],
    next_cursor: Any,
    *,
    as_json: bool,
    items: list[Json],
) -> None:
    """A listing as a table (and how to get more on stderr), or as ``{"items", "next_cursor"}``."""
    if as_json:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for index, column in enumerate(columns):
        # Ids (the first column, copied into the next command) and times stay on one line.
        table.add_column(column, overflow="fold", no_wrap=index == 0 or column == "Created")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    out_console.print(table)
    if next_cursor:
        err_console.print(f"more: rerun with --all, or with --cursor {next_cursor}", soft_wrap=True)


def details_table(title: str, rows: list[tuple[str, str | Text]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for label, value in rows:
        table.add_row(label, value if isinstance(value, Text) else Text(value))
    return table


def _status(value: Any) -> Text:
    return Text(str(value), style=_STATUS_STYLE.get(str(value), "cyan"))


def _metrics_text(metrics: Json) -> Text:
    accuracy, loss = metrics.get("final_val_accuracy"), metrics.get("final_val_loss")
    if accuracy is None:
        accuracy = metrics.get("final_train_accuracy")
    # Accuracy is a fraction in bundles (0.93); anything above 1 was already a percentage.
    shown = "–" if accuracy is None else f"{accuracy:.1%}" if 0 <= accuracy <= 1 else f"{accuracy:.4g}"
    return Text(f"{shown} / {'–' if loss is None else f'{loss:.4g}'}")


def when_text(value: Any) -> Text:
    """An ISO-8601 time as ``YYYY-MM-DD HH:MM`` UTC (or as it came, when it does not parse)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return Text(str(value or "–"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return Text(moment.strftime("%Y-%m-%d %H:%M"))


def human_size(n: int) -> str:
    return f"{decimal(n)} ({n:,} bytes)"


def _split(value: str | None, allowed: list[str], option: str) -> list[str] | None:
    """A comma-separated option as a list of known names (``None`` when the option was not given)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        known = ",".join(allowed)
        raise typer.BadParameter(f"unknown: {', '.join(unknown)}; choose from {known}", param_hint=option)
    return names


def check_folder(output: Path) -> None:
    if not output.parent.is_dir():
        raise typer.BadParameter(f"the folder {output.parent} does not exist", param_hint="--output")


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def transfer_progress(description: str) -> Iterator[ProgressCallback]:
    """A progress bar on stderr (when it is a terminal) and the callback that moves it."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
