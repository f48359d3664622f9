"""Stage: TensorRT engine (GPU only), behind the :class:`EngineBuilder` interface.

TensorRT cannot be installed on development machines, so the stage talks to a builder through a
small interface: :class:`TensorRTBuilder` is the real implementation (TensorRT Python API, run in the
Batch image on an NVIDIA base image); unit tests use a fake. Without a CUDA device or without
TensorRT the stage reports ``skipped`` with the reason, and never writes an engine.

Engines are not portable: one built for a GPU compute capability and a TensorRT version runs only
there. The engine file is therefore named for both (``model_sm90_trt10.3.0_fp16.engine``), and the
timing cache (the builder's measured tactic timings, which make rebuilds much faster) is kept per
pair as well (``timing-cache-sm90-trt10.3.0.bin``).

Precision:

- ``fp32``: the FP32 ONNX model as it is.
- ``fp16``: ``BuilderFlag.FP16`` where TensorRT still has it (up to 10.x); TensorRT 11 builds
  strongly typed networks only, so there the builder converts the model to FP16 ONNX first (float32
  inputs and outputs kept).
- ``int8``: explicit quantisation only. Implicit INT8 with a calibrator is deprecated since
  TensorRT 10.1 and removed in 11, so the stage quantises the model to symmetric int8 QDQ
  (:func:`heimdall_batch.int8.quantize_qdq` with ``target="tensorrt"``), calibrated like the INT8
  ONNX format, and the builder refuses an ``int8`` build from a model without Q/DQ nodes. Its parity
  tolerance is the INT8 one (``tolerances.onnx_int8``): the error budget follows the precision.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from heimdall.contracts.jobs import FormatOutcome, FormatStatus
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.errors import ConversionError
from heimdall_batch.benchmark import BENCHMARK_BATCH_SIZES, latency_by_batch
from heimdall_batch.outputs import built_outcome
from heimdall_batch.parity import Inputs, Runner, check_parity
from heimdall_batch.specs import IOSpec

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
Shape = tuple[int, ...]
#: Per input name: the (min, opt, max) shapes of the optimisation profile.
Profile = Mapping[str, tuple[Shape, Shape, Shape]]

#: Oldest TensorRT the builder supports: named I/O tensors and ``execute_async_v3`` arrived in 8.5.
MIN_TENSORRT = (8, 5)
_GIB = 1 << 30


@dataclass(frozen=True)
class BuildTarget:
    """What an engine built here is tied to: the GPU's compute capability and the TensorRT version."""

    #: Major and minor digits, e.g. ``"90"`` for an H100, ``"86"`` for an A10G.
    compute_capability: str
    #: ``major.minor.patch``, e.g. ``"10.3.0"``.
    tensorrt_version: str


@dataclass(frozen=True)
class EngineBuild:
    """The result of one engine build."""

    #: The builder's timing cache after the build (the input cache plus what this build measured).
    timing_cache: bytes
    tensorrt_version: str
    compute_capability: str
    #: Whether a non-empty input timing cache was given and accepted by TensorRT.
    timing_cache_accepted: bool = False


class EngineBuilder(Protocol):
    """Builds and runs TensorRT engines; :class:`TensorRTBuilder` is the real one."""

    def availability(self) -> str | None:
        """``None`` when engines can be built here, else why not (e.g. ``"no CUDA device"``)."""
        ...

    def target(self) -> BuildTarget:
        """The compute capability and TensorRT version an engine built now is tied to."""
        ...

    def build(
        self,
        onnx_path: Path,
        engine_path: Path,
        *,
        precision: Precision,
        profile: Profile,
        workspace_bytes: int,
        timing_cache: bytes | None,
    ) -> EngineBuild:
        """Build an engine from ``onnx_path`` and write it to ``engine_path``."""
        ...

    def runner(self, engine_path: Path) -> Runner:
        """Run the engine at ``engine_path`` on named numpy inputs (outputs in graph order)."""
        ...


