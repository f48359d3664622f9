"""Fixtures shared by the unit tests: pytest finds them here, so no test module imports another's fixtures.

``deps`` and ``api`` serve the HTTP API's tests (``test_api_*.py``): in-memory collaborators, and the
resolver running on them with every reply checked against the OpenAPI document (the helpers behind them
live in :mod:`tests.support.api`). A module that needs other collaborators under the same name defines
its own fixture, which pytest prefers to these: the use-case and ingest tests their own ``deps``, the CLI
tests the fake server ``api`` from :mod:`tests.support.cli_fakes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.api import Api, make_deps

from heimdall.api.deps import use_deps
from heimdall.logic.api import ApiDeps


@pytest.fixture
def deps(tmp_path: Path) -> ApiDeps:
    """In-memory collaborators with the default limits."""
    return make_deps(tmp_path)


@pytest.fixture
def api(deps: ApiDeps) -> Iterator[Api]:
    """The resolver serving ``deps``."""
    use_deps(lambda: deps)
    try:
        yield Api(deps)
    finally:
        use_deps(None)
