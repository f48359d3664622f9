"""Small, real sample ONNX models, for tests, the demo and benchmarks.

* :func:`localization_net_onnx`: a small conv net shaped like DESIGN §4's ``localization_net``;
* :func:`padded_onnx`: a valid model of an exact size, for size limits and benchmarks;
* old-opset models: real ones from the ``onnx`` package's backend test data
  (:func:`onnx_backend_model`, :data:`OLD_OPSET_BACKEND_MODELS`) and crafted ones that cannot be
  upgraded or served (:func:`unconvertible_onnx`, :func:`unloadable_after_upgrade_onnx`).

The builders import ``onnx`` and ``numpy`` inside the functions: this module is part of the Lambda core
layer, where neither may be installed. Everything is deterministic given its ``seed``: the same
arguments give the same bytes, so tests can compare hashes. Bundle metadata and whole bundles around
these models are in :mod:`heimdall.testing.sample_bundles`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heimdall import __version__

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    import numpy as np
    from onnx import ModelProto, TensorProto

LOCALIZATION_INPUT_SHAPE: tuple[int, int, int, int] = (1, 3, 128, 32)
LOCALIZATION_OUTPUTS: tuple[str, str] = ("positions", "uncertainties")
LOCALIZATION_OUTPUT_SHAPE: tuple[int, int] = (1, 2)
#: The symbolic batch dimension of dynamic-batch sample models.
BATCH_DIM = "batch"
#: The default-domain opset the samples use unless told otherwise.
DEFAULT_OPSET = 17
#: The smallest opset the builders support (``Clip`` takes its bounds as inputs from opset 11).
MIN_OPSET = 11
PRODUCER_NAME = "heimdall"

_CONV1 = (16, 3, 3, 3)  # out channels, in channels, kernel h, kernel w
_CONV2 = (32, 16, 3, 3)
_HEAD = (2, 32)  # Gemm with transB=1: weight is [out, in]
#: Trainable parameters of :func:`localization_net_onnx` (weights and biases; not the Clip bounds).
LOCALIZATION_PARAMETERS = (
    _CONV1[0] * _CONV1[1] * _CONV1[2] * _CONV1[3]
    + _CONV1[0]
    + _CONV2[0] * _CONV2[1] * _CONV2[2] * _CONV2[3]
    + _CONV2[0]
    + 2 * (_HEAD[0] * _HEAD[1] + _HEAD[0])
)

_UNCERTAINTY_MIN = 0.01
_UNCERTAINTY_MAX = 1.0
_PAD_COLUMNS = 256  # float32 columns of the padding weight: 1 KiB per row


def localization_net_onnx(*, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, seed: int = 0) -> bytes:
    """A small conv net shaped like DESIGN §4's ``localization_net``, as serialized ONNX.

    Input ``input`` float32 ``[B, 3, 128, 32]``; outputs ``positions [B, 2]`` and ``uncertainties
    [B, 2]`` (Sigmoid then Clip to ``[0.01, 1.0]``). ``B`` is the symbolic dim ``"batch"`` when
    ``dynamic_batch`` is true, else 1. Weights are random (numpy, ``seed``); the model passes
    ``onnx.checker.check_model(full_check=True)`` and runs in ONNX Runtime. Its IR version is the
    lowest that supports ``opset``, so older runtimes load it too.
    """
    import numpy as np  # noqa: PLC0415 - keep the core layer free of numpy/onnx at import time
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported by the sample builders (minimum {MIN_OPSET})")
    rng = np.random.default_rng(seed)
    batch: int | str = BATCH_DIM if dynamic_batch else 1

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> TensorProto:
        values = rng.standard_normal(shape).astype(np.float32) * np.float32(1.0 / np.sqrt(fan_in))
        return numpy_helper.from_array(values, name)

    def bias(name: str, size: int) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(size) * 0.01).astype(np.float32), name)

    initializers = [
        weight("conv1.weight", _CONV1, _CONV1[1] * _CONV1[2] * _CONV1[3]),
        bias("conv1.bias", _CONV1[0]),
        weight("conv2.weight", _CONV2, _CONV2[1] * _CONV2[2] * _CONV2[3]),
        bias("conv2.bias", _CONV2[0]),
        weight("position_head.weight", _HEAD, _HEAD[1]),
        bias("position_head.bias", _HEAD[0]),
        weight("uncertainty_head.weight", _HEAD, _HEAD[1]),
        bias("uncertainty_head.bias", _HEAD[0]),
        numpy_helper.from_array(np.array(_UNCERTAINTY_MIN, dtype=np.float32), "uncertainty.min"),
        numpy_helper.from_array(np.array(_UNCERTAINTY_MAX, dtype=np.float32), "uncertainty.max"),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "conv1.weight", "conv1.bias"],
            ["conv1"],
            name="conv1",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node(
            "Conv",
            ["relu1", "conv2.weight", "conv2.bias"],
            ["conv2"],
            name="conv2",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
        helper.make_node(
            "Gemm",
            ["features", "position_head.weight", "position_head.bias"],
            ["positions"],
            name="position_head",
            transB=1,
        ),
        helper.make_node(
            "Gemm",
            ["features", "uncertainty_head.weight", "uncertainty_head.bias"],
            ["uncertainty_logits"],
            name="uncertainty_head",
            transB=1,
        ),
        helper.make_node(
            "Sigmoid", ["uncertainty_logits"], ["uncertainty_sigmoid"], name="uncertainty_sigmoid"
        ),
        helper.make_node(
            "Clip",
            ["uncertainty_sigmoid", "uncertainty.min", "uncertainty.max"],
            ["uncertainties"],
            name="uncertainty_clip",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "localization_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *LOCALIZATION_INPUT_SHAPE[1:]])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, LOCALIZATION_OUTPUT_SHAPE[1]])
            for name in LOCALIZATION_OUTPUTS
        ],
        initializer=initializers,
    )
    serialized: bytes = _finish(graph, opset, model_name="localization-net-v1").SerializeToString()
    return serialized


def padded_onnx(
    target_bytes: int, *, opset: int = DEFAULT_OPSET, seed: int = 0, dynamic_batch: bool = True
) -> bytes:
    """A valid model (``output = input @ weight + bias``) of exactly ``target_bytes`` bytes (≥ 4 KiB).

    The bulk is one float32 weight ``[rows, 256]`` filled with seeded random values (so it does not
    compress away); the rest is padding in the model's ``doc_string``. Targets under 4 KiB give the
    closest model possible (the smallest is about 2.3 KiB). The weight is copied into the message
    only once, but serializing holds three copies for a moment (the message, protobuf's output buffer
    and the returned bytes): about 3x ``target_bytes`` at the peak, 1.5 s and 300 MB for 100 MiB.
    The input is ``input [B, rows]`` float32, the output ``output [B, 256]``.
    """
    import numpy as np  # noqa: PLC0415 - keep the core layer free of numpy/onnx at import time
    from onnx import TensorProto, helper  # noqa: PLC0415

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported by the sample builders (minimum {MIN_OPSET})")
    if target_bytes < 0:
        raise ValueError(f"target_bytes must not be negative, got {target_bytes}")
    row_bytes = _PAD_COLUMNS * 4
    # Leave 1-2 KiB beyond the rows for the graph's own bytes and the doc_string padding (_pad_to).
    rows = max(1, (target_bytes - 2 * row_bytes) // row_bytes)
    rng = np.random.default_rng(seed)
    batch: int | str = BATCH_DIM if dynamic_batch else 1

    bias = helper.make_tensor(
        "bias",
        TensorProto.FLOAT,
        [_PAD_COLUMNS],
        rng.standard_normal(_PAD_COLUMNS, dtype=np.float32).tobytes(),
        raw=True,
    )
    # The weight's bytes go straight into the finished model's initializer: helper.make_graph and
    # make_model copy their arguments, which would hold the big tensor three times over.
    weight = TensorProto(name="weight", data_type=TensorProto.FLOAT, dims=[rows, _PAD_COLUMNS])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weight"], ["projected"], name="matmul"),
            helper.make_node("Add", ["projected", "bias"], ["output"], name="add"),
        ],
        "padded",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, rows])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, _PAD_COLUMNS])],
        initializer=[weight, bias],
    )
    model = _finish(graph, opset, model_name="padded")
    values = rng.standard_normal((rows, _PAD_COLUMNS), dtype=np.float32)
    values *= np.float32(0.01)
    raw = values.tobytes()
    del values
    model.graph.initializer[0].raw_data = raw
    del raw
    _pad_to(model, target_bytes)
    serialized: bytes = model.SerializeToString()
    return serialized


# --- old-opset models: real ones from ONNX's backend tests, and crafted ones -------------------------

#: Models of the ``onnx`` package's own backend test data (``pytorch-converted``) stamped with opset 6
#: whose operators ONNX Runtime no longer implements at that version (``BatchNormalization(6)``,
#: ``AveragePool(1)``): a session cannot be created from them, and ``onnx.version_converter`` makes
#: them load and give the reference outputs.
OLD_OPSET_BACKEND_MODELS = (
    "test_BatchNorm2d_eval",
    "test_BatchNorm3d_momentum_eval",
    "test_BatchNorm1d_3d_input_eval",
    "test_AvgPool2d",
    "test_AvgPool1d_stride",
    "test_AvgPool3d_stride1_pad0_gpu_input",
)


@dataclass(frozen=True)
class ReferenceModel:
    """A model with inputs and the outputs it must give for them, by the graph's own names."""

    name: str
    onnx: bytes
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def onnx_backend_model(name: str, *, suite: str = "pytorch-converted") -> ReferenceModel:
    """``name`` from the installed ``onnx`` package's backend test data: its ``model.onnx`` bytes
    (unchanged) and ``test_data_set_0``'s inputs and reference outputs."""
    import onnx  # noqa: PLC0415 - keep the core layer free of numpy/onnx at import time
    from onnx import numpy_helper  # noqa: PLC0415

    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / suite / name
    data = (folder / "model.onnx").read_bytes()
    graph = onnx.load_model_from_string(data).graph
    initializers = {tensor.name for tensor in graph.initializer}
    input_names = [v.name for v in graph.input if v.name not in initializers]
    output_names = [v.name for v in graph.output]

    def tensors(prefix: str, names: list[str]) -> dict[str, np.ndarray]:
        files = sorted((folder / "test_data_set_0").glob(f"{prefix}_*.pb"))
        if len(files) != len(names):
            raise ValueError(f"{name}: {len(files)} {prefix} files for {len(names)} graph {prefix}s")
        return {n: numpy_helper.to_array(onnx.load_tensor(str(f))) for n, f in zip(names, files, strict=True)}

    return ReferenceModel(name, data, tensors("input", input_names), tensors("output", output_names))


