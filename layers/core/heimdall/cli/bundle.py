"""``heimdall bundle``: the offline tools for ``.heimdall`` bundles, and the bundle walk-through demo.

Every command is a thin layer over the library (:mod:`heimdall.bundle`): the reader's integrity pass,
the writer, signing and :func:`~heimdall.bundle.verify.verify_bundle`. Nothing here parses or
validates a bundle by itself. Each command is split into an *operation* (a plain function returning
what it did, used by the demo too) and a *rendering* of that result as rich tables or JSON.

Errors are raised as :class:`~heimdall.errors.HeimdallError` and printed by the top-level group
(:mod:`heimdall.cli`) as ``error CODE: message`` with exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from heimdall.bundle.dialects import Dialect
from heimdall.bundle.models import FORMAT_VERSION, Bundle, Component, ComponentSelection
from heimdall.bundle.reader import ReadResult, parse_metadata, read_bundle
from heimdall.bundle.signing import (
    SignatureState,
    TrustedKey,
    check_signature,
    generate_key_pair,
    load_private_key,
    load_trusted_key,
)

# The bundle's strict JSON parse (duplicate keys, NaN/Infinity, huge numbers, invalid UTF-8 refused)
# is what META.json must pass too.
from heimdall.bundle.strict_json import parse_json
from heimdall.bundle.structural import StructuralReport, TensorSpec, check_structure
from heimdall.bundle.upgrade import ServingCheck, check_serving
from heimdall.bundle.verify import VerificationReport, verify_bundle
from heimdall.bundle.writer import WriteResult, write_bundle
from heimdall.cli.options import Description, NoConfig, NoMetrics, NoNormalization, NoSamples, NumSamples
from heimdall.errors import HeimdallError, InvalidBundle, TooLarge, UpgradeFailed
from heimdall.settings import MIB, BundleLimits, get_settings

bundle_app = typer.Typer(
    name="bundle",
    help=(
        "Offline tools for .heimdall bundles: inspect, verify, extract, pack, migrate, upgrade, sign, "
        "diff.\n\n"
        "Exit codes: 0 success, 1 a failed check or operation (error code and message on stderr), "
        "2 usage error."
    ),
    no_args_is_help=True,
)

_out = Console(highlight=False)
_DEBUG_VARIABLE = "HEIMDALL_DEBUG"

#: Metadata fields ``diff`` shows but does not count as a difference: the bundle's identity (a new
#: id and time on every export), the writer's version, and the blocks derived from the model or
#: attesting the rest (the ONNX bytes themselves are compared by sha256).
IDENTITY_FIELDS = frozenset(
    {"bundle_metadata.bundle_id", "bundle_metadata.created_at", "bundle_metadata.heimdall_version"}
)
DERIVED_BLOCKS = frozenset({"integrity", "signature"})

# --- shared helpers --------------------------------------------------------------------------------


def _limits(max_onnx_mb: float | None = None) -> BundleLimits:
    """The configured bundle limits, with the ONNX size cap overridden when asked."""
    limits = get_settings().bundle_limits()
    if max_onnx_mb is not None:
        limits = limits.model_copy(update={"max_onnx_bytes": max(1, int(max_onnx_mb * MIB))})
    return limits


def _error_classes() -> dict[str, type[HeimdallError]]:
    found: dict[str, type[HeimdallError]] = {}
    pending: list[type[HeimdallError]] = [HeimdallError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def _error_for(code: str, message: str, field: str | None) -> HeimdallError:
    """The typed error a report's code names, to be raised (and printed) like any other."""
    cls = _error_classes().get(code, HeimdallError)
    return cls(message, field=field)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _fmt_bytes(n: int) -> str:
    if n >= MIB:
        return f"{n:,} bytes ({n / MIB:.1f} MiB)"
    if n >= 1024:
        return f"{n:,} bytes ({n / 1024:.1f} KiB)"
    return f"{n:,} bytes"


def _fmt_shape(shape: Any) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _fmt_spec(spec: TensorSpec) -> str:
    shape = _fmt_shape(spec.shape) if spec.rank_known else "[rank unknown]"
    return f"{spec.name}: {spec.elem_type}{shape}"


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.elem_type, "shape": list(spec.shape)}


