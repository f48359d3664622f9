"""Settings come from the environment once, and a bad value names its variable."""

from __future__ import annotations

import pytest

from heimdall.errors import ConfigurationError
from heimdall.settings import HARD_MAX_BUNDLE_BYTES, MIB, get_settings


def test_defaults_describe_the_documented_limits() -> None:
    limits = get_settings().bundle_limits()
    assert limits.max_onnx_bytes == 100 * MIB
    assert limits.max_bundle_bytes == 2047 * MIB <= HARD_MAX_BUNDLE_BYTES < 2 * 1024 * MIB
    assert limits.max_samples == 10


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_MAX_ONNX_MB", "5")
    monkeypatch.setenv("HEIMDALL_STRUCTURAL_MEMORY_MB", "512")
    get_settings.cache_clear()
    limits = get_settings().bundle_limits()
    assert limits.max_onnx_bytes == 5 * MIB
    assert limits.structural_memory_bytes == 512 * MIB


@pytest.mark.parametrize(("name", "value"), [("HEIMDALL_MAX_ONNX_MB", "lots"), ("HEIMDALL_MAX_ONNX_MB", "0"),
                                             ("HEIMDALL_MAX_BUNDLE_MB", "4096")])
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match=name):
        get_settings()


def test_resource_names_follow_the_stage_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_STAGE", "dev")
    monkeypatch.setenv("HEIMDALL_TABLE_NAME", "registry-from-template")
    get_settings.cache_clear()
    names = get_settings().resource_names()
    assert names.ingest_bucket == "heimdall-dev-ingest"
    assert names.artifacts_bucket == "heimdall-dev-artifacts"
    assert names.table_name == "registry-from-template"
    monkeypatch.setenv("HEIMDALL_STAGE", "Dev Stage")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="HEIMDALL_STAGE"):
        get_settings()
