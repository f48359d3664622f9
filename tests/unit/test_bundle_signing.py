"""Ed25519 signing: sign, verify, tamper, trust policy, and what writers do with a signature."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heimdall.bundle import ComponentSelection, parse_metadata, read_bundle, write_bundle
from heimdall.bundle.signing import (
    TrustedKey,
    check_signature,
    generate_key_pair,
    key_id_for,
    load_private_key,
    load_trusted_key,
)
from heimdall.errors import BadSignature, ChecksumMismatch, ConfigurationError
from heimdall.testing.sample_bundles import legacy_bundle_metadata, sample_bundle_metadata

ONNX = b"\x08\x07" + bytes(range(200)) * 10


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def trusted(key: Ed25519PrivateKey, key_id: str | None = None) -> TrustedKey:
    return TrustedKey(key_id=key_id or key_id_for(key.public_key()), public_key=key.public_key())


def signed_bytes(key: Ed25519PrivateKey, meta: dict[str, Any] | None = None, **kwargs: object) -> bytes:
    bundle, _ = parse_metadata(meta or sample_bundle_metadata())
    out = io.BytesIO()
    write_bundle(bundle, ONNX, out, signing_key=key, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def test_signed_bundle_verifies_with_the_trusted_key(key: Ed25519PrivateKey) -> None:
    result = read_bundle(signed_bytes(key))
    assert result.bundle.signature is not None
    assert result.bundle.signature.algorithm == "ed25519"
    assert result.bundle.signature.key_id == key_id_for(key.public_key())
    assert check_signature(result.bundle, [trusted(key)]) == "verified"
    assert check_signature(result.bundle, [trusted(key)], require=True) == "verified"
    assert check_signature(result.bundle) == "unverified"


def test_named_key_ids(key: Ed25519PrivateKey) -> None:
    bundle = read_bundle(signed_bytes(key, key_id="release-2026")).bundle
    assert bundle.signature is not None and bundle.signature.key_id == "release-2026"
    assert check_signature(bundle, [trusted(key, "release-2026")]) == "verified"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["model"].__setitem__("version", "9.9.9"),
        lambda d: d["bundle_metadata"].__setitem__("created_by", "mallory"),
        lambda d: d["normalization_stats"]["feature_means"].__setitem__(0, 0.5),
        lambda d: d["sample_predictions"].pop(),
        lambda d: d.pop("training_config"),
        lambda d: d.__setitem__("x_added", 1),
    ],
)
def test_any_metadata_change_breaks_the_signature(key: Ed25519PrivateKey, mutate: object) -> None:
    doc = json.loads(signed_bytes(key))
    mutate(doc)  # type: ignore[operator]
    bundle = read_bundle(json.dumps(doc).encode()).bundle
    with pytest.raises(BadSignature, match="does not match") as info:
        check_signature(bundle, [trusted(key)])
    assert info.value.code == "BAD_SIGNATURE"


def test_a_swapped_model_is_caught(key: Ed25519PrivateKey) -> None:
    doc = json.loads(signed_bytes(key))
    other = json.loads(signed_bytes(key))  # same metadata
    other_model = io.BytesIO()
    bundle, _ = parse_metadata(sample_bundle_metadata())
    write_bundle(bundle, ONNX[::-1], other_model)
    doc["model"]["onnx_model_base64"] = json.loads(other_model.getvalue())["model"]["onnx_model_base64"]
    with pytest.raises(ChecksumMismatch):
        read_bundle(json.dumps(doc).encode())
    # ... and rewriting integrity to match the new model breaks the signature instead.
    doc["integrity"] = json.loads(other_model.getvalue())["integrity"]
    with pytest.raises(BadSignature):
        check_signature(read_bundle(json.dumps(doc).encode()).bundle, [trusted(key)])
    assert other["signature"] != {}


def test_untrusted_key_and_missing_signature(key: Ed25519PrivateKey) -> None:
    stranger = Ed25519PrivateKey.generate()
    bundle = read_bundle(signed_bytes(stranger)).bundle
    with pytest.raises(BadSignature, match="not among the trusted keys"):
        check_signature(bundle, [trusted(key)])
    # A trusted id on a different key: verification fails, not lookup.
    impostor = read_bundle(signed_bytes(stranger, key_id=key_id_for(key.public_key()))).bundle
    with pytest.raises(BadSignature, match="does not match"):
        check_signature(impostor, [trusted(key)])
    unsigned = read_bundle(signed_bytes(key)).bundle.model_copy(update={"signature": None})
    assert check_signature(unsigned, [trusted(key)]) == "unsigned"
    with pytest.raises(BadSignature, match="not signed"):
        check_signature(unsigned, [trusted(key)], require=True)
    with pytest.raises(BadSignature, match="no trusted keys"):
        check_signature(bundle, require=True)


def test_garbage_signature_value(key: Ed25519PrivateKey) -> None:
    doc = json.loads(signed_bytes(key))
    doc["signature"]["value"] = "not base64!!"
    with pytest.raises(BadSignature, match="base64"):
        check_signature(read_bundle(json.dumps(doc).encode()).bundle, [trusted(key)])


def test_signature_covers_the_canonical_form_of_legacy_bundles(key: Ed25519PrivateKey) -> None:
    data = signed_bytes(key, legacy_bundle_metadata())
    bundle = read_bundle(data).bundle
    assert check_signature(bundle, [trusted(key)]) == "verified"


def test_rewriting_keeps_a_valid_signature_and_drops_a_stale_one(key: Ed25519PrivateKey) -> None:
    first = read_bundle(signed_bytes(key))
    same = io.BytesIO()
    kept = write_bundle(first.bundle, ONNX, same)
    assert not kept.signature_dropped
    assert check_signature(read_bundle(same.getvalue()).bundle, [trusted(key)]) == "verified"
    fewer = io.BytesIO()
    dropped = write_bundle(first.bundle, ONNX, fewer, selection=ComponentSelection(training_config=False))
    assert dropped.signature_dropped
    assert read_bundle(fewer.getvalue()).bundle.signature is None


def test_key_files(tmp_path: Path) -> None:
    key_id = generate_key_pair(tmp_path / "k.key", tmp_path / "k.pub")
    assert (tmp_path / "k.key").stat().st_mode & 0o077 == 0
    private = load_private_key(tmp_path / "k.key")
    public = load_trusted_key(tmp_path / "k.pub")
    assert public.key_id == key_id == key_id_for(private.public_key())
    with pytest.raises(ConfigurationError, match="already exists"):
        generate_key_pair(tmp_path / "k.key", tmp_path / "k2.pub")
    with pytest.raises(ConfigurationError, match="public key"):
        load_trusted_key(tmp_path / "k.key")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigurationError):
        load_private_key(tmp_path / "junk.pem")