def _key_value_table(title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    return table


def _row(table: Table, label: str, value: str, *, markup: bool = False) -> None:
    """Add a key/value row; the value is data (shown as is) unless ``markup``."""
    table.add_row(label, Text.from_markup(value) if markup else Text(value))


def _signature_text(bundle: Bundle, state: SignatureState | None) -> str:
    signature = bundle.signature
    if signature is None:
        return "unsigned"
    if state == "verified":
        return f"signed by {signature.key_id} (verified)"
    return f"signed by {signature.key_id} (not verified)"


def _components_text(bundle: Bundle) -> str:
    parts = []
    for name in bundle.components():
        if name == Component.SAMPLE_PREDICTIONS and bundle.sample_predictions:
            parts.append(f"{name} ({len(bundle.sample_predictions)})")
        else:
            parts.append(name)
    return ", ".join(parts) or "none (model only)"


def _default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _check_output(path: Path, option: str = "--output") -> None:
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory; give a file name", param_hint=option)


@contextmanager
def _decoded_model(source: Path, limits: BundleLimits) -> Iterator[tuple[ReadResult, Path]]:
    """Run the integrity pass on ``source``, streaming its model to a temporary file (removed after)."""
    with tempfile.TemporaryDirectory(prefix="heimdall-") as tmp:
        model = Path(tmp) / "model.onnx"
        with model.open("wb") as sink:
            read = read_bundle(source, limits=limits, onnx_sink=sink)
        yield read, model


# Reusable parameter types.
BundleFile = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, metavar="FILE", help="A .heimdall bundle (gzip or not)."
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]

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


def _render_inspect(summary: dict[str, Any], console: Console = _out) -> None:
    model = summary["model"]
    table = _key_value_table(f"[bold]{escape(summary['file'])}[/]")
    _row(table, "format version", f"{summary['format_version']} ({summary['dialect']} dialect)")
    _row(table, "bundle id", summary["bundle_id"])
    _row(table, "created", f"{summary['created_at']} by {summary['created_by']}")
    if summary["description"]:
        _row(table, "description", summary["description"])
    if summary["heimdall_version"]:
        _row(table, "written by", f"heimdall {summary['heimdall_version']}")
    table.add_section()
    _row(table, "model", f"{model['model_name']} {model['version']}")
    _row(table, "model id", model["model_id"])
    _row(table, "architecture", f"{model['architecture']} ({model['framework']})")
    _row(table, "opset", str(model["onnx_opset"]))
    _row(table, "input shape", _fmt_shape(model["input_shape"]))
    _row(table, "output shapes", ", ".join(_fmt_shape(s) for s in model["output_shape"]))
    if model["parameters_count"] is not None:
        _row(table, "parameters", f"{model['parameters_count']:,}")
    table.add_section()
    components = summary["components"]
    notes = {
        Component.SAMPLE_PREDICTIONS: f" ({summary['sample_count']})",
        Component.NORMALIZATION_STATS: "" if summary["normalization_complete"] else " (partial: not usable)",
    }
    shown = [f"{c}{notes.get(c, '')}" for c in components]
    _row(table, "components", ", ".join(shown) or "none (model only)")
    if summary["extra_fields"]:
        _row(table, "unknown fields", ", ".join(summary["extra_fields"]) + " (kept)")
    table.add_section()
    _row(table, "onnx size", _fmt_bytes(summary["onnx_size_bytes"]))
    _row(table, "onnx sha256", summary["onnx_sha256"])
    _row(
        table,
        "integrity",
        "declared, matches the model" if summary["integrity_declared"] else "not declared (older writer)",
    )
    _row(
        table,
        "bundle size",
        _fmt_bytes(summary["bundle_bytes"]) + (" (gzip)" if summary["compressed"] else ""),
    )
    if summary["compressed"]:
        _row(table, "uncompressed", _fmt_bytes(summary["document_bytes"]))
    key_id = summary["signature_key_id"]
    _row(table, "signature", f"signed by {key_id} (not verified)" if key_id else "unsigned")
    console.print(table)
    console.print("[dim]integrity pass only; run `heimdall bundle verify` for the full check[/]")


@bundle_app.command()
def inspect(file: BundleFile, as_json: JsonFlag = False) -> None:
    """Summarise a bundle: format, dialect, model, components, sizes, sha256, signature state.

    Runs the integrity pass only (fast, streaming); `verify` adds the structural pass and signature
    checks. Exit 1 with the error code when the bundle is invalid.
    """
    read = read_bundle(file, limits=_limits())
    summary = describe_bundle(file, read)
    if as_json:
        _print_json(summary)
    else:
        _render_inspect(summary)


# --- verify ----------------------------------------------------------------------------------------


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


