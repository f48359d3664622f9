"""Small, real sample models and bundle metadata, for tests, the demo and benchmarks.

The ONNX builders import ``onnx`` and ``numpy`` inside the functions: this module is part of the Lambda
core layer, where neither may be installed. The metadata builders need neither.

Everything here is deterministic given its ``seed``: the same arguments give the same bytes (ONNX) or
the same dict (metadata), so tests can compare hashes and fixtures stay stable.
"""

from __future__ import annotations

import copy
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from heimdall import __version__

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    import numpy as np
    from onnx import ModelProto, TensorProto

#: Shapes of the sample localization net (DESIGN §4), batch fixed to 1 as bundles declare it.
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
_NORMALIZATION = {"feature_means": [0.485, 0.456, 0.406], "feature_stds": [0.229, 0.224, 0.225]}
#: What the original Heimdall's exporter writes for each optional component when it has no data for
#: it (its as-built report): nulls, empty lists, an empty object. Readers treat such a component as
#: absent (see :class:`heimdall.bundle.models.Bundle`).
SEED_FALLBACKS: dict[str, Any] = {
    "training_config": {
        "epochs": None,
        "batch_size": None,
        "learning_rate": None,
        "optimizer": None,
        "loss_function": None,
    },
    "performance_metrics": {
        "train_loss": [],
        "val_loss": [],
        "train_rmse": [],
        "val_rmse": [],
        "best_epoch": None,
        "best_val_loss": None,
        "final_train_loss": None,
        "final_val_loss": None,
    },
    "normalization_stats": {},
    "sample_predictions": [],
}
_SAMPLE_NAMESPACE = uuid.UUID("3b1f4d4e-8f0a-4c1e-9a57-2f3c1d9e0b42")
_EPOCH = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
_CITIES = (
    (41.9028, 12.4964, 145.0),
    (45.4642, 9.1900, 433.5),
    (40.8518, 14.2681, 144.8),
    (43.7696, 11.2558, 430.1),
    (44.4949, 11.3426, 145.5),
    (38.1157, 13.3615, 432.0),
    (45.0703, 7.6869, 146.2),
    (37.5079, 15.0830, 434.7),
    (44.4056, 8.9463, 145.9),
    (45.4408, 12.3155, 431.3),
)


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


