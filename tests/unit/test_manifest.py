"""The checkpoint manifest: what is accepted, normalised and refused, with the field named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from heimdall.contracts.manifest import ExportFormat, Manifest, parse_manifest, read_manifest
from heimdall.errors import InvalidManifest
from heimdall.testing.sample_bundles import SEED_FALLBACKS


def manifest_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model_name": "localization-net",
        "version": "1.0.0",
        "architecture": "localization_net",
        "architecture_kwargs": {},
        "input_shape": [1, 3, 128, 32],
        "input_names": ["input"],
        "output_names": ["positions", "uncertainties"],
        "dynamic_batch": True,
        "opset": 17,
        "formats": ["onnx", "torchscript", "onnx_fp16", "onnx_int8", "tensorrt"],
        "tensorrt": {"precision": "fp16", "max_batch_size": 32, "workspace_gb": 4},
        "training_config": {},
        "performance_metrics": {},
        "normalization_stats": {},
        "sample_predictions": [],
        "description": "",
        "created_by": "",
    }
    doc.update(overrides)
    return doc


def test_the_design_example_is_accepted() -> None:
    manifest = parse_manifest(manifest_doc())
    assert manifest.formats[0] is ExportFormat.ONNX and len(manifest.formats) == 5
    # Empty components in the design's example mean "absent".
    assert manifest.training_config is None and manifest.normalization_stats is None
    assert manifest.sample_predictions is None
    assert manifest.tensorrt.profile == (1, 32, 32)
    assert manifest.batch_dim == "batch"
    assert manifest.tolerances.for_format(ExportFormat.ONNX) == 1e-5


def test_seed_fallback_components_are_absent_and_partial_ones_kept() -> None:
    manifest = parse_manifest(manifest_doc(**SEED_FALLBACKS))
    assert manifest.training_config is None and manifest.performance_metrics is None
    assert manifest.normalization_stats is None and manifest.sample_predictions is None
    partial = parse_manifest(
        manifest_doc(
            training_config={"epochs": 3, "optimizer": None}, normalization_stats={"feature_means": [0.1] * 3}
        )
    )
    assert partial.training_config is not None and partial.training_config.epochs == 3
    assert partial.normalization_stats is not None and partial.normalization_stats.means_and_stds() is None
    with pytest.raises(InvalidManifest, match="input has 3 channels"):
        parse_manifest(manifest_doc(normalization_stats={"feature_means": [0.1]}))


def test_onnx_is_always_built_first_and_formats_are_unique() -> None:
    manifest = parse_manifest(manifest_doc(formats=["onnx_int8", "torchscript", "onnx_int8"]))
    assert manifest.formats == [ExportFormat.ONNX, ExportFormat.ONNX_INT8, ExportFormat.TORCHSCRIPT]


def test_unknown_fields_are_refused_by_name() -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(manifest_doc(input_dtype="int64", x_team="vision"))
    assert info.value.code == "INVALID_MANIFEST" and info.value.field == "input_dtype"
    assert "unknown fields 'input_dtype', 'x_team'" in info.value.message
    with pytest.raises(InvalidManifest, match="unknown field 'inputdtype'"):
        read_manifest(json.dumps(manifest_doc(inputdtype="int64")).encode())


def test_every_documented_field_is_accepted() -> None:
    manifest = parse_manifest(
        manifest_doc(state_dict_key="state_dict", strip_prefix="model.", description="d", created_by="me")
    )
    assert (manifest.state_dict_key, manifest.strip_prefix) == ("state_dict", "model.")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"model_name": "../etc/passwd"}, "model_name"),
        ({"model_name": ""}, "model_name"),
        ({"version": "1.0 beta"}, "version"),
        ({"input_shape": [1, 0, 4]}, "input_shape"),
        ({"input_shape": []}, "input_shape"),
        ({"output_names": []}, "output_names"),
        ({"output_names": ["a", "a"]}, "output_names"),
        ({"input_names": ["x", "y"]}, "input_names"),
        ({"opset": 7}, "opset"),
        ({"formats": ["onnx", "coreml"]}, "formats"),
        ({"tensorrt": {"min_batch_size": 8, "max_batch_size": 4}}, "tensorrt"),
        ({"tensorrt": {"workspace": 4}}, "tensorrt"),
        ({"int8_mode": "aggressive"}, "int8_mode"),
        ({"normalization_stats": {"feature_means": [0.5], "feature_stds": [0.2]}}, "input has 3 channels"),
        ({"architecture": None}, "architecture"),
    ],
)
def test_invalid_manifests_name_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidManifest, match=field) as info:
        parse_manifest(manifest_doc(**override))
    assert info.value.code == "INVALID_MANIFEST"
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not acceptable JSON"),
        (b'{"model_name": "a", "model_name": "b"}', "duplicate key"),
        (b'{"opset": NaN}', "NaN"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_manifest_bytes_are_parsed_strictly(data: bytes, message: str) -> None:
    with pytest.raises(InvalidManifest, match=message):
        read_manifest(data)


def test_read_manifest_round_trip() -> None:
    manifest = read_manifest(json.dumps(manifest_doc(description="d")).encode())
    assert isinstance(manifest, Manifest)
    assert manifest.description == "d"