def _render_verify(path: Path, report: VerificationReport, console: Console = _out) -> None:
    read = report.read
    if not report.valid or read is None:
        return
    bundle = read.bundle
    table = _key_value_table(f"[bold green]valid[/] [bold]{escape(str(path))}[/]")
    _row(table, "model", f"{bundle.model.model_name} {bundle.model.version} ({bundle.model.architecture})")
    _row(
        table,
        "format",
        f"{bundle.format_version} ({read.dialect} dialect){' gzip' if read.compressed else ''}",
    )
    _row(table, "onnx sha256", read.onnx_sha256)
    _row(table, "onnx size", _fmt_bytes(read.onnx_size_bytes))
    _row(
        table, "integrity", "declared, matches" if read.integrity_declared else "not declared (older writer)"
    )
    _row(table, "signature", _signature_text(bundle, report.signature_state))
    structure = report.structure
    if structure is not None:
        table.add_section()
        _row(
            table,
            "graph",
            f"opset {structure.opset}, IR {structure.ir_version}, {structure.node_count} nodes",
        )
        _row(table, "producer", structure.producer or "(none)")
        for spec in structure.inputs:
            _row(table, "input", _fmt_spec(spec))
        for spec in structure.outputs:
            _row(table, "output", _fmt_spec(spec))
    console.print(table)


@bundle_app.command()
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
        file, limits=_limits(max_onnx_mb), trusted_keys=keys, require_signature=require_signature
    )
    if as_json:
        _print_json({"file": str(file), **report.to_dict()})
    else:
        _render_verify(file, report)
    if not report.valid:
        raise _error_for(
            report.code or "INVALID_BUNDLE", report.message or "the bundle is invalid", report.field
        )


# --- extract-onnx ----------------------------------------------------------------------------------


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


@bundle_app.command("extract-onnx")
def extract_onnx(
    file: BundleFile,
    output: Annotated[
        Path, typer.Option("-o", "--output", dir_okay=False, help="Where to write the ONNX model.")
    ],
) -> None:
    """Write the embedded ONNX model, byte-identical, after checking its encoding and sha256."""
    _check_output(output)
    read = extract_model(file, output, _limits())
    table = _key_value_table()
    _row(table, "wrote", str(output))
    _row(table, "size", _fmt_bytes(read.onnx_size_bytes))
    _row(table, "sha256", read.onnx_sha256)
    _row(table, "integrity", "matches the declared sha256" if read.integrity_declared else "not declared")
    _out.print(table)


# --- pack ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackResult:
    """What ``pack`` wrote."""

    output: Path
    written: WriteResult
    metadata_dialect: Dialect
    #: Blocks of META.json that describe another model or signer and were left out.
    ignored: tuple[str, ...]
    structure: StructuralReport | None


def load_metadata(
    path: Path, limits: BundleLimits, *, description: str | None = None
) -> tuple[Bundle, Dialect, tuple[str, ...]]:
    """Read META.json (a bundle without its model, either dialect) into a canonical :class:`Bundle`.

    Parsed as strictly as a bundle is. ``format_version`` defaults to the current one and
    ``bundle_metadata.bundle_id``/``created_at`` to a new uuid4 and the current UTC time;
    ``integrity`` and ``signature`` are ignored (they describe some other model bytes and signer).
    """
    size = path.stat().st_size
    if size > limits.max_metadata_bytes:
        raise TooLarge(
            f"{path} is {_fmt_bytes(size)}, over the metadata limit of "
            f"{_fmt_bytes(limits.max_metadata_bytes)}"
        )
    doc = parse_json(path.read_bytes(), limits)
    if not isinstance(doc, dict):
        raise InvalidBundle(f"{path.name} must hold a JSON object with the bundle's metadata")
    doc.setdefault("format_version", FORMAT_VERSION)
    meta = doc.setdefault("bundle_metadata", {})
    if isinstance(meta, dict):
        meta.setdefault("bundle_id", str(uuid.uuid4()))
        meta.setdefault("created_at", datetime.now(UTC).isoformat())
        if description is not None:
            meta["description"] = description
    ignored = tuple(name for name in ("integrity", "signature") if doc.pop(name, None) is not None)
    bundle, dialect = parse_metadata(doc, limits)
    return bundle, dialect, ignored


def pack_bundle(
    onnx: Path,
    metadata: Path,
    output: Path,
    *,
    limits: BundleLimits,
    selection: ComponentSelection | None = None,
    compress: bool = False,
    signing_key: Path | None = None,
    key_id: str | None = None,
    description: str | None = None,
    check: bool = True,
) -> PackResult:
    """Build a canonical bundle from an ONNX file and META.json.

    With ``check`` (the default) the model goes through the structural pass first, against the
    declared opset and shapes, so that ``pack`` never writes a bundle ``verify`` would refuse.
    """
    bundle, dialect, ignored = load_metadata(metadata, limits, description=description)
    key = load_private_key(signing_key) if signing_key is not None else None
    structure = check_structure(onnx, bundle, limits=limits) if check else None
    written = write_bundle(
        bundle, onnx, output, selection=selection, compress=compress, signing_key=key, key_id=key_id
    )
    return PackResult(output, written, dialect, ignored, structure)


