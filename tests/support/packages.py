"""Real export packages for the export-package and deployment-package tests, and ways to read them.

One small two-head conv net (:class:`TwoHeadNet`) is exported to ONNX (:func:`build_model`). The
export-package tests package it once; :func:`build_export_packages` also converts it to FP16 and
statically quantises it to INT8 with the conversion job's own stages, and packages it three times by
the job's own ``write_export_package``: with all three precisions, with FP32 and FP16, and with FP32
alone (the other formats reported skipped, as a CPU job without them would). :func:`parse_pbtxt` and
:func:`graph_io` read a Triton configuration and the ONNX graph it must match.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from heimdall.contracts.jobs import BenchmarkReport, FormatOutcome, FormatStatus, ParityCheck
from heimdall.contracts.manifest import ExportFormat, Manifest, parse_manifest
from heimdall_batch.fp16 import build_fp16
from heimdall_batch.int8 import build_int8
from heimdall_batch.outputs import file_record
from heimdall_batch.package import write_export_package
from heimdall_batch.parity import torch_runner
from heimdall_batch.specs import IOSpec, io_spec

MEANS = [0.485, 0.456, 0.406]
STDS = [0.229, 0.224, 0.225]

MODEL_NAME = "tiny-loc"
#: What the packaged model returns (:class:`TwoHeadNet`), for the assertions.
OUTPUT_NAMES = ["positions", "uncertainties"]


class TwoHeadNet(nn.Module):
    """A conv net shaped like the localization net: positions and clamped uncertainties."""

    def __init__(self, height: int = 16, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        hidden = 4 * ((height + 1) // 2) * ((width + 1) // 2)
        self.positions = nn.Linear(hidden, 2)
        self.uncertainties = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.features(x)
        return self.positions(shared), torch.sigmoid(self.uncertainties(shared)).clamp(0.01, 1.0)


@dataclass
class Built:
    """A model exported into ``out_dir`` with everything ``write_export_package`` takes."""

    model: nn.Module
    manifest: Manifest
    spec: IOSpec
    out_dir: Path
    outcomes: list[FormatOutcome]
    benchmark: BenchmarkReport | None
    onnx_metadata: dict[str, Any]

    def package(self, out_dir: Path | None = None) -> Path:
        return write_export_package(
            out_dir or self.out_dir,
            self.manifest,
            self.spec,
            self.outcomes,
            self.benchmark,
            job_id="job-0001",
            onnx_metadata=self.onnx_metadata,
        )


def tiny_manifest(**overrides: Any) -> Manifest:
    """The manifest of :class:`TwoHeadNet` (``overrides`` replace its fields)."""
    document: dict[str, Any] = {
        "model_name": "tiny-loc",
        "version": "1.2.0",
        "architecture": "localization_net",
        "input_shape": [1, 3, 16, 8],
        "input_names": ["input"],
        "output_names": ["positions", "uncertainties"],
        "formats": ["onnx", "onnx_fp16", "tensorrt"],
        "normalization_stats": {"feature_means": MEANS, "feature_stds": STDS},
        "description": "A two-head test model | with a pipe",
    }
    document.update(overrides)
    return parse_manifest(document)


def build_model(out_dir: Path, manifest: Manifest) -> Built:
    """Export :class:`TwoHeadNet` to ONNX in ``out_dir`` with made-up outcomes and benchmark."""
    torch.manual_seed(0)
    model = TwoHeadNet().eval()
    spec = io_spec(manifest, model)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(*manifest.input_shape),),
            str(path),
            opset_version=manifest.opset,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx_metadata = {
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": proto.ir_version,
        "producer_name": proto.producer_name,
        "producer_version": proto.producer_version,
    }
    record = file_record(path)
    parity = [
        ParityCheck(batch_size=b, output=name, max_abs_err=1e-7, max_rel_err=1e-6, tolerance=1e-5,
                    finite=True, passed=True)
        for b in (1, 8) for name in spec.output_names
    ]
    outcomes = [
        FormatOutcome(format=ExportFormat.ONNX, status=FormatStatus.BUILT, file=path.name,
                      sha256=record.sha256, size_bytes=record.size_bytes, parity=parity,
                      latency_ms={"1": 0.05, "32": 0.4}),
        FormatOutcome(format=ExportFormat.ONNX_FP16, status=FormatStatus.SKIPPED,
                      reason="onnxconverter-common is not installed"),
        FormatOutcome(format=ExportFormat.TENSORRT, status=FormatStatus.SKIPPED, reason="no CUDA device"),
    ]
    benchmark = BenchmarkReport(hardware="Test CPU, 4 cores (CPU)", provider="CPUExecutionProvider",
                                torch_ms={"1": 0.2, "32": 1.0}, onnx_ms={"1": 0.05, "32": 0.4},
                                speedup={"1": 4.0, "32": 2.5}, runs=20)
    return Built(model, manifest, spec, out_dir, outcomes, benchmark, onnx_metadata)


@dataclass(frozen=True)
class ExportPackages:
    """Export packages of one model: ``full`` (FP32, FP16, INT8), ``fp16`` (FP32, FP16), ``fp32``."""

    built: Built
    full: Path
    fp16: Path
    fp32: Path


def _skipped(export_format: ExportFormat) -> FormatOutcome:
    return FormatOutcome(
        format=export_format, status=FormatStatus.SKIPPED, reason="not asked for in this test"
    )


def build_export_packages(work: Path) -> ExportPackages:
    """Export, convert and package the test model under ``work`` (about a second on two cores)."""
    manifest = tiny_manifest(
        formats=["onnx", "onnx_fp16", "onnx_int8"],
        calibration_samples=16,
        # The packages are under test here, not INT8's accuracy on a random, untrained net.
        tolerances={"onnx_int8": 0.5},
    )
    built = build_model(work / "job", manifest)
    reference = torch_runner(built.model)
    onnx_path = built.out_dir / "model.onnx"
    fp16 = build_fp16(onnx_path, built.out_dir, built.spec, manifest, reference, benchmark_runs=1)
    int8 = build_int8(onnx_path, built.out_dir, built.spec, manifest, reference, benchmark_runs=1)
    fp32 = built.outcomes[0]
    variants = {
        "full": [fp32, fp16, int8],
        "fp16": [fp32, fp16, _skipped(ExportFormat.ONNX_INT8)],
        "fp32": [fp32, _skipped(ExportFormat.ONNX_FP16), _skipped(ExportFormat.ONNX_INT8)],
    }
    paths = {}
    for label, outcomes in variants.items():
        written = write_export_package(
            built.out_dir,
            manifest,
            built.spec,
            outcomes,
            None,
            job_id=f"job-{label}",
            onnx_metadata=built.onnx_metadata,
        )
        paths[label] = written.rename(work / f"export-package-{label}.zip")
    return ExportPackages(built=built, full=paths["full"], fp16=paths["fp16"], fp32=paths["fp32"])


def rewrite_zip(
    source: Path,
    target: Path,
    *,
    replace: Mapping[str, bytes] | None = None,
    add: Iterable[tuple[zipfile.ZipInfo | str, bytes]] = (),
    drop: Iterable[str] = (),
    rehash: bool = False,
) -> Path:
    """Copy the zip ``source`` to ``target`` with members replaced, added or dropped.

    With ``rehash`` the replaced members' records in ``metadata.json`` are updated too, so that the
    package's checksums hold and only what the member says can be wrong.
    """
    replace = dict(replace or {})
    dropped = set(drop)
    with zipfile.ZipFile(source) as original:
        members = {info.filename: original.read(info) for info in original.infolist()}
        infos = {info.filename: info for info in original.infolist()}
    members.update(replace)
    if rehash and "metadata.json" in members:
        metadata = json.loads(members["metadata.json"])
        for name, data in replace.items():
            metadata["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
        members["metadata.json"] = json.dumps(metadata, indent=2).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            if name not in dropped:
                archive.writestr(infos.get(name, name), data)
        for info, data in add:
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return target


def member(path: Path, name: str) -> bytes:
    """One member of a zip."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


