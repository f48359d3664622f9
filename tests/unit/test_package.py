"""The export package: a real (small) model exported to ONNX, packaged, unpacked and run.

The package's Python wrapper is run as a script in a subprocess and imported from the unpacked
files, and its outputs are compared with PyTorch's on the same input; the Triton configuration is
checked against the I/O of the ONNX graph itself, not against the spec that generated it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from tests.support.packages import (
    MEANS,
    STDS,
    Built,
    build_model,
    graph_io,
    parse_pbtxt,
    tiny_manifest,
)
from torch import nn

from heimdall.bundle.structural import TensorSpec
from heimdall.contracts.jobs import (
    PACKAGE_FILE_NAME,
    FormatOutcome,
    FormatStatus,
)
from heimdall.contracts.manifest import ExportFormat
from heimdall.errors import ConversionError
from heimdall.export_package.archive import ZIP_TIMESTAMP
from heimdall.export_package.metadata import PackageMetadata, metadata_bytes, parse_metadata, validated
from heimdall_batch.outputs import file_record
from heimdall_batch.package import preprocessing, write_export_package
from heimdall_batch.package_facts import minimum_onnxruntime
from heimdall_batch.specs import IOSpec
from heimdall_batch.wrappers import cpp_wrapper, kotlin_wrapper, python_wrapper, swift_wrapper

ROOT = Path(__file__).resolve().parents[2]
ONNX_METADATA_KEYS = ("opset", "ir_version", "producer_name", "producer_version")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_model(tmp_path_factory.mktemp("job"), tiny_manifest())


@pytest.fixture(scope="module")
def package(built: Built) -> Path:
    return built.package()


@pytest.fixture(scope="module")
def unpacked(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(package) as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="module")
def metadata(unpacked: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((unpacked / "metadata.json").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def wrapper(unpacked: Path) -> Iterator[ModuleType]:
    yield _import_wrapper(unpacked, "tiny_loc_wrapper")
    sys.modules.pop("tiny_loc_wrapper", None)


def _import_wrapper(root: Path, module_name: str) -> ModuleType:
    path = root / "runtimes" / "python" / "model_wrapper.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _normalised(x: np.ndarray) -> np.ndarray:
    means = np.asarray(MEANS, dtype=np.float32).reshape(1, -1, 1, 1)
    stds = np.asarray(STDS, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x - means) / stds).astype(np.float32)


def _torch_outputs(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in model(torch.from_numpy(x))]


# --- the archive ----------------------------------------------------------------------------------


def test_package_holds_the_built_model_wrappers_triton_and_readme(package: Path) -> None:
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
    assert package.name == PACKAGE_FILE_NAME
    assert names == sorted(names)
    assert set(names) == {
        "README.md",
        "metadata.json",
        "model.onnx",
        "runtimes/cpp/model_wrapper.cpp",
        "runtimes/cpp/model_wrapper.hpp",
        "runtimes/kotlin/ModelWrapper.kt",
        "runtimes/python/model_wrapper.py",
        "runtimes/swift/ModelWrapper.swift",
        "triton/tiny-loc/1/model.onnx",
        "triton/tiny-loc/config.pbtxt",
    }


def test_zip_bytes_do_not_depend_on_the_run(built: Built, package: Path, tmp_path: Path) -> None:
    first = package.read_bytes()
    # A retry elsewhere: another directory, files with other timestamps.
    elsewhere = tmp_path / "retry"
    elsewhere.mkdir()
    shutil.copy(built.out_dir / "model.onnx", elsewhere / "model.onnx")
    os.utime(elsewhere / "model.onnx", (1_700_000_000, 1_700_000_000))
    again = built.package(elsewhere)
    assert again.read_bytes() == first
    assert built.package().read_bytes() == first
    with zipfile.ZipFile(again) as archive:
        assert {info.date_time for info in archive.infolist()} == {ZIP_TIMESTAMP}
        assert archive.getinfo("model.onnx").compress_type == zipfile.ZIP_STORED
    assert not list(built.out_dir.glob(".*.tmp"))


# --- metadata.json --------------------------------------------------------------------------------


def test_metadata_hashes_every_other_file(unpacked: Path, metadata: dict[str, Any]) -> None:
    extracted = {p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()}
    assert set(metadata["files"]) == extracted - {"metadata.json"}
    for name, record in metadata["files"].items():
        data = (unpacked / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}, name
    assert metadata["files"]["model.onnx"] == metadata["files"]["triton/tiny-loc/1/model.onnx"]


def test_metadata_round_trips_through_the_readers_model(unpacked: Path, built: Built) -> None:
    # The deployments code reads metadata.json with the model the job writes it from: every byte
    # written survives a read and a write (no section lost, none reordered or reformatted).
    raw = (unpacked / "metadata.json").read_bytes()
    parsed = validated(PackageMetadata, parse_metadata(raw))
    assert metadata_bytes(parsed) == raw
    assert parsed.model.name == built.manifest.model_name
    assert [t.name for t in parsed.outputs] == built.spec.output_names
    assert parsed.validation["onnx"].status == "built"
    assert parsed.compatibility is not None and parsed.compatibility.onnx is not None


def test_metadata_describes_the_model_and_its_processing(built: Built, metadata: dict[str, Any]) -> None:
    assert metadata["model"] == {
        "name": "tiny-loc",
        "version": "1.2.0",
        "architecture": "localization_net",
        "architecture_kwargs": {},
        "description": "A two-head test model | with a pipe",
        "created_by": "",
        "job_id": "job-0001",
        "created_at": None,
    }
    pre = metadata["preprocessing"]
    assert (pre["layout"], pre["dtype"], pre["input"]) == ("NCHW", "float32", "input")
    assert pre["normalization"] == {"formula": "(x - mean) / std", "axis": 1, "mean": MEANS, "std": STDS}
    post = {o["name"]: o for o in metadata["postprocessing"]["outputs"]}
    assert "[0.01, 1.0]" in post["uncertainties"]["description"]
    assert post["positions"]["shape"] == ["batch", 2]
    assert metadata["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 16, 8]}]
    assert [o["name"] for o in metadata["outputs"]] == ["positions", "uncertainties"]
    assert '"batch"' in metadata["shape_convention"]


def test_metadata_records_validation_performance_and_compatibility(
    built: Built, metadata: dict[str, Any]
) -> None:
    validation = metadata["validation"]
    assert validation["onnx"]["status"] == "built" and validation["onnx"]["parity_passed"] is True
    assert len(validation["onnx"]["parity"]) == 4 and validation["onnx"]["parity_reference"] == "PyTorch"
    assert validation["tensorrt"] == {
        "status": "skipped",
        "reason": "no CUDA device",
        "file": None,
        "parity_passed": None,
        "parity_reference": None,
        "parity": [],
    }
    assert validation["onnx_fp16"]["reason"] == "onnxconverter-common is not installed"
    performance = metadata["performance"]
    assert performance["hardware"] == "Test CPU, 4 cores (CPU)"
    assert performance["benchmark"]["speedup"] == {"1": 4.0, "32": 2.5}
    assert performance["latency_ms"] == {"onnx": {"1": 0.05, "32": 0.4}}
    onnx_facts = metadata["compatibility"]["onnx"]
    assert {k: onnx_facts[k] for k in ONNX_METADATA_KEYS} == built.onnx_metadata
    assert onnx_facts["min_onnxruntime"] == minimum_onnxruntime(
        built.onnx_metadata["opset"], built.onnx_metadata["ir_version"]
    )
    assert onnx_facts["min_onnxruntime"] is not None
    assert "tensorrt" not in metadata["compatibility"]  # skipped: nothing to be compatible with


@pytest.mark.parametrize(
    ("opset", "ir_version", "expected"),
    [(11, 6, "1.0"), (17, 8, "1.12"), (18, 8, "1.14"), (19, 8, "1.15"), (19, 9, "1.16"), (21, 10, "1.18"),
     (22, 10, None), (17, 11, None), (None, 8, None)],
)
def test_minimum_onnxruntime_follows_the_compatibility_table(
    opset: int | None, ir_version: int, expected: str | None
) -> None:
    assert minimum_onnxruntime(opset, ir_version) == expected


# --- Triton ---------------------------------------------------------------------------------------

def test_triton_config_matches_the_real_model_io(unpacked: Path, built: Built) -> None:
    repository = unpacked / "triton" / "tiny-loc"
    config = parse_pbtxt((repository / "config.pbtxt").read_text(encoding="utf-8"))
    assert config["name"] == ["tiny-loc"]
    assert config["platform"] == ["onnxruntime_onnx"]
    assert config["max_batch_size"] == [built.manifest.tensorrt.max_batch_size]
    graph = graph_io(repository / "1" / "model.onnx")
    declared = {t["name"][0]: t for t in [*config["input"], *config["output"]]}
    assert set(declared) == set(graph) == {"input", "positions", "uncertainties"}
    for name, (data_type, dims) in graph.items():
        assert dims[0] == "batch"  # Triton adds the batch dimension itself
        assert declared[name]["data_type"] == [data_type]
        assert declared[name]["dims"] == [d if isinstance(d, int) else -1 for d in dims[1:]]
    assert [t["name"][0] for t in config["input"]] == ["input"]
    assert "dynamic_batching" in config


# --- the Python wrapper ---------------------------------------------------------------------------


def test_python_wrapper_runs_as_a_script_from_anywhere(unpacked: Path, tmp_path: Path) -> None:
    script = unpacked / "runtimes" / "python" / "model_wrapper.py"
    result = subprocess.run(
        [sys.executable, str(script), "--batch-size", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "positions: shape=(3, 2) dtype=float32" in result.stdout
    assert "uncertainties: shape=(3, 2) dtype=float32" in result.stdout


@pytest.mark.parametrize("batch_size", [1, 5])
def test_python_wrapper_matches_pytorch(wrapper: ModuleType, built: Built, batch_size: int) -> None:
    rng = np.random.default_rng(batch_size)
    raw = rng.standard_normal((batch_size, 3, 16, 8), dtype=np.float32) * 0.25 + 0.45
    expected = _torch_outputs(built.model, _normalised(raw))
    outputs = wrapper.Model().predict(raw)  # normalises by default: the manifest has stats
    assert list(outputs) == ["positions", "uncertainties"]
    for name, want in zip(outputs, expected, strict=True):
        assert outputs[name].shape == want.shape
        np.testing.assert_allclose(outputs[name], want, atol=1e-5, rtol=0, err_msg=name)
    # Without normalisation the wrapper feeds the input as it is.
    unnormalised = wrapper.Model().predict(raw, normalize=False)
    np.testing.assert_allclose(
        unnormalised["positions"], _torch_outputs(built.model, raw)[0], atol=1e-5, rtol=0
    )


def test_python_wrapper_refuses_a_wrong_shape_clearly(wrapper: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, 16, 8\), got \(2, 3, 8, 16\)"):
        wrapper.Model().predict(np.zeros((2, 3, 8, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="must have shape"):
        wrapper.Model().predict(np.zeros((3, 16, 8), dtype=np.float32))


def test_generated_python_wrapper_passes_ruff(unpacked: Path, built: Built, tmp_path: Path) -> None:
    pytest.importorskip("ruff")
    long_name = tiny_manifest(model_name="m" * 120, input_names=["i" * 120])
    spec = IOSpec(
        inputs=(TensorSpec(name="i" * 120, elem_type="float32", shape=("batch", 3, 16, 8)),),
        outputs=built.spec.outputs,
        dynamic_batch=True,
    )
    extra = tmp_path / "long_names_wrapper.py"
    extra.write_text(python_wrapper(long_name, spec), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
         str(unpacked / "runtimes" / "python" / "model_wrapper.py"), str(extra)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the compiled-language wrappers ---------------------------------------------------------------


def test_cpp_swift_kotlin_wrappers_carry_the_real_io(unpacked: Path) -> None:
    runtimes = unpacked / "runtimes"
    header = (runtimes / "cpp" / "model_wrapper.hpp").read_text(encoding="utf-8")
    source = (runtimes / "cpp" / "model_wrapper.cpp").read_text(encoding="utf-8")
    swift = (runtimes / "swift" / "ModelWrapper.swift").read_text(encoding="utf-8")
    kotlin = (runtimes / "kotlin" / "ModelWrapper.kt").read_text(encoding="utf-8")

    assert 'kInputName = "input"' in header
    assert "std::array<int64_t, 4> kInputShape = {-1, 3, 16, 8}" in header
    assert 'kOutputNames = {"positions", "uncertainties"}' in header
    assert "Tensor<float> positions;" in header and "Tensor<float> uncertainties;" in header
    assert "kFeatureMeans = {0.485f, 0.456f, 0.406f}" in header
    assert "session_.Run(" in source and "CopyTensor<float>(results[1])" in source
    assert "outputs.uncertainties" in source

    assert 'inputName = "input"' in swift
    assert "inputShape: [Int] = [-1, 3, 16, 8]" in swift
    assert 'outputNames: [String] = ["positions", "uncertainties"]' in swift
    assert "featureStds: [Float] = [0.229, 0.224, 0.225]" in swift
    assert "ORTSession(env: env, modelPath: modelPath, sessionOptions: nil)" in swift
    assert 'Self.copy(results, "uncertainties", of: Float.self)' in swift

    assert 'INPUT_NAME = "input"' in kotlin
    assert "INPUT_SHAPE = longArrayOf(-1, 3, 16, 8)" in kotlin
    assert 'OUTPUT_NAMES = listOf("positions", "uncertainties")' in kotlin
    assert "FEATURE_MEANS = floatArrayOf(0.485f, 0.456f, 0.406f)" in kotlin
    assert 'positions = floats(output(result, "positions"))' in kotlin
    for text in (header, source, swift, kotlin):
        assert "@@" not in text


def test_wrapper_identifiers_survive_awkward_output_names(built: Built) -> None:
    manifest = tiny_manifest(output_names=["out:0", "class"])
    spec = IOSpec(
        inputs=built.spec.inputs,
        outputs=tuple(
            TensorSpec(name=name, elem_type=t.elem_type, shape=t.shape)
            for name, t in zip(("out:0", "class"), built.spec.outputs, strict=True)
        ),
        dynamic_batch=True,
    )
    header, _ = cpp_wrapper(manifest, spec)
    assert "Tensor<float> out_0;  // out:0" in header and "Tensor<float> class_;" in header
    assert "val class_: Tensor<FloatArray>" in kotlin_wrapper(manifest, spec)
    assert 'class_: Self.copy(results, "class", of: Float.self)' in swift_wrapper(manifest, spec)


# --- other shapes of job --------------------------------------------------------------------------


def test_fixed_batch_without_stats(tmp_path: Path) -> None:
    manifest = tiny_manifest(
        architecture="two_head", input_shape=[2, 3, 16, 8], dynamic_batch=False, normalization_stats=None
    )
    job = build_model(tmp_path / "job", manifest)
    target = tmp_path / "unpacked"
    with zipfile.ZipFile(job.package()) as archive:
        archive.extractall(target)
    config = parse_pbtxt((target / "triton" / "tiny-loc" / "config.pbtxt").read_text(encoding="utf-8"))
    assert config["max_batch_size"] == [0]
    assert "dynamic_batching" not in config
    dims = {t["name"][0]: t["dims"] for t in [*config["input"], *config["output"]]}
    assert dims == {"input": [2, 3, 16, 8], "positions": [2, 2], "uncertainties": [2, 2]}
    meta = json.loads((target / "metadata.json").read_text(encoding="utf-8"))
    assert meta["preprocessing"]["normalization"] is None
    assert meta["inputs"][0]["shape"] == [2, 3, 16, 8]
    assert "raw output" in meta["postprocessing"]["outputs"][1]["description"]

    module = _import_wrapper(target, "fixed_batch_wrapper")
    try:
        x = np.random.default_rng(0).standard_normal((2, 3, 16, 8), dtype=np.float32)
        outputs = module.Model().predict(x)  # no stats: no normalisation by default
        np.testing.assert_allclose(outputs["positions"], _torch_outputs(job.model, x)[0], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="no normalisation stats"):
            module.Model().predict(x, normalize=True)
        with pytest.raises(ValueError, match=r"must have shape \(2, 3, 16, 8\), got \(1, 3, 16, 8\)"):
            module.Model().predict(x[:1])
    finally:
        sys.modules.pop("fixed_batch_wrapper", None)
    header, _ = cpp_wrapper(manifest, job.spec)
    assert "kHasNormalization = false" in header and "kInputShape = {2, 3, 16, 8}" in header


def test_partial_stats_give_wrappers_without_normalisation(built: Built) -> None:
    # Means without stds (the original Heimdall wrote what it had) cannot normalise anything.
    manifest = tiny_manifest(normalization_stats={"feature_means": MEANS, "feature_stds": None})
    assert manifest.normalization_stats is not None
    assert preprocessing(manifest, built.spec)["normalization"] is None
    assert "NORMALIZE_BY_DEFAULT = False" in python_wrapper(manifest, built.spec)
    header, _ = cpp_wrapper(manifest, built.spec)
    assert "kHasNormalization = false" in header
    assert "HAS_NORMALIZATION = false" in kotlin_wrapper(manifest, built.spec)
    assert "hasNormalization = false" in swift_wrapper(manifest, built.spec)


def test_a_built_engine_is_packaged_with_its_compatibility(built: Built, tmp_path: Path) -> None:
    out_dir = tmp_path / "gpu-job"
    out_dir.mkdir()
    shutil.copy(built.out_dir / "model.onnx", out_dir / "model.onnx")
    engine = out_dir / "model_sm89_trt10.3.0.engine"
    engine.write_bytes(b"not really an engine")
    record = file_record(engine)
    outcomes = [
        built.outcomes[0],
        FormatOutcome(
            format=ExportFormat.TENSORRT, status=FormatStatus.BUILT, file=engine.name,
            sha256=record.sha256, size_bytes=record.size_bytes,
            details={"tensorrt_version": "10.3.0", "compute_capability": "8.9", "gpu_name": "NVIDIA L4",
                     "precision": "fp16"},
        ),
    ]
    package = write_export_package(
        out_dir, built.manifest, built.spec, outcomes, None, job_id="job-0002",
        onnx_metadata=built.onnx_metadata,
    )
    with zipfile.ZipFile(package) as archive:
        assert archive.read(engine.name) == b"not really an engine"
        meta = json.loads(archive.read("metadata.json"))
        readme = archive.read("README.md").decode()
    trt = meta["compatibility"]["tensorrt"]
    assert (trt["tensorrt_version"], trt["compute_capability"], trt["gpu"]) == ("10.3.0", "8.9", "NVIDIA L4")
    assert trt["portable"] is False and "not" in trt["note"]
    assert meta["files"][engine.name]["sha256"] == record.sha256
    assert meta["performance"]["benchmark"] is None
    assert "**not portable**" in readme and "No benchmark was run." in readme


def test_readme_explains_the_package(unpacked: Path) -> None:
    readme = (unpacked / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# tiny-loc 1.2.0")
    assert "| input | `input` | float32 | `[batch, 3, 16, 8]` |" in readme
    assert "| tensorrt | skipped | — | — | no CUDA device |" in readme
    assert "(x - mean) / std" in readme and "[0.01, 1.0]" in readme
    assert "python runtimes/python/model_wrapper.py" in readme
    assert "A two-head test model | with a pipe" in readme


# --- refusals -------------------------------------------------------------------------------------


def test_a_built_file_that_changed_is_refused(built: Built, tmp_path: Path) -> None:
    out_dir = tmp_path / "job"
    out_dir.mkdir()
    (out_dir / "model.onnx").write_bytes((built.out_dir / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ConversionError, match="changed after onnx was validated"):
        built.package(out_dir)
    assert not (out_dir / PACKAGE_FILE_NAME).exists()


@pytest.mark.parametrize("file", [None, "../model.onnx", "missing.onnx"])
def test_the_fp32_onnx_model_must_be_there(built: Built, file: str | None) -> None:
    outcome = built.outcomes[0].model_copy(update={"file": file, "sha256": None})
    with pytest.raises(ConversionError):
        write_export_package(
            built.out_dir, built.manifest, built.spec, [outcome], None, job_id="j",
            onnx_metadata=built.onnx_metadata,
        )
    failed = built.outcomes[0].model_copy(update={"status": FormatStatus.FAILED, "reason": "parity"})
    with pytest.raises(ConversionError, match="FP32 ONNX model"):
        write_export_package(
            built.out_dir, built.manifest, built.spec, [failed], None, job_id="j",
            onnx_metadata=built.onnx_metadata,
        )
