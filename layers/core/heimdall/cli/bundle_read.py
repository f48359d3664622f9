"""``heimdall bundle inspect``, ``verify`` and ``extract-onnx``: the commands that read a bundle.

Each is an *operation* (:func:`describe_bundle`, :func:`extract_model`, or the library's
:func:`~heimdall.bundle.verify.verify_bundle`) and a *rendering* of its result as a table or JSON.
None of them writes a bundle; ``extract-onnx`` writes the embedded model only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from heimdall.bundle.models import Bundle, Component
from heimdall.bundle.reader import ReadResult, read_bundle
from heimdall.bundle.signing import SignatureState, TrustedKey, check_signature, load_trusted_key
from heimdall.bundle.verify import VerificationReport, verify_bundle
from heimdall.cli.bundle_common import (
    BundleFile,
    JsonFlag,
    bundle_console,
    bundle_limits,
    check_output,
    error_for,
    fmt_bytes,
    fmt_shape,
    fmt_spec,
    key_value_table,
    print_json,
    table_row,
)
from heimdall.settings import BundleLimits

# --- inspect ---------------------------------------------------------------------------------------


def describe_bundle(path: Path, read: ReadResult) -> dict[str, Any]:
    """What ``inspect`` shows about a bundle whose integrity pass succeeded (JSON-ready)."""
    bundle = read.bundle
    meta = bundle.bundle_metadata
    model = bundle.model
    state = check_signature(bundle)  # no trusted keys: 'unsigned' or 'unverified', never raises
    return {
        "file": str(path),
        "format_version": bundle.format_version,
        "dialect": read.dialect,
        "bundle_id": meta.bundle_id,
        "created_at": meta.created_at.isoformat(),
        "created_by": meta.created_by,
        "description": meta.description,
        "heimdall_version": meta.heimdall_version,
        "model": {
            "model_id": model.model_id,
            "model_name": model.model_name,
            "version": model.version,
            "architecture": model.architecture,
            "framework": model.framework,
            "onnx_opset": model.onnx_opset,
            "input_shape": model.input_shape,
            "output_shape": model.output_shape,
            "parameters_count": model.parameters_count,
        },
        # Components the writer filled with empty fallbacks are absent here (read as not written).
        "components": bundle.components(),
        "sample_count": len(bundle.sample_predictions or []),
        # Means without stds (or the reverse) are kept but cannot normalise: deployments refuse them.
        "normalization_complete": (
            None if (stats := bundle.normalization_stats) is None else stats.means_and_stds() is not None
        ),
        "onnx_sha256": read.onnx_sha256,
        "onnx_size_bytes": read.onnx_size_bytes,
        "integrity_declared": read.integrity_declared,
        "compressed": read.compressed,
        "bundle_bytes": read.source_bytes,
        "document_bytes": read.document_bytes,
        "signature": state,
        "signature_key_id": bundle.signature.key_id if bundle.signature else None,
        "extra_fields": sorted((bundle.model_extra or {}).keys()),
    }


def render_inspect(summary: dict[str, Any], console: Console = bundle_console) -> None:
    model = summary["model"]
    table = key_value_table(f"[bold]{escape(summary['file'])}[/]")
    table_row(table, "format version", f"{summary['format_version']} ({summary['dialect']} dialect)")
    table_row(table, "bundle id", summary["bundle_id"])
    table_row(table, "created", f"{summary['created_at']} by {summary['created_by']}")
    if summary["description"]:
        table_row(table, "description", summary["description"])
    if summary["heimdall_version"]:
        table_row(table, "written by", f"heimdall {summary['heimdall_version']}")
    table.add_section()
    table_row(table, "model", f"{model['model_name']} {model['version']}")
    table_row(table, "model id", model["model_id"])
    table_row(table, "architecture", f"{model['architecture']} ({model['framework']})")
    table_row(table, "opset", str(model["onnx_opset"]))
    table_row(table, "input shape", fmt_shape(model["input_shape"]))
    table_row(table, "output shapes", ", ".join(fmt_shape(s) for s in model["output_shape"]))
    if model["parameters_count"] is not None:
        table_row(table, "parameters", f"{model['parameters_count']:,}")
    table.add_section()
    components = summary["components"]
    notes = {
        Component.SAMPLE_PREDICTIONS: f" ({summary['sample_count']})",
        Component.NORMALIZATION_STATS: "" if summary["normalization_complete"] else " (partial: not usable)",
    }
    shown = [f"{c}{notes.get(c, '')}" for c in components]
    table_row(table, "components", ", ".join(shown) or "none (model only)")
    if summary["extra_fields"]:
        table_row(table, "unknown fields", ", ".join(summary["extra_fields"]) + " (kept)")
    table.add_section()
    table_row(table, "onnx size", fmt_bytes(summary["onnx_size_bytes"]))
    table_row(table, "onnx sha256", summary["onnx_sha256"])
    table_row(
        table,
        "integrity",
        "declared, matches the model" if summary["integrity_declared"] else "not declared (older writer)",
    )
    table_row(
        table,
        "bundle size",
        fmt_bytes(summary["bundle_bytes"]) + (" (gzip)" if summary["compressed"] else ""),
    )
    if summary["compressed"]:
        table_row(table, "uncompressed", fmt_bytes(summary["document_bytes"]))
    key_id = summary["signature_key_id"]
    table_row(table, "signature", f"signed by {key_id} (not verified)" if key_id else "unsigned")
    console.print(table)
    console.print("[dim]integrity pass only; run `heimdall bundle verify` for the full check[/]")


def inspect(file: BundleFile, as_json: JsonFlag = False) -> None:
    """Summarise a bundle: format, dialect, model, components, sizes, sha256, signature state.

    Runs the integrity pass only (fast, streaming); `verify` adds the structural pass and signature
    checks. Exit 1 with the error code when the bundle is invalid.
    """
    read = read_bundle(file, limits=bundle_limits())
    summary = describe_bundle(file, read)
    if as_json:
        print_json(summary)
    else:
        render_inspect(summary)


# --- verify ----------------------------------------------------------------------------------------


def _signature_text(bundle: Bundle, state: SignatureState | None) -> str:
    signature = bundle.signature
    if signature is None:
        return "unsigned"
    if state == "verified":
        return f"signed by {signature.key_id} (verified)"
    return f"signed by {signature.key_id} (not verified)"


def _trusted_key(spec: str) -> TrustedKey:
    """``PATH`` (key id = the key's fingerprint) or ``KEY_ID=PATH``."""
    path = Path(spec)
    key_id: str | None = None
    if not path.exists() and "=" in spec:
        key_id, _, rest = spec.partition("=")
        path = Path(rest)
    if not path.is_file():
        raise typer.BadParameter(f"no public key file at {path}", param_hint="--trusted-key")
    return load_trusted_key(path, key_id or None)


def render_verify(path: Path, report: VerificationReport, console: Console = bundle_console) -> None:
    read = report.read
    if not report.valid or read is None:
        return
    bundle = read.bundle
    table = key_value_table(f"[bold green]valid[/] [bold]{escape(str(path))}[/]")
    table_row(
        table, "model", f"{bundle.model.model_name} {bundle.model.version} ({bundle.model.architecture})"
    )
    table_row(
        table,
        "format",
        f"{bundle.format_version} ({read.dialect} dialect){' gzip' if read.compressed else ''}",
    )
    table_row(table, "onnx sha256", read.onnx_sha256)
    table_row(table, "onnx size", fmt_bytes(read.onnx_size_bytes))
    table_row(
        table, "integrity", "declared, matches" if read.integrity_declared else "not declared (older writer)"
    )
    table_row(table, "signature", _signature_text(bundle, report.signature_state))
    structure = report.structure
    if structure is not None:
        table.add_section()
        table_row(
            table,
            "graph",
            f"opset {structure.opset}, IR {structure.ir_version}, {structure.node_count} nodes",
        )
        table_row(table, "producer", structure.producer or "(none)")
        for spec in structure.inputs:
            table_row(table, "input", fmt_spec(spec))
        for spec in structure.outputs:
            table_row(table, "output", fmt_spec(spec))
    console.print(table)


def verify(
    file: BundleFile,
    as_json: JsonFlag = False,
    trusted_key: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-key",
            metavar="[KEY_ID=]PUB.pem",
            help=(
                "A trusted ed25519 public key (repeatable). Its key id is the key's fingerprint, or "
                "KEY_ID when given as KEY_ID=PATH (for bundles signed with --key-id)."
            ),
        ),
    ] = None,
    require_signature: Annotated[
        bool,
        typer.Option("--require-signature", help="Refuse a bundle without a signature by a trusted key."),
    ] = False,
    max_onnx_mb: Annotated[
        float | None,
        typer.Option(
            "--max-onnx-mb", metavar="N", help="Largest ONNX model accepted, in MiB (may be fractional)."
        ),
    ] = None,
) -> None:
    """Run every check: integrity pass, signature policy, structural pass on the ONNX graph.

    Exit 0 when valid; 1 when invalid (the error code and message on stderr; with --json, an object
    with valid, code, message, onnx_sha256, ... on stdout too); 2 on a usage error.
    """
    if max_onnx_mb is not None and not max_onnx_mb > 0:
        raise typer.BadParameter(f"must be greater than 0, got {max_onnx_mb:g}", param_hint="--max-onnx-mb")
    keys = [_trusted_key(spec) for spec in trusted_key or []]
    report = verify_bundle(
        file, limits=bundle_limits(max_onnx_mb), trusted_keys=keys, require_signature=require_signature
    )
    if as_json:
        print_json({"file": str(file), **report.to_dict()})
    else:
        render_verify(file, report)
    if not report.valid:
        raise error_for(
            report.code or "INVALID_BUNDLE", report.message or "the bundle is invalid", report.field
        )


# --- extract-onnx ----------------------------------------------------------------------------------


def _default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def extract_model(source: Path, output: Path, limits: BundleLimits) -> ReadResult:
    """Stream ``source``'s model to ``output``: a temporary file beside it, renamed once verified.

    Nothing is left behind when the bundle is refused.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as sink:
            read = read_bundle(source, limits=limits, onnx_sink=sink)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return read


def extract_onnx(
    file: BundleFile,
    output: Annotated[
        Path, typer.Option("-o", "--output", dir_okay=False, help="Where to write the ONNX model.")
    ],
) -> None:
    """Write the embedded ONNX model, byte-identical, after checking its encoding and sha256."""
    check_output(output)
    read = extract_model(file, output, bundle_limits())
    table = key_value_table()
    table_row(table, "wrote", str(output))
    table_row(table, "size", fmt_bytes(read.onnx_size_bytes))
    table_row(table, "sha256", read.onnx_sha256)
    table_row(
        table, "integrity", "matches the declared sha256" if read.integrity_declared else "not declared"
    )
    bundle_console.print(table)
