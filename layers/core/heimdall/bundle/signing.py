"""Ed25519 signatures over a bundle's ONNX sha256 and its canonical metadata.

The signed message is a fixed prefix followed by the canonical JSON (sorted keys, no whitespace,
UTF-8) of the normalised bundle without its ``signature`` and without the base64 model. The model is
covered through ``integrity.onnx_sha256``, which the reader checks against the decoded bytes, so a
signature binds the exact ONNX bytes *and* every metadata field, whichever dialect the bundle was
read in. ``key_id`` is the first 16 hex digits of the sha256 of the raw public key unless a name is
given; verification looks the key up by id among the trusted keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from heimdall.bundle.models import Bundle, Signature
from heimdall.errors import BadSignature, ConfigurationError

SIGNATURE_CONTEXT = b"heimdall-bundle-signature-v1\n"

SignatureState = Literal["unsigned", "verified", "unverified"]


@dataclass(frozen=True)
class TrustedKey:
    """A public key that may sign bundles, under its key id."""

    key_id: str
    public_key: Ed25519PublicKey


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """The default id of a key: a short fingerprint of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signing_payload(bundle: Bundle) -> bytes:
    """The exact bytes a signature covers (see the module docstring)."""
    if bundle.integrity is None:
        raise BadSignature("a bundle can only be signed or verified once its integrity block is filled")
    body = bundle.model_dump(mode="json", exclude={"signature"})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SIGNATURE_CONTEXT + canonical.encode("utf-8")


def sign_bundle(bundle: Bundle, private_key: Ed25519PrivateKey, key_id: str | None = None) -> Bundle:
    """A copy of ``bundle`` carrying an ed25519 signature by ``private_key``."""
    unsigned = bundle.model_copy(update={"signature": None})
    value = private_key.sign(signing_payload(unsigned))
    signature = Signature(
        algorithm="ed25519",
        key_id=key_id or key_id_for(private_key.public_key()),
        value=base64.b64encode(value).decode("ascii"),
    )
    return bundle.model_copy(update={"signature": signature})


def check_signature(
    bundle: Bundle, trusted: Iterable[TrustedKey] = (), *, require: bool = False
) -> SignatureState:
    """Check ``bundle``'s signature against ``trusted`` keys.

    Returns ``"unsigned"`` (no signature), ``"unverified"`` (signed, but no trusted keys were given
    to check it with) or ``"verified"``. Raises :class:`BadSignature` for a signature that does not
    verify, one from a key that is not trusted while trusted keys were given, or (``require``) for a
    bundle that is unsigned or cannot be verified.
    """
    keys = {k.key_id: k.public_key for k in trusted}
    signature = bundle.signature
    if signature is None:
        if require:
            raise BadSignature("the bundle is not signed and a signature is required", field="signature")
        return "unsigned"
    if not keys:
        if require:
            raise BadSignature(
                "a signature is required but no trusted keys were given to verify it", field="signature"
            )
        return "unverified"
    public_key = keys.get(signature.key_id)
    if public_key is None:
        raise BadSignature(
            f"the bundle is signed by key {signature.key_id!r}, which is not among the trusted keys "
            f"({', '.join(sorted(keys))})",
            field="signature.key_id",
        )
    try:
        value = base64.b64decode(signature.value, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature("signature.value is not valid base64", field="signature.value") from None
    try:
        public_key.verify(value, signing_payload(bundle))
    except InvalidSignature:
        raise BadSignature(
            f"the signature by key {signature.key_id!r} does not match the bundle: the model or its "
            "metadata changed after signing",
            field="signature.value",
        ) from None
    return "verified"


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """Write a new ed25519 key pair as PEM files (the private one readable by its owner only).

    Returns the key id of the new key.
    """
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigurationError(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.touch(mode=0o600, exist_ok=False)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)
    return key_id_for(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot read the private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an ed25519 private key")
    return key


def load_trusted_key(path: Path, key_id: str | None = None) -> TrustedKey:
    """Read a PEM ed25519 public key; its id is ``key_id`` or its fingerprint."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot read the public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{path} is not an ed25519 public key")
    return TrustedKey(key_id=key_id or key_id_for(key), public_key=key)
