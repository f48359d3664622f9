"""Typed errors with stable codes.

Every rejection the project makes is one of these. The ``code`` is part of the public contract (the
CLI prints it, the API returns it, ``... Rejected`` events carry it); ``http_status`` is the one place
where a code meets HTTP, so the resolver maps exceptions to responses without reading message text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HeimdallError(Exception):
    """Base of every error the project raises on purpose."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The error as the API and ``--json`` outputs show it."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BundleError(HeimdallError):
    """A `.heimdall` bundle was refused."""

    code = "INVALID_BUNDLE"
    http_status = 422


class InvalidJson(BundleError):
    """Not JSON, truncated, invalid UTF-8, duplicate keys, NaN/Infinity, too deep, huge numbers."""

    code = "INVALID_JSON"
    http_status = 400


class InvalidBundle(BundleError):
    """Valid JSON that is not a bundle: wrong types, missing or malformed fields."""

    code = "INVALID_BUNDLE"


class UnsupportedVersion(BundleError):
    """A ``format_version`` whose major version this reader does not understand."""

    code = "UNSUPPORTED_VERSION"


class InvalidBase64(BundleError):
    """The embedded model is not strict standard base64."""

    code = "INVALID_BASE64"


class TooLarge(BundleError):
    """A size cap was exceeded (bundle, decompressed bundle, ONNX model, metadata)."""

    code = "TOO_LARGE"
    http_status = 413


class UploadReused(BundleError):
    """Another upload under an import that an earlier upload already claimed (a reused upload form)."""

    code = "UPLOAD_REUSED"
    http_status = 409


class ChecksumMismatch(BundleError):
    """Declared sha256 or size disagree with the decoded model."""

    code = "CHECKSUM_MISMATCH"


class InvalidOnnx(BundleError):
    """The decoded model is not a valid ONNX model, or uses something we refuse (unknown domains)."""

    code = "INVALID_ONNX"


class ExternalData(BundleError):
    """A tensor somewhere in the model points at external data."""

    code = "EXTERNAL_DATA"


class GraphTooComplex(BundleError):
    """Node count, subgraph depth, or the memory/time a check needs exceeded its cap."""

    code = "GRAPH_TOO_COMPLEX"


class ShapeMismatch(BundleError):
    """Declared opset, input or output shapes disagree with the graph."""

    code = "SHAPE_MISMATCH"


class BadSignature(BundleError):
    """A signature that does not verify, is from an untrusted key, or is missing when required."""

    code = "BAD_SIGNATURE"
    http_status = 422


class UpgradeFailed(BundleError):
    """A model's ONNX could not be upgraded to a newer opset: conversion, load or sample check failed."""

    code = "UPGRADE_FAILED"


class ConfigurationError(HeimdallError):
    """An environment variable or option has a value we cannot use."""

    code = "CONFIGURATION_ERROR"
    http_status = 500


class ConversionError(HeimdallError):
    """The conversion job refused its input or failed. ``exit_code`` follows DESIGN §5."""

    code = "CONVERSION_FAILED"
    http_status = 422
    #: 3: invalid input (terminal), 4: unsupported architecture/format (terminal), other: retryable.
    exit_code: ClassVar[int] = 1


class InvalidCheckpoint(ConversionError):
    """The checkpoint is malformed, unsafe to load, or not a plain state_dict."""

    code = "INVALID_CHECKPOINT"
    exit_code = 3


class UnsafeCheckpoint(InvalidCheckpoint):
    """The checkpoint would run code or load non-allow-listed objects when unpickled."""

    code = "UNSAFE_CHECKPOINT"


class AmbiguousWeights(InvalidCheckpoint):
    """More than one state_dict in the checkpoint (or more than one prefix) fits the architecture;
    the manifest's ``state_dict_key`` / ``strip_prefix`` must say which. ``details["candidates"]``
    lists the readings."""

    code = "AMBIGUOUS_WEIGHTS"


class InvalidManifest(ConversionError):
    """The manifest is missing, not JSON, or does not validate."""

    code = "INVALID_MANIFEST"
    exit_code = 3


class IncompleteUpload(HeimdallError):
    """Half a pair (a manifest without its checkpoint, or the reverse) waited past the timeout: the
    half is rejected (``Checkpoint Rejected``) and quarantined. Never raised by a request."""

    code = "INCOMPLETE_UPLOAD"
    http_status = 422


class UnsupportedArchitecture(ConversionError):
    """No registered architecture has that name, or the state_dict does not fit it."""

    code = "UNSUPPORTED_ARCHITECTURE"
    exit_code = 4


class StateDictMismatch(UnsupportedArchitecture):
    """The state_dict's keys or tensor shapes do not match the architecture."""

    code = "SHAPE_MISMATCH"


