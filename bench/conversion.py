"""Benchmark: convert the localization_net reference model and report the pipeline's own numbers.

    python bench/conversion.py [--formats onnx,onnx_int8,onnx_fp16,torchscript] [--keep DIR]

Builds ``localization_net`` with seeded random weights, saves it as a safetensors checkpoint with a
``heimdall.json`` manifest, runs the real conversion pipeline (the same code as ``heimdall convert``
and the Batch job) and prints a table, then one JSON object on its last line with at least
``export_s``, ``torch_b1_ms``, ``ort_fp32_b1_ms``, ``speedup_b1``, ``torch_b32_ms``,
``ort_fp32_b32_ms``, ``speedup_b32``, ``int8_size_ratio``, ``int8_b1_ms``, ``fp32_max_abs_err``.
Targets on the development machine (2 cores): ``speedup_b1`` >= 2.5, ``fp32_max_abs_err`` <= 1e-5,
``int8_size_ratio`` <= 0.3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from heimdall.contracts.jobs import FormatStatus
from heimdall.contracts.manifest import ExportFormat
from heimdall_batch.architectures import resolve
from heimdall_batch.benchmark import hardware_name
from heimdall_batch.pipeline import ConversionOptions, run_conversion

MANIFEST = {
    "model_name": "localization-net",
    "version": "1.0.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "input_names": ["input"],
    "output_names": ["positions", "uncertainties"],
    "dynamic_batch": True,
    "opset": 17,
    "normalization_stats": {"feature_means": [0.485, 0.456, 0.406], "feature_stds": [0.229, 0.224, 0.225]},
}
TARGETS = {"speedup_b1_min": 2.5, "fp32_max_abs_err_max": 1e-5, "int8_size_ratio_max": 0.3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="onnx,onnx_int8,onnx_fp16,torchscript")
    parser.add_argument("--keep", type=Path, help="keep the outputs in this folder")
    args = parser.parse_args()
    formats = [ExportFormat(f.strip()) for f in args.formats.split(",") if f.strip()]

    work = Path(tempfile.mkdtemp(prefix="heimdall-bench-conversion-"))
    try:
        torch.manual_seed(0)
        model = resolve("localization_net")()
        checkpoint = work / "input" / "model.safetensors"
        checkpoint.parent.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
        (checkpoint.parent / "heimdall.json").write_text(
            json.dumps({**MANIFEST, "formats": [f.value for f in formats]})
        )
        out = args.keep or work / "output"
        started = time.perf_counter()
        result = run_conversion(
            checkpoint,
            out,
            ConversionOptions(job_id="bench-conversion", formats=formats),
            manifest=(checkpoint.parent / "heimdall.json").read_bytes(),
        )
        total_s = time.perf_counter() - started
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if result.status != "SUCCEEDED" or result.benchmark is None:
        raise SystemExit(f"conversion failed: {result.error_code}: {result.error_message}")
    stages = {s.name: s.seconds for s in result.stages}
    onnx = result.outcome(ExportFormat.ONNX)
    int8 = result.outcome(ExportFormat.ONNX_INT8)
    bench = result.benchmark
    figures: dict[str, Any] = {
        "export_s": stages.get("export_onnx"),
        "total_s": round(total_s, 2),
        "stages_s": stages,
        "torch_b1_ms": bench.torch_ms["1"],
        "ort_fp32_b1_ms": bench.onnx_ms["1"],
        "speedup_b1": bench.speedup["1"],
        "torch_b32_ms": bench.torch_ms["32"],
        "ort_fp32_b32_ms": bench.onnx_ms["32"],
        "speedup_b32": bench.speedup["32"],
        "fp32_max_abs_err": max(c.max_abs_err for c in onnx.parity) if onnx else None,
        "int8_size_ratio": None,
        "int8_b1_ms": None,
        "int8_max_abs_err": None,
        "formats": {o.format.value: o.status.value for o in result.formats},
        "hardware": hardware_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }
    if (
        int8 is not None
        and int8.status is FormatStatus.BUILT
        and onnx
        and onnx.size_bytes
        and int8.size_bytes
    ):
        figures["int8_size_ratio"] = round(int8.size_bytes / onnx.size_bytes, 4)
        figures["int8_b1_ms"] = int8.latency_ms.get("1")
        figures["int8_max_abs_err"] = max(c.max_abs_err for c in int8.parity)
    figures["targets"] = TARGETS
    figures["targets_met"] = {
        "speedup_b1": figures["speedup_b1"] >= TARGETS["speedup_b1_min"],
        "fp32_max_abs_err": (figures["fp32_max_abs_err"] or 1) <= TARGETS["fp32_max_abs_err_max"],
        "int8_size_ratio": figures["int8_size_ratio"] is not None
        and figures["int8_size_ratio"] <= TARGETS["int8_size_ratio_max"],
    }
    for key in (
        "export_s",
        "torch_b1_ms",
        "ort_fp32_b1_ms",
        "speedup_b1",
        "torch_b32_ms",
        "ort_fp32_b32_ms",
        "speedup_b32",
        "fp32_max_abs_err",
        "int8_size_ratio",
        "int8_b1_ms",
        "int8_max_abs_err",
    ):
        print(f"{key:<22} {figures[key]}")
    for o in result.formats:
        print(f"format {o.format.value:<12} {o.status.value:<8} {o.reason or ''}")
    print(f"hardware               {figures['hardware']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
