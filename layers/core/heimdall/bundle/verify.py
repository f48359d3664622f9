"""Full verification of a bundle: integrity pass, signature policy, structural pass.

The order matters: the integrity pass streams the document (bounded memory, nothing parsed but the
metadata), the signature check is cheap, and only then is the decoded model handed to the structural
pass in a child process. No ONNX Runtime session is created by any of them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heimdall.bundle.reader import ReadResult, read_bundle
from heimdall.bundle.signing import SignatureState, TrustedKey, check_signature
from heimdall.bundle.source import BundleSource
from heimdall.bundle.structural import StructuralReport, check_structure
from heimdall.errors import BundleError
from heimdall.settings import BundleLimits, get_settings


@dataclass(frozen=True)
class VerificationReport:
    """The outcome of :func:`verify_bundle`; ``valid`` is False exactly when ``code`` is set."""

    valid: bool
    code: str | None = None
    message: str | None = None
    field: str | None = None
    read: ReadResult | None = None
    structure: StructuralReport | None = None
    signature_state: SignatureState | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as ``heimdall bundle verify --json`` prints it."""
        out: dict[str, Any] = {
            "valid": self.valid,
            "code": self.code,
            "message": self.message,
            "field": self.field,
            "onnx_sha256": self.read.onnx_sha256 if self.read else None,
            "onnx_size_bytes": self.read.onnx_size_bytes if self.read else None,
            "signature": self.signature_state,
        }
        if self.read is not None:
            out["dialect"] = self.read.dialect
            out["format_version"] = self.read.bundle.format_version
            out["model_name"] = self.read.bundle.model.model_name
            out["version"] = self.read.bundle.model.version
            out["compressed"] = self.read.compressed
        if self.structure is not None:
            out["graph"] = {
                "opset": self.structure.opset,
                "ir_version": self.structure.ir_version,
                "node_count": self.structure.node_count,
                "inputs": [_spec(t) for t in self.structure.inputs],
                "outputs": [_spec(t) for t in self.structure.outputs],
            }
        return out


def _spec(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "dtype": tensor.elem_type, "shape": list(tensor.shape)}


def verify_bundle(
    source: BundleSource,
    *,
    limits: BundleLimits | None = None,
    trusted_keys: Iterable[TrustedKey] = (),
    require_signature: bool = False,
    onnx_out: Path | None = None,
) -> VerificationReport:
    """Run every check on ``source`` and report; never raises for a bad bundle.

    With ``onnx_out`` the decoded model is kept there (only when the bundle is valid).
    """
    limits = limits or get_settings().bundle_limits()
    read: ReadResult | None = None
    state: SignatureState | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="heimdall-verify-") as tmp:
            decoded = Path(tmp) / "model.onnx"
            with decoded.open("wb") as sink:
                read = read_bundle(source, limits=limits, onnx_sink=sink)
            state = check_signature(read.bundle, trusted_keys, require=require_signature)
            structure = check_structure(decoded, read.bundle, limits=limits, expected_sha256=read.onnx_sha256)
            if onnx_out is not None:
                onnx_out.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(decoded, onnx_out)
    except BundleError as exc:
        return VerificationReport(
            valid=False, code=exc.code, message=exc.message, field=exc.field, read=read, signature_state=state
        )
    return VerificationReport(valid=True, read=read, structure=structure, signature_state=state)
