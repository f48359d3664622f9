"""``heimdall infer`` and ``heimdall deploy usage|health``: calls to a platform endpoint with its API key.

These commands use a deployment's API key (``--key``, else ``HEIMDALL_API_KEY``) instead of the API
token, which is never sent with them. ``infer`` reads its inputs from a JSON file (or standard input)
and refuses, as a usage error that sends nothing, a file that is too large, not strict JSON or not one
of the three shapes the endpoint accepts; it shows the outputs' shapes and first values, the latency
and what is left of the rate limit.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from heimdall.bundle.strict_json import parse_json
from heimdall.cli.api_client import ApiClient
from heimdall.cli.api_common import Json
from heimdall.cli.api_model_routes import INLINE_MAX_BYTES
from heimdall.cli.api_session import API_KEY_VARIABLE, DEFAULT_API_URL
from heimdall.cli.deploy import DeployId, deploy_app
from heimdall.cli.deployment_views import state_text
from heimdall.cli.options import ApiUrl, AsJson, connect
from heimdall.cli.render import details_table, out_console, print_json, when_text
from heimdall.errors import HeimdallError
from heimdall.inference.inputs import BINARY_TENSOR_KEYS
from heimdall.settings import MIB, BundleLimits

#: The largest input file ``infer`` sends: the API takes request bodies up to its inline limit.
INPUT_MAX_BYTES = INLINE_MAX_BYTES
#: How many values of each output ``infer`` shows (``--json`` has them all).
SHOWN_VALUES = 6
_INPUT_SHAPES = (
    '{"inputs": {NAME: value, ...}}, {"input": value} or a bare nested list, a value being a nested '
    'list or a binary tensor {"dtype", "shape", "data_b64"}'
)
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
            ("status", state_text(health.get("status"))),
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
