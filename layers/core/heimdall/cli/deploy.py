"""``heimdall deploy ...``: put models to work as deployments, and manage them with the API token.

The management commands (``deploy create|get|list|activate|deactivate|delete|history|rotate-key|
download``) use the API token and take ``--api``, ``--token`` and ``--json`` exactly as
``heimdall jobs`` does (:mod:`heimdall.cli.options`). ``deploy usage|health`` and ``heimdall infer``
use a deployment's API key instead; they live in :mod:`heimdall.cli.endpoint`, which registers the two
``deploy`` commands on :data:`deploy_app` after these.

A platform endpoint's API key is printed once, when it is created (``deploy create``) or replaced
(``deploy rotate-key``): the API keeps only its hash. Option combinations that do not go together
(``--precision`` for a platform endpoint, ``-o`` for something with no file) are usage errors (exit 2)
and send nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from heimdall.cli.api_client import ApiClient
from heimdall.cli.api_common import Json
from heimdall.cli.api_session import DEFAULT_API_URL
from heimdall.cli.deployment_views import (
    compact_json,
    deployment_table,
    downloaded_summary,
    downloaded_table,
    show_key,
    state_text,
)
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
)
from heimdall.cli.render import (
    err_console,
    out_console,
    print_json,
    show_listing,
    transfer_progress,
    when_text,
)
from heimdall.domain.deployments import RATE_LIMITS, DeploymentType, EdgePrecision, Tier
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.logic.deployment_requests import DownloadFile

deploy_app = typer.Typer(
    name="deploy",
    help=(
        "Deployments of your models: a download, a platform endpoint (with an API key), an edge package "
        "or a container. Create, list, activate, deactivate, delete, follow their history and usage.\n\n"
        "Exit codes: 0 success, 1 a failed operation (error code and message on stderr), 2 usage error."
    ),
    no_args_is_help=True,
)
DeployId = Annotated[str, typer.Argument(metavar="DEPLOYMENT_ID", help="The deployment.")]


# --- heimdall deploy create ------------------------------------------------------------------------


@deploy_app.command("create")
def deploy_create(
    *,
    model_id: Annotated[
        str | None, typer.Option("--model", metavar="MODEL_ID", help="Deploy this model.")
    ] = None,
    job_id: Annotated[
        str | None,
        typer.Option("--job", metavar="JOB_ID", help="Deploy what this export job produced."),
    ] = None,
    deployment_type: Annotated[
        DeploymentType, typer.Option("--type", help="What the deployment delivers.", show_default=False)
    ],
    name: Annotated[str, typer.Option("--name", help="A name for the deployment.", show_default=False)],
    tier: Annotated[
        Tier | None,
        typer.Option(
            "--tier",
            help="platform_endpoint: requests per minute per key ("
            + ", ".join(f"{tier} {limit}" for tier, limit in RATE_LIMITS.items())
            + ").",
        ),
    ] = None,
    normalize: Annotated[
        bool | None,
        typer.Option(
            "--normalize/--no-normalize",
            help="platform_endpoint: apply the bundle's normalization to inputs (default: no).",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        EdgePrecision | None,
        typer.Option(
            "--precision",
            help="edge_package: the model shipped (default auto); platform_endpoint: the model served "
            "(fp32 default, or the export's fp16 / int8).",
        ),
    ] = None,
    file: Annotated[
        DownloadFile | None,
        typer.Option("--file", help="download: the export package, the bundle, or the ONNX model."),
    ] = None,
    triton_image: Annotated[
        str | None,
        typer.Option("--triton-image", metavar="IMAGE", help="container: the Triton image to build on."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            metavar="FILE",
            help="Download the created artifact to this file (download, edge_package, container).",
        ),
    ] = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Deploy a model (--model) or an export job's output (--job).

    A platform endpoint's API key is printed this once: store it.
    """
    if (model_id is None) == (job_id is None):
        raise typer.BadParameter("give exactly one of --model and --job", param_hint="--model")
    options = _type_options(
        deployment_type,
        tier=tier,
        normalize=normalize,
        precision=precision,
        file=file,
        triton_image=triton_image,
    )
    if output is not None:
        if deployment_type == DeploymentType.PLATFORM_ENDPOINT:
            raise typer.BadParameter(
                "a platform endpoint has no file to download; -o goes with download, edge_package, container",
                param_hint="--output",
            )
        check_folder(output)
    with connect(api, token) as client:
        answer = client.create_deployment(
            deployment_type=deployment_type.value,
            name=name,
            model_id=model_id,
            export_job_id=job_id,
            options=options,
        )
        deployment: Json = answer["deployment"]
        downloaded = None
        if output is not None:
            deployment_id = str(deployment.get("deployment_id"))
            # Said before the download, so that the new id is known even if the download fails.
            err_console.print(f"created deployment {deployment_id}; downloading its artifact…")
            link = answer.get("download")
            with transfer_progress(f"downloading {deployment_id}") as progress:
                downloaded = client.download_deployment(
                    deployment_id, output, link=link if isinstance(link, dict) else None, progress=progress
                )
        base_url = client.base_url
    if as_json:
        print_json({**answer, "downloaded": downloaded_summary(downloaded) if downloaded else None})
        if answer.get("api_key"):
            err_console.print("the api_key in this answer will not be shown again: store it now")
        return
    out_console.print(
        deployment_table(deployment, base_url, title=f"created deployment {deployment.get('deployment_id')}")
    )
    if answer.get("api_key"):
        show_key(str(deployment.get("deployment_id")), str(answer["api_key"]), rotated=False)
    if downloaded:
        out_console.print(downloaded_table(downloaded))


