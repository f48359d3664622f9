"""Deterministic sample bundle metadata and bundles, for tests, the demo and benchmarks.

Metadata in both dialects of DESIGN §3 (:func:`sample_bundle_metadata`, canonical;
:func:`legacy_bundle_metadata`, as the original Heimdall wrote it), with :data:`SEED_FALLBACKS` for
the empty components older exporters write, and whole ``.heimdall`` bundles around a model
(:func:`sample_bundle`, :func:`reference_bundle`). The models themselves are in
:mod:`heimdall.testing.sample_models`.

The metadata builders need neither ``onnx`` nor ``numpy`` (only ``onnx_bytes``, when given, is read
with ``onnx``). Everything is deterministic given its ``seed``: the same arguments give the same dict
or the same bytes, so tests can compare hashes and fixtures stay stable.
"""

from __future__ import annotations

import copy
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from heimdall import __version__
from heimdall.testing.sample_models import (
    DEFAULT_OPSET,
    LOCALIZATION_INPUT_SHAPE,
    LOCALIZATION_OUTPUT_SHAPE,
    LOCALIZATION_OUTPUTS,
    LOCALIZATION_PARAMETERS,
    ReferenceModel,
)

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
    "SEED_FALLBACKS",
    "legacy_bundle_metadata",
    "reference_bundle",
    "sample_bundle",
    "sample_bundle_metadata",
]
