"""Stage: INT8 ONNX with ONNX Runtime's quantiser.

**Static** quantisation is the default (``manifest.int8_mode == "static"``): the model is calibrated
on representative inputs (given by the caller, or generated from the manifest's normalisation stats
with :func:`~heimdall_batch.specs.random_inputs`) and written in QDQ form, which is what ONNX Runtime
and TensorRT both optimise. Weights are int8 per output channel; activations are uint8, as ONNX
Runtime recommends for x86 CPUs (its u8s8 kernels are the fast ones there), with 7-bit weight range
(``reduce_range``) so that CPUs without VNNI do not saturate their 16-bit intermediate sums.

**Dynamic** quantisation (``int8_mode == "dynamic"``, only when asked for) quantises the weights only
and the activations at run time. It needs no calibration, but for convolutional networks on CPU it is
usually *slower* than FP32 (``ConvInteger`` has no fast kernel, and the activations are re-quantised
on every call); it suits MatMul-heavy models such as transformers.

:func:`quantize_qdq` with ``target="tensorrt"`` writes the symmetric int8 variant TensorRT's explicit
quantisation needs (zero points of 0 for activations too); the TensorRT stage builds INT8 engines
from it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from heimdall.contracts.jobs import FormatOutcome
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.errors import ConversionError
from heimdall_batch.benchmark import latency_by_batch
from heimdall_batch.outputs import built_outcome
from heimdall_batch.parity import Runner, check_parity, onnx_runner
from heimdall_batch.specs import IOSpec, random_inputs

logger = logging.getLogger(__name__)

INT8_FILE_NAME = "model_int8.onnx"
#: Seed of the generated calibration inputs: the same model calibrates the same way every time.
CALIBRATION_SEED = 20_240_917

QuantTarget = Literal["cpu", "tensorrt"]

#: The QDQ form TensorRT's explicit quantisation expects (the quantiser's own notes on TensorRT): zero
#: points of 0, biases left in float (TensorRT has no int32 dequantisation; it fuses biases itself),
#: float weights behind a Q/DQ pair, and a Q/DQ pair of its own for every consumer.
_TENSORRT_QDQ = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": True,
}


class CalibrationFeed:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over batches of named inputs.

    ``get_next`` returns the next batch, or ``None`` when there are no more; ``yielded`` counts the
    batches handed out. Each batch must name exactly the model's inputs (arrays, converted to float32) whose
    non-batch dimensions match the spec: a mismatch is a :class:`ConversionError` rather than an
    obscure failure inside the calibrator.
    """

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], spec: IOSpec) -> None:
        self._batches: Iterator[Mapping[str, np.ndarray]] = iter(batches)
        self._spec = spec
        self.yielded = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration batch, or ``None`` at the end."""
        batch = next(self._batches, None)
        if batch is None:
            return None
        checked = self._checked(batch)
        self.yielded += 1
        return checked

    def _checked(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._spec.input_names
        if sorted(batch) != sorted(names):
            raise ConversionError(
                f"calibration batch {self.yielded + 1} has inputs {sorted(batch)}, the model takes {names}"
            )
        out = {}
        for tensor in self._spec.inputs:
            array = np.ascontiguousarray(batch[tensor.name], dtype=np.float32)
            expected = list(tensor.shape[1:])
            if list(array.shape[1:]) != expected:
                raise ConversionError(
                    f"calibration batch {self.yielded + 1}: input {tensor.name!r} has shape "
                    f"{list(array.shape)}, expected [batch, {', '.join(str(d) for d in expected)}]"
                )
            out[tensor.name] = array
        return out


def representative_batches(
    spec: IOSpec, manifest: Manifest, *, count: int | None = None, seed: int = CALIBRATION_SEED
) -> Iterator[dict[str, np.ndarray]]:
    """``count`` (default ``manifest.calibration_samples``) calibration batches of one sample each
    (of the fixed batch size when the batch axis is not dynamic), drawn through the manifest's
    normalisation stats when it has them."""
    rng = np.random.default_rng(seed)
    batch = 1 if spec.dynamic_batch else spec.fixed_batch_size
    for _ in range(manifest.calibration_samples if count is None else count):
        yield random_inputs(spec, batch, rng, manifest)


def quantize_qdq(
    onnx_path: Path, out_path: Path, feed: CalibrationFeed, *, target: QuantTarget = "cpu"
) -> None:
    """Statically quantise ``onnx_path`` into QDQ form at ``out_path``, calibrated on ``feed``.

    ``cpu``: uint8 activations, int8 per-channel weights with reduced range (ONNX Runtime's advice
    for x86). ``tensorrt``: int8 activations and weights, both symmetric (TensorRT requires zero
    points of 0), per channel, full range, float biases. The model first goes through ONNX Runtime's
    ``quant_pre_process`` (shape inference and graph clean-up), which the quantiser recommends.
    """
    from onnxruntime.quantization import (  # noqa: PLC0415 - heavy: only this stage needs it
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="heimdall-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(onnx_path), str(prepared))
        except Exception as exc:
            # Pre-processing is an optimisation of the quantiser's input, not a requirement.
            logger.warning(
                "quant_pre_process failed (%s: %s); quantising the model as exported", type(exc).__name__, exc
            )
            prepared = onnx_path
        cpu = target == "cpu"
        try:
            quantize_static(
                str(prepared),
                str(out_path),
                feed,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=cpu,
                activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={} if cpu else _TENSORRT_QDQ,
            )
        except ConversionError:
            raise
        except Exception as exc:
            if feed.yielded == 0:
                raise ConversionError(
                    "static INT8 quantisation needs calibration data, and none was given"
                ) from None
            raise ConversionError(
                f"static INT8 quantisation failed: {type(exc).__name__}: {str(exc)[:500]}"
            ) from None

    _drop_unused_opsets(out_path)


def build_int8(
    onnx_path: Path,
    out_dir: Path,
    spec: IOSpec,
    manifest: Manifest,
    reference: Runner,
    *,
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
    benchmark_runs: int = 50,
) -> FormatOutcome:
    """Quantise the FP32 ONNX model at ``onnx_path`` to ``out_dir/model_int8.onnx`` and validate it.

    Static mode calibrates on ``calibration`` when given, else on ``manifest.calibration_samples``
    representative batches (:func:`representative_batches`). Dynamic mode (only when the manifest
    asks for it) needs none. The result passes ``onnx.checker`` and parity against ``reference``
    (PyTorch) at ``manifest.tolerances.onnx_int8``; otherwise an error is raised and no file is left.
    """
    import onnx  # noqa: PLC0415 - heavy: only the stages need it

    path = out_dir / INT8_FILE_NAME
    mode = manifest.int8_mode
    details: dict[str, object] = {"mode": mode}
    try:
        if mode == "static":
            stats = manifest.normalization_stats
            source = (
                "provided"
                if calibration is not None
                else (
                    "normalization_stats"
                    if stats is not None and stats.means_and_stds() is not None  # partial stats: unused
                    else "standard_normal"
                )
            )
            feed = CalibrationFeed(
                calibration if calibration is not None else representative_batches(spec, manifest), spec
            )
            quantize_qdq(onnx_path, path, feed, target="cpu")
            details.update(
                calibration_samples=feed.yielded,
                calibration_source=source,
                calibration_method="minmax",
                quant_format="QDQ",
                activations="uint8 (asymmetric)",
                weights="int8 per channel, reduced range (7 bit)",
            )
        else:
            _quantize_dynamic(onnx_path, path)
            details.update(
                calibration_samples=0,
                weights="int8 per tensor",
                activations="uint8, quantised at run time",
                note="dynamic INT8 is usually slower than FP32 for convolutional networks on CPU",
            )
        proto = onnx.load(str(path))
        proto.metadata_props.add(key="heimdall.precision", value=f"int8-{mode}")
        try:
            onnx.checker.check_model(proto, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ConversionError(f"the INT8 model fails onnx.checker: {str(exc)[:500]}") from None
        onnx.save(proto, str(path))
        try:
            candidate = onnx_runner(path)
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime cannot load the INT8 model: {type(exc).__name__}: {str(exc)[:500]}"
            ) from None
        checks = check_parity(
            reference,
            candidate,
            spec,
            tolerance=manifest.tolerances.onnx_int8,
            label=f"onnx_int8 ({mode})",
            manifest=manifest,
        )
    except BaseException:
        path.unlink(missing_ok=True)  # a model that failed validation is not an output
        raise
    latency = latency_by_batch(candidate, spec, manifest, runs=benchmark_runs)
    fp32_latency = latency_by_batch(onnx_runner(onnx_path), spec, manifest, runs=benchmark_runs)
    size = path.stat().st_size
    fp32_size = onnx_path.stat().st_size
    details.update(
        fp32_size_bytes=fp32_size,
        size_ratio=round(size / fp32_size, 4),
        fp32_latency_ms=fp32_latency,
        speedup={k: round(fp32_latency[k] / v, 3) for k, v in latency.items() if v > 0},
        fp32_b1_ms=fp32_latency.get("1"),
        int8_b1_ms=latency.get("1"),
        provider="CPUExecutionProvider",
        tolerance=manifest.tolerances.onnx_int8,
    )
    return built_outcome(ExportFormat.ONNX_INT8, path, parity=checks, latency_ms=latency, details=details)


def _drop_unused_opsets(path: Path) -> None:
    """Remove opset imports no node uses. ``quant_pre_process`` runs ONNX Runtime's optimiser, which
    declares every domain it knows (``com.microsoft``, ``org.pytorch.aten``...) even when the graph
    uses only standard operators; other runtimes and validators need not accept those."""
    import onnx  # noqa: PLC0415

    def domains(graph: Any) -> set[str]:
        found = set()
        for node in graph.node:
            found.add(node.domain)
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.HasField("g") else []
                for sub in [*subgraphs, *attribute.graphs]:
                    found |= domains(sub)
        return found

    proto = onnx.load(str(path))
    used = domains(proto.graph) | {""}
    kept = [o for o in proto.opset_import if o.domain in used or o.domain == "ai.onnx"]
    if len(kept) != len(proto.opset_import):
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
        onnx.save(proto, str(path))


def _quantize_dynamic(onnx_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    try:
        quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8)
    except Exception as exc:
        raise ConversionError(
            f"dynamic INT8 quantisation failed: {type(exc).__name__}: {str(exc)[:500]}"
        ) from None
    _drop_unused_opsets(out_path)
