"""Fixtures shared by every test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heimdall.settings import get_settings


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Settings are parsed once and cached; give every test (and its monkeypatched env) a fresh parse."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
