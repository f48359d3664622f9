"""Deployments: their records, API keys, rate limits, usage, and the store logic talks to (DESIGN §6-§7).

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

API keys
    ``hdk_{key_id}_{secret}``: ``key_id`` is 16 hex characters (no ``_``, so it parses without a
    look-up), ``secret`` is :func:`secrets.token_urlsafe` (32 bytes). Only the sha256 of the whole key is
    stored; a key this random needs no slow hash. :func:`key_matches` compares in constant time. A
    revoked key is not found by :meth:`DeploymentStore.get_api_key`, so it stops working at once.

Rate limits
    Exact: no 60-second window admits more than a key's limit, and a request is admitted whenever the
    60 s before it, ``(now - 60 s, now]``, hold fewer than the limit. The scheme is a sliding log: per
    key, the times (microseconds since the epoch, the Lambda's clock) of its last ``limit`` admitted
    requests, ascending. A request is admitted iff fewer than ``limit`` of them are later than
    ``now - 60 s`` (:func:`admit_request`); an admitted request replaces the oldest time by its own, a
    refused one changes nothing. ``Retry-After`` is exact: the oldest of the ``limit`` times plus 60 s
    less now, rounded up to a whole second, is the first second at which one more request fits if no
    other arrives. Why not a counter or a token bucket: a sliding window over minute counters
    (weighting the previous minute, as before) lets a burst at second 59.8 and bursts 30 s and 50 s
    later through 18 times on a 10/min key within 51 s; a token bucket or GCRA with a burst of
    ``limit`` admits the burst and then the refill within the same 60 s. Exactness over every window
    needs the last ``limit`` times: this is that state and no more.

    Clocks of concurrent instances differ by milliseconds, so times need not arrive in order: a log
    keeps the ``limit`` *latest* times, sorted, and times later than ``now`` count as inside the
    window; whatever order the times arrive in, no 60-s window of them holds more than the limit.
    The DynamoDB store keeps a key's log in one item read with the key and the deployment and written
    with one conditional write per admitted request (:mod:`heimdall.adapters.dynamodb.deployments`).
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from heimdall.bundle.models import NormalizationStats
from heimdall.domain.registry import (
    DEFAULT_PAGE_SIZE,
    Name,
    Owner,
    Page,
    RecordId,
    Sha256Hex,
    chronological_key,
    paginate,
    utcnow,
)
from heimdall.errors import ConflictError, RecordNotFound, Unauthorized

__all__ = [
    "API_KEY_PREFIX",
    "MAX_RATE_LIMIT",
    "RATE_LIMITS",
    "RATE_LOG_GRACE_S",
    "RATE_WINDOW_S",
    "RATE_WINDOW_US",
    "ApiKeyRecord",
    "Deployment",
    "DeploymentAction",
    "DeploymentArtifact",
    "DeploymentEvent",
    "DeploymentStatus",
    "DeploymentStore",
    "DeploymentType",
    "InMemoryDeploymentStore",
    "RateDecision",
    "SerializedCounters",
    "Tier",
    "UsageSummary",
    "action_for",
    "admit_request",
    "authenticate_api_key",
    "authorize_request",
    "check_latency",
    "check_rate_limit",
    "generate_api_key",
    "hash_api_key",
    "key_matches",
    "new_event_id",
    "parse_key_id",
    "rate_moment",
    "same_status_conflict",
]

API_KEY_PREFIX = "hdk_"
#: Length of the rate-limit window; how long a key's log outlives its newest time (then TTL deletes it).
RATE_WINDOW_S = 60
RATE_WINDOW_US = RATE_WINDOW_S * 1_000_000
RATE_LOG_GRACE_S = 300
#: The largest limit a key may have: its log stays small in one DynamoDB item (4 bytes a time there,
#: 40 kB at this limit, far under the 400 kB item limit; the tiers go to 1000).
MAX_RATE_LIMIT = 10_000
#: A log drops times this far behind its newest: they lie in no window any instance's clock opens
#: (instances agree to milliseconds), and it bounds what the DynamoDB item stores per time.
_RATE_LOG_HORIZON_US = 3600 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_KEY_ID_BYTES = 8
_SECRET_BYTES = 32
_API_KEY = re.compile(r"^hdk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
        return _as_utc(value)


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
        return _as_utc(value)


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
        return None if value is None else _as_utc(value)


class UsageSummary(BaseModel):
    """What a deployment's endpoint has served."""

    model_config = ConfigDict(extra="ignore")

    request_count: int = 0
    last_request_at: datetime | None = None
    total_inference_ms: float = 0.0


