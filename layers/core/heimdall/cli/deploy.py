"""``heimdall deploy ...`` and ``heimdall infer``: put models to work, and call a platform endpoint.

The management commands (``deploy create|get|list|activate|deactivate|delete|history|rotate-key|
download``) use the API token and take ``--api``, ``--token`` and ``--json`` exactly as
``heimdall jobs`` does (:mod:`heimdall.cli.remote`). The inference commands (``heimdall infer``,
``deploy usage|health``) use a deployment's API key instead (``--key``, else ``HEIMDALL_API_KEY``);
the API token is never sent with them.

A platform endpoint's API key is printed once, when it is created (``deploy create``) or replaced
(``deploy rotate-key``): the API keeps only its hash. Option combinations that do not go together
(``--precision`` for a platform endpoint, ``-o`` for something with no file) are usage errors (exit 2)
and send nothing, like an input file that is not one of the three shapes ``infer`` accepts.
"""

from __future__ import annotations

import enum
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from heimdall.bundle.strict_json import parse_json
from heimdall.cli.api_client import (
    API_KEY_VARIABLE,
    DEFAULT_API_URL,
    INLINE_MAX_BYTES,
    ApiClient,
    DownloadedFile,
    Json,
)
from heimdall.cli.remote import (
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
    details_table,
    err_console,
    human_size,
    out_console,
    print_json,
    show_listing,
    transfer_progress,
    when_text,
)
from heimdall.domain.deployments import DeploymentType, Tier
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.errors import HeimdallError
from heimdall.inference.inputs import BINARY_TENSOR_KEYS
from heimdall.settings import MIB, BundleLimits

#: The largest input file ``infer`` sends: the API takes request bodies up to its inline limit.
INPUT_MAX_BYTES = INLINE_MAX_BYTES
#: How many values of each output ``infer`` shows (``--json`` has them all).
SHOWN_VALUES = 6
_STATE_STYLE = {"ACTIVE": "green", "INACTIVE": "yellow"}
_INPUT_SHAPES = (
    '{"inputs": {NAME: value, ...}}, {"input": value} or a bare nested list, a value being a nested '
    'list or a binary tensor {"dtype", "shape", "data_b64"}'
)

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
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar=API_KEY_VARIABLE,
        metavar="KEY",
        help="The deployment's API key (hdk_…), shown when it was created or its key rotated.",
        show_default=False,
    ),
]


class DownloadFile(enum.StrEnum):
    """What a ``download`` deployment links to (an imported model has no package: bundle or onnx)."""

    PACKAGE = "package"
    BUNDLE = "bundle"
    ONNX = "onnx"


class EdgePrecision(enum.StrEnum):
    """The numeric precision of an edge package's model (``auto``: the best the export has)."""

    AUTO = "auto"
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


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
            help="platform_endpoint: requests per minute per key (free 10, pro 100, enterprise 1000).",
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
        print_json({**answer, "downloaded": _downloaded_summary(downloaded) if downloaded else None})
        if answer.get("api_key"):
            err_console.print("the api_key in this answer will not be shown again: store it now")
        return
    out_console.print(
        _deployment_table(deployment, base_url, title=f"created deployment {deployment.get('deployment_id')}")
    )
    if answer.get("api_key"):
        _show_key(str(deployment.get("deployment_id")), str(answer["api_key"]), rotated=False)
    if downloaded:
        out_console.print(_downloaded_table(downloaded))


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
            out_console.print(_deployment_table(deployment, base_url))

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
                _state(item.get("status")),
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
                _compact(item.get("detail")),
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
            _deployment_table(deployment, base_url, title=f"new key for deployment {deployment_id}")
        )
    _show_key(deployment_id, str(answer.get("api_key")), rotated=True)


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
        print_json({"deployment_id": deployment_id, **_downloaded_summary(downloaded)})
    else:
        out_console.print(_downloaded_table(downloaded))


# --- with the deployment's API key: heimdall infer, deploy usage|health ---------------------------


