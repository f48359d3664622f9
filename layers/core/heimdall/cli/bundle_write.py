"""``heimdall bundle pack``, ``migrate`` and ``upgrade``: the commands that write a new bundle.

``pack`` builds one from an ONNX model and META.json, ``migrate`` rewrites one in canonical form with
the same model bytes, ``upgrade`` rewrites one with its model converted to a newer opset. Each is an
*operation* returning what it did (used by the demo too) and a *rendering* of that result.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from heimdall.bundle.dialects import Dialect
from heimdall.bundle.models import FORMAT_VERSION, Bundle, ComponentSelection
from heimdall.bundle.reader import ReadResult, parse_metadata, read_bundle
from heimdall.bundle.signing import load_private_key

# The bundle's strict JSON parse (duplicate keys, NaN/Infinity, huge numbers, invalid UTF-8 refused)
# is what META.json must pass too.
from heimdall.bundle.strict_json import parse_json
from heimdall.bundle.structural import StructuralReport, check_structure
from heimdall.bundle.upgrade import ServingCheck, check_serving
from heimdall.bundle.verify import verify_bundle
from heimdall.bundle.writer import WriteResult, write_bundle
from heimdall.cli.bundle_common import (
    BundleFile,
    JsonFlag,
    bundle_console,
    bundle_limits,
    check_output,
    decoded_model,
    error_for,
    fmt_bytes,
    print_json,
    render_written,
    table_row,
)
from heimdall.cli.options import Description, NoConfig, NoMetrics, NoNormalization, NoSamples, NumSamples
from heimdall.errors import HeimdallError, InvalidBundle, TooLarge, UpgradeFailed
from heimdall.settings import BundleLimits

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
            f"{path} is {fmt_bytes(size)}, over the metadata limit of {fmt_bytes(limits.max_metadata_bytes)}"
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


def render_pack(result: PackResult, console: Console = bundle_console) -> None:
    table = render_written("[bold green]packed[/]", result.output, result.written)
    if result.structure is not None:
        s = result.structure
        table_row(table, "structural", f"passed (opset {s.opset}, {s.node_count} nodes, shapes agree)")
    else:
        table_row(table, "structural", "[yellow]skipped (--no-check)[/]", markup=True)
    if result.metadata_dialect != "canonical":
        table_row(table, "metadata", f"{result.metadata_dialect} dialect, written in canonical form")
    if result.ignored:
        table_row(
            table, "ignored", ", ".join(result.ignored) + " from the metadata file (about other model bytes)"
        )
    console.print(table)


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
    check_output(output)
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
        limits=bundle_limits(),
        selection=selection,
        compress=gzip,
        signing_key=sign_key,
        key_id=key_id,
        description=description,
        check=check,
    )
    render_pack(result)


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
    with decoded_model(source, limits) as (before, model):
        written = write_bundle(before.bundle, model, output, compress=compress)
    after = read_bundle(output, limits=limits)
    if after.onnx_sha256 != before.onnx_sha256:  # the writer's contract; checked, not assumed
        raise HeimdallError(f"the rewritten model's sha256 {after.onnx_sha256} differs from the source's")
    return MigrateResult(before, after, written)


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
    check_output(output)
    result = migrate_file(file, output, limits=bundle_limits(), compress=gzip)
    table = render_written("[bold green]migrated[/]", output, result.written)
    table_row(table, "dialect", f"{result.before.dialect} -> {result.after.dialect}")
    table_row(table, "onnx", "unchanged (same sha256)")
    fate = result.signature
    if fate == "kept":
        table_row(table, "source signature", "kept (the signed metadata did not change)")
    elif fate == "dropped":
        table_row(
            table,
            "source signature",
            "[yellow]dropped: the canonical form changed what it covered; re-sign[/]",
            markup=True,
        )
    bundle_console.print(table)


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
            raise error_for(report.code or "INVALID_BUNDLE", report.message or "invalid bundle", report.field)
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
    check_output(output)
    result = upgrade_file(file, output, opset=opset, limits=bundle_limits())
    upgrade_done = result.check.upgrade
    assert upgrade_done is not None  # upgrade_file raised otherwise
    dropped = result.before.bundle.signature is not None
    if as_json:
        print_json(
            {
                "output": str(output),
                "onnx_sha256_before": result.before.onnx_sha256,
                "onnx_sha256": result.written.onnx_sha256,
                "upgrade": upgrade_done.model_dump(mode="json", exclude={"onnx_key"}),
                "signature_dropped": dropped,
            }
        )
        return
    table = render_written("[bold green]upgraded[/]", output, result.written)
    table_row(
        table, "opset", f"{upgrade_done.from_opset} -> {upgrade_done.to_opset} ({upgrade_done.converter})"
    )
    table_row(table, "source onnx sha256", result.before.onnx_sha256)
    checked = upgrade_done.samples_checked
    table_row(
        table,
        "samples",
        f"{checked} checked, max abs error {upgrade_done.max_abs_error:.3g}"
        if checked and upgrade_done.max_abs_error is not None
        else "none carry the model's inputs: loaded in ONNX Runtime only",
    )
    if dropped:
        table_row(
            table,
            "source signature",
            "[yellow]dropped: the ONNX bytes changed, so it no longer holds; re-sign with "
            "`heimdall bundle sign`[/]",
            markup=True,
        )
    bundle_console.print(table)