# --- Triton ---------------------------------------------------------------------------------------

_PBTXT_TOKEN = re.compile(r'\s*(?:([{}\[\]:,])|"([^"]*)"|([A-Za-z0-9_.+-]+))')


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """A small protobuf text-format reader: every field maps to the list of its values."""
    tokens: list[tuple[str, Any]] = []
    position = 0
    while text[position:].strip():
        match = _PBTXT_TOKEN.match(text, position)
        assert match, f"cannot read config.pbtxt at {text[position:position + 30]!r}"
        punct, quoted, word = match.groups()
        if punct:
            tokens.append(("punct", punct))
        elif quoted is not None:
            tokens.append(("value", quoted))
        else:
            tokens.append(("value", int(word) if re.fullmatch(r"-?\d+", word) else word))
        position = match.end()
    items = iter([*tokens, ("end", None)])

    def message(end: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        for kind, token in items:
            if kind == "end" or token == end:
                return fields
            following = next(items)
            if following == ("punct", ":"):
                following = next(items)
            value = value_of(following)
            fields.setdefault(token, []).extend(value if following == ("punct", "[") else [value])
        return fields

    def value_of(token: tuple[str, Any]) -> Any:
        if token == ("punct", "{"):
            return message("}")
        if token == ("punct", "["):
            values: list[Any] = []
            for item in items:
                if item == ("punct", "]"):
                    return values
                if item != ("punct", ","):
                    values.append(value_of(item))
        return token[1]

    return message(None)


_ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


def graph_io(path: Path) -> dict[str, tuple[str, list[int | str]]]:
    """The ONNX graph's inputs and outputs as Triton names their types, with their dimensions."""
    graph = onnx.load(str(path)).graph
    result = {}
    for value in [*graph.input, *graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        result[value.name] = (_ONNX_TO_TRITON[tensor.elem_type], dims)
    return result