def _type_options(
    deployment_type: DeploymentType,
    *,
    tier: Tier | None,
    normalize: bool | None,
    precision: EdgePrecision | None,
    file: DownloadFile | None,
    triton_image: str | None,
) -> Json:
    """The request's ``options`` for the type; an option given for another type is a usage error."""
    given: dict[DeploymentType, dict[str, tuple[str, Any]]] = {
        DeploymentType.PLATFORM_ENDPOINT: {
            "--tier": ("tier", tier),
            "--normalize": ("apply_normalization", normalize),
            "--precision": ("precision", precision),
        },
        DeploymentType.EDGE_PACKAGE: {"--precision": ("precision", precision)},
        DeploymentType.DOWNLOAD: {"--file": ("file", file)},
        DeploymentType.CONTAINER: {"--triton-image": ("triton_image", triton_image)},
    }
    for flags in given.values():
        for flag, (_, value) in flags.items():
            if value is not None and flag not in given[deployment_type]:
                owners = " or ".join(t.value for t, f in given.items() if flag in f)
                raise typer.BadParameter(f"{flag} goes with --type {owners} only", param_hint=flag)
    # Only what was given: the API's defaults (free tier, no normalization, auto precision) stand.
    return {
        key: value.value if isinstance(value, enum.Enum) else value
        for key, value in given[deployment_type].values()
        if value is not None
    }


# --- heimdall deploy get|list|activate|deactivate|delete|history|rotate-key|download --------------


def _deployment_command(name: str, call: Callable[[ApiClient, str], Json], summary: str) -> None:
    """Register ``deploy NAME DEPLOYMENT_ID``: one call that answers with a deployment, then shown."""

    def command(
        deployment_id: DeployId,
        *,
        api: ApiUrl = DEFAULT_API_URL,
        token: Token = None,
        as_json: AsJson = False,
    ) -> None:
        with connect(api, token) as client:
            deployment = call(client, deployment_id)
            base_url = client.base_url
        if as_json:
            print_json(deployment)
        else:
            out_console.print(deployment_table(deployment, base_url))

    command.__doc__ = summary
    deploy_app.command(name)(command)


