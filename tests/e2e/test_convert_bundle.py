"""`heimdall convert` on a .heimdall bundle: a model imported from elsewhere gets its formats built here.

The bundle's ONNX model is the FP32 product (byte for byte); FP16 and INT8 are built from it and
checked against it in ONNX Runtime; the PyTorch stages are reported skipped with the reason; the
export package it yields makes edge and container packages like any other.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tests.support.e2e import heimdall, make_bundle

from heimdall.bundle import parse_metadata, write_bundle
from heimdall.contracts.jobs import ConversionResult
from heimdall.export_package.container import build_container_package
from heimdall.export_package.edge import build_edge_package
from heimdall.export_package.triton import check_triton_config
from heimdall.testing.sample_bundles import reference_bundle, sample_bundle_metadata
from heimdall.testing.sample_models import (
    ReferenceModel,
    localization_net_onnx,
    onnx_backend_model,
    unconvertible_onnx,
)

ALL_FORMATS = "onnx,torchscript,onnx_fp16,onnx_int8,tensorrt"


@pytest.fixture(scope="module")
def onnx_model() -> bytes:
    return localization_net_onnx(seed=3)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, onnx_model: bytes) -> tuple[Path, Any]:
    """A gzip bundle of the reference model, converted once through the command line."""
    root = tmp_path_factory.mktemp("bundle")
    source = root / "imported.bin"  # the name says nothing: content decides
    source.write_bytes(make_bundle(onnx_model, compress=True))
    out = root / "out"
    done = heimdall("convert", source, "-o", out, "--formats", ALL_FORMATS)
    return out, done


def test_a_bundle_converts_to_fp16_and_int8_checked_against_its_own_model(
    converted: tuple[Path, Any], onnx_model: bytes
) -> None:
    out, done = converted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = ConversionResult.model_validate_json((out / "result.json").read_text())
    assert result.status == "SUCCEEDED" and result.bundle_file is None
    statuses = {o.format.value: (o.status.value, o.reason) for o in result.formats}
    assert statuses["onnx"] == ("built", None)
    assert statuses["onnx_fp16"] == ("built", None) and statuses["onnx_int8"] == ("built", None)
    assert statuses["torchscript"][0] == "skipped" and "PyTorch" in str(statuses["torchscript"][1])
    assert statuses["tensorrt"][0] == "skipped"
    stages = {s.name: (s.status, s.error) for s in result.stages}
    for stage in ("build_model", "export_onnx", "parity_onnx", "bundle"):
        assert stages[stage][0] == "skipped" and stages[stage][1], stage
    assert stages["load"] == ("ok", None) and stages["package"] == ("ok", None)
    # The FP32 model is the bundle's, byte for byte.
    fp32 = result.formats[0]
    assert fp32.sha256 == hashlib.sha256(onnx_model).hexdigest()
    assert (out / "model.onnx").read_bytes() == onnx_model
    # The other formats really were compared with it, on the same inputs at batch 1 and 8.
    for fmt in ("onnx_fp16", "onnx_int8"):
        outcome = next(o for o in result.formats if o.format.value == fmt)
        assert {(c.batch_size, c.output) for c in outcome.parity} == {
            (b, name) for b in (1, 8) for name in ("positions", "uncertainties")
        }
        assert all(c.passed and c.finite and c.max_abs_err > 0 for c in outcome.parity), outcome.parity
    assert result.benchmark is not None and set(result.benchmark.onnx_ms) == {"1", "32"}
    assert result.benchmark.torch_ms == {} and result.benchmark.speedup == {}


def test_the_package_of_a_bundle_runs_and_says_what_it_was_checked_against(
    converted: tuple[Path, Any], onnx_model: bytes
) -> None:
    out, _ = converted
    with zipfile.ZipFile(out / "export-package.zip") as package:
        metadata = json.loads(package.read("metadata.json"))
        readme = package.read("README.md").decode()
        int8 = package.read("model_int8.onnx")
        assert package.read("triton/localization-net-v1/1/model.onnx") == onnx_model
    assert metadata["validation"]["onnx_int8"]["parity_reference"] == "the FP32 ONNX model in ONNX Runtime"
    assert metadata["validation"]["onnx"]["parity_reference"] is None  # checked where it was exported
    assert "compared with the FP32 ONNX model in ONNX Runtime" in readme
    assert [t["name"] for t in metadata["outputs"]] == ["positions", "uncertainties"]
    # The INT8 model answers like the FP32 one on a fresh input.
    x = np.random.default_rng(11).standard_normal((2, 3, 128, 32), dtype=np.float32)
    want = ort.InferenceSession(onnx_model).run(None, {"input": x})
    got = ort.InferenceSession(int8).run(None, {"input": x})
    for expected, actual in zip(want, got, strict=True):
        np.testing.assert_allclose(actual, expected, atol=0.1)


def test_the_package_of_a_bundle_makes_edge_and_container_packages(
    converted: tuple[Path, Any], tmp_path: Path
) -> None:
    out, _ = converted
    package = out / "export-package.zip"
    edge = build_edge_package(package, tmp_path / "edge", name="imported", precision="auto")
    assert edge.precision == "int8"
    with zipfile.ZipFile(edge.path) as archive:
        wrappers = {"runtimes/kotlin/ModelWrapper.kt", "runtimes/swift/ModelWrapper.swift"}
        assert wrappers <= set(archive.namelist())
    container = build_container_package(out / "export-package.zip", tmp_path / "box", name="imported")
    with zipfile.ZipFile(container.path) as archive:
        config = next(n for n in archive.namelist() if n.endswith("config.pbtxt"))
        config_text = archive.read(config).decode()
    with zipfile.ZipFile(package) as zipped:
        check_triton_config(config_text, json.loads(zipped.read("metadata.json")))


def test_a_tampered_bundle_fails_terminally_and_builds_nothing(tmp_path: Path, onnx_model: bytes) -> None:
    doc = json.loads(make_bundle(onnx_model))
    doc["integrity"]["onnx_sha256"] = "0" * 64
    source = tmp_path / "tampered.heimdall"
    source.write_text(json.dumps(doc))
    done = heimdall("convert", source, "-o", tmp_path / "out", "--no-benchmark", "--json")
    assert done.returncode == 3, done.stderr[-2000:]
    result = ConversionResult.model_validate_json((tmp_path / "out" / "result.json").read_text())
    assert result.error_code == "CHECKSUM_MISMATCH" and result.exit_code == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]
    refused = heimdall("convert", source, "-o", tmp_path / "o2", "--manifest", source)
    assert refused.returncode == 2 and "--manifest" in refused.stderr


def test_a_model_with_two_inputs_is_unsupported_not_guessed(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "two-inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data = model.SerializeToString()
    onnx.checker.check_model(model, full_check=True)
    metadata = sample_bundle_metadata(num_samples=1)
    metadata["model"].update(input_shape=[1, 4], output_shape=[[1, 4]], parameters_count=0)
    bundle, _ = parse_metadata(metadata)
    buffer = io.BytesIO()
    write_bundle(bundle, data, buffer)
    source = tmp_path / "two.heimdall"
    source.write_bytes(buffer.getvalue())
    done = heimdall("convert", source, "-o", tmp_path / "out", "--no-benchmark", "--json")
    assert done.returncode == 4, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["error_code"] == "UNSUPPORTED_ARCHITECTURE" and "2 inputs" in result["error_message"]


# --- old opsets (issue 11): the serving check of indexing runs in the job too ---------------------------


def test_an_old_opset_bundle_converts_from_its_upgraded_model(tmp_path: Path) -> None:
    """ONNX Runtime cannot load BatchNormalization(6) as stamped: the job upgrades the model as indexing
    does, and that copy is the FP32 product FP16 and INT8 are built from, checked and packaged."""
    reference = onnx_backend_model("test_BatchNorm2d_eval")
    source = tmp_path / "old.heimdall"
    source.write_bytes(reference_bundle(reference))
    out = tmp_path / "out"
    done = heimdall("convert", source, "-o", out, "--formats", "onnx,onnx_fp16,onnx_int8", "--no-benchmark")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FP32 model: the bundle's upgraded from opset 6 to 17" in done.stdout
    result = ConversionResult.model_validate_json((out / "result.json").read_text())
    assert result.status == "SUCCEEDED"
    statuses = {o.format.value: (o.status.value, o.reason) for o in result.formats}
    assert statuses == {"onnx": ("built", None), "onnx_fp16": ("built", None), "onnx_int8": ("built", None)}
    # result.json says what the FP32 product is: not the bundle's bytes, but their upgrade.
    original = hashlib.sha256(reference.onnx).hexdigest()
    upgrade = result.opset_upgrade
    assert result.bundle_onnx_sha256 == original
    assert upgrade is not None and upgrade.result == "upgraded"
    assert (upgrade.from_opset, upgrade.to_opset, upgrade.samples_checked) == (6, 17, 1)
    assert upgrade.converter.startswith("onnx.version_converter") and upgrade.onnx_key is None
    fp32 = result.formats[0]
    product = (out / "model.onnx").read_bytes()
    assert fp32.sha256 == upgrade.onnx_sha256 == hashlib.sha256(product).hexdigest() != original
    assert fp32.details["opset"] == 17
    assert onnx.load_model_from_string(product).opset_import[0].version == 17
    # The FP32 product gives the reference outputs; FP16 and INT8 were checked against it.
    (name, x), (out_name, want) = next(iter(reference.inputs.items())), next(iter(reference.outputs.items()))
    got = ort.InferenceSession(product).run([out_name], {name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for fmt in ("onnx_fp16", "onnx_int8"):
        outcome = next(o for o in result.formats if o.format.value == fmt)
        assert outcome.parity and all(c.passed for c in outcome.parity), outcome.parity
    # The package runs the upgraded model and its metadata says so.
    with zipfile.ZipFile(out / "export-package.zip") as package:
        metadata = json.loads(package.read("metadata.json"))
        readme = package.read("README.md").decode()
        triton = next(n for n in package.namelist() if n.endswith("/1/model.onnx"))
        assert package.read(triton) == package.read("model.onnx") == product
    compat = metadata["compatibility"]["onnx"]
    assert compat["opset"] == 17 and compat["bundle_onnx_sha256"] == original
    assert (
        compat["opset_upgrade"]["from_opset"] == 6 and compat["opset_upgrade"]["onnx_sha256"] == fp32.sha256
    )
    assert "upgraded from opset 6 to 17" in readme
    build_container_package(out / "export-package.zip", tmp_path / "box", name="old-opset")


def test_an_old_opset_bundle_that_cannot_be_upgraded_fails_terminally_and_builds_nothing(
    tmp_path: Path,
) -> None:
    data = unconvertible_onnx()
    source = tmp_path / "unconvertible.heimdall"
    source.write_bytes(reference_bundle(ReferenceModel("unconvertible", data, {}, {}), with_samples=False))
    out = tmp_path / "out"
    done = heimdall("convert", source, "-o", out, "--no-benchmark", "--json")
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    result = ConversionResult.model_validate_json((out / "result.json").read_text())
    assert (result.status, result.error_code, result.exit_code) == ("FAILED", "MODEL_NOT_SERVABLE", 4)
    # The reason in the words indexing records as the model's not_servable_reason.
    assert "onnx.version_converter cannot convert the model from opset 6 to 17" in str(result.error_message)
    assert result.formats == [] and [s.status for s in result.stages] == ["failed"]
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
