"""FP16 on an attention graph, and the job's verdict when a requested format fails.

The built-in ``transformer_encoder`` (``nn.TransformerEncoder``, exported by torch for real) is the
graph onnxconverter-common broke: its attention Casts came out typed float32 while converting to
float16, and ``onnx.checker`` refused the model. Here the FP16 model is checked independently of the
stage: full checker, an ONNX Runtime session with float32 I/O, and outputs within the manifest's FP16
tolerance of PyTorch's at a batch size the stage did not use. A forced FP16 failure must fail the
job in ``result.json`` (status and exit code), with the other outputs still written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from heimdall.contracts.jobs import RESULT_FILE_NAME, ConversionResult, FormatStatus
from heimdall.contracts.manifest import ExportFormat
from heimdall_batch.architectures import resolve
from heimdall_batch.fp16 import FP16_FILE_NAME
from heimdall_batch.pipeline import (
    FORMAT_FAILED,
    FORMAT_FAILED_EXIT,
    NO_BUNDLE_AFTER_FAILED_FORMAT,
    ConversionOptions,
    run_conversion,
)

MANIFEST: dict[str, Any] = {
    "model_name": "encoder",
    "version": "1.0.0",
    "architecture": "transformer_encoder",
    "input_shape": [1, 16, 64],
    "output_names": ["output"],
}
FORMATS = [ExportFormat.ONNX, ExportFormat.ONNX_FP16]


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return resolve("transformer_encoder")().eval()


@pytest.fixture(scope="module")
def checkpoint(encoder: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return path


def convert(checkpoint: Path, out_dir: Path, **overrides: Any) -> ConversionResult:
    manifest = json.dumps({**MANIFEST, **overrides}).encode()
    options = ConversionOptions(job_id="fp16", formats=FORMATS, run_benchmark=False)
    return run_conversion(checkpoint, out_dir, options, manifest=manifest)


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ConversionResult, Path]:
    out = tmp_path_factory.mktemp("out")
    return convert(checkpoint, out), out


def test_transformer_encoder_fp16_is_built_valid_and_within_its_tolerance(
    converted: tuple[ConversionResult, Path], encoder: torch.nn.Module
) -> None:
    result, out = converted
    fp16 = result.outcome(ExportFormat.ONNX_FP16)
    assert fp16 is not None and fp16.status is FormatStatus.BUILT, fp16.reason if fp16 else result
    assert (result.status, result.exit_code, result.error_code) == ("SUCCEEDED", 0, None)
    tolerance = fp16.details["tolerance"]
    assert fp16.parity and all(c.passed and c.max_abs_err <= tolerance for c in fp16.parity)
    assert fp16.details["converter"] == "onnxruntime.transformers.float16"

    path = out / FP16_FILE_NAME
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("input", "tensor(float)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("output", "tensor(float)")]
    sequence = np.random.default_rng(7).standard_normal((3, 16, 64)).astype(np.float32)
    (got,) = session.run(None, {"input": sequence})
    with torch.inference_mode():
        expected = encoder(torch.from_numpy(sequence)).numpy()
    error = float(np.abs(got - expected).max())
    assert got.dtype == np.float32 and 0 < error <= tolerance  # 0 would mean nothing ran in float16


def test_a_failed_fp16_fails_the_job_writes_the_rest_but_no_bundle(checkpoint: Path, tmp_path: Path) -> None:
    result = convert(checkpoint, tmp_path, tolerances={"onnx_fp16": 1e-12})  # no FP16 model meets it
    fp16 = result.outcome(ExportFormat.ONNX_FP16)
    assert fp16 is not None and fp16.status is FormatStatus.FAILED
    expected = ("FAILED", FORMAT_FAILED_EXIT, FORMAT_FAILED)
    assert (result.status, result.exit_code, result.error_code) == expected
    assert result.error_message is not None and "onnx_fp16: PARITY_FAILED" in result.error_message
    written = ConversionResult.model_validate_json((tmp_path / RESULT_FILE_NAME).read_text())
    assert (written.status, written.exit_code, written.error_code) == expected
    assert "model.onnx" in written.outputs and result.package_file is not None
    assert not (tmp_path / FP16_FILE_NAME).exists()
    # No bundle: the ingest function would index it as a model of this failed job.
    assert result.bundle_file is None and not list(tmp_path.glob("*.heimdall"))
    assert [s.error for s in result.stages if s.name == "bundle"] == [NO_BUNDLE_AFTER_FAILED_FORMAT]
