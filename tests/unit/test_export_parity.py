"""ONNX export, I/O specs, parity checks and the benchmark, on real torch models and real ORT sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from heimdall.contracts.manifest import Manifest, parse_manifest
from heimdall.errors import ConversionError, ParityError
from heimdall_batch.benchmark import benchmark, hardware_name
from heimdall_batch.export_onnx import export_onnx
from heimdall_batch.parity import Inputs, check_parity, compare_outputs, onnx_runner, torch_runner
from heimdall_batch.specs import io_spec, random_inputs


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.a = torch.nn.Linear(8, 2)
        self.b = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.a(h), torch.sigmoid(self.b(h)).clamp(0.01, 1.0)


class FixedBatch(TwoHeads):
    """Right in eager mode, but ``int()`` makes the tracer bake the example's batch size into the graph."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pool(torch.relu(self.conv(x))).reshape(int(x.shape[0]), 8)
        return self.a(h), torch.sigmoid(self.b(h))


def manifest(**overrides: object) -> Manifest:
    doc: dict[str, object] = {
        "model_name": "two-heads",
        "version": "1.0.0",
        "architecture": "test",
        "input_shape": [1, 3, 32, 16],
        "output_names": ["positions", "uncertainties"],
        "description": "a test model",
    }
    doc.update(overrides)
    return parse_manifest(doc)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TwoHeads().eval()


def test_io_spec_comes_from_the_manifest_and_one_run(model: torch.nn.Module) -> None:
    spec = io_spec(manifest(), model)
    assert spec.input_names == ["input"]
    assert spec.output_names == ["positions", "uncertainties"]
    assert spec.inputs[0].shape == ("batch", 3, 32, 16)
    assert spec.outputs[1].shape == ("batch", 2)
    axes = {"input": {0: "batch"}, "positions": {0: "batch"}, "uncertainties": {0: "batch"}}
    assert spec.dynamic_axes() == axes
    fixed = io_spec(manifest(dynamic_batch=False), model)
    assert fixed.inputs[0].shape == (1, 3, 32, 16) and fixed.dynamic_axes() == {}


def test_random_inputs_follow_the_normalisation_stats(model: torch.nn.Module) -> None:
    stats = {"feature_means": [10.0, 0.0, -5.0], "feature_stds": [2.0, 1.0, 0.5]}
    spec = io_spec(manifest(normalization_stats=stats), model)
    data = random_inputs(spec, 64, np.random.default_rng(0), manifest(normalization_stats=stats))["input"]
    assert data.shape == (64, 3, 32, 16) and data.dtype == np.float32
    # Preprocessed exactly as the wrappers do: standard normal per channel.
    assert np.allclose(data.mean(axis=(0, 2, 3)), 0.0, atol=0.05)
    assert np.allclose(data.std(axis=(0, 2, 3)), 1.0, atol=0.05)


def test_export_is_checked_stamped_and_keeps_a_dynamic_batch(model: torch.nn.Module, tmp_path: Path) -> None:
    m = manifest(opset=13)
    spec = io_spec(m, model)
    exported = export_onnx(model, m, spec, tmp_path)
    proto = onnx.load(str(exported.path))
    assert exported.opset == 13 == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["heimdall.model_name"] == "two-heads"
    assert props["heimdall.version"] == "1.0.0"
    assert props["heimdall.architecture"] == "test"
    assert "heimdall.producer_version" in props
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    checks = check_parity(torch_runner(model), onnx_runner(exported.path), spec, tolerance=1e-5, label="onnx")
    assert {c.batch_size for c in checks} == {1, 8}
    assert {c.output for c in checks} == {"positions", "uncertainties"}
    assert all(c.passed and c.finite and c.max_abs_err <= 1e-5 for c in checks)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_batch_fixed_by_the_model_fails_parity_at_batch_8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FixedBatch().eval()
    m = manifest()
    spec = io_spec(m, model)
    try:
        exported = export_onnx(model, m, spec, tmp_path)
    except ConversionError as exc:  # caught already at export: the graph's batch axis is not dynamic
        assert "batch" in exc.message
        return
    with pytest.raises(ParityError, match=r"batch size 8|batch 8"):
        check_parity(torch_runner(model), onnx_runner(exported.path), spec, tolerance=1e-5, label="onnx")


def test_parity_failures_carry_the_numbers() -> None:
    ref = [np.zeros((2, 2), dtype=np.float32)]
    off = [np.full((2, 2), 0.5, dtype=np.float32)]
    checks = compare_outputs(ref, off, ["y"], batch_size=2, tolerance=1e-3)
    assert not checks[0].passed and checks[0].max_abs_err == pytest.approx(0.5)
    nan = [np.array([[np.nan, 0.0]], dtype=np.float32)]
    bad = compare_outputs([np.zeros((1, 2), dtype=np.float32)], nan, ["y"], batch_size=1, tolerance=1.0)
    assert not bad[0].finite and not bad[0].passed

    def zeros(inputs: Inputs) -> list[np.ndarray]:
        n = next(iter(inputs.values())).shape[0]
        return [np.zeros((n, 2), dtype=np.float32), np.zeros((n, 2), dtype=np.float32)]

    def shifted(inputs: Inputs) -> list[np.ndarray]:
        return [o + 0.25 for o in zeros(inputs)]

    torch.manual_seed(0)
    spec = io_spec(manifest(), TwoHeads().eval())
    with pytest.raises(ParityError, match=r"max abs error 0\.25 > tolerance 1e-05") as info:
        check_parity(zeros, shifted, spec, tolerance=1e-5, label="fp16")
    assert len(info.value.details["checks"]) == 4


def test_benchmark_reports_medians_and_hardware(model: torch.nn.Module, tmp_path: Path) -> None:
    m = manifest()
    spec = io_spec(m, model)
    exported = export_onnx(model, m, spec, tmp_path)
    report = benchmark(torch_runner(model), onnx_runner(exported.path), spec, runs=5)
    assert set(report.torch_ms) == set(report.onnx_ms) == {"1", "32"}
    assert all(v > 0 for v in (*report.torch_ms.values(), *report.onnx_ms.values()))
    assert report.speedup["1"] == pytest.approx(report.torch_ms["1"] / report.onnx_ms["1"], rel=1e-2)
    assert report.hardware == hardware_name() and "CPU" in report.hardware
