"""``heimdall bundle diff``: what differs between two bundles, and which differences count.

Metadata is compared in canonical form, leaf by dotted path; then the components only one bundle
has, the ONNX sha256, and the graph inputs and outputs from the structural pass on both models.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from heimdall.bundle.models import Bundle
from heimdall.bundle.reader import ReadResult
from heimdall.bundle.structural import StructuralReport, TensorSpec, check_structure
from heimdall.cli.bundle_common import (
    JsonFlag,
    bundle_console,
    bundle_limits,
    decoded_model,
    fmt_spec,
    print_json,
)
from heimdall.settings import BundleLimits

#: Metadata fields ``diff`` shows but does not count as a difference: the bundle's identity (a new
#: id and time on every export), the writer's version, and the blocks derived from the model or
#: attesting the rest (the ONNX bytes themselves are compared by sha256).
IDENTITY_FIELDS = frozenset(
    {"bundle_metadata.bundle_id", "bundle_metadata.created_at", "bundle_metadata.heimdall_version"}
)
DERIVED_BLOCKS = frozenset({"integrity", "signature"})


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.elem_type, "shape": list(spec.shape)}


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
    with decoded_model(a, limits) as (read_a, model_a), decoded_model(b, limits) as (read_b, model_b):
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


def render_diff(diff: BundleDiff, name_a: str, name_b: str, console: Console = bundle_console) -> None:
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
                escape(fmt_spec(spec_a)) if spec_a else "[dim](none)[/]",
                escape(fmt_spec(spec_b)) if spec_b else "[dim](none)[/]",
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
    result = diff_bundles(a, b, limits=bundle_limits())
    if as_json:
        print_json({"a": str(a), "b": str(b), **result.to_dict()})
    else:
        render_diff(result, a.name, b.name)
    if not result.identical:
        raise typer.Exit(1)