class ParityError(ConversionError):
    """A converted model's outputs differ from PyTorch's beyond the tolerance (or are NaN/Inf)."""

    code = "PARITY_FAILED"


class ExportParityFailed(ParityError):
    """The FP32 ONNX model itself is not faithful to PyTorch: terminal, a retry gives the same numbers."""

    code = "EXPORT_PARITY_FAILED"
    exit_code = 4


class UnsafeEnvironment(ConversionError):
    """The job was started in an environment that would weaken safe loading."""

    code = "UNSAFE_ENVIRONMENT"
    exit_code = 3


class StorageError(HeimdallError):
    """Object storage failed (throttling, 5xx, network) after retries: retryable."""

    code = "STORAGE_ERROR"
    http_status = 503


class ObjectNotFound(HeimdallError):
    """The object named does not exist."""

    code = "NOT_FOUND"
    http_status = 404


class RecordNotFound(ObjectNotFound):
    """A registry record does not exist, or belongs to another owner (the two are indistinguishable)."""

    code = "NOT_FOUND"
    http_status = 404


class ConflictError(HeimdallError):
    """The write collides with the registry's current state (an id that exists, a concurrent change)."""

    code = "CONFLICT"
    http_status = 409


class InvalidTransition(ConflictError):
    """An export-job state change the state machine cannot make from the current state."""

    code = "INVALID_TRANSITION"


class NotReady(ConflictError):
    """The record exists but is not in the state the request needs (a job that has not succeeded)."""

    code = "NOT_READY"


class NoCheckpoint(ConflictError):
    """A model with no checkpoint to convert again (an imported model)."""

    code = "NO_CHECKPOINT"


class NoExportPackage(ConflictError):
    """A model without an export package (an imported model) asked for what only a package holds."""

    code = "NO_EXPORT_PACKAGE"


class ModelNotServable(ConflictError):
    """A model ONNX Runtime cannot serve (it does not load, or its opset upgrade failed): no endpoint,
    and a conversion job of its bundle fails with it before building anything."""

    code = "MODEL_NOT_SERVABLE"
    #: The conversion job's exit code: unsupported, terminal (a retry would find the same runtime).
    exit_code: ClassVar[int] = 4


class DeploymentInactive(ConflictError):
    """A deployment that is deactivated (it serves nothing until it is activated again)."""

    code = "DEPLOYMENT_INACTIVE"


class PackageInconsistent(HeimdallError):
    """An export package whose parts disagree (a config or checksum that does not match its model)."""

    code = "PACKAGE_INCONSISTENT"
    http_status = 422


class NonFiniteOutput(HeimdallError):
    """A model that answered NaN or infinity for finite inputs: JSON cannot carry the answer."""

    code = "NON_FINITE_OUTPUT"
    http_status = 422


class RateLimited(HeimdallError):
    """Too many requests for an API key in the current window; ``retry_after_s`` says when to retry."""

    code = "RATE_LIMITED"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: int, limit: int, field: str | None = None) -> None:
        super().__init__(message, field=field, retry_after_s=retry_after_s, limit=limit)
        self.retry_after_s = retry_after_s


class Unauthorized(HeimdallError):
    """No identity: no token, a bad token, or claims without a subject."""

    code = "UNAUTHORIZED"
    http_status = 401


class Forbidden(HeimdallError):
    """An identity without the scope the request needs."""

    code = "FORBIDDEN"
    http_status = 403


class PayloadTooLarge(HeimdallError):
    """A request body over what the endpoint accepts inline (the message says what to do instead)."""

    code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class RequestInvalid(HeimdallError):
    """A request that is well-formed but whose values are not acceptable (request validation)."""

    code = "VALIDATION_ERROR"
    http_status = 422


class IdempotencyKeyReused(HeimdallError):
    """An ``Idempotency-Key`` sent again with another request: a key stands for its first request only."""

    code = "IDEMPOTENCY_KEY_REUSED"
    http_status = 422


class UnsupportedMediaType(HeimdallError):
    """A request body whose Content-Type the operation does not take."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class BadRequest(HeimdallError):
    """A request the API cannot make sense of (a body that is not what the content type says)."""

    code = "BAD_REQUEST"
    http_status = 400


class InvalidPagination(HeimdallError):
    """A page request the registry cannot serve (a page size out of range)."""

    code = "INVALID_PAGINATION"
    http_status = 400


class InvalidCursor(InvalidPagination):
    """A pagination cursor that is malformed, tampered with, or from another listing."""

    code = "INVALID_CURSOR"


class RegistryUnavailable(StorageError):
    """The registry's database failed (throttling, 5xx, network) after retries: retryable."""

    code = "REGISTRY_UNAVAILABLE"
    http_status = 503


class RegistryError(HeimdallError):
    """The registry's database refused a request or returned a record it cannot read: not retryable."""

    code = "REGISTRY_ERROR"
    http_status = 500
