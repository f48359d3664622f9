"""The real TensorRT builder on a real GPU: engines built from an exported model, run, and checked.

Skipped without a CUDA device (``tests/gpu/conftest.py``) and, with one, when the ``tensorrt``
package cannot be imported: both say so in the skip reason.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from heimdall.contracts.jobs import FormatStatus
from heimdall.contracts.manifest import Manifest, parse_manifest
from heimdall.errors import ConversionError
from heimdall_batch.parity import onnx_runner
from heimdall_batch.specs import IOSpec, io_spec
from heimdall_batch.tensorrt import TensorRTBuilder, build_tensorrt

INPUT_SHAPE = [1, 3, 32, 16]


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.positions = torch.nn.Linear(32, 2)
        self.uncertainties = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
        return self.positions(h), torch.sigmoid(self.uncertainties(h)).clamp(0.01, 1.0)


@pytest.fixture(scope="module")
def trt() -> ModuleType:
    module: ModuleType = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (cannot import tensorrt)"
    )
    return module


def make_manifest(**tensorrt: Any) -> Manifest:
    return parse_manifest(
        {
            "model_name": "small",
            "version": "1.0.0",
            "architecture": "test",
            "input_shape": INPUT_SHAPE,
            "output_names": ["positions", "uncertainties"],
            "calibration_samples": 8,
            "tensorrt": {"max_batch_size": 16, "workspace_gb": 1, **tensorrt},
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IOSpec]:
    torch.manual_seed(0)
    model = SmallNet().eval()
    spec = io_spec(make_manifest(), model)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
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
    return path, spec


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_real_engine_is_built_tagged_and_faithful(
    trt: ModuleType, exported: tuple[Path, IOSpec], tmp_path: Path, precision: str
) -> None:
    onnx_path, spec = exported
    builder = TensorRTBuilder()
    assert builder.availability() is None
    caches = tmp_path / "timing-cache"
    caches.mkdir()
    manifest = make_manifest(precision=precision)

    outcome = build_tensorrt(
        onnx_path,
        tmp_path,
        spec,
        manifest,
        onnx_runner(onnx_path),
        timing_cache_in=caches,
        timing_cache_out=caches,
        builder=builder,
        benchmark_runs=5,
    )

    assert outcome.status is FormatStatus.BUILT, outcome.reason
    assert outcome.file is not None and re.fullmatch(
        rf"model_sm\d+_trt\d+\.\d+\.\d+_{precision}\.engine", outcome.file
    )
    assert outcome.details["tensorrt_version"] == ".".join(trt.__version__.split(".")[:3])
    major, minor = torch.cuda.get_device_capability(0)
    assert outcome.details["compute_capability"] == f"{major}{minor}"
    assert {c.batch_size for c in outcome.parity} == {1, 16} and all(c.passed for c in outcome.parity)
    cache_files = list(caches.iterdir())
    assert len(cache_files) == 1 and cache_files[0].stat().st_size > 0

    # A second build reads the cache the first one wrote.
    again = build_tensorrt(
        onnx_path,
        tmp_path,
        spec,
        manifest,
        onnx_runner(onnx_path),
        timing_cache_in=caches,
        timing_cache_out=caches,
        builder=builder,
        benchmark_runs=5,
    )
    assert again.details["timing_cache_hit"] is True


def test_the_engine_runner_handles_every_batch_size_in_the_profile(
    trt: ModuleType, exported: tuple[Path, IOSpec], tmp_path: Path
) -> None:
    onnx_path, _ = exported
    builder = TensorRTBuilder()
    engine = tmp_path / "model.engine"
    profile = {"input": ((1, 3, 32, 16), (4, 3, 32, 16), (16, 3, 32, 16))}
    build = builder.build(
        onnx_path, engine, precision="fp32", profile=profile, workspace_bytes=1 << 30, timing_cache=None
    )
    assert build.timing_cache and engine.stat().st_size > 0
    run, reference = builder.runner(engine), onnx_runner(onnx_path)
    for batch in (1, 3, 16):
        x = {"input": np.random.default_rng(batch).standard_normal((batch, 3, 32, 16), dtype=np.float32)}
        for got, expected in zip(run(x), reference(x), strict=True):
            assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-2
    with pytest.raises(ConversionError, match="profile"):
        run({"input": np.zeros((17, 3, 32, 16), np.float32)})


def test_int8_without_qdq_nodes_is_refused(
    trt: ModuleType, exported: tuple[Path, IOSpec], tmp_path: Path
) -> None:
    onnx_path, _ = exported
    with pytest.raises(ConversionError, match="explicit quantisation"):
        TensorRTBuilder().build(
            onnx_path,
            tmp_path / "x.engine",
            precision="int8",
            profile={"input": ((1, 3, 32, 16), (1, 3, 32, 16), (1, 3, 32, 16))},
            workspace_bytes=1 << 30,
            timing_cache=None,
        )


def test_an_imported_bundle_gets_an_engine_for_this_gpu(trt: ModuleType, tmp_path: Path) -> None:
    """A model that came as a bundle (no PyTorch model) gets its engine built and checked against it."""
    from heimdall.contracts.jobs import ConversionResult
    from heimdall.contracts.manifest import ExportFormat
    from heimdall.testing.sample_bundles import sample_bundle
    from heimdall.testing.sample_models import localization_net_onnx
    from heimdall_batch.pipeline import ConversionOptions, run_bundle_conversion

    source = tmp_path / "imported.heimdall"
    source.write_bytes(sample_bundle(localization_net_onnx(seed=9), num_samples=1))
    options = ConversionOptions(job_id="gpu-bundle", formats=None, run_benchmark=False)
    result = run_bundle_conversion(source, tmp_path / "out", options)
    assert isinstance(result, ConversionResult) and result.status == "SUCCEEDED", result.error_message
    engine = result.outcome(ExportFormat.TENSORRT)
    assert engine is not None, result.formats
    assert engine.status is FormatStatus.BUILT, engine.reason
    assert engine.parity and all(c.passed for c in engine.parity)
    assert (tmp_path / "out" / str(engine.file)).stat().st_size > 0
