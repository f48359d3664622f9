"""An in-memory deployment store: the fake of :class:`~heimdall.domain.deployments.DeploymentStore` that
unit tests, the demo and benchmarks use.

It keeps the same contract as ``heimdall.adapters.dynamodb.deployments.DynamoDeploymentStore``, and one
suite (``tests/integration/test_deployment_store_contract.py``) tests the two alike.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime

from heimdall.domain.deployments import (
    ApiKeyRecord,
    Deployment,
    DeploymentAction,
    DeploymentEvent,
    DeploymentStatus,
    UsageSummary,
    action_for,
    check_latency,
    new_event_id,
    same_status_conflict,
)
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page, paginate
from heimdall.domain.rate_limits import RateDecision, admit_request, check_rate_limit, rate_moment
from heimdall.domain.records import as_utc, chronological_key, owned, utcnow
from heimdall.errors import ConflictError, RecordNotFound

__all__ = ["InMemoryDeploymentStore"]


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

    def _owned(self, owner: str | None, deployment_id: str) -> Deployment:
        return owned(
            self._deployments.get(deployment_id),
            owner,
            what="deployment",
            record_id=deployment_id,
            field="deployment_id",
        )

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
            return self._owned(None, deployment_id).model_copy(deep=True)

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
                last_request_at=as_utc(now),
                total_inference_ms=usage.total_inference_ms + float(latency_ms),
            )

    def get_usage(self, deployment_id: str) -> UsageSummary:
        with self._lock:
            return self._usage.get(deployment_id, UsageSummary()).model_copy()
