"""Where the routes get their collaborators: the wired adapters, or whatever a test puts in their place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heimdall.logic.api import ApiDeps

_provider: Callable[[], ApiDeps] | None = None


def api_deps() -> ApiDeps:
    """The use cases' collaborators for this request (built once per container by the wiring)."""
    if _provider is not None:
        return _provider()
    from heimdall.wiring import api_deps as wired  # noqa: PLC0415 - boto3 adapters only when needed

    return wired()


def use_deps(provider: Callable[[], ApiDeps] | None) -> None:
    """Serve the API with ``provider``'s collaborators (None: the wired ones again)."""
    global _provider  # noqa: PLW0603 - one process-wide choice (tests, the in-process benchmark)
    _provider = provider
