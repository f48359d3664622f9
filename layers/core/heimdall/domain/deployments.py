"""Deployments: their records, history, usage, and the store logic talks to (DESIGN §6-§7).

Records
    :class:`Deployment` (an exported or imported model put to work: a download, a platform endpoint, an
    edge package or a container), :class:`DeploymentEvent` (one entry of a deployment's history),
    :class:`ApiKeyRecord` (a platform endpoint's key, **hashed**), :class:`UsageSummary`. Like the
    registry's records every deployment has an ``owner`` and owner-scoped reads report another owner's
    deployment exactly like a missing one (:class:`~heimdall.errors.RecordNotFound`).

Lifecycle
    ``put_deployment`` creates a deployment (``ACTIVE`` unless told otherwise) and records a ``created``
    event; ``transition_deployment`` moves it ``ACTIVE ↔ INACTIVE`` with one conditional write that
    records the event atomically with the change. Asking for the status it already has raises
    :class:`~heimdall.errors.ConflictError` (409) and writes nothing: the caller learns that nothing
    happened (and emits no ``Deployment Activated``/``Deactivated`` event). ``delete_deployment``
    removes the deployment, revokes its key in the same write, and drops its history and usage.

API keys (:mod:`heimdall.domain.api_keys`) and rate limits (:mod:`heimdall.domain.rate_limits`) have
modules of their own; the store keeps what they need. ``heimdall.adapters.dynamodb.deployments`` is the
real store, ``heimdall.testing.deployments.InMemoryDeploymentStore`` its fake for unit tests.
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from heimdall.bundle.models import NormalizationStats
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.rate_limits import RateDecision
from heimdall.domain.records import Name, Owner, RecordId, Sha256Hex, as_utc, utcnow
from heimdall.errors import ConflictError

__all__ = [
    "RATE_LIMITS",
    "ApiKeyRecord",
    "Deployment",
    "DeploymentAction",
    "DeploymentArtifact",
    "DeploymentEvent",
    "DeploymentStatus",
    "DeploymentStore",
    "DeploymentType",
    "SerializedCounters",
    "Tier",
    "UsageSummary",
    "action_for",
    "check_latency",
    "new_event_id",
    "same_status_conflict",
]


class DeploymentType(enum.StrEnum):
    """What a deployment delivers (DESIGN §7)."""

    DOWNLOAD = "download"
    PLATFORM_ENDPOINT = "platform_endpoint"
    EDGE_PACKAGE = "edge_package"
    CONTAINER = "container"


class DeploymentStatus(enum.StrEnum):
    """A deployment is active or inactive; deleting it removes it."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class Tier(enum.StrEnum):
    """A platform endpoint's tier: how many requests per minute each of its keys may make."""

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


#: Requests per minute per API key, by tier.
RATE_LIMITS: Mapping[Tier, int] = MappingProxyType({Tier.FREE: 10, Tier.PRO: 100, Tier.ENTERPRISE: 1000})

#: The model builds a deployment can use: FP32 (the model itself) or the FP16 / INT8 build of its export.
ModelPrecision = Literal["fp32", "fp16", "int8"]
#: What an edge package ships: ``auto`` takes INT8 when it was built, else FP16, else FP32.
EdgePrecision = Literal["auto", "int8", "fp16", "fp32"]
#: The longest Triton image reference a ``container`` deployment takes.
MAX_IMAGE_REFERENCE = 256


class DeploymentAction(enum.StrEnum):
    """What a history entry records."""

    CREATED = "created"
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"
    KEY_ROTATED = "key_rotated"


class _Stored(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)


class DeploymentArtifact(_Stored):
    """The file a deployment delivers (export package, edge or container zip) in the artifacts bucket."""

    key: str = Field(min_length=1, max_length=1024)
    file_name: str = Field(min_length=1, max_length=256)
    size_bytes: int | None = Field(default=None, ge=0)
    sha256: Sha256Hex | None = None