def timing_cache_name(compute_capability: str, trt_version: str) -> str:
    """File name of the timing cache of one GPU kind and TensorRT version, e.g.
    ``timing-cache-sm90-trt10.3.0.bin``."""
    return f"timing-cache-sm{compute_capability}-trt{trt_version}.bin"


def engine_file_name(compute_capability: str, trt_version: str, precision: str) -> str:
    """File name of an engine, e.g. ``model_sm90_trt10.3.0_fp16.engine``."""
    return f"model_sm{compute_capability}_trt{trt_version}_{precision}.engine"


def build_tensorrt(
    onnx_path: Path,
    out_dir: Path,
    spec: IOSpec,
    manifest: Manifest,
    onnx_reference: Runner,
    *,
    timing_cache_in: Path | None,
    timing_cache_out: Path | None,
    builder: EngineBuilder | None = None,
    benchmark_runs: int = 50,
) -> FormatOutcome:
    """Build a TensorRT engine from the FP32 ONNX model at ``onnx_path`` into ``out_dir``.

    Skipped, with the builder's reason and without writing anything, when TensorRT cannot run here.
    Otherwise: the timing cache is read from ``timing_cache_in`` when it exists, the engine is built
    with the manifest's precision, batch profile and workspace, the updated cache is written to
    ``timing_cache_out``, and the engine is checked against ``onnx_reference`` (ONNX Runtime) at the
    profile's smallest and largest batch sizes. A timing-cache path that is a directory (or has no
    suffix) names a folder of caches: the file in it is :func:`timing_cache_name` of this GPU and
    TensorRT version. A failed parity check raises :class:`~heimdall.errors.ParityError` and removes
    the engine (the updated timing cache is kept: it is valid either way).
    """
    builder = builder if builder is not None else TensorRTBuilder()
    options = manifest.tensorrt
    precision: Precision = options.precision
    min_b, opt_b, max_b = _batch_profile(spec, manifest)
    summary: dict[str, Any] = {
        "precision": precision,
        "profile": {"min": min_b, "opt": opt_b, "max": max_b},
        "workspace_gb": options.workspace_gb,
    }
    reason = builder.availability()
    if reason is not None:
        return FormatOutcome(
            format=ExportFormat.TENSORRT, status=FormatStatus.SKIPPED, reason=reason, details=summary
        )

    target = builder.target()
    cache_in = _cache_file(timing_cache_in, target.compute_capability, target.tensorrt_version)
    cached = cache_in.read_bytes() if cache_in is not None and cache_in.is_file() else None
    profile = {
        t.name: (spec.input_shape(min_b, i), spec.input_shape(opt_b, i), spec.input_shape(max_b, i))
        for i, t in enumerate(spec.inputs)
    }
    partial = out_dir / ".model.engine.partial"
    try:
        with tempfile.TemporaryDirectory(prefix="heimdall-trt-") as tmp:
            source = onnx_path
            if precision == "int8":
                source = _tensorrt_qdq_model(onnx_path, Path(tmp) / "model_int8_qdq.onnx", spec, manifest)
            build = builder.build(
                source,
                partial,
                precision=precision,
                profile=profile,
                workspace_bytes=int(options.workspace_gb * _GIB),
                timing_cache=cached,
            )
        engine_path = out_dir / engine_file_name(build.compute_capability, build.tensorrt_version, precision)
        partial.replace(engine_path)
    finally:
        partial.unlink(missing_ok=True)

    cache_out = _cache_file(timing_cache_out, build.compute_capability, build.tensorrt_version)
    if cache_out is not None:
        _write_atomically(cache_out, build.timing_cache)

    tolerance = manifest.tolerances.onnx_int8 if precision == "int8" else manifest.tolerances.tensorrt
    try:
        candidate = builder.runner(engine_path)
        checks = check_parity(
            onnx_reference,
            candidate,
            spec,
            tolerance=tolerance,
            label=f"tensorrt ({precision})",
            manifest=manifest,
            batch_sizes=sorted({min_b, max_b}),
        )
    except BaseException:
        engine_path.unlink(missing_ok=True)  # an engine that failed validation is not an output
        raise
    sizes = [b for b in BENCHMARK_BATCH_SIZES if min_b <= b <= max_b] or sorted({min_b, max_b})
    latency = latency_by_batch(candidate, spec, manifest, runs=benchmark_runs, batch_sizes=sizes)
    return built_outcome(
        ExportFormat.TENSORRT,
        engine_path,
        parity=checks,
        latency_ms=latency,
        details={
            **summary,
            "tensorrt_version": build.tensorrt_version,
            "compute_capability": build.compute_capability,
            "timing_cache_hit": cached is not None and build.timing_cache_accepted,
            "timing_cache_file": cache_out.name if cache_out is not None else None,
            "tolerance": tolerance,
            "reference": "onnxruntime (fp32)",
            "latency_includes": "host-to-device and device-to-host copies",
        },
    )


