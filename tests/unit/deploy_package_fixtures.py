"""Real export packages for the deployment-package tests, and a way to tamper with them.

One small two-head conv net (the one ``test_package`` packages) is exported to ONNX, converted to FP16
and statically quantised to INT8 with the conversion job's own stages, and packaged three times by
the job's own ``write_export_package``: with all three precisions, with FP32 and FP16, and with FP32
alone (the other formats reported skipped, as a CPU job without them would).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.unit.test_package import Built, _build, _manifest

from heimdall.contracts.jobs import FormatOutcome, FormatStatus
from heimdall.contracts.manifest import ExportFormat
from heimdall_batch.fp16 import build_fp16
from heimdall_batch.int8 import build_int8
from heimdall_batch.package import write_export_package
from heimdall_batch.parity import torch_runner

MODEL_NAME = "tiny-loc"
#: What the packaged model returns (TwoHeadNet of test_package), for the assertions.
OUTPUT_NAMES = ["positions", "uncertainties"]


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
    manifest = _manifest(
        formats=["onnx", "onnx_fp16", "onnx_int8"],
        calibration_samples=16,
        # The packages are under test here, not INT8's accuracy on a random, untrained net.
        tolerances={"onnx_int8": 0.5},
    )
    built = _build(work / "job", manifest)
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
