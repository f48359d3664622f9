"""Builds the use cases' collaborators from settings: the real adapters, created once per container.

Nothing connects at import time: the first call creates the adapters (whose boto3 clients are in turn
created on first use). ``use_job_submitter`` lets the local stack run conversion jobs as subprocesses
instead of submitting them to AWS Batch. One ``DynamoRegistry`` serves as both the registry and the
idempotency claims (two ports, one table).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import lru_cache
from typing import TYPE_CHECKING, cast

from heimdall.adapters.dynamodb.registry import DynamoRegistry
from heimdall.adapters.eventbridge import EventBridgePublisher
from heimdall.adapters.s3 import S3ObjectStore
from heimdall.domain.deployments import DeploymentStore, SerializedCounters
from heimdall.settings import get_settings

if TYPE_CHECKING:  # each function imports only its own use case (cold-start time)
    from heimdall.domain.submitter import JobSubmitter
    from heimdall.inference.deps import ServingDeps
    from heimdall.logic.api import ApiDeps
    from heimdall.logic.ingest import IngestDeps
    from heimdall.logic.job_state import JobStateDeps
    from heimdall.logic.uploads import SweepDeps

_job_submitter: JobSubmitter | None = None
_counter_lock: AbstractContextManager[object] | None = None


def use_job_submitter(submitter: JobSubmitter | None) -> None:
    """Replace how jobs are started (None: AWS Batch, from settings). Clears the cached wiring."""
    global _job_submitter  # noqa: PLW0603 - one process-wide choice, set by the local stack
    _job_submitter = submitter
    ingest_deps.cache_clear()
    api_deps.cache_clear()
    sweep_deps.cache_clear()


def use_counter_lock(lock: AbstractContextManager[object] | None) -> None:
    """Serialise the inference function's counter writes under ``lock`` (the local stack: moto's
    conditional writes are not atomic under concurrency). Clears the cached wiring."""
    global _counter_lock  # noqa: PLW0603 - one process-wide choice, set by the local stack
    _counter_lock = lock
    serving_deps.cache_clear()


@lru_cache(maxsize=1)
def _adapters() -> tuple[DynamoRegistry, S3ObjectStore, EventBridgePublisher]:
    names = get_settings().resource_names()
    return DynamoRegistry(names.table_name), S3ObjectStore(), EventBridgePublisher(names.event_bus_name)


@lru_cache(maxsize=1)
def ingest_deps() -> IngestDeps:
    """What the ingest function's use cases need."""
    from heimdall.logic.bundles import BundleDeps  # noqa: PLC0415 - per-function imports
    from heimdall.logic.checkpoint_jobs import CheckpointDeps  # noqa: PLC0415
    from heimdall.logic.ingest import IngestDeps  # noqa: PLC0415

    settings = get_settings()
    names, limits = settings.resource_names(), settings.bundle_limits()
    registry, store, events = _adapters()
    return IngestDeps(
        checkpoints=CheckpointDeps(
            registry=registry,
            claims=registry,
            store=store,
            events=events,
            jobs=_jobs(),
            names=names,
            limits=limits,
        ),
        bundles=BundleDeps(
            registry=registry,
            claims=registry,
            store=store,
            events=events,
            names=names,
            limits=limits,
            drop_owner=settings.drop_owner,
        ),
    )


def _jobs() -> JobSubmitter:
    from heimdall.adapters.batch import BatchJobSubmitter  # noqa: PLC0415 - per-function imports

    names = get_settings().resource_names()
    return _job_submitter or BatchJobSubmitter(names.job_queue, names.job_definition)


@lru_cache(maxsize=1)
def api_deps() -> ApiDeps:
    """What the API function's use cases need."""
    from heimdall.adapters.dynamodb.deployments import DynamoDeploymentStore  # noqa: PLC0415
    from heimdall.logic.api import ApiDeps  # noqa: PLC0415 - per-function imports

    settings = get_settings()
    registry, store, events = _adapters()
    return ApiDeps(
        deployments=DynamoDeploymentStore.beside(registry),
        registry=registry,
        claims=registry,
        store=store,
        events=events,
        jobs=_jobs(),
        names=settings.resource_names(),
        limits=settings.bundle_limits(),
        api=settings.api_limits(),
        drop_owner=settings.drop_owner,
        pair_timeout_s=settings.pair_timeout_s,
    )


@lru_cache(maxsize=1)
def job_state_deps() -> JobStateDeps:
    """What the job-state function's use case needs."""
    from heimdall.logic.job_state import JobStateDeps  # noqa: PLC0415 - per-function imports

    registry, store, events = _adapters()
    return JobStateDeps(registry=registry, store=store, events=events)


@lru_cache(maxsize=1)
def sweep_deps() -> SweepDeps:
    """What the sweep function's use case needs: the ingest function's collaborators and the timeout."""
    from heimdall.logic.uploads import SweepDeps  # noqa: PLC0415 - per-function imports

    return SweepDeps(checkpoints=ingest_deps().checkpoints, pair_timeout_s=get_settings().pair_timeout_s)


@lru_cache(maxsize=1)
def serving_deps() -> ServingDeps:
    """What the inference function needs (its session cache lives as long as the container)."""
    from heimdall.adapters.dynamodb.deployments import DynamoDeploymentStore  # noqa: PLC0415
    from heimdall.inference.deps import ServingDeps  # noqa: PLC0415 - per-function imports

    settings = get_settings()
    registry, store, _ = _adapters()
    deployments: DeploymentStore = DynamoDeploymentStore.beside(registry)
    if _counter_lock is not None:
        deployments = cast("DeploymentStore", SerializedCounters(deployments, _counter_lock))
    return ServingDeps(
        deployments=deployments,
        store=store,
        names=settings.resource_names(),
        limits=settings.bundle_limits(),
    )


def reset() -> None:
    """Forget the cached wiring (tests change the environment between cases)."""
    _adapters.cache_clear()
    serving_deps.cache_clear()
    ingest_deps.cache_clear()
    job_state_deps.cache_clear()
    api_deps.cache_clear()
    sweep_deps.cache_clear()
