"""``heimdall convert``: run the conversion job locally, with progress and a result table."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from heimdall.bundle.reader import looks_like_bundle
from heimdall.contracts.jobs import RESULT_FILE_NAME
from heimdall.contracts.manifest import MANIFEST_FILE_NAME, ExportFormat

if TYPE_CHECKING:
    from heimdall.contracts.jobs import ConversionResult

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)
_STATE_STYLE = {"ok": "[green]✓[/]", "failed": "[red]✗[/]", "skipped": "[yellow]–[/]"}


def _parse_formats(value: str | None) -> list[ExportFormat] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    known = ", ".join(f.value for f in ExportFormat)
    try:
        return [ExportFormat(name) for name in names]
    except ValueError:
        raise typer.BadParameter(f"unknown format in {value!r}; choose from {known}") from None


def convert(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="A .safetensors or .pt/.pth state_dict, or a .heimdall bundle (told apart by content).",
        ),
    ],
    *,
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="Folder for the outputs.")],
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            exists=True,
            dir_okay=False,
            help=f"The manifest; default: {MANIFEST_FILE_NAME} beside the checkpoint, else the embedded one.",
        ),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option("--formats", help="Comma-separated: onnx,torchscript,onnx_fp16,onnx_int8,tensorrt."),
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Job id (default: a new local id).")] = None,
    no_benchmark: Annotated[bool, typer.Option("--no-benchmark", help="Skip the latency benchmark.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print result.json on stdout.")] = False,
) -> None:
    """Convert a checkpoint: ONNX (+ TorchScript, FP16, INT8, TensorRT), parity, benchmark, package, bundle.

    Given a .heimdall bundle instead (a model imported from elsewhere), its ONNX model is verified and
    converted to FP16, INT8 and TensorRT, each checked against it, benchmarked and packaged; the
    PyTorch stages are skipped (the bundle has no PyTorch model) and no new bundle is written.

    Exit codes: 0 every requested format built or skipped with a reason; 1 a format failed or the job
    failed for another reason; 3 invalid input (checkpoint, manifest or bundle); 4 unsupported
    architecture.
    """
    requested = _parse_formats(formats)
    with checkpoint.open("rb") as handle:
        is_bundle = looks_like_bundle(handle.read(16), checkpoint.stat().st_size)
    if is_bundle and manifest is not None:
        raise typer.BadParameter("a bundle carries its own metadata: --manifest goes with a checkpoint")
    sidecar = manifest or (checkpoint.parent / MANIFEST_FILE_NAME)
    manifest_bytes = sidecar.read_bytes() if sidecar.is_file() and not is_bundle else None

    from heimdall_batch.pipeline import (  # noqa: PLC0415 - loads torch
        ConversionOptions,
        run_bundle_conversion,
        run_conversion,
    )

    with _err.status("converting…") as status:

        def progress(stage: str, state: str) -> None:
            if state == "start":
                status.update(f"{stage}…")
            else:
                _err.print(f"{_STATE_STYLE.get(state, state)} {stage}")

        options = ConversionOptions(
            job_id=job_id or f"local-{uuid.uuid4().hex[:12]}",
            formats=requested,
            run_benchmark=not no_benchmark,
            progress=None if as_json else progress,
        )
        if is_bundle:
            result = run_bundle_conversion(checkpoint, output, options)
        else:
            result = run_conversion(checkpoint, output, options, manifest=manifest_bytes)
    if as_json:
        _out.print_json(json.dumps(result.model_dump(mode="json")))
    else:
        _render(result, output)
    if result.exit_code:  # the pipeline's verdict, as in result.json: the CLI adds no rule of its own
        _err.print(f"[red]error {result.error_code}: {result.error_message}[/]", soft_wrap=True)
        raise typer.Exit(result.exit_code)


def _render(result: ConversionResult, output: Path) -> None:
    table = Table(title=f"{result.model_name} {result.version} → {output}", title_justify="left")
    for column in ("format", "status", "size", "max abs err", "tolerance", "b1 ms", "note"):
        table.add_column(column, overflow="fold")
    for o in result.formats:
        worst = max((c.max_abs_err for c in o.parity), default=None)
        tolerance = o.parity[0].tolerance if o.parity else None
        style = {"built": "green", "failed": "red", "skipped": "yellow"}[o.status.value]
        table.add_row(
            o.format.value,
            f"[{style}]{o.status.value}[/]",
            f"{o.size_bytes / 1024:.1f} KiB" if o.size_bytes else "",
            f"{worst:.2e}" if worst is not None else "",
            f"{tolerance:.0e}" if tolerance is not None else "",
            f"{o.latency_ms['1']:.3f}" if "1" in o.latency_ms else "",
            o.reason or "",
        )
    if result.weights is not None:  # which of the checkpoint's state_dicts, and the prefix removed
        _out.print(f"weights: {result.weights.describe()}", soft_wrap=True)
    _out.print(table)
    bench = result.benchmark
    if bench is not None:
        speed = Table(title=f"benchmark on {bench.hardware}", title_justify="left")
        for column in ("batch", "PyTorch ms", "ONNX Runtime ms", "speedup"):
            speed.add_column(column, justify="right")
        for batch in bench.onnx_ms:  # PyTorch is not timed for a model that came as a bundle
            torch_ms, speedup = bench.torch_ms.get(batch), bench.speedup.get(batch)
            speed.add_row(
                batch,
                f"{torch_ms:.3f}" if torch_ms is not None else "–",
                f"{bench.onnx_ms[batch]:.3f}",
                f"{speedup:.2f}x" if speedup is not None else "–",
            )
        _out.print(speed)
    upgrade = result.opset_upgrade
    if upgrade is not None:
        _out.print(
            f"FP32 model: the bundle's upgraded from opset {upgrade.from_opset} to {upgrade.to_opset} "
            f"({upgrade.converter}; {upgrade.samples_checked} sample(s) checked), not its bytes "
            f"(sha256 {result.bundle_onnx_sha256})",
            soft_wrap=True,
        )
    if result.bundle_file:
        _out.print(f"bundle: {output / result.bundle_file}")
    if result.package_file:
        _out.print(f"package: {output / result.package_file}")
    _out.print(f"result: {output / RESULT_FILE_NAME} ({result.status})")
