"""How the inference endpoint gets its collaborators: :class:`ServingDeps`, and who provides them.

The endpoint (:mod:`heimdall.inference.app`) asks :func:`serving_deps` on every request and knows nothing
of how they are built. Whoever runs it provides them: the inference function's handler installs the
wired adapters (:func:`heimdall.wiring.serving_deps`) when Lambda loads it; tests and benchmarks install
fakes. So the endpoint never imports the wiring, and the wiring imports only this module's dataclass.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from heimdall.domain.deployments import DeploymentStore
from heimdall.domain.records import utcnow
from heimdall.domain.storage import ObjectStore
from heimdall.inference.sessions import ModelCache
from heimdall.settings import MIB, BundleLimits, ResourceNames

__all__ = ["MAX_REQUEST_BYTES", "ServingDeps", "serving_deps", "use_serving_deps"]

#: The largest request body (JSON) the endpoint reads: 4 MiB of float32 as text is about 1M values.
MAX_REQUEST_BYTES = 6 * MIB


@dataclass(frozen=True)
class ServingDeps:
    """What the inference function needs: deployments and keys, the model objects, the session cache."""

    deployments: DeploymentStore
    store: ObjectStore
    names: ResourceNames
    limits: BundleLimits
    cache: ModelCache = field(default_factory=ModelCache)
    #: Where model files are fetched to (``/tmp`` in Lambda, reused by the container's next requests).
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "heimdall-models")
    now: Callable[[], datetime] = utcnow
    max_request_bytes: int = MAX_REQUEST_BYTES


_provider: Callable[[], ServingDeps] | None = None


def use_serving_deps(provider: Callable[[], ServingDeps] | None) -> None:
    """Serve with ``provider``'s collaborators from now on (None: none, until the next call)."""
    global _provider  # noqa: PLW0603 - one process-wide choice (the handler, the local stack, tests)
    _provider = provider


def serving_deps() -> ServingDeps:
    """The collaborators for this request; a RuntimeError while nobody has provided them."""
    if _provider is None:
        raise RuntimeError(
            "no serving collaborators: the inference function's handler installs the wired ones "
            "(use_serving_deps(heimdall.wiring.serving_deps)); tests install their own"
        )
    return _provider()
