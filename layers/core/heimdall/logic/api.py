"""What the HTTP API's use cases need: the ports, the resource names and the limits.

The use cases themselves live beside this module (:mod:`heimdall.logic.models`,
:mod:`heimdall.logic.imports`, :mod:`heimdall.logic.export_jobs`, :mod:`heimdall.logic.capabilities`);
``heimdall.wiring.api_deps`` builds an :class:`ApiDeps` from settings, unit tests build one from fakes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from heimdall.domain.claims import IdempotencyClaims
from heimdall.domain.deployments import DeploymentStore
from heimdall.domain.records import utcnow
from heimdall.domain.registry import Registry
from heimdall.domain.storage import ObjectStore
from heimdall.domain.submitter import JobSubmitter
from heimdall.errors import RecordNotFound
from heimdall.events import EventSink
from heimdall.logic.bundles import BundleDeps
from heimdall.logic.checkpoint_jobs import CheckpointDeps
from heimdall.settings import DEFAULT_PAIR_TIMEOUT_S, ApiLimits, BundleLimits, ResourceNames

__all__ = ["ApiDeps", "ApiLimits", "require_id"]

#: What a record id can look like (the registry's ``RecordId``); anything else cannot exist.
_RECORD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def require_id(value: str, *, what: str, field: str) -> str:
    """``value`` if it could be a record id; else RecordNotFound (a path id is never a 400 or 422)."""
    if not isinstance(value, str) or not _RECORD_ID.match(value) or ".." in value:
        raise RecordNotFound(f"{what} {str(value)[:64]!r} not found", field=field)
    return value


@dataclass(frozen=True)
class ApiDeps:
    """The collaborators of the API's use cases (real adapters in Lambda, fakes in unit tests)."""

    registry: Registry
    #: The idempotency claims (the registry's table in AWS: the same object as ``registry``).
    claims: IdempotencyClaims
    store: ObjectStore
    events: EventSink
    jobs: JobSubmitter
    names: ResourceNames
    limits: BundleLimits
    #: Deployments, their keys, history and usage (the registry's table in AWS).
    deployments: DeploymentStore
    api: ApiLimits = field(default_factory=ApiLimits)
    now: Callable[[], datetime] = utcnow
    #: Where bundles are assembled and validated (Lambda: /tmp; None: the system's temp dir).
    workdir: Path | None = None
    #: Owner of bundles found under an import key that no import record claims (like a direct drop).
    drop_owner: str = "system"
    #: How long a half pair waits before it is rejected (``Settings.pair_timeout_s``; shown in listings).
    pair_timeout_s: int = DEFAULT_PAIR_TIMEOUT_S

    def bundle_deps(self) -> BundleDeps:
        """The same collaborators, as bundle indexing takes them."""
        return BundleDeps(**self._shared_with(BundleDeps))

    def checkpoint_deps(self) -> CheckpointDeps:
        """The same collaborators, as starting an export job takes them."""
        return CheckpointDeps(**self._shared_with(CheckpointDeps))

    def _shared_with(self, other: type[BundleDeps | CheckpointDeps]) -> dict[str, Any]:
        # Every field of the narrower deps is a field of this one, of the same name and meaning.
        return {f.name: getattr(self, f.name) for f in fields(other)}
