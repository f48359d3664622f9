"""Full verification: integrity pass, signature policy and structural pass together, on real ONNX."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heimdall.bundle import parse_metadata, write_bundle
from heimdall.bundle.signing import TrustedKey, key_id_for
from heimdall.bundle.verify import verify_bundle
from heimdall.testing.sample_bundles import legacy_bundle_metadata, sample_bundle_metadata
from heimdall.testing.sample_models import localization_net_onnx


@pytest.fixture(scope="module")
def onnx_model() -> bytes:
    return localization_net_onnx()


def bundle_file(tmp_path: Path, onnx: bytes, meta: dict[str, Any] | None = None, **kwargs: object) -> Path:
    bundle, _ = parse_metadata(meta or sample_bundle_metadata(onnx))
    path = tmp_path / "model.heimdall"
    write_bundle(bundle, onnx, path, **kwargs)  # type: ignore[arg-type]
    return path


def test_a_valid_bundle_passes_every_check(tmp_path: Path, onnx_model: bytes) -> None:
    out = tmp_path / "extracted" / "model.onnx"
    report = verify_bundle(bundle_file(tmp_path, onnx_model), onnx_out=out)
    assert report.valid, report.message
    assert report.code is None
    assert report.structure is not None
    assert [t.name for t in report.structure.outputs] == ["positions", "uncertainties"]
    assert report.structure.inputs[0].shape == ("batch", 3, 128, 32)
    assert out.read_bytes() == onnx_model
    summary = report.to_dict()
    assert summary["valid"] is True
    assert summary["onnx_sha256"] == hashlib.sha256(onnx_model).hexdigest()
    assert summary["graph"]["outputs"][0] == {"name": "positions", "dtype": "float32", "shape": ["batch", 2]}


def test_legacy_bundle_with_one_flat_output_shape_passes(tmp_path: Path, onnx_model: bytes) -> None:
    report = verify_bundle(bundle_file(tmp_path, onnx_model, legacy_bundle_metadata(onnx_model)))
    assert report.valid, report.message
    assert report.read is not None and report.read.dialect == "canonical"  # our writer normalised it


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"onnx_opset": 13}, "SHAPE_MISMATCH"),
        ({"input_shape": [1, 3, 64, 32]}, "SHAPE_MISMATCH"),
        ({"output_shape": [[1, 2], [1, 2], [1, 2]]}, "SHAPE_MISMATCH"),
        ({"output_shape": [[1, 3]]}, "SHAPE_MISMATCH"),
    ],
)
def test_declarations_that_disagree_with_the_graph(
    tmp_path: Path, onnx_model: bytes, change: dict[str, Any], code: str
) -> None:
    report = verify_bundle(bundle_file(tmp_path, onnx_model, sample_bundle_metadata(model=change)))
    assert not report.valid
    assert report.code == code
    assert report.message


def test_not_an_onnx_model(tmp_path: Path) -> None:
    report = verify_bundle(bundle_file(tmp_path, b"this is not a protobuf" * 10, sample_bundle_metadata()))
    assert (report.valid, report.code) == (False, "INVALID_ONNX")


def test_an_integrity_failure_stops_before_the_structural_pass(tmp_path: Path, onnx_model: bytes) -> None:
    path = bundle_file(tmp_path, onnx_model)
    doc = json.loads(path.read_bytes())
    doc["integrity"]["onnx_sha256"] = "0" * 64
    path.write_text(json.dumps(doc))
    report = verify_bundle(path)
    assert report.code == "CHECKSUM_MISMATCH"
    assert report.structure is None
    assert report.to_dict()["valid"] is False


def test_signature_policy(tmp_path: Path, onnx_model: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    trusted = TrustedKey(key_id=key_id_for(key.public_key()), public_key=key.public_key())
    signed = bundle_file(tmp_path, onnx_model, signing_key=key)
    assert verify_bundle(signed, trusted_keys=[trusted], require_signature=True).signature_state == "verified"
    assert verify_bundle(signed).signature_state == "unverified"
    unsigned = bundle_file(tmp_path / "u", onnx_model)
    report = verify_bundle(unsigned, trusted_keys=[trusted], require_signature=True)
    assert (report.valid, report.code) == (False, "BAD_SIGNATURE")
    other = Ed25519PrivateKey.generate()
    wrong = TrustedKey(key_id=key_id_for(other.public_key()), public_key=other.public_key())
    assert verify_bundle(signed, trusted_keys=[wrong]).code == "BAD_SIGNATURE"