def _render_written(title: str, output: Path, written: WriteResult) -> Table:
    bundle = written.bundle
    table = _key_value_table(title)
    _row(table, "bundle id", bundle.bundle_metadata.bundle_id)
    _row(table, "model", f"{bundle.model.model_name} {bundle.model.version} ({bundle.model.architecture})")
    _row(table, "output", str(output) + (" (gzip)" if written.compressed else ""))
    _row(table, "size", _fmt_bytes(written.bytes_written))
    _row(table, "onnx sha256", written.onnx_sha256)
    _row(table, "onnx size", _fmt_bytes(written.onnx_size_bytes))
    _row(table, "components", _components_text(bundle))
    _row(table, "signature", f"signed by {bundle.signature.key_id}" if bundle.signature else "unsigned")
    return table


def _render_pack(result: PackResult, console: Console = _out) -> None:
    table = _render_written("[bold green]packed[/]", result.output, result.written)
    if result.structure is not None:
        s = result.structure
        _row(table, "structural", f"passed (opset {s.opset}, {s.node_count} nodes, shapes agree)")
    else:
        _row(table, "structural", "[yellow]skipped (--no-check)[/]", markup=True)
    if result.metadata_dialect != "canonical":
        _row(table, "metadata", f"{result.metadata_dialect} dialect, written in canonical form")
    if result.ignored:
        _row(
            table, "ignored", ", ".join(result.ignored) + " from the metadata file (about other model bytes)"
        )
    console.print(table)


