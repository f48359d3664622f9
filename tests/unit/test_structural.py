"""The structural pass on decoded ONNX models (DESIGN §3, BAD_INPUTS "Bundles").

Every case is a real model built with ``onnx.helper`` (most start from
``heimdall.testing.sample_models``), written to ``tmp_path`` and checked through
:func:`check_structure`, which runs the checks in a child process
(about half a second each, for the onnx import). The dimension rule of :func:`check_declared` is
pure, so its table runs in-process.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from heimdall.bundle.dialects import normalise
from heimdall.bundle.models import Bundle, ModelInfo
from heimdall.bundle.structural import StructuralReport, TensorSpec, check_declared, check_structure
from heimdall.errors import (
    ChecksumMismatch,
    ConfigurationError,
    ExternalData,
    GraphTooComplex,
    HeimdallError,
    InvalidOnnx,
    ShapeMismatch,
    TooLarge,
)
from heimdall.settings import MIB, BundleLimits
from heimdall.testing.sample_bundles import legacy_bundle_metadata, sample_bundle_metadata
from heimdall.testing.sample_models import localization_net_onnx, padded_onnx

LIMITS = BundleLimits()


# --- helpers ---------------------------------------------------------------------------------------


def write(tmp_path: Path, data: bytes, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def bundle_of(doc: dict[str, Any]) -> Bundle:
    canonical, _ = normalise(doc)
    return Bundle.model_validate(canonical)


def refused(
    path: Path,
    error: type[HeimdallError],
    *,
    bundle: Bundle | None = None,
    limits: BundleLimits = LIMITS,
    expected_sha256: str | None = None,
) -> HeimdallError:
    """Run the pass, expect ``error`` exactly, and return it for assertions on its message."""
    with pytest.raises(HeimdallError) as info:
        check_structure(path, bundle, limits=limits, expected_sha256=expected_sha256)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert info.value.code == error.code
    return info.value


def finish(graph: onnx.GraphProto, *, opsets: dict[str, int] | None = None, **kwargs: Any) -> bytes:
    imports = [helper.make_opsetid(domain, version) for domain, version in (opsets or {"": 17}).items()]
    model = helper.make_model(graph, opset_imports=imports, ir_version=8, **kwargs)
    data: bytes = model.SerializeToString()
    return data


def constant(name: str, values: list[float]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(values, np.float32), name)
    )


def leaf(output: str) -> onnx.GraphProto:
    """A subgraph producing ``output`` (float [1]) from a Constant."""
    return helper.make_graph(
        [constant(output, [1.0])],
        f"{output}_graph",
        [],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1])],
    )


def nested_ifs(depth: int) -> bytes:
    """A model whose output comes through ``depth`` nested If nodes (valid for the checker)."""
    body = leaf("v0")
    for level in range(1, depth + 1):
        node = helper.make_node(
            "If", ["cond"], [f"v{level}"], name=f"if{level}", then_branch=body, else_branch=leaf(f"e{level}")
        )
        out = helper.make_tensor_value_info(f"v{level}", TensorProto.FLOAT, [1])
        body = helper.make_graph([node], f"level{level}", [], [out])
    graph = helper.make_graph(
        list(body.node),
        "nested",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        list(body.output),
    )
    return finish(graph)


def make_external(tensor: onnx.TensorProto, *, keep_location: bool = True) -> None:
    """Point ``tensor`` at a file beside the model, as ``onnx.save(..., save_as_external_data=True)`` does."""
    external_data_helper.set_external_data(
        tensor, location="weights.bin", offset=0, length=len(tensor.raw_data)
    )
    tensor.ClearField("raw_data")
    if not keep_location:
        tensor.ClearField("data_location")  # only the external_data entries are left


def report_with(inputs: list[TensorSpec], outputs: list[TensorSpec], opset: int = 17) -> StructuralReport:
    return StructuralReport(
        onnx_sha256="0" * 64,
        size_bytes=1,
        ir_version=8,
        opset=opset,
        producer="test",
        node_count=1,
        subgraph_depth=0,
        domains=("ai.onnx",),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )


def model_info(input_shape: list[Any], output_shape: list[list[Any]], opset: int = 17) -> ModelInfo:
    return ModelInfo(
        model_id="m",
        model_name="m",
        version="1",
        architecture="a",
        onnx_opset=opset,
        input_shape=input_shape,
        output_shape=output_shape,
    )


@pytest.fixture(scope="module")
def net() -> bytes:
    return localization_net_onnx()


# --- a valid model ---------------------------------------------------------------------------------


def test_valid_model_passes_and_the_report_describes_it(tmp_path: Path, net: bytes) -> None:
    bundle = bundle_of(sample_bundle_metadata(net))
    report = check_structure(
        write(tmp_path, net), bundle, limits=LIMITS, expected_sha256=hashlib.sha256(net).hexdigest()
    )

    assert report.onnx_sha256 == hashlib.sha256(net).hexdigest()
    assert report.size_bytes == len(net)
    assert (report.ir_version, report.opset) == (8, 17)
    assert report.producer.startswith("heimdall")
    assert (report.node_count, report.subgraph_depth) == (10, 0)
    assert report.domains == ("ai.onnx",)
    assert report.inputs == (TensorSpec("input", "float32", ("batch", 3, 128, 32)),)
    assert report.outputs == (
        TensorSpec("positions", "float32", ("batch", 2)),
        TensorSpec("uncertainties", "float32", ("batch", 2)),
    )


def test_legacy_single_flat_output_shape_fits_every_output(tmp_path: Path, net: bytes) -> None:
    legacy = legacy_bundle_metadata(net)
    assert legacy["model"]["output_shape"] == [1, 2]  # one flat shape for two graph outputs
    report = check_structure(write(tmp_path, net), bundle_of(legacy), limits=LIMITS)
    assert [o.name for o in report.outputs] == ["positions", "uncertainties"]


def test_model_local_function_in_its_own_domain_is_allowed(tmp_path: Path) -> None:
    double = helper.make_function(
        "local.fns",
        "Double",
        ["x"],
        ["y"],
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("Double", ["a"], ["b"], domain="local.fns")],
        "calls_function",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    data = finish(graph, opsets={"": 17, "local.fns": 1}, functions=[double])
    report = check_structure(write(tmp_path, data), None, limits=LIMITS)
    assert report.node_count == 2  # the call and the function body's Add
    assert "local.fns" in report.domains


# --- refusals, in the order the worker checks them --------------------------------------------------


def test_model_over_the_size_cap_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, b"\x00" * 5000)  # not even a model: the size check comes first
    err = refused(path, TooLarge, limits=BundleLimits(max_onnx_bytes=4096))
    assert "5000 bytes" in err.message and "4096" in err.message


def test_sha256_mismatch_names_both_values(tmp_path: Path, net: bytes) -> None:
    actual = hashlib.sha256(net).hexdigest()
    err = refused(write(tmp_path, net), ChecksumMismatch, expected_sha256="ab" * 32)
    assert actual in err.message and "ab" * 32 in err.message


def test_declared_integrity_size_must_match(tmp_path: Path, net: bytes) -> None:
    doc = sample_bundle_metadata(net)
    doc["integrity"] = {"onnx_sha256": hashlib.sha256(net).hexdigest(), "onnx_size_bytes": len(net) + 1}
    err = refused(write(tmp_path, net), ChecksumMismatch, bundle=bundle_of(doc))
    assert str(len(net)) in err.message and err.field == "integrity.onnx_size_bytes"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (random.Random(7).randbytes(4096), "not an ONNX model"),
        (b"", "empty"),
        (b'{"format_version": "1.0.0"}', "not an ONNX model"),
    ],
    ids=["random-bytes", "empty", "json"],
)
def test_bytes_that_are_not_a_model_are_refused(tmp_path: Path, data: bytes, expected: str) -> None:
    err = refused(write(tmp_path, data), InvalidOnnx)
    assert expected in err.message


def test_truncated_model_is_refused(tmp_path: Path, net: bytes) -> None:
    err = refused(write(tmp_path, net[: len(net) // 2]), InvalidOnnx)
    assert "not an ONNX model" in err.message


@pytest.mark.parametrize("keep_location", [True, False], ids=["data_location", "external_data-entries"])
def test_external_data_in_an_initializer_is_refused(tmp_path: Path, net: bytes, keep_location: bool) -> None:
    model = onnx.load_model_from_string(net)
    make_external(model.graph.initializer[2], keep_location=keep_location)  # conv2.weight
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 4)
    err = refused(write(tmp_path, model.SerializeToString()), ExternalData)
    assert "'conv2.weight'" in err.message and "weights.bin" in err.message
    assert err.details["tensor"] == "conv2.weight"


def test_external_data_in_a_constant_inside_an_if_subgraph_is_refused(tmp_path: Path) -> None:
    then_branch = leaf("hidden")
    make_external(then_branch.node[0].attribute[0].t)
    node = helper.make_node(
        "If", ["cond"], ["out"], name="branch", then_branch=then_branch, else_branch=leaf("plain")
    )
    graph = helper.make_graph(
        [node],
        "with_if",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    err = refused(write(tmp_path, finish(graph)), ExternalData)
    assert "'hidden'" in err.message and "'branch'" in err.message and "subgraph" in err.message


def test_node_count_over_the_cap_is_refused(tmp_path: Path, net: bytes) -> None:
    err = refused(write(tmp_path, net), GraphTooComplex, limits=BundleLimits(max_nodes=3))
    assert "10 nodes" in err.message and "3 (max_nodes)" in err.message


def test_subgraph_depth_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, nested_ifs(3))
    assert check_structure(path, None, limits=BundleLimits(max_subgraph_depth=3)).subgraph_depth == 3
    err = refused(path, GraphTooComplex, limits=BundleLimits(max_subgraph_depth=2))
    assert "nested 3 deep" in err.message and "2 (max_subgraph_depth)" in err.message


def test_nesting_deeper_than_protobuf_parses_is_refused(tmp_path: Path) -> None:
    # protobuf stops decoding at 100 levels of messages (about 32 nested Ifs): never our stack.
    err = refused(write(tmp_path, nested_ifs(32)), InvalidOnnx, limits=BundleLimits(max_subgraph_depth=1000))
    assert "not an ONNX model" in err.message and "Depth" in err.message


def test_unknown_operator_domain_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Boom", ["x"], ["y"], name="boom", domain="com.evil")],
        "custom_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    err = refused(write(tmp_path, finish(graph, opsets={"": 17, "com.evil": 1})), InvalidOnnx)
    assert "'com.evil'" in err.message and "not allowed" in err.message


def test_custom_op_hiding_in_a_local_function_domain_is_refused(tmp_path: Path) -> None:
    double = helper.make_function(
        "local.fns",
        "Double",
        ["x"],
        ["y"],
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Double", ["a"], ["b"], domain="local.fns"),
            helper.make_node("Boom", ["b"], ["c"], domain="local.fns"),
        ],
        "sneaky",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    data = finish(graph, opsets={"": 17, "local.fns": 1}, functions=[double])
    err = refused(write(tmp_path, data), InvalidOnnx)
    assert "'Boom'" in err.message and "not a function defined in the model" in err.message


def test_checker_failure_is_refused_with_its_message(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"], name="dangling")],
        "undefined_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    err = refused(write(tmp_path, finish(graph)), InvalidOnnx)
    assert err.message.startswith("onnx.checker refused the model:") and "nowhere" in err.message


# --- declared opset and shapes against the graph -------------------------------------------------------


def test_declared_opset_must_match_the_graph(tmp_path: Path) -> None:
    data = localization_net_onnx(opset=13)
    err = refused(write(tmp_path, data), ShapeMismatch, bundle=bundle_of(sample_bundle_metadata(data)))
    assert err.message == "declared opset 17, graph imports 13" and err.field == "model.onnx_opset"


def test_declared_input_shape_must_match_the_graph(tmp_path: Path, net: bytes) -> None:
    bundle = bundle_of(sample_bundle_metadata(net, model={"input_shape": [1, 3, 64, 32]}))
    err = refused(write(tmp_path, net), ShapeMismatch, bundle=bundle)
    assert "'input'" in err.message and "dimension 2: declared 64, graph 128" in err.message
    assert err.field == "model.input_shape"


def test_declared_output_count_must_match_the_graph(tmp_path: Path, net: bytes) -> None:
    bundle = bundle_of(sample_bundle_metadata(net, model={"output_shape": [[1, 2], [1, 2], [1, 2]]}))
    err = refused(write(tmp_path, net), ShapeMismatch, bundle=bundle)
    assert "3 output shapes" in err.message and "2 outputs ('positions', 'uncertainties')" in err.message


@pytest.mark.parametrize(
    ("declared", "graph", "agrees"),
    [
        ([1, 3], (1, 3), True),
        ([1, 3], ("batch", 3), True),  # a declared batch 1 describes one valid input of a dynamic batch
        ([1, 3], (None, 3), True),  # unknown graph dimension
        ([-1, 3], ("batch", 3), True),
        (["n", 3], ("batch", 3), True),  # symbol names are labels, they need not match
        ([-1, 3], (1, 3), False),  # declared dynamic, graph fixed: callers would be refused at run time
        (["batch", 3], (1, 3), False),
        ([2, 3], (1, 3), False),
        ([1, 3, 1], (1, 3), False),  # rank
    ],
)
def test_dimension_rule(declared: list[Any], graph: tuple[Any, ...], agrees: bool) -> None:
    report = report_with([TensorSpec("x", "float32", graph)], [TensorSpec("y", "float32", (1,))])
    info = model_info(declared, [[1]])
    if agrees:
        check_declared(report, info)
    else:
        with pytest.raises(ShapeMismatch, match="input 'x'"):
            check_declared(report, info)


def test_unknown_rank_cannot_contradict_a_declaration() -> None:
    report = report_with(
        [TensorSpec("x", "float32", (), rank_known=False)], [TensorSpec("y", "float32", (1,))]
    )
    check_declared(report, model_info([1, 3, 128, 32], [[1]]))


def test_single_declared_shape_must_fit_every_output() -> None:
    report = report_with(
        [TensorSpec("x", "float32", (1,))],
        [TensorSpec("a", "float32", (1, 2)), TensorSpec("b", "float32", (1, 3))],
    )
    with pytest.raises(ShapeMismatch, match="output 'b'"):
        check_declared(report, model_info([1], [[1, 2]]))


# --- the limits of the check itself -----------------------------------------------------------------


def test_memory_limit_too_small_to_load_anything(tmp_path: Path, net: bytes) -> None:
    err = refused(
        write(tmp_path, net), GraphTooComplex, limits=BundleLimits(structural_memory_bytes=65 * MIB)
    )
    assert "65 MiB" in err.message and "structural_memory_bytes" in err.message


def test_memory_limit_hit_while_parsing_a_large_valid_model_is_not_called_invalid(tmp_path: Path) -> None:
    # The interpreter and onnx take about 150 MiB of address space; parsing a 96 MiB model needs
    # about its size again, which protobuf reports as a decode error ("Arena alloc failed").
    path = write(tmp_path, padded_onnx(96 * MIB))
    err = refused(path, GraphTooComplex, limits=BundleLimits(structural_memory_bytes=290 * MIB))
    assert "290 MiB" in err.message and "structural_memory_bytes" in err.message
    assert err.details.get("stage") in ("parsing the model", "running onnx.checker")


def test_time_limit(tmp_path: Path, net: bytes) -> None:
    err = refused(write(tmp_path, net), GraphTooComplex, limits=BundleLimits(structural_timeout_s=0.05))
    assert "time limit of 0.05 s" in err.message and "structural_timeout_s" in err.message


def test_missing_onnx_is_a_configuration_error(
    tmp_path: Path, net: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "site" / "onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'onnx\'", name="onnx")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    err = refused(write(tmp_path, net), ConfigurationError)
    assert "onnx" in err.message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path / "absent.onnx", InvalidOnnx)
    assert "absent.onnx" in err.message


# --- the sample builders the tests rely on ---------------------------------------------------------------


def test_sample_net_passes_the_full_checker_and_runs(net: bytes) -> None:
    onnx.checker.check_model(onnx.load_model_from_string(net), full_check=True)
    session = ort.InferenceSession(net, providers=["CPUExecutionProvider"])
    positions, uncertainties = session.run(None, {"input": np.zeros((4, 3, 128, 32), np.float32)})
    assert positions.shape == uncertainties.shape == (4, 2)
    assert float(uncertainties.min()) >= 0.01 and float(uncertainties.max()) <= 1.0
    assert localization_net_onnx() == net and localization_net_onnx(seed=1) != net


def test_padded_model_has_the_requested_size_and_is_valid() -> None:
    for target in (4096, 4097, 70_001, 1_000_000):
        data = padded_onnx(target)
        assert len(data) == target
    onnx.checker.check_model(data, full_check=True)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rows = session.get_inputs()[0].shape[1]
    assert session.run(None, {"input": np.ones((2, rows), np.float32)})[0].shape == (2, 256)


def test_sample_metadata_is_deterministic_in_both_dialects() -> None:
    canonical = bundle_of(sample_bundle_metadata(seed=3))
    legacy, dialect = normalise(legacy_bundle_metadata(seed=3))
    assert dialect == "legacy"
    assert sample_bundle_metadata(seed=3) == sample_bundle_metadata(seed=3) != sample_bundle_metadata(seed=4)
    assert canonical.model.output_shape == [[1, 2], [1, 2]]
    assert Bundle.model_validate(legacy).model.output_shape == [[1, 2]]
    assert canonical.components() == [
        "training_config",
        "performance_metrics",
        "normalization_stats",
        "sample_predictions",
    ]
