"""The two bundle dialects found in the wild, and their normalisation to the canonical form.

``canonical`` is what this project writes (DESIGN §3). ``legacy`` is the older training service's
form: ``bundle_metadata.exported_by``, no ``heimdall_version``, an integer ``model.version``, one
flat ``output_shape``, ``framework: "onnx"``, singular ``dataset_id``/``dataset_name``, per-epoch
metric lists, and samples with ``input`` and ``{"lat", "lon"}``. A document is called legacy when it
has a field that normalising rewrites (``framework: "onnx"`` and the per-epoch lists are kept as
they are, so they alone do not make it legacy). Normalising is pure and deterministic (the
sample ids it invents are derived from the sample's content), so a signature made over the canonical
form verifies whichever dialect was read.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

Dialect = Literal["canonical", "legacy"]

#: Namespace for the ids given to legacy samples, which carry none.
_SAMPLE_NAMESPACE = uuid.UUID("6f1c1c2e-5d0a-4a53-9a35-0e6f3f7d8b11")
_COORDINATES = {"lat": "latitude", "lon": "longitude"}


def detect_dialect(doc: dict[str, Any]) -> Dialect:
    """Which dialect ``doc`` is written in (a document with any legacy marker is legacy)."""
    meta = _obj(doc.get("bundle_metadata"))
    model = _obj(doc.get("model"))
    training = _obj(doc.get("training_config"))
    samples = doc.get("sample_predictions")
    # Only what normalising rewrites counts: ``framework: "onnx"`` and per-epoch metric lists are
    # kept as they are in the canonical form, so they do not make a document legacy.
    markers = (
        "exported_by" in meta and "created_by" not in meta,
        isinstance(model.get("version"), int) and not isinstance(model.get("version"), bool),
        _is_flat_shape(model.get("output_shape")),
        "dataset_id" in training or "dataset_name" in training,
        isinstance(samples, list)
        and any(isinstance(s, dict) and ("input" in s or "sample_id" not in s) for s in samples),
    )
    return "legacy" if any(markers) else "canonical"


def normalise(doc: dict[str, Any]) -> tuple[dict[str, Any], Dialect]:
    """Return the canonical form of ``doc`` (a new dict; ``doc`` is untouched) and its dialect.

    Fields this function does not know are carried over as they are. Values of the wrong type are
    left for the pydantic models to reject with a message naming the field.
    """
    dialect = detect_dialect(doc)
    # Copy only the containers the rules below write to: a deep copy would cost as much as the
    # whole document, however large its unknown fields are.
    out = dict(doc)
    for component in ("bundle_metadata", "model", "training_config", "performance_metrics"):
        if isinstance(out.get(component), dict):
            out[component] = dict(out[component])
    # Every rule below only fires on its legacy form, so applying them all to a canonical document
    # changes nothing; running them unconditionally also covers documents that mix the two.

    meta = out.get("bundle_metadata")
    if isinstance(meta, dict) and "exported_by" in meta and "created_by" not in meta:
        meta["created_by"] = meta.pop("exported_by")

    model = out.get("model")
    if isinstance(model, dict):
        version = model.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            model["version"] = str(version)
        if _is_flat_shape(model.get("output_shape")):
            model["output_shape"] = [model["output_shape"]]

    training = out.get("training_config")
    if isinstance(training, dict):
        for singular, plural in (("dataset_id", "dataset_ids"), ("dataset_name", "dataset_names")):
            if singular in training and plural not in training:
                value = training.pop(singular)
                training[plural] = None if value is None else [value]

    metrics = out.get("performance_metrics")
    if isinstance(metrics, dict):
        _fill_finals(metrics)

    samples = out.get("sample_predictions")
    if isinstance(samples, list):
        out["sample_predictions"] = [
            _normalise_sample(s, i) if isinstance(s, dict) else s for i, s in enumerate(samples)
        ]
    # Components the old writer filled with empty fallbacks ({}, [], nulls) are read as absent by
    # the models (Bundle._nothing_is_absent), whichever dialect the document is in.
    return out, dialect


def _fill_finals(metrics: dict[str, Any]) -> None:
    """Take ``final_*`` and ``best_*`` from the per-epoch lists where the legacy writer left null."""
    for final, history in (("final_train_loss", "train_loss"), ("final_val_loss", "val_loss")):
        values = metrics.get(history)
        if metrics.get(final) is None and isinstance(values, list):
            last = next((v for v in reversed(values) if isinstance(v, int | float)), None)
            if last is not None:
                metrics[final] = last
    val = metrics.get("val_loss")
    if isinstance(val, list) and metrics.get("best_epoch") is None:
        scored = [(v, i) for i, v in enumerate(val) if isinstance(v, int | float)]
        if scored:
            best_value, best_index = min(scored)
            metrics["best_epoch"] = best_index
            if metrics.get("best_val_loss") is None:
                metrics["best_val_loss"] = best_value


def _normalise_sample(sample: dict[str, Any], index: int) -> dict[str, Any]:
    out = dict(sample)
    if "input" in out and "input_metadata" not in out:
        value = out.pop("input")
        out["input_metadata"] = value if isinstance(value, dict) else {"input": value}
    for key in ("ground_truth", "prediction"):
        if isinstance(out.get(key), dict):
            out[key] = {_COORDINATES.get(k, k): v for k, v in out[key].items()}
    if "sample_id" not in out:
        content = json.dumps(sample, sort_keys=True, default=str)
        out["sample_id"] = str(uuid.uuid5(_SAMPLE_NAMESPACE, f"{index}:{content}"))
    return out


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_flat_shape(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and not any(isinstance(v, list) for v in value)
