"""The TensorRT stage's logic, with a fake builder behind the :class:`EngineBuilder` interface.

TensorRT cannot be installed here. The fake "builds" an engine by copying the ONNX model it is given
into the engine file and "runs" it with ONNX Runtime, so parity is still a real comparison (and the
INT8 path really quantises). The real builder is exercised by ``tests/gpu/test_tensorrt_gpu.py``.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from heimdall.contracts.jobs import FormatStatus
from heimdall.contracts.manifest import ExportFormat, Manifest, parse_manifest
from heimdall.errors import ConversionError, ParityError
from heimdall_batch.parity import Inputs, Runner, onnx_runner
from heimdall_batch.specs import IOSpec, io_spec
from heimdall_batch.tensorrt import (
    BuildTarget,
    EngineBuild,
    EngineBuilder,
    Precision,
    Profile,
    TensorRTBuilder,
    build_tensorrt,
    engine_file_name,
    timing_cache_name,
)

INPUT_SHAPE = [1, 3, 16, 8]
FP16_ENGINE = "model_sm90_trt10.3.0_fp16.engine"
CACHE_NAME = "timing-cache-sm90-trt10.3.0.bin"
RUNS = 2


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return out


@dataclass
class BuildCall:
    onnx_path: Path
    precision: Precision
    profile: Profile
    workspace_bytes: int
    timing_cache: bytes | None
    had_qdq: bool


@dataclass
class FakeBuilder:
    """An :class:`EngineBuilder` whose engine is the ONNX model it was given, run by ONNX Runtime."""

    unavailable: str | None = None
    wrong_outputs: bool = False
    fail_build: bool = False
    calls: list[BuildCall] = field(default_factory=list)

    def availability(self) -> str | None:
        return self.unavailable

    def target(self) -> BuildTarget:
        return BuildTarget(compute_capability="90", tensorrt_version="10.3.0")

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
        ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
        self.calls.append(
            BuildCall(onnx_path, precision, profile, workspace_bytes, timing_cache, "QuantizeLinear" in ops)
        )
        shutil.copyfile(onnx_path, engine_path)
        if self.fail_build:
            raise ConversionError("TensorRT failed to build the engine: out of workspace")
        return EngineBuild(
            timing_cache=(timing_cache or b"") + b"+measured",
            tensorrt_version="10.3.0",
            compute_capability="90",
            timing_cache_accepted=timing_cache is not None,
        )

    def runner(self, engine_path: Path) -> Runner:
        run = onnx_runner(engine_path)
        if not self.wrong_outputs:
            return run

        def wrong(inputs: Inputs) -> list[np.ndarray]:
            return [out + 0.5 for out in run(inputs)]

        return wrong


def make_manifest(**overrides: Any) -> Manifest:
    doc: dict[str, Any] = {
        "model_name": "small",
        "version": "1.0.0",
        "architecture": "test",
        "input_shape": INPUT_SHAPE,
        "output_names": ["positions"],
        "calibration_samples": 4,
    }
    doc.update(overrides)
    return parse_manifest(doc)


@pytest.fixture(scope="module")
def spec() -> IOSpec:
    torch.manual_seed(0)
    return io_spec(make_manifest(), SmallNet().eval())


@pytest.fixture(scope="module")
def fp32_onnx(spec: IOSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            SmallNet().eval(),
            (torch.zeros(*INPUT_SHAPE),),
            str(path),
            opset_version=17,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            dynamo=False,
        )
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def run_stage(
    fp32_onnx: Path,
    out_dir: Path,
    spec: IOSpec,
    builder: EngineBuilder,
    manifest: Manifest | None = None,
    *,
    cache_in: Path | None = None,
    cache_out: Path | None = None,
) -> Any:
    return build_tensorrt(
        fp32_onnx,
        out_dir,
        spec,
        manifest or make_manifest(),
        onnx_runner(fp32_onnx),
        timing_cache_in=cache_in,
        timing_cache_out=cache_out,
        builder=builder,
        benchmark_runs=RUNS,
    )


def test_unavailable_tensorrt_is_skipped_with_the_reason_and_writes_nothing(
    fp32_onnx: Path, out_dir: Path, spec: IOSpec, tmp_path: Path
) -> None:
    builder = FakeBuilder(unavailable="no CUDA device")
    caches = tmp_path / "caches"
    caches.mkdir()

    outcome = run_stage(fp32_onnx, out_dir, spec, builder, cache_in=caches, cache_out=caches)

    assert outcome.format is ExportFormat.TENSORRT
    assert outcome.status is FormatStatus.SKIPPED and outcome.reason == "no CUDA device"
    assert outcome.file is None and outcome.sha256 is None and outcome.parity == []
    assert builder.calls == []
    assert list(out_dir.iterdir()) == [] and list(caches.iterdir()) == []


def test_the_engine_is_named_for_the_gpu_and_tensorrt_version_and_checked(
    fp32_onnx: Path, out_dir: Path, spec: IOSpec
) -> None:
    builder = FakeBuilder()

    outcome = run_stage(fp32_onnx, out_dir, spec, builder)

    assert outcome.status is FormatStatus.BUILT and outcome.file == FP16_ENGINE
    assert sorted(p.name for p in out_dir.iterdir()) == [FP16_ENGINE]  # no partial file left behind
    assert outcome.size_bytes == (out_dir / FP16_ENGINE).stat().st_size
    assert outcome.details["tensorrt_version"] == "10.3.0" and outcome.details["compute_capability"] == "90"
    assert outcome.details["precision"] == "fp16" and outcome.details["workspace_gb"] == 4.0
    assert outcome.details["profile"] == {"min": 1, "opt": 32, "max": 32}
    assert outcome.details["timing_cache_hit"] is False
    # Parity at the profile's extremes, against ONNX Runtime, at the TensorRT tolerance.
    assert {c.batch_size for c in outcome.parity} == {1, 32}
    assert all(c.passed and c.tolerance == make_manifest().tolerances.tensorrt for c in outcome.parity)
    assert set(outcome.latency_ms) == {"1", "32"}
    (call,) = builder.calls
    assert call.precision == "fp16" and call.workspace_bytes == 4 * 2**30 and call.timing_cache is None
    assert call.profile == {"input": ((1, 3, 16, 8), (32, 3, 16, 8), (32, 3, 16, 8))}


def test_names() -> None:
    assert timing_cache_name("90", "10.3.0") == CACHE_NAME
    assert engine_file_name("86", "8.6.1", "int8") == "model_sm86_trt8.6.1_int8.engine"


def test_the_profile_and_workspace_come_from_the_manifest(
    fp32_onnx: Path, out_dir: Path, spec: IOSpec
) -> None:
    builder = FakeBuilder()
    manifest = make_manifest(
        tensorrt={
            "precision": "fp32",
            "min_batch_size": 2,
            "opt_batch_size": 4,
            "max_batch_size": 8,
            "workspace_gb": 0.5,
        }
    )

    outcome = run_stage(fp32_onnx, out_dir, spec, builder, manifest)

    assert outcome.file == "model_sm90_trt10.3.0_fp32.engine"
    assert builder.calls[0].profile == {"input": ((2, 3, 16, 8), (4, 3, 16, 8), (8, 3, 16, 8))}
    assert builder.calls[0].workspace_bytes == 2**29
    assert {c.batch_size for c in outcome.parity} == {2, 8}
    assert set(outcome.latency_ms) == {"2", "8"}  # 1 and 32 lie outside the profile


def test_the_timing_cache_folder_is_read_and_written_back(
    fp32_onnx: Path, out_dir: Path, spec: IOSpec, tmp_path: Path
) -> None:
    caches = tmp_path / "timing-cache"
    caches.mkdir()
    (caches / CACHE_NAME).write_bytes(b"cached-tactics")
    (caches / "timing-cache-sm80-trt10.3.0.bin").write_bytes(b"another gpu")
    builder = FakeBuilder()

    outcome = run_stage(fp32_onnx, out_dir, spec, builder, cache_in=caches, cache_out=caches)

    assert builder.calls[0].timing_cache == b"cached-tactics"
    assert (caches / CACHE_NAME).read_bytes() == b"cached-tactics+measured"
    assert (caches / "timing-cache-sm80-trt10.3.0.bin").read_bytes() == b"another gpu"
    assert sorted(p.name for p in caches.iterdir()) == ["timing-cache-sm80-trt10.3.0.bin", CACHE_NAME]
    assert outcome.details["timing_cache_hit"] is True
    assert outcome.details["timing_cache_file"] == CACHE_NAME


def test_timing_cache_files_in_and_out(fp32_onnx: Path, out_dir: Path, spec: IOSpec, tmp_path: Path) -> None:
    cache_in, cache_out = tmp_path / "in.bin", tmp_path / "sub" / "out.bin"
    builder = FakeBuilder()

    missing = run_stage(fp32_onnx, out_dir, spec, builder, cache_in=cache_in, cache_out=cache_out)

    assert builder.calls[0].timing_cache is None and missing.details["timing_cache_hit"] is False
    assert cache_out.read_bytes() == b"+measured"  # a cold build still leaves a cache for the next
    cache_in.write_bytes(b"warm")
    warm = run_stage(fp32_onnx, out_dir, spec, builder, cache_in=cache_in, cache_out=cache_out)
    assert builder.calls[1].timing_cache == b"warm" and warm.details["timing_cache_hit"] is True
    assert cache_out.read_bytes() == b"warm+measured" and cache_in.read_bytes() == b"warm"


def test_wrong_engine_outputs_raise_parity_error_and_remove_the_engine(
    fp32_onnx: Path, out_dir: Path, spec: IOSpec, tmp_path: Path
) -> None:
    cache = tmp_path / "cache.bin"

    with pytest.raises(ParityError) as caught:
        run_stage(fp32_onnx, out_dir, spec, FakeBuilder(wrong_outputs=True), cache_out=cache)

    assert "tensorrt (fp16)" in caught.value.message and "max abs error 0.5" in caught.value.message
    assert list(out_dir.iterdir()) == []
    assert cache.read_bytes() == b"+measured"  # the timings are valid whatever the parity


def test_a_failed_build_leaves_no_partial_engine(fp32_onnx: Path, out_dir: Path, spec: IOSpec) -> None:
    with pytest.raises(ConversionError, match="out of workspace"):
        run_stage(fp32_onnx, out_dir, spec, FakeBuilder(fail_build=True))
    assert list(out_dir.iterdir()) == []


def test_int8_engines_are_built_from_a_symmetric_qdq_model(
    fp32_onnx: Path, out_dir: Path, spec: IOSpec
) -> None:
    builder = FakeBuilder()
    manifest = make_manifest(tensorrt={"precision": "int8", "max_batch_size": 8})

    outcome = run_stage(fp32_onnx, out_dir, spec, builder, manifest)

    (call,) = builder.calls
    assert call.precision == "int8" and call.had_qdq and call.onnx_path != fp32_onnx
    # The fake's "engine" is the model it was given: the QDQ model.
    engine = onnx.load(str(out_dir / "model_sm90_trt10.3.0_int8.engine"))
    zero_points = [
        onnx.numpy_helper.to_array(i) for i in engine.graph.initializer if i.name.endswith("zero_point")
    ]
    # Symmetric int8 everywhere, and no int32 (bias) dequantisation, which TensorRT does not take.
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert outcome.details["tolerance"] == manifest.tolerances.onnx_int8
    assert all(c.passed for c in outcome.parity)


def test_the_real_builder_says_why_it_cannot_run_here() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/gpu covers the real builder")
    reason = TensorRTBuilder().availability()
    assert reason is not None and ("CUDA" in reason or "TensorRT" in reason)
