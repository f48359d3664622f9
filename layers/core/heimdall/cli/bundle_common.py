"""What the ``heimdall bundle`` commands share: limits, errors, output helpers and parameter types.

The configured :class:`~heimdall.settings.BundleLimits`, the typed error a verification report's code
names, the console and the JSON, size and tensor formatting every command prints with, the key/value
table of a written bundle, the temporary decoded model several operations work on, and the ``FILE``
and ``--json`` parameters.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from heimdall.bundle.models import Bundle, Component
from heimdall.bundle.reader import ReadResult, read_bundle
from heimdall.bundle.structural import TensorSpec
from heimdall.bundle.writer import WriteResult
from heimdall.errors import HeimdallError
from heimdall.settings import MIB, BundleLimits, get_settings

bundle_console = Console(highlight=False)


def bundle_limits(max_onnx_mb: float | None = None) -> BundleLimits:
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


def error_for(code: str, message: str, field: str | None) -> HeimdallError:
    """The typed error a report's code names, to be raised (and printed) like any other."""
    cls = _error_classes().get(code, HeimdallError)
    return cls(message, field=field)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def fmt_bytes(n: int) -> str:
    if n >= MIB:
        return f"{n:,} bytes ({n / MIB:.1f} MiB)"
    if n >= 1024:
        return f"{n:,} bytes ({n / 1024:.1f} KiB)"
    return f"{n:,} bytes"


def fmt_shape(shape: Any) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def fmt_spec(spec: TensorSpec) -> str:
    shape = fmt_shape(spec.shape) if spec.rank_known else "[rank unknown]"
    return f"{spec.name}: {spec.elem_type}{shape}"


def key_value_table(title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    return table


def table_row(table: Table, label: str, value: str, *, markup: bool = False) -> None:
    """Add a key/value row; the value is data (shown as is) unless ``markup``."""
    table.add_row(label, Text.from_markup(value) if markup else Text(value))


def _components_text(bundle: Bundle) -> str:
    parts = []
    for name in bundle.components():
        if name == Component.SAMPLE_PREDICTIONS and bundle.sample_predictions:
            parts.append(f"{name} ({len(bundle.sample_predictions)})")
        else:
            parts.append(name)
    return ", ".join(parts) or "none (model only)"


def check_output(path: Path, option: str = "--output") -> None:
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory; give a file name", param_hint=option)


@contextmanager
def decoded_model(source: Path, limits: BundleLimits) -> Iterator[tuple[ReadResult, Path]]:
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


def render_written(title: str, output: Path, written: WriteResult) -> Table:
    bundle = written.bundle
    table = key_value_table(title)
    table_row(table, "bundle id", bundle.bundle_metadata.bundle_id)
    table_row(
        table, "model", f"{bundle.model.model_name} {bundle.model.version} ({bundle.model.architecture})"
    )
    table_row(table, "output", str(output) + (" (gzip)" if written.compressed else ""))
    table_row(table, "size", fmt_bytes(written.bytes_written))
    table_row(table, "onnx sha256", written.onnx_sha256)
    table_row(table, "onnx size", fmt_bytes(written.onnx_size_bytes))
    table_row(table, "components", _components_text(bundle))
    table_row(table, "signature", f"signed by {bundle.signature.key_id}" if bundle.signature else "unsigned")
    return table