def sample_bundle_metadata(
    onnx_bytes: bytes | None = None,
    *,
    seed: int = 0,
    num_samples: int = 3,
    fallbacks: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Canonical-dialect bundle metadata (DESIGN §3) for :func:`localization_net_onnx`.

    Everything of a bundle except ``model.onnx_model_base64``, ``integrity`` and ``signature``: opset
    17, input shape ``[1, 3, 128, 32]``, output shapes ``[[1, 2], [1, 2]]``, and all four optional
    components (``num_samples`` sample predictions, 1 to 10). Ids are uuids and ``created_at`` is an
    ISO-8601 timestamp, all derived from ``seed``, so equal arguments give equal dicts.

    ``onnx_bytes``, when given, is read (needs ``onnx``) to set ``parameters_count`` to the model's
    number of float initializer elements of rank 1 or more. ``overrides`` are merged in deeply: a dict
    value updates the dict already there, any other value (``None`` included) replaces it; e.g.
    ``sample_bundle_metadata(model={"onnx_opset": 13}, training_config=None)``.

    ``fallbacks`` puts :data:`SEED_FALLBACKS` in place of the four optional components before the
    overrides are merged, so ``fallbacks=True, normalization_stats={"feature_means": [0.5]}`` is a
    partly filled component.
    """
    ids = _Ids(seed)
    rnd = random.Random(seed)  # noqa: S311 - sample values, not secrets
    doc: dict[str, Any] = {
        "format_version": "1.0.0",
        "bundle_metadata": {
            "bundle_id": ids.next(),
            "created_at": (_EPOCH + timedelta(minutes=seed)).isoformat(),
            "created_by": "system",
            "description": "Sample localization net bundle",
            "heimdall_version": __version__,
        },
        "model": {
            "model_id": ids.next(),
            "model_name": "localization-net-v1",
            "version": "1.0.0",
            "architecture": "localization_net",
            "framework": "pytorch",
            "onnx_opset": DEFAULT_OPSET,
            "input_shape": list(LOCALIZATION_INPUT_SHAPE),
            "output_shape": [list(LOCALIZATION_OUTPUT_SHAPE) for _ in LOCALIZATION_OUTPUTS],
            "parameters_count": _parameters_count(onnx_bytes),
        },
        "training_config": {
            "epochs": 50,
            "batch_size": 32,
            "learning_rate": 0.001,
            "optimizer": "adam",
            "loss_function": "gaussian_nll",
            "validation_split": 0.2,
            "dataset_ids": [ids.next()],
            "dataset_names": ["Synthetic 10k"],
        },
        "performance_metrics": {
            "final_train_loss": 0.0123,
            "final_val_loss": 0.0145,
            "final_train_accuracy": 0.95,
            "final_val_accuracy": 0.93,
            "best_epoch": 42,
            "training_duration_seconds": 3600,
            "inference_latency_ms": 45.3,
            "onnx_speedup_factor": 2.1,
        },
        "normalization_stats": copy.deepcopy(_NORMALIZATION),
        "sample_predictions": [
            {
                "sample_id": ids.next(),
                "input_metadata": {"frequency_mhz": freq},
                "ground_truth": {"latitude": lat, "longitude": lon},
                "prediction": {
                    "latitude": round(lat + dlat, 6),
                    "longitude": round(lon + dlon, 6),
                    "uncertainty_x": ux,
                    "uncertainty_y": uy,
                },
                "error_meters": err,
            }
            for lat, lon, freq, dlat, dlon, ux, uy, err in _samples(rnd, num_samples)
        ],
    }
    return _merge(_with_fallbacks(doc) if fallbacks else doc, overrides)


def sample_bundle(
    onnx_bytes: bytes,
    *,
    compress: bool = False,
    dialect: Literal["canonical", "legacy"] = "canonical",
    fallbacks: bool = False,
    **metadata: Any,
) -> bytes:
    """A valid ``.heimdall`` bundle of ``onnx_bytes``, as bytes.

    ``metadata`` goes to :func:`sample_bundle_metadata` (or :func:`legacy_bundle_metadata` when
    ``dialect`` is ``"legacy"``): ``seed``, ``num_samples``, overrides; ``fallbacks`` too. A canonical
    bundle without fallbacks is written by this project's writer (with ``integrity``). A legacy one, or
    one with fallbacks, is written as the original Heimdall wrote it: the document as it is, in one
    ``json.dumps``, the model's base64 inline, no ``integrity``; our writer would normalise it.
    """
    import io  # noqa: PLC0415 - only the callers that build bundles need the writer

    from heimdall.bundle import parse_metadata, write_bundle  # noqa: PLC0415

    if dialect == "legacy" or fallbacks:
        import base64  # noqa: PLC0415
        import gzip  # noqa: PLC0415
        import json  # noqa: PLC0415

        build = legacy_bundle_metadata if dialect == "legacy" else sample_bundle_metadata
        doc = build(onnx_bytes, fallbacks=fallbacks, **metadata)
        doc["model"]["onnx_model_base64"] = base64.b64encode(onnx_bytes).decode("ascii")
        data = json.dumps(doc).encode("utf-8")
        return gzip.compress(data, mtime=0) if compress else data
    bundle, _ = parse_metadata(sample_bundle_metadata(onnx_bytes, **metadata))
    out = io.BytesIO()
    write_bundle(bundle, onnx_bytes, out, compress=compress)
    return out.getvalue()


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


def reference_bundle(reference: ReferenceModel, *, with_samples: bool = True, **overrides: Any) -> bytes:
    """A valid bundle of ``reference.onnx`` whose metadata describes its graph (opset, shapes); with
    ``with_samples`` its one sample prediction carries the model's inputs (``input_metadata``) and
    reference outputs (``prediction``) by the graph's names, which lets an opset upgrade be checked.
    ``overrides`` go to :func:`sample_bundle_metadata` (e.g. ``model={"model_name": ...}``)."""
    return sample_bundle(reference.onnx, **_graph_metadata(reference, with_samples=with_samples, **overrides))


def _graph_metadata(reference: ReferenceModel, *, with_samples: bool, **overrides: Any) -> dict[str, Any]:
    import onnx  # noqa: PLC0415

    proto = onnx.load_model_from_string(reference.onnx)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))

    def shape(value: Any) -> list[int | str]:
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in dims]

    initializers = {tensor.name for tensor in proto.graph.initializer}
    first_input = next(v for v in proto.graph.input if v.name not in initializers)
    described: dict[str, Any] = {
        "model": {
            "model_name": reference.name.replace("_", "-").strip("-"),
            "architecture": "onnx_backend_test",
            "onnx_opset": opset,
            "input_shape": shape(first_input),
            "output_shape": [shape(v) for v in proto.graph.output],
        },
        "sample_predictions": [
            {
                "sample_id": str(uuid.uuid5(_SAMPLE_NAMESPACE, reference.name)),
                "input_metadata": {name: value.tolist() for name, value in reference.inputs.items()},
                "prediction": {name: value.tolist() for name, value in reference.outputs.items()},
            }
        ]
        if with_samples
        else None,
    }
    return _merge(described, overrides)


def legacy_bundle_metadata(
    onnx_bytes: bytes | None = None,
    *,
    seed: int = 0,
    num_samples: int = 3,
    fallbacks: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """The model of :func:`sample_bundle_metadata`, written in the *legacy* dialect of DESIGN §3.

    ``bundle_metadata.exported_by`` (no ``created_by``, no ``heimdall_version``), an integer
    ``model.version``, one flat ``output_shape`` ``[1, 2]``, ``framework: "onnx"``, a training config
    with ``early_stopping``/``early_stopping_patience`` and singular ``dataset_id``/``dataset_name``,
    performance metrics as per-epoch lists (``train_loss``, ``val_loss``, ``train_rmse``,
    ``val_rmse``, with a null entry) plus ``best_epoch``, ``best_val_loss`` and ``final_*`` (two of
    them null), and samples with ``input`` and ``{"lat", "lon"}`` and no ``sample_id``. Same
    ``seed``, ``onnx_bytes``, ``fallbacks`` and ``overrides`` rules as :func:`sample_bundle_metadata`.
    """
    ids = _Ids(seed)
    rnd = random.Random(seed)  # noqa: S311 - sample values, not secrets
    epochs = 6
    train_loss: list[float | None] = [round(0.09 / (e + 1) + 0.01, 5) for e in range(epochs)]
    val_loss: list[float | None] = [round(0.1 / (e + 1) + 0.012, 5) for e in range(epochs)]
    val_loss[2] = None  # the old trainer wrote null for an epoch whose validation was skipped
    doc: dict[str, Any] = {
        "format_version": "1.0.0",
        "bundle_metadata": {
            "bundle_id": ids.next(),
            "created_at": (_EPOCH + timedelta(minutes=seed)).isoformat(),
            "exported_by": "trainer@heimdall",
            "description": "Sample localization net bundle (legacy writer)",
        },
        "model": {
            "model_id": ids.next(),
            "model_name": "localization-net-v1",
            "version": 1,
            "architecture": "localization_net",
            "framework": "onnx",
            "onnx_opset": DEFAULT_OPSET,
            "input_shape": list(LOCALIZATION_INPUT_SHAPE),
            "output_shape": list(LOCALIZATION_OUTPUT_SHAPE),
            "parameters_count": _parameters_count(onnx_bytes),
        },
        "training_config": {
            "epochs": epochs,
            "batch_size": 32,
            "learning_rate": 0.001,
            "optimizer": "adam",
            "loss_function": "gaussian_nll",
            "validation_split": 0.2,
            "early_stopping": True,
            "early_stopping_patience": 5,
            "dataset_id": ids.next(),
            "dataset_name": "Synthetic 10k",
        },
        "performance_metrics": {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_rmse": [round(v**0.5, 5) if v is not None else None for v in train_loss],
            "val_rmse": [round(v**0.5, 5) if v is not None else None for v in val_loss],
            "best_epoch": epochs - 1,
            "best_val_loss": val_loss[-1],
            "final_train_loss": None,
            "final_val_loss": None,
        },
        "normalization_stats": copy.deepcopy(_NORMALIZATION),
        "sample_predictions": [
            {
                "input": {"frequency_mhz": freq},
                "ground_truth": {"lat": lat, "lon": lon},
                "prediction": {
                    "lat": round(lat + dlat, 6),
                    "lon": round(lon + dlon, 6),
                    "uncertainty_x": ux,
                    "uncertainty_y": uy,
                },
                "error_meters": err,
            }
            for lat, lon, freq, dlat, dlon, ux, uy, err in _samples(rnd, num_samples)
        ],
    }
    return _merge(_with_fallbacks(doc) if fallbacks else doc, overrides)


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


def _parameters_count(onnx_bytes: bytes | None) -> int:
    if onnx_bytes is None:
        return LOCALIZATION_PARAMETERS
    import onnx  # noqa: PLC0415
    from onnx import TensorProto  # noqa: PLC0415

    model = onnx.load_model_from_string(onnx_bytes)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    count = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in floats and len(tensor.dims) >= 1:
            size = 1
            for dim in tensor.dims:
                size *= dim
            count += size
    return count


class _Ids:
    """uuid-formatted ids derived from a seed: deterministic, distinct, and valid uuids."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return str(uuid.uuid5(_SAMPLE_NAMESPACE, f"{self._seed}:{self._n}"))


_Sample = tuple[float, float, float, float, float, float, float, float]


def _samples(rnd: random.Random, count: int) -> list[_Sample]:
    """``count`` samples: lat, lon, frequency, prediction offsets, uncertainties, error in meters."""
    if not 1 <= count <= len(_CITIES):
        raise ValueError(f"num_samples must be between 1 and {len(_CITIES)}, got {count}")
    out = []
    for lat, lon, freq in _CITIES[:count]:
        dlat = rnd.uniform(-0.0005, 0.0005)
        dlon = rnd.uniform(-0.0005, 0.0005)
        error = round(((dlat * 111_320) ** 2 + (dlon * 111_320 * 0.75) ** 2) ** 0.5, 1)
        out.append(
            (lat, lon, freq, dlat, dlon, round(rnd.uniform(10, 40), 1), round(rnd.uniform(10, 40), 1), error)
        )
    return out


def _with_fallbacks(doc: dict[str, Any]) -> dict[str, Any]:
    return doc | copy.deepcopy(SEED_FALLBACKS)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = base
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


__all__ = [
    "BATCH_DIM",
    "DEFAULT_OPSET",
    "LOCALIZATION_INPUT_SHAPE",
    "LOCALIZATION_OUTPUTS",
    "LOCALIZATION_OUTPUT_SHAPE",
    "LOCALIZATION_PARAMETERS",
    "OLD_OPSET_BACKEND_MODELS",
    "PRODUCER_NAME",
    "SEED_FALLBACKS",
    "ReferenceModel",
    "legacy_bundle_metadata",
    "localization_net_onnx",
    "onnx_backend_model",
    "padded_onnx",
    "reference_bundle",
    "sample_bundle",
    "sample_bundle_metadata",
    "unconvertible_onnx",
    "unloadable_after_upgrade_onnx",
]
