"""The optional formats on a real (small) conv net: FP16 ONNX, INT8 ONNX (static and dynamic), TorchScript.

Every conversion here is real: torch exports, ONNX Runtime converts to float16 and quantises
and runs, TorchScript traces and reloads. Parity is measured against the PyTorch model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from heimdall.contracts.jobs import FormatStatus
from heimdall.contracts.manifest import ExportFormat, Manifest, parse_manifest
from heimdall.errors import ConversionError, ParityError
from heimdall_batch import int8 as int8_stage
from heimdall_batch import specs
from heimdall_batch.fp16 import FP16_FILE_NAME, build_fp16
from heimdall_batch.int8 import INT8_FILE_NAME, CalibrationFeed, build_int8, representative_batches
from heimdall_batch.parity import onnx_runner, torch_runner
from heimdall_batch.specs import IOSpec, io_spec
from heimdall_batch.torchscript import TORCHSCRIPT_FILE_NAME, build_torchscript

INPUT_SHAPE = [1, 3, 16, 16]
STATS = {"feature_means": [0.485, 0.456, 0.406], "feature_stds": [0.229, 0.224, 0.225]}
#: Few timed runs: these tests check that latency is measured, not how fast anything is.
RUNS = 3


class LocatorNet(torch.nn.Module):
    """A small localisation-style conv net whose parameters are mostly weights (~38k of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d((4, 4))
        self.trunk = torch.nn.Linear(32 * 4 * 4, 64)
        self.positions = torch.nn.Linear(64, 2)
        self.uncertainties = torch.nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        h = torch.relu(self.trunk(self.pool(h).flatten(1)))
        return self.positions(h), torch.sigmoid(self.uncertainties(h)).clamp(0.01, 1.0)


class BatchBakedNet(LocatorNet):
    """Right in eager mode, but ``int()`` makes the tracer freeze the example's batch size."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        h = torch.relu(self.trunk(self.pool(h).reshape(int(x.shape[0]), 32 * 4 * 4)))
        return self.positions(h), torch.sigmoid(self.uncertainties(h)).clamp(0.01, 1.0)


def make_manifest(**overrides: Any) -> Manifest:
    doc: dict[str, Any] = {
        "model_name": "locator",
        "version": "1.0.0",
        "architecture": "test",
        "input_shape": INPUT_SHAPE,
        "output_names": ["positions", "uncertainties"],
        "normalization_stats": STATS,
        "calibration_samples": 16,
    }
    doc.update(overrides)
    return parse_manifest(doc)


def export(model: torch.nn.Module, spec: IOSpec, path: Path) -> Path:
    """The FP32 ONNX model, exported as the pipeline does (legacy exporter, named dynamic batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            model,
            (torch.zeros(*INPUT_SHAPE),),
            str(path),
            opset_version=17,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            dynamo=False,
        )
    return path


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return LocatorNet().eval()


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return make_manifest()


@pytest.fixture(scope="module")
def spec(model: torch.nn.Module, manifest: Manifest) -> IOSpec:
    return io_spec(manifest, model)


@pytest.fixture(scope="module")
def fp32_onnx(model: torch.nn.Module, spec: IOSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(model, spec, tmp_path_factory.mktemp("fp32") / "model.onnx")


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def io_elem_types(path: Path) -> set[int]:
    graph = onnx.load(str(path)).graph
    return {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)}


# --- FP16 ------------------------------------------------------------------------------------------


def test_fp16_halves_the_model_keeps_float32_io_and_passes_its_tolerance(
    model: torch.nn.Module, spec: IOSpec, manifest: Manifest, fp32_onnx: Path, tmp_path: Path
) -> None:
    outcome = build_fp16(fp32_onnx, tmp_path, spec, manifest, torch_runner(model), benchmark_runs=RUNS)

    path = tmp_path / FP16_FILE_NAME
    assert outcome.format is ExportFormat.ONNX_FP16 and outcome.status is FormatStatus.BUILT
    assert outcome.file == FP16_FILE_NAME and outcome.size_bytes == path.stat().st_size
    assert 0.45 <= outcome.details["size_ratio"] <= 0.55
    assert outcome.details["fp32_size_bytes"] == fp32_onnx.stat().st_size
    # Callers and Triton see the FP32 model's signature; the weights inside are float16.
    assert io_elem_types(path) == {onnx.TensorProto.FLOAT}
    proto = onnx.load(str(path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert {p.key: p.value for p in proto.metadata_props}["heimdall.precision"] == "fp16"
    assert {(c.batch_size, c.output) for c in outcome.parity} == {
        (b, o) for b in (1, 8) for o in ("positions", "uncertainties")
    }
    assert all(c.passed and c.max_abs_err <= manifest.tolerances.onnx_fp16 for c in outcome.parity)
    assert max(c.max_abs_err for c in outcome.parity) > 0  # it really is a different precision
    assert set(outcome.latency_ms) == {"1", "32"} and all(v > 0 for v in outcome.latency_ms.values())
    assert set(outcome.details["fp32_latency_ms"]) == {"1", "32"}


def test_a_parity_failure_raises_with_the_numbers_and_leaves_no_file(
    model: torch.nn.Module, spec: IOSpec, fp32_onnx: Path, tmp_path: Path
) -> None:
    strict = make_manifest(tolerances={"onnx_fp16": 1e-9})

    with pytest.raises(ParityError) as caught:
        build_fp16(fp32_onnx, tmp_path, spec, strict, torch_runner(model), benchmark_runs=RUNS)

    message = caught.value.message
    assert "onnx_fp16" in message and "max abs error" in message and "tolerance 1e-09" in message
    checks = caught.value.details["checks"]
    assert checks and all(c["max_abs_err"] > 1e-9 for c in checks if not c["passed"])
    assert not (tmp_path / FP16_FILE_NAME).exists()


# --- INT8 ------------------------------------------------------------------------------------------


def test_static_int8_is_a_calibrated_qdq_model_about_a_third_of_the_size(
    model: torch.nn.Module, spec: IOSpec, manifest: Manifest, fp32_onnx: Path, tmp_path: Path
) -> None:
    outcome = build_int8(fp32_onnx, tmp_path, spec, manifest, torch_runner(model), benchmark_runs=RUNS)

    path = tmp_path / INT8_FILE_NAME
    assert outcome.format is ExportFormat.ONNX_INT8 and outcome.status is FormatStatus.BUILT
    assert outcome.file == INT8_FILE_NAME and outcome.size_bytes == path.stat().st_size
    assert outcome.details["size_ratio"] <= 0.35
    assert outcome.details["mode"] == "static"
    assert outcome.details["calibration_samples"] == manifest.calibration_samples
    assert outcome.details["calibration_source"] == "normalization_stats"
    ops = op_types(path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    # Only the standard domain is declared (ONNX Runtime's pre-processing declares every one it knows).
    assert {o.domain for o in onnx.load(str(path)).opset_import} == {""}
    assert io_elem_types(path) == {onnx.TensorProto.FLOAT}
    assert all(c.passed and c.max_abs_err <= manifest.tolerances.onnx_int8 for c in outcome.parity)
    assert {c.batch_size for c in outcome.parity} == {1, 8}
    assert set(outcome.latency_ms) == {"1", "32"}
    assert outcome.details["int8_b1_ms"] == outcome.latency_ms["1"] and outcome.details["fp32_b1_ms"] > 0


def test_calibration_is_drawn_from_the_manifest_normalisation_stats(
    model: torch.nn.Module, spec: IOSpec, fp32_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Manifest | None] = []
    real = specs.random_inputs

    def spy(spec: IOSpec, batch: int, rng: np.random.Generator, manifest: Manifest | None = None) -> Any:
        seen.append(manifest)
        return real(spec, batch, rng, manifest)

    monkeypatch.setattr(int8_stage, "random_inputs", spy)
    seven = make_manifest(calibration_samples=7)

    outcome = build_int8(fp32_onnx, tmp_path, spec, seven, torch_runner(model), benchmark_runs=RUNS)

    assert outcome.details["calibration_samples"] == 7
    calibration_calls = seen[:7]  # then the latency inputs
    assert all(m is seven and m.normalization_stats is not None for m in calibration_calls)


def test_representative_batches_yield_calibration_samples_single_sample_batches(
    spec: IOSpec, manifest: Manifest
) -> None:
    feed = CalibrationFeed(representative_batches(spec, manifest), spec)
    batches = []
    while (batch := feed.get_next()) is not None:
        batches.append(batch)

    assert len(batches) == feed.yielded == manifest.calibration_samples
    assert all(b["input"].shape == (1, 3, 16, 16) and b["input"].dtype == np.float32 for b in batches)
    assert not np.array_equal(batches[0]["input"], batches[1]["input"])
    again = next(representative_batches(spec, manifest))["input"]
    assert np.array_equal(again, batches[0]["input"])  # seeded: the same model calibrates the same way


def test_given_calibration_data_is_used_instead(
    model: torch.nn.Module, spec: IOSpec, manifest: Manifest, fp32_onnx: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    samples = [{"input": rng.standard_normal((2, 3, 16, 16), dtype=np.float32)} for _ in range(3)]

    outcome = build_int8(
        fp32_onnx, tmp_path, spec, manifest, torch_runner(model), calibration=samples, benchmark_runs=RUNS
    )

    assert outcome.details["calibration_samples"] == 3
    assert outcome.details["calibration_source"] == "provided"


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        ({"images": np.zeros((1, 3, 16, 16), np.float32)}, "has inputs"),
        ({"input": np.zeros((1, 3, 8, 8))}, "shape"),
    ],
)
def test_calibration_data_that_does_not_fit_the_model_is_refused(
    spec: IOSpec, batch: dict[str, np.ndarray], problem: str
) -> None:
    feed = CalibrationFeed([batch], spec)
    with pytest.raises(ConversionError, match=problem):
        feed.get_next()


def test_no_calibration_data_is_an_error_not_a_guess(
    model: torch.nn.Module, spec: IOSpec, manifest: Manifest, fp32_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConversionError, match="calibration"):
        build_int8(fp32_onnx, tmp_path, spec, manifest, torch_runner(model), calibration=[])
    assert not (tmp_path / INT8_FILE_NAME).exists()


def test_dynamic_int8_only_when_asked_for_and_without_calibration(
    model: torch.nn.Module, spec: IOSpec, fp32_onnx: Path, tmp_path: Path
) -> None:
    def untouchable() -> Iterator[dict[str, np.ndarray]]:
        raise AssertionError("dynamic quantisation must not read calibration data")
        yield {}  # pragma: no cover - makes this a generator

    dynamic = make_manifest(int8_mode="dynamic")
    outcome = build_int8(
        fp32_onnx,
        tmp_path,
        spec,
        dynamic,
        torch_runner(model),
        calibration=untouchable(),
        benchmark_runs=RUNS,
    )

    ops = op_types(tmp_path / INT8_FILE_NAME)
    assert outcome.details["mode"] == "dynamic" and outcome.details["calibration_samples"] == 0
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert all(c.passed for c in outcome.parity)


# --- TorchScript -----------------------------------------------------------------------------------


def test_torchscript_traces_saves_and_reloads_faithfully(
    model: torch.nn.Module, spec: IOSpec, manifest: Manifest, tmp_path: Path
) -> None:
    outcome = build_torchscript(model, tmp_path, spec, manifest, torch_runner(model), benchmark_runs=RUNS)

    path = tmp_path / TORCHSCRIPT_FILE_NAME
    assert outcome.format is ExportFormat.TORCHSCRIPT and outcome.status is FormatStatus.BUILT
    assert outcome.file == TORCHSCRIPT_FILE_NAME and outcome.size_bytes == path.stat().st_size
    assert {c.batch_size for c in outcome.parity} == {1, 8}
    assert all(c.passed and c.max_abs_err <= manifest.tolerances.torchscript for c in outcome.parity)
    assert outcome.details["method"] == "trace" and outcome.details["tracer_warning_count"] == 0
    assert set(outcome.latency_ms) == {"1", "32"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        for got, expected in zip(loaded(x), model(x), strict=True):
            assert torch.allclose(got, expected, atol=1e-6)
    assert model.training is False  # tracing left the caller's model as it was


def test_a_trace_that_baked_in_the_batch_size_fails_parity_at_batch_8(
    manifest: Manifest, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    baked = BatchBakedNet().eval()
    spec = io_spec(manifest, baked)
    eager = torch_runner(baked)
    assert eager({"input": np.zeros((8, 3, 16, 16), np.float32)})[0].shape == (8, 2)  # eager is fine

    with pytest.raises(ParityError, match="batch size 8"):
        build_torchscript(baked, tmp_path, spec, manifest, eager, benchmark_runs=RUNS)
    assert not (tmp_path / TORCHSCRIPT_FILE_NAME).exists()


def test_the_onnx_runner_agrees_with_the_reference_it_is_compared_to(
    model: torch.nn.Module, fp32_onnx: Path
) -> None:
    # Guards the fixtures: the FP32 export itself is faithful, so the errors above are the formats'.
    x = {"input": np.random.default_rng(0).standard_normal((4, 3, 16, 16), dtype=np.float32)}
    for got, expected in zip(onnx_runner(fp32_onnx)(x), torch_runner(model)(x), strict=True):
        assert np.abs(got - expected).max() <= 1e-5