_deployment_command(
    "get", ApiClient.get_deployment, "Show a deployment: type, status, model, endpoint or artifact, usage."
)
_deployment_command(
    "activate",
    ApiClient.activate_deployment,
    "Activate a deployment (a platform endpoint serves again, its artifact can be downloaded).",
)
_deployment_command(
    "deactivate",
    ApiClient.deactivate_deployment,
    "Deactivate a deployment: it serves nothing (409 DEPLOYMENT_INACTIVE) until activated again.",
)


@deploy_app.command("list")
def deploy_list(
    *,
    model_id: Annotated[
        str | None, typer.Option("--model", metavar="MODEL_ID", help="Only this model's deployments.")
    ] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    all_pages: AllPages = False,
    cursor: Cursor = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List your deployments (or one model's)."""
    with connect(api, token) as client:
        items, next_cursor = collect_pages(
            lambda c: client.list_deployments(model_id=model_id, limit=limit, cursor=c), cursor, all_pages
        )
    show_listing(
        f"deployments ({len(items)})",
        ("ID", "Name", "Type", "Status", "Model", "Tier", "Created"),
        [
            (
                str(item.get("deployment_id")),
                str(item.get("name")),
                str(item.get("type")),
                state_text(item.get("status")),
                str(item.get("model_id")),
                str(item.get("tier") or "–"),
                when_text(item.get("created_at")),
            )
            for item in items
        ],
        next_cursor,
        as_json=as_json,
        items=items,
    )


@deploy_app.command("delete")
def deploy_delete(
    deployment_id: DeployId, *, api: ApiUrl = DEFAULT_API_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """Delete a deployment; its API key stops working at once."""
    with connect(api, token) as client:
        client.delete_deployment(deployment_id)
    if as_json:
        print_json({"deployment_id": deployment_id, "deleted": True})
    else:
        out_console.print(f"deleted deployment {deployment_id}")


@deploy_app.command("history")
def deploy_history(
    deployment_id: DeployId, *, api: ApiUrl = DEFAULT_API_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """What happened to a deployment: created, activated, deactivated, key rotated; who and when."""
    with connect(api, token) as client:
        answer = client.deployment_history(deployment_id)
    items = [item for item in answer.get("items") or [] if isinstance(item, dict)]
    show_listing(
        f"history of {deployment_id} ({len(items)})",
        ("At", "Action", "Actor", "Status", "Detail"),
        [
            (
                when_text(item.get("at")),
                str(item.get("action")),
                str(item.get("actor")),
                f"{item.get('before') or '–'} → {item.get('after') or '–'}",
                compact_json(item.get("detail")),
            )
            for item in items
        ],
        answer.get("next_cursor"),
        as_json=as_json,
        items=items,
    )


@deploy_app.command("rotate-key")
def deploy_rotate_key(
    deployment_id: DeployId, *, api: ApiUrl = DEFAULT_API_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """Replace a platform endpoint's API key: the old one stops working, the new one is printed once."""
    with connect(api, token) as client:
        answer = client.rotate_deployment_key(deployment_id)
        base_url = client.base_url
    if as_json:
        print_json(answer)
        err_console.print("the api_key in this answer will not be shown again: store it now")
        return
    deployment = answer.get("deployment")
    if isinstance(deployment, dict):
        out_console.print(
            deployment_table(deployment, base_url, title=f"new key for deployment {deployment_id}")
        )
    show_key(deployment_id, str(answer.get("api_key")), rotated=True)


@deploy_app.command("download")
def deploy_download(
    deployment_id: DeployId,
    *,
    output: Output,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Download a deployment's artifact (package, edge package, container) through its presigned URL."""
    check_folder(output)
    with connect(api, token) as client, transfer_progress(f"downloading {deployment_id}") as progress:
        downloaded = client.download_deployment(deployment_id, output, progress=progress)
    if as_json:
        print_json({"deployment_id": deployment_id, **downloaded_summary(downloaded)})
    else:
        out_console.print(downloaded_table(downloaded))
