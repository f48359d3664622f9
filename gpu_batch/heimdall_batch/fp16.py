"""Stage: FP16 ONNX, converted from the FP32 model with onnxconverter-common.

Weights and activations become float16; the graph's inputs and outputs stay float32
(``keep_io_types=True``) so that callers, the export package's wrappers and the Triton configuration
see the same types as for the FP32 model. Casts at the edges convert in and out.

FP16 is a GPU format: ONNX Runtime's CPU provider has few float16 kernels and falls back to casts
around most operators, so on CPU it can be slower than FP32. The latencies recorded here are what
was measured, next to the FP32 model's, whichever way they go.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from heimdall.contracts.jobs import FormatOutcome
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.errors import ConversionError
from heimdall_batch.benchmark import latency_by_batch
from heimdall_batch.outputs import built_outcome
from heimdall_batch.parity import Runner, check_parity, onnx_runner
from heimdall_batch.specs import IOSpec

FP16_FILE_NAME = "model_fp16.onnx"
#: Batch sizes the latency is measured at (where the model's batch axis allows them).


def build_fp16(
    onnx_path: Path,
    out_dir: Path,
    spec: IOSpec,
    manifest: Manifest,
    reference: Runner,
    *,
    benchmark_runs: int = 50,
) -> FormatOutcome:
    """Convert the FP32 ONNX model at ``onnx_path`` to ``out_dir/model_fp16.onnx`` and validate it.

    The converted model passes ``onnx.checker`` (full check) and parity against ``reference`` (the
    PyTorch model) at ``manifest.tolerances.onnx_fp16``; otherwise a :class:`ConversionError` or
    :class:`~heimdall.errors.ParityError` is raised and no file is left behind. Latency is measured
    at batch 1 and 32 for both the FP16 and the FP32 model on the same provider.
    """
    import onnx  # noqa: PLC0415 - heavy: only the stages need it
    from onnxconverter_common import float16  # noqa: PLC0415

    path = out_dir / FP16_FILE_NAME
    fp32 = onnx.load(str(onnx_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # keep_io_types: float32 in and out, so every consumer sees the FP32 model's signature.
            converted = float16.convert_float_to_float16(fp32, keep_io_types=True)
        except Exception as exc:
            raise ConversionError(f"FP16 conversion failed: {type(exc).__name__}: {str(exc)[:500]}") from None
    # The converter clamps weights to +-[1e-7, 1e4] and warns once per tensor and side it clamps.
    clamped = [str(w.message) for w in caught if "truncated" in str(w.message)]
    converted.metadata_props.add(key="heimdall.precision", value="fp16")
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"the FP16 model fails onnx.checker: {str(exc)[:500]}") from None
    onnx.save(converted, str(path))
    try:
        try:
            candidate = onnx_runner(path)
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime cannot load the FP16 model: {type(exc).__name__}: {str(exc)[:500]}"
            ) from None
        checks = check_parity(
            reference,
            candidate,
            spec,
            tolerance=manifest.tolerances.onnx_fp16,
            label="onnx_fp16",
            manifest=manifest,
        )
    except BaseException:
        path.unlink(missing_ok=True)  # a model that failed validation is not an output
        raise
    latency = latency_by_batch(candidate, spec, manifest, runs=benchmark_runs)
    fp32_latency = latency_by_batch(onnx_runner(onnx_path), spec, manifest, runs=benchmark_runs)
    size = path.stat().st_size
    fp32_size = onnx_path.stat().st_size
    return built_outcome(
        ExportFormat.ONNX_FP16,
        path,
        parity=checks,
        latency_ms=latency,
        details={
            "io_types": "float32 (keep_io_types: casts at the inputs and outputs)",
            "fp32_size_bytes": fp32_size,
            "size_ratio": round(size / fp32_size, 4),
            "fp32_latency_ms": fp32_latency,
            "speedup": {k: round(fp32_latency[k] / v, 3) for k, v in latency.items() if v > 0},
            "provider": "CPUExecutionProvider",
            "clamp_warnings": len(clamped),
            "clamped": clamped[:3],
            "tolerance": manifest.tolerances.onnx_fp16,
        },
    )