@bundle_app.command()
def pack(
    *,
    onnx: Annotated[
        Path, typer.Option("--onnx", exists=True, dir_okay=False, readable=True, help="The ONNX model.")
    ],
    metadata: Annotated[
        Path,
        typer.Option(
            "--metadata",
            exists=True,
            dir_okay=False,
            readable=True,
            help="META.json: the bundle without its model (either dialect).",
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", dir_okay=False, help="The bundle to write.")],
    gzip: Annotated[bool, typer.Option("--gzip", help="gzip-compress the bundle.")] = False,
    sign_key: Annotated[
        Path | None,
        typer.Option(
            "--sign-key",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Sign with this ed25519 private key (PEM).",
        ),
    ] = None,
    key_id: Annotated[
        str | None,
        typer.Option("--key-id", help="Key id to record in the signature (default: key fingerprint)."),
    ] = None,
    no_config: NoConfig = False,
    no_metrics: NoMetrics = False,
    no_normalization: NoNormalization = False,
    no_samples: NoSamples = False,
    num_samples: NumSamples = None,
    description: Description = None,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the structural pass on the model before writing.")
    ] = True,
) -> None:
    """Build a bundle from an ONNX model and META.json (the non-model parts, either dialect).

    META.json holds bundle_metadata, model (name, version, architecture, opset, shapes, ...) and any
    optional components. format_version defaults to 1.0.0, bundle_id to a new uuid4 and created_at to
    now (UTC); integrity is computed, and an integrity or signature block in META.json is ignored.
    """
    _check_output(output)
    if key_id is not None and sign_key is None:
        raise typer.BadParameter("--key-id needs --sign-key", param_hint="--key-id")
    if num_samples is not None and no_samples:
        raise typer.BadParameter("--num-samples contradicts --no-samples", param_hint="-n/--num-samples")
    selection = ComponentSelection(
        training_config=not no_config,
        performance_metrics=not no_metrics,
        normalization_stats=not no_normalization,
        sample_predictions=not no_samples,
        num_samples=num_samples or 10,
    )
    result = pack_bundle(
        onnx,
        metadata,
        output,
        limits=_limits(),
        selection=selection,
        compress=gzip,
        signing_key=sign_key,
        key_id=key_id,
        description=description,
        check=check,
    )
    _render_pack(result)


# --- migrate ---------------------------------------------------------------------------------------

SignatureFate = Literal["none", "kept", "dropped"]


@dataclass(frozen=True)
class MigrateResult:
    """What ``migrate`` read and wrote."""

    before: ReadResult
    after: ReadResult
    written: WriteResult

    @property
    def signature(self) -> SignatureFate:
        """What became of the source's signature."""
        if self.before.bundle.signature is None:
            return "none"
        return "dropped" if self.written.signature_dropped else "kept"


def migrate_file(
    source: Path, output: Path, *, limits: BundleLimits, compress: bool = False
) -> MigrateResult:
    """Rewrite ``source`` in canonical form; the ONNX bytes pass through untouched (checked after)."""
    with _decoded_model(source, limits) as (before, model):
        written = write_bundle(before.bundle, model, output, compress=compress)
    after = read_bundle(output, limits=limits)
    if after.onnx_sha256 != before.onnx_sha256:  # the writer's contract; checked, not assumed
        raise HeimdallError(f"the rewritten model's sha256 {after.onnx_sha256} differs from the source's")
    return MigrateResult(before, after, written)


@bundle_app.command()
def migrate(
    file: BundleFile,
    output: Annotated[
        Path, typer.Option("-o", "--output", dir_okay=False, help="The canonical bundle to write.")
    ],
    gzip: Annotated[bool, typer.Option("--gzip", help="gzip-compress the output.")] = False,
) -> None:
    """Rewrite a bundle of any accepted dialect in canonical form; the ONNX model is untouched.

    A signature is kept when the canonical metadata it covers is unchanged, and dropped (reported)
    otherwise; re-sign with `heimdall bundle sign`.
    """
    _check_output(output)
    result = migrate_file(file, output, limits=_limits(), compress=gzip)
    table = _render_written("[bold green]migrated[/]", output, result.written)
    _row(table, "dialect", f"{result.before.dialect} -> {result.after.dialect}")
    _row(table, "onnx", "unchanged (same sha256)")
    fate = result.signature
    if fate == "kept":
        _row(table, "source signature", "kept (the signed metadata did not change)")
    elif fate == "dropped":
        _row(
            table,
            "source signature",
            "[yellow]dropped: the canonical form changed what it covered; re-sign[/]",
            markup=True,
        )
    _out.print(table)


# --- upgrade ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpgradeResult:
    """What ``upgrade`` read, checked and wrote."""

    before: ReadResult
    check: ServingCheck
    written: WriteResult


def upgrade_file(source: Path, output: Path, *, opset: int, limits: BundleLimits) -> UpgradeResult:
    """Write ``source`` with its ONNX model converted to ``opset`` (the serving check of
    :mod:`heimdall.bundle.upgrade`, forced): the bundle must verify, the converted model must pass the
    structural pass, load in ONNX Runtime and agree with the bundle's sample predictions that carry
    the model's inputs. The declared opset and integrity follow the new model; a signature no longer
    matches and is dropped. Nothing is written when any step fails (``UpgradeFailed``)."""
    with tempfile.TemporaryDirectory(prefix="heimdall-upgrade-") as tmp:
        model = Path(tmp) / "model.onnx"
        report = verify_bundle(source, limits=limits, onnx_out=model)
        if not report.valid or report.read is None or report.structure is None:
            raise _error_for(
                report.code or "INVALID_BUNDLE", report.message or "invalid bundle", report.field
            )
        before, structure = report.read, report.structure
        if opset <= structure.opset:
            raise typer.BadParameter(
                f"the model is at opset {structure.opset}; give an opset above it", param_hint="--opset"
            )
        check = check_serving(
            model,
            structure,
            limits=limits,
            workdir=Path(tmp),
            samples=before.bundle.sample_predictions,
            target_opset=opset,
            force=True,
        )
        if check.upgraded is None:
            raise UpgradeFailed(check.reason or f"the model could not be upgraded to opset {opset}")
        declared = before.bundle.model.model_copy(update={"onnx_opset": opset})
        bundle = before.bundle.model_copy(update={"model": declared})
        written = write_bundle(bundle, check.upgraded, output, compress=before.compressed)
    return UpgradeResult(before, check, written)


@bundle_app.command()
def upgrade(
    file: BundleFile,
    opset: Annotated[
        int,
        typer.Option("--opset", min=1, max=1000, metavar="N", help="The default-domain opset to convert to."),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", dir_okay=False, help="The upgraded bundle to write.")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Convert a bundle's ONNX model to a newer opset (onnx.version_converter) and write a new bundle.

    The converted model must pass the structural pass, load in ONNX Runtime and agree with the
    bundle's sample predictions that carry the model's inputs (input_metadata and prediction by the
    graph's tensor names; |error| <= 1e-5 + 1e-4 x |expected|). Exit 0 written; 1 the bundle is
    invalid or the upgrade failed (UPGRADE_FAILED, nothing written); 2 usage error (an opset not
    above the model's). A signature is dropped: the model bytes changed; re-sign the output.
    """
    _check_output(output)
    result = upgrade_file(file, output, opset=opset, limits=_limits())
    upgrade_done = result.check.upgrade
    assert upgrade_done is not None  # upgrade_file raised otherwise
    dropped = result.before.bundle.signature is not None
    if as_json:
        _print_json(
            {
                "output": str(output),
                "onnx_sha256_before": result.before.onnx_sha256,
                "onnx_sha256": result.written.onnx_sha256,
                "upgrade": upgrade_done.model_dump(mode="json", exclude={"onnx_key"}),
                "signature_dropped": dropped,
            }
        )
        return
    table = _render_written("[bold green]upgraded[/]", output, result.written)
    _row(table, "opset", f"{upgrade_done.from_opset} -> {upgrade_done.to_opset} ({upgrade_done.converter})")
    _row(table, "source onnx sha256", result.before.onnx_sha256)
    checked = upgrade_done.samples_checked
    _row(
        table,
        "samples",
        f"{checked} checked, max abs error {upgrade_done.max_abs_error:.3g}"
        if checked and upgrade_done.max_abs_error is not None
        else "none carry the model's inputs: loaded in ONNX Runtime only",
    )
    if dropped:
        _row(
            table,
            "source signature",
            "[yellow]dropped: the ONNX bytes changed, so it no longer holds; re-sign with "
            "`heimdall bundle sign`[/]",
            markup=True,
        )
    _out.print(table)


# --- sign and keygen -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignResult:
    """What ``sign`` wrote."""

    read: ReadResult
    written: WriteResult

    @property
    def replaced_key_id(self) -> str | None:
        """The key id of a signature the source carried (now replaced), if any."""
        signature = self.read.bundle.signature
        return signature.key_id if signature is not None else None


def sign_file(
    source: Path, output: Path, key: Path, *, limits: BundleLimits, key_id: str | None = None
) -> SignResult:
    """Write ``source`` signed with ``key`` (canonical form, same compression, same ONNX bytes)."""
    private_key = load_private_key(key)
    with _decoded_model(source, limits) as (read, model):
        written = write_bundle(
            read.bundle, model, output, compress=read.compressed, signing_key=private_key, key_id=key_id
        )
    return SignResult(read, written)


@bundle_app.command()
def sign(
    file: BundleFile,
    key: Annotated[
        Path,
        typer.Option("--key", exists=True, dir_okay=False, readable=True, help="ed25519 private key (PEM)."),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", dir_okay=False, help="The signed bundle to write.")
    ],
    key_id: Annotated[
        str | None,
        typer.Option(
            "--key-id",
            help="Key id to record (default: the key's fingerprint). Verify with --trusted-key KEY_ID=PUB.",
        ),
    ] = None,
) -> None:
    """Sign a bundle with an ed25519 key (over its ONNX sha256 and canonical metadata)."""
    _check_output(output)
    result = sign_file(file, output, key, limits=_limits(), key_id=key_id)
    table = _render_written("[bold green]signed[/]", output, result.written)
    if result.replaced_key_id is not None:
        _row(table, "replaced", f"the previous signature by {result.replaced_key_id}")
    _out.print(table)


def create_key_pair(out_dir: Path, name: str) -> tuple[str, Path, Path]:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub`` in ``out_dir``; refuse to overwrite either."""
    if not name or Path(name).name != name or name.startswith("."):
        raise typer.BadParameter(f"{name!r} is not a plain file name", param_hint="--name")
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    out_dir.mkdir(parents=True, exist_ok=True)
    # generate_key_pair refuses (ConfigurationError, exit 1) when either file already exists.
    return generate_key_pair(private, public), private, public


@bundle_app.command()
def keygen(
    out_dir: Annotated[Path, typer.Option("--out-dir", file_okay=False, help="Directory for the key files.")],
    name: Annotated[str, typer.Option("--name", help="Base name of the key files.")] = "heimdall",
) -> None:
    """Generate an ed25519 key pair: NAME.key (private PEM, mode 0600) and NAME.pub (public PEM)."""
    key_id, private, public = create_key_pair(out_dir, name)
    table = _key_value_table("[bold green]key pair created[/]")
    _row(table, "key id", key_id)
    _row(table, "private key", f"{private} (keep it secret)")
    _row(table, "public key", str(public))
    _out.print(table)
    _out.print(
        f"[dim]sign: heimdall bundle sign FILE --key {escape(str(private))} -o OUT\n"
        f"verify: heimdall bundle verify FILE --trusted-key {escape(str(public))}[/]"
    )


# --- diff ------------------------------------------------------------------------------------------

ChangeKind = Literal["changed", "added", "removed"]


@dataclass(frozen=True)
class FieldChange:
    """One metadata field that differs: ``removed`` exists only in A, ``added`` only in B."""

    path: str
    kind: ChangeKind
    a: Any
    b: Any
    expected: bool


@dataclass(frozen=True)
class BundleDiff:
    """Everything ``diff`` compares, and whether it found a difference that counts."""

    a: ReadResult
    b: ReadResult
    fields: tuple[FieldChange, ...]
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]
    graph_a: StructuralReport
    graph_b: StructuralReport

    @property
    def onnx_equal(self) -> bool:
        """Same ONNX bytes."""
        return self.a.onnx_sha256 == self.b.onnx_sha256

    @property
    def graph_io_equal(self) -> bool:
        """Same graph inputs and outputs (names, dtypes, shapes)."""
        return (self.graph_a.inputs, self.graph_a.outputs) == (self.graph_b.inputs, self.graph_b.outputs)

    @property
    def counted(self) -> tuple[FieldChange, ...]:
        """The field changes that are not expected to differ."""
        return tuple(c for c in self.fields if not c.expected)

    @property
    def identical(self) -> bool:
        """Same model and metadata, apart from the fields expected to differ."""
        return (
            self.onnx_equal and self.graph_io_equal and not (self.counted or self.only_in_a or self.only_in_b)
        )

    def to_dict(self) -> dict[str, Any]:
        """The diff as ``diff --json`` prints it."""

        def graph(report: StructuralReport) -> dict[str, Any]:
            return {
                "opset": report.opset,
                "ir_version": report.ir_version,
                "node_count": report.node_count,
                "inputs": [_spec_dict(s) for s in report.inputs],
                "outputs": [_spec_dict(s) for s in report.outputs],
            }

        return {
            "identical": self.identical,
            "dialects": {"a": self.a.dialect, "b": self.b.dialect},
            "metadata": [
                {"path": c.path, "change": c.kind, "a": c.a, "b": c.b, "expected_to_differ": c.expected}
                for c in self.fields
            ],
            "components_only_in_a": list(self.only_in_a),
            "components_only_in_b": list(self.only_in_b),
            "onnx": {
                "equal": self.onnx_equal,
                "a_sha256": self.a.onnx_sha256,
                "b_sha256": self.b.onnx_sha256,
            },
            "graph": {"io_equal": self.graph_io_equal, "a": graph(self.graph_a), "b": graph(self.graph_b)},
        }


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    """Leaves of a JSON value by dotted path; lists of scalars (shapes, histories) are one leaf."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}[{index}]", out)
    else:
        out[prefix] = value


def _is_expected(path: str) -> bool:
    top = path.split(".", 1)[0].split("[", 1)[0]
    return path in IDENTITY_FIELDS or top in DERIVED_BLOCKS


def compare_metadata(
    a: Bundle, b: Bundle
) -> tuple[tuple[FieldChange, ...], tuple[str, ...], tuple[str, ...]]:
    """Field changes between two normalised bundles, and the components only one of them has."""
    components_a, components_b = set(a.components()), set(b.components())
    only_a = tuple(c for c in a.components() if c not in components_b)
    only_b = tuple(c for c in b.components() if c not in components_a)
    skip = set(only_a) | set(only_b)
    flat_a: dict[str, Any] = {}
    flat_b: dict[str, Any] = {}
    dump_a = {k: v for k, v in a.model_dump(mode="json", exclude_none=True).items() if k not in skip}
    dump_b = {k: v for k, v in b.model_dump(mode="json", exclude_none=True).items() if k not in skip}
    _flatten(dump_a, "", flat_a)
    _flatten(dump_b, "", flat_b)
    changes = []
    for path in [*flat_a, *(p for p in flat_b if p not in flat_a)]:
        in_a, in_b = path in flat_a, path in flat_b
        if in_a and in_b and flat_a[path] == flat_b[path]:
            continue
        kind: ChangeKind = "changed" if in_a and in_b else ("removed" if in_a else "added")
        changes.append(FieldChange(path, kind, flat_a.get(path), flat_b.get(path), _is_expected(path)))
    return tuple(changes), only_a, only_b


def diff_bundles(a: Path, b: Path, *, limits: BundleLimits) -> BundleDiff:
    """Compare two bundles: metadata (normalised), components, ONNX sha256, graph inputs/outputs.

    Both models go through the structural pass (in parallel; once when their bytes are equal) to
    read their graph inputs and outputs.
    """
    with _decoded_model(a, limits) as (read_a, model_a), _decoded_model(b, limits) as (read_b, model_b):
        if read_a.onnx_sha256 == read_b.onnx_sha256:
            graph_a = graph_b = check_structure(
                model_a, None, limits=limits, expected_sha256=read_a.onnx_sha256
            )
        else:
            with ThreadPoolExecutor(max_workers=2) as pool:
                future_a = pool.submit(
                    check_structure, model_a, None, limits=limits, expected_sha256=read_a.onnx_sha256
                )
                future_b = pool.submit(
                    check_structure, model_b, None, limits=limits, expected_sha256=read_b.onnx_sha256
                )
                graph_a, graph_b = future_a.result(), future_b.result()
    fields, only_a, only_b = compare_metadata(read_a.bundle, read_b.bundle)
    return BundleDiff(read_a, read_b, fields, only_a, only_b, graph_a, graph_b)


def _short(value: Any, present: bool, width: int = 60) -> str:
    if not present:
        return "[dim](absent)[/]"
    text = json.dumps(value, ensure_ascii=False)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _render_diff(diff: BundleDiff, name_a: str, name_b: str, console: Console = _out) -> None:
    console.print(Text(f"A: {name_a}\nB: {name_b}"))
    fields = Table(title="[bold]metadata[/]", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    fields.add_column("field", overflow="fold")
    fields.add_column("A", overflow="fold")
    fields.add_column("B", overflow="fold")
    for change in diff.fields:
        style = "dim" if change.expected else None
        label = escape(change.path) + (" [italic](expected to differ)[/]" if change.expected else "")
        fields.add_row(
            label,
            _short(change.a, change.kind != "added"),
            _short(change.b, change.kind != "removed"),
            style=style,
        )
    if diff.fields:
        console.print(fields)
    else:
        console.print("[bold]metadata[/]: identical")
    if diff.a.dialect != diff.b.dialect:
        console.print(f"dialects: A {diff.a.dialect}, B {diff.b.dialect} (compared in canonical form)")
    if diff.only_in_a:
        console.print(f"components only in A: [yellow]{', '.join(diff.only_in_a)}[/]")
    if diff.only_in_b:
        console.print(f"components only in B: [yellow]{', '.join(diff.only_in_b)}[/]")
    if diff.onnx_equal:
        console.print(f"onnx: [green]identical[/] (sha256 {diff.a.onnx_sha256})")
    else:
        console.print(
            f"onnx: [yellow]differs[/]\n  A sha256 {diff.a.onnx_sha256}\n  B sha256 {diff.b.onnx_sha256}"
        )
    graph = Table(
        title="[bold]graph inputs and outputs[/]", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    graph.add_column("")
    graph.add_column("A", overflow="fold")
    graph.add_column("B", overflow="fold")
    graph.add_column("")
    for kind, specs_a, specs_b in (
        ("input", diff.graph_a.inputs, diff.graph_b.inputs),
        ("output", diff.graph_a.outputs, diff.graph_b.outputs),
    ):
        for index in range(max(len(specs_a), len(specs_b))):
            spec_a = specs_a[index] if index < len(specs_a) else None
            spec_b = specs_b[index] if index < len(specs_b) else None
            same = spec_a == spec_b
            graph.add_row(
                f"{kind} {index}",
                escape(_fmt_spec(spec_a)) if spec_a else "[dim](none)[/]",
                escape(_fmt_spec(spec_b)) if spec_b else "[dim](none)[/]",
                "[green]same[/]" if same else "[yellow]differs[/]",
            )
    console.print(graph)
    counted = len(diff.counted)
    if diff.identical:
        expected = len(diff.fields)
        console.print(
            "[bold green]identical[/]"
            + (f" apart from {expected} field(s) expected to differ" if expected else "")
        )
    else:
        parts = []
        if counted:
            parts.append(f"{counted} metadata field(s)")
        if diff.only_in_a or diff.only_in_b:
            parts.append("components")
        if not diff.onnx_equal:
            parts.append("ONNX model")
        if not diff.graph_io_equal:
            parts.append("graph inputs/outputs")
        console.print(f"[bold yellow]differ[/]: {', '.join(parts)}")


@bundle_app.command()
def diff(
    a: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, metavar="A", help="Bundle A.")
    ],
    b: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, metavar="B", help="Bundle B.")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Show what differs between two bundles (metadata, components, ONNX model, graph I/O).

    Metadata fields are compared in canonical form (either dialect) and listed by dotted path,
    A -> B; then the components only in A or only in B, the ONNX sha256, and the graph inputs and
    outputs (names, dtypes, shapes) from the structural pass on both models.

    Fields expected to differ between two exports of the same model are shown but not counted:
    bundle_metadata.bundle_id, created_at and heimdall_version, and the integrity and signature
    blocks (the model is compared by its sha256).

    Exit status: 0 when the bundles carry the same ONNX model and the same metadata apart from those
    fields; 1 when anything else differs, or when a bundle is invalid (then with an error code on
    stderr); 2 on a usage error.
    """
    result = diff_bundles(a, b, limits=_limits())
    if as_json:
        _print_json({"a": str(a), "b": str(b), **result.to_dict()})
    else:
        _render_diff(result, a.name, b.name)
    if not result.identical:
        raise typer.Exit(1)