def unconvertible_onnx() -> bytes:
    """An opset-6 model ONNX Runtime cannot load (``BatchNormalization(6)``) and the version converter
    cannot upgrade: it also uses ``Affine``, an experimental operator with no schema to convert from.
    It passes ``onnx.checker.check_model(full_check=True)`` (the structural pass)."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    batch_norm = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["t"], is_test=1)
    return _old_opset_model([batch_norm, helper.make_node("Affine", ["t"], ["y"])], TensorProto.FLOAT)


def unloadable_after_upgrade_onnx() -> bytes:
    """An opset-6 model the converter upgrades but ONNX Runtime still cannot load: ``LRN`` on
    ``double`` has no ONNX Runtime kernel at any opset."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    return _old_opset_model([helper.make_node("LRN", ["x"], ["y"], size=3)], TensorProto.DOUBLE)


def _old_opset_model(nodes: list[Any], elem_type: int) -> bytes:
    """``nodes`` (``x`` → ``y``, ``[1, 3, 4, 4]``, with per-channel initializers ``s b m v``) at opset 6."""
    import numpy as np  # noqa: PLC0415
    from onnx import helper, numpy_helper  # noqa: PLC0415

    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    used = {name for node in nodes for name in node.input}
    initializers = [
        numpy_helper.from_array(np.full(3, value, dtype=dtype), name)
        for name, value in (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))
        if name in used
    ]
    shape = [1, 3, 4, 4]
    graph = helper.make_graph(
        nodes,
        "old_opset",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=4)
    serialized: bytes = model.SerializeToString()
    return serialized


