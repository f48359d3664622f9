"""Fixtures shared by every test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heimdall.settings import get_settings

# The helpers in tests/support assert too: pytest rewrites their asserts as it does a test module's, so a
# failing check there shows its values. This must run before anything imports them: this conftest.py is
# loaded before the suites' own, which do.
pytest.register_assert_rewrite("tests.support")


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Settings are parsed once and cached; give every test (and its monkeypatched env) a fresh parse."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