def _batch_profile(spec: IOSpec, manifest: Manifest) -> tuple[int, int, int]:
    """(min, opt, max) batch sizes: the manifest's with a dynamic batch axis, else the fixed size."""
    if spec.dynamic_batch:
        return manifest.tensorrt.profile
    fixed = spec.inputs[0].shape[0]
    size = fixed if isinstance(fixed, int) else manifest.input_shape[0]
    return size, size, size


def _cache_file(path: Path | None, compute_capability: str, trt_version: str) -> Path | None:
    """The timing-cache file ``path`` names: itself, or the per-target file in a cache folder."""
    if path is None:
        return None
    if path.is_dir() or not path.suffix:
        return path / timing_cache_name(compute_capability, trt_version)
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    # A job killed mid-write must not leave a truncated cache for the next build to read.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _tensorrt_qdq_model(onnx_path: Path, out_path: Path, spec: IOSpec, manifest: Manifest) -> Path:
    """The symmetric int8 QDQ model TensorRT builds INT8 engines from."""
    from heimdall_batch.int8 import CalibrationFeed, quantize_qdq, representative_batches  # noqa: PLC0415

    feed = CalibrationFeed(representative_batches(spec, manifest), spec)
    quantize_qdq(onnx_path, out_path, feed, target="tensorrt")
    return out_path


# --- the real builder ------------------------------------------------------------------------------