# --- helpers -------------------------------------------------------------------------------------


def _finish(graph: Any, opset: int, *, model_name: str) -> ModelProto:
    """Wrap ``graph`` in a model with our producer, metadata, and the lowest IR version for ``opset``."""
    import onnx  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415

    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name=PRODUCER_NAME,
        producer_version=__version__,
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    helper.set_model_props(model, {"model_name": model_name, "architecture": graph.name})
    if model.ir_version > onnx.IR_VERSION:  # pragma: no cover - an opset newer than this onnx knows
        raise ValueError(
            f"opset {opset} needs IR version {model.ir_version}, newer than onnx {onnx.__version__} knows"
        )
    return model


def _pad_to(model: ModelProto, target_bytes: int) -> None:
    """Set ``model.doc_string`` so that the serialized model is exactly ``target_bytes``, if it can be.

    ``ByteSize()`` sizes the message without serializing it. A string field costs one tag byte, a
    varint length (one byte up to 127, two up to 16383) and its characters, so any missing size in
    2..129 or 131..16386 can be hit exactly; :func:`padded_onnx` picks its row count so that it is.
    """
    missing = target_bytes - model.ByteSize()
    if 2 <= missing <= 129:
        model.doc_string = "." * (missing - 2)
    elif 131 <= missing <= 16_386:
        model.doc_string = "." * (missing - 3)


__all__ = [
    "BATCH_DIM",
    "DEFAULT_OPSET",
    "LOCALIZATION_INPUT_SHAPE",
    "LOCALIZATION_OUTPUTS",
    "LOCALIZATION_OUTPUT_SHAPE",
    "LOCALIZATION_PARAMETERS",
    "MIN_OPSET",
    "OLD_OPSET_BACKEND_MODELS",
    "PRODUCER_NAME",
    "ReferenceModel",
    "localization_net_onnx",
    "onnx_backend_model",
    "padded_onnx",
    "unconvertible_onnx",
    "unloadable_after_upgrade_onnx",
]
