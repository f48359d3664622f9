"""Stage: FP16 ONNX, converted from the FP32 model with ONNX Runtime's own float16 converter.

Weights and activations become float16; the graph's inputs and outputs stay float32
(``keep_io_types=True``) so that callers, the export package's wrappers and the Triton configuration
see the same types as for the FP32 model. Casts at the edges convert in and out.

The converter is ``onnxruntime.transformers.float16``, not onnxconverter-common's: on attention graphs
(``nn.MultiheadAttention``'s export holds Casts to float) onnxconverter-common left Casts whose
declared type disagreed with their ``to`` attribute, and the model failed ``onnx.checker``. ONNX
Runtime's converter keeps the operators ORT has no float16 kernel for in float32 (its op block list)
and rewrites those Casts correctly, but appends the input casts at the end of the node list, so the
graph is sorted topologically afterwards (ONNX requires that order, and the checker enforces it).

FP16 is a GPU format: ONNX Runtime's CPU provider has few float16 kernels and falls back to casts
around most operators, so on CPU it can be slower than FP32. The latencies recorded here are what
was measured, next to the FP32 model's, whichever way they go.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from heimdall.contracts.jobs import FormatOutcome
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.errors import ConversionError
from heimdall_batch.benchmark import latency_by_batch
from heimdall_batch.outputs import built_outcome
from heimdall_batch.parity import Runner, check_parity, onnx_runner
from heimdall_batch.specs import IOSpec

if TYPE_CHECKING:
    from onnx import ModelProto

FP16_FILE_NAME = "model_fp16.onnx"
#: The largest finite float16 and the smallest positive (subnormal) one: the converter clamps weights
#: into this range, keeping sign and finiteness (the defaults of ONNX Runtime's converter).
FP16_MAX = 65504.0
FP16_MIN_POSITIVE = 5.96e-08


def to_fp16(fp32: ModelProto) -> ModelProto:
    """``fp32`` converted to float16 inside, float32 at its inputs and outputs, topologically sorted.

    Raises :class:`ConversionError` when the converter fails; the result is not checked here
    (:func:`build_fp16` checks it).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415 - heavy
    from onnxruntime.transformers.onnx_model import OnnxModel  # noqa: PLC0415

    try:
        converted = convert_float_to_float16(
            fp32, min_positive_val=FP16_MIN_POSITIVE, max_finite_val=FP16_MAX, keep_io_types=True
        )
        model = OnnxModel(converted)
        model.topological_sort(is_deterministic=True)
    except Exception as exc:
        raise ConversionError(f"FP16 conversion failed: {type(exc).__name__}: {str(exc)[:500]}") from None
    result: ModelProto = model.model
    return result


def clamped_initializers(fp32: ModelProto) -> list[str]:
    """Names of ``fp32``'s float32 weights holding values float16 cannot hold (clamped on conversion).

    ONNX Runtime's converter clamps silently (it logs at debug level only), so the stage counts them
    itself: a model with many is a model whose FP16 parity deserves a second look.
    """
    import numpy as np  # noqa: PLC0415
    from onnx import TensorProto, numpy_helper  # noqa: PLC0415

    names = []
    for tensor in fp32.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT:
            continue
        magnitude = np.abs(numpy_helper.to_array(tensor))
        if np.any(magnitude > FP16_MAX) or np.any((magnitude > 0) & (magnitude < FP16_MIN_POSITIVE)):
            names.append(tensor.name)
    return names


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

    The converted model passes ``onnx.checker`` (full check), loads in ONNX Runtime and passes parity
    against ``reference`` (the PyTorch model) at ``manifest.tolerances.onnx_fp16``; otherwise a
    :class:`ConversionError` or :class:`~heimdall.errors.ParityError` is raised and no file is left
    behind. Latency is measured at batch 1 and 32 for both the FP16 and the FP32 model on the same
    provider.
    """
    import onnx  # noqa: PLC0415 - heavy: only the stages need it

    path = out_dir / FP16_FILE_NAME
    fp32 = onnx.load(str(onnx_path))
    clamped = clamped_initializers(fp32)
    converted = to_fp16(fp32)
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
            "converter": "onnxruntime.transformers.float16",
            "io_types": "float32 (keep_io_types: casts at the inputs and outputs)",
            "fp32_size_bytes": fp32_size,
            "size_ratio": round(size / fp32_size, 4),
            "fp32_latency_ms": fp32_latency,
            "speedup": {k: round(fp32_latency[k] / v, 3) for k, v in latency.items() if v > 0},
            "provider": "CPUExecutionProvider",
            "clamped_initializers": len(clamped),
            "clamped": clamped[:3],
            "tolerance": manifest.tolerances.onnx_fp16,
        },
    )