class TensorRTBuilder:
    """:class:`EngineBuilder` on the TensorRT Python API, with torch CUDA tensors as I/O buffers.

    Needs a CUDA device, TensorRT 8.5 or newer and PyTorch with CUDA. ``tensorrt`` is imported inside
    the methods: importing this module never needs it.
    """

    def __init__(self, *, device: int = 0) -> None:
        self.device = device

    def availability(self) -> str | None:
        """``None`` when usable; otherwise the reason (no CUDA device, TensorRT missing or too old)."""
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            return "PyTorch is not installed"
        if not torch.cuda.is_available():
            return "no CUDA device"
        try:
            import tensorrt as trt  # noqa: PLC0415
        except ImportError:
            return "TensorRT is not installed (the tensorrt Python package cannot be imported)"
        except Exception as exc:  # e.g. libnvinfer missing, or built for another CUDA
            return f"TensorRT cannot be loaded: {type(exc).__name__}: {str(exc)[:200]}"
        if _version_tuple(trt.__version__) < MIN_TENSORRT:
            return f"TensorRT {trt.__version__} is too old (8.5 or newer is needed)"
        return None

    def target(self) -> BuildTarget:
        """This process's GPU and TensorRT."""
        import tensorrt as trt  # noqa: PLC0415
        import torch  # noqa: PLC0415

        major, minor = torch.cuda.get_device_capability(self.device)
        version = _short_version(trt.__version__)
        return BuildTarget(compute_capability=f"{major}{minor}", tensorrt_version=version)

    def build(
        self,
        onnx_path: Path,
        engine_path: Path,
        *,
        precision: Precision,
        profile: Profile,
        workspace_bytes: int,
        timing_cache: bytes | None,
    ) -> EngineBuild:
        """Parse ``onnx_path``, build a serialized engine and write it to ``engine_path``.

        Parser errors and the builder's error messages end up in the :class:`ConversionError`.
        """
        import tensorrt as trt  # noqa: PLC0415
        import torch  # noqa: PLC0415

        target = self.target()
        log = _collecting_logger(trt)
        with torch.cuda.device(self.device), tempfile.TemporaryDirectory(prefix="heimdall-trt-") as tmp:
            source = onnx_path
            weakly_typed = hasattr(trt.BuilderFlag, "FP16")
            if precision == "fp16" and not weakly_typed:
                # TensorRT 11+: strongly typed only, so the graph itself must carry float16.
                source = _fp16_model(onnx_path, Path(tmp) / "model_fp16.onnx")
            if precision == "int8" and not _has_qdq(source):
                raise ConversionError(
                    "an INT8 TensorRT engine is built by explicit quantisation, from a model with "
                    "QuantizeLinear/DequantizeLinear nodes; this model has none (implicit INT8 "
                    "calibration is deprecated since TensorRT 10.1 and not supported here)"
                )
            trt_builder = trt.Builder(log)
            flags = 0
            if _version_tuple(trt.__version__) < (10, 0):
                flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
            network = trt_builder.create_network(flags)
            parser = trt.OnnxParser(network, log)
            if not parser.parse_from_file(str(source)):
                errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise ConversionError(
                    "TensorRT could not parse the ONNX model: " + "; ".join(errors[:10])[:2000]
                )

            config = trt_builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
            if precision in ("fp16", "int8") and weakly_typed:
                config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16
            if precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
                config.set_flag(trt.BuilderFlag.INT8)
            _add_profile(trt_builder, network, config, profile)
            accepted = _attach_timing_cache(config, timing_cache)

            serialized = trt_builder.build_serialized_network(network, config)
            if serialized is None:
                detail = "; ".join(log.errors[-5:]) or "no message from TensorRT"
                raise ConversionError(f"TensorRT failed to build the engine: {detail[:2000]}")
            engine_path.write_bytes(bytes(memoryview(serialized)))
            cache = bytes(memoryview(config.get_timing_cache().serialize()))
        return EngineBuild(
            timing_cache=cache,
            tensorrt_version=target.tensorrt_version,
            compute_capability=target.compute_capability,
            timing_cache_accepted=accepted,
        )

    def runner(self, engine_path: Path) -> Runner:
        """Deserialize the engine at ``engine_path`` and return a runner for it."""
        return _EngineRunner(engine_path, self.device)