@dataclass(frozen=True)
class RateDecision:
    """The answer of a rate limiter: allowed or not, when to retry, how many requests are left."""

    allowed: bool
    retry_after_s: int
    remaining: int


# --------------------------------------------------------------------------------------------------
# API keys


def generate_api_key() -> tuple[str, str]:
    """A new ``(key_id, key)``; the key is shown to its owner once and only its hash is stored."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def hash_api_key(key: str) -> str:
    """The sha256 (hex) of ``key``, as stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_id(key: str) -> str | None:
    """The key id inside ``key``, or None if it is not shaped like one of our keys."""
    match = _API_KEY.match(key) if isinstance(key, str) else None
    return None if match is None else match.group(1)


def key_matches(key: str, stored_hash: str) -> bool:
    """Whether ``key`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_api_key(key).encode("ascii"), stored_hash.encode("ascii"))


#: Compared against when a key id is unknown, so that a miss costs the same comparison as a hit.
_NO_HASH = "0" * 64


def _unauthorized() -> Unauthorized:
    return Unauthorized("a valid API key for this deployment is required", field="authorization")


def _checked_key(key: str | None, record: ApiKeyRecord | None, deployment_id: str) -> ApiKeyRecord:
    """``record`` if ``key`` hashes to it and it belongs to ``deployment_id``; the hash is compared in
    constant time whether or not a record was found."""
    matches = key_matches(key or "", record.key_hash if record is not None else _NO_HASH)
    if record is None or not matches or record.deployment_id != deployment_id:
        raise _unauthorized()
    return record


def authenticate_api_key(store: DeploymentStore, key: str | None, deployment_id: str) -> ApiKeyRecord:
    """The key record of ``key`` if it is a live key of ``deployment_id``; else :class:`Unauthorized`.

    Missing, malformed, unknown, revoked (rotated, deleted) keys and another deployment's key are all
    the same 401; the hash is compared in constant time whether or not the key id was found.
    """
    key_id = parse_key_id(key) if key else None
    record: ApiKeyRecord | None = None
    if key_id is not None:
        try:
            record = store.get_api_key(key_id)
        except RecordNotFound:
            record = None
    return _checked_key(key, record, deployment_id)


def authorize_request(
    store: DeploymentStore, key: str | None, deployment_id: str
) -> tuple[ApiKeyRecord, Deployment]:
    """:func:`authenticate_api_key` and the deployment, read together (one round trip in DynamoDB)."""
    key_id = parse_key_id(key) if key else None
    if key_id is None:
        _checked_key(key, None, deployment_id)  # the same comparison as any other refusal
    record, deployment = store.get_api_key_and_deployment(key_id or "", deployment_id)
    checked = _checked_key(key, record, deployment_id)
    if deployment is None:  # deleted between the key's revocation and now: no key opens it
        raise _unauthorized()
    return checked, deployment


def rate_moment(now: datetime) -> int:
    """``now`` in whole microseconds since the epoch (a datetime's resolution: exact, no float)."""
    return (_as_utc(now) - _EPOCH) // _MICROSECOND


def admit_request(
    admitted: Sequence[int], limit: int, now_us: int
) -> tuple[RateDecision, tuple[int, ...] | None]:
    """The answer to one request at ``now_us`` of a key whose log is ``admitted`` (ascending times of
    its last admitted requests), and the log to store: None when it is refused (nothing changes).

    Only the ``limit`` latest times matter (a log holds no more; after a tier change it may hold more
    or fewer): the request fits iff fewer than ``limit`` of them are later than ``now_us - 60 s``.
    Times after ``now_us`` (an instance whose clock runs ahead) count as inside the window.
    """
    recent = admitted[-limit:]
    inside = len(recent) - bisect.bisect_right(recent, now_us - RATE_WINDOW_US)
    if inside >= limit:
        # All ``limit`` are inside: one more fits once the oldest of them has left the window.
        wait_us = recent[0] + RATE_WINDOW_US - now_us
        return RateDecision(allowed=False, retry_after_s=-(-wait_us // 1_000_000), remaining=0), None
    log = list(recent)
    bisect.insort(log, now_us)
    # A full log admits only when its oldest time has left the window: that one goes.
    del log[: max(0, len(log) - limit)]
    del log[: bisect.bisect_left(log, log[-1] - _RATE_LOG_HORIZON_US)]
    return RateDecision(allowed=True, retry_after_s=0, remaining=limit - inside - 1), tuple(log)


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
        ``limit_per_minute`` admitted ones (:func:`admit_request`), recording it; a refusal records
        nothing. Exact across every caller of the same store, concurrent or not."""
        ...

    def record_usage(self, deployment_id: str, latency_ms: float, now: datetime) -> None:
        """Add one request and its inference time to the deployment's usage."""
        ...

    def get_usage(self, deployment_id: str) -> UsageSummary:
        """The deployment's usage (zeros if it served nothing)."""
        ...


def check_rate_limit(limit_per_minute: int) -> int:
    """``limit_per_minute`` if it is an int from 1 to :data:`MAX_RATE_LIMIT`, else ValueError (a
    programming error)."""
    if (
        isinstance(limit_per_minute, bool)
        or not isinstance(limit_per_minute, int)
        or not 1 <= limit_per_minute <= MAX_RATE_LIMIT
    ):
        raise ValueError(f"limit_per_minute must be an int from 1 to {MAX_RATE_LIMIT}")
    return limit_per_minute


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


# --------------------------------------------------------------------------------------------------
# The in-memory fake


class InMemoryDeploymentStore:
    """A thread-safe, in-process :class:`DeploymentStore` with the same semantics as the DynamoDB one.

    Records are copied in and out. ``now`` is the clock of ``updated_at``, history entries and
    revocations (rate limits and usage take their time as an argument).
    """

    def __init__(self, *, now: Callable[[], datetime] = utcnow) -> None:
        self._now = now
        self._lock = threading.RLock()
        self._deployments: dict[str, Deployment] = {}
        self._events: dict[str, list[tuple[str, DeploymentEvent]]] = {}
        self._keys: dict[str, ApiKeyRecord] = {}
        self._rate_logs: dict[str, tuple[int, ...]] = {}
        self._usage: dict[str, UsageSummary] = {}

    def _owned(self, owner: str, deployment_id: str) -> Deployment:
        deployment = self._deployments.get(deployment_id)
        if deployment is None or deployment.owner != owner:
            raise RecordNotFound(f"deployment {deployment_id} not found", field="deployment_id")
        return deployment

    def _record(self, event: DeploymentEvent) -> None:
        order = chronological_key(event.at, new_event_id())
        self._events.setdefault(event.deployment_id, []).append((order, event))

    # deployments --------------------------------------------------------------------------------

    def put_deployment(
        self, deployment: Deployment, *, api_key: ApiKeyRecord | None = None, actor: str | None = None
    ) -> Deployment:
        with self._lock:
            if deployment.deployment_id in self._deployments:
                raise ConflictError(
                    f"deployment {deployment.deployment_id} already exists", field="deployment_id"
                )
            if api_key is not None and api_key.key_id in self._keys:
                raise ConflictError(f"api key {api_key.key_id} already exists", field="key_id")
            self._deployments[deployment.deployment_id] = deployment.model_copy(deep=True)
            if api_key is not None:
                self._keys[api_key.key_id] = api_key.model_copy(deep=True)
            self._record(
                DeploymentEvent(
                    deployment_id=deployment.deployment_id,
                    at=self._now(),
                    actor=actor or deployment.owner,
                    action=DeploymentAction.CREATED,
                    after=deployment.status,
                )
            )
        return deployment

    def get_deployment(self, owner: str, deployment_id: str) -> Deployment:
        with self._lock:
            return self._owned(owner, deployment_id).model_copy(deep=True)

    def get_deployment_any_owner(self, deployment_id: str) -> Deployment:
        with self._lock:
            deployment = self._deployments.get(deployment_id)
            if deployment is None:
                raise RecordNotFound(f"deployment {deployment_id} not found", field="deployment_id")
            return deployment.model_copy(deep=True)

    def list_deployments(
        self,
        owner: str,
        *,
        model_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Deployment]:
        with self._lock:
            chosen = [
                d.model_copy(deep=True)
                for d in self._deployments.values()
                if d.owner == owner and (model_id is None or d.model_id == model_id)
            ]
        return paginate(
            chosen,
            key=lambda d: chronological_key(d.created_at, d.deployment_id),
            scope=json.dumps(["deployments", owner, model_id]),
            limit=limit,
            cursor=cursor,
        )

    def delete_deployment(self, owner: str, deployment_id: str) -> None:
        with self._lock:
            deployment = self._owned(owner, deployment_id)
            del self._deployments[deployment_id]
            if deployment.key_id is not None and deployment.key_id in self._keys:
                self._revoke(deployment.key_id)
            self._events.pop(deployment_id, None)
            self._usage.pop(deployment_id, None)

    def transition_deployment(
        self, owner: str, deployment_id: str, target: DeploymentStatus, *, actor: str
    ) -> Deployment:
        target = DeploymentStatus(target)
        with self._lock:
            current = self._owned(owner, deployment_id)
            if current.status is target:
                raise same_status_conflict(current, target)
            now = self._now()
            changed = current.model_copy(update={"status": target, "updated_at": now})
            self._deployments[deployment_id] = changed
            self._record(
                DeploymentEvent(
                    deployment_id=deployment_id,
                    at=now,
                    actor=actor,
                    action=action_for(target),
                    before=current.status,
                    after=target,
                )
            )
            return changed.model_copy(deep=True)

    def history(self, owner: str, deployment_id: str) -> list[DeploymentEvent]:
        with self._lock:
            self._owned(owner, deployment_id)
            entries = sorted(self._events.get(deployment_id, []), key=lambda entry: entry[0])
            return [event.model_copy(deep=True) for _, event in entries]

    # API keys -----------------------------------------------------------------------------------

    def put_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        with self._lock:
            if record.key_id in self._keys:
                raise ConflictError(f"api key {record.key_id} already exists", field="key_id")
            self._keys[record.key_id] = record.model_copy(deep=True)
        return record

    def get_api_key(self, key_id: str) -> ApiKeyRecord:
        with self._lock:
            record = self._keys.get(key_id)
            if record is None or record.revoked_at is not None:
                raise RecordNotFound("api key not found", field="key_id")
            return record.model_copy(deep=True)

    def get_api_key_and_deployment(
        self, key_id: str, deployment_id: str
    ) -> tuple[ApiKeyRecord | None, Deployment | None]:
        with self._lock:
            record = self._keys.get(key_id)
            deployment = self._deployments.get(deployment_id)
            live = None if record is None or record.revoked_at is not None else record.model_copy(deep=True)
            return live, None if deployment is None else deployment.model_copy(deep=True)

    def _revoke(self, key_id: str) -> None:
        record = self._keys[key_id]
        if record.revoked_at is None:
            self._keys[key_id] = record.model_copy(update={"revoked_at": self._now()})

    def revoke_api_key(self, key_id: str) -> None:
        with self._lock:
            if key_id not in self._keys:
                raise RecordNotFound("api key not found", field="key_id")
            self._revoke(key_id)

    def rotate_api_key(
        self, owner: str, deployment_id: str, new_key: ApiKeyRecord, *, actor: str
    ) -> Deployment:
        with self._lock:
            current = self._owned(owner, deployment_id)
            if current.key_id is None:
                raise ConflictError(f"deployment {deployment_id} has no API key", field="deployment_id")
            if new_key.key_id in self._keys:
                raise ConflictError(f"api key {new_key.key_id} already exists", field="key_id")
            now = self._now()
            if current.key_id in self._keys:
                self._revoke(current.key_id)
            self._keys[new_key.key_id] = new_key.model_copy(deep=True)
            changed = current.model_copy(update={"key_id": new_key.key_id, "updated_at": now})
            self._deployments[deployment_id] = changed
            self._record(
                DeploymentEvent(
                    deployment_id=deployment_id,
                    at=now,
                    actor=actor,
                    action=DeploymentAction.KEY_ROTATED,
                    before=current.status,
                    after=current.status,
                    detail={"old_key_id": current.key_id, "new_key_id": new_key.key_id},
                )
            )
            return changed.model_copy(deep=True)

    # rate limits and usage ----------------------------------------------------------------------

    def consume_rate_limit(self, key_id: str, limit_per_minute: int, now: datetime) -> RateDecision:
        limit = check_rate_limit(limit_per_minute)
        with self._lock:
            decision, log = admit_request(self._rate_logs.get(key_id, ()), limit, rate_moment(now))
            if log is not None:
                self._rate_logs[key_id] = log
        return decision

    def record_usage(self, deployment_id: str, latency_ms: float, now: datetime) -> None:
        latency_ms = check_latency(latency_ms)
        with self._lock:
            usage = self._usage.get(deployment_id, UsageSummary())
            self._usage[deployment_id] = UsageSummary(
                request_count=usage.request_count + 1,
                last_request_at=_as_utc(now),
                total_inference_ms=usage.total_inference_ms + float(latency_ms),
            )

    def get_usage(self, deployment_id: str) -> UsageSummary:
        with self._lock:
            return self._usage.get(deployment_id, UsageSummary()).model_copy()
