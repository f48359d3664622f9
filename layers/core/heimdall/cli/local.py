"""``heimdall local up`` and ``heimdall demo``: the product on the embedded local stack."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from heimdall.local.stack import DEFAULT_API_PORT, DEFAULT_PORT, LocalStack

local_app = typer.Typer(
    name="local", help="The embedded local stack (emulator, resources, dispatcher).", no_args_is_help=True
)
_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@local_app.command("up")
def up(
    emulator_port: Annotated[
        int, typer.Option("--emulator-port", help="Port of the emulator.")
    ] = DEFAULT_PORT,
    stage: Annotated[str, typer.Option("--stage", help="Stage name used in resource names.")] = "local",
    api_port: Annotated[
        int, typer.Option("--api-port", min=0, max=65535, help="Port of the HTTP API (0: a free port).")
    ] = DEFAULT_API_PORT,
) -> None:
    """Start the local stack in the foreground (Ctrl-C stops it).

    With ``AWS_ENDPOINT_URL`` set (an emulator already running, such as LocalStack), its endpoint is
    used instead of starting moto's server. The HTTP API's bearer token is ``HEIMDALL_API_TOKEN`` when
    set, else a new one; it is printed and written to ``.heimdall-local/api-token``.
    """
    if api_port and not _port_free(api_port):
        _err.print(f"[red]error PORT_IN_USE: port {api_port} is taken; pass --api-port 0 for a free port[/]")
        raise typer.Exit(1)
    existing = os.environ.get("AWS_ENDPOINT_URL") or None
    with LocalStack(port=emulator_port, stage=stage, endpoint=existing, api_port=api_port) as stack:
        assert stack.names is not None and stack.tokens is not None
        table = Table(title=f"Heimdall local stack on {stack.endpoint}", title_justify="left")
        table.add_column("resource")
        table.add_column("name")
        for field, value in stack.names.model_dump().items():
            table.add_row(field, value)
        table.add_row("api_url", str(stack.api_url))
        table.add_row("api_token_file", str(stack.tokens.file))
        _out.print(table)
        ingest = stack.names.ingest_bucket
        _out.print(
            f"Drop checkpoints into s3://{ingest}/checkpoints/NAME/VERSION/ with heimdall.json beside them."
        )
        # One line each, never wrapped: scripts read them.
        _out.print(
            f"API: {stack.api_url}  (OpenAPI document: {stack.api_url}/api/v1/openapi.json)", soft_wrap=True
        )
        _out.print(f"API token: {stack.api_token}", soft_wrap=True)
        _out.print(
            f"Inference: {stack.api_url}/v1/infer/DEPLOYMENT_ID with a deployment's API key "
            f"(OpenAPI document: {stack.api_url}/v1/openapi.json)",
            soft_wrap=True,
        )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            _out.print("stopping")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's files.")] = Path(
        "heimdall-demo"
    ),
    emulator_port: Annotated[
        int, typer.Option("--emulator-port", help="Preferred emulator port.")
    ] = DEFAULT_PORT,
) -> None:
    """The main job: the whole pipeline on the local stack, every step checked, summary.json written."""
    from heimdall.local.demo import PIPELINE_STEPS, DemoFailed, run_demo  # noqa: PLC0415 - loads torch

    port = emulator_port if _port_free(emulator_port) else 0
    if port == 0:
        _err.print(f"[yellow]port {emulator_port} is taken; the emulator uses a free port instead[/]")
    api_port = DEFAULT_API_PORT if _port_free(DEFAULT_API_PORT) else 0
    out.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []

    def on_step(step: str, text: str) -> None:
        seen.append(step)
        _out.print(f"[green]✓[/] {step:<10} {text}")

    with (
        LocalStack(port=port, workdir=out / ".local", log_level="WARNING", api_port=api_port) as stack,
        _err.status("running the pipeline…"),
    ):
        _out.print(f"local stack on {stack.endpoint}, API on {stack.api_url}")
        try:
            result = run_demo(stack, out, on_step=on_step)
        except DemoFailed as exc:
            _err.print(f"[red]error DEMO_FAILED: {exc}[/]", soft_wrap=True)
            raise typer.Exit(1) from None
    missing = [s for s in PIPELINE_STEPS if s not in seen]
    if missing:
        _err.print(f"[red]error DEMO_FAILED: steps that did not happen: {', '.join(missing)}[/]")
        raise typer.Exit(1)
    summary = result.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _render(summary)
    _out.print(f"summary: {out / 'summary.json'}")


def _render(summary: dict[str, object]) -> None:
    entry = summary["registry_entry"]
    assert isinstance(entry, dict)
    table = Table(title="registry entry", title_justify="left", show_header=False)
    for key in (
        "model_id",
        "display_name",
        "version",
        "architecture",
        "source",
        "onnx_sha256",
        "onnx_key",
        "bundle_key",
        "export_job_id",
    ):
        table.add_row(key, str(entry.get(key)))
    _out.print(table)
    bench = summary.get("benchmark") or {}
    assert isinstance(bench, dict)
    figures = Table(
        title=f"parity and speed ({bench.get('hardware', '?')})", title_justify="left", show_header=False
    )
    figures.add_row("FP32 max abs error vs PyTorch", f"{summary['fp32_max_abs_err']:.2e}")
    for batch, speedup in (bench.get("speedup") or {}).items():
        figures.add_row(
            f"batch {batch}: PyTorch / ONNX Runtime ms",
            f"{bench['torch_ms'][batch]:.3f} / {bench['onnx_ms'][batch]:.3f}  ({speedup:.2f}x)",
        )
    formats = summary.get("formats") or {}
    assert isinstance(formats, dict)
    for name, outcome in formats.items():
        figures.add_row(f"format {name}", f"{outcome['status']} {outcome['reason'] or ''}")
    _out.print(figures)
    _out.print("events received by the subscriber: " + ", ".join(summary["events"]))  # type: ignore[arg-type]
    _out.print(
        f"bundle:  {summary['bundle']}\npackage: {summary['package']}\n"
        f"local copies: {summary['local_copies']}"
    )
    imported = summary["imported_entry"]
    assert isinstance(imported, dict)
    _out.print(
        f"re-imported as: {imported['display_name']} (model {imported['model_id']}, "
        f"original id {imported['original_model_id']})"
    )
    _out.print(f"elapsed: {summary['elapsed_s']} s")