def infer(
    deployment_id: DeployId,
    *,
    input_file: Annotated[
        str,
        typer.Option(
            "--input",
            metavar="FILE.json",
            help=f"The inputs: {_INPUT_SHAPES}; '-' reads standard input.",
            show_default=False,
        ),
    ],
    key: Key = None,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Run a platform endpoint on the inputs in a JSON file; prints its outputs and latency."""
    body, api_key = read_inputs(input_file), _required(key)
    with connect(api, None) as client:
        inference = client.infer(deployment_id, api_key, body)
    answer = inference.answer
    if as_json:
        print_json(answer)
        return
    outputs = answer.get("outputs")
    table = Table(title=f"outputs of {deployment_id}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Output", no_wrap=True)
    table.add_column("Shape", no_wrap=True)
    table.add_column("First values", overflow="fold")
    for output_name, value in (outputs if isinstance(outputs, dict) else {}).items():
        table.add_row(Text(str(output_name)), Text(_shape_text(value)), Text(_first_values(value)))
    out_console.print(table)
    rows: list[tuple[str, str | Text]] = [
        ("model", f"{answer.get('model_id')} version {answer.get('model_version')}"),
        ("latency", f"{answer.get('latency_ms')} ms"),
        ("normalized", "yes" if answer.get("normalized") else "no"),
    ]
    if inference.rate_remaining is not None and inference.rate_limit is not None:
        left = f"{inference.rate_remaining} of {inference.rate_limit} left in the sliding minute"
        rows.append(("rate limit", left))
    out_console.print(details_table("inference", rows))


@deploy_app.command("usage")
def deploy_usage(
    deployment_id: DeployId, *, key: Key = None, api: ApiUrl = DEFAULT_API_URL, as_json: AsJson = False
) -> None:
    """A platform endpoint's usage (with its API key): requests, last request, inference time."""
    _keyed_action(
        api,
        key,
        as_json,
        lambda client, k: client.deployment_usage(deployment_id, k),
        rows=lambda usage: [
            ("requests", str(usage.get("request_count"))),
            ("last request", when_text(usage.get("last_request_at"))),
            ("inference time", f"{usage.get('total_inference_ms')} ms in all"),
        ],
        title=f"usage of {deployment_id}",
    )


@deploy_app.command("health")
def deploy_health(
    deployment_id: DeployId, *, key: Key = None, api: ApiUrl = DEFAULT_API_URL, as_json: AsJson = False
) -> None:
    """A platform endpoint's health (with its API key): status, model, version, whether it is loaded."""
    _keyed_action(
        api,
        key,
        as_json,
        lambda client, k: client.deployment_health(deployment_id, k),
        rows=lambda health: [
            ("status", _state(health.get("status"))),
            ("model", f"{health.get('model_id')} version {health.get('model_version')}"),
            ("model loaded", "yes" if health.get("model_loaded") else "no (the next request loads it)"),
            ("tier", str(health.get("tier") or "–")),
        ],
        title=f"health of {deployment_id}",
    )


def read_inputs(source: str) -> Json:
    """The request body of ``infer`` from ``--input`` (a file, or ``-`` for standard input).

    Refused as usage errors: a missing file, more than :data:`INPUT_MAX_BYTES`, anything that is not
    strict JSON (NaN, duplicate keys, invalid UTF-8 ...) and any document not of the three shapes.
    """
    name = "standard input" if source == "-" else source
    if source == "-":
        data = sys.stdin.buffer.read(INPUT_MAX_BYTES + 1)
    else:
        path = Path(source)
        if not path.is_file():
            raise typer.BadParameter(f"{source} is not a file", param_hint="--input")
        with path.open("rb") as raw:
            data = raw.read(INPUT_MAX_BYTES + 1)
    if len(data) > INPUT_MAX_BYTES:
        raise typer.BadParameter(
            f"{name} is larger than the API takes ({INPUT_MAX_BYTES // MIB} MiB)", param_hint="--input"
        )
    try:
        doc = parse_json(data, BundleLimits(max_metadata_bytes=INPUT_MAX_BYTES))
    except HeimdallError as exc:
        raise typer.BadParameter(f"{name}: {exc.message}", param_hint="--input") from None
    return _request_body(doc, name)


def _is_value(value: Any) -> bool:
    """A nested list, or a binary tensor ``{"dtype", "shape", "data_b64"}`` (the endpoint checks the rest)."""
    return isinstance(value, list) or (isinstance(value, dict) and set(value) == BINARY_TENSOR_KEYS)


def _request_body(doc: Any, name: str) -> Json:
    """``doc`` as the request body, or a usage error that says what is wrong with it."""
    if isinstance(doc, list):
        return {"input": doc}
    problem = f"it is {_kind(doc)}"
    if isinstance(doc, dict):
        if set(doc) == {"input"}:
            if _is_value(doc["input"]):
                return doc
            problem = f'its "input" is {_kind(doc["input"])}, not a list or a binary tensor'
        elif set(doc) == {"inputs"}:
            inputs = doc["inputs"]
            if not isinstance(inputs, dict):
                problem = f'its "inputs" is {_kind(inputs)}, not an object'
            elif not inputs:
                problem = 'its "inputs" names no input'
            else:
                wrong = [
                    f'"{k}" is {_kind(v)}, not a list or a binary tensor'
                    for k, v in inputs.items()
                    if not _is_value(v)
                ]
                if "" in inputs:
                    wrong.append("an input has an empty name")
                if not wrong:
                    return doc
                problem = 'in its "inputs", ' + "; ".join(wrong)
        else:
            problem = f"it has the keys {', '.join(sorted(doc)) or '(none)'}"
    raise typer.BadParameter(f"{name} must hold {_INPUT_SHAPES}; {problem}", param_hint="--input")


# --- helpers ---------------------------------------------------------------------------------------


def _keyed_action(
    api: str,
    key: str | None,
    as_json: bool,
    call: Callable[[ApiClient, str], Json],
    *,
    rows: Callable[[Json], list[tuple[str, str | Text]]],
    title: str,
) -> None:
    """Make one call with the deployment's API key and show its answer."""
    api_key = _required(key)
    with connect(api, None) as client:  # the key replaces the token on these routes
        answer = call(client, api_key)
    if as_json:
        print_json(answer)
    else:
        out_console.print(details_table(title, rows(answer)))


def _required(key: str | None) -> str:
    if not key or not key.strip():
        raise typer.BadParameter(
            f"give the deployment's API key with --key or {API_KEY_VARIABLE}", param_hint="--key"
        )
    return key.strip()


def _deployment_table(deployment: Json, base_url: str, *, title: str | None = None) -> Table:
    platform = deployment.get("type") == DeploymentType.PLATFORM_ENDPOINT
    rows: list[tuple[str, str | Text]] = [
        ("deployment id", str(deployment.get("deployment_id"))),
        ("name", str(deployment.get("name"))),
        ("type", str(deployment.get("type"))),
        ("status", _state(deployment.get("status"))),
        ("model id", str(deployment.get("model_id"))),
        ("export job", str(deployment.get("export_job_id") or "– (an imported model)")),
    ]
    if platform:
        rows.append(("tier", str(deployment.get("tier") or "–")))
        rows.append(("normalization", "applied" if deployment.get("apply_normalization") else "not applied"))
        if deployment.get("onnx_sha256"):
            rows.append(("model sha256", str(deployment["onnx_sha256"])))
    if deployment.get("options"):
        rows.append(("options", _compact(deployment["options"])))
    if deployment.get("endpoint"):
        rows.append(("endpoint", f"POST {base_url}{deployment['endpoint']}"))
    if deployment.get("key_id"):
        rows.append(("key id", str(deployment["key_id"])))
    artifact = deployment.get("artifact")
    if isinstance(artifact, dict):
        size = artifact.get("size_bytes")
        rows.append(("artifact", str(artifact.get("file_name") or artifact.get("key"))))
        if isinstance(size, int):
            rows.append(("size", human_size(size)))
        if artifact.get("sha256"):
            rows.append(("sha256", str(artifact["sha256"])))
    usage = deployment.get("usage")
    if isinstance(usage, dict):
        rows.append(("requests", str(usage.get("request_count"))))
        rows.append(("last request", when_text(usage.get("last_request_at"))))
    rows.append(("created", when_text(deployment.get("created_at"))))
    rows.append(("updated", when_text(deployment.get("updated_at"))))
    return details_table(title or f"deployment {deployment.get('deployment_id')}", rows)


def _show_key(deployment_id: str, key: str, *, rotated: bool) -> None:
    """The API key, once, on a line of its own (never wrapped, so that it copies whole)."""
    out_console.print(Text("API key (shown only now):", style="bold yellow"))
    out_console.print(Text(f"  {key}", style="bold"), soft_wrap=True)
    retired = " The previous key no longer works." if rotated else ""
    out_console.print(
        Text(
            "Store it now: it will not be shown again (the API keeps only its hash)."
            f"{retired} Lost it? `heimdall deploy rotate-key {deployment_id}` issues a new one.",
            style="yellow",
        ),
        soft_wrap=True,
    )
    out_console.print(
        f"Use it: heimdall infer {deployment_id} --key KEY --input inputs.json (or set {API_KEY_VARIABLE})",
        soft_wrap=True,
    )


def _downloaded_summary(downloaded: DownloadedFile) -> Json:
    return {
        "output": str(downloaded.path),
        "size_bytes": downloaded.size_bytes,
        "sha256": downloaded.sha256,
        "sha256_checked": downloaded.link.get("sha256") is not None,
        "key": downloaded.link.get("key"),
    }


def _downloaded_table(downloaded: DownloadedFile) -> Table:
    checked = " (matches the API's)" if downloaded.link.get("sha256") is not None else ""
    return details_table(
        f"downloaded {downloaded.link.get('key') or 'the artifact'}",
        [
            ("output", str(downloaded.path)),
            ("size", human_size(downloaded.size_bytes)),
            ("sha256", downloaded.sha256 + checked),
        ],
    )


def _state(value: Any) -> Text:
    return Text(str(value), style=_STATE_STYLE.get(str(value), "cyan"))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str) if value else ""


def _kind(value: Any) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _shape_text(value: Any) -> str:
    """The shape of a nested list, read along its first elements: ``[1, 2]``."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return "[" + ", ".join(map(str, shape)) + "]"


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _first_values(value: Any) -> str:
    first = list(itertools.islice(_leaves(value), SHOWN_VALUES + 1))
    shown = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in first[:SHOWN_VALUES])
    return shown + (", …" if len(first) > SHOWN_VALUES else "")