class Deployment(_Stored):
    """A model put to work. ``key_id`` names the API key of a platform endpoint (never the key itself)."""

    deployment_id: RecordId
    owner: Owner
    model_id: RecordId
    #: The export job it was made from; None for a model imported from a bundle (it has none).
    export_job_id: RecordId | None = None
    type: DeploymentType
    name: Name
    status: DeploymentStatus = DeploymentStatus.ACTIVE
    #: Platform endpoints only.
    tier: Tier | None = None
    apply_normalization: bool = False
    #: The type's other options, as the request gave them.
    options: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    key_id: str | None = Field(default=None, max_length=64)
    #: The file it delivers (not for platform endpoints).
    artifact: DeploymentArtifact | None = None
    #: What the inference function serves (platform endpoints), copied from the model at creation so
    #: that a request needs no registry read of the model: its version, ONNX object and checksum, and
    #: the bundle's normalisation when the deployment applies it.
    model_version: Name | None = None
    onnx_key: str | None = Field(default=None, max_length=1024)
    onnx_sha256: Sha256Hex | None = None
    normalization: NormalizationStats | None = None

    @field_validator("created_at", "updated_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class DeploymentEvent(_Stored):
    """One history entry: who did what to a deployment, with its status before and after."""

    deployment_id: RecordId
    at: datetime
    actor: Owner
    action: DeploymentAction
    before: DeploymentStatus | None = None
    after: DeploymentStatus | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class ApiKeyRecord(_Stored):
    """A platform endpoint's API key as stored: its id and the sha256 of the key, never the key."""

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    deployment_id: RecordId
    owner: Owner
    key_hash: Sha256Hex
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None

    @field_validator("created_at", "revoked_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)


class UsageSummary(BaseModel):
    """What a deployment's endpoint has served."""

    model_config = ConfigDict(extra="ignore")

    request_count: int = 0
    last_request_at: datetime | None = None
    total_inference_ms: float = 0.0


def new_event_id() -> str:
    """An id that orders history entries made in the same microsecond."""
    return uuid.uuid4().hex


# --------------------------------------------------------------------------------------------------
# The port


class DeploymentStore(Protocol):
    """Deployments, their history, API keys, rate-limit logs and usage, as logic sees them.

    Errors: :class:`~heimdall.errors.RecordNotFound` (404) for a missing deployment or another owner's,
    :class:`~heimdall.errors.ConflictError` (409), :class:`~heimdall.errors.InvalidCursor` /
    :class:`~heimdall.errors.InvalidPagination` (400); a real store also raises
    :class:`~heimdall.errors.RegistryUnavailable` (503, retryable).
    """

    def put_deployment(
        self, deployment: Deployment, *, api_key: ApiKeyRecord | None = None, actor: str | None = None
    ) -> Deployment:
        """Create a deployment (with its API key, if given) and its ``created`` history entry, atomically.

        ConflictError if the id (or the key id) exists. ``actor`` defaults to the owner.
        """
        ...

    def get_deployment(self, owner: str, deployment_id: str) -> Deployment:
        """The deployment, if ``owner`` has it; else RecordNotFound."""
        ...

    def get_deployment_any_owner(self, deployment_id: str) -> Deployment:
        """The deployment whoever owns it: for the inference path, which has only an API key."""
        ...

    def list_deployments(
        self,
        owner: str,
        *,
        model_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Deployment]:
        """The owner's deployments (of one model if given), newest first."""
        ...

    def delete_deployment(self, owner: str, deployment_id: str) -> None:
        """Delete the deployment and revoke its key at once; its history and usage go too."""
        ...

    def transition_deployment(
        self, owner: str, deployment_id: str, target: DeploymentStatus, *, actor: str
    ) -> Deployment:
        """Move the deployment to ``target`` and record the change in its history, atomically.

        ConflictError if it already has that status (nothing is written).
        """
        ...

    def history(self, owner: str, deployment_id: str) -> list[DeploymentEvent]:
        """The deployment's history, oldest first."""
        ...

    def put_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Store a new key record; ConflictError if the key id exists."""
        ...

    def get_api_key(self, key_id: str) -> ApiKeyRecord:
        """The key record, whoever owns it; RecordNotFound if there is none or it was revoked."""
        ...

    def get_api_key_and_deployment(
        self, key_id: str, deployment_id: str
    ) -> tuple[ApiKeyRecord | None, Deployment | None]:
        """The live key record and the deployment (any owner), read together; None for what is absent
        (a revoked key is absent)."""
        ...

    def revoke_api_key(self, key_id: str) -> None:
        """Revoke the key (it stops working at once); RecordNotFound for an unknown key."""
        ...

    def rotate_api_key(
        self, owner: str, deployment_id: str, new_key: ApiKeyRecord, *, actor: str
    ) -> Deployment:
        """Give the deployment ``new_key`` and revoke its old one in one write; records ``key_rotated``.

        ConflictError if the deployment has no key (not a platform endpoint) or changed meanwhile.
        """
        ...

    def consume_rate_limit(self, key_id: str, limit_per_minute: int, now: datetime) -> RateDecision:
        """Admit one request of ``key_id`` at ``now`` if the 60 s before it hold fewer than
        ``limit_per_minute`` admitted ones (:func:`~heimdall.domain.rate_limits.admit_request`),
        recording it; a refusal records nothing. Exact across every caller of the same store,
        concurrent or not."""
        ...

    def record_usage(self, deployment_id: str, latency_ms: float, now: datetime) -> None:
        """Add one request and its inference time to the deployment's usage."""
        ...

    def get_usage(self, deployment_id: str) -> UsageSummary:
        """The deployment's usage (zeros if it served nothing)."""
        ...


def check_latency(latency_ms: float) -> float:
    """``latency_ms`` as a float if it is finite and not negative, else ValueError (a programming error)."""
    value = float(latency_ms)
    if not math.isfinite(value) or value < 0:
        raise ValueError("latency_ms must be a finite, non-negative number")
    return value


def same_status_conflict(deployment: Deployment, target: DeploymentStatus) -> ConflictError:
    """The error for a transition to the status a deployment already has."""
    return ConflictError(
        f"deployment {deployment.deployment_id} is already {target}",
        field="status",
        current=str(deployment.status),
    )


def action_for(target: DeploymentStatus) -> DeploymentAction:
    """The history action of a transition to ``target``."""
    return DeploymentAction.ACTIVATED if target is DeploymentStatus.ACTIVE else DeploymentAction.DEACTIVATED


class SerializedCounters:
    """``store`` with its rate-limit and usage writes made under ``lock``; every other call passes through.

    For an emulator whose conditional writes are not atomic under concurrency (moto's DynamoDB): the
    local stack lets inference requests run concurrently, as Lambda instances do, and serialises only
    the writes DynamoDB itself makes atomic.
    """

    def __init__(self, store: DeploymentStore, lock: AbstractContextManager[object]) -> None:
        self._store = store
        self._lock = lock

    def consume_rate_limit(self, key_id: str, limit_per_minute: int, now: datetime) -> RateDecision:
        with self._lock:
            return self._store.consume_rate_limit(key_id, limit_per_minute, now)

    def record_usage(self, deployment_id: str, latency_ms: float, now: datetime) -> None:
        with self._lock:
            self._store.record_usage(deployment_id, latency_ms, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