class _EngineRunner:
    """Runs a serialized engine with ``execute_async_v3`` on a dedicated CUDA stream.

    Inputs are copied to the GPU as torch tensors of the engine's input dtypes, their shapes set on
    the execution context; outputs are allocated at the shapes TensorRT infers from them and copied
    back after the stream has finished. Holds the runtime and engine for as long as the context.
    """

    def __init__(self, engine_path: Path, device: int) -> None:
        import tensorrt as trt  # noqa: PLC0415
        import torch  # noqa: PLC0415

        self._log = _collecting_logger(trt)
        self._device = torch.device("cuda", device)
        self._runtime = trt.Runtime(self._log)
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            detail = "; ".join(self._log.errors[-3:])
            raise ConversionError(f"TensorRT could not load the engine {engine_path.name}: {detail}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        modes = {n: self._engine.get_tensor_mode(n) for n in names}
        self._inputs = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: _torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        self._stream = torch.cuda.Stream(device=self._device)  # type: ignore[no-untyped-call]

    def __call__(self, feeds: Inputs) -> list[np.ndarray]:
        import torch  # noqa: PLC0415

        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise ConversionError(f"missing TensorRT inputs: {', '.join(missing)}")
        context = self._context
        buffers = []  # every input buffer stays referenced until the stream has finished with it
        results = []
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            for name in self._inputs:
                host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                tensor = host.to(device=self._device, dtype=self._dtypes[name]).contiguous()
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise ConversionError(
                        f"TensorRT refused input {name!r} of shape {list(tensor.shape)} "
                        "(outside the engine's optimisation profile?)"
                    )
                context.set_tensor_address(name, tensor.data_ptr())
                buffers.append(tensor)
            for name in self._outputs:
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ConversionError(f"output {name!r} has a data-dependent shape {list(shape)}")
                out = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                context.set_tensor_address(name, out.data_ptr())
                results.append(out)
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise ConversionError("TensorRT execution failed: " + "; ".join(self._log.errors[-3:]))
        self._stream.synchronize()
        return [r.cpu().numpy() for r in results]


def _collecting_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to :mod:`logging` and keeps the error messages."""

    class CollectingLogger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 1:
                self.errors.append(msg)
                logger.error("TensorRT: %s", msg)
            elif level == 2:
                logger.warning("TensorRT: %s", msg)
            else:
                logger.debug("TensorRT: %s", msg)

    return CollectingLogger()


def _add_profile(builder: Any, network: Any, config: Any, profile: Profile) -> None:
    """One optimisation profile for the network's dynamic inputs (none when every shape is fixed)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(int(d) < 0 for d in t.shape)]
    if not dynamic:
        return
    optimisation = builder.create_optimization_profile()
    for tensor in dynamic:
        if tensor.name not in profile:
            raise ConversionError(f"no optimisation profile given for the dynamic input {tensor.name!r}")
        low, opt, high = profile[tensor.name]
        optimisation.set_shape(tensor.name, low, opt, high)
    if config.add_optimization_profile(optimisation) < 0:
        raise ConversionError(f"TensorRT rejected the optimisation profile {dict(profile)}")


def _attach_timing_cache(config: Any, data: bytes | None) -> bool:
    """Give the builder a timing cache seeded with ``data``; ``True`` when ``data`` was accepted.

    A cache TensorRT rejects (another version or device, or a truncated file) is replaced by an
    empty one: the build then runs cold instead of failing.
    """
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return True
        except Exception as exc:
            logger.warning("timing cache rejected (%s: %s); building without it", type(exc).__name__, exc)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False


def _fp16_model(onnx_path: Path, out_path: Path) -> Path:
    """The FP16 ONNX model TensorRT builds from, by the conversion ``onnx_fp16`` uses
    (:func:`heimdall_batch.fp16.to_fp16`)."""
    import onnx  # noqa: PLC0415

    from heimdall_batch.fp16 import to_fp16  # noqa: PLC0415 - onnxruntime.transformers is heavy

    onnx.save(to_fp16(onnx.load(str(onnx_path))), str(out_path))
    return out_path


def _has_qdq(onnx_path: Path) -> bool:
    import onnx  # noqa: PLC0415

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch  # noqa: PLC0415

    mapping = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    for name, torch_type in (("INT64", torch.int64), ("BF16", torch.bfloat16), ("UINT8", torch.uint8)):
        if hasattr(trt.DataType, name):
            mapping[getattr(trt.DataType, name)] = torch_type
    if dtype not in mapping:
        raise ConversionError(f"TensorRT I/O type {dtype} has no torch equivalent here")
    return mapping[dtype]


def _short_version(version: str) -> str:
    """``10.3.0.26`` -> ``10.3.0``: engines and caches are tied to the release, not the build."""
    return ".".join(version.split(".")[:3])


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
